"""Ranking metrics as Numba kernels: one implementation for offline and online evaluation.

Every kernel works on plain int64/float64 arrays and is compiled with ``@njit(cache=True)``;
the public functions are thin wrappers that check dtypes and shapes. Lists are rows of item
ids, best first, padded on the right with ``-1`` (never a valid item id).

Definitions, for one event whose item sits at 0-based position ``rank`` of the list shown
(``rank == -1``: not in the list):

* ``HitRate@K = 1 if 0 <= rank < K else 0``
* ``NDCG@K    = 1 / log2(rank + 2) if hit else 0`` (one relevant item, so the ideal DCG is 1)
* ``MRR@K     = 1 / (rank + 1) if hit else 0``
* ``Recall@K  = |top-K ∩ F| / min(K, |F|)`` for a set ``F`` of relevant items (Liang et al.,
  2018, "Variational autoencoders for collaborative filtering"). With a single held-out
  target ``|F| = 1`` and Recall@K equals HitRate@K.

>>> lists = np.array([[3, 1, 2], [5, 6, -1]])
>>> ranks_in_lists(lists, np.array([2, 9]))
array([ 2, -1])
>>> summarize(np.array([2, -1]), ks=(1, 3))["NDCG@3"]
0.25
"""

from __future__ import annotations

from typing import Sequence

import numba
import numpy as np

__all__ = [
    "as_int64",
    "metrics_at_k",
    "metric_matrix",
    "ranks_in_lists",
    "recall_at_k",
    "summarize",
]

def as_int64(a, ndim: int, name: str) -> np.ndarray:
    """``a`` as a contiguous int64 array of ``ndim`` dimensions (a clear error otherwise)."""
    a = np.ascontiguousarray(a)
    if a.dtype != np.int64:
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{name} must hold integers, got {a.dtype}")
        a = a.astype(np.int64)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-d, got shape {a.shape}")
    return a


# --- ranks and per-event metrics -------------------------------------------------------------


@numba.njit(cache=True)
def _ranks_in_lists(lists, targets):
    n, width = lists.shape
    out = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        t = targets[i]
        if t < 0:  # -1 is padding, never a hit
            continue
        for j in range(width):
            if lists[i, j] == t:
                out[i] = j
                break
    return out


def ranks_in_lists(lists: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based position of ``targets[i]`` in ``lists[i]`` (first occurrence), -1 if absent.

    >>> ranks_in_lists(np.array([[4, 4, 7], [-1, -1, -1]]), np.array([4, -1]))
    array([ 0, -1])
    >>> ranks_in_lists(np.zeros((2, 0), dtype=np.int64), np.array([1, 2]))  # empty lists
    array([-1, -1])
    """
    lists, targets = as_int64(lists, 2, "lists"), as_int64(targets, 1, "targets")
    if len(lists) != len(targets):
        raise ValueError(f"{len(lists)} lists but {len(targets)} targets")
    return _ranks_in_lists(lists, targets)


@numba.njit(cache=True)
def _metrics_at_k(ranks, k):
    n = len(ranks)
    hit = np.zeros(n)
    ndcg = np.zeros(n)
    mrr = np.zeros(n)
    for i in range(n):
        r = ranks[i]
        if 0 <= r < k:
            hit[i] = 1.0
            ndcg[i] = 1.0 / np.log2(r + 2.0)
            mrr[i] = 1.0 / (r + 1.0)
    return hit, ndcg, mrr


def metrics_at_k(ranks: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-event ``(hit, ndcg, mrr)`` at cut-off ``k``, as float64 arrays; rank -1 is a miss.

    >>> hit, ndcg, mrr = metrics_at_k(np.array([0, 1, 5, -1]), k=2)
    >>> hit.tolist(), mrr.tolist()
    ([1.0, 1.0, 0.0, 0.0], [1.0, 0.5, 0.0, 0.0])
    >>> round(float(ndcg[1]), 4)
    0.6309
    """
    return _metrics_at_k(as_int64(ranks, 1, "ranks"), int(k))


@numba.njit(cache=True)
def _metric_matrix(ranks, ks):
    # One pass over the ranks for all cut-offs: the online evaluator's hot path.
    n, nk = len(ranks), len(ks)
    out = np.zeros((n, 3 * nk))
    for i in range(n):
        r = ranks[i]
        if r < 0:
            continue
        ndcg = 1.0 / np.log2(r + 2.0)
        rr = 1.0 / (r + 1.0)
        for c in range(nk):
            if r < ks[c]:
                out[i, 3 * c] = 1.0
                out[i, 3 * c + 1] = ndcg
                out[i, 3 * c + 2] = rr
    return out


def metric_matrix(ranks: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """``metrics_at_k`` for several cut-offs at once: float64 ``[n, 3 * len(ks)]`` with columns
    ``hit@k, ndcg@k, mrr@k`` for each ``k`` in order.

    >>> metric_matrix(np.array([1, -1]), ks=(1, 5)).tolist()
    [[0.0, 0.0, 0.0, 1.0, 0.6309297535714575, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]
    """
    return _metric_matrix(as_int64(ranks, 1, "ranks"), np.asarray(ks, dtype=np.int64))


def summarize(ranks: np.ndarray, ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    """Means over events of HitRate@K, NDCG@K, MRR@K and Recall@K (0.0 when there are none).

    One held-out target per event, so ``Recall@K == HitRate@K`` here; use ``recall_at_k``
    when several items are relevant.

    >>> s = summarize(np.array([0, 3, -1, 12]), ks=(10,))
    >>> s["HitRate@10"], s["Recall@10"], s["MRR@10"]
    (0.5, 0.5, 0.3125)
    >>> summarize(np.array([], dtype=np.int64))["NDCG@20"]
    0.0
    """
    ranks = as_int64(ranks, 1, "ranks")
    ks = [int(k) for k in ks]
    m = metric_matrix(ranks, ks)
    means = m.mean(axis=0) if len(ranks) else np.zeros(m.shape[1])
    out: dict[str, float] = {}
    for c, k in enumerate(ks):
        hit, ndcg, mrr = (float(v) for v in means[3 * c : 3 * c + 3])
        out.update({f"HitRate@{k}": hit, f"NDCG@{k}": ndcg, f"MRR@{k}": mrr, f"Recall@{k}": hit})
    return out


@numba.njit(cache=True)
def _recall_at_k(lists, relevant, n_relevant, k):
    n = len(lists)
    kk = min(k, lists.shape[1])
    out = np.full(n, np.nan)
    for i in range(n):
        nr = n_relevant[i]
        if nr <= 0:
            continue
        found = 0
        for a in range(nr):  # relevant items are distinct: count each at most once
            f = relevant[i, a]
            for j in range(kk):
                if lists[i, j] == f:
                    found += 1
                    break
        out[i] = found / min(k, nr)
    return out


def recall_at_k(lists: np.ndarray, relevant: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """``|top-k of lists[i] ∩ relevant[i, :n_relevant[i]]| / min(k, n_relevant[i])``.

    ``relevant`` rows must hold distinct item ids; NaN where ``n_relevant[i] == 0``.

    >>> recall_at_k(np.array([[1, 2, 3], [1, 2, 3]]), np.array([[3, 9], [0, 0]]), np.array([2, 0]), k=3).tolist()
    [0.5, nan]
    """
    lists, relevant = as_int64(lists, 2, "lists"), as_int64(relevant, 2, "relevant")
    n_relevant = as_int64(n_relevant, 1, "n_relevant")
    if not len(lists) == len(relevant) == len(n_relevant):
        raise ValueError("lists, relevant and n_relevant need the same number of rows")
    if len(n_relevant) and n_relevant.max() > relevant.shape[1]:
        raise ValueError("n_relevant exceeds the width of relevant")
    return _recall_at_k(lists, relevant, n_relevant, int(k))
