"""What a sequence cache smaller than the active users costs the store: evictions and reloads.

The store keeps at most ``--sequence-users`` users' rolling sequences in memory (the least recently
used are evicted, and reloaded from DuckDB when they come back). This appends a ratings file's
first ``--events`` events in 5,000-event batches, reading each batch's users' sequences as the
worker does, once with the cap given and once with the default cap, and prints per run the events/s,
the store's CPU per batch, the evictions and the rows held.

    python benchmarks/bench_sequence_cache.py --ratings RATINGS.csv --events 2000000 --sequence-users 10000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import rating_batch  # noqa: E402
from bench_stages import ratings_arg  # noqa: E402

from streamrec.storage.store import EventStore  # noqa: E402
from streamrec.streams.config import Settings  # noqa: E402


def run(r, n: int, cap: int, batch: int) -> str:
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as d:
        s = EventStore(Path(d) / "events.duckdb", max_users=cap)
        t, c = time.perf_counter(), time.process_time()
        for lo in range(0, n, batch):
            res = s.append(rating_batch(r.user, r.item, r.timestamp * 1000, r.rating, lo, min(lo + batch, n)))
            s.sequences(res.users.tolist())
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        line = (f"cap {cap:>9,} users: {n / wall:>9,.0f} events/s, {1000 * cpu / -(-n // batch):5.1f} ms CPU a batch, "
                f"{s._pool.evicted:,} evictions, {len(s._pool.user_of):,} rows for {len(s._users):,} users")
        s.close()
    return line


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratings", type=Path, required=True, help="ratings file (e.g. gen_ml20m.py's)")
    ap.add_argument("--events", type=int, default=2_000_000, help="events to append")
    ap.add_argument("--sequence-users", type=int, default=10_000, help="the cap to compare with the default's")
    ap.add_argument("--batch-size", type=int, default=Settings().batch_size)
    args = ap.parse_args(argv)
    r = ratings_arg(ap, args.ratings)
    n = min(args.events, len(r.user))
    for cap in (args.sequence_users, Settings().sequence_users):
        print(run(r, n, cap, args.batch_size), flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("bench_sequence_cache.py: interrupted")
