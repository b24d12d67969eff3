"""Every model x protocol on MovieLens, with the transformers trained from the CLI defaults.

    python benchmarks/bench_accuracy.py                        # ml-latest-small + ML-100K, all models
    python benchmarks/bench_accuracy.py --datasets ml-100k --models sasrec --protocols a

Protocols (``model.protocols``): (a) leave-one-out, full ranking, seen items masked and unmasked;
(b) global temporal split at the 90% time quantile, every later event scored with the user's strictly
earlier events; its early stopping validates the same way one step back (the newest 5% of the pre-T
events, ``--b-valid recent``). Same data, users (>= 5 events), candidates and masking for every model. Baselines
are fit on everything the transformer may use (for (a), the test inputs, validation item included;
for (b), every event before T). Same-second ties in hash order (``--ties file`` for file order).
For each transformer: paired bootstrap 95% interval over users of its difference to the best
baseline of that protocol.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamrec.model.baselines import ItemKNNRecommender, TransitionRecommender  # noqa: E402
from streamrec.model.config import ModelConfig, TrainConfig  # noqa: E402
from streamrec.model.data import build_sequences, leave_one_out  # noqa: E402
from streamrec.model.evaluate import item_counts, model_scorer, popularity_scorer  # noqa: E402
from streamrec.model.protocols import METRICS, event_metrics, loo_set, paired_bootstrap, rank_events, temporal_split  # noqa: E402
from streamrec.model.recommender import PopularityRecommender  # noqa: E402
from streamrec.model.train import train  # noqa: E402
from streamrec.model.transformer import REPEAT_SCALE  # noqa: E402
from streamrec.storage.movielens import load_ratings, recbole_ml100k_path  # noqa: E402

DATASETS = {
    "ml-latest-small": lambda: Path(__file__).resolve().parents[1] / "tests" / "data" / "ratings.csv",
    "ml-100k": recbole_ml100k_path,
}
BASELINES = ["popularity", "recent-pop", "item2item", "itemknn"]
TRANSFORMERS = ["sasrec", "bert4rec"]
RECENT = 10_000  # events in the recent-popularity window
REFRESH = os.environ.get("KNN_REFRESH", "1") == "1"
SETS: dict = {}  # --set overrides of the defaults (experiments only; the table uses none)
TRAIN_SEED = [TrainConfig().seed]  # --train-seed: initial weights, batch order, dropout and cloze masks


def baseline_scorers(seqs, n_items: int) -> dict:
    """Scorers of the four baselines fit on per-user sequences ``seqs`` (with times)."""
    hs = seqs.as_list()
    recent = PopularityRecommender(window=RECENT)
    recent.observe(seqs.recent_items(RECENT))
    ids, cnt = recent.ranked()
    rc = np.zeros(n_items + 1)
    rc[ids] = cnt
    return {"popularity": popularity_scorer(item_counts(hs, n_items)),
            "recent-pop": popularity_scorer(rc + 1e-3 * item_counts(hs, n_items)),  # all-time breaks ties
            "item2item": TransitionRecommender().fit(hs).scorer(n_items),
            "itemknn": ItemKNNRecommender().fit(hs).scorer(n_items)}


def train_default(kind: str, split, n_items: int, log: dict, counted=None) -> torch.nn.Module:
    """Train ``kind`` from the defaults; ``counted``: the sequences the baselines count, which an
    item-kNN prior's table then counts too (same data; the weights saw the training split only)."""
    sets = {k.split(".", 1)[1]: v for k, v in SETS.items() if k.startswith(kind + ".")}
    mf = {f.name for f in fields(ModelConfig)}
    mcfg = ModelConfig.defaults(kind, n_items, **{k: v for k, v in sets.items() if k in mf})
    tcfg = TrainConfig.defaults(kind, **{"seed": TRAIN_SEED[0], **{k: v for k, v in sets.items() if k not in mf}})
    res = train(split, mcfg, tcfg, progress=sys.stderr.isatty())
    log.update(seconds=round(res.seconds, 1), cpu_seconds=round(res.cpu_seconds, 1), best_epoch=res.best_epoch,
               epochs=res.history[-1]["epoch"],
               valid_ndcg10=round(res.valid.get("NDCG@10", 0.0), 4), refit_epochs=res.refit_epochs)
    if res.model.cfg.repeat_bias:  # the learned repeat score (negative: seen items pushed down)
        log["repeat_score"] = round(REPEAT_SCALE * float(res.model.repeat.detach()), 3)
    print(f"  {kind}: {res.seconds:.0f}s, best epoch {res.best_epoch} of {res.history[-1]['epoch']}, "
          f"valid NDCG@10 {res.valid.get('NDCG@10', 0):.4f}"
          + (f", repeat score {log['repeat_score']:+.2f}" if "repeat_score" in log else "")
          + (f", then refit on training + validation items for {res.refit_epochs} epochs" if res.refit_epochs else ""),
          flush=True)
    if REFRESH and counted is not None and res.model.cfg.knn_k > 0:
        res.model.fit_knn(counted)
    return res.model


def run_dataset(ds: str, args) -> dict:
    ratings = load_ratings(DATASETS[ds](), ties=args.ties, seed=args.seed)
    seqs, vocab = build_sequences(ratings, min_user_events=5)
    split = leave_one_out(seqs)
    out = {"events": len(ratings), "users": len(split.users), "items": len(vocab), "train": {}, "metrics": {},
           "intervals": {}}
    print(f"\n== {ds}: {len(ratings)} events, {len(split.users)} users, {len(vocab)} items", flush=True)
    ranks: dict[str, dict[str, np.ndarray]] = {}  # protocol -> model -> ranks
    users: dict[str, np.ndarray] = {}
    if "a" in args.protocols:
        es = loo_set(split)
        users["a"] = es.users
        scorers = baseline_scorers(split.test_inputs, len(vocab))
        for kind in args.models:
            log = out["train"].setdefault(f"{kind}/a", {})
            scorers[kind] = model_scorer(train_default(kind, split, len(vocab), log, split.test_inputs.as_list()))
        for name, s in scorers.items():
            r = rank_events(s, es)
            ranks.setdefault("a-masked", {})[name] = r["masked"]
            ranks.setdefault("a-unmasked", {})[name] = r["unmasked"]
    if "b" in args.protocols:
        tsp = temporal_split(ratings, quantile=args.quantile, valid=args.b_valid)
        users["b"] = tsp.test.users
        print(f"  (b): T = {time.strftime('%Y-%m-%d', time.gmtime(tsp.cut_time))}, {len(tsp.test.targets)} events "
              f"after T, {np.mean(tsp.test.targets == 0):.1%} of their items unknown at T", flush=True)
        scorers = baseline_scorers(tsp.train_seqs, len(tsp.vocab))
        for kind in args.models:
            log = out["train"].setdefault(f"{kind}/b", {})
            scorers[kind] = model_scorer(train_default(kind, tsp.train, len(tsp.vocab), log, tsp.train_seqs.as_list()))
        ranks["b"] = {name: rank_events(s, tsp.test)["masked"] for name, s in scorers.items()}
    for proto, by_model in ranks.items():
        u = users[proto[0]]
        per = {name: event_metrics(r) for name, r in by_model.items()}
        out["metrics"][proto] = {name: {k: float(v.mean()) for k, v in m.items()} for name, m in per.items()}
        best = max(BASELINES, key=lambda b: out["metrics"][proto][b]["NDCG@10"])
        for kind in args.models:
            d, lo, hi = paired_bootstrap(per[kind]["NDCG@10"], per[best]["NDCG@10"], u, seed=args.seed)
            out["intervals"][f"{proto}/{kind}"] = {"vs": best, "diff": d, "lo": lo, "hi": hi}
    print_table(out, args.models)
    return out


def print_table(out: dict, kinds: list[str]) -> None:
    """Markdown: every model x protocol, then each transformer's interval against the best baseline."""
    print("| model | protocol | " + " | ".join(METRICS) + " | training: wall s (CPU s), epochs |")
    print("|---|---|" + "---|" * (len(METRICS) + 1))
    for proto, by_model in out["metrics"].items():
        for name, m in by_model.items():
            t = out["train"].get(f"{name}/{proto[0]}")
            cell = f"{t['seconds']:.0f} ({t['cpu_seconds']:.0f}), best {t['best_epoch']} of {t['epochs']}" if t else ""
            cell += ", refit" if t and t.get("refit_epochs") else ""
            print(f"| {name} | {proto} | " + " | ".join(f"{m[c]:.4f}" for c in METRICS) + f" | {cell} |")
    print("\n| transformer | protocol | best baseline | NDCG@10 difference | 95% interval |")
    print("|---|---|---|---|---|")
    for key, iv in out["intervals"].items():
        proto, kind = key.rsplit("/", 1)
        verdict = "" if iv["lo"] > 0 or iv["hi"] < 0 else " (includes 0)"
        print(f"| {kind} | {proto} | {iv['vs']} | {iv['diff']:+.4f} | [{iv['lo']:+.4f}, {iv['hi']:+.4f}]{verdict} |")


def merge(paths: list[Path]) -> int:
    runs: dict[str, dict] = {}
    for path in paths:
        try:
            res = json.loads(path.read_text())
            missing = [k for k in ("machine", "date", "ties", "overrides", "runs") if k not in res]
            if missing:
                raise KeyError(", ".join(missing))
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"bench_accuracy: {path} is not a --json-out file of this benchmark: {type(e).__name__}: {e}",
                  file=sys.stderr)
            return 1
        print(f"{path}: {res['machine']}, {res['date']}, ties {res['ties']}, (b) validation "
              f"{res.get('b_valid', 'last')}, overrides {res['overrides'] or 'none'}")
        for ds, out in res["runs"].items():
            got = runs.setdefault(ds, {"train": {}, "metrics": {}, "intervals": {}})
            got["train"].update(out["train"])
            for key in ("metrics", "intervals"):  # {protocol: {model: ...}}: merge per protocol
                for proto, by_model in out[key].items():
                    have = got[key].setdefault(proto, {})
                    for name, v in by_model.items():  # baselines must agree (same data, seed, ties)
                        if key == "metrics" and name in BASELINES and name in have and have[name] != v:
                            print(f"warning: {ds} {proto} {name} differs between the files: not one split")
                        have[name] = v
    for ds, out in runs.items():
        print(f"\n== {ds}")
        print_table(out, TRANSFORMERS)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    p.add_argument("--models", nargs="*", choices=TRANSFORMERS, default=TRANSFORMERS)
    p.add_argument("--protocols", nargs="+", choices=["a", "b"], default=["a", "b"])
    p.add_argument("--ties", choices=["hash", "file"], default="hash", help="same-second order (default: hash)")
    p.add_argument("--quantile", type=float, default=0.9, help="(b): share of events before T (default 0.9)")
    p.add_argument("--b-valid", choices=["recent", "last"], default="recent",
                   help="(b): early stopping validates on the newest 5%% of pre-T events, scored as (b) scores "
                        "(recent, default), or on each user's newest pre-T event (last: how results before this "
                        "option validated)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--seed", type=int, default=0,
                   help="order of same-second events (so, in (a), which item is a user's target) and the bootstrap's "
                        "resamples (default 0); training's own randomness is --train-seed")
    p.add_argument("--train-seed", type=int, default=TrainConfig().seed,
                   help=f"the transformers' initial weights, batch order, dropout and cloze masks (default: the "
                        f"CLI's, {TrainConfig().seed}; every run before 2026-11-27 11:42 UTC used it)")
    p.add_argument("--json-out", type=Path, help="also write all results to this JSON file")
    p.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                   help="print one table per data set from the --json-out files of separate runs "
                        "(e.g. one per protocol)")
    p.add_argument("--set", nargs="*", default=[], metavar="KIND.FIELD=JSON",
                   help="experiment: override a default, e.g. sasrec.lr=0.002 (results then are not the defaults')")
    args = p.parse_args(argv)
    SETS.update({k: json.loads(v) for k, v in (a.split("=", 1) for a in args.set)})
    TRAIN_SEED[0] = args.train_seed
    if args.merge:
        return merge(args.merge)
    torch.set_num_threads(args.threads)
    results = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
               "ties": args.ties, "b_valid": args.b_valid, "seed": args.seed, "train_seed": args.train_seed,
               "overrides": SETS, "runs": {}}
    for ds in args.datasets:
        results["runs"][ds] = run_dataset(ds, args)
        if args.json_out:
            args.json_out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FileNotFoundError as e:  # ML-100K needs recbole's wheel installed
        sys.exit(f"bench_accuracy.py: {e}")
    except KeyboardInterrupt:
        sys.exit("bench_accuracy.py: interrupted")
