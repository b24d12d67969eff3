"""Every user's rolling sequence in one compact pool: a row of item codes per user code.

The store kept a dict of user -> (3, n) int64 array (times, offsets, items) and updated it with
a Python loop over the batch's users (~4-6 us each: 4.8 ms a batch of ~850 users at 19M events
stored, with the GIL held) and ~24 bytes an event. Here a user's last ``seq_len`` items are
int32 codes in row ``code`` of one matrix, with the (time, offset) of the user's newest event
beside it; a batch is merged in by one compiled pass, and a batch's sequences come out as one
gather. Events arrive in order per user (one partition per user, in offset order); an event
older than the user's newest one in memory is *late*: the caller reloads that user from the log,
which orders by time (``EventStore._load``), instead of keeping every event's time here.

>>> p = SequencePool(seq_len=3)
>>> late = p.append(np.array([0, 0, 1]), np.array([5, 6, 7], np.int32), np.array([10, 11, 10]),
...                 np.array([0, 1, 2]))
>>> p.rows(np.array([0, 1])), late.tolist()
([array([5, 6], dtype=int32), array([7], dtype=int32)], [])
>>> late = p.append(np.array([0, 0, 1]), np.array([8, 9, 3], np.int32), np.array([12, 13, 9]),
...                 np.array([3, 4, 5]))
>>> p.rows(np.array([0])), late.tolist()  # user 1's event at time 9 is older than its newest (10)
([array([6, 8, 9], dtype=int32)], [1])
"""

from __future__ import annotations

import numba
import numpy as np


class SequencePool:
    """Last ``seq_len`` item codes per user code, oldest first, and each user's newest (time, offset)."""

    def __init__(self, seq_len: int):
        self.seq_len = seq_len
        self.items = np.zeros((0, seq_len), np.int32)
        self.length = np.zeros(0, np.int32)
        self.newest = np.zeros((0, 2), np.int64)  # (event time, offset) of each user's newest event

    def _reserve(self, n_users: int) -> None:
        if n_users > len(self.length):
            cap = max(n_users, len(self.length) + len(self.length) // 2, 1024)  # x1.5: ~120 MB at 145k users
            self.items, self.length, self.newest = (_grown(a, cap) for a in (self.items, self.length, self.newest))

    def append(self, users: np.ndarray, items: np.ndarray, times: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Merge events in (user codes, item codes, event times, offsets; sorted by user, then time,
        then offset); returns the user codes whose first event here is older than their newest in
        memory (late: left unchanged, to be reloaded)."""
        if len(users) == 0:
            return np.zeros(0, np.int64)
        users = np.ascontiguousarray(users, np.int64)
        self._reserve(int(users.max()) + 1)
        late = np.zeros(len(users), bool)
        _append(self.items, self.length, self.newest, users, np.ascontiguousarray(items, np.int32),
                np.ascontiguousarray(times, np.int64), np.ascontiguousarray(offsets, np.int64), late)
        return np.unique(users[late])

    def load(self, users: np.ndarray, items: np.ndarray, times: np.ndarray, offsets: np.ndarray) -> None:
        """Replace the sequences of ``users`` with these events (sorted by user, time, offset; at
        most the last ``seq_len`` of each user are kept)."""
        users = np.ascontiguousarray(users, np.int64)
        if len(users) == 0:
            return
        self._reserve(int(users.max()) + 1)
        self.clear(users)
        _append(self.items, self.length, self.newest, users, np.ascontiguousarray(items, np.int32),
                np.ascontiguousarray(times, np.int64), np.ascontiguousarray(offsets, np.int64),
                np.zeros(len(users), bool))

    def clear(self, codes: np.ndarray) -> None:
        """Forget the sequences of these user codes (before :meth:`load` refills them)."""
        codes = np.asarray(codes, np.int64)
        codes = codes[codes < len(self.length)]
        self.length[codes] = 0

    def gather(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The item codes of each user code, oldest first, as one flat copy grouped by user, and
        each group's length (a code of -1 or one never appended: an empty group)."""
        codes = np.asarray(codes, np.int64)
        ok = (codes >= 0) & (codes < len(self.length))
        codes = np.where(ok, codes, 0)
        n = np.where(ok, self.length[codes] if len(self.length) else 0, 0).astype(np.int64)
        flat = np.empty(int(n.sum()), np.int32)
        _gather(self.items, codes, n, flat)
        return flat, n

    def rows(self, codes: np.ndarray) -> list[np.ndarray]:
        """:meth:`gather` split into one array per user code."""
        flat, n = self.gather(codes)
        ends = np.cumsum(n).tolist()
        return [flat[e - k:e] for e, k in zip(ends, n.tolist())]


def _grown(a: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows,) + a.shape[1:], a.dtype)
    out[: len(a)] = a
    return out


@numba.njit(cache=True, nogil=True)
def _append(pool, length, newest, users, items, times, offsets, late):
    """Per run of one user in ``users``: shift the row left and append the run's items (its last
    ``seq_len`` of them); a run whose first event is older than the row's newest is marked late."""
    cap = pool.shape[1]
    a, n = 0, len(users)
    while a < n:
        u = users[a]
        b = a + 1
        while b < n and users[b] == u:
            b += 1
        t, o = newest[u, 0], newest[u, 1]
        if length[u] > 0 and (times[a] < t or (times[a] == t and offsets[a] < o)):
            for j in range(a, b):
                late[j] = True
        else:
            k = min(b - a, cap)
            keep = min(length[u], cap - k)
            drop = length[u] - keep
            for i in range(keep):  # (moving left: a forward copy is safe)
                pool[u, i] = pool[u, drop + i]
            for i in range(k):
                pool[u, keep + i] = items[b - k + i]
            length[u] = keep + k
            newest[u, 0], newest[u, 1] = times[b - 1], offsets[b - 1]
        a = b


@numba.njit(cache=True, nogil=True)
def _gather(pool, codes, n, out):
    k = 0
    for j in range(len(codes)):
        for i in range(n[j]):
            out[k] = pool[codes[j], i]
            k += 1
