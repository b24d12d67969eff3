"""``streamrec demo``: the whole pipeline on this machine, with lists and metrics on screen.

Starts Tansu (unless given a cluster), one or more workers, replays MovieLens, follows the
recommendations topic and prints a few users' lists with titles as they change, then a summary.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

import msgspec
import numpy as np
from tqdm import tqdm
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from storage.movielens import load_ratings, load_titles
from streams.broker import EmbeddedBroker
from streams.config import Settings
from streams.pipeline import Recommendation
from streams.processes import WorkerProcess, metric_sum
from streams.replay import replay
from streams.topics import ensure_topics

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
log = logging.getLogger(__name__)


class ListFollower(threading.Thread):
    """Consumes the recommendations topic; keeps every list's freshness and the latest per user."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(daemon=True)
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "streamrec-demo",
                                  "enable.auto.commit": False})
        # assign(), not subscribe(): no group join to wait for, every partition from the start.
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.decoder = msgspec.json.Decoder(Recommendation)
        self.latest: dict[int, Recommendation] = {}
        self.freshness: list[float] = []
        self.count = 0
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            for msg in self.consumer.consume(1000, timeout=0.2):
                if msg.error():
                    continue
                rec = self.decoder.decode(msg.value())
                with self.lock:
                    self.latest[rec.user_id] = rec
                    self.freshness.append((rec.published_at - rec.source_timestamp) / 1000)
                    self.count += 1
        self.consumer.close()


def show(rec: Recommendation, titles: dict[int, str], n: int = 5) -> str:
    names = [titles.get(i, f"movie {i}") for i in rec.items[:n]]
    fresh = (rec.published_at - rec.source_timestamp) / 1000
    return (f"  user {rec.user_id:>5} | {rec.model}/{rec.model_version} | fresh {fresh:5.2f}s | "
            + "; ".join(f"{k + 1}. {t}" for k, t in enumerate(names)))


def run_demo(args) -> int:
    settings = Settings.from_args(args)
    ratings_path = Path(args.ratings or DATA / "ratings.csv")
    titles = load_titles(args.movies or DATA / "movies.csv")
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    broker = None
    if not settings.bootstrap_servers:
        broker = EmbeddedBroker(log_file=work / "broker.log").start()
        settings.bootstrap_servers = broker.bootstrap
        print(f"embedded Kafka (Tansu) at {broker.bootstrap}")
    settings.partitions = max(settings.partitions, 4 if args.workers > 1 else 1)
    ensure_topics(settings)
    workers = []
    try:
        extra = {"top_k": settings.top_k, "batch_size": settings.batch_size, "partitions": settings.partitions}
        if settings.checkpoint:
            extra["checkpoint"] = settings.checkpoint
        for w in range(args.workers):
            port = settings.metrics_port + w if settings.metrics_port else None
            workers.append(WorkerProcess(settings.bootstrap_servers, work / f"worker-{w}.duckdb",
                                         work / f"worker-{w}.log", port=port, **extra).start())
        print("waiting for the worker(s) to join the consumer group ...")
        for w in workers:
            w.wait_ready()
            print(f"worker ready, Prometheus metrics at {w.metrics_url}")

        ratings = load_ratings(ratings_path, min_rating=args.min_rating)
        ratings = ratings.slice(args.start, None if args.limit is None else args.start + args.limit)
        users, counts = np.unique(ratings.user, return_counts=True)
        shown = set(users[np.argsort(-counts, kind="stable")][: args.show_users].tolist())

        follower = ListFollower(settings.bootstrap_servers, settings.recommendations_topic)
        follower.start()
        printer_stop = threading.Event()

        def printer() -> None:
            last: dict[int, int] = {}
            while not printer_stop.wait(1.0):
                with follower.lock:
                    recs = [follower.latest[u] for u in shown if u in follower.latest]
                for rec in recs:
                    if last.get(rec.user_id) != rec.event_time:
                        last[rec.user_id] = rec.event_time
                        tqdm.write(show(rec, titles))

        threading.Thread(target=printer, daemon=True).start()
        speedup = args.speedup
        if speedup is None:  # default: the whole file in about --duration seconds
            span = float(ratings.timestamp[-1] - ratings.timestamp[0]) if len(ratings) else 0.0
            speedup = span / args.duration if span > 0 and args.duration > 0 else 0.0
        print(f"replaying {len(ratings):,} ratings from {ratings_path} "
              f"({'as fast as possible' if not speedup else f'{speedup:,.0f}x event time'})")
        t0 = time.time()
        stats = replay(ratings, settings.bootstrap_servers, settings.interactions_topic, speedup=speedup)

        # Wait for the workers to store everything and for their lists to arrive.
        deadline = time.time() + 300
        while time.time() < deadline:
            done = sum(metric_sum(w.metrics(), "streamrec_events_consumed_total") for w in workers if w.alive())
            published = sum(metric_sum(w.metrics(), "streamrec_lists_published_total") for w in workers if w.alive())
            if done >= stats.events and follower.count >= published:
                break
            time.sleep(0.5)
        elapsed = time.time() - t0
        busy = sum(metric_sum(w.metrics(), "streamrec_stage_duration_seconds_sum") for w in workers if w.alive())
        printer_stop.set()
        time.sleep(1.2)
        follower.stopped.set()

        m = [w.metrics() for w in workers]
        stored = sum(metric_sum(x, "streamrec_events_stored_total") for x in m)
        rejected = sum(metric_sum(x, "streamrec_events_rejected_total") for x in m)
        fresh = np.array(follower.freshness) if follower.freshness else np.zeros(1)
        print("\nfinal lists:")
        for u in sorted(shown):
            if u in follower.latest:
                print(show(follower.latest[u], titles, n=10))
        print("\nsummary")
        print(f"  events replayed     {stats.events:,} ({stats.rate:,.0f} events/s into Kafka)")
        print(f"  events stored       {int(stored):,} in DuckDB, rejected {int(rejected)}; "
              f"{elapsed:.1f}s from first event to last list, {busy:.2f}s of pipeline work "
              f"({stored / max(busy, 1e-9):,.0f} events/s while busy)")
        print(f"  users               {len(users):,}; users with a list {len(follower.latest):,}")
        print(f"  lists published     {follower.count:,}")
        print(f"  freshness           p50 {np.percentile(fresh, 50):.3f}s  p99 {np.percentile(fresh, 99):.3f}s "
              "(Kafka timestamp of the triggering event -> list published)")
        for w in workers:
            print(f"  metrics             {w.metrics_url}")
        print(f"  worker logs, DuckDB {work}/")
        return 0 if stored >= stats.events else 1
    finally:
        for w in workers:
            w.stop()
        if broker:
            broker.stop()
