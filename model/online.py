"""Prequential (test-then-train) evaluation of the lists the worker publishes.

Every accepted event ``(user u, item i, time t)`` grades the list we last showed ``u``.

Which list: the one with the largest trigger time ``t_l < t`` among the lists recorded for
``u`` (recording order breaks ties: a list recorded with the same trigger time as the current
one replaces it). The inequality is strict: a list triggered by events at time ``t_l`` was
computed from them and could not have been shown before another event stamped ``t_l``, so
such a tied event is graded against the list before. Per user, the evaluator keeps the
current list and the one before it; a list recorded with a trigger time older than the
current one is *stale* and dropped.

Per event, for every ``K`` in ``ks`` (default 5, 10, 20), with ``rank`` the 0-based position
of ``i`` in that list (-1 if absent):

* ``HitRate@K = [0 <= rank < K]``, ``NDCG@K = HitRate@K / log2(rank + 2)``,
  ``MRR@K = HitRate@K / (rank + 1)`` (see ``model.metrics``).

Events with no list before them are *cold*: they are counted (``events_cold``, ``coverage =
warm / (warm + cold)``) and never enter the means as zeros. Events for which only a list we
no longer keep could apply (out-of-order data) are *late* and only counted.

Per list, Recall@K with a horizon: let ``F`` be the first ``H`` distinct items (``H =
horizon_items``, default ``max(ks)``) that ``u`` consumed at times in ``(t_l, t_l +
horizon_seconds]``, in event order, whichever list was current meanwhile. Then

    ``Recall@K = |top-K of the list ∩ F| / min(K, |F|)``

(the normalisation of Liang et al. 2018, so a perfect list scores 1 whatever ``|F|``). A list
is closed, and its recall recorded at that event time, when ``|F|`` reaches ``H`` or when its
time horizon ends: at the first event of ``u`` past it, or when the watermark (largest event
time scored, minus ``lateness_seconds``) passes it, or on ``flush()``. Lists closed with
``F`` empty are counted (``lists_no_future``) and carry no recall. A list replaced by one with
the same trigger time is discarded without a recall: no event could have graded it.

Worker protocol, once per micro-batch::

    result = evaluator.score_events(users, items, times)    # graded against earlier lists
    recs = recommender.recommend(...)                        # new lists for touched users
    evaluator.record_lists(touched, recs.items, trigger_times, recs.models, recs.versions)

so no event is ever graded against a list computed from it. ``trigger_times`` is, per user,
the largest event time that the new list has seen. Events may arrive in any order across
users but must be sorted by time per user; a user may appear many times in one batch.

Means are kept with an update/revert protocol (like river's ``utils.Rolling``): over the whole
stream, over the last ``window_events`` observations and over the last ``window_seconds`` of
event time; overall, per recommender name and per (name, version).

>>> ev = OnlineEvaluator(ks=(1, 2), window_events=10, window_seconds=100, horizon_items=2)
>>> ev.record_lists([7], [[10, 11]], [100], model="popularity", version="v1")
>>> r = ev.score_events([7, 7, 8], [11, 12, 10], [101, 102, 102])
>>> r.status.tolist(), r.ranks.tolist()
([0, 0, 1], [1, -1, -1])
>>> r.recall.tolist()  # list closed after two distinct items, {11, 12}: 1 of min(2, 2)
[[0.0, 0.5]]
>>> rows = {(x.model, x.window, x.metric, x.k): x.value for x in ev.snapshot()}
>>> rows[("popularity", "all", "HitRate", 2)], rows[("all", "all", "coverage", 0)]
(0.5, 0.6666666666666666)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from streamrec.model import metrics as mk

__all__ = ["PROMETHEUS_GAUGES", "Mean", "OnlineEvaluator", "Rolling", "ScoreResult", "SlotIndex", "SnapshotRow", "TimeRolling"]

ALL = "all"  # the model/version label of aggregates over every model or version

#: A Prometheus gauge per snapshot metric (labels model, version, k, window), for the exporter.
#: Counts are exported as gauges too: they come from snapshots, not from increments.
PROMETHEUS_GAUGES = {
    "HitRate": ("streamrec_online_hit_rate", "Share of graded events whose item was in the top K shown"),
    "NDCG": ("streamrec_online_ndcg", "NDCG@K of graded events against the list shown before them"),
    "MRR": ("streamrec_online_mrr", "Reciprocal rank (0 beyond K) of graded events"),
    "Recall": ("streamrec_online_recall", "Recall@K of closed lists over the user's next distinct items"),
    "coverage": ("streamrec_online_coverage", "Share of warm among warm and cold events"),
    "events_warm": ("streamrec_online_events_warm", "Events graded against an earlier list"),
    "events_cold": ("streamrec_online_events_cold", "Events with no earlier list for their user"),
    "events_late": ("streamrec_online_events_late", "Events older than the lists kept for their user"),
    "lists_recorded": ("streamrec_online_lists_recorded", "Lists remembered for grading"),
    "lists_stale": ("streamrec_online_lists_stale", "Lists dropped: triggered before the user's current list"),
    "lists_closed": ("streamrec_online_lists_closed", "Lists whose recall horizon closed"),
    "lists_no_future": ("streamrec_online_lists_no_future", "Closed lists whose user consumed nothing in the horizon"),
}


# --- accumulators with update/revert ---------------------------------------------------------


class Mean:
    """Weighted mean of vectors that can also forget observations.

    >>> m = Mean(2)
    >>> m.update_many(np.array([[1.0, 0.0], [3.0, 1.0]]))
    >>> m.get().tolist(), m.n
    ([2.0, 0.5], 2.0)
    >>> m.revert(np.array([1.0, 0.0]))
    >>> m.get().tolist()
    [3.0, 1.0]
    """

    def __init__(self, n_columns: int = 1):
        self.sum = np.zeros(n_columns)
        self.n = 0.0

    def update(self, x, w: float = 1.0) -> None:
        self.sum += w * np.asarray(x, dtype=np.float64)
        self.n += w

    def revert(self, x, w: float = 1.0) -> None:
        self.sum -= w * np.asarray(x, dtype=np.float64)
        self.n -= w
        self._settle()

    def update_many(self, xs: np.ndarray, w: np.ndarray | None = None) -> None:
        """``update`` for each row of ``xs``, in one vectorised sum."""
        if len(xs):
            self.sum += xs.sum(axis=0) if w is None else w @ xs
            self.n += len(xs) if w is None else float(w.sum())

    def revert_many(self, xs: np.ndarray, w: np.ndarray | None = None) -> None:
        if len(xs):
            self.sum -= xs.sum(axis=0) if w is None else w @ xs
            self.n -= len(xs) if w is None else float(w.sum())
            self._settle()

    def _settle(self) -> None:
        # An empty window must read as empty, not as the rounding residue of its reverts.
        if self.n <= 1e-9:
            self.sum[:] = 0.0
            self.n = 0.0

    def get(self) -> np.ndarray:
        """The means; NaN while empty."""
        return self.sum / self.n if self.n > 0 else np.full_like(self.sum, np.nan)


class Rolling:
    """``obj`` over the last ``window_size`` observations (rows), via update/revert.

    >>> r = Rolling(Mean(1), window_size=2)
    >>> r.update_many(np.array([[1.0], [2.0], [4.0]]))
    >>> r.get().tolist(), r.n
    ([3.0], 2.0)
    """

    def __init__(self, obj: Mean, window_size: int):
        if window_size < 1:
            raise ValueError("window_size must be >= 1")
        self.obj, self.window_size = obj, window_size
        self._buf = np.zeros((window_size, len(obj.sum)))
        self._w = np.ones(window_size)
        self._start = 0
        self._len = 0

    def _ring(self, offset: int, count: int) -> np.ndarray:
        return (self._start + offset + np.arange(count)) % self.window_size

    def update_many(self, xs: np.ndarray, w: np.ndarray | None = None) -> None:
        xs = np.asarray(xs, dtype=np.float64).reshape(len(xs), len(self.obj.sum))
        w = np.ones(len(xs)) if w is None else np.asarray(w, dtype=np.float64)
        xs, w = xs[-self.window_size :], w[-self.window_size :]  # older rows would leave at once
        overflow = self._len + len(xs) - self.window_size
        if overflow > 0:
            old = self._ring(0, overflow)
            self.obj.revert_many(self._buf[old], self._w[old])
            self._start = (self._start + overflow) % self.window_size
            self._len -= overflow
        new = self._ring(self._len, len(xs))
        self._buf[new], self._w[new] = xs, w
        self._len += len(xs)
        self.obj.update_many(xs, w)

    def advance(self, now: int) -> None:
        """Count windows ignore the clock."""

    def window(self) -> np.ndarray:
        """The rows in the window, oldest first."""
        return self._buf[self._ring(0, self._len)]

    def get(self) -> np.ndarray:
        return self.obj.get()

    @property
    def n(self) -> float:
        return self.obj.n


class TimeRolling:
    """``obj`` over the observations with time in ``(now - period, now]``.

    ``now`` is the largest time seen by ``update_many`` or ``advance``. Times are made
    non-decreasing (each is raised to the largest before it), so an out-of-order observation
    leaves with its predecessors.

    >>> r = TimeRolling(Mean(1), period=10)
    >>> r.update_many(np.array([[1.0], [2.0], [4.0]]), times=np.array([0, 5, 12]))
    >>> r.get().tolist()
    [3.0]
    >>> r.advance(30); r.n
    0.0
    """

    def __init__(self, obj: Mean, period: int):
        if period < 1:
            raise ValueError("period must be >= 1")
        self.obj, self.period = obj, int(period)
        self._buf = np.zeros((64, len(obj.sum)))
        self._w = np.ones(64)
        self._t = np.zeros(64, dtype=np.int64)
        self._start = self._end = 0
        self.now = mk.NO_LIST

    def update_many(self, xs: np.ndarray, times: np.ndarray, w: np.ndarray | None = None) -> None:
        xs = np.asarray(xs, dtype=np.float64).reshape(len(xs), len(self.obj.sum))
        if len(xs) == 0:
            return
        w = np.ones(len(xs)) if w is None else np.asarray(w, dtype=np.float64)
        times = np.maximum.accumulate(np.maximum(np.asarray(times, dtype=np.int64), self.now))
        self._reserve(len(xs))
        sl = slice(self._end, self._end + len(xs))
        self._buf[sl], self._w[sl], self._t[sl] = xs, w, times
        self._end += len(xs)
        self.obj.update_many(xs, w)
        self.advance(int(times[-1]))

    def advance(self, now: int) -> None:
        """Move the clock to ``now`` (never back) and forget what fell out of the window."""
        self.now = max(self.now, int(now))
        cut = self.now - self.period
        live = self._t[self._start : self._end]
        gone = int(np.searchsorted(live, cut, side="right"))
        if gone:
            sl = slice(self._start, self._start + gone)
            self.obj.revert_many(self._buf[sl], self._w[sl])
            self._start += gone

    def _reserve(self, m: int) -> None:
        live = self._end - self._start
        if self._end + m <= len(self._t):
            return
        cap = len(self._t)
        while live + m > cap // 2:  # keep the buffer at most half full after compaction
            cap *= 2
        sl = slice(self._start, self._end)
        for name in ("_buf", "_w", "_t"):
            old = getattr(self, name)
            new = np.zeros((cap,) + old.shape[1:], dtype=old.dtype)
            new[:live] = old[sl]
            setattr(self, name, new)
        self._start, self._end = 0, live

    def window(self) -> np.ndarray:
        """The rows in the window, oldest first."""
        return self._buf[self._start : self._end]

    def get(self) -> np.ndarray:
        return self.obj.get()

    @property
    def n(self) -> float:
        return self.obj.n


class WindowSet:
    """One statistic over the whole stream, the last N observations and the last T seconds."""

    def __init__(self, n_columns: int, window_events: int, window_seconds: int, time_scale: int):
        self.windows: dict[str, Mean | Rolling | TimeRolling] = {
            ALL: Mean(n_columns),
            f"last_{window_events}": Rolling(Mean(n_columns), window_events),
            f"last_{window_seconds}s": TimeRolling(Mean(n_columns), window_seconds * time_scale),
        }

    def update_many(self, xs: np.ndarray, times: np.ndarray) -> None:
        for win in self.windows.values():
            if isinstance(win, TimeRolling):
                win.update_many(xs, times)
            else:
                win.update_many(xs)

    def advance(self, now: int) -> None:
        for win in self.windows.values():
            if isinstance(win, TimeRolling):
                win.advance(now)


# --- user slots -------------------------------------------------------------------------------


class SlotIndex:
    """A dict from user id to a dense slot number, kept as sorted arrays so that a batch of
    ids is looked up with one ``searchsorted`` instead of a Python loop.

    >>> idx = SlotIndex()
    >>> idx.add([30, 10, 30]).tolist(), idx.lookup([10, 20, 30]).tolist(), len(idx)
    ([0, 1, 0], [1, -1, 0], 2)
    """

    def __init__(self):
        self._keys = np.empty(0, dtype=np.int64)  # sorted user ids
        self._slots = np.empty(0, dtype=np.int64)  # their slots

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, keys) -> np.ndarray:
        """Slots of ``keys``, -1 for unknown ones."""
        keys = np.asarray(keys, dtype=np.int64)
        if len(self._keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        return np.where(self._keys[pos] == keys, self._slots[pos], -1)

    def add(self, keys) -> np.ndarray:
        """Slots of ``keys``, giving new ids the next free slots (in order of first sight)."""
        keys = np.asarray(keys, dtype=np.int64)
        slots = self.lookup(keys)
        missing = slots < 0
        if missing.any():
            new, first = np.unique(keys[missing], return_index=True)
            new = new[np.argsort(first)]  # slots in order of first appearance
            new_slots = len(self._keys) + np.arange(len(new), dtype=np.int64)
            order = np.argsort(new)
            pos = np.searchsorted(self._keys, new[order])
            self._keys = np.insert(self._keys, pos, new[order])
            self._slots = np.insert(self._slots, pos, new_slots[order])
            slots = self.lookup(keys)
        return slots


# --- the evaluator ----------------------------------------------------------------------------


class SnapshotRow(NamedTuple):
    """One exported value. ``k`` is 0 for metrics without a cut-off (counts, coverage)."""

    model: str
    version: str
    k: int
    window: str
    metric: str
    value: float
    n: float


@dataclass
class ScoreResult:
    """What one ``score_events`` call measured.

    Per event (input order): ``status`` (0 warm, 1 cold, 2 late), ``ranks`` (-1 if missed or not
    warm), ``groups`` (index into ``OnlineEvaluator.groups``, -1 if not warm) and ``metrics``
    (``[m, 3 * len(ks)]``: hit, ndcg, mrr per K; NaN rows if not warm). Per list closed during
    the call: ``recall`` (``[c, len(ks)]``, NaN rows for lists without future items),
    ``recall_groups``, ``recall_times`` (event time of the closing), ``recall_n_future``.
    """

    status: np.ndarray
    ranks: np.ndarray
    groups: np.ndarray
    metrics: np.ndarray
    recall: np.ndarray
    recall_groups: np.ndarray
    recall_times: np.ndarray
    recall_n_future: np.ndarray

    @property
    def n_warm(self) -> int:
        return int((self.status == mk.WARM).sum())

    @property
    def n_cold(self) -> int:
        return int((self.status == mk.COLD).sum())

    @property
    def n_late(self) -> int:
        return int((self.status == mk.LATE).sum())


def _grow(a: np.ndarray, n: int, fill) -> np.ndarray:
    out = np.full((n,) + a.shape[1:], fill, dtype=a.dtype)
    out[: len(a)] = a
    return out


def _labels(value: str | Sequence[str], n: int, what: str) -> list[str]:
    if isinstance(value, str):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{what}: {len(value)} labels for {n} lists")
    return value


class OnlineEvaluator:
    """Grades each event against the list last shown to its user; see the module docstring.

    ``time_scale`` is the number of event-time units per second (1 for seconds, 1000 for
    milliseconds); ``window_seconds`` and ``horizon_seconds`` are converted with it.
    """

    def __init__(
        self,
        ks: Sequence[int] = (5, 10, 20),
        window_events: int = 10_000,
        window_seconds: int = 86_400,
        horizon_items: int | None = None,
        horizon_seconds: int = 86_400,
        lateness_seconds: int = 0,
        time_scale: int = 1,
    ):
        self.ks = np.asarray(sorted({int(k) for k in ks}), dtype=np.int64)
        if len(self.ks) == 0 or self.ks[0] < 1:
            raise ValueError("ks must be positive cut-offs")
        self.width = int(self.ks[-1])  # lists are kept up to the largest K
        self.horizon_items = int(horizon_items or self.width)
        self.horizon = int(horizon_seconds * time_scale)
        self.lateness = int(lateness_seconds * time_scale)
        self.time_scale = int(time_scale)
        self._windows = (window_events, window_seconds, time_scale)
        self.watermark = mk.NO_LIST  # largest event time scored

        self.users = SlotIndex()
        self.groups: list[tuple[str, str]] = []  # gid -> (model, version)
        self._gid: dict[tuple[str, str], int] = {}
        self._group_model: np.ndarray = np.empty(0, dtype=np.int64)  # gid -> model index
        self._models: list[str] = []

        # Per user slot: the current and the previous list (see mk.prequential_ranks).
        cap, w = 1024, self.width
        self._cur_items = np.full((cap, w), -1, dtype=np.int64)
        self._prev_items = np.full((cap, w), -1, dtype=np.int64)
        self._cur_time = np.full(cap, mk.NO_LIST, dtype=np.int64)
        self._prev_time = np.full(cap, mk.NO_LIST, dtype=np.int64)
        self._cur_gid = np.full(cap, -1, dtype=np.int64)
        self._prev_gid = np.full(cap, -1, dtype=np.int64)
        self._head = np.full(cap, -1, dtype=np.int64)
        # Pool of lists waiting for their recall horizon (layout in model.metrics).
        self._p_slot = np.empty(0, dtype=np.int64)
        self._p_prev = self._p_next = self._p_time = self._p_gid = self._p_nfound = self._p_slot
        self._p_items = np.empty((0, w), dtype=np.int64)
        self._p_found = np.empty((0, self.horizon_items), dtype=np.int64)
        self._free = np.empty(0, dtype=np.int64)
        self._n_free = np.zeros(1, dtype=np.int64)
        self._grow_pool(1024)

        n_metrics = 3 * len(self.ks)
        self._event_stats: dict[tuple[str, str], WindowSet] = {(ALL, ALL): self._window_set(n_metrics)}
        self._recall_stats: dict[tuple[str, str], WindowSet] = {(ALL, ALL): self._window_set(len(self.ks))}
        self._coverage = self._window_set(1)  # warm indicator over warm and cold events
        self.counts = dict.fromkeys(
            ["events_warm", "events_cold", "events_late", "lists_recorded", "lists_stale",
             "lists_closed", "lists_no_future"], 0)

    def _window_set(self, n_columns: int) -> WindowSet:
        return WindowSet(n_columns, *self._windows)

    # -- bookkeeping

    def _group_ids(self, models: list[str], versions: list[str]) -> np.ndarray:
        for pair in dict.fromkeys(zip(models, versions)):  # first-seen order: stable group ids
            if pair in self._gid:
                continue
            if ALL in pair:
                raise ValueError(f"{ALL!r} is reserved for aggregates; got model/version {pair}")
            self._gid[pair] = len(self.groups)
            self.groups.append(pair)
            if pair[0] not in self._models:
                self._models.append(pair[0])
            self._group_model = np.append(self._group_model, self._models.index(pair[0]))
            self._event_stats[pair] = self._window_set(3 * len(self.ks))
            self._recall_stats[pair] = self._window_set(len(self.ks))
            self._event_stats.setdefault((pair[0], ALL), self._window_set(3 * len(self.ks)))
            self._recall_stats.setdefault((pair[0], ALL), self._window_set(len(self.ks)))
        gid = self._gid
        return np.fromiter((gid[p] for p in zip(models, versions)), dtype=np.int64, count=len(models))

    def _ensure_slots(self, n: int) -> None:
        cap = len(self._cur_time)
        if n <= cap:
            return
        while cap < n:
            cap *= 2
        for name, fill in (("_cur_items", -1), ("_prev_items", -1), ("_cur_time", mk.NO_LIST),
                           ("_prev_time", mk.NO_LIST), ("_cur_gid", -1), ("_prev_gid", -1), ("_head", -1)):
            setattr(self, name, _grow(getattr(self, name), cap, fill))

    def _grow_pool(self, extra: int) -> None:
        old = len(self._p_slot)
        cap = max(2 * old, old + extra)
        self._p_slot = _grow(self._p_slot, cap, -1)
        self._p_prev = _grow(self._p_prev, cap, -1)
        self._p_next = _grow(self._p_next, cap, -1)
        self._p_time = _grow(self._p_time, cap, 0)
        self._p_gid = _grow(self._p_gid, cap, -1)
        self._p_nfound = _grow(self._p_nfound, cap, 0)
        self._p_items = _grow(self._p_items, cap, -1)
        self._p_found = _grow(self._p_found, cap, -1)
        n_free = int(self._n_free[0])
        free = np.empty(cap, dtype=np.int64)
        free[:n_free] = self._free[:n_free]
        free[n_free : n_free + cap - old] = np.arange(cap - 1, old - 1, -1)
        self._free = free
        self._n_free[0] = n_free + cap - old

    @property
    def n_pending(self) -> int:
        """Lists still waiting for their recall horizon to close."""
        return len(self._p_slot) - int(self._n_free[0])

    def _pool(self) -> tuple:
        return (self._head, self._p_prev, self._p_next, self._p_slot, self._p_time, self._p_gid,
                self._p_items, self._p_found, self._p_nfound, self._free, self._n_free)

    # -- the worker's two calls

    def record_lists(self, users, items, trigger_times, model: str | Sequence[str],
                     version: str | Sequence[str] = "0") -> None:
        """Remember ``items[j]`` (best first, -1 padded) as the list shown to ``users[j]``
        after the events up to ``trigger_times[j]``, produced by ``model[j]`` at
        ``version[j]`` (a str applies to every row). Columns beyond ``max(ks)`` are ignored."""
        users = mk._int64(users, 1, "users")
        items = mk._int64(items, 2, "items")
        times = mk._int64(trigger_times, 1, "trigger_times")
        n = len(users)
        if not len(items) == len(times) == n:
            raise ValueError("users, items and trigger_times need the same length")
        if n == 0:
            return
        lists = np.full((n, self.width), -1, dtype=np.int64)
        w = min(self.width, items.shape[1])
        lists[:, :w] = items[:, :w]
        gids = self._group_ids(_labels(model, n, "model"), _labels(version, n, "version"))
        slots = self.users.add(users)
        self._ensure_slots(len(self.users))
        if self._n_free[0] < n:
            self._grow_pool(n)
        n_stale = mk._record_lists(
            slots, lists, times, gids, self._cur_items, self._cur_time, self._cur_gid,
            self._prev_items, self._prev_time, self._prev_gid, self._head, self._p_prev,
            self._p_next, self._p_slot, self._p_time, self._p_gid, self._p_items, self._p_nfound,
            self._free, self._n_free)
        self.counts["lists_recorded"] += n - n_stale
        self.counts["lists_stale"] += n_stale

    def score_events(self, users, items, times) -> ScoreResult:
        """Grade a batch of events against the lists recorded before it and update the means."""
        users, items, times = (mk._int64(a, 1, name) for a, name in
                               ((users, "users"), (items, "items"), (times, "times")))
        if not len(users) == len(items) == len(times):
            raise ValueError("users, items and times need the same length")
        slots = self.users.lookup(users)
        ranks, which, status = mk._prequential_ranks(
            slots, items, times, self._cur_items, self._cur_time, self._prev_items, self._prev_time)
        warm = status == mk.WARM
        safe = np.maximum(slots, 0)
        groups = np.where(which == 0, self._cur_gid[safe], np.where(which == 1, self._prev_gid[safe], -1))
        values = mk._metric_matrix(ranks, self.ks)
        values[~warm] = np.nan

        # Recall horizons: feed this batch's events, then close what the watermark passed.
        closed = [self._observe(slots, items, times)]
        if len(times):
            self.watermark = max(self.watermark, int(times.max()))
        if self.watermark != mk.NO_LIST:
            closed.append(self._expire(self.watermark - self.lateness))
        rec, rec_g, rec_t, rec_nf = (np.concatenate(c) for c in zip(*closed))

        self._aggregate(values, groups, times, status, rec, rec_g, rec_t, rec_nf)
        return ScoreResult(status, np.where(warm, ranks, -1), groups, values, rec, rec_g, rec_t, rec_nf)

    def flush(self) -> ScoreResult:
        """Close every pending list with the future it has gathered (e.g. at the end of a replay);
        closings are stamped no later than the watermark."""
        rec, rec_g, rec_t, rec_nf = self._expire(np.iinfo(np.int64).max)
        if self.watermark != mk.NO_LIST:
            rec_t = np.minimum(rec_t, self.watermark)
        empty = np.empty(0, dtype=np.int64)
        self._aggregate(np.empty((0, 3 * len(self.ks))), empty, empty, empty, rec, rec_g, rec_t, rec_nf)
        return ScoreResult(empty, empty, empty, np.empty((0, 3 * len(self.ks))), rec, rec_g, rec_t, rec_nf)

    def _out(self) -> tuple:
        cap = self.n_pending
        return (np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty(cap, np.int64),
                np.empty((cap, len(self.ks))))

    def _observe(self, slots, items, times) -> tuple:
        out = self._out()
        n = mk._horizon_observe(slots, items, times, self.horizon, self.ks, *self._pool(), *out)
        g, t, nf, rec = (a[:n] for a in out)
        return rec, g, t, nf

    def _expire(self, until: int) -> tuple:
        out = self._out()
        n = mk._horizon_expire(until, self.horizon, self.ks, *self._pool(), *out)
        g, t, nf, rec = (a[:n] for a in out)
        order = np.argsort(t, kind="stable")  # expiries come in pool order, not time order
        return rec[order], g[order], t[order], nf[order]

    # -- aggregation

    def _aggregate(self, values, groups, times, status, rec, rec_g, rec_t, rec_nf) -> None:
        warm, cold = status == mk.WARM, status == mk.COLD
        self.counts["events_warm"] += int(warm.sum())
        self.counts["events_cold"] += int(cold.sum())
        self.counts["events_late"] += int((status == mk.LATE).sum())
        self.counts["lists_closed"] += len(rec_g)
        self.counts["lists_no_future"] += int((rec_nf == 0).sum())

        # Time order within the batch, so that "the last N" and "the last T seconds" agree.
        order = np.argsort(times, kind="stable")
        graded = order[(warm | cold)[order]]
        self._coverage.update_many(warm[graded].astype(np.float64)[:, None], times[graded])
        w = order[warm[order]]
        self._update_groups(self._event_stats, values[w], groups[w], times[w])
        has = rec_nf > 0
        self._update_groups(self._recall_stats, rec[has], rec_g[has], rec_t[has])
        if self.watermark != mk.NO_LIST:
            for ws in (self._coverage, *self._event_stats.values(), *self._recall_stats.values()):
                ws.advance(self.watermark)

    def _update_groups(self, stats, values, gids, times) -> None:
        if len(gids) == 0:
            return
        stats[(ALL, ALL)].update_many(values, times)
        models = self._group_model[gids]
        for codes, key in ((gids, lambda c: self.groups[c]), (models, lambda c: (self._models[c], ALL))):
            order = np.argsort(codes, kind="stable")  # stable: keeps time order inside a group
            uniq, start = np.unique(codes[order], return_index=True)
            for c, rows in zip(uniq.tolist(), np.split(order, start[1:])):
                stats[key(c)].update_many(values[rows], times[rows])

    # -- export

    def snapshot(self) -> list[SnapshotRow]:
        """Every mean and count as flat rows ``(model, version, k, window, metric, value, n)``.

        ``model``/``version`` are ``"all"`` for aggregates over all of them; empty windows are
        left out. Metrics: HitRate, NDCG, MRR (n = graded events), Recall (n = closed lists
        with a future), coverage (n = warm + cold events), and counts (k = 0, window "all").
        """
        rows: list[SnapshotRow] = []
        ks = self.ks.tolist()
        for kind, stats in (("event", self._event_stats), ("recall", self._recall_stats)):
            for (model, version), ws in stats.items():
                for wname, win in ws.windows.items():
                    if win.n <= 0:
                        continue
                    vals = win.get().tolist()
                    for c, k in enumerate(ks):
                        if kind == "event":
                            for j, metric in enumerate(("HitRate", "NDCG", "MRR")):
                                rows.append(SnapshotRow(model, version, k, wname, metric, vals[3 * c + j], win.n))
                        else:
                            rows.append(SnapshotRow(model, version, k, wname, "Recall", vals[c], win.n))
        for wname, win in self._coverage.windows.items():
            if win.n > 0:
                rows.append(SnapshotRow(ALL, ALL, 0, wname, "coverage", float(win.get()[0]), win.n))
        for metric, count in self.counts.items():
            rows.append(SnapshotRow(ALL, ALL, 0, ALL, metric, float(count), float(count)))
        return rows
