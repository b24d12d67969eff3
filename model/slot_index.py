"""User ids to dense slot numbers, for the online evaluator's per-user arrays."""

from __future__ import annotations

import numpy as np


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
