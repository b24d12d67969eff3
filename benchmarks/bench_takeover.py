"""Partition takeover at scale: the new owner's recovery from the previous owner's exported
Parquet segments vs a replay of the partition from Kafka, in one run.

1. An ML-20M-shaped stream (``gen_ml20m.py``) of ``--events`` events into one partition;
2. worker B stores all of it (its claim, 5,000-event batches as the worker does) and exports
   Parquet segments every ``--export-every`` events, like a worker with ``--export-dir``;
3. worker A takes the partition over at its end: its recovery reads B's segments, the part past
   the last segment from Kafka;
4. worker K takes it over the same way but cannot read B's directory: everything from Kafka
   (the path before exports were used).

Printed: recovery seconds and events/s of A and K, where A's events came from, and each
worker's RSS after its recovery.

    python benchmarks/bench_takeover.py --events 2000000
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import produce  # noqa: E402
from gen_ml20m import write_ratings  # noqa: E402

from streamrec.storage.export import export_new_events  # noqa: E402
from streamrec.storage.movielens import load_ratings  # noqa: E402
from streamrec.storage.store import EventStore  # noqa: E402
from streamrec.streams.broker import EmbeddedBroker  # noqa: E402
from streamrec.streams.config import Settings  # noqa: E402
from streamrec.streams.events import decode_batch  # noqa: E402
from streamrec.streams.ownership import Ownership, read_partition_chunks  # noqa: E402
from streamrec.streams.topics import ensure_topics  # noqa: E402


def previous_owner(s: Settings, tmp: Path, n: int, export_every: int) -> None:
    """Worker B: claims partition 0, stores everything in 5,000-event batches, exports as it goes."""
    store = EventStore(tmp / "b.duckdb")
    own = Ownership(store, s.bootstrap_servers, s.interactions_topic, s.group_id, export_dir=str(tmp / "exp-b"))
    since_export, t0 = 0, time.perf_counter()
    for values, offsets, keys, stamps in read_partition_chunks(s.bootstrap_servers, s.interactions_topic, 0, 0, n,
                                                               chunk=5000):
        parts = np.zeros(len(values), np.int32)
        own.ensure(parts, offsets)
        store.append(decode_batch(values, keys, stamps, own.contract, parts, offsets))
        since_export += len(values)
        if since_export >= export_every:
            export_new_events(store.con, tmp / "exp-b")
            since_export = 0
    print(f"previous owner stored {store.count():,} events in {time.perf_counter() - t0:.1f}s "
          f"({since_export:,} past its last export)")
    store.close()


def take_over(s: Settings, tmp: Path, name: str, n: int) -> tuple[float, Ownership]:
    own = Ownership(EventStore(tmp / f"{name}.duckdb"), s.bootstrap_servers, s.interactions_topic, s.group_id)
    t0 = time.perf_counter()
    own.ensure(np.zeros(1, np.int32), np.array([n], np.int64))  # its first batch starts at the log's end
    return time.perf_counter() - t0, own


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--export-every", type=int, default=500_000, help="events between B's exports")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-takeover-"))
    write_ratings(tmp / "ratings.csv", events=args.events, seed=0)
    with EmbeddedBroker(log_file=tmp / "tansu.log") as broker:
        s = dataclasses.replace(Settings(bootstrap_servers=broker.bootstrap, interactions_topic="takeover"),
                                partitions=1)
        ensure_topics(s)
        r = load_ratings(tmp / "ratings.csv")
        produce(broker.bootstrap, s.interactions_topic, (r.user, r.item, r.timestamp * 1000, r.rating))
        n = len(r)
        print(f"produced {n:,} events to one partition")
        previous_owner(s, tmp, n, args.export_every)
        secs, a = take_over(s, tmp, "a", n)
        rss_a = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"takeover from segments: {a.recovered_events:,} events in {secs:.1f}s "
              f"({a.recovered_events / secs:,.0f} events/s; {a.recovered_from_segments:,} from segments, "
              f"{a.recovered_events - a.recovered_from_segments:,} from Kafka); peak RSS so far {rss_a:,.0f} MB")
        a.store.close()
        os.rename(tmp / "exp-b", tmp / "exp-b-hidden")  # K cannot read B's directory
        secs_k, k = take_over(s, tmp, "k", n)
        print(f"takeover from Kafka only: {k.recovered_events:,} events in {secs_k:.1f}s "
              f"({k.recovered_events / secs_k:,.0f} events/s); segments {secs_k / secs:.1f}x faster")
        k.store.close()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; date {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
