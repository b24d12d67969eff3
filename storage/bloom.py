"""A Bloom filter over uint64 keys, in front of the store's sorted key runs (``storage/key_index.py``).

Almost every key the store looks up is new (a fresh event id, a (user, item) pair not seen yet),
and answering "not stored" from the sorted runs means a binary search in each of ~7 runs of up to
20M keys: cache misses over ~300 MB, which the worker's other threads and processes make dearer
as the log grows. A Bloom filter answers "certainly not stored" for most of them with one cache
line per key; only the few it lets through (the keys that are stored, and ~1-3% false positives)
are searched in the runs.

The filter is "register-blocked": a key sets ``K`` bits of one 64-bit word, chosen by a mixed
hash of the key (keys of the seen-pair set are (user, item) codes, far from random). It keeps at
least ``MIN_BITS`` bits per key: when the keys outgrow it, ``SortedRuns`` builds a larger one (a
power of two of words, 32 MB for 20M keys) from all its keys (a compiled pass: 0.35 s for 20.6M
keys, allocation included).

>>> b = Bloom(capacity=1000)
>>> b.add(np.arange(0, 2000, 2, dtype=np.uint64))
>>> bool(b.might_contain(np.array([10], np.uint64))[0]), len(b)
(True, 1000)
>>> int(b.might_contain(np.arange(1, 2000, 2, dtype=np.uint64)).sum()) < 50   # odd keys: few false positives
True
>>> b.capacity, b.full(5553), b.full(5554)   # (at least 1,024 words)
(6553, False, True)
"""

from __future__ import annotations

import numba
import numpy as np

MIN_BITS = 10  # bits of filter per key at least (about 2-3% false positives with K = 4 in one word)
K = 4  # bits set per key, all in one 64-bit word


class Bloom:
    """Keys may be added, never removed; no false negatives."""

    def __init__(self, capacity: int):
        """Room for ``capacity`` keys at ``MIN_BITS`` bits each (rounded up to a power of two words)."""
        words = max(int(np.ceil(max(capacity, 1) * MIN_BITS / 64)), 1024)
        bits = (words - 1).bit_length()
        self.words = np.zeros(1 << bits, np.uint64)
        self.shift = np.uint64(64 - bits)  # a key's word: the top ``bits`` bits of its hash
        self.capacity = len(self.words) * 64 // MIN_BITS
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def full(self, more: int) -> bool:
        """Whether ``more`` keys would leave fewer than ``MIN_BITS`` bits per key."""
        return self.n + more > self.capacity

    def add(self, keys: np.ndarray) -> None:
        _add(self.words, self.shift, np.ascontiguousarray(keys, np.uint64))
        self.n += len(keys)

    def might_contain(self, keys: np.ndarray) -> np.ndarray:
        """False: the key was never added; True: it may have been."""
        out = np.empty(len(keys), np.bool_)
        _test(self.words, self.shift, np.ascontiguousarray(keys, np.uint64), out)
        return out


@numba.njit(cache=True, nogil=True, inline="always")
def _mix(x):
    """splitmix64's finaliser: every bit of the key moves every bit of the hash."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@numba.njit(cache=True, nogil=True, inline="always")
def _bits(h):
    """``K`` = 4 bit positions from the hash's low 24 bits (the word comes from its top bits)."""
    m = np.uint64(63)
    one = np.uint64(1)
    return ((one << (h & m)) | (one << ((h >> np.uint64(6)) & m)) | (one << ((h >> np.uint64(12)) & m))
            | (one << ((h >> np.uint64(18)) & m)))


@numba.njit(cache=True, nogil=True)
def _add(words, shift, keys):
    for j in range(len(keys)):
        h = _mix(keys[j])
        words[h >> shift] |= _bits(h)


@numba.njit(cache=True, nogil=True)
def _test(words, shift, keys, out):
    for j in range(len(keys)):
        h = _mix(keys[j])
        b = _bits(h)
        out[j] = (words[h >> shift] & b) == b
