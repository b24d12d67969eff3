"""Where a batch's time goes in the store and the popularity ranker with N events already stored.

No Kafka, no worker: the first ``--stored`` events of a ratings file go into an EventStore in
large batches (kept in ``--cache`` for the next run, then copied, so runs start alike); every
user's sequence is loaded (as in a worker that has run all along) and the first checkpoint after
opening is taken out of the timing (DuckDB's first one after an open costs ~2 s at 19M stored,
later ones ~0.4 s); then ``--batches`` batches of the events that follow are timed, per step:

* ``append``: EventStore.append (of which ``insert`` is DuckDB's, ``lookups`` the key and seen-pair
  runs, ``sequences`` the in-memory sequences);
* ``seq`` / ``seen``: the model inputs of the batch's users; ``rank``: popularity lists of 20.

    python benchmarks/bench_store_state.py --ratings RATINGS.csv --stored 19000000

``--batches-from M``: time the batches that follow event M instead (served again as new events,
ten years later), so that the same batches, with the same users, meet a log of any size: what
grows with the log is then told apart from what grows with the stream (users a batch).
"""

from __future__ import annotations

import argparse
import functools
import platform
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import rating_batch, rss_mb  # noqa: E402

from streamrec.model.recommender import PopularityRecommender  # noqa: E402
from streamrec.storage import key_index  # noqa: E402
from streamrec.storage import store as store_module  # noqa: E402
from streamrec.storage.movielens import load_ratings  # noqa: E402


def timed(acc: dict, cls, name: str, label: str) -> None:
    """Add the time of every call of ``cls.name`` to ``acc[label]``."""
    f = getattr(cls, name)

    @functools.wraps(f)
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            acc[label] += time.perf_counter() - t
    setattr(cls, name, wrapper)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratings", type=Path, required=True, help="e.g. gen_ml20m.py's 20M file")
    ap.add_argument("--stored", type=int, default=1_000_000, help="events stored before timing")
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--batches-from", type=int, default=None, help="time the batches after this event instead")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/bench-store-state"))
    args = ap.parse_args()
    r = load_ratings(args.ratings)
    t_ms = r.timestamp * 1000
    batch = lambda lo, hi, shift=0: rating_batch(r.user, r.item, t_ms, r.rating, lo, hi, shift)  # noqa: E731
    n, size = args.stored, args.batch_size
    first = n if args.batches_from is None else args.batches_from
    shift = 0 if args.batches_from is None else 10 * 365 * 86_400_000  # new event ids, later than the log
    if first + args.batches * size > len(r.user):
        sys.exit(f"--stored + --batches x --batch-size is past the file's {len(r.user):,} events")
    args.cache.mkdir(parents=True, exist_ok=True)
    built = args.cache / f"store-{n}.duckdb"
    if not built.exists():
        s = store_module.EventStore(args.cache / "building.duckdb")
        for lo in range(0, n, 250_000):
            s.append(batch(lo, min(lo + 250_000, n)))
        s.close()
        (args.cache / "building.duckdb").rename(built)
    work = args.cache / "work.duckdb"
    for p in (work, Path(f"{work}.wal")):
        p.unlink(missing_ok=True)
    shutil.copy(built, work)
    t = time.perf_counter()
    store = store_module.EventStore(work)
    store._load(store._users.ids.copy())  # every user's sequence in memory, as in a running worker
    print(f"{n:,} events stored; opened with every sequence in {time.perf_counter() - t:.1f}s", flush=True)
    # A new event, so that the WAL is not empty: of a user never seen (one of the timed batches' users,
    # given an event newer than all of theirs, would make their events late and reloaded from the log).
    store.append(rating_batch(np.array([r.user.max() + 1]), r.item[-1:], t_ms[-1:], r.rating[-1:], 0, 1))
    store.con.execute("CHECKPOINT")
    pop = PopularityRecommender()
    pop.observe(r.item[max(first - 50_000, 0):first])
    acc: dict[str, float] = defaultdict(float)
    timed(acc, store_module.EventStore, "_insert", "insert")
    timed(acc, store_module.EventStore, "_update_sequences", "sequences")
    timed(acc, key_index.SortedRuns, "lookup", "lookups")
    steps = defaultdict(list)
    users_per_batch, seen_per_batch = [], []
    for j in range(args.batches):
        b = batch(first + j * size, first + (j + 1) * size, shift)
        t0 = time.perf_counter()
        store.append(b)
        t1 = time.perf_counter()
        users = np.unique(b.user).tolist()
        seq = store.sequences(users)
        t2 = time.perf_counter()
        seen = store.seen(users)
        t3 = time.perf_counter()
        pop.observe(b.item)
        pop.recommend(seq, seen, 20)
        t4 = time.perf_counter()
        for k, v in (("append", t1 - t0), ("seq", t2 - t1), ("seen", t3 - t2), ("rank", t4 - t3)):
            steps[k].append(v)
        users_per_batch.append(len(users))
        seen_per_batch.append(len(seen.codes))
    print(f"{args.batches} batches of {size:,}: {np.mean(users_per_batch):,.0f} users and "
          f"{np.mean(seen_per_batch):,.0f} seen items a batch; ms per batch:")
    for k, v in steps.items():
        print(f"  {k:8s} mean {1000 * np.mean(v):6.1f}  p90 {1000 * np.percentile(v, 90):6.1f}"
              f"  max {1000 * max(v):6.1f}")
    stalls = sorted(1000 * x for x in steps["append"] if x > 0.1)  # (a checkpoint stalls the append that triggers it)
    print(f"  appends over 100 ms (checkpoints): {len(stalls)}, {', '.join(f'{x:.0f}' for x in stalls)} ms")
    print("  inside append: " + ", ".join(f"{k} {1000 * v / args.batches:.1f}" for k, v in acc.items()))
    print(f"RSS {rss_mb():,.0f} MB (with the ratings file in memory); {platform.node()}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    store.close()


if __name__ == "__main__":
    main()
