"""``streamrec retrain | shadow | models | promote | rollback``: the registry, driven from the
command line, with every change of champion announced on the ``model-updates`` topic.

The retraining job reads the Parquet segments that workers export (``--export-dir`` of the
workers): it never opens a worker's DuckDB file, which DuckDB allows one writing process only.
With ``--shadow`` a candidate that passes the offline gate is scored by the workers beside the
champion before it may be promoted (``streams/shadow.py``). With ``--metrics-port`` the job serves
its own Prometheus metrics (runs by outcome, durations, the shadow comparison).
"""

from __future__ import annotations

import argparse
import logging
import re
import time

from streamrec.streams.config import Settings

log = logging.getLogger(__name__)


def _registry(args):
    from streamrec.model.registry import Registry

    return Registry(args.registry)


def _announce(args, version: str, action: str) -> None:
    if not args.bootstrap_servers:
        print(f"{action} {version} recorded in the registry; no --bootstrap-servers, so not announced "
              "(workers pick the champion up when they start)")
        return
    from streamrec.streams.model_updates import announce

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
    Settings.add_arguments(p, only=["bootstrap_servers", "kafka_config", "model_updates_topic", "model_evaluations_topic"])


def parse_seconds(text: str) -> float:
    """``"90"`` or ``"90s"`` -> 90.0; ``"10m"`` -> 600.0; ``"1h"`` -> 3600.0.

    >>> parse_seconds("45"), parse_seconds("10m")
    (45.0, 600.0)
    """
    unit, value = parse_every(text if text.strip()[-1:].isalpha() else f"{text}s")
    if unit != "seconds":
        raise argparse.ArgumentTypeError(f"{text!r}: a duration, e.g. 300, 90s, 10m or 1h")
    return value


def _add_shadow_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("shadow comparison on live traffic (README: Shadow mode)")
    g.add_argument("--shadow-events", type=int, default=2000,
                   help="paired events (summed over the workers) before deciding (default %(default)s)")
    g.add_argument("--shadow-timeout", type=parse_seconds, default=3600.0,
                   help="reject for lack of evidence after this long: 600, 90s, 10m, 2h (default 1h)")
    g.add_argument("--shadow-alpha", type=float, default=0.05,
                   help="one-sided error rate of the confidence bounds (default %(default)s)")
    g.add_argument("--shadow-margin", type=float, default=0.005,
                   help="promote iff the lower bound of mean NDCG@10(candidate - champion) >= -margin, reject iff "
                        "its upper bound < -margin (default %(default)s)")


def configure_retrain(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--export-dir", nargs="+", help="workers' Parquet export directories")
    src.add_argument("--ratings", help="a ratings file instead (ML-20M csv, ML-1M dat, RecBole .inter)")
    p.add_argument("--cold", action="store_true", help="train from scratch instead of warm-starting the champion")
    p.add_argument("--margin", type=float, default=0.005,
                   help="offline gate: pass iff candidate NDCG@10 >= champion NDCG@10 - margin (default %(default)s)")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: the job's default)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default %(default)s: leave the other core to the workers)")
    p.add_argument("--every", type=parse_every, default=None,
                   help="repeat: a period (90s, 10m, 2h) or a number of new events (50000ev); default: once")
    p.add_argument("--shadow", action="store_true",
                   help="after the offline gate, have the workers score the candidate beside the champion on live "
                        "traffic and promote it only if the paired comparison says it is not worse")
    _add_shadow_options(p)
    p.add_argument("--metrics-port", type=int, default=0,
                   help="serve Prometheus /metrics of the job on this port (default 0: off)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of /metrics (default %(default)s)")


def run_retrain(args, metrics=None) -> int:
    """``streamrec retrain``; ``metrics``: a ``RetrainMetrics`` to record into (default: a new one)."""
    from dataclasses import replace

    from streamrec.model.retrain import RetrainConfig, RetrainError
    from streamrec.storage.export import read_events
    from streamrec.storage.movielens import load_ratings
    from streamrec.streams.metrics import RetrainMetrics

    if args.shadow and not args.bootstrap_servers:
        raise SystemExit("retrain --shadow: give --bootstrap-servers (the workers score the candidate and report "
                         f"on {args.model_evaluations_topic})")
    registry = _registry(args)
    cfg = RetrainConfig(cold=args.cold, margin=args.margin, progress=True, threads=args.threads,
                        promote=not args.shadow)
    if args.epochs is not None:
        cfg.train = replace(cfg.train, epochs=args.epochs)
    metrics = metrics or RetrainMetrics()
    server = None
    if args.metrics_port:
        server, _ = metrics.serve(args.metrics_host, args.metrics_port)
        print(f"metrics at http://{args.metrics_host}:{args.metrics_port}/metrics", flush=True)

    def load():
        return read_events(*args.export_dir) if args.export_dir else load_ratings(args.ratings)

    def pause() -> None:
        time.sleep(args.every[1] if args.every[0] == "seconds" else 5.0)

    last_n = -1
    try:
        while True:
            try:
                events = load()
                due = args.every is None or args.every[0] == "seconds" or len(events) - max(last_n, 0) >= args.every[1]
                if due and len(events) != last_n:
                    _retrain_once(args, registry, events, cfg, metrics)
                    last_n = len(events)
            except RetrainError as e:  # e.g. nothing new since the champion's cut-off
                metrics.runs.labels("skipped").inc()
                if args.every is None:
                    raise SystemExit(f"retrain: {e}")
                log.warning("retrain skipped: %s", e)
            except Exception:  # unreadable exports, a broker gone, a full disk ...
                metrics.runs.labels("failed").inc()
                if args.every is None:
                    raise
                log.exception("retrain run failed (counted in streamrec_retrain_runs_total{outcome=\"failed\"}); "
                              "trying again after the period")
            if args.every is None:
                return 0
            pause()
    finally:
        if server is not None:
            server.shutdown()


def _retrain_once(args, registry, events, cfg, metrics) -> str:
    """One run: train, gate, then promote / reject / shadow; returns the outcome it counted
    (the caller counts runs that raise: skipped or failed)."""
    from streamrec.model.retrain import retrain

    t0 = time.monotonic()
    result = retrain(registry, events, cfg)
    metrics.duration.labels("train").observe(time.monotonic() - t0)
    metrics.gate_ndcg.labels("candidate").set(result.candidate_ndcg)
    metrics.gate_ndcg.labels("champion").set(float("nan") if result.champion_ndcg is None else result.champion_ndcg)
    verdict = {"champion": "promoted", "candidate": "passed the offline gate, now in shadow"}.get(result.status, "rejected")
    champ = "none" if result.champion_ndcg is None else f"{result.champion_ndcg:.4f}"
    print(f"{result.version} ({result.mode}, parent {result.parent}): {verdict}; NDCG@10 candidate "
          f"{result.candidate_ndcg:.4f} vs champion {champ}; {result.new_items} new items; "
          f"{result.seconds:.1f}s ({result.reason})", flush=True)
    if result.status == "candidate":
        outcome = "shadow_promoted" if shadow_gate(args, registry, result.version, metrics) else "shadow_rejected"
    else:
        if result.promoted:
            _announce(args, result.version, "promote")
        outcome = "promoted" if result.promoted else "rejected"
    metrics.runs.labels(outcome).inc()
    metrics.last_success.set_to_current_time()
    return outcome


def shadow_gate(args, registry, version: str, metrics) -> bool:
    """Shadow ``version`` on the workers, wait for the paired comparison with the champion, then
    promote it (True) or reject it (False); either way announced."""
    from streamrec.model.registry import ChampionChangedError, CorruptCheckpointError
    from streamrec.streams.model_updates import announce
    from streamrec.streams.shadow import wait_for_shadow

    champion = registry.champion()
    if champion is None:
        raise SystemExit(f"shadow {version}: there is no champion to compare with (promote it instead)")
    path, topic = str(registry.path(version)), args.model_updates_topic
    update = announce(args.bootstrap_servers, topic, version, path, "shadow")
    print(f"shadowing {version} beside champion {champion}: waiting for {args.shadow_events} paired events "
          f"(at most {args.shadow_timeout:.0f}s)", flush=True)
    still_champion = lambda: None if (c := registry.champion()) == champion else f"champion changed to {c} meanwhile"  # noqa: E731
    t0 = time.monotonic()
    metrics.shadow_started()
    try:
        decision = wait_for_shadow(
            args.bootstrap_servers, args.model_evaluations_topic, champion, version, update.announced_at,
            args.shadow_events, args.shadow_timeout, args.shadow_margin, args.shadow_alpha,
            progress=metrics.shadow_progress, still_valid=still_champion)
    except BaseException:  # interrupted: the workers must not score it forever
        announce(args.bootstrap_servers, topic, version, path, "unshadow")
        raise
    finally:
        metrics.duration.labels("shadow").observe(time.monotonic() - t0)
    reason = decision.reason
    if decision.verdict == "promote":
        try:
            registry.promote(version, expect_champion=champion)
        except (ChampionChangedError, CorruptCheckpointError) as e:
            reason = f"{reason}; but {e}"
        else:
            print(f"shadow: {version} promoted ({reason})", flush=True)
            _announce(args, version, "promote")
            return True
    registry.reject(version, f"shadow: {reason}")
    announce(args.bootstrap_servers, topic, version, path, "unshadow")
    print(f"shadow: {version} rejected ({reason})", flush=True)
    return False


def configure_shadow(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("version", help="a registered version to compare with the champion, e.g. v3")
    _add_shadow_options(p)


def run_shadow(args) -> int:
    """``streamrec shadow vN``: exit status 0 when promoted, 1 when rejected."""
    from streamrec.model.registry import normalize_version
    from streamrec.streams.metrics import RetrainMetrics

    if not args.bootstrap_servers:
        raise SystemExit("shadow: give --bootstrap-servers (the workers score the candidate)")
    registry = _registry(args)
    version = normalize_version(args.version)
    if registry.get(version).status == "champion":
        raise SystemExit(f"shadow: {version} is the champion already")
    registry.verify(version)  # a corrupt candidate is never shadowed (nor promoted)
    return 0 if shadow_gate(args, registry, version, RetrainMetrics()) else 1


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
                "train the next model version from exported events, gate it offline (and with --shadow on live "
                "traffic), promote and announce it"),
    "shadow": (configure_shadow, run_shadow,
               "score a registered candidate beside the champion on live traffic, then promote or reject it "
               "(exit status 0: promoted, 1: rejected)"),
    "models": (configure_models, run_models, "list the registry's versions (* marks the champion)"),
    "promote": (configure_promote, run_promote, "make a version champion (after verifying it) and announce it"),
    "rollback": (configure_rollback, run_rollback, "reinstate the previous champion and announce it"),
}
