"""Freshness: event-to-list latency at a fixed event rate, measured by an outside list consumer.

One embedded broker, one ``streamrec worker`` (popularity unless ``--checkpoint``), a producer with
the replay's own configuration (``streams/replay.py``) sending events at ``--rate`` events/s for
``--seconds``, and an outside confluent-kafka consumer of ``recommendations``. Each list names the
event that triggered it (``source_partition``/``source_offset``/``source_timestamp``) and when the
worker received and stored its micro-batch, so the time from the event's Kafka timestamp
(CreateTime, set by the producer) to the list's arrival is split into hops:

    acked      the broker acknowledged the event (the producer's delivery report)
    received   the worker took the micro-batch holding it from Kafka (first record of the batch)
    stored     the batch was durable in DuckDB
    published  the list was encoded and handed to the worker's producer
    arrived    the outside consumer received the list (end to end)

Each hop is measured from the event's timestamp (cumulative). Events of the first ``--warmup``
seconds are left out. The events are an ML-20M-shaped stream (``gen_ml20m.py``: heavy-tailed users
rating in sessions, Zipf items; at least 1M events generated, so about 8k users) in its time
order, or ``--ratings FILE``; each is stamped with the time it is sent.

    python benchmarks/bench_freshness.py --rate 1000 --seconds 60
    python benchmarks/bench_freshness.py --rate 20000 --seconds 60
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgspec
import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_ml20m import write_ratings  # noqa: E402

from streamrec.storage.movielens import load_ratings  # noqa: E402
from streamrec.streams.broker import EmbeddedBroker  # noqa: E402
from streamrec.streams.config import Settings  # noqa: E402
from streamrec.streams.events import Event, encode  # noqa: E402
from streamrec.streams.list_encoder import Recommendation  # noqa: E402
from streamrec.streams.processes import WorkerProcess  # noqa: E402
from streamrec.streams.replay import make_producer  # noqa: E402
from streamrec.streams.topics import ensure_topics  # noqa: E402

HOPS = ("acked", "received", "stored", "published", "arrived")


class ListConsumer(threading.Thread):
    """The outside consumer: every list with the wall time it arrived (decoded afterwards)."""

    def __init__(self, bootstrap: str, topic: str, fetch_wait_ms: int):
        super().__init__(daemon=True)
        # Tansu holds a fetch for its whole wait when no data is there: a short wait, so that the
        # measuring consumer adds little of its own.
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-freshness",
                           "enable.auto.commit": False, "fetch.wait.max.ms": fetch_wait_ms})
        parts = self.c.list_topics(topic, timeout=10).topics[topic].partitions
        self.c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.got: list[tuple[float, bytes]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            # consume(n, timeout) returns only when n messages came or the timeout passed: it
            # would add up to the timeout to each list's arrival. poll() returns on the first.
            first = self.c.poll(0.1)
            for m in ([first] if first is not None else []) + self.c.consume(1000, 0):
                if not m.error():
                    self.got.append((time.time(), m.value()))
        self.c.close()


def workload(n: int, ratings: str, tmp: Path) -> tuple[list[int], list[int]]:
    """(users, items) of the first ``n`` events of ``ratings`` or of a generated ML-20M-shaped stream."""
    if not ratings:
        ratings = str(tmp / "ratings.csv")
        write_ratings(ratings, events=max(n, 1_000_000), seed=0)
    r = load_ratings(ratings)
    if len(r) < n:
        raise SystemExit(f"{ratings} holds {len(r):,} events; {n:,} are needed")
    return r.user[:n].tolist(), r.item[:n].tolist()


def produce(bootstrap: str, topic: str, rate: float, events: tuple[list[int], list[int]], acked: dict) -> int:
    """Events at ``rate``/s (paced every ~1 ms) with the replay's producer; delivery times into ``acked``."""
    user, item = events
    n = len(user)
    p = make_producer(bootstrap)

    def on_delivery(err, msg):
        if err is None:
            acked[(msg.partition(), msg.offset())] = time.time()

    start, sent = time.time(), 0
    while sent < n:
        due = min(n, int((time.time() - start) * rate) + 1)
        for k in range(sent, due):
            u = user[k]
            p.produce(topic, value=encode(Event(u, item[k], int(time.time() * 1000), "click")),
                      key=str(u).encode(), on_delivery=on_delivery)
        sent = due
        p.poll(0)
        time.sleep(0.001)
    p.flush(30)
    return n


def hops(got: list[tuple[float, bytes]], acked: dict, since_ms: float) -> dict[str, np.ndarray]:
    dec = msgspec.json.Decoder(Recommendation)
    rows = []
    for arrived, value in got:
        r = dec.decode(value)
        if r.source_timestamp < since_ms:
            continue
        ack = acked.get((r.source_partition, r.source_offset), np.nan)
        rows.append((ack * 1000, r.received_at, r.stored_at, r.published_at, arrived * 1000, r.source_timestamp))
    a = np.array(rows, np.float64).reshape(-1, 6)
    return {h: a[:, j] - a[:, 5] for j, h in enumerate(HOPS)}


def report(result: dict[str, np.ndarray]) -> None:
    steps = {f"{a} -> {b}": result[b] - result[a] for a, b in zip(HOPS[1:], HOPS[2:])}
    print(f"{'ms from event timestamp':<24}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}")
    for h, v in {**result, **steps}.items():
        v = v[np.isfinite(v)]
        if len(v):
            q = np.percentile(v, [50, 90, 99])
            print(f"{h:<24}{q[0]:8.0f}{q[1]:8.0f}{q[2]:8.0f}{v.max():8.0f}")


def slow_stages(m: dict[str, float]) -> str:
    """From the worker's stage-duration histograms: per stage, batches and how many took over 0.25 s / 1 s."""
    out = []
    for stage in ("decode", "store", "score", "publish"):
        b = lambda le: m.get(f'streamrec_stage_duration_seconds_bucket{{le="{le}",stage="{stage}"}}', 0)  # noqa: E731
        total = b("+Inf")
        mean = m.get(f'streamrec_stage_duration_seconds_sum{{stage="{stage}"}}', 0) / max(total, 1) * 1000
        out.append(f"{stage} {total:.0f} x {mean:.0f} ms ({total - b('0.25'):.0f} > 0.25 s)")
    return "worker batches: " + ", ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000, help="events per second")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=5, help="seconds of events left out at the start")
    ap.add_argument("--ratings", default="", help="a ratings file to take the events from (default: generated)")
    ap.add_argument("--list-fetch-wait-ms", type=int, default=5, help="the outside consumer's fetch.wait.max.ms")
    ap.add_argument("--checkpoint", default="", help="serve this transformer checkpoint (default: popularity)")
    ap.add_argument("--worker", nargs="*", default=[], metavar="SETTING=VALUE",
                    help="worker settings, e.g. fetch_wait=0.01 batch_within=0.05")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-freshness-"))
    events = workload(int(args.rate * args.seconds), args.ratings, tmp)
    extra = dict(kv.split("=", 1) for kv in args.worker)
    if args.checkpoint:
        extra["checkpoint"] = args.checkpoint
    with EmbeddedBroker(log_file=tmp / "tansu.log") as broker:
        s = Settings(bootstrap_servers=broker.bootstrap)
        ensure_topics(s)
        w = WorkerProcess(broker.bootstrap, tmp / "fresh.duckdb", tmp / "worker.log", group_id="bench-fresh",
                          **extra).start()
        try:
            w.wait_ready()
            lists = ListConsumer(broker.bootstrap, s.recommendations_topic, args.list_fetch_wait_ms)
            lists.start()
            acked: dict = {}
            t0 = time.time()
            n = produce(broker.bootstrap, s.interactions_topic, args.rate, events, acked)
            took = time.time() - t0
            time.sleep(3)  # the last lists
            lists.stop.set()
            lists.join()
            m = w.metrics()
        finally:
            w.stop()
    print(f"{n:,} events at {args.rate:,.0f}/s asked, {n / took:,.0f}/s sent; {len(lists.got):,} lists; "
          f"worker settings {extra or 'defaults'}; stored {m.get('streamrec_store_events', 0):,.0f}")
    report(hops(lists.got, acked, (t0 + args.warmup) * 1000))
    print(slow_stages(m))
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}; "
          f"date {time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    main()
