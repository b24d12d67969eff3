"""Write a synthetic ratings file with the shape of MovieLens 20M, at any size.

ML-20M itself may not be redistributed, so scale benchmarks run on a seeded stream with its shape
(the real ``ml-20m/ratings.csv`` is read by every command when a user has it):

* 138,493 users and 26,744 items at 20M ratings (both scaled with ``--events``);
* Zipf-like item popularity (exponent ``--zipf``), items released over the years: an item is never
  rated before its release, so new items keep arriving in the stream;
* heavy-tailed activity: at least 20 ratings a user (as in ML-20M), log-normal above, mean ~144;
* users rate in sessions: bursts of ratings seconds apart within a minute, sessions days apart;
* a sequential signal: items form small series (sequels, a director's films) and the next film in a
  session comes from the previous one's series with probability ``--p-series``;
* twenty years of timestamps (1995-2015), the file sorted by time like ``ratings.csv``.

Output is ML-20M's ``ratings.csv`` format (``userId,movieId,rating,timestamp``).

    python benchmarks/gen_ml20m.py --events 20000000 --out /tmp/ml20m-synth/ratings.csv

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "ratings.csv"
>>> n = write_ratings(out, events=5_000, seed=1)
>>> lines = out.read_text().splitlines()
>>> lines[0], len(lines) - 1 == n, n
('userId,movieId,rating,timestamp', True, 5000)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

ML20M_EVENTS, ML20M_USERS, ML20M_ITEMS = 20_000_263, 138_493, 26_744
START, END = 788_918_400, 1_427_846_400  # 1995-01-01 .. 2015-04-01, ML-20M's span
DAY = 86_400


def user_counts(rng: np.random.Generator, n_users: int, mean: float) -> np.ndarray:
    """Ratings per user: 20 at least, a log-normal tail above (ML-20M: median 68, mean 144)."""
    tail = rng.lognormal(mean=0.0, sigma=1.2, size=n_users)
    tail *= (mean - 20) / tail.mean()
    return 20 + np.floor(tail).astype(np.int64)


def write_ratings(out: str | Path, events: int = ML20M_EVENTS, seed: int = 0, zipf: float = 1.05,
                  p_series: float = 0.3, progress: bool = False) -> int:
    """Write about ``events`` ratings to ``out``; returns the number written."""
    rng = np.random.default_rng(seed)
    scale = events / ML20M_EVENTS
    n_users = max(int(round(ML20M_USERS * scale)), 10)
    n_items = max(int(round(ML20M_ITEMS * scale ** 0.5)), 50)  # catalogues grow slower than logs
    counts = user_counts(rng, n_users, events / n_users)

    # Items: popularity rank r has weight 1/(r+10)^zipf; ids shuffled so popularity is not id order;
    # releases spread over the span, popular items a little earlier (they had time to become so).
    weight = 1.0 / (np.arange(n_items) + 10.0) ** zipf
    release = np.sort(rng.uniform(START - 10 * 365 * DAY, END - 30 * DAY, n_items))
    release = np.maximum(release[np.argsort(rng.permutation(n_items) + 0.3 * np.arange(n_items))], START)
    item_id = rng.permutation(n_items) + 1
    series = np.arange(n_items) // 6  # rank-neighbours form series of six
    order = np.argsort(release)  # items by release, for "what exists at time t"
    cum = np.cumsum(weight[order])

    users, items, times = [], [], []
    t0, total, u = time.time(), 0, 0
    while total < events:  # a few more users than planned where small catalogues lose many repeats
        if u == len(counts):
            counts = np.concatenate([counts, user_counts(rng, max(n_users // 10, 10), events / n_users)])
        want = int(counts[u])
        n = want + want // 2 + 5  # drawn with repeats: enough that ``want`` distinct remain
        # Active from a random time; sessions of ~12 ratings, gaps of days (heavy tail).
        start = rng.uniform(START, END - DAY)
        n_sessions = max(1, int(np.ceil(n / rng.integers(4, 20))))
        gaps = rng.exponential(rng.uniform(2, 60) * DAY, n_sessions)
        offsets = np.cumsum(gaps) - gaps[0]
        # A user whose sessions would run past the end has them squeezed into the time left (gaps
        # keep their proportions): clipping them to the end instead piled 12% of a 20M stream
        # into its last minute.
        room = END - 60 - start
        if offsets[-1] > room:
            offsets *= room / offsets[-1]
        session_start = start + offsets
        which = np.sort(rng.integers(0, n_sessions, n))
        t = session_start[which] + rng.uniform(0, 60, n)  # bursts within a minute
        t.sort()
        # Popular items among those released by then; some follow the previous film's series.
        released = np.searchsorted(release[order], t, side="right").clip(1, n_items)
        pick = order[np.searchsorted(cum, rng.uniform(0, 1, n) * cum[released - 1]).clip(0, n_items - 1)]
        follow = rng.uniform(size=n) < p_series
        follow[0] = False
        prev = np.roll(pick, 1)
        sibling = series[prev] * 6 + rng.integers(0, 6, n)
        ok = follow & (sibling < n_items)
        ok[ok] &= release[sibling[ok]] <= t[ok]
        pick[ok] = sibling[ok]
        _, first = np.unique(pick, return_index=True)  # one rating per (user, item), first kept
        keep = np.sort(rng.permutation(first)[:want]) if len(first) > want else np.sort(first)
        users.append(np.full(len(keep), u + 1, np.int64))
        items.append(item_id[pick[keep]])
        times.append(t[keep].astype(np.int64))
        total += len(keep)
        u += 1
        if progress and u % 10_000 == 0:
            print(f"\r{total:,}/{events:,} ratings, {time.time() - t0:.0f}s", end="", file=sys.stderr)
    n_users = u
    user = np.concatenate(users)
    item = np.concatenate(items)
    ts = np.concatenate(times)
    stars = np.array([f"{r / 2:.1f}" for r in range(1, 11)])  # "0.5" .. "5.0", as ML-20M writes them
    rating = stars[rng.integers(0, 10, len(user))]
    by_time = np.argsort(ts, kind="stable")
    if len(by_time) > events:  # the last user went over: drop random ratings
        by_time = np.sort(rng.choice(by_time, events, replace=False))
        by_time = by_time[np.argsort(ts[by_time], kind="stable")]
    table = pa.table({"userId": user[by_time], "movieId": item[by_time],
                      "rating": rating[by_time], "timestamp": ts[by_time]})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        f.write(b"userId,movieId,rating,timestamp\n")
        pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    if progress:
        print(f"\r{len(by_time):,} ratings, {n_users:,} users, {n_items:,} items -> {out} "
              f"({time.time() - t0:.0f}s)", file=sys.stderr)
    return len(by_time)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=ML20M_EVENTS, help="about this many ratings (default ML-20M's)")
    p.add_argument("--out", required=True, help="path of the ratings.csv to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zipf", type=float, default=1.05, help="item popularity exponent")
    p.add_argument("--p-series", type=float, default=0.3, help="chance the next film is from the previous one's series")
    a = p.parse_args(argv)
    if a.events < 1000:
        p.error("--events must be at least 1000")
    write_ratings(a.out, a.events, a.seed, a.zipf, a.p_series, progress=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
