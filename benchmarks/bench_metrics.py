"""Prequential scoring throughput: Numba kernels vs vectorised NumPy vs a pure-Python loop.

The workload is the online evaluator's hot path for every event: pick the list shown to the
user before the event (current or previous list, by trigger time), find the event's item in
it, and compute HitRate/NDCG/MRR at each cut-off (``model.prequential.prequential_ranks`` +
``metric_matrix``). All three implementations produce the same arrays; the script checks it.

Runs on one core: ``NUMBA_NUM_THREADS=1`` and BLAS/OpenMP threads are set to 1 before NumPy
and Numba are imported, and the process is pinned to a single CPU.

    .venv/bin/python benchmarks/bench_metrics.py            # 10M events, Python loop on 1M
    .venv/bin/python benchmarks/bench_metrics.py --events 1000000 --python-events 100000
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import datetime as dt
import math
import platform
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from streamrec.model import metrics as mk  # noqa: E402
from streamrec.model import prequential as pq  # noqa: E402


def make_workload(n_events: int, n_users: int, n_items: int, width: int, seed: int):
    """Per-user current/previous lists and events; ~30% of events pick an item from a list."""
    rng = np.random.default_rng(seed)
    cur = rng.integers(0, n_items, size=(n_users, width), dtype=np.int64)
    prev = rng.integers(0, n_items, size=(n_users, width), dtype=np.int64)
    cur[rng.random(n_users) < 0.05, width // 2 :] = -1  # some short, padded lists
    cur_t = rng.integers(1_000, 2_000, size=n_users, dtype=np.int64)
    prev_t = cur_t - rng.integers(1, 500, size=n_users, dtype=np.int64)
    no_list = rng.random(n_users) < 0.02
    cur_t[no_list], prev_t[no_list] = pq.NO_LIST, pq.NO_LIST
    no_prev = rng.random(n_users) < 0.1
    prev_t[no_prev] = pq.NO_LIST

    slots = rng.integers(-1, n_users, size=n_events, dtype=np.int64)  # -1: unknown user
    times = cur_t[np.maximum(slots, 0)] + rng.integers(-600, 600, size=n_events, dtype=np.int64)
    times[cur_t[np.maximum(slots, 0)] == pq.NO_LIST] = 1_500
    items = rng.integers(0, n_items, size=n_events, dtype=np.int64)
    from_list = rng.random(n_events) < 0.3
    pos = rng.integers(0, width, size=n_events)
    items[from_list] = cur[np.maximum(slots, 0), pos][from_list]
    return slots, items, times, cur, cur_t, prev, prev_t


# --- the three implementations ----------------------------------------------------------------


def score_numba(slots, items, times, cur, cur_t, prev, prev_t, ks):
    ranks, _, status = pq._prequential_ranks(slots, items, times, cur, cur_t, prev, prev_t)
    return status, mk._metric_matrix(ranks, ks)


def score_numpy(slots, items, times, cur, cur_t, prev, prev_t, ks):
    s = np.maximum(slots, 0)
    ct, pt = cur_t[s], prev_t[s]
    known = (slots >= 0) & (ct != pq.NO_LIST)
    use_cur = known & (ct < times)
    has_prev = pt != pq.NO_LIST
    use_prev = known & ~use_cur & has_prev & (pt < times)
    late = known & ~use_cur & has_prev & ~(pt < times)
    warm = use_cur | use_prev
    status = np.where(warm, pq.WARM, np.where(late, pq.LATE, pq.COLD))
    lists = np.where(use_cur[:, None], cur[s], prev[s])  # gathers a [n, width] copy
    eq = (lists == items[:, None]) & (warm & (items >= 0))[:, None]
    found = eq.any(axis=1)
    ranks = np.where(found, eq.argmax(axis=1), -1)
    out = np.zeros((len(ranks), 3 * len(ks)))
    r = ranks.astype(np.float64)
    ndcg = 1.0 / np.log2(r + 2.0, where=found, out=np.ones_like(r))
    rr = np.divide(1.0, r + 1.0, where=found, out=np.zeros_like(r))
    for c, k in enumerate(ks.tolist()):
        hit = found & (ranks < k)
        out[:, 3 * c] = hit
        out[:, 3 * c + 1] = np.where(hit, ndcg, 0.0)
        out[:, 3 * c + 2] = np.where(hit, rr, 0.0)
    return status, out


_as_lists: dict[int, list] = {}


def _py(a: np.ndarray) -> list:
    # The per-user lists are state that a Python evaluator would keep as lists: convert once.
    if id(a) not in _as_lists:
        _as_lists[id(a)] = a.tolist()
    return _as_lists[id(a)]


def score_python(slots, items, times, cur, cur_t, prev, prev_t, ks):
    slots, items, times = slots.tolist(), items.tolist(), times.tolist()
    cur, prev, cur_t, prev_t, ks = _py(cur), _py(prev), _py(cur_t), _py(prev_t), ks.tolist()
    no_list = int(pq.NO_LIST)
    status, out = [], []
    zeros = [0.0] * (3 * len(ks))
    for s, it, t in zip(slots, items, times):
        lst = None
        if s >= 0 and cur_t[s] != no_list:
            if cur_t[s] < t:
                lst = cur[s]
            elif prev_t[s] != no_list and prev_t[s] < t:
                lst = prev[s]
            elif prev_t[s] != no_list:
                status.append(pq.LATE)
                out.append(zeros)
                continue
        if lst is None:
            status.append(pq.COLD)
            out.append(zeros)
            continue
        status.append(pq.WARM)
        rank = lst.index(it) if it >= 0 and it in lst else -1
        row = []
        for k in ks:
            if 0 <= rank < k:
                row += [1.0, 1.0 / math.log2(rank + 2), 1.0 / (rank + 1)]
            else:
                row += [0.0, 0.0, 0.0]
        out.append(row)
    return np.array(status, dtype=np.int64), np.array(out).reshape(len(status), 3 * len(ks))


# --- timing -------------------------------------------------------------------------------------


def run_chunks(fn, data, ks, chunk: int):
    """Score all events in chunks, like the worker's micro-batches (and bounding NumPy's
    temporaries). Returns the seconds spent inside ``fn`` and a checksum of its output; the
    checksum (the sums the evaluator's means take) is computed outside the timing, as it costs
    the same for every implementation."""
    slots, items, times, *lists = data
    spent, total = 0.0, np.zeros(3 * len(ks))
    for a in range(0, len(slots), chunk):
        b = a + chunk
        t0 = time.perf_counter()
        _, m = fn(slots[a:b], items[a:b], times[a:b], *lists, ks)
        spent += time.perf_counter() - t0
        total += m.sum(axis=0)
    return spent, total


def bench_evaluator(data, n_events: int, batch: int) -> tuple[float, int]:
    """The whole ``OnlineEvaluator.score_events`` (lookup, metrics, recall horizons, windows
    per model version) on micro-batches of ``batch`` events; returns (seconds, events)."""
    from streamrec.model.online import OnlineEvaluator

    slots, items, times, cur, cur_t, *_ = data
    users = np.flatnonzero(cur_t != pq.NO_LIST)
    ev = OnlineEvaluator(ks=(5, 10, 20), window_events=10_000, window_seconds=600)
    half = len(users) // 2  # two recommenders, so the per-group path is exercised
    ev.record_lists(users[:half], cur[users[:half]], cur_t[users[:half]], "sasrec", "v1")
    ev.record_lists(users[half:], cur[users[half:]], cur_t[users[half:]], "popularity", "w")
    n = min(n_events, len(slots))
    # events in time order, as a replay delivers them; user ids are the slots here
    order = np.argsort(times[:n], kind="stable")
    u, i, t = slots[:n][order], items[:n][order], times[:n][order]
    t0 = time.perf_counter()
    for a in range(0, n, batch):
        ev.score_events(u[a : a + batch], i[a : a + batch], t[a : a + batch])
    return time.perf_counter() - t0, n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=10_000_000, help="events scored (default: %(default)s)")
    p.add_argument("--python-events", type=int, default=1_000_000,
                   help="events for the pure-Python loop, extrapolated to --events (default: %(default)s)")
    p.add_argument("--users", type=int, default=100_000, help="users with lists (default: %(default)s)")
    p.add_argument("--items", type=int, default=50_000, help="item catalogue size (default: %(default)s)")
    p.add_argument("--width", type=int, default=20, help="list length (default: %(default)s)")
    p.add_argument("--ks", default="5,10,20", help="cut-offs (default: %(default)s)")
    p.add_argument("--chunk", type=int, default=65_536,
                   help="events per call; the worker's micro-batches hold at most 5,000, larger chunks "
                        "spare NumPy most of its per-call overhead (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3, help="best of this many runs (default: %(default)s)")
    p.add_argument("--evaluator-events", type=int, default=1_000_000,
                   help="events for the end-to-end OnlineEvaluator run, 0 to skip (default: %(default)s)")
    p.add_argument("--evaluator-batch", type=int, default=5_000,
                   help="micro-batch size of that run (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU")
    args = p.parse_args(argv)

    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    ks = np.array(sorted({int(k) for k in args.ks.split(",")}), dtype=np.int64)
    data = make_workload(args.events, args.users, args.items, args.width, args.seed)

    # Same answers first (this also compiles the kernels, outside the timings).
    n_check = min(args.python_events, 200_000, args.events)
    head = [a[:n_check] for a in data[:3]] + list(data[3:])
    ref_status, ref_m = score_python(*head, ks)  # also converts the lists for the timed runs
    for fn in (score_numba, score_numpy):
        st, m = fn(*head, ks)
        assert np.array_equal(st, ref_status), fn.__name__
        np.testing.assert_allclose(m, ref_m, rtol=1e-12, atol=0, err_msg=fn.__name__)

    def best(fn):
        runs = [run_chunks(fn, data, ks, args.chunk) for _ in range(args.repeat)]
        return min(r[0] for r in runs), runs[0][1]

    t_nb, sum_nb = best(score_numba)
    t_np, sum_np = best(score_numpy)
    np.testing.assert_allclose(sum_nb, sum_np, rtol=1e-9)
    n_py = min(args.python_events, args.events)
    sub = [a[:n_py] for a in data[:3]] + list(data[3:])
    t_py, _ = run_chunks(score_python, sub, ks, args.chunk)
    t_py_full = t_py * args.events / n_py

    warm = ref_status == pq.WARM
    n = args.events
    print(f"date (UTC)     {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M}")
    print(f"machine        {platform.processor() or platform.machine()}, nproc={os.cpu_count()}, "
          f"pinned to CPU {sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}, "
          f"loadavg {os.getloadavg()[0]:.2f}")
    print(f"versions       python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
          f"NUMBA_NUM_THREADS={os.environ['NUMBA_NUM_THREADS']}")
    print(f"workload       {n:,} events, {args.users:,} users with lists of {args.width}, K={ks.tolist()}, "
          f"chunks of {args.chunk:,}; warm {warm.mean():.0%}, hit@{ks[-1]} among warm "
          f"{ref_m[warm, 3 * (len(ks) - 1)].mean():.0%}")
    print(f"{'implementation':<16}{'seconds':>10}{'events/s':>16}{'vs Numba':>10}")
    print(f"{'numba':<16}{t_nb:>10.3f}{n / t_nb:>16,.0f}{1.0:>9.1f}x")
    print(f"{'numpy':<16}{t_np:>10.3f}{n / t_np:>16,.0f}{t_np / t_nb:>9.1f}x")
    print(f"{'python*':<16}{t_py_full:>10.3f}{n / t_py_full:>16,.0f}{t_py_full / t_nb:>9.1f}x")
    print(f"* pure-Python loop measured on the first {n_py:,} events ({t_py:.2f} s) and extrapolated "
          f"linearly to {n:,}")
    print(f"best of {args.repeat} runs for numba and numpy; all three agree on the first {n_check:,} events, "
          "numba and numpy on the sums over all of them")
    if args.evaluator_events:
        t_ev, n_ev = bench_evaluator(data, args.evaluator_events, args.evaluator_batch)
        print(f"OnlineEvaluator.score_events end to end (ranks, metrics, recall horizons, 3 windows x "
              f"overall/model/version): {n_ev / t_ev:,.0f} events/s on {n_ev:,} events in batches of "
              f"{args.evaluator_batch:,}")
    ok = n / t_nb >= 10e6 and t_np / t_nb >= 3
    print(f"targets (numba >= 10M events/s and >= 3x numpy): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
