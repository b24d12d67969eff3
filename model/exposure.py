"""Which items the published lists show: catalogue coverage and the Gini index, per model.

The feedback-loop watch: a recommender whose lists collapse onto a few popular items shows a
falling coverage and a Gini index rising towards 1. Counts are over the last ``window`` list
slots of each model (river-like: ``update`` as lists are published), the catalogue is every item
seen in events so far.

>>> e = Exposure(window=6)
>>> e.observe_events(np.array([1, 2, 3, 4]))
>>> e.update(np.array([[1, 2, -1], [1, 3, -1]]), ["pop", "pop"])  # -1: padding
>>> e.coverage("pop"), round(e.gini("pop"), 3)  # 3 of 4 items shown; item 1 twice, 4 never
(0.75, 0.375)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from streamrec.model.recommender import PopularityRecommender
from streamrec.storage.codes import Codes


class Exposure:
    def __init__(self, window: int = 100_000):
        self.window = window
        self._shown: dict[str, PopularityRecommender] = {}  # a windowed counter per model
        self._catalogue = Codes()  # item ids seen in events (a Python set cost ~1 ms of GIL a batch)

    def observe_events(self, items: np.ndarray) -> None:
        self._catalogue.encode(np.unique(np.asarray(items, np.int64)))

    def _catalogue_size(self, shown: np.ndarray) -> int:
        """Items in the catalogue or among ``shown`` (distinct ids)."""
        return max(len(self._catalogue) + int((self._catalogue.lookup(shown) < 0).sum()), 1)

    def update(self, items: np.ndarray, models: Sequence[str]) -> None:
        """Published lists ``items`` [n, k] (-1 = padding), row i by ``models[i]``."""
        models = np.asarray(models)
        for name in np.unique(models).tolist():
            rows = items[models == name]
            shown = self._shown.setdefault(name, PopularityRecommender(window=self.window))
            shown.observe(rows[rows >= 0])

    def models(self) -> list[str]:
        return sorted(self._shown)

    def coverage(self, model: str) -> float:
        """Share of the catalogue in ``model``'s recent lists."""
        ids, _ = self._shown[model].ranked()
        return len(ids) / self._catalogue_size(ids)

    def gini(self, model: str) -> float:
        """Gini index of how often each catalogue item was shown (0: evenly, 1: one item only)."""
        ids, cnt = self._shown[model].ranked()
        n = self._catalogue_size(ids)
        x = np.sort(np.concatenate([np.zeros(n - len(cnt)), cnt]).astype(np.float64))
        if x.sum() == 0:
            return 0.0
        i = np.arange(1, n + 1)
        return float(((2 * i - n - 1) * x).sum() / (n * x.sum()))
