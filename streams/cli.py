"""The ``streamrec`` command: ``streamrec COMMAND --help`` describes each one.

Every command is registered here, statically (:data:`COMMANDS`): a module that fails to import
fails loudly instead of making its commands vanish. Heavy imports (faust, torch) stay inside
the commands. A user error (a bad file, option, environment value, an unreachable broker, a busy
port, a locked database) ends with one line on stderr naming the problem and the fix: exit
status 2 for usage errors, 1 otherwise; ``--debug`` (or ``STREAMREC_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from streamrec import __version__
from streamrec.model import commands as model_commands
from streamrec.model import report as model_report
from streamrec.streams import lists, retrain_job
from streamrec.streams.config import Settings, SettingsError
from streamrec.streams.preflight import UserError, check_port_free, check_worker

KAFKA = ["bootstrap_servers", "kafka_config"]
TOPICS = ["interactions_topic", "dlq_topic", "recommendations_topic", "partitions", "replication_factor"]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with where to find help), not usage plus error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _use_kafka_config(args) -> None:
    """Check ``--kafka-config`` now, before any connection, and pass it on through the environment to
    every client this process creates from a bare address and to child processes (the demo's workers)."""
    path = getattr(args, "kafka_config", "") or ""
    if path:
        Settings(kafka_config=path).client_properties()
        os.environ["STREAMREC_KAFKA_CONFIG"] = os.path.abspath(path)
        args.kafka_config = os.environ["STREAMREC_KAFKA_CONFIG"]


def _settings(args) -> Settings:
    """The command's settings, with a Kafka address."""
    settings = Settings.from_args(args).with_bootstrap()
    if not settings.bootstrap_servers:
        raise SettingsError("no Kafka address: give --bootstrap-servers (or STREAMREC_BOOTSTRAP_SERVERS, or "
                            "bootstrap.servers in --kafka-config); `streamrec broker` starts a local one")
    return settings


def cmd_broker(args) -> int:
    from streamrec.streams.broker import BrokerError, EmbeddedBroker
    from streamrec.streams.topics import ensure_topics

    settings = Settings(partitions=args.partitions)  # checked before anything starts
    log_file = None
    if not args.data_dir:  # its last lines are printed if it dies (with --data-dir: DIR/tansu.log)
        fd, log_file = tempfile.mkstemp(prefix="streamrec-tansu-", suffix=".log")
        os.close(fd)
    broker = EmbeddedBroker(port=args.port or None, data_dir=args.data_dir or None, log_file=log_file)
    try:
        broker.start()
    except (BrokerError, OSError, RuntimeError, TimeoutError) as e:  # e.g. a busy --port, named in e
        raise UserError(str(e)) from e
    settings.bootstrap_servers = broker.bootstrap
    ensure_topics(settings)
    print(f"Kafka bootstrap servers: {broker.bootstrap}"
          + (f" (persistent: {args.data_dir})" if args.data_dir else " (memory storage: lost when it stops)"),
          flush=True)
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

    settings = check_worker(_settings(args))  # model, registry, export folder, database, web port
    ensure_topics(settings)  # also: an unreachable broker is reported here, within seconds

    from streamrec.streams.worker import run_worker

    run_worker(settings, loglevel=args.loglevel)
    return 0


def cmd_replay(args) -> int:
    from streamrec.storage.movielens import load_ratings
    from streamrec.streams.closed_loop import NoLists
    from streamrec.streams.replay import ReplayInterrupted, replay
    from streamrec.streams.topics import ensure_topics

    ratings = load_ratings(args.file, min_rating=args.min_rating)  # a bad file fails before connecting
    kept = len(ratings)
    ratings = ratings.slice(args.start, None if args.limit is None else args.start + args.limit)
    if len(ratings) == 0 and args.limit != 0:  # nothing to send, and not because none was asked for
        why = (f"--min-rating {args.min_rating:g} keeps none of them" if kept == 0 and args.min_rating is not None
               else "it holds none" if kept == 0 else f"--start {args.start:,} is past its {kept:,}")
        raise UserError(f"nothing to replay: {args.file} has no events to send ({why})")
    settings = _settings(args)
    ensure_topics(settings)
    try:
        if args.closed_loop:
            stats = _closed_loop(args, settings, ratings)
        else:
            stats = replay(ratings, settings, settings.interactions_topic, speedup=args.speedup,
                           progress=not args.quiet)
    except ReplayInterrupted as e:
        print(f"streamrec replay: {e}", file=sys.stderr)
        return 130
    except NoLists as e:
        print(f"streamrec replay --closed-loop: {e}", file=sys.stderr)
        return 1
    loop = f"; {stats.waits:,} bursts waited for their list, {stats.timeouts:,} timed out" if args.closed_loop else ""
    print(f"replayed {stats.events} events in {stats.seconds:.2f}s: {stats.rate:,.0f} events/s{loop}")
    return 0


def _closed_loop(args, settings, ratings):
    from streamrec.streams.closed_loop import closed_loop_replay
    from streamrec.streams.lists import ListFollower

    follower = ListFollower(settings, settings.recommendations_topic)
    follower.start()
    try:
        return closed_loop_replay(ratings, settings, settings.interactions_topic, follower,
                                  list_timeout=args.list_timeout, progress=not args.quiet)
    finally:
        follower.stopped.set()
        follower.join(3)


def cmd_demo(args) -> int:
    from streamrec.storage.movielens import ratings_format
    from streamrec.streams.demo import run_demo

    # What can be wrong is found before the broker and workers start.
    for path, option in ((args.ratings, "--ratings"), (args.movies, "--movies")):
        if path and not Path(path).is_file():
            why = "a directory, not a file" if Path(path).is_dir() else "file not found"
            raise UserError(f"{option} {path}: {why}")
    if args.ratings:
        ratings_format(args.ratings)  # a file that is no ratings file: said before anything starts
    if Path(args.workdir).exists() and not Path(args.workdir).is_dir():
        raise UserError(f"--workdir {args.workdir} is a file: give a folder for the workers' databases and logs")
    if args.metrics_port:
        for w in range(args.workers):
            check_port_free("127.0.0.1", args.metrics_port + w, "--metrics-port (0: free ports)")
    return run_demo(args)


def _nonnegative(kind):
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text} is negative: give 0 or more")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is out of range: give a port from 0 to 65535 (0: a free one)")
    return value


def _between(lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = True):
    """A float option in ``[lo, hi)`` (``lo_open``: ``lo`` excluded; ``hi`` None: no upper end)."""
    def parse(text: str) -> float:
        value = float(text)
        if value < lo or (lo_open and value == lo) or (hi is not None and (value > hi or (hi_open and value == hi))):
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a number in {left}{lo:g}, "
                                             f"{'inf' if hi is None else format(hi, 'g')}{right}")
        return value
    parse.__name__ = "float"
    return parse


POSITIVE, FRACTION, SHARE = _between(0, lo_open=True), _between(0, 1, lo_open=True), _between(0, 1)


def _add_replay_options(p: argparse.ArgumentParser, default_speedup: float | None = 0.0) -> None:
    p.add_argument("--speedup", type=_nonnegative(float), default=default_speedup,
                   help="divide event-time gaps by this factor (0: as fast as possible; default %(default)s)")
    p.add_argument("--min-rating", type=float, default=None, help="only ratings >= this value")
    p.add_argument("--start", type=_nonnegative(int), default=0, help="first event (in time order) to replay")
    p.add_argument("--limit", type=_nonnegative(int), default=None, help="replay at most this many events")


def configure_broker(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=_port, default=0, help="port (default: a free one)")
    p.add_argument("--partitions", type=int, default=1, help="partitions of the topics it creates")
    p.add_argument("--data-dir", default="", help="keep topics, data and committed offsets in this folder across "
                   "restarts (Tansu on a local SeaweedFS); default: memory only")


def configure_worker(p: argparse.ArgumentParser) -> None:
    Settings.add_arguments(p)
    p.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])


def configure_replay(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="ratings file")
    Settings.add_arguments(p, only=KAFKA + TOPICS)
    _add_replay_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--closed-loop", action="store_true",
                   help="a user's next event within an hour (event time) waits until a worker published the list "
                        "their previous one triggered, as in real time (needs a running worker; ignores --speedup)")
    p.add_argument("--list-timeout", type=_nonnegative(float), default=5.0,
                   help="closed loop: seconds to wait for a list before sending anyway (default %(default)s)")


def configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=["sasrec", "bert4rec", "popularity"], default="sasrec",
                   help="what serves the live replay (default %(default)s)")
    p.add_argument("--train-fraction", type=FRACTION, default=0.5,
                   help="share of the events, by time, replayed as history and trained on (default %(default)s)")
    p.add_argument("--train-seconds", type=POSITIVE, default=90.0,
                   help="training budget: an epoch starts only if it should end within it (default %(default)s)")
    p.add_argument("--retrain-at", type=SHARE, default=0.5,
                   help="retrain once this share of the live part was replayed (0: never; default %(default)s)")
    p.add_argument("--retrain-seconds", type=POSITIVE, default=30.0,
                   help="fine-tuning budget of the mid-stream retraining (default %(default)s)")
    p.add_argument("--ratings", default=None, help="ratings file (default: the bundled ml-latest-small)")
    p.add_argument("--movies", default=None, help="movies.csv for titles (default: the bundled one)")
    p.add_argument("--workdir", default="demo-run", help="folder for the worker's DuckDB and logs")
    p.add_argument("--show-users", type=_nonnegative(int), default=3,
                   help="users whose lists are printed as they update")
    p.add_argument("--workers", type=int, choices=range(1, 9), metavar="{1..8}", default=1,
                   help="workers in the consumer group")
    p.add_argument("--kill-at", type=SHARE, default=0.4,
                   help="with several workers: SIGKILL the last one when this fraction of the events was consumed, "
                        "to show the handover (0: never; default %(default)s)")
    Settings.add_arguments(p, only=KAFKA + ["top_k", "checkpoint", "metrics_port", "batch_size", "baseline"])
    _add_replay_options(p, default_speedup=None)
    p.add_argument("--duration", type=POSITIVE, default=None,
                   help="without --speedup, replay the live part in about this many seconds "
                        "(default: 120 with a transformer, 20 with popularity)")
    p.add_argument("--closed-loop", action="store_true",
                   help="replay the live part in a closed loop: a user's next event within an hour (event time) "
                        "waits until the list their previous one triggered is published, as in real time; "
                        "slower (the default live part: ~9 minutes instead of 2), ignores --speedup")
    # A free port unless one is asked for (option or environment): a busy default port would
    # otherwise be answered by whoever holds it.
    p.set_defaults(metrics_port=_env_metrics_port() if "STREAMREC_METRICS_PORT" in os.environ else 0)


def _env_metrics_port() -> int:
    try:
        return Settings.from_env().metrics_port
    except SettingsError:  # a bad STREAMREC_* value: --help still answers; running the demo names it
        return 0


# The one registry: name -> (configure the parser, run, one line of help).
COMMANDS = {
    "broker": (configure_broker, cmd_broker,
               "run the embedded Kafka-compatible broker (Tansu) on loopback, create the topics, print its address"),
    "worker": (configure_worker, cmd_worker, "run a faust worker: interactions -> DuckDB -> recommendations"),
    "replay": (configure_replay, cmd_replay,
               "produce a ratings file (ml-latest/ML-20M csv, ML-1M .dat, RecBole .inter) to Kafka as a timed stream"),
    "demo": (configure_demo, cmd_demo,
             "the whole mission on ml-latest-small: train a transformer, serve it live, retrain it, compare it "
             "with popularity (a few minutes; --model popularity: the quick run)"),
    **model_commands.COMMANDS,
    **model_report.COMMANDS,
    **retrain_job.COMMANDS,
    **lists.COMMANDS,
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="streamrec",
                           description="Streaming sequential recommender: Kafka events in, top-K lists out.",
                           epilog="`streamrec COMMAND --help` lists a command's options; every setting is also an "
                                  "environment variable STREAMREC_<NAME>.")
    parser.add_argument("--version", action="version", version=f"streamrec {__version__}")
    debug = OneLineParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of an error (or STREAMREC_DEBUG=1)")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error (or STREAMREC_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (configure, run, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[debug])
        configure(p)
        p.set_defaults(func=run)
    return parser


def _exit_status(e: BaseException) -> tuple[int, str]:
    """(exit status, one line) for an error that ends a command."""
    from streamrec.model.registry import RegistryError
    from streamrec.model.retrain import RetrainError
    from streamrec.storage.movielens import FormatError
    from streamrec.streams.broker import BrokerError
    from streamrec.streams.topics import KafkaUnreachable

    if isinstance(e, SettingsError):
        return 2, str(e)
    if (why := database_in_use(e)) is not None:
        return 1, why
    if isinstance(e, (UserError, FormatError, KafkaUnreachable, BrokerError, RegistryError, RetrainError,
                      FileNotFoundError, IsADirectoryError, PermissionError, NotADirectoryError)):
        return 1, str(e)
    if isinstance(e, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(e, FileExistsError):  # e.g. a folder to create where a file is
        return 1, f"{e.filename}: a file is in the way (a folder is expected there)"
    from confluent_kafka import KafkaException

    if isinstance(e, KafkaException):  # librdkafka refused the client's settings (e.g. a SASL mechanism it lacks)
        why = e.args[0].str() if e.args and hasattr(e.args[0], "str") else str(e)
        return 1, f"Kafka client: {why} (check --kafka-config / STREAMREC_KAFKA_CONFIG)"
    return 1, f"unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback, and please report it)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("STREAMREC_DEBUG", "") not in ("", "0", "false", "no")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        _use_kafka_config(args)
        return int(args.func(args) or 0)
    except (Exception, KeyboardInterrupt) as e:
        if debug:
            traceback.print_exc()
        status, line = _exit_status(e)
        line = " ".join(line.split())  # one line, whatever the message held
        command = next((a for a in argv if a in COMMANDS), "")
        print(f"streamrec{' ' + command if command else ''}: error: {line}", file=sys.stderr)
        return status


def database_in_use(e: Exception) -> str | None:
    """One line for DuckDB's lock error (a running worker holds its file), else None.

    >>> print(database_in_use(OSError('IO Error: Could not set lock on file "/r/w.duckdb": '
    ...                                 'Conflicting lock is held in python (PID 7)')))
    /r/w.duckdb is held by another process (pid 7), e.g. a running worker: DuckDB lets one process open it.
    Read that worker's Parquet exports instead (run it with --export-dir DIR; then e.g. streamrec retrain
    --export-dir DIR, streamrec report --export-dir DIR), or wait until it stops
    """

    m = re.search(r'Could not set lock on file "([^"]+)".*?(?:\(PID (\d+)\))?$', str(e))
    if m is None:
        return None
    pid = f" (pid {m.group(2)})" if m.group(2) else ""
    return (f"{m.group(1)} is held by another process{pid}, e.g. a running worker: DuckDB lets one process open it. "
            "Read that worker's Parquet exports instead (run it with --export-dir DIR; then e.g. streamrec retrain "
            "--export-dir DIR, streamrec report --export-dir DIR), or wait until it stops")


if __name__ == "__main__":
    sys.exit(main())
