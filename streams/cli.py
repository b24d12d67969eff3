"""The ``streamrec`` command: ``streamrec COMMAND --help`` describes each one."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import time

from streamrec.streams.config import Settings

KAFKA = ["bootstrap_servers"]
TOPICS = ["interactions_topic", "dlq_topic", "recommendations_topic", "partitions"]


def _need_bootstrap(settings: Settings) -> None:
    if not settings.bootstrap_servers:
        sys.exit("error: give --bootstrap-servers (or STREAMREC_BOOTSTRAP_SERVERS); "
                 "`streamrec broker` starts an embedded one and prints its address")


def cmd_broker(args) -> int:
    from streamrec.streams.broker import BrokerError, EmbeddedBroker
    from streamrec.streams.topics import ensure_topics

    broker = EmbeddedBroker(port=args.port or None, data_dir=args.data_dir or None)
    try:
        broker.start()
    except (BrokerError, OSError, RuntimeError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    ensure_topics(Settings(bootstrap_servers=broker.bootstrap, partitions=args.partitions))
    print(f"Kafka bootstrap servers: {broker.bootstrap}"
          + (f" (persistent: {args.data_dir})" if args.data_dir else " (memory storage: lost when it stops)"), flush=True)
    print(f"  export STREAMREC_BOOTSTRAP_SERVERS={broker.bootstrap}   # then: streamrec worker / replay", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    failure = None
    try:
        while not stop and (failure := broker.failure()) is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        if failure is None:
            print("stopping broker", flush=True)
        broker.stop()
    if failure is not None:
        print(f"error: {failure}", file=sys.stderr, flush=True)
        return 1
    return 0


def cmd_worker(args) -> int:
    from streamrec.streams.topics import ensure_topics
    from streamrec.streams.worker import run_worker

    settings = Settings.from_args(args)
    _need_bootstrap(settings)
    ensure_topics(settings)
    run_worker(settings, loglevel=args.loglevel)
    return 0


def cmd_replay(args) -> int:
    from streamrec.streams.replay import replay_file
    from streamrec.streams.topics import ensure_topics

    settings = Settings.from_args(args)
    _need_bootstrap(settings)
    ensure_topics(settings)
    stats = replay_file(args.file, settings.bootstrap_servers, settings.interactions_topic, speedup=args.speedup,
                        min_rating=args.min_rating, start=args.start, limit=args.limit, progress=not args.quiet)
    print(f"replayed {stats.events} events in {stats.seconds:.2f}s: {stats.rate:,.0f} events/s")
    return 0


def cmd_demo(args) -> int:
    from streamrec.streams.demo import run_demo

    return run_demo(args)


def _add_replay_options(p: argparse.ArgumentParser, default_speedup: float | None = 0.0) -> None:
    p.add_argument("--speedup", type=float, default=default_speedup,
                   help="divide event-time gaps by this factor (0: as fast as possible; default %(default)s)")
    p.add_argument("--min-rating", type=float, default=None, help="only ratings >= this value")
    p.add_argument("--start", type=int, default=0, help="first event (in time order) to replay")
    p.add_argument("--limit", type=int, default=None, help="replay at most this many events")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamrec", description="Streaming sequential recommender: Kafka events in, top-K lists out.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (Tansu) on loopback",
                       description="Start Tansu on 127.0.0.1, create the topics, print the bootstrap address; Ctrl-C stops it.")
    p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    p.add_argument("--partitions", type=int, default=1, help="partitions of the topics it creates")
    p.add_argument("--data-dir", default="", help="keep topics, data and committed offsets in this folder across "
                   "restarts (Tansu on a local SeaweedFS); default: memory only")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("worker", help="run a faust worker: interactions -> DuckDB -> recommendations",
                       description="Consume interactions in micro-batches, store them in DuckDB, publish top-K lists.")
    Settings.add_arguments(p)
    p.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("replay", help="produce a MovieLens ratings file to Kafka as a timed stream",
                       description="Replay ratings.csv (ML-20M/ml-latest), ratings.dat (ML-1M) or a RecBole .inter file.")
    p.add_argument("file", help="ratings file")
    Settings.add_arguments(p, only=KAFKA + TOPICS)
    _add_replay_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("demo", help="the whole mission on ml-latest-small: train, serve, retrain, compare (a few minutes)",
                       description="Start the embedded broker and a worker; replay the first part of MovieLens as history, "
                                   "train a transformer on it, serve it on the live replay of the rest (popularity as "
                                   "fallback), retrain it once mid-stream, then compare it with popularity on the same "
                                   "events. --model popularity: the quick popularity-only run.")
    p.add_argument("--model", choices=["sasrec", "bert4rec", "popularity"], default="sasrec",
                   help="what serves the live replay (default %(default)s)")
    p.add_argument("--train-fraction", type=float, default=0.5,
                   help="share of the events, by time, replayed as history and trained on (default %(default)s)")
    p.add_argument("--train-seconds", type=float, default=90.0,
                   help="training budget; stops after the epoch that passes it (default %(default)s)")
    p.add_argument("--retrain-at", type=float, default=0.5,
                   help="retrain once this share of the live part was replayed (0: never; default %(default)s)")
    p.add_argument("--retrain-seconds", type=float, default=30.0,
                   help="fine-tuning budget of the mid-stream retraining (default %(default)s)")
    p.add_argument("--ratings", default=None, help="ratings file (default: the bundled ml-latest-small)")
    p.add_argument("--movies", default=None, help="movies.csv for titles (default: the bundled one)")
    p.add_argument("--workdir", default="demo-run", help="folder for the worker's DuckDB and logs")
    p.add_argument("--show-users", type=int, default=3, help="users whose lists are printed as they update")
    p.add_argument("--workers", type=int, default=1, help="workers in the consumer group")
    p.add_argument("--kill-at", type=float, default=0.4,
                   help="with several workers: SIGKILL the last one when this fraction of the events was consumed, "
                        "to show the handover (0: never; default %(default)s)")
    Settings.add_arguments(p, only=KAFKA + ["top_k", "checkpoint", "metrics_port", "batch_size"])
    _add_replay_options(p, default_speedup=None)
    p.add_argument("--duration", type=float, default=None,
                   help="without --speedup, replay the live part in about this many seconds "
                        "(default: 120 with a transformer, 20 with popularity)")
    # A free port unless one is asked for (option or environment): a busy default port would
    # otherwise be answered by whoever holds it.
    p.set_defaults(func=cmd_demo, metrics_port=int(os.environ.get("STREAMREC_METRICS_PORT", 0)))

    # Commands of the model package, when present: (configure, run, help).
    for module in ("streamrec.model.commands", "streamrec.model.report", "streamrec.streams.retraining",
                   "streamrec.streams.lists"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        commands = getattr(mod, "COMMANDS", {})
        for name, (configure, run, help_text) in commands.items():
            p = sub.add_parser(name, help=help_text, description=help_text)
            configure(p)
            p.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as e:
        if (why := database_in_use(e)) is None:
            raise
        print(f"streamrec {args.command}: {why}", file=sys.stderr)
        return 2


def database_in_use(e: Exception) -> str | None:
    """One line for DuckDB's lock error (a running worker holds its file), else None.

    >>> print(database_in_use(OSError('IO Error: Could not set lock on file "/r/w.duckdb": Conflicting lock is held in python (PID 7)')))
    /r/w.duckdb is held by another process (pid 7), e.g. a running worker: DuckDB lets one process open it. Read that worker's Parquet exports instead (run it with --export-dir DIR; then e.g. streamrec retrain --export-dir DIR, streamrec report --export-dir DIR), or wait until it stops
    """
    import re

    m = re.search(r'Could not set lock on file "([^"]+)".*?(?:\(PID (\d+)\))?$', str(e))
    if m is None:
        return None
    pid = f" (pid {m.group(2)})" if m.group(2) else ""
    return (f"{m.group(1)} is held by another process{pid}, e.g. a running worker: DuckDB lets one process open it. "
            "Read that worker's Parquet exports instead (run it with --export-dir DIR; then e.g. streamrec retrain "
            "--export-dir DIR, streamrec report --export-dir DIR), or wait until it stops")


if __name__ == "__main__":
    sys.exit(main())
