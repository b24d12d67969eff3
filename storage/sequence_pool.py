"""The users' rolling sequences in one compact, bounded pool: a row of item codes per user.

The store kept a dict of user -> (3, n) int64 array (times, offsets, items) and updated it with
a Python loop over the batch's users (~4-6 us each: 4.8 ms a batch of ~850 users at 19M events
stored, with the GIL held) and ~24 bytes an event. Here a user's last ``seq_len`` items are
int32 codes in a row of one matrix, with the (time, offset) of the user's newest event beside
it; a batch is merged in by one compiled pass, and a batch's sequences come out as one gather.

At most ``max_users`` rows (``seq_len`` x 4 bytes each: 800 MB for a million users at 200): when
a new user needs a row and none is free, the least recently used rows not used in the current
batch (``tick``) are evicted, 1/64 of the cap at a time (``EVICT_SHARE``: finding them is a pass
over every row, which per batch would cost more than the batch at a million rows); the store
reloads an evicted user from the log when it comes back. Free rows are kept on a list.
A batch with more users than the cap gets rows past it; the next new user brings the pool back.
Events arrive in order per user (one partition per user, in offset order); an event older than
the user's newest one in memory is *late*: the caller puts that user back in time order from the
log's rows at or after the late time (``storage/late_events.py``), instead of keeping every event's
time here.

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

from streamrec.storage.codes import resized

EVICT_SHARE = 64  # at the cap, evict at least max_users // EVICT_SHARE rows at once


class SequencePool:
    """Last ``seq_len`` item codes of up to ``max_users`` user codes, oldest first, and each one's
    newest (time, offset); the least recently used users are evicted first."""

    def __init__(self, seq_len: int, max_users: int = 1_000_000):
        self.seq_len, self.max_users = seq_len, max_users
        self.row_of = np.zeros(0, np.int64)  # by user code: its row, -1 if not in memory
        self.user_of = np.zeros(0, np.int64)  # by row: its user code, -1 if free
        self.used = np.zeros(0, np.int64)  # by row: the clock when last used
        self.items = np.zeros((0, seq_len), np.int32)
        self.length = np.zeros(0, np.int32)
        self.newest = np.zeros((0, 2), np.int64)  # (event time, offset) of each row's newest event
        self.clock, self.evicted = 1, 0
        self.free = np.zeros(0, np.int64)  # rows with no user, lowest first
        self.users = 0  # user codes with a row (what an operator compares with max_users)

    def tick(self) -> None:
        """A new batch: rows used from now on are safe from eviction until the next tick."""
        self.clock += 1

    def resident(self, codes: np.ndarray) -> np.ndarray:
        """Whether each user code's sequence is in memory."""
        codes = np.asarray(codes, np.int64)
        ok = (codes >= 0) & (codes < len(self.row_of))
        ok[ok] = self.row_of[codes[ok]] >= 0
        return ok

    def append(self, users: np.ndarray, items: np.ndarray, times: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Merge events in (user codes, item codes, event times, offsets; sorted by user, then time,
        then offset); a user not in memory starts empty (the caller loads users with a history
        first). Returns the user codes whose first event here is older than their newest in memory
        (late: left unchanged, to be reloaded)."""
        if len(users) == 0:
            return np.zeros(0, np.int64)
        users = np.ascontiguousarray(users, np.int64)
        late = np.zeros(len(users), bool)
        rows = self._rows(users)  # (first: it may grow the arrays passed below)
        _append(self.items, self.length, self.newest, rows, np.ascontiguousarray(items, np.int32),
                np.ascontiguousarray(times, np.int64), np.ascontiguousarray(offsets, np.int64), late)
        return np.unique(users[late])

    def load(self, users: np.ndarray, items: np.ndarray, times: np.ndarray, offsets: np.ndarray) -> None:
        """Replace the sequences of ``users`` with these events (sorted by user, time, offset; at
        most the last ``seq_len`` of each user are kept)."""
        users = np.ascontiguousarray(users, np.int64)
        if len(users) == 0:
            return
        rows = self._rows(users)
        self.length[rows] = 0
        _append(self.items, self.length, self.newest, rows, np.ascontiguousarray(items, np.int32),
                np.ascontiguousarray(times, np.int64), np.ascontiguousarray(offsets, np.int64),
                np.zeros(len(users), bool))

    def gather(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The item codes of each user code, oldest first, as one flat copy grouped by user, and
        each group's length (a code of -1 or one not in memory: an empty group)."""
        codes = np.asarray(codes, np.int64)
        here = self.resident(codes)
        rows = np.zeros(len(codes), np.int64)
        rows[here] = self.row_of[codes[here]]
        self.used[rows[here]] = self.clock
        n = np.zeros(len(codes), np.int64)
        n[here] = self.length[rows[here]]
        flat = np.empty(int(n.sum()), np.int32)
        _gather(self.items, rows, n, flat)
        return flat, n

    def rows(self, codes: np.ndarray) -> list[np.ndarray]:
        """:meth:`gather` split into one array per user code."""
        return split(*self.gather(codes))

    def _rows(self, users: np.ndarray) -> np.ndarray:
        """The row of each user code (given in runs), a new empty one for users not in memory."""
        if int(users.max()) >= len(self.row_of):
            self.row_of = resized(self.row_of, max(int(users.max()) + 1, len(self.row_of) * 3 // 2), -1)
        codes = users[np.append(True, users[1:] != users[:-1])]  # one per run (no sort: runs are whole users)
        rows = self.row_of[codes]
        self.used[rows[rows >= 0]] = self.clock  # (before any eviction: never evict one of these)
        need = codes[rows < 0]
        if len(need):
            free = self._free_rows(len(need))
            self.row_of[need], self.user_of[free], self.used[free], self.length[free] = free, need, self.clock, 0
            self.users += len(need)
        return self.row_of[users]

    def _free_rows(self, k: int) -> np.ndarray:
        """``k`` rows taken off the free list, made by growing, or by evicting past the cap."""
        if len(self.free) < k and len(self.user_of) < self.max_users:  # grow (x1.5, up to the cap)
            n = len(self.user_of)
            self._grow_rows(min(max(n + n // 2, n + k, 1024), max(self.max_users, n + k)))
        excess = self.users + k - self.max_users  # (also what an earlier, larger batch left above the cap)
        if excess > 0:
            self._evict(max(excess, self.max_users // EVICT_SHARE))
        if len(self.free) < k:  # one batch needs more rows than the cap: grow past it
            self._grow_rows(len(self.user_of) + k - len(self.free))
        taken, self.free = self.free[:k], self.free[k:]
        return taken

    def _evict(self, m: int) -> None:
        """Free the ``m`` least recently used rows this batch has not used (fewer if there are not)."""
        old = np.flatnonzero((self.used < self.clock) & (self.user_of >= 0))
        if len(old) > m:  # the m least recently used (of equally old ones at the boundary: any)
            old = old[np.argpartition(self.used[old], m - 1)[:m]]
        self.row_of[self.user_of[old]] = -1
        self.user_of[old] = -1
        self.evicted += len(old)
        self.users -= len(old)
        self.free = np.sort(np.append(self.free, old))

    def _grow_rows(self, rows: int) -> None:
        """Room for ``rows`` rows, the new ones on the free list."""
        n = len(self.user_of)
        self.user_of, self.used = resized(self.user_of, rows, -1), resized(self.used, rows)
        self.items, self.length, self.newest = (resized(a, rows) for a in (self.items, self.length, self.newest))
        self.free = np.append(self.free, np.arange(n, rows, dtype=np.int64))


def split(flat: np.ndarray, n: np.ndarray) -> list[np.ndarray]:
    """``flat`` grouped by the lengths ``n``, as one view per group."""
    ends = np.cumsum(n).tolist()
    return [flat[e - k:e] for e, k in zip(ends, n.tolist())]


@numba.njit(cache=True, nogil=True)
def _append(pool, length, newest, rows, items, times, offsets, late):
    """Per run of one row in ``rows``: shift the row left and append the run's items (its last
    ``seq_len`` of them); a run whose first event is older than the row's newest is marked late."""
    cap = pool.shape[1]
    a, n = 0, len(rows)
    while a < n:
        r = rows[a]
        b = a + 1
        while b < n and rows[b] == r:
            b += 1
        t, o = newest[r, 0], newest[r, 1]
        if length[r] > 0 and (times[a] < t or (times[a] == t and offsets[a] < o)):
            for j in range(a, b):
                late[j] = True
        else:
            k = min(b - a, cap)
            keep = min(length[r], cap - k)
            drop = length[r] - keep
            for i in range(keep):  # (moving left: a forward copy is safe)
                pool[r, i] = pool[r, drop + i]
            for i in range(k):
                pool[r, keep + i] = items[b - k + i]
            length[r] = keep + k
            newest[r, 0], newest[r, 1] = times[b - 1], offsets[b - 1]
        a = b


@numba.njit(cache=True, nogil=True)
def _gather(pool, rows, n, out):
    k = 0
    for j in range(len(rows)):
        for i in range(n[j]):
            out[k] = pool[rows[j], i]
            k += 1
