"""The ``streamrec`` command: ``streamrec COMMAND --help`` describes each one."""

from __future__ import annotations

import argparse
import importlib
import logging
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

    p = sub.add_parser("demo", help="broker + worker + replay of ml-latest-small, lists and metrics on screen",
                       description="Start the embedded broker and a worker, replay MovieLens, show fresh lists, then a summary.")
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
    p.add_argument("--duration", type=float, default=20.0,
                   help="without --speedup, replay the whole file in about this many seconds (default %(default)s)")
    p.set_defaults(func=cmd_demo)

    # Commands of the model package, when present: (configure, run, help).
    for module in ("streamrec.model.commands", "streamrec.model.report", "streamrec.streams.retrain_job"):
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
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
