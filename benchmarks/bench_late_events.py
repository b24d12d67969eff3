"""What a batch of late events costs the store with a big log stored.

A late event is older than its user's newest one in memory; the store puts that user back in time
order from the log (``storage/late_events.py``). This opens a copy of a store database (e.g. the
19M one ``bench_store_state.py`` keeps in its cache), loads every sequence, then appends batches of
``K`` events, each one ``--late`` seconds older than its user's newest, for users picked among the
``--recent`` most recently active (late relative to a recent history, as in a live stream), and
prints each batch's append time.

    python benchmarks/bench_late_events.py --db /tmp/bench-store-state/store-19000000.duckdb
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import rating_batch  # noqa: E402

from streamrec.storage.store import EventStore  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", type=Path, required=True, help="a store database (copied, not changed)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100, 1, 10, 100], help="late users a batch")
    ap.add_argument("--late", type=float, default=3600.0, help="seconds before the user's newest event")
    ap.add_argument("--recent", type=int, default=3000, help="pick users among this many most recently active")
    args = ap.parse_args(argv)
    if not args.db.exists():
        sys.exit(f"bench_late_events: no database at {args.db} (bench_store_state.py --stored N writes one)")
    work = Path(tempfile.mkdtemp(prefix="bench-late-")) / "store.duckdb"
    shutil.copy(args.db, work)
    t = time.perf_counter()
    store = EventStore(work)
    store._load(store._users.ids.copy())  # every sequence in memory, as in a worker that has run all along
    store.append(rating_batch(np.array([10**12]), np.array([1]), np.array([10**12]), np.array([4.0]), 0, 1))
    store.con.execute("CHECKPOINT")  # (the first checkpoint after an open is slow: not in the timing)
    print(f"{store.count():,} events stored, every sequence loaded in {time.perf_counter() - t:.1f}s", flush=True)
    pool, rng = store._pool, np.random.default_rng(0)
    codes = np.flatnonzero(pool.row_of >= 0)
    recent = codes[np.argsort(pool.newest[pool.row_of[codes], 0])[-args.recent:]]
    picked = rng.choice(recent, min(sum(args.sizes), len(recent)), replace=False)
    offset = 10**12
    for k in args.sizes:
        users, picked = picked[:k], picked[k:]
        newest = pool.newest[pool.row_of[users], 0]
        b = rating_batch(store._users.ids[users], np.ones(k, np.int64), newest - int(args.late * 1000),
                         np.full(k, 4.0), 0, k)
        b.offset = np.arange(offset, offset + k)
        offset += k
        t = time.perf_counter()
        store.append(b)
        print(f"{k:5d} late users in one batch: append {1000 * (time.perf_counter() - t):.1f} ms", flush=True)
    print(f"{platform.node()}, {time.strftime('%Y-%m-%d %H:%M')}")
    store.close()
    shutil.rmtree(work.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
