"""Means that can forget: river's update/revert shape, vectorised over rows.

:class:`Mean` is a :class:`Stat` (``update``/``revert``/``get``, like river's ``stats.Mean``);
:class:`Rolling` and :class:`TimeRolling` keep any ``Stat`` over the last N rows or the last T
time units by reverting what leaves the window (like river's ``utils.Rolling`` and
``utils.TimeRolling``); :class:`WindowSet` holds the three windows the online evaluator reports.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["ALL", "Mean", "Reading", "Rolling", "Stat", "TimeRolling", "WindowSet"]

ALL = "all"  # the name of the whole-stream window (and of aggregates over every model or version)
NEVER = np.iinfo(np.int64).min  # the clock of a time window that has seen nothing


class Reading(Protocol):
    """What a snapshot reads from a window: the value and its weight."""

    def get(self) -> np.ndarray: ...

    @property
    def n(self) -> float: ...


class Stat(Reading, Protocol):
    """A statistic that can learn and forget observations (river's update/revert/get)."""

    def update(self, x, w: float = 1.0) -> None: ...

    def revert(self, x, w: float = 1.0) -> None: ...

    def update_many(self, xs: np.ndarray, w: np.ndarray | None = None) -> None: ...

    def revert_many(self, xs: np.ndarray, w: np.ndarray | None = None) -> None: ...


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


class _Window:
    """A ``Stat`` kept over a window: reads as the statistic it wraps."""

    obj: Stat

    def get(self) -> np.ndarray:
        return self.obj.get()

    @property
    def n(self) -> float:
        return self.obj.n


class Rolling(_Window):
    """``obj`` over the last ``window_size`` observations (rows), via update/revert.

    >>> r = Rolling(Mean(1), window_size=2)
    >>> r.update_many(np.array([[1.0], [2.0], [4.0]]))
    >>> r.get().tolist(), r.n
    ([3.0], 2.0)
    """

    def __init__(self, obj: Stat, window_size: int):
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

    def window(self) -> np.ndarray:
        """The rows in the window, oldest first."""
        return self._buf[self._ring(0, self._len)]


class TimeRolling(_Window):
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

    def __init__(self, obj: Stat, period: int):
        if period < 1:
            raise ValueError("period must be >= 1")
        self.obj, self.period = obj, int(period)
        self._buf = np.zeros((64, len(obj.sum)))
        self._w = np.ones(64)
        self._t = np.zeros(64, dtype=np.int64)
        self._start = self._end = 0
        self.now = NEVER

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


class WindowSet:
    """One statistic over the whole stream, the last N observations and the last T time units.

    >>> ws = WindowSet(1, window_events=2, window_seconds=10, time_scale=1)
    >>> ws.update_many(np.array([[1.0], [2.0], [6.0]]), np.array([0, 5, 12]))
    >>> {name: win.get().tolist() for name, win in ws.windows.items()}
    {'all': [3.0], 'last_2': [4.0], 'last_10s': [4.0]}
    >>> ws.advance(100); ws.windows["last_10s"].n
    0.0
    """

    def __init__(self, n_columns: int, window_events: int, window_seconds: int, time_scale: int):
        self.whole = Mean(n_columns)
        self.last_n = Rolling(Mean(n_columns), window_events)
        self.last_t = TimeRolling(Mean(n_columns), window_seconds * time_scale)
        self.windows: dict[str, Reading] = {
            ALL: self.whole, f"last_{window_events}": self.last_n, f"last_{window_seconds}s": self.last_t}

    def update_many(self, xs: np.ndarray, times: np.ndarray) -> None:
        self.whole.update_many(xs)
        self.last_n.update_many(xs)
        self.last_t.update_many(xs, times)

    def advance(self, now: int) -> None:
        """Only the time window moves with the clock."""
        self.last_t.advance(now)
