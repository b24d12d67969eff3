"""What the transformer adds over its own prior: each default model scored with and without its encoder.

The defaults (``model/config.py`` RECIPES) add item-kNN's scores to the transformer's logits, with
learned per-age weights, and a learned per-item bias. Is the encoder earning its place, or is the
model a re-weighted item-kNN? Each transformer is trained from the defaults exactly as
``bench_accuracy.py`` trains it, then scored twice on the same events: in full, and with the
encoder's term removed (the prior with its learned weights, plus the item bias). Printed: NDCG@10 of
item-kNN, the full model and the prior alone, and paired bootstrap 95% intervals over users of
full minus prior alone and of the prior alone minus item-kNN.

    python benchmarks/bench_ablation.py --datasets ml-100k --models sasrec bert4rec --protocols a
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import DATASETS, TRANSFORMERS, baseline_scorers, train_default  # noqa: E402

from streamrec.model.data import build_sequences, leave_one_out, pad_left  # noqa: E402
from streamrec.model.evaluate import model_scorer  # noqa: E402
from streamrec.model.protocols import event_metrics, loo_set, paired_bootstrap, rank_events, temporal_split  # noqa: E402
from streamrec.storage.movielens import load_ratings  # noqa: E402


def prior_scorer(model):
    """The model's scores without its encoder: the item-kNN prior (learned per-age weights) plus the
    learned item bias and, with ``repeat_bias``, the learned repeat score, for the same histories as
    ``model_scorer``."""
    if model.cfg.knn_k <= 0:
        raise SystemExit(f"{model.cfg.kind} has no item-kNN prior (knn_k 0): nothing to ablate")

    @torch.inference_mode()
    def score(histories: list[np.ndarray]) -> torch.Tensor:
        x = pad_left([h[-model.history_len:] for h in histories])
        if x.shape[1] == 0:
            x = np.zeros((len(histories), 1), np.int64)
        seq = torch.from_numpy(x)
        out = model.knn_prior(model.recent_items(seq)[:, -1]) + model.out_bias
        if model.cfg.repeat_bias:
            out = model._with_repeat(out, model._in_rows(seq))
        return out.float()

    return score


def cells(ds: str, proto: str, seed: int):
    """(events to score, keys of the rankings, training split, n_items, what the baselines count)."""
    ratings = load_ratings(DATASETS[ds](), ties="hash", seed=seed)
    if proto == "a":
        seqs, vocab = build_sequences(ratings, min_user_events=5)
        split = leave_one_out(seqs)
        return loo_set(split), ("masked", "unmasked"), split, len(vocab), split.test_inputs
    tsp = temporal_split(ratings, quantile=0.9)
    return tsp.test, ("masked",), tsp.train, len(tsp.vocab), tsp.train_seqs


def main(argv=None) -> int:
    head, rest = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["ml-100k"], choices=sorted(DATASETS))
    p.add_argument("--models", nargs="+", default=TRANSFORMERS, choices=TRANSFORMERS)
    p.add_argument("--protocols", nargs="+", default=["a"], choices=["a", "b"])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {torch.get_num_threads()} torch threads, "
          f"seed {args.seed}")
    print("| data | model | protocol | item-kNN | full model | prior + bias only | full - prior only, 95% "
          "| prior only - item-kNN, 95% |")
    print("|---|---|---|---|---|---|---|---|")
    for ds in args.datasets:
        for proto in args.protocols:
            es, keys, split, n_items, counted = cells(ds, proto, args.seed)
            knn = baseline_scorers(counted, n_items)["itemknn"]
            for kind in args.models:
                model = train_default(kind, split, n_items, {}, counted.as_list())
                scorers = {"knn": knn, "full": model_scorer(model), "prior": prior_scorer(model)}
                ranks = {name: rank_events(s, es) for name, s in scorers.items()}
                for key in keys:
                    ndcg = {name: event_metrics(r[key])["NDCG@10"] for name, r in ranks.items()}
                    d1 = paired_bootstrap(ndcg["full"], ndcg["prior"], es.users, seed=args.seed)
                    d2 = paired_bootstrap(ndcg["prior"], ndcg["knn"], es.users, seed=args.seed)
                    print(f"| {ds} | {kind} | {proto}-{key} | {ndcg['knn'].mean():.4f} | {ndcg['full'].mean():.4f} | "
                          f"{ndcg['prior'].mean():.4f} | {d1[0]:+.4f} [{d1[1]:+.4f}, {d1[2]:+.4f}] | "
                          f"{d2[0]:+.4f} [{d2[1]:+.4f}, {d2[2]:+.4f}] |", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FileNotFoundError as e:  # ML-100K needs recbole's wheel installed
        sys.exit(f"bench_ablation.py: {e}")
    except KeyboardInterrupt:
        sys.exit("bench_ablation.py: interrupted")
