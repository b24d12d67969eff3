"""Every item each of a batch of users has seen, as one flat array of item codes.

The worker asks the store, per micro-batch, for the seen items of ~1,000 users; at ML-20M scale
they add up to ~400,000 items a batch. As one NumPy array per user in external ids, building them
and then ranking around them cost ~50 ms a batch at 19M events stored (an array gather, a split
into 1,000 arrays, and the popularity ranker's sort of every (user, rank) pair). Kept as the
store's dense item codes in one flat array, they cost one copy, and a compiled ranker walks them
in O(seen + k) per user (``model/recommender.py``).

``SeenItems`` is still a sequence of per-user arrays of external ids for everything else
(a transformer's seen-item mask, tests): ``seen[j]`` builds user j's array when asked.

>>> seen = SeenItems.of([np.array([30, 10]), np.array([], np.int64), np.array([10])])
>>> len(seen), seen[0].tolist(), seen[1].tolist(), [s.tolist() for s in seen.take([2, 0])]
(3, [30, 10], [], [[10], [30, 10]])
>>> seen.code_of(np.array([10, 20, 30])).tolist()   # 20: no user in the batch has seen it
[0, -1, 1]
>>> [a.tolist() for a in seen.flat()]
[[30, 10, 10], [2, 0, 1]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import numpy as np

from streamrec.storage.codes import Codes


class SeenItems(Sequence):
    """Users' seen items: user j's are the codes ``codes[start[j]:start[j + 1]]``, code c is the
    external item id ``ids[c]``, and ``code_of(item ids)`` gives codes (-1 where unknown)."""

    def __init__(self, codes: np.ndarray, start: np.ndarray, ids: np.ndarray,
                 code_of: Callable[[np.ndarray], np.ndarray]):
        self.codes, self.start, self.ids, self.code_of = codes, start, ids, code_of

    @classmethod
    def of(cls, seen: Sequence[np.ndarray]) -> "SeenItems":
        """``seen`` as it is if it is a SeenItems already, else coded from per-user arrays of ids."""
        if isinstance(seen, SeenItems):
            return seen
        lengths = np.fromiter((len(s) for s in seen), np.int64, len(seen))
        flat = np.concatenate([np.asarray(s, np.int64) for s in seen]) if lengths.sum() else np.zeros(0, np.int64)
        codes = Codes()
        codes.encode(np.unique(flat))  # codes in id order
        return cls(codes.lookup(flat), np.append(0, np.cumsum(lengths)), codes.ids, codes.lookup)

    def __len__(self) -> int:
        return len(self.start) - 1

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[i] for i in range(*j.indices(len(self)))]
        if not -len(self) <= j < len(self):
            raise IndexError(j)
        j = j % len(self)
        return self.ids[self.codes[self.start[j]:self.start[j + 1]]]

    def flat(self) -> tuple[np.ndarray, np.ndarray]:
        """Every user's items as one array of external ids, user after user, and each user's count."""
        return self.ids[self.codes], np.diff(self.start)

    def take(self, rows: Sequence[int] | np.ndarray) -> "SeenItems":
        """The users ``rows``, in that order, as a SeenItems over the same codes."""
        rows = np.asarray(rows, np.int64)
        lo, hi = self.start[rows], self.start[rows + 1]
        lengths = hi - lo
        start = np.append(0, np.cumsum(lengths))
        flat = np.repeat(lo - start[:-1], lengths) + np.arange(start[-1])  # source index of each output
        return SeenItems(self.codes[flat], start, self.ids, self.code_of)


def take(seen: Sequence[np.ndarray], rows: Sequence[int] | np.ndarray) -> Sequence[np.ndarray]:
    """Rows ``rows`` of any sequence of seen-item arrays, keeping a SeenItems a SeenItems."""
    if isinstance(seen, SeenItems):
        return seen.take(rows)
    return [seen[int(i)] for i in rows]
