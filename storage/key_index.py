"""In-memory sets of 64-bit keys as sorted NumPy runs (dense codes for ids: ``storage/codes.py``).

The event store keeps two sets here instead of in DuckDB indexes: the event keys it holds (with a
hash of each event's payload, for conflicts) and the (user, item) pairs each user has seen. A
DuckDB ``PRIMARY KEY`` on a random 64-bit hash is updated at random places of its ART index, so
storing a batch got slower as the log grew (30 -> 190 ms per 5,000 events from 1M to 8M stored)
and checkpoints rewrote it; sorted NumPy runs cost 8-16 bytes a key and a few ``searchsorted``
calls per batch, whatever the size.

``SortedRuns`` is a small log-structured merge tree: every added batch of keys becomes a sorted
run, and a run is merged into the one before it while that one is less than ``RATIO`` times
larger, so there are O(log n) runs and each key is copied O(log n) times in all. Lookups are one
vectorised ``searchsorted`` per small run; a run of ``DIRECTORY_MIN`` keys or more also keeps a
directory (where each of ~len/16 equal slices of its key range starts), so a lookup there is a
binary search over ~16 neighbouring keys instead of the whole run: at 19M events stored, the key
and seen-pair lookups had grown from 2.7 to 7.1 ms per 5,000-event batch (cache misses of binary
searches over 300 MB), and 2.7 ms with them. A Bloom filter (``storage/bloom.py``) goes first: only
keys it may hold (stored ones, ~2-3% of new ones) are searched in the runs (3.0 -> 0.4 ms at 19M).

>>> s = SortedRuns(values=True)
>>> s.add(np.array([30, 10], np.uint64), np.array([3, 1], np.uint64))
>>> s.add(np.array([20], np.uint64), np.array([2], np.uint64))
>>> found, vals = s.lookup(np.array([10, 15, 20, 30], np.uint64))
>>> found.tolist(), vals[found].tolist(), len(s)
([True, False, True, True], [1, 2, 3], 3)
"""

from __future__ import annotations

import numba
import numpy as np

from streamrec.storage.bloom import Bloom
from streamrec.storage.codes import lower_bound

RATIO = 4  # a run is merged into the previous one while that one is less than RATIO times larger
DIRECTORY_MIN = 1 << 16  # runs at least this long get a directory (see the module's docstring)
PER_SLICE = 16  # keys per directory slice, on average
_NO_VALUES = np.zeros(0, np.uint64)


class SortedRuns:
    """A set of distinct uint64 keys (optionally a uint64 value per key) as sorted runs, largest first."""

    def __init__(self, keys: np.ndarray | None = None, values: bool | np.ndarray = False, is_sorted: bool = False):
        """``keys``: distinct, and ascending when ``is_sorted`` (e.g. from an ``ORDER BY``)."""
        self._keys: list[np.ndarray] = []
        self._vals: list[np.ndarray] | None = [] if values is not False else None
        self._dirs: list[Directory | None] = []  # per run
        if keys is not None and len(keys):
            order = slice(None) if is_sorted else np.argsort(keys)
            self._keys.append(np.ascontiguousarray(np.asarray(keys)[order], np.uint64))
            self._dirs.append(Directory.of(self._keys[-1]))
            if self._vals is not None:
                self._vals.append(np.ascontiguousarray(np.asarray(values)[order], np.uint64))
        self._refilter(len(self))

    def __len__(self) -> int:
        return sum(len(k) for k in self._keys)

    @property
    def runs(self) -> int:
        return len(self._keys)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found, value) per key; value is 0 where not found or where the set keeps no values."""
        keys = np.asarray(keys, np.uint64)
        found = np.zeros(len(keys), bool)
        vals = np.zeros(len(keys), np.uint64)
        # Only the keys the Bloom filter may hold are searched in the runs: most keys looked up are
        # new, and the filter says so with one cache line each (storage/bloom.py).
        maybe = np.flatnonzero(self._bloom.might_contain(keys))
        if len(maybe) == 0:
            return found, vals
        maybe = maybe[np.argsort(keys[maybe])]
        needles = np.ascontiguousarray(keys[maybe])  # sorted: the searches walk each run in order
        hit, hit_vals = np.zeros(len(needles), bool), np.zeros(len(needles), np.uint64)
        no_vals = np.zeros(0, np.uint64)
        for r, run in enumerate(self._keys):
            d = self._dirs[r] or _NO_DIRECTORY
            # One compiled pass per run: search (through the directory if it has one), compare,
            # and take the value (NumPy's searchsorted + gather + compare made four passes and
            # three temporaries per run: ~5 ms a batch over the ~8 runs of 20M keys).
            _probe(run, self._vals[r] if self._vals is not None else no_vals, d.starts, d.low, d.shift,
                   needles, hit, hit_vals)
        found[maybe], vals[maybe] = hit, hit_vals
        return found, vals

    def add(self, keys: np.ndarray, values: np.ndarray | None = None) -> None:
        """Add keys that are not in the set yet and distinct (the caller checked with lookup)."""
        if len(keys) == 0:
            return
        if self._bloom.full(len(keys)):
            self._refilter(len(self) + len(keys))
        self._bloom.add(keys)
        order = np.argsort(keys)
        self._keys.append(np.asarray(keys, np.uint64)[order])
        self._dirs.append(Directory.of(self._keys[-1]))
        if self._vals is not None:
            self._vals.append(np.asarray(values, np.uint64)[order])
        while len(self._keys) > 1 and len(self._keys[-2]) < RATIO * len(self._keys[-1]):
            self._merge_last_two()

    def _refilter(self, n: int) -> None:
        """A new Bloom filter for ``n`` keys (room to grow by 30% before the next), holding every key."""
        self._bloom = Bloom(n * 13 // 10)
        for run in self._keys:
            self._bloom.add(run)

    def _merge_last_two(self) -> None:
        b, a = self._keys.pop(), self._keys.pop()
        del self._dirs[-2:]
        # One compiled linear merge of keys and values. (np.insert at searchsorted places took
        # ~1 s per merge into a run of ~16M keys, with the GIL held: 2-3 s stalls of the store
        # stage at 11-19M events stored, when the event keys and seen pairs merged their largest runs.)
        merged = np.empty(len(a) + len(b), np.uint64)
        vb, va = (self._vals.pop(), self._vals.pop()) if self._vals is not None else (_NO_VALUES, _NO_VALUES)
        merged_vals = np.empty(len(merged) if self._vals is not None else 0, np.uint64)
        _merge(a, b, va, vb, merged, merged_vals)
        self._keys.append(merged)
        self._dirs.append(Directory.of(merged))
        if self._vals is not None:
            self._vals.append(merged_vals)

    def ranges(self, lo: np.ndarray, hi: np.ndarray, low32: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The keys in [lo[j], hi[j]) for every j, as one flat array grouped by j (each group in
        no particular order) and each group's length; vectorised over j and over runs. ``low32``:
        only each key's low 32 bits, as int32 (the seen pairs' item codes: one pass that writes a
        quarter of the bytes that the keys and two conversions of them did)."""
        q = len(lo)
        order = np.argsort(lo)  # sorted needles search faster (see lookup)
        lo_s = np.ascontiguousarray(np.asarray(lo, np.uint64)[order])
        hi_s = np.ascontiguousarray(np.asarray(hi, np.uint64)[order])
        starts, counts = [], []
        for r, run in enumerate(self._keys):
            d = self._dirs[r] or _NO_DIRECTORY
            a, c = np.empty(q, np.int64), np.empty(q, np.int64)
            _bounds(run, d.starts, d.low, d.shift, lo_s, hi_s, a, c)  # (two searchsorted per run: 2.5 ms at 19M)
            s, n = np.empty(q, np.int64), np.empty(q, np.int64)
            s[order], n[order] = a, c
            starts.append(s)
            counts.append(n)
        total = np.sum(counts, axis=0, dtype=np.int64) if counts else np.zeros(q, np.int64)
        dest = np.cumsum(total) - total  # where group j starts in the output
        out = np.empty(int(total.sum()), np.int32 if low32 else np.uint64)
        copy = _copy_low32 if low32 else _copy_slices
        for run, s, c in zip(self._keys, starts, counts):
            copy(run, s, c, out, dest)
            dest = dest + c
        return out, total


class Directory:
    """Where each of 2**bits equal slices of a sorted run's key range [low, high] starts:
    key k lies in slice (k - low) >> shift, i.e. in run[starts[s]:starts[s + 1]]."""

    def __init__(self, starts: np.ndarray, low: np.uint64, shift: np.uint64):
        self.starts, self.low, self.shift = starts, low, shift

    @classmethod
    def of(cls, run: np.ndarray) -> "Directory | None":
        if len(run) < DIRECTORY_MIN:
            return None
        bits = max(1, int(len(run) // PER_SLICE).bit_length() - 1)
        low, span = run[0], int(run[-1] - run[0])
        shift = max(span.bit_length() - bits, 0)
        n_slices = (span >> shift) + 1
        starts = _slice_starts(run, np.uint64(low), np.uint64(shift), n_slices)
        return cls(starts, np.uint64(low), np.uint64(shift))


@numba.njit(cache=True, nogil=True)
def _slice_starts(run, low, shift, n_slices):
    """starts[s] = the first index of sorted ``run`` whose key is in slice s or a later one (i.e.
    ``searchsorted(run, low + (s << shift))``), starts[n_slices] = len(run): one pass over the run
    (a million searches over a 16M-key run cost ~0.2 s)."""
    starts = np.empty(n_slices + 1, np.int64)
    s = 0
    for i in range(len(run)):
        t = np.int64((run[i] - low) >> shift)
        while s <= t:
            starts[s] = i
            s += 1
    while s <= n_slices:
        starts[s] = len(run)
        s += 1
    return starts


@numba.njit(cache=True, nogil=True)
def _merge(a, b, va, vb, out, out_vals):
    """out = sorted union of the sorted, disjoint runs ``a`` and ``b``; out_vals their values
    alongside (when ``out_vals`` is not empty). 20M keys with values: ~0.13 s (np.insert: 0.3-0.7 s)."""
    n, m = len(a), len(b)
    i = j = 0
    vals = len(out_vals) > 0
    for k in range(n + m):
        if j >= m or (i < n and a[i] < b[j]):
            out[k] = a[i]
            if vals:
                out_vals[k] = va[i]
            i += 1
        else:
            out[k] = b[j]
            if vals:
                out_vals[k] = vb[j]
            j += 1


@numba.njit(cache=True, nogil=True)
def _first_at_least(run, starts, low, shift, k, lo):
    """np.searchsorted(run, k) knowing it is >= lo: within k's directory slice if there is a
    directory, else a binary search of run[lo:]."""
    m = len(run)
    hi = m
    if len(starts):
        if k < low:
            return lo
        s = (k - low) >> shift
        if s > len(starts) - 2:
            return m
        lo, hi = max(lo, starts[s]), starts[s + 1]
    return lower_bound(run, k, lo, hi)


@numba.njit(cache=True, nogil=True)
def _probe(run, run_vals, starts, low, shift, keys, found, vals):
    """For sorted ``keys``: found[j] |= keys[j] in run, and vals[j] = its value (if ``run_vals``);
    each key is searched from where the previous one was found on."""
    m, lo = len(run), 0
    for j in range(len(keys)):
        lo = _first_at_least(run, starts, low, shift, keys[j], lo)
        if lo < m and run[lo] == keys[j]:
            found[j] = True
            if len(run_vals):
                vals[j] = run_vals[lo]


@numba.njit(cache=True, nogil=True)
def _bounds(run, starts, low, shift, lo_keys, hi_keys, first, count):
    """For intervals [lo_keys[j], hi_keys[j]) sorted by lo: first[j] = where the run's keys in it
    start, count[j] = how many there are."""
    a = 0
    for j in range(len(lo_keys)):
        a = _first_at_least(run, starts, low, shift, lo_keys[j], a)
        first[j] = a
        count[j] = _first_at_least(run, starts, low, shift, hi_keys[j], a) - a


@numba.njit(cache=True, nogil=True)
def _copy_slices(src, starts, counts, out, dest):
    """out[dest[j]:dest[j] + counts[j]] = src[starts[j]:starts[j] + counts[j]] for every j: a loop
    of slice copies (NumPy's repeat/arange index arrays cost 5-10x more per element)."""
    for j in range(len(starts)):
        a, d = starts[j], dest[j]
        for k in range(counts[j]):
            out[d + k] = src[a + k]


@numba.njit(cache=True, nogil=True)
def _copy_low32(src, starts, counts, out, dest):
    """:func:`_copy_slices` of the keys' low 32 bits into an int32 ``out``."""
    for j in range(len(starts)):
        a, d = starts[j], dest[j]
        for k in range(counts[j]):
            out[d + k] = np.int32(src[a + k] & np.uint64(0xFFFFFFFF))


_NO_DIRECTORY = Directory(np.zeros(0, np.int64), np.uint64(0), np.uint64(0))  # (a run without one)
