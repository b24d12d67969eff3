"""Soak test of crash recovery: many SIGKILL/restart cycles during ingest, then the stored log is
compared with the source (run by hand; minutes).

One worker (default): it is killed and restarted ``--cycles`` times while it works through the
replayed topic, each time only after the restarted worker has stored at least one new batch (the
count of such "kills after progress" is printed); at the end every event must be stored exactly
once and every sequence must equal the source's. With ``--workers N`` (N >= 2, four partitions, one
DuckDB file each) a random worker is killed and restarted in each cycle while a timed replay runs,
so partitions keep moving; at the end every event must be owned by exactly one database and every
user's sequence, on the database that owns the user's partition now, must equal the source's.

    python benchmarks/soak_restarts.py --cycles 10
    python benchmarks/soak_restarts.py --workers 2 --cycles 6
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from streamrec.storage.movielens import load_ratings  # noqa: E402
from streamrec.streams.broker import EmbeddedBroker  # noqa: E402
from streamrec.streams.config import Settings  # noqa: E402
from streamrec.streams.processes import WorkerProcess  # noqa: E402
from streamrec.streams.replay import replay  # noqa: E402
from streamrec.streams.topics import ensure_topics  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=10, help="SIGKILL/restart cycles")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="workers in the group (>= 2: scale-out soak)")
    args = ap.parse_args()
    if args.workers > 1:
        return soak_scale_out(args)
    rng = random.Random(args.seed)
    ratings = load_ratings(Path(__file__).resolve().parent.parent / "tests" / "data" / "ratings.csv")
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    with EmbeddedBroker(log_file=tmp / "tansu.log") as broker:
        s = Settings(bootstrap_servers=broker.bootstrap, db=str(tmp / "w.duckdb"))
        ensure_topics(s)
        replay(ratings, broker.bootstrap, s.interactions_topic, progress=False)
        kw = dict(batch_size=args.batch_size)
        after_progress = 0
        for c in range(args.cycles):
            w = WorkerProcess(broker.bootstrap, s.db, tmp / f"w{c}.log", **kw).start()
            w.wait_ready()
            # Kill only once this run has stored a new batch: a kill during the claim and recovery
            # phase tests nothing the previous kill did not (16 of 20 kills landed there before).
            deadline, new = time.time() + 120, 0.0
            while time.time() < deadline and (new := w.metrics().get("streamrec_events_stored_total", 0)) == 0:
                if w.metrics().get("streamrec_store_events", 0) >= len(ratings):
                    break  # nothing left to store
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.3))  # then at a random moment of the batches that follow
            m = w.metrics()
            new, stored = m.get("streamrec_events_stored_total", 0), m.get("streamrec_store_events", 0)
            w.kill()
            after_progress += new > 0
            print(f"cycle {c + 1}: killed after this run stored {new:,.0f} new events ({stored:,.0f} in the store)"
                  + ("" if new else " -- NO PROGRESS before the kill"), flush=True)
            if stored >= len(ratings):
                print("every event stored: no more kills can land after progress", flush=True)
                break
        w = WorkerProcess(broker.bootstrap, s.db, tmp / "final.log", **kw).start()
        w.wait_ready()
        deadline = time.time() + 300
        while w.metrics().get("streamrec_store_events", 0) < len(ratings) and time.time() < deadline:
            time.sleep(0.5)
        time.sleep(2)
        w.stop()
    con = duckdb.connect(s.db, read_only=True)
    n, distinct = con.execute("SELECT count(*), count(DISTINCT key) FROM events").fetchone()
    seqs = dict(con.execute("SELECT user_id, items FROM sequences").fetchall())
    con.close()
    bad = [u for u in np.unique(ratings.user).tolist()
           if seqs.get(u) != ratings.item[ratings.user == u][-200:].tolist()]
    ok = n == distinct == len(ratings) and not bad
    print(f"{after_progress} of {c + 1} kills after progress: stored {n:,} rows ({distinct:,} distinct) "
          f"of {len(ratings):,}; "
          f"{len(bad)} users with a wrong sequence -> {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


def soak_scale_out(args) -> int:
    """Kill and restart a random one of ``--workers`` workers per cycle during a timed replay."""
    import threading

    from streamrec.streams.demo import check_scale_out
    from streamrec.streams.processes import metric_sum

    rng = random.Random(args.seed)
    ratings = load_ratings(Path(__file__).resolve().parent.parent / "tests" / "data" / "ratings.csv")
    tmp = Path(tempfile.mkdtemp(prefix="soak-scale-"))
    with EmbeddedBroker(log_file=tmp / "tansu.log") as broker:
        s = Settings(bootstrap_servers=broker.bootstrap, partitions=4)
        ensure_topics(s)
        kw = dict(batch_size=args.batch_size, partitions=4)
        dbs = [tmp / f"w{i}.duckdb" for i in range(args.workers)]
        workers = [WorkerProcess(broker.bootstrap, db, tmp / f"w{i}-0.log", **kw).start() for i, db in enumerate(dbs)]
        for w in workers:
            w.wait_ready()

        def produce():  # the replay spread over the cycles: partitions move while events arrive
            parts = np.array_split(np.arange(len(ratings)), 4 * args.cycles)
            for part in parts:
                replay(ratings.slice(int(part[0]), int(part[-1]) + 1), broker.bootstrap, s.interactions_topic,
                       progress=False)
                time.sleep(3.0)

        producing = threading.Thread(target=produce)
        producing.start()
        for c in range(args.cycles):
            time.sleep(rng.uniform(4.0, 12.0))
            i = rng.randrange(args.workers)
            stored = workers[i].metrics().get("streamrec_store_events", 0)
            workers[i].kill()
            time.sleep(rng.uniform(0.0, 3.0))
            workers[i] = WorkerProcess(broker.bootstrap, dbs[i], tmp / f"w{i}-{c + 1}.log", **kw).start()
            print(f"cycle {c + 1}: killed worker {i} with {stored:,.0f} events owned; restarted", flush=True)
        producing.join()
        # Done when the workers own every event between them and have fenced what their kills left.
        deadline = time.time() + 300
        while time.time() < deadline:
            m = [w.metrics() for w in workers if w.alive()]
            if len(m) == len(workers) and sum(x.get("streamrec_store_events", 0) for x in m) == len(ratings):
                break
            time.sleep(1.0)
        time.sleep(12.0)  # a fencing round (every 10 s) after the last claims
        lag = sum(metric_sum(x, "streamrec_consumer_lag_events") for x in (w.metrics() for w in workers))
        for w in workers:
            w.stop()
    ok = check_scale_out(workers, [], ratings, 200)
    print(f"{args.cycles} kills across {args.workers} workers; final lag {lag:.0f} -> {'OK' if ok else 'FAILED'} "
          f"(logs and databases in {tmp})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
