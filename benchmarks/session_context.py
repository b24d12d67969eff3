"""How much of a model's accuracy comes from the session in progress.

Scores a registered model and popularity on sampled events after the first ``--history`` events of
a ratings file, each with the user's earlier events as history, then again with the history cut
``--gap`` seconds before the event (no events of the same rating session, as a list shown *before*
a session has: what the online, prequential protocol grades). Seen items are masked; popularity
counts the events before the split.

    python benchmarks/session_context.py --model demo-run/registry/v1 --gap 0 3600 86400
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from streamrec.model.inference import TransformerRecommender  # noqa: E402
from streamrec.storage.movielens import load_ratings  # noqa: E402


def ndcg(lst, t) -> float:
    w = np.flatnonzero(np.asarray(lst) == t)
    return 1 / np.log2(w[0] + 2) if len(w) else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a checkpoint directory (e.g. a registry version)")
    ap.add_argument("--ratings", default=str(Path(__file__).resolve().parent.parent / "tests/data/ratings.csv"))
    ap.add_argument("--history", type=int, default=50_002, help="events before the split (the demo's history)")
    ap.add_argument("--events", type=int, default=3000, help="sampled events after the split")
    ap.add_argument("--gap", type=int, nargs="+", default=[0, 3600], help="seconds cut from each history")
    args = ap.parse_args()
    r = load_ratings(args.ratings)
    rec = TransformerRecommender(args.model, device="cpu")
    sample = np.random.default_rng(0).choice(np.arange(args.history, len(r)), args.events, replace=False)
    pop_rank = np.argsort(-np.bincount(r.item[: args.history]))
    by_user: dict[int, np.ndarray] = {}
    order = np.argsort(r.user, kind="stable")  # per user, time order kept
    users = r.user[order]
    bounds = np.flatnonzero(np.diff(users)) + 1
    for rows in np.split(order, bounds):
        by_user[int(r.user[rows[0]])] = rows
    for gap in args.gap:
        seqs, seens, targets = [], [], []
        for j in sample:
            rows = by_user[int(r.user[j])]
            h = r.item[rows[r.timestamp[rows] < r.timestamp[j] - gap]]
            seqs.append(h[-200:]), seens.append(np.unique(h)), targets.append(int(r.item[j]))
        ok = [i for i, s in enumerate(seqs) if len(s) and rec.can_score(s)]
        out = rec.recommend([seqs[i] for i in ok], [seens[i] for i in ok], 10)
        model = np.mean([ndcg(out.items[k], targets[i]) for k, i in enumerate(ok)])
        pop = np.mean([ndcg([x for x in pop_rank[:2000] if x not in set(seens[i].tolist())][:10], targets[i])
                       for i in ok])
        print(f"history cut {gap:>6} s before the event: {len(ok):,} events; {rec.name} {rec.version} NDCG@10 "
              f"{model:.4f}, popularity {pop:.4f}")


if __name__ == "__main__":
    main()
