"""The worker's three stages in one thread: CPU ms per micro-batch of each, at any log size.

In the worker the stages run in three threads that share two cores and the GIL, so a stage's wall
time there says little about its own cost. Here one thread runs ``BatchProcessor.decode``,
``store_batch`` and ``publish`` (popularity, lists produced to an embedded broker) on real
batches of a ratings file and times each with ``time.thread_time``: what a batch costs, and what
of it grows with the log (``--db``: start from a database that already holds the file's first
``--start`` events, e.g. ``bench_store_state.py``'s cache, every user's sequence loaded as in a
worker that has run all along).

    python benchmarks/bench_stages.py --ratings RATINGS.csv --events 1000000
    python benchmarks/bench_stages.py --ratings RATINGS.csv --events 750000 --start 19000000 \\
        --db /tmp/bench-store-state/store-19000000.duckdb

Prints, per ``--every`` events: CPU ms per batch of each stage, the store stage's wall ms, and
the lists (users) per batch. Run it under ``py-spy record -r 200`` to see where each stage's time goes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from confluent_kafka import Producer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from streamrec.storage.movielens import load_ratings  # noqa: E402
from streamrec.storage.store import EventStore  # noqa: E402
from streamrec.streams.broker import EmbeddedBroker  # noqa: E402
from streamrec.streams.config import Settings, kafka_config  # noqa: E402
from streamrec.streams.events import Event, encode  # noqa: E402
from streamrec.streams.latest_lists import LatestLists  # noqa: E402
from streamrec.streams.model_switch import build_recommender  # noqa: E402
from streamrec.streams.ownership import Ownership  # noqa: E402
from streamrec.streams.pipeline import BatchProcessor, RawBatch  # noqa: E402
from streamrec.streams.prometheus import WorkerMetrics  # noqa: E402
from streamrec.streams.topics import ensure_topics  # noqa: E402


def raw_batch(topic: str, user, item, t_ms, rating, lo: int, hi: int) -> RawBatch:
    """Events lo..hi of the file as the worker receives them (JSON values keyed by user, offsets lo..hi)."""
    u, i, t, r = (a[lo:hi].tolist() for a in (user, item, t_ms, rating))
    values = [encode(Event(*row, "rating", rr)) for *row, rr in zip(u, i, t, r)]
    return RawBatch(topic, [str(x).encode() for x in u], values, np.zeros(hi - lo, np.int32),
                    np.arange(lo, hi, dtype=np.int64), np.asarray(t, np.int64), time.time())


def open_processor(s: Settings, db: Path | None, warm_items: np.ndarray) -> BatchProcessor:
    if db is not None:
        shutil.copy(db, s.db)
    store = EventStore(s.db, seq_len=s.seq_len, max_users=s.sequence_users)
    store._load(store._users.ids.copy())  # every sequence in memory, as in a running worker
    store.con.execute("CHECKPOINT")  # (the first checkpoint after opening a large log is slow)
    producer = Producer(kafka_config("producer", s, {"linger.ms": 5, "enable.idempotence": True,
                                                     "queue.buffering.max.messages": 1_000_000,
                                                     "delivery.report.only.error": True}))
    ownership = Ownership(store, s.bootstrap_servers, s.interactions_topic, s.group_id)
    recommender = build_recommender(s, store)
    recommender.observe(warm_items)
    processor = BatchProcessor(s, store, recommender, producer, WorkerMetrics(), ownership, LatestLists())
    processor._claim = lambda raw: None  # one partition, this process only: nothing to claim or recover
    return processor


def ratings_arg(ap: argparse.ArgumentParser, path: Path):
    """The ``--ratings`` file loaded, or argparse's one-line error (missing, unreadable, not ratings)."""
    try:
        return load_ratings(path)
    except (OSError, ValueError) as e:
        ap.error(f"--ratings: {e}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratings", type=Path, required=True, help="ratings file (e.g. gen_ml20m.py's)")
    ap.add_argument("--events", type=int, default=1_000_000, help="events to run through the stages")
    ap.add_argument("--start", type=int, default=0, help="first event (the --db holds the ones before it)")
    ap.add_argument("--db", type=Path, default=None, help="a database holding the file's first --start events")
    ap.add_argument("--batch-size", type=int, default=Settings().batch_size)
    ap.add_argument("--every", type=int, default=250_000, help="a row per this many events")
    args = ap.parse_args(argv)
    if args.start and args.db is None:
        ap.error("--start needs --db, a database with the events before it")
    if args.db is not None and not args.db.is_file():
        ap.error(f"--db {args.db}: no such database file")
    r = ratings_arg(ap, args.ratings)
    end = min(args.start + args.events, len(r.user))
    t_ms = r.timestamp * 1000
    tmp = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    with EmbeddedBroker(log_file=tmp / "tansu.log") as broker:
        s = Settings(bootstrap_servers=broker.bootstrap, interactions_topic="stages-in",
                     recommendations_topic="stages-lists", dlq_topic="stages-dlq", partitions=1,
                     db=str(tmp / "stages.duckdb"))
        ensure_topics(s)
        p = open_processor(s, args.db, r.item[max(args.start - s.popularity_window, 0):args.start])
        print(f"{p.store.n_events:,} events stored; events, then ms per batch: decode / store / publish CPU,"
              " store wall, lists", flush=True)
        cpu, wall, users, batches, mark = np.zeros(3), 0.0, 0, 0, args.start
        for lo in range(args.start, end, args.batch_size):
            hi = min(lo + args.batch_size, end)
            raw = raw_batch(s.interactions_topic, r.user, r.item, t_ms, r.rating, lo, hi)
            c0 = time.thread_time()
            decoded = p.decode(raw)
            c1, w1 = time.thread_time(), time.perf_counter()
            stored = p.store_batch(raw, decoded)
            c2, w2 = time.thread_time(), time.perf_counter()
            p.publish(raw, decoded, stored)
            cpu += (c1 - c0, c2 - c1, time.thread_time() - c2)
            wall, users, batches = wall + w2 - w1, users + len(stored.users), batches + 1
            if hi // args.every > mark // args.every or hi == end:
                ms = 1000 * cpu / batches
                print(f"{hi:>11,}  {ms[0]:6.1f} {ms[1]:6.1f} {ms[2]:6.1f}  {1000 * wall / batches:6.1f}"
                      f"  {users / batches:6.0f}", flush=True)
                cpu, wall, users, batches, mark = np.zeros(3), 0.0, 0, 0, hi
        p.store.close()
        for producer in (p.producer, p.ownership.log.producer):  # before the broker stops: no disconnect noise
            producer.flush(10)
            producer.close()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the broker and the temporary store are closed on the way out
        sys.exit("bench_stages.py: interrupted")
