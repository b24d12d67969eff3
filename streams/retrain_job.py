"""``streamrec retrain | shadow | models | promote | rollback``: the registry, driven from the
command line, with every change of champion announced on the ``model-updates`` topic.

The retraining job reads the Parquet segments that workers export (``--export-dir`` of the
workers): it never opens a worker's DuckDB file, which DuckDB allows one writing process only.
With ``--shadow`` a candidate that passes the offline gate is scored by the workers beside the
champion before it may be promoted (``streams/shadow_topic.py``). With ``--metrics-port`` the job serves
its own Prometheus metrics (runs by outcome, durations, the shadow comparison).

The job's options are ``streams.retrain_settings.RetrainSettings`` (environment ``STREAMREC_RETRAIN_<FIELD>``,
command line ``--field``); the Kafka side is ``Settings`` (``STREAMREC_BOOTSTRAP_SERVERS``...).
"""

from __future__ import annotations

import argparse
import logging
import time

from streamrec.streams.config import Settings
from streamrec.streams.retrain_settings import RetrainSettings

log = logging.getLogger(__name__)


KAFKA = ["bootstrap_servers", "kafka_config", "model_updates_topic", "model_evaluations_topic"]


def _settings(args: argparse.Namespace) -> tuple[RetrainSettings, Settings]:
    """The job's options and the Kafka side, each from the environment and the command line."""
    return RetrainSettings.from_args(args), Settings.from_args(args, only=KAFKA)


def _registry(job: RetrainSettings, create: bool = False):
    """The job's registry: ``RegistryError`` for a path that is not one (a missing directory is created
    only for ``retrain``, which registers versions: listing or promoting must not leave one behind a typo)."""
    from streamrec.model.registry import Registry

    return Registry(job.registry, create=create)


def _reachable(kafka: Settings) -> None:
    """Fail now (``KafkaUnreachable``, within seconds) if a change of champion could not be announced:
    before the registry changes, and before a retraining spends minutes on a model."""
    if kafka.bootstrap_servers:
        from streamrec.streams.topics import connect

        connect(kafka)


def _publish(kafka: Settings, version: str, path: str, action: str, recorded: str, then: str):
    """Announce; if that fails after the registry changed, one line that says what the registry
    recorded (``recorded``) and what follows (``then``), not only that Kafka failed."""
    from streamrec.streams.model_updates import announce
    from streamrec.streams.topics import KafkaUnreachable

    try:
        return announce(kafka.bootstrap_servers, kafka.model_updates_topic, version, path, action)
    except Exception as e:  # the broker lost since the check, or the announcement not delivered
        why = str(e) if isinstance(e, (KafkaUnreachable, RuntimeError)) else f"{type(e).__name__}: {e}"
        raise KafkaUnreachable(f"{recorded} but not announced on {kafka.model_updates_topic}: {why}"
                               + (f". {then}" if then else "")) from e


def _announce(registry, kafka: Settings, version: str, action: str) -> None:
    if not kafka.bootstrap_servers:
        print(f"{action} {version} recorded in the registry; no --bootstrap-servers, so not announced "
              "(workers pick the champion up when they start)")
        return
    _publish(kafka, version, str(registry.path(version)), action, f"{action} {version} recorded in the registry",
             f"Workers following it will not switch to {version} until `streamrec promote {version}` "
             "(same --registry and --bootstrap-servers) succeeds, or they restart")
    print(f"announced {action} {version} on {kafka.model_updates_topic}")


def _add_common(p: argparse.ArgumentParser) -> None:
    RetrainSettings.add_arguments(p, only=["registry"])
    Settings.add_arguments(p, only=KAFKA)


def _add_shadow_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("shadow comparison on live traffic (docs/design.md: Shadow mode)")
    RetrainSettings.add_arguments(g, only=RetrainSettings.SHADOW)


def configure_retrain(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    RetrainSettings.add_arguments(p.add_mutually_exclusive_group(), only=["export_dir", "ratings"])
    RetrainSettings.add_arguments(p, only=["cold", "margin", "epochs", "threads", "every", "shadow"])
    _add_shadow_options(p)
    RetrainSettings.add_arguments(p, only=["metrics_port", "metrics_host"])


def run_retrain(args, metrics=None) -> int:
    """``streamrec retrain``; ``metrics``: a ``RetrainMetrics`` to record into (default: a new one)."""
    from dataclasses import replace

    from streamrec.model.retrain import RetrainConfig, RetrainError
    from streamrec.storage.export import read_events
    from streamrec.storage.movielens import load_ratings
    from streamrec.streams.prometheus import RetrainMetrics

    job, kafka = _settings(args)
    if not job.export_dir and not job.ratings:
        raise SystemExit("retrain: give --export-dir (the workers' exports) or --ratings")
    if job.shadow and not kafka.bootstrap_servers:
        raise SystemExit("retrain --shadow: give --bootstrap-servers (the workers score the candidate and report "
                         f"on {kafka.model_evaluations_topic})")
    _reachable(kafka)  # before training: its result could not be announced
    registry = _registry(job, create=True)
    cfg = RetrainConfig(cold=job.cold, margin=job.margin, progress=True, threads=job.threads, promote=not job.shadow)
    if job.epochs is not None:  # both kinds of run: a first (cold) model too, not only a fine-tuning
        cfg.train, cfg.cold_train = replace(cfg.train, epochs=job.epochs), replace(cfg.cold_train, epochs=job.epochs)
    metrics = metrics or RetrainMetrics()
    server = None
    if job.metrics_port:
        server, _ = metrics.serve(job.metrics_host, job.metrics_port)
        print(f"metrics at http://{job.metrics_host}:{job.metrics_port}/metrics", flush=True)

    def load():
        return read_events(*job.export_dir) if job.export_dir else load_ratings(job.ratings)

    def pause() -> None:
        time.sleep(job.every[1] if job.every[0] == "seconds" else 5.0)

    last_n = -1
    try:
        while True:
            try:
                events = load()
                due = job.every is None or job.every[0] == "seconds" or len(events) - max(last_n, 0) >= job.every[1]
                if due and len(events) != last_n:
                    _retrain_once(job, kafka, registry, events, cfg, metrics)
                    last_n = len(events)
            except RetrainError as e:  # e.g. nothing new since the champion's cut-off
                metrics.runs.labels("skipped").inc()
                if job.every is None:
                    raise SystemExit(f"retrain: {e}")
                log.warning("retrain skipped: %s", e)
            except Exception:  # unreadable exports, a broker gone, a full disk ...
                metrics.runs.labels("failed").inc()
                if job.every is None:
                    raise
                log.exception("retrain run failed (counted in streamrec_retrain_runs_total{outcome=\"failed\"}); "
                              "trying again after the period")
            if job.every is None:
                return 0
            pause()
    finally:
        if server is not None:
            server.shutdown()


def _retrain_once(job: RetrainSettings, kafka: Settings, registry, events, cfg, metrics) -> str:
    """One run: train, gate, then promote / reject / shadow; returns the outcome it counted
    (the caller counts runs that raise: skipped or failed)."""
    from streamrec.model.retrain import retrain

    t0 = time.monotonic()
    result = retrain(registry, events, cfg)
    metrics.duration.labels("train").observe(time.monotonic() - t0)
    metrics.gate_ndcg.labels("candidate").set(result.candidate_ndcg)
    metrics.gate_ndcg.labels("champion").set(float("nan") if result.champion_ndcg is None else result.champion_ndcg)
    verdict = {"champion": "promoted",
               "candidate": "passed the offline gate, now in shadow"}.get(result.status, "rejected")
    champ = "none" if result.champion_ndcg is None else f"{result.champion_ndcg:.4f}"
    print(f"{result.version} ({result.mode}, parent {result.parent}): {verdict}; NDCG@10 candidate "
          f"{result.candidate_ndcg:.4f} vs champion {champ}; {result.new_items} new items; "
          f"{result.seconds:.1f}s ({result.reason})", flush=True)
    if result.status == "candidate":
        outcome = "shadow_promoted" if shadow_gate(job, kafka, registry, result.version, metrics) else "shadow_rejected"
    else:
        if result.promoted:
            _announce(registry, kafka, result.version, "promote")
        outcome = "promoted" if result.promoted else "rejected"
    metrics.runs.labels(outcome).inc()
    metrics.last_success.set_to_current_time()
    return outcome


def shadow_gate(job: RetrainSettings, kafka: Settings, registry, version: str, metrics) -> bool:
    """Shadow ``version`` on the workers, wait for the paired comparison with the champion, then
    promote it (True) or reject it (False); either way announced."""
    from streamrec.model.registry import ChampionChangedError, CorruptCheckpointError
    from streamrec.streams.shadow_topic import wait_for_shadow

    champion = registry.champion()
    if champion is None:
        raise SystemExit(f"shadow {version}: there is no champion to compare with (promote it instead)")
    path = str(registry.path(version))
    update = _publish(kafka, version, path, "shadow", f"{version} is a candidate in the registry",
                      f"Nothing is shadowed: `streamrec shadow {version}` starts the comparison")
    print(f"shadowing {version} beside champion {champion}: waiting for {job.shadow_events} paired events "
          f"(at most {job.shadow_timeout:.0f}s)", flush=True)
    still_champion = lambda: None if (c := registry.champion()) == champion else f"champion changed to {c} meanwhile"  # noqa: E731
    t0 = time.monotonic()
    metrics.shadow_started()
    try:
        decision = wait_for_shadow(
            kafka.bootstrap_servers, kafka.model_evaluations_topic, champion, version, update.announced_at,
            job.shadow_events, job.shadow_timeout, job.shadow_margin, job.shadow_alpha,
            progress=metrics.shadow_progress, still_valid=still_champion)
    except BaseException as e:  # interrupted: the workers must not score it forever
        try:
            _publish(kafka, version, path, "unshadow", f"shadow of {version} stopped ({type(e).__name__})", "")
        except Exception as lost:  # the original error is the one to report
            log.error("%s", lost)
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
            _announce(registry, kafka, version, "promote")
            return True
    registry.reject(version, f"shadow: {reason}")
    _publish(kafka, version, path, "unshadow", f"shadow: {version} rejected in the registry ({reason})",
             f"Workers keep scoring {version} beside the champion (publishing nothing) until they restart")
    print(f"shadow: {version} rejected ({reason})", flush=True)
    return False


def configure_shadow(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    p.add_argument("version", help="a registered version to compare with the champion, e.g. v3")
    _add_shadow_options(p)


def run_shadow(args) -> int:
    """``streamrec shadow vN``: exit status 0 when promoted, 1 when rejected."""
    from streamrec.model.registry import normalize_version
    from streamrec.streams.prometheus import RetrainMetrics

    job, kafka = _settings(args)
    if not kafka.bootstrap_servers:
        raise SystemExit("shadow: give --bootstrap-servers (the workers score the candidate)")
    registry = _registry(job)
    version = normalize_version(args.version)
    if registry.get(version).status == "champion":
        raise SystemExit(f"shadow: {version} is the champion already")
    registry.verify(version)  # a corrupt candidate is never shadowed (nor promoted)
    return 0 if shadow_gate(job, kafka, registry, version, RetrainMetrics()) else 1


def configure_models(p: argparse.ArgumentParser) -> None:
    RetrainSettings.add_arguments(p, only=["registry"])


def run_models(args) -> int:
    job = RetrainSettings.from_args(args)
    registry = _registry(job)
    champion = registry.champion()
    rows = registry.list()
    if not rows:
        print(f"no versions in {job.registry}")
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
    job, kafka = _settings(args)
    registry = _registry(job)
    already = registry.get(args.version).status == "champion"  # (an unknown version is reported here)
    _reachable(kafka)  # before the change: a champion the workers never hear of is worse than none
    version = registry.promote(args.version)  # verifies the checkpoint first
    if already:  # e.g. announcing again after an announcement was lost: the registry is as it was
        print(f"{version} is the champion already: the registry is unchanged")
    _announce(registry, kafka, version, "promote")
    return 0


def configure_rollback(p: argparse.ArgumentParser) -> None:
    _add_common(p)


def run_rollback(args) -> int:
    from streamrec.model.registry import NoRegistryError, RegistryError

    job, kafka = _settings(args)
    try:
        registry = _registry(job)
    except NoRegistryError as e:
        raise RegistryError(f"nothing to roll back: {e}") from e
    registry.rollback_target()  # nothing to roll back to: said before the broker is tried
    _reachable(kafka)
    version = registry.rollback()
    _announce(registry, kafka, version, "rollback")
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
