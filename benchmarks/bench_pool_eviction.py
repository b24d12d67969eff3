"""What the sequence pool costs a batch once its cap is reached and every new user evicts one.

A synthetic stream (no Kafka, no DuckDB): ``--users`` user codes, each arriving once with
``--events-per-user`` events, in 5,000-event batches, into a ``SequencePool`` capped at ``--cap``
users; each batch's users' sequences are then read back, as the store does. Prints the pool's
CPU per batch before the cap (rows free or grown) and after it (every batch evicts).

    python benchmarks/bench_pool_eviction.py --cap 1000000 --users 1500000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from streamrec.storage.sequence_pool import SequencePool  # noqa: E402


def count(text: str) -> int:
    """A whole number of at least 1 (argparse turns the error into a one-line usage error)."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cap", type=count, default=1_000_000, help="the pool's max_users (default 1,000,000)")
    p.add_argument("--users", type=count, default=1_500_000, help="user codes in the stream (default 1,500,000)")
    p.add_argument("--events-per-user", type=count, default=7, help="events of each user, in one batch (default 7)")
    p.add_argument("--seq-len", type=count, default=200, help="items kept per user (default 200)")
    a = p.parse_args(argv)
    if a.events_per_user > 5_000:
        p.error(f"--events-per-user: at most 5000 (a user's events fit one batch), not {a.events_per_user}")
    pool, per, batch = SequencePool(a.seq_len, a.cap), a.events_per_user, 5_000 // a.events_per_user
    cpu = {"before the cap": [], "at the cap": []}
    for lo in range(0, a.users, batch):
        users = np.repeat(np.arange(lo, min(lo + batch, a.users)), per)
        n = len(users)
        items, times = np.arange(n, dtype=np.int32) % 20_000 + 1, np.tile(np.arange(per), n // per) + lo
        c = time.process_time()
        pool.tick()
        pool.append(users, items, times, np.arange(n))
        pool.gather(np.unique(users))
        cpu["at the cap" if pool.evicted else "before the cap"].append(time.process_time() - c)
    for k, v in cpu.items():
        if v:
            print(f"{k:>15}: {len(v):,} batches, pool CPU {1000 * np.mean(v):.2f} ms a batch "
                  f"(median {1000 * np.median(v):.2f}, max {1000 * np.max(v):.1f})")
    print(f"evicted {pool.evicted:,}, rows {len(pool.user_of):,}, users held {pool.users:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
