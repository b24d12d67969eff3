"""External item id <-> model index (BERT4Rec's ``smap`` / ``reverse_smap``).

Index 0 is padding and n + 1 the mask token, so the n known items get 1..n in ascending id
order (deterministic: the same data gives the same map). Lookups are vectorised with
``searchsorted``; unknown ids encode to 0, which callers drop.

>>> v = ItemVocab.from_ids([30, 10, 20, 10])
>>> v.encode([20, 99, 10]).tolist(), v.decode([1, 3]).tolist(), len(v)
([2, 0, 1], [10, 30], 3)
"""

from __future__ import annotations

import numpy as np


class ItemVocab:
    def __init__(self, ids: np.ndarray):
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and not (np.diff(ids) > 0).all():
            raise ValueError("vocabulary ids must be strictly increasing")
        self.ids = ids  # ids[j] is the external id of index j + 1

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
