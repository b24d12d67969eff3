"""Strong simple baselines, learned incrementally from the stream: the bar the transformers must clear.

* ``TransitionRecommender`` (item-to-item, first-order Markov): "after X, users watched Y next";
  scores the successors of the user's last item.
* ``ItemKNNRecommender``: items that co-occur within ``window`` consecutive events of a user,
  cosine-normalised; scores the neighbours of the user's last ``window`` items, newer ones weighing more.

Both are a ``CooccurrenceModel`` (sparse counts in dicts, grown from (user, item) events in time
order, so they can serve in the worker) and fall back on popularity for items they have no
evidence for, which also makes them the worker's fallback for unknown users. ``observe`` takes the
users of the events (the counts are per-user pairs); without them nothing is learnt. Offline,
``scorer`` gives the dense scores ``evaluate`` ranks (item indices 1..n_items as ids).

>>> m = TransitionRecommender()
>>> m.observe(np.array([1, 2, 1, 2, 3, 3]), users=np.array([7, 7, 8, 8, 9, 9]))
>>> m.recommend([np.array([1])], [np.array([1])], k=2).items.tolist()  # after 1 came 2 (twice)
[[2, 3]]
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Sequence

import numpy as np

from streamrec.model.recommender import PopularityRecommender, Recommendations, Recommender

if TYPE_CHECKING:  # torch only for the offline scorer: a worker serving a baseline never loads it
    import torch  # (~180 MB of the worker's RSS with the CPU build, more with a CUDA one)


class CooccurrenceModel:
    """Pair counts ``rows[a][b]`` of items b that followed item a within ``window`` events of one
    user (``directed``) or either way round (undirected), plus item counts."""

    def __init__(self, window: int = 1, directed: bool = True, max_users: int = 1_000_000):
        self.window, self.directed, self.max_users = window, directed, max_users
        self.rows: dict[int, dict[int, float]] = {}
        self.counts = np.zeros(1024, np.int64)  # item id -> events (dense: ids are bounded ints)
        self._recent: dict[int, deque] = {}  # per user: the last `window` items (for the next pairs)
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # row cache, dropped on update

    def observe(self, items: np.ndarray, users: np.ndarray) -> None:
        """Events in time order; each pairs with the same user's previous ``window`` items."""
        src, dst = [], []
        for u, i in zip(np.asarray(users).tolist(), np.asarray(items).tolist()):
            q = self._recent.get(u)
            if q is None:
                if len(self._recent) >= self.max_users:  # bounded memory: forget the oldest user
                    self._recent.pop(next(iter(self._recent)))
                q = self._recent[u] = deque(maxlen=self.window)
            src.extend(q)
            dst.extend([i] * len(q))
            q.append(i)
        self._count(np.asarray(items, np.int64))
        self._add_pairs(np.asarray(src, np.int64), np.asarray(dst, np.int64))

    def fit(self, sequences: Sequence[np.ndarray]) -> "CooccurrenceModel":
        """Bulk version of ``observe`` for per-user sequences (vectorised pair counting)."""
        src, dst = [], []
        for s in sequences:
            s = np.asarray(s, np.int64)
            for lag in range(1, self.window + 1):
                src.append(s[:-lag])
                dst.append(s[lag:])
        self._count(np.concatenate(list(sequences)) if len(sequences) else np.zeros(0, np.int64))
        if src:
            self._add_pairs(np.concatenate(src), np.concatenate(dst))
        return self

    def _count(self, items: np.ndarray) -> None:
        if len(items) == 0:
            return
        if items.max() >= len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(2 * int(items.max()) + 1 - len(self.counts), np.int64)])
        np.add.at(self.counts, items, 1)

    def count(self, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, np.int64)
        return np.where(items < len(self.counts), self.counts[np.minimum(items, len(self.counts) - 1)], 0)

    def _add_pairs(self, src: np.ndarray, dst: np.ndarray) -> None:
        if not self.directed:
            src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
        keep = src != dst
        if not keep.any():
            return
        pairs, cnt = np.unique(np.stack([src[keep], dst[keep]], 1), axis=0, return_counts=True)
        rows = self.rows
        for (a, b), c in zip(pairs.tolist(), cnt.tolist()):
            row = rows.get(a)
            if row is None:
                row = rows[a] = {}
            row[b] = row.get(b, 0.0) + c
        for a in np.unique(pairs[:, 0]).tolist():
            self._arrays.pop(a, None)

    def row(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """Neighbours of ``item`` and their counts, as arrays (cached until the row changes)."""
        got = self._arrays.get(item)
        if got is None:
            row = self.rows.get(item, {})
            got = (np.fromiter(row.keys(), np.int64, len(row)), np.fromiter(row.values(), np.float64, len(row)))
            self._arrays[item] = got
        return got


class _CooccurrenceRecommender(Recommender):
    """Scores from a ``CooccurrenceModel``, popularity for the rest (and for empty histories)."""

    def __init__(self, model: CooccurrenceModel, popularity_window: int = 50_000):
        self.model = model
        self.popularity = PopularityRecommender(window=popularity_window)
        self.version = f"w{model.window}"

    def observe(self, items: np.ndarray, users: np.ndarray | None = None) -> None:
        self.popularity.observe(items)
        if users is not None:
            self.model.observe(items, users)

    def fit(self, sequences: Sequence[np.ndarray], recent_items: np.ndarray | None = None):
        """Offline training: pairs from ``sequences``, popularity from ``recent_items`` (default: all)."""
        self.model.fit(sequences)
        self.popularity.observe(np.concatenate(list(sequences)) if recent_items is None else recent_items)
        return self

    def candidates(self, sequence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def recommend(self, sequences: Sequence[np.ndarray], seen: Sequence[np.ndarray], k: int) -> Recommendations:
        n = len(sequences)
        items = np.full((n, k), -1, np.int64)
        scores = np.full((n, k), -np.inf, np.float32)
        fill = self.popularity.recommend(sequences, seen, k)  # for rows with fewer than k candidates
        for u, s in enumerate(sequences):
            ids, sc = self.candidates(np.asarray(s, np.int64))
            ok = ~np.isin(ids, seen[u])
            ids, sc = ids[ok], sc[ok]
            top = np.lexsort((ids, -sc))[:k]
            got = len(top)
            items[u, :got], scores[u, :got] = ids[top], sc[top] + 1.0  # above every popularity fill
            rest = [i for i in fill.items[u] if i >= 0 and i not in set(ids[top].tolist())][: k - got]
            items[u, got : got + len(rest)] = rest
            scores[u, got : got + len(rest)] = 1.0 / (2.0 + np.arange(len(rest)))  # below, in order
        return Recommendations(items, scores, [self.name] * n, [self.version] * n)

    def scorer(self, n_items: int):
        """Offline ``evaluate`` scorer (ids are item indices 1..n_items): candidate scores, plus a
        popularity term too small to reorder them that ranks the items without evidence."""
        ids, cnt = self.popularity.ranked()
        prior = np.zeros(n_items, np.float64)
        ok = (ids >= 1) & (ids <= n_items)
        prior[ids[ok] - 1] = cnt[ok]
        prior = prior / (prior.max() + 1.0) * 1e-6
        import torch

        def score(histories: list[np.ndarray]) -> torch.Tensor:
            out = np.tile(prior, (len(histories), 1))
            for u, h in enumerate(histories):
                c, s = self.candidates(np.asarray(h, np.int64))
                ok = (c >= 1) & (c <= n_items)
                out[u, c[ok] - 1] += s[ok]
            return torch.from_numpy(out)

        return score


class TransitionRecommender(_CooccurrenceRecommender):
    """First-order Markov chain: the items that followed the user's last item, by count."""

    name = "item2item"

    def __init__(self, popularity_window: int = 50_000):
        super().__init__(CooccurrenceModel(window=1, directed=True), popularity_window)

    def candidates(self, sequence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(sequence) == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        return self.model.row(int(sequence[-1]))


class ItemKNNRecommender(_CooccurrenceRecommender):
    """Item kNN over co-occurrence within ``window`` events, cosine-normalised; the user's last
    ``window`` items vote for their neighbours with weight ``decay ** age``."""

    name = "itemknn"

    def __init__(self, window: int = 10, decay: float = 0.8, popularity_window: int = 50_000):
        super().__init__(CooccurrenceModel(window=window, directed=False), popularity_window)
        self.decay = decay

    def candidates(self, sequence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        recent = sequence[-self.model.window :][::-1].tolist()
        n_recent = np.maximum(self.model.count(np.array(recent, np.int64)), 1)
        ids, vals = [], []
        for age, h in enumerate(recent):
            nb, c = self.model.row(int(h))
            if len(nb) == 0:
                continue
            ids.append(nb)
            vals.append(c / np.sqrt(n_recent[age] * np.maximum(self.model.count(nb), 1)) * self.decay**age)
        if not ids:
            return np.zeros(0, np.int64), np.zeros(0)
        ids_all, inv = np.unique(np.concatenate(ids), return_inverse=True)
        return ids_all, np.bincount(inv, weights=np.concatenate(vals))


BASELINES = {"popularity": PopularityRecommender, "item2item": TransitionRecommender, "itemknn": ItemKNNRecommender}
