"""``streamrec retrain | models | promote | rollback``: the registry, driven from the command line,
with every change of champion announced on the ``model-updates`` topic.

The retraining job reads the Parquet segments that workers export (``--export-dir`` of the
workers): it never opens a worker's DuckDB file, which DuckDB allows one writing process only.
"""

from __future__ import annotations

import argparse
import logging
import re
import time

from streams.config import Settings

log = logging.getLogger(__name__)


def _registry(args):
    from model.registry import Registry

    return Registry(args.registry)


def _announce(args, version: str, action: str) -> None:
    if not args.bootstrap_servers:
        print(f"{action} {version} recorded in the registry; no --bootstrap-servers, so not announced "
              "(workers pick the champion up when they start)")
        return
    from streams.model_updates import announce

    announce(args.bootstrap_servers, args.model_updates_topic, version, str(_registry(args).path(version)), action)
    print(f"announced {action} {version} on {args.model_updates_topic}")


def parse_every(text: str) -> tuple[str, float]:
    """``"10m"`` -> ("seconds", 600); ``"5000ev"`` -> ("events", 5000).

    >>> parse_every("90s"), parse_every("2h"), parse_every("20000ev")
    (('seconds', 90.0), ('seconds', 7200.0), ('events', 20000.0))
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|ev|events)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"--every {text!r}: use e.g. 90s, 10m, 2h or 50000ev")
    value, unit = float(m.group(1)), m.group(2)
    if unit in ("ev", "events"):
        return "events", value
    return "seconds", value * {"s": 1, "m": 60, "h": 3600}[unit]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", required=True, help="model registry directory")
    Settings.add_arguments(p, only=["bootstrap_servers", "model_updates_topic"])


def configure_retrain(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--export-dir", nargs="+", help="workers' Parquet export directories")
    src.add_argument("--ratings", help="a ratings file instead (ML-20M csv, ML-1M dat, RecBole .inter)")
    p.add_argument("--cold", action="store_true", help="train from scratch instead of warm-starting the champion")
    p.add_argument("--margin", type=float, default=0.005,
                   help="promote iff candidate NDCG@10 >= champion NDCG@10 - margin (default %(default)s)")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: the job's default)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default %(default)s: leave the other core to the workers)")
    p.add_argument("--every", type=parse_every, default=None,
                   help="repeat: a period (90s, 10m, 2h) or a number of new events (50000ev); default: once")


def run_retrain(args) -> int:
    from dataclasses import replace

    from model.retrain import RetrainConfig, RetrainError, retrain
    from storage.export import read_events
    from storage.movielens import load_ratings

    registry = _registry(args)
    cfg = RetrainConfig(cold=args.cold, margin=args.margin, progress=True, threads=args.threads)
    if args.epochs is not None:
        cfg.train = replace(cfg.train, epochs=args.epochs)

    def load():
        return read_events(*args.export_dir) if args.export_dir else load_ratings(args.ratings)

    last_n = -1
    while True:
        events = load()
        due = args.every is None or args.every[0] == "seconds" or len(events) - max(last_n, 0) >= args.every[1]
        if due and len(events) != last_n:
            try:
                result = retrain(registry, events, cfg)
            except RetrainError as e:  # e.g. nothing new since the champion's cut-off
                if args.every is None:
                    raise SystemExit(f"retrain: {e}")
                log.warning("retrain skipped: %s", e)
                time.sleep(args.every[1] if args.every[0] == "seconds" else 5.0)
                continue
            last_n = len(events)
            verdict = "promoted" if result.promoted else "rejected"
            champ = "none" if result.champion_ndcg is None else f"{result.champion_ndcg:.4f}"
            print(f"{result.version} ({result.mode}, parent {result.parent}): {verdict}; NDCG@10 candidate "
                  f"{result.candidate_ndcg:.4f} vs champion {champ}; {result.new_items} new items; "
                  f"{result.seconds:.1f}s ({result.reason})", flush=True)
            if result.promoted:
                _announce(args, result.version, "promote")
        if args.every is None:
            return 0
        time.sleep(args.every[1] if args.every[0] == "seconds" else 5.0)


def configure_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", required=True, help="model registry directory")


def run_models(args) -> int:
    registry = _registry(args)
    champion = registry.champion()
    rows = registry.list()
    if not rows:
        print(f"no versions in {args.registry}")
        return 0
    for v in rows:
        gate = (v.metrics or {}).get("gate", {})
        fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
        metrics = f"gate NDCG@10={fmt(gate.get('NDCG@10'))} (champion {fmt(gate.get('champion_NDCG@10'))})"
        print(f"{'*' if v.version == champion else ' '} {v.version:>5} {v.status:<9} parent={v.parent or '-':<5} "
              f"cutoff={v.cutoff_time} train={v.training_seconds or 0:.1f}s created={v.created} {metrics}"
              + (f" reason: {v.reason}" if v.reason else ""))
    return 0


def configure_promote(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("version", help="version to make champion, e.g. v3")


def run_promote(args) -> int:
    version = _registry(args).promote(args.version)  # verifies the checkpoint first
    _announce(args, version, "promote")
    return 0


def configure_rollback(p: argparse.ArgumentParser) -> None:
    _add_common(p)


def run_rollback(args) -> int:
    version = _registry(args).rollback()
    _announce(args, version, "rollback")
    return 0


COMMANDS = {
    "retrain": (configure_retrain, run_retrain,
                "train the next model version from exported events, gate it offline, promote and announce it"),
    "models": (configure_models, run_models, "list the registry's versions (* marks the champion)"),
    "promote": (configure_promote, run_promote, "make a version champion (after verifying it) and announce it"),
    "rollback": (configure_rollback, run_rollback, "reinstate the previous champion and announce it"),
}
