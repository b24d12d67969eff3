"""Ingest throughput: events/s into DuckDB through the worker vs the raw confluent-kafka consume rate.

Both read the same pre-produced topic on the same embedded broker in one run:

1. raw: a confluent-kafka consumer, ``consume(5000)`` and ``json.loads`` of every value;
2. worker: ``streamrec worker`` (faust + bulk path) from its start of consumption until every
   event is in DuckDB (decode, validate, dead-letter check, idempotent store, sequences,
   scoring with popularity and publishing of one list per touched user per micro-batch);
3. optionally (``--faust-baseline``) a plain faust agent with ``stream.take`` over the same topic,
   which only decodes, to show faust's per-message ceiling.

    python benchmarks/bench_ingest.py --events 300000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from streamrec.storage.movielens import load_ratings  # noqa: E402
from streamrec.streams.broker import EmbeddedBroker  # noqa: E402
from streamrec.streams.config import Settings  # noqa: E402
from streamrec.streams.events import Event, encode  # noqa: E402
from streamrec.streams.processes import WorkerProcess  # noqa: E402
from streamrec.streams.replay import make_producer  # noqa: E402
from streamrec.streams.topics import ensure_topics  # noqa: E402


def workload(kind: str, n: int, users: int, items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, event time ms) of ``n`` events.

    movielens: ml-latest-small repeated with fresh user ids and later times, so that users come
    in bursts as in real logs (~150 distinct users per 5,000 events). uniform: every event from
    a random one of ``users`` users (~4,400 distinct per 5,000 events): the worst case for
    per-user work, since almost every event then produces a list of its own.
    """
    if kind == "uniform":
        rng = np.random.default_rng(0)
        return (rng.integers(1, users + 1, n), rng.zipf(1.3, n) % items + 1,
                1_500_000_000_000 + np.arange(n))
    r = load_ratings(Path(__file__).resolve().parent.parent / "tests" / "data" / "ratings.csv")
    reps = -(-n // len(r))
    span = int(r.timestamp[-1] - r.timestamp[0]) + 1
    u = np.concatenate([r.user + k * 1_000_000 for k in range(reps)])[:n]
    i = np.concatenate([r.item for _ in range(reps)])[:n]
    # Repetition k follows k-1 in time, all squeezed into the file's own span: later times would
    # lie in the future, which the event contract rejects (more than a day ahead of the record).
    t0 = int(r.timestamp[0])
    t = np.concatenate([t0 * 1000 + ((r.timestamp - t0) * 1000 + k * span * 1000) // reps for k in range(reps)])[:n]
    return u, i, t


def produce(bootstrap: str, topic: str, events) -> None:
    u, i, t = events
    p = make_producer(bootstrap)
    for k, (uu, ii, tt) in enumerate(zip(u.tolist(), i.tolist(), t.tolist())):
        p.produce(topic, value=encode(Event(uu, ii, tt, "click")), key=str(uu).encode())
        if k % 10000 == 0:
            p.poll(0)
    p.flush(60)


def raw_consume(bootstrap: str, topic: str, n: int) -> float:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-raw", "enable.auto.commit": False,
                  "fetch.max.bytes": 52428800, "max.partition.fetch.bytes": 10485760})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got, t0 = 0, None
    while got < n:
        msgs = c.consume(5000, timeout=1.0)
        if msgs and t0 is None:
            t0 = time.perf_counter()
        for m in msgs:
            if not m.error():
                json.loads(m.value())
                got += 1
    dt = time.perf_counter() - t0
    c.close()
    return n / dt


def worker_ingest(bootstrap: str, s: Settings, n: int, tmp: Path, batch_size: int) -> tuple[float, dict]:
    w = WorkerProcess(bootstrap, tmp / "bench.duckdb", tmp / "worker.log", group_id="bench-worker",
                      interactions_topic=s.interactions_topic, recommendations_topic=s.recommendations_topic,
                      dlq_topic=s.dlq_topic, batch_size=batch_size).start()
    try:
        w.wait_ready()
        t_first = None
        while True:
            m = w.metrics()
            stored = m.get("streamrec_store_events", 0)
            now = time.perf_counter()
            if stored > 0 and t_first is None:
                t_first, n_first = now, stored
            if stored >= n:
                break
            time.sleep(0.05)
        return (n - n_first) / (now - t_first), m
    finally:
        w.stop()


FAUST_BASELINE = r'''
import sys, time, faust
import os
bootstrap, topic, n = os.environ["B_BOOTSTRAP"], os.environ["B_TOPIC"], int(os.environ["B_N"])
app = faust.App("bench-faust", broker=f"kafka://{bootstrap}", store="memory://", web_enabled=False,
                broker_session_timeout=10, broker_heartbeat_interval=1, consumer_auto_offset_reset="earliest",
                topic_allow_declare=False)
t = app.topic(topic, value_type=bytes, value_serializer="raw")
state = {"n": 0, "t0": None}
import json
@app.agent(t)
async def count(stream):
    async for values in stream.take(5000, within=0.05):
        if state["t0"] is None:
            state["t0"] = time.perf_counter()
        for v in values:
            json.loads(v)
        state["n"] += len(values)
        if state["n"] >= n:
            open(os.environ["B_OUT"], "w").write(str(state["n"] / (time.perf_counter() - state["t0"])))
            os._exit(0)
app.main()
'''


def faust_baseline(bootstrap: str, topic: str, n: int, tmp: Path) -> float:
    script = tmp / "faust_baseline.py"
    script.write_text(FAUST_BASELINE)
    env = dict(os.environ, B_BOOTSTRAP=bootstrap, B_TOPIC=topic, B_N=str(n), B_OUT=str(tmp / "rate"))
    out = subprocess.run([sys.executable, str(script), "worker", "-l", "warn"],
                         capture_output=True, text=True, timeout=900, cwd=tmp, env=env)
    if not (tmp / "rate").exists():
        raise RuntimeError(out.stderr[-2000:])
    return float((tmp / "rate").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--workload", choices=["movielens", "uniform"], default="movielens",
                    help="movielens: bursty real users; uniform: a random user per event (worst case)")
    ap.add_argument("--users", type=int, default=20_000, help="users of the uniform workload")
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--faust-baseline", action="store_true", help="also time a plain faust agent (slow)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    with EmbeddedBroker(log_file=tmp / "tansu.log") as broker:
        s = Settings(bootstrap_servers=broker.bootstrap, interactions_topic="bench-interactions",
                     recommendations_topic="bench-recommendations", dlq_topic="bench-dlq")
        ensure_topics(s)
        t = time.perf_counter()
        events = workload(args.workload, args.events, args.users, args.items)
        produce(broker.bootstrap, s.interactions_topic, events)
        print(f"produced {args.events:,} {args.workload} events ({len(np.unique(events[0])):,} users) "
              f"in {time.perf_counter() - t:.1f}s")
        raw = raw_consume(broker.bootstrap, s.interactions_topic, args.events)
        print(f"raw confluent-kafka consume + json.loads: {raw:,.0f} events/s")
        rate, m = worker_ingest(broker.bootstrap, s, args.events, tmp, args.batch_size)
        lists = sum(v for k, v in m.items() if k.startswith("streamrec_lists_published_total"))
        print(f"worker into DuckDB (store + score + publish {lists:,.0f} lists): {rate:,.0f} events/s "
              f"= {rate / raw:.2f} x raw")
        if args.faust_baseline:
            fb = faust_baseline(broker.bootstrap, s.interactions_topic, args.events, tmp)
            print(f"plain faust agent, stream.take(5000) + json.loads: {fb:,.0f} events/s = {fb / raw:.2f} x raw")
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; "
          f"date {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
