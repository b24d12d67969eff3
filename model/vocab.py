"""External item id <-> model index (BERT4Rec's ``smap`` / ``reverse_smap``).

Index 0 is padding and n + 1 the mask token, so the n known items get 1..n in ascending id
order (deterministic: the same data gives the same map). Lookups are vectorised: through a direct
table when the ids are small non-negative numbers (MovieLens' are below 2**21: a table of at most
16 MB, several times faster than a binary search over a big catalogue), else with ``searchsorted``;
unknown ids encode to 0, which callers drop.

>>> v = ItemVocab.from_ids([30, 10, 20, 10])
>>> v.encode([20, 99, 10]).tolist(), v.decode([1, 3]).tolist(), len(v)
([2, 0, 1], [10, 30], 3)
"""

from __future__ import annotations

import numpy as np

TABLE_LIMIT = 1 << 21  # largest external id (exclusive) looked up through a direct table


class ItemVocab:
    def __init__(self, ids: np.ndarray):
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and not (np.diff(ids) > 0).all():
            raise ValueError("vocabulary ids must be strictly increasing")
        self.ids = ids  # ids[j] is the external id of index j + 1
        self._table = None  # external id -> index, built on the first encode when the ids allow

    @classmethod
    def from_ids(cls, items) -> "ItemVocab":
        return cls(np.unique(np.asarray(items, dtype=np.int64)))

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self, items) -> np.ndarray:
        """External ids -> indices 1..n; unknown ids -> 0."""
        items = np.asarray(items, dtype=np.int64)
        if len(self.ids) == 0:
            return np.zeros(items.shape, dtype=np.int64)
        if self._table is None and 0 <= self.ids[0] and self.ids[-1] < TABLE_LIMIT:
            self._table = np.zeros(self.ids[-1] + 1, np.int64)
            self._table[self.ids] = np.arange(1, len(self.ids) + 1)
        if self._table is not None:
            inside = (items >= 0) & (items < len(self._table))
            return np.where(inside, self._table[np.where(inside, items, 0)], 0)
        pos = np.searchsorted(self.ids, items)
        pos_c = np.minimum(pos, len(self.ids) - 1)
        return np.where(self.ids[pos_c] == items, pos_c + 1, 0).astype(np.int64)

    def decode(self, index) -> np.ndarray:
        """Indices 1..n -> external ids (index 0 or out of range -> -1)."""
        index = np.asarray(index, dtype=np.int64)
        ok = (index >= 1) & (index <= len(self.ids))
        return np.where(ok, self.ids[np.clip(index - 1, 0, max(len(self.ids) - 1, 0))], -1)

    @property
    def smap(self) -> dict[int, int]:
        return {int(e): i + 1 for i, e in enumerate(self.ids)}

    @property
    def reverse_smap(self) -> dict[int, int]:
        return {i + 1: int(e) for i, e in enumerate(self.ids)}

    def to_list(self) -> list[int]:
        return self.ids.tolist()
