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
    "NO_LIST",
    "metrics_at_k",
    "metric_matrix",
    "prequential_ranks",
    "ranks_in_lists",
    "recall_at_k",
    "summarize",
]

#: Trigger time of a slot that holds no list.
NO_LIST = np.iinfo(np.int64).min

# Status codes of ``prequential_ranks``.
WARM, COLD, LATE = 0, 1, 2


def _int64(a, ndim: int, name: str) -> np.ndarray:
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
    lists, targets = _int64(lists, 2, "lists"), _int64(targets, 1, "targets")
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
    return _metrics_at_k(_int64(ranks, 1, "ranks"), int(k))


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
    return _metric_matrix(_int64(ranks, 1, "ranks"), np.asarray(ks, dtype=np.int64))


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
    ranks = _int64(ranks, 1, "ranks")
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
    lists, relevant = _int64(lists, 2, "lists"), _int64(relevant, 2, "relevant")
    n_relevant = _int64(n_relevant, 1, "n_relevant")
    if not len(lists) == len(relevant) == len(n_relevant):
        raise ValueError("lists, relevant and n_relevant need the same number of rows")
    if len(n_relevant) and n_relevant.max() > relevant.shape[1]:
        raise ValueError("n_relevant exceeds the width of relevant")
    return _recall_at_k(lists, relevant, n_relevant, int(k))


# --- prequential lookup: which list was shown before each event ------------------------------


@numba.njit(cache=True)
def _prequential_ranks(slots, items, times, cur_items, cur_time, prev_items, prev_time):
    m = len(slots)
    ranks = np.full(m, -1, dtype=np.int64)
    which = np.full(m, -1, dtype=np.int64)  # 0: current list, 1: previous list
    status = np.full(m, COLD, dtype=np.int64)
    width = cur_items.shape[1]
    for e in range(m):
        s = slots[e]
        if s < 0 or cur_time[s] == NO_LIST:
            continue  # cold: no list ever recorded for this user
        t = times[e]
        if cur_time[s] < t:
            lst, w = cur_items, 0
        elif prev_time[s] != NO_LIST and prev_time[s] < t:
            lst, w = prev_items, 1
        elif prev_time[s] == NO_LIST:
            continue  # cold: the only list was triggered at or after t
        else:
            status[e] = LATE  # an older list would apply, but it is forgotten
            continue
        status[e] = WARM
        which[e] = w
        it = items[e]
        if it >= 0:
            for j in range(width):
                if lst[s, j] == it:
                    ranks[e] = j
                    break
    return ranks, which, status


def prequential_ranks(slots, items, times, cur_items, cur_time, prev_items, prev_time):
    """Rank of each event's item in the list shown to its user just before the event.

    A user slot ``s`` keeps its current list (``cur_items[s]``, triggered at ``cur_time[s]``)
    and the one before it (``prev_*``, with ``prev_time[s] < cur_time[s]``); ``NO_LIST`` marks
    an empty slot. A list triggered at ``t_l`` applies to events with time ``t > t_l``
    *strictly*: an event tied with the trigger was not yet answered by that list.

    Returns ``(ranks, which, status)``: rank or -1, 0/1 for current/previous list (-1 if none),
    and status ``0`` warm, ``1`` cold (no list before the event; also ``slots[e] == -1``),
    ``2`` late (only lists we no longer keep could apply).

    >>> cur = np.array([[5, 6]]); prev = np.array([[6, 7]])
    >>> r, w, s = prequential_ranks([0, 0, 0, -1], [6, 7, 6, 6], [11, 10, 9, 20],
    ...                             cur, [10], prev, [9])
    >>> r.tolist(), w.tolist(), s.tolist()
    ([1, 1, -1, -1], [0, 1, -1, -1], [0, 0, 2, 1])
    """
    slots, items, times = _int64(slots, 1, "slots"), _int64(items, 1, "items"), _int64(times, 1, "times")
    cur_items, prev_items = _int64(cur_items, 2, "cur_items"), _int64(prev_items, 2, "prev_items")
    cur_time, prev_time = _int64(cur_time, 1, "cur_time"), _int64(prev_time, 1, "prev_time")
    if not len(slots) == len(items) == len(times):
        raise ValueError("slots, items and times need the same length")
    if cur_items.shape != prev_items.shape:
        raise ValueError("cur_items and prev_items need the same shape")
    return _prequential_ranks(slots, items, times, cur_items, cur_time, prev_items, prev_time)


# --- horizon recall: lists waiting for the user's next distinct items -------------------------
#
# Each published list is a "pending" record in a pool until its horizon closes. A user's
# pending records form a doubly linked chain (newest first) from ``head[slot]``; freed
# records go on a stack ``free[:n_free[0]]``. Pool arrays (capacity P):
#   p_slot[P] (-1 when free), p_time[P] trigger time, p_gid[P] group id,
#   p_items[P, W] the list, p_found[P, H] distinct items consumed since, p_nfound[P],
#   p_prev[P] / p_next[P] chain links.
# The Python side (model.online) allocates, grows and links new records; these kernels
# advance and close them.


@numba.njit(cache=True)
def _unlink(r, head, p_prev, p_next, p_slot, free, n_free):
    a, b = p_prev[r], p_next[r]
    if a >= 0:
        p_next[a] = b
    else:
        head[p_slot[r]] = b
    if b >= 0:
        p_prev[b] = a
    p_slot[r] = -1
    p_prev[r] = -1
    p_next[r] = -1
    free[n_free[0]] = r
    n_free[0] += 1


@numba.njit(cache=True)
def _close(r, when, ks, p_gid, p_items, p_found, p_nfound, out_gid, out_time, out_nf, out_recall, n_out):
    nf = p_nfound[r]
    width = p_items.shape[1]
    out_gid[n_out] = p_gid[r]
    out_time[n_out] = when
    out_nf[n_out] = nf
    for c in range(len(ks)):
        k = ks[c]
        if nf == 0:
            out_recall[n_out, c] = np.nan
            continue
        kk = min(k, width)
        found = 0
        for a in range(nf):
            f = p_found[r, a]
            for j in range(kk):
                if p_items[r, j] == f:
                    found += 1
                    break
        out_recall[n_out, c] = found / min(k, nf)
    return n_out + 1


@numba.njit(cache=True)
def _horizon_observe(slots, items, times, horizon_s, ks, head, p_prev, p_next, p_slot, p_time,
                     p_gid, p_items, p_found, p_nfound, free, n_free,
                     out_gid, out_time, out_nf, out_recall):
    """Feed events (sorted by time per user) to their users' pending lists; close lists whose
    horizon is full (H distinct items) or whose time horizon an event of the user passed.
    Returns the number of closed lists written to ``out_*``."""
    h = p_found.shape[1]
    n_out = 0
    for e in range(len(slots)):
        s = slots[e]
        if s < 0:
            continue
        t, it = times[e], items[e]
        r = head[s]
        while r >= 0:
            nxt = p_next[r]
            tl = p_time[r]
            if tl < t:  # strictly after the trigger, like the hit metrics
                if t - tl > horizon_s:  # the horizon closed before this event
                    n_out = _close(r, tl + horizon_s, ks, p_gid, p_items, p_found, p_nfound,
                                   out_gid, out_time, out_nf, out_recall, n_out)
                    _unlink(r, head, p_prev, p_next, p_slot, free, n_free)
                else:
                    nf = p_nfound[r]
                    new = it >= 0
                    for a in range(nf):
                        if p_found[r, a] == it:
                            new = False
                            break
                    if new:
                        p_found[r, nf] = it
                        p_nfound[r] = nf + 1
                        if nf + 1 == h:
                            n_out = _close(r, t, ks, p_gid, p_items, p_found, p_nfound,
                                           out_gid, out_time, out_nf, out_recall, n_out)
                            _unlink(r, head, p_prev, p_next, p_slot, free, n_free)
            r = nxt
    return n_out


@numba.njit(cache=True)
def _horizon_expire(until, horizon_s, ks, head, p_prev, p_next, p_slot, p_time, p_gid, p_items,
                    p_found, p_nfound, free, n_free, out_gid, out_time, out_nf, out_recall):
    """Close every pending list whose time horizon ended before ``until`` (a watermark)."""
    n_out = 0
    for r in range(len(p_slot)):
        if p_slot[r] >= 0 and p_time[r] < until - horizon_s:
            n_out = _close(r, p_time[r] + horizon_s, ks, p_gid, p_items, p_found, p_nfound,
                           out_gid, out_time, out_nf, out_recall, n_out)
            _unlink(r, head, p_prev, p_next, p_slot, free, n_free)
    return n_out


@numba.njit(cache=True)
def _record_lists(slots, items, times, gids, cur_items, cur_time, cur_gid, prev_items, prev_time,
                  prev_gid, head, p_prev, p_next, p_slot, p_time, p_gid, p_items, p_nfound,
                  free, n_free):
    """Make each list its user's current one and open a pending horizon record for it.

    Per user, trigger times must not decrease: a list older than the current one is stale and
    dropped; one with the same trigger time replaces the current list (and its pending record,
    which no event could have reached yet). Needs ``n_free[0] >= len(slots)``.
    Returns the number of stale lists.
    """
    n_stale = 0
    width = cur_items.shape[1]
    for i in range(len(slots)):
        s, t = slots[i], times[i]
        ct = cur_time[s]
        if ct != NO_LIST and t < ct:
            n_stale += 1
            continue
        if ct != NO_LIST and t == ct:
            r = head[s]  # newest pending record: the replaced list's, if still open
            if r >= 0 and p_time[r] == t:
                _unlink(r, head, p_prev, p_next, p_slot, free, n_free)
        elif ct != NO_LIST:
            prev_time[s] = ct
            prev_gid[s] = cur_gid[s]
            for j in range(width):
                prev_items[s, j] = cur_items[s, j]
        cur_time[s] = t
        cur_gid[s] = gids[i]
        for j in range(width):
            cur_items[s, j] = items[i, j]
        # open a pending record, pushed at the head of the user's chain
        n_free[0] -= 1
        r = free[n_free[0]]
        p_slot[r], p_time[r], p_gid[r], p_nfound[r] = s, t, gids[i], 0
        for j in range(width):
            p_items[r, j] = items[i, j]
        p_prev[r] = -1
        p_next[r] = head[s]
        if head[s] >= 0:
            p_prev[head[s]] = r
        head[s] = r
    return n_stale
