"""Accuracy of BERT4Rec, SASRec and popularity on MovieLens, leave-one-out, full ranking.

    python benchmarks/bench_accuracy.py                      # ml-latest-small + ML-100K, both models
    python benchmarks/bench_accuracy.py --datasets ml-100k --models sasrec --max-minutes 2

Protocol: all ratings (no rating filter), users with >= 5 events, newest item = test target,
second newest = validation target (early stopping), the rest is training data. Full ranking
over every item the user has not seen; sampled metrics (100 negatives, uniform and
popularity-sampled) are printed alongside for comparison with the papers.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamrec.model.config import ModelConfig, TrainConfig  # noqa: E402
from streamrec.model.data import build_sequences, leave_one_out  # noqa: E402
from streamrec.model.evaluate import evaluate_split, model_scorer  # noqa: E402
from streamrec.model.train import train  # noqa: E402
from streamrec.storage.movielens import load_ratings, recbole_ml100k_path  # noqa: E402

DATASETS = {
    "ml-latest-small": lambda: Path(__file__).resolve().parents[1] / "tests" / "data" / "ratings.csv",
    "ml-100k": recbole_ml100k_path,
}
COLS = ["NDCG@10", "Recall@10", "MRR@10", "NDCG@20", "Recall@20"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    p.add_argument("--models", nargs="+", choices=["sasrec", "bert4rec"], default=["sasrec", "bert4rec"])
    p.add_argument("--max-len", type=int, default=200, help="input length (default 200)")
    p.add_argument("--d-model", type=int, default=64, help="hidden size (default 64)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=200, help="maximum epochs (early stopping usually ends sooner)")
    p.add_argument("--patience", type=int, default=8, help="validation rounds without improvement before stopping")
    p.add_argument("--max-minutes", type=float, default=4.0, help="training budget per model and dataset")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", type=Path, help="also write all results to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    # Per-model recipe: SASRec+ (full softmax) learns fast; BERT4Rec's cloze signal is sparser
    # (15% of positions), so it gets a higher learning rate and lower dropout.
    recipes = {
        "sasrec": dict(model=dict(dropout=0.2), train=dict(lr=1e-3)),
        "bert4rec": dict(model=dict(dropout=0.1, mask_prob=0.2), train=dict(lr=2e-3)),
    }
    results = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__, "runs": {}}
    for ds in args.datasets:
        ratings = load_ratings(DATASETS[ds]())
        seqs, vocab = build_sequences(ratings, min_rating=None, min_user_events=5)
        split = leave_one_out(seqs)
        print(f"\n== {ds}: {len(ratings)} ratings, {len(split.users)} users, {len(vocab)} items", flush=True)
        scorers, seconds, epochs = {}, {}, {}
        for kind in args.models:
            r = recipes[kind]
            mcfg = ModelConfig(kind=kind, n_items=len(vocab), max_len=args.max_len, d_model=args.d_model,
                               n_heads=args.heads, n_layers=args.layers, **r["model"])
            tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, patience=args.patience,
                               warmup_steps=100, seed=args.seed, max_seconds=60 * args.max_minutes, **r["train"])
            res = train(split, mcfg, tcfg, progress=sys.stderr.isatty())
            scorers[kind], seconds[kind] = model_scorer(res.model), res.seconds
            epochs[kind] = (res.best_epoch, res.history[-1]["epoch"])
            print(f"{kind}: {res.seconds:.0f}s, best epoch {res.best_epoch} of {res.history[-1]['epoch']}, "
                  f"valid NDCG@10 {res.valid['NDCG@10']:.4f}", flush=True)
        t0 = time.perf_counter()
        test = evaluate_split(scorers, split, len(vocab), seed=args.seed)
        print(f"(test evaluation {time.perf_counter() - t0:.1f}s)")
        print(f"{'model':12s}{'protocol':>12s}" + "".join(f"{c:>11s}" for c in COLS) + f"{'train s':>9s}")
        for name, m in test.items():
            for prefix, label in (("", "full"), ("uniform100/", "uniform100"), ("popular100/", "popular100")):
                if prefix + "NDCG@10" in m:
                    t = f"{seconds[name]:9.0f}" if name in seconds and not prefix else ""
                    print(f"{name:12s}{label:>12s}" + "".join(f"{m[prefix + c]:11.4f}" for c in COLS) + t)
        results["runs"][ds] = {"users": len(split.users), "items": len(vocab), "events": len(ratings),
                               "metrics": test, "train_seconds": seconds, "epochs_best_of_run": epochs}
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
