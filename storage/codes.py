"""Dense codes 0, 1, 2, ... for 64-bit ids (users, items), in order of first sight.

>>> c = Codes()
>>> c.encode(np.array([7, 2**62, 7])).tolist(), c.lookup(np.array([2**62, 5])).tolist(), c.ids[[1, 0]].tolist()
([0, 1, 0], [1, -1], [4611686018427387904, 7])
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def lower_bound(a, x, lo, hi):
    """The first index in [lo, hi) of sorted ``a`` whose value is >= x (hi if none)."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


DENSE_MAX = 1 << 22  # ids below this are coded through a direct table (int32, at most 16 MB); larger ones by search


@numba.njit(cache=True, nogil=True)
def _code_lookup(dense, sorted_ids, code, ids, limit, out):
    """out[j] = the code of ids[j], or -1 if it has none or its code is >= limit: through the
    direct table where ids[j] is in its range, else by binary search of the sorted ids."""
    n, m = len(dense), len(sorted_ids)
    for j in range(len(ids)):
        x = ids[j]
        c = -1
        if 0 <= x < n:
            c = dense[x]
        elif m:
            lo = lower_bound(sorted_ids, x, 0, m)
            if lo < m and sorted_ids[lo] == x:
                c = code[lo]
        out[j] = c if c < limit else -1


class Codes:
    """Dense codes 0, 1, 2, ... for int64 ids, in order of first sight.

    A batch is coded by one compiled pass: ids in [0, ``DENSE_MAX``) through a direct table (an
    int32 code per id up to the largest such id seen, grown by doubling), larger or negative ids
    by binary search of those ids kept sorted. (One NumPy ``searchsorted`` of 5,000 unsorted
    ids cost ~0.4 ms, and the store and the popularity ranker coded ~8 such batches per
    micro-batch: 3-8 ms of the worker's GIL at 1-19M events stored.)
    """

    def __init__(self):
        self._sorted = np.empty(0, np.int64)  # known ids outside [0, DENSE_MAX), sorted
        self._code = np.empty(0, np.int64)  # code of each sorted id
        self._dense = np.empty(0, np.int32)  # code of id x at [x] for small ids, -1: none
        self._ids = np.empty(0, np.int64)  # id of each code (grown by doubling)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def ids(self) -> np.ndarray:
        """The id of each code."""
        return self._ids[: self._n]

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Codes of ``ids``, -1 for unknown ones."""
        return self._lookup(self._dense, self._sorted, self._code, ids, self._n)

    @staticmethod
    def _lookup(dense, sorted_ids, code, ids, limit) -> np.ndarray:
        ids = np.ascontiguousarray(ids, np.int64)
        out = np.empty(len(ids), np.int64)
        _code_lookup(dense, sorted_ids, code, ids, limit, out)
        return out

    def snapshot_lookup(self):
        """:meth:`lookup` of the codes as they are now, for another thread to use: codes given
        later (always larger than every code now) read as unknown."""
        dense, sorted_ids, code, n = self._dense, self._sorted, self._code, self._n
        return lambda ids: self._lookup(dense, sorted_ids, code, ids, n)

    def encode(self, ids: np.ndarray) -> np.ndarray:
        """Codes of ``ids``, giving new ids the next codes."""
        ids = np.asarray(ids, np.int64)
        codes = self.lookup(ids)
        missing = codes < 0
        if missing.any():
            new, first = np.unique(ids[missing], return_index=True)
            new_codes = self._n + np.argsort(np.argsort(first))  # in order of first sight
            # Only ids the direct table does not cover are kept sorted: inserting every new user
            # into a sorted copy of all ids cost O(users) a batch (0.65 ms at 19M events stored).
            big = (new < 0) | (new >= DENSE_MAX)
            if big.any():
                pos = np.searchsorted(self._sorted, new[big])
                self._sorted = np.insert(self._sorted, pos, new[big])
                self._code = np.insert(self._code, pos, new_codes[big])
            if self._n + len(new) > len(self._ids):
                self._ids = grown(self._ids, self._n + len(new))
            self._ids[new_codes] = new
            self._add_dense(new, new_codes)
            self._n += len(new)  # last: a snapshot taken meanwhile still reads the new codes as unknown
            codes = self.lookup(ids)
        return codes

    def _add_dense(self, new: np.ndarray, new_codes: np.ndarray) -> None:
        """New (sorted) ids below DENSE_MAX into the direct table; it grows by doubling to cover them.

        Growing makes a new array (a snapshot keeps the old one); otherwise only entries that were
        -1 are written, which a snapshot reads as unknown anyway (their codes are past its limit)."""
        inside = (new >= 0) & (new < DENSE_MAX)
        small = new[inside]
        if len(small) == 0:
            return
        top = int(small[-1]) + 1
        if top > len(self._dense):
            size = min(max(1 << (top - 1).bit_length(), 1024), DENSE_MAX)
            dense = np.full(size, -1, np.int32)
            ids = self._ids[: self._n + len(new)]  # (the new ids included)
            known = np.flatnonzero((ids >= 0) & (ids < size))
            dense[ids[known]] = known
            self._dense = dense
        else:
            self._dense[small] = new_codes[inside]


def grown(a: np.ndarray, size: int, fill=0) -> np.ndarray:
    """``a`` copied into a longer array (at least ``size``; doubling, so that growing one entry at a
    time costs O(1) amortised), the new entries ``fill``."""
    return resized(a, max(2 * len(a), size, 1024), fill)


def resized(a: np.ndarray, rows: int, fill=0) -> np.ndarray:
    """``a`` (of any dimensions) copied into exactly ``rows`` rows (at least its own), the new rows ``fill``."""
    out = np.full((rows,) + a.shape[1:], fill, a.dtype)
    out[: len(a)] = a
    return out
