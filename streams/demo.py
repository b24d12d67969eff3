"""``streamrec demo``: the whole pipeline on this machine, with lists and metrics on screen.

Starts Tansu (unless given a cluster), one or more workers, replays MovieLens, follows the
recommendations topic and prints a few users' lists with titles as they change, then a summary.
"""

from __future__ import annotations

import logging
import shutil
from importlib import resources
import threading
import time
from pathlib import Path

import msgspec
import numpy as np
from tqdm import tqdm
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streamrec.storage.movielens import load_ratings, load_titles
from streamrec.streams.broker import EmbeddedBroker
from streamrec.streams.config import Settings, kafka_config
from streamrec.streams.pipeline import Recommendation
from streamrec.streams.processes import WorkerProcess, metric_sum
from streamrec.streams.replay import replay
from streamrec.streams.topics import ensure_topics

DATA = Path(str(resources.files("streamrec.data")))  # bundled ml-latest-small (package data)
log = logging.getLogger(__name__)


class ListFollower(threading.Thread):
    """Consumes the recommendations topic; keeps every list's freshness and the latest per user."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(daemon=True)
        self.consumer = Consumer(kafka_config("consumer", bootstrap, {"group.id": "streamrec-demo",
                                                                     "enable.auto.commit": False}))
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
        killed: list[WorkerProcess] = []
        if len(workers) > 1 and args.kill_at > 0:
            threading.Thread(target=kill_midway, args=(workers, len(ratings), args.kill_at, killed), daemon=True).start()
        t0 = time.time()
        stats = replay(ratings, settings.bootstrap_servers, settings.interactions_topic, speedup=speedup)

        # Wait for the workers to store everything and for their lists to arrive.
        dead_owned = 0
        if killed:
            dead_owned = handover(settings, killed[0], [w for w in workers if w.alive()])
        deadline = time.time() + 300
        while time.time() < deadline:
            alive = [w for w in workers if w.alive()]
            owned = dead_owned + sum(w.metrics().get("streamrec_store_events", 0) for w in alive)
            published = sum(metric_sum(w.metrics(), "streamrec_lists_published_total") for w in alive)
            if owned >= stats.events and follower.count >= published:
                break
            time.sleep(0.5)
        elapsed = time.time() - t0
        busy = sum(metric_sum(w.metrics(), "streamrec_stage_duration_seconds_sum") for w in workers if w.alive())
        printer_stop.set()
        time.sleep(1.2)
        follower.stopped.set()

        m = [w.metrics() for w in workers if w.alive()]
        stored = dead_owned + sum(x.get("streamrec_store_events", 0) for x in m)
        stored_alive = sum(metric_sum(x, "streamrec_events_stored_total") for x in m)  # by the running workers
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
              f"({stored_alive / max(busy, 1e-9):,.0f} events/s while busy)")
        print(f"  users               {len(users):,}; users with a list {len(follower.latest):,}")
        print(f"  lists published     {follower.count:,}")
        print(f"  freshness           p50 {np.percentile(fresh, 50):.3f}s  p99 {np.percentile(fresh, 99):.3f}s "
              "(Kafka timestamp of the triggering event -> list published)")
        for w in workers:
            print(f"  metrics             {w.metrics_url}")
        print(f"  worker logs, DuckDB {work}/")
        ok = stored >= stats.events
        if len(workers) > 1:
            for w in workers:
                w.stop()  # DuckDB files can be read once their workers are gone
            ok = check_scale_out(workers, killed, ratings, settings.seq_len) and ok
        return 0 if ok else 1
    finally:
        for w in workers:
            w.stop()
        if broker:
            broker.stop()


def kill_midway(workers: list[WorkerProcess], n_events: int, fraction: float, killed: list) -> None:
    """SIGKILL the last worker once ``fraction`` of the events were consumed: a crash mid-replay."""
    done = 0.0
    while done < fraction * n_events:
        time.sleep(0.2)
        try:
            done = sum(metric_sum(w.metrics(), "streamrec_events_consumed_total") for w in workers)
        except OSError:
            continue
    victim = workers[-1]
    victim.kill()
    killed.append(victim)
    tqdm.write(f"*** {Path(victim.db).stem} killed (SIGKILL) after {done:,.0f} events consumed; its partitions "
               "move to the others when the group notices (session timeout)")


def handover(settings: Settings, dead: WorkerProcess, alive: list[WorkerProcess], timeout: float = 120) -> int:
    """Wait until the survivors have claimed the dead worker's partitions, then open its database
    as a restart would (fencing what it stored past its last commit); returns the events it owns."""
    from streamrec.storage.store import EventStore
    from streamrec.streams.ownership import Ownership, segments

    store = EventStore(dead.db)
    try:
        ownership = Ownership(store, settings.bootstrap_servers, settings.interactions_topic, settings.group_id)
        deadline = time.time() + timeout
        while True:
            claims = ownership.log.read()
            if not any(segments(claims, p)[-1][2] == store.db_id for p in {c.partition for c in claims}):
                break
            if time.time() > deadline or not all(w.alive() for w in alive):
                raise TimeoutError(f"no takeover of {dead.db}'s partitions after {timeout}s; see the workers' logs")
            time.sleep(0.5)
        fenced = ownership.refresh()
        owned = store.count()
    finally:
        store.close()
    for w in alive:
        m = w.metrics()
        tqdm.write(f"*** {Path(w.db).stem} took over: {m.get('streamrec_partition_claims_total', 0):.0f} partition claims, "
                   f"{m.get('streamrec_events_recovered_total', 0):,.0f} earlier events copied from Kafka")
    tqdm.write(f"*** {Path(dead.db).stem}'s database reopened: owns {owned:,} events; {fenced:,} it stored past its "
               "last commit now belong to the partitions' next owner")
    return owned


def check_scale_out(workers: list[WorkerProcess], killed: list[WorkerProcess], ratings, seq_len: int) -> bool:
    """Every event owned by exactly one database; every user's sequence whole on its owner."""
    import duckdb

    keys, seqs = [], {}
    for w in workers:
        con = duckdb.connect(w.db, read_only=True)
        keys.append(set(con.execute("SELECT key FROM events WHERE owned").fetchnumpy()["key"].tolist()))
        if w not in killed:  # a user's current owner holds all of the user's events (its copies included)
            for u, items, n in con.execute("SELECT user_id, items, n_events FROM sequences").fetchall():
                if n > seqs.get(u, (None, -1))[1]:
                    seqs[u] = (items, n)
        con.close()
    total = sum(len(k) for k in keys)
    overlap = total - len(set().union(*keys))  # events owned by more than one database
    print("\nscale-out check")
    print(f"  events owned        {' + '.join(f'{len(k):,}' for k in keys)} = {total:,} "
          f"(replayed {len(ratings):,}); owned by two databases: {overlap}")
    order = np.argsort(ratings.user, kind="stable")  # ratings are time-sorted: stays so per user
    users, starts = np.unique(ratings.user[order], return_index=True)
    items = np.split(ratings.item[order], starts[1:])
    wrong = sum(seqs.get(u, (None,))[0] != it[-seq_len:].tolist() for u, it in zip(users.tolist(), items))
    print(f"  sequences           {len(users) - wrong:,} of {len(users):,} users' sequences on the survivor equal "
          f"the last {seq_len} events of the source (what a single worker stores)")
    return overlap == 0 and total == len(ratings) and wrong == 0
