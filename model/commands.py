"""CLI commands of the model: ``streamrec train``, ``streamrec evaluate``, ``streamrec recommend``.

Each command is a ``configure_X(parser)`` / ``run_X(args) -> exit code`` pair, collected in
``COMMANDS`` for the ``streamrec`` entry point to turn into argparse subcommands.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from streamrec.model import command_options as opt
from streamrec.model.config import ModelConfig, TrainConfig


def _add_data_args(p: argparse.ArgumentParser, filter_defaults: bool = True) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ratings", type=Path, metavar="FILE",
                     help="interactions file: ratings.csv (ML-20M/ml-latest), ratings.dat (ML-1M) or a RecBole .inter")
    src.add_argument("--db", type=Path, metavar="PATH", help="the DuckDB event log written by the worker pipeline")
    d = TrainConfig()
    p.add_argument("--min-rating", type=opt.REAL, default=d.min_rating if filter_defaults else None,
                   help="drop interactions rated below this (default: keep all)")
    p.add_argument("--min-user-events", type=opt.NONNEGATIVE, default=d.min_user_events if filter_defaults else None,
                   help=f"drop users with fewer events (default: {d.min_user_events}"
                   + ("" if filter_defaults else ", or the checkpoint's training value") + ")")


def _load(args):
    if args.db is not None:
        return opt.read_event_log(args.db), f"duckdb:{args.db}"
    from streamrec.storage.movielens import load_ratings

    return load_ratings(args.ratings), str(args.ratings)


def _print_metrics(results: dict[str, dict[str, float]], out=sys.stdout) -> None:
    cols = ["NDCG@10", "Recall@10", "MRR@10", "HitRate@10", "NDCG@20", "Recall@20", "MRR@20"]
    print(f"{'':24s}" + "".join(f"{c:>11s}" for c in cols), file=out)
    for name, m in results.items():
        for prefix in ("", "uniform100/", "popular100/"):
            if prefix + "NDCG@10" in m:
                label = name + (f" [{prefix[:-1]}]" if prefix else " [full]")
                print(f"{label:24s}" + "".join(f"{m[prefix + c]:11.4f}" for c in cols), file=out)


# --- train ------------------------------------------------------------------------------------


def _recipe_default(field: str, group: str) -> str:
    """The default of a field for both models, as help text ("0.2; bert4rec: 0.1")."""
    from streamrec.model.config import RECIPES

    plain = getattr(ModelConfig() if group == "model" else TrainConfig(), field)
    base, own = (RECIPES[kind][group].get(field, plain) for kind in ("sasrec", "bert4rec"))
    return f"{base}" + (f"; bert4rec: {own}" if own != base else "")


# CLI option -> (config field, group); their defaults are the model's recipe (model.config.RECIPES).
_MODEL_OPTS = {"max_len": "max_len", "d_model": "d_model", "heads": "n_heads", "layers": "n_layers",
               "dropout": "dropout", "mask_prob": "mask_prob", "last_mask": "last_mask", "negatives": "negatives",
               "future": "future", "label_smoothing": "label_smoothing", "knn_k": "knn_k"}
_TRAIN_OPTS = ["epochs", "batch_size", "lr", "weight_decay", "warmup_steps", "patience", "eval_every", "ema", "seed"]


def decay(text: str) -> float:  # (argparse names the type in its errors: "invalid decay value")
    """``--ema``: a decay in [0, 1) (argparse turns the ValueError into a one-line usage error)."""
    d = float(text)
    if not 0.0 <= d < 1.0:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, not {text}")
    return d


def share(text: str) -> float:
    """``--last-mask``: a share in [0, 1] (a one-line usage error otherwise)."""
    x = float(text)
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, not {text}")
    return x


# Each option's values (checked when the command line is parsed; 0 is kept where it means "none"/"off").
_TYPES = {"max_len": opt.COUNT, "d_model": opt.COUNT, "heads": opt.COUNT, "layers": opt.COUNT,
          "dropout": opt.BELOW_ONE, "mask_prob": opt.PROBABILITY, "last_mask": share, "negatives": opt.NONNEGATIVE,
          "future": opt.COUNT, "label_smoothing": opt.BELOW_ONE, "knn_k": opt.NONNEGATIVE,
          "epochs": opt.COUNT, "batch_size": opt.COUNT, "lr": opt.RATE, "weight_decay": opt.WEIGHT,
          "warmup_steps": opt.NONNEGATIVE, "patience": opt.COUNT, "eval_every": opt.COUNT, "ema": decay,
          "seed": opt.SEED}


def configure_train(p: argparse.ArgumentParser) -> None:
    t = TrainConfig()
    _add_data_args(p)
    p.add_argument("--model", choices=["bert4rec", "sasrec"], default="sasrec", help="architecture (default: sasrec)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="checkpoint directory to write (model.safetensors + card.json); created if missing, "
                        "checked before the data is read")
    g = p.add_argument_group("model (defaults: each model's recipe, docs/accuracy.md)")
    helps = {"max_len": "longest input sequence", "d_model": "hidden size", "heads": "attention heads",
             "layers": "transformer blocks", "dropout": "dropout",
             "mask_prob": "BERT4Rec: fraction of positions masked for the cloze task",
             "last_mask": "BERT4Rec: share of training windows that mask their newest item alone",
             "negatives": "SASRec: sampled-softmax negatives per batch; 0 = full softmax",
             "future": "SASRec: next items each position learns (1 = the next one only)",
             "label_smoothing": "SASRec: label smoothing of the full softmax",
             "knn_k": "item-kNN prior, neighbours kept per item; 0 = the plain transformer"}
    for name, field in _MODEL_OPTS.items():
        g.add_argument("--" + name.replace("_", "-"), type=_TYPES[name], default=None,
                       help=f"{helps[name]} (default: {_recipe_default(field, 'model')})")
    g.add_argument("--post-ln", action="store_true", help="post-LN blocks as in the papers (default: pre-LN)")
    g.add_argument("--no-repeat-score", action="store_true",
                   help="no learned score for the items already in the history (default: learned)")
    g = p.add_argument_group("training")
    helps = {"epochs": "maximum epochs", "batch_size": "sequences per step", "lr": "peak AdamW learning rate",
             "weight_decay": "AdamW weight decay", "warmup_steps": "linear warm-up steps",
             "patience": "early stopping: evaluations without a better validation NDCG@10",
             "eval_every": "epochs between validation runs", "seed": "random seed",
             "ema": "decay a step of the weights' moving average that is validated and kept; 0 = the last weights"}
    for name in _TRAIN_OPTS:
        g.add_argument("--" + name.replace("_", "-"), type=_TYPES[name], default=None,
                       help=f"{helps[name]} (default: {_recipe_default(name, 'train')})")
    g.add_argument("--max-minutes", type=opt.RATE, default=None,
                   help="wall-clock budget: an epoch starts only if it should end within it "
                   f"(default: {t.max_seconds / 60:g})")
    g.add_argument("--device", type=opt.device, default=t.device,
                   help="auto (CUDA if available, else CPU), cpu, cuda, cuda:1 ..., mps")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-test", action="store_true", help="skip the test-set evaluation after training")
    g.add_argument("--valid", choices=["leave-one-out", "recent"], default="leave-one-out",
                   help="early stopping's validation: each user's second-newest event, the newest held out as the "
                        "test (leave-one-out, default), or every event of the newest 5%% scored with its user's "
                        "earlier events, then a refit on all (recent: for a model that serves what comes next; "
                        "no test set; docs/accuracy.md, 'Recent validation for (b)')")


def _configs(args) -> tuple[TrainConfig, ModelConfig]:
    """The run's configurations; ValueError for options that contradict each other (e.g. --heads 3 with
    d_model 64), each option's own range being checked when the command line is parsed."""
    given = {o: getattr(args, o) for o in _TRAIN_OPTS if getattr(args, o) is not None}
    if args.max_minutes is not None:
        given["max_seconds"] = 60 * args.max_minutes
    tcfg = TrainConfig.defaults(args.model, min_rating=args.min_rating, min_user_events=args.min_user_events,
                                device=args.device, **given)
    off = {"repeat_bias": False} if args.no_repeat_score else {}
    set_opts = {f: getattr(args, o) for o, f in _MODEL_OPTS.items() if getattr(args, o) is not None}
    mcfg = ModelConfig.defaults(args.model, 0, pre_ln=not args.post_ln, **off, **set_opts)
    if mcfg.kind == "bert4rec" and mcfg.max_len < 2:
        raise ValueError(f"--max-len {mcfg.max_len} is too short for bert4rec: give 2 or more (one position "
                         "holds the mask token)")
    return tcfg, mcfg


def run_train(args) -> int:
    from streamrec.model.checkpoint import save_checkpoint
    from streamrec.model.data import build_sequences, leave_one_out
    from streamrec.model.evaluate import evaluate_split, model_scorer
    from streamrec.model.protocols import VALID_QUANTILE, temporal_holdout
    from streamrec.model.train import train

    try:  # said before the data loads
        tcfg, mcfg = _configs(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    opt.check_out_dir(args.out)  # not after minutes of training
    ratings, source = _load(args)
    seqs, vocab = build_sequences(ratings, tcfg.min_rating, tcfg.min_user_events)
    recent = args.valid == "recent"
    newest = f"the newest {1 - VALID_QUANTILE:.0%} of the events"
    split = temporal_holdout(seqs, max_history=mcfg.max_len) if recent else leave_one_out(seqs)
    n_users = len(seqs) if recent else len(split.users)  # leave-one-out keeps users with 3+ events
    if len(split.users) == 0 or len(split.valid_targets) == 0:
        why = (f"nothing happened before {newest} to train on (use --valid leave-one-out)"
               if recent and len(seqs) else "no user has enough events to train on")
        print(f"error: {why}", file=sys.stderr)
        return 2
    mcfg = replace(mcfg, n_items=len(vocab))
    print(f"{source}: {len(ratings)} events, {n_users} users, {len(vocab)} items; training {mcfg.kind}",
          file=sys.stderr)
    res = train(split, mcfg, tcfg, progress=not args.no_progress)
    metrics = {"valid": res.valid, "best_epoch": res.best_epoch, "refit_epochs": res.refit_epochs,
               "validation": args.valid}
    if recent:  # the newest events validated early stopping and the refit learned them
        print(f"validation: {newest} ({len(split.valid_targets)} scored); no test set",
              file=sys.stderr)
    elif not args.no_test:
        t0 = time.perf_counter()
        test = evaluate_split({mcfg.kind: model_scorer(res.model)}, split, len(vocab))
        metrics["test"] = test
        _print_metrics(test, out=sys.stderr)
        print(f"test evaluation {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    data = {
        "source": source,
        "cutoff_time": int(ratings.timestamp.max()) if len(ratings) else None,  # newest event used, Unix s
        "n_events": int(len(seqs.items)),
        "n_users": int(n_users),
        "n_items": len(vocab),
    }
    out = save_checkpoint(args.out, res.model, vocab, train=tcfg.to_dict(), data=data, metrics=metrics,
                          training_seconds=round(res.seconds, 2), history=res.history)
    refit = f", then refit on training + validation items for {res.refit_epochs} epochs" if res.refit_epochs else ""
    print(f"trained in {res.seconds:.1f}s (best epoch {res.best_epoch}{refit}); checkpoint written to {out}",
          file=sys.stderr)
    return 0


# --- evaluate ---------------------------------------------------------------------------------


def configure_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, metavar="DIR",
                   help="directory written by `streamrec train`")
    _add_data_args(p, filter_defaults=False)
    p.add_argument("--part", choices=["test", "valid"], default="test",
                   help="leave-one-out target: newest item (test) or the one before (valid); default test")
    p.add_argument("--no-sampled", action="store_true", help="full ranking only (skip 100-negative sampled metrics)")
    p.add_argument("--batch-size", type=opt.COUNT, default=256, help="users per scoring batch (default: 256)")
    p.add_argument("--device", type=opt.device, default="auto",
                   help="auto (CUDA if available, else CPU), cpu, cuda, cuda:1 ..., mps")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")


def run_evaluate(args) -> int:
    from streamrec.model.checkpoint import load_checkpoint
    from streamrec.model.data import build_sequences, leave_one_out
    from streamrec.model.evaluate import evaluate_split, model_scorer
    from streamrec.model.train import resolve_device

    ck = load_checkpoint(args.checkpoint, resolve_device(args.device))
    trained = TrainConfig.from_dict(ck.card.get("train", {}))
    min_rating = args.min_rating if args.min_rating is not None else trained.min_rating
    min_events = args.min_user_events if args.min_user_events is not None else trained.min_user_events
    ratings, source = _load(args)
    # The checkpoint's vocabulary: items it has never seen are dropped from histories and targets.
    seqs, vocab = build_sequences(ratings, min_rating, min_events, vocab=ck.vocab)
    split = leave_one_out(seqs)
    if len(split.users) == 0:  # (as train says; an all-zero table would read as a dreadful model)
        rating = "no --min-rating" if min_rating is None else f"--min-rating {min_rating:g}"
        print("error: no user has enough events to evaluate on: each needs 3 or more of the items the checkpoint "
              f"knows, after {rating} and --min-user-events {min_events}", file=sys.stderr)
        return 2
    res = evaluate_split({ck.model.cfg.kind: model_scorer(ck.model)}, split, len(vocab), part=args.part,
                         sampled=not args.no_sampled, batch_size=args.batch_size)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "version": ck.version, "data": source,
                          "users": len(split.users), "metrics": res}, indent=1))
    else:
        print(f"{source}: {len(split.users)} users, {ck.model.cfg.kind} {ck.version}, {args.part} targets")
        _print_metrics(res)
    return 0


# --- recommend --------------------------------------------------------------------------------


def configure_recommend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, metavar="DIR",
                   help="directory written by `streamrec train`")
    p.add_argument("--movies", type=Path, required=True, metavar="FILE", help="movies.csv with movieId,title")
    p.add_argument("--titles", nargs="+", required=True, metavar="TITLE",
                   help='watched movies in order, oldest first: whole or partial titles ("toy story", '
                   '"fellowship of the ring"); an ambiguous one lists the films it could be')
    p.add_argument("-k", type=opt.COUNT, default=10, help="how many recommendations (default: 10)")
    p.add_argument("--device", type=opt.device, default="auto",
                   help="auto (CUDA if available, else CPU), cpu, cuda, cuda:1 ..., mps")


def _normal(title: str) -> str:
    """Lower case, MovieLens' trailing article moved back ("Matrix, The (1999)" -> "the matrix (1999)")."""
    t = title.lower().strip()
    m = re.match(r"^(.*), (the|a|an)( \(\d{4}\))?$", t)
    if m:
        t = f"{m.group(2)} {m.group(1)}{m.group(3) or ''}"
    return re.sub(r"\s+", " ", t)


def find_title(query: str, titles: dict[int, str]) -> tuple[int | None, list[str]]:
    """Resolve a possibly partial title: (movieId, []) when one film fits; (None, the films that
    fit) when several do; (None, close spellings) when none does.

    A film fits when its title equals the query, contains it, or contains all its words (any
    order, case and MovieLens' trailing "..., The" ignored); several fits are ambiguous.

    >>> t = {1: "Matrix, The (1999)", 2: "Matrix Reloaded, The (2003)", 3: "Toy Story (1995)"}
    >>> find_title("the matrix", t), find_title("reloaded matrix", t), find_title("toy story (1995)", t)
    ((1, []), (2, []), (3, []))
    >>> find_title("matrix", t)
    (None, ['Matrix Reloaded, The (2003)', 'Matrix, The (1999)'])
    """
    q = _normal(query)
    norm = {mid: _normal(t) for mid, t in titles.items()}
    exact = [m for m, t in norm.items() if t == q or re.sub(r" \(\d{4}\)$", "", t) == q]
    fits = exact or [m for m, t in norm.items() if q in t]
    if not fits:
        words = set(re.findall(r"\w+", q))
        fits = [m for m, t in norm.items() if words and words <= set(re.findall(r"\w+", t))]
    if len(fits) == 1:
        return fits[0], []
    if fits:
        return None, sorted(titles[m] for m in fits)
    bare = {re.sub(r" \(\d{4}\)$", "", t): m for m, t in norm.items()}
    return None, [titles[bare[c]] for c in difflib.get_close_matches(q, bare, n=5, cutoff=0.6)]


def run_recommend(args) -> int:
    from streamrec.model.inference import TransformerRecommender
    from streamrec.storage.movielens import load_titles

    titles = load_titles(args.movies)
    ids = []
    for t in args.titles:
        mid, options = find_title(t, titles)
        if mid is None:
            words = set(re.findall(r"\w+", _normal(t)))
            fits = bool(options) and words <= set(re.findall(r"\w+", _normal(options[0])))
            shown = "\n  ".join(options[:10]) + (f"\n  ... and {len(options) - 10} more" if len(options) > 10 else "")
            why = f"fits {len(options)} films; say which" if fits else "is unknown"
            print(f"error: title {t!r} {why}" + (f"; did you mean:\n  {shown}" if options else ""), file=sys.stderr)
            return 2
        ids.append(mid)
    rec = TransformerRecommender(args.checkpoint, device=args.device)
    seq = np.array(ids, dtype=np.int64)
    if not rec.can_score(seq):
        print("error: the model knows none of these movies", file=sys.stderr)
        return 2
    out = rec.recommend([seq], [seq], args.k)
    items, scores = out.row(0)
    print(f"{rec.name} {rec.version}: top {len(items)} after " + "; ".join(titles[i] for i in ids))
    for rank, (i, s) in enumerate(zip(items, scores), 1):
        print(f"{rank:3d}. {titles.get(i, f'movieId {i}')}  ({s:.2f})")
    return 0


COMMANDS = {
    "train": (configure_train, run_train,
              "train BERT4Rec or SASRec on a ratings file or the DuckDB event log; writes a checkpoint"),
    "evaluate": (configure_evaluate, run_evaluate,
                 "leave-one-out evaluation of a checkpoint: full-ranking and sampled NDCG/Recall/MRR/HitRate@10,20"),
    "recommend": (configure_recommend, run_recommend,
                  "print a checkpoint's top-K movie titles for a sequence of watched titles"),
}
