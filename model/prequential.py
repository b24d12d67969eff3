"""Prequential kernels of the online evaluator: which list each event grades, and recall horizons.

Numba kernels over one :class:`State` (a NamedTuple of arrays, which Numba passes as one
argument): per user slot the current and the previous list, and a pool of published lists
waiting for their recall horizon. ``model.online.OnlineEvaluator`` owns a ``State`` and calls
the Python functions here (``record``, ``observe``, ``expire``); the definitions of the metrics
themselves are in ``model.metrics``.

Pool layout (capacity P): a user's pending records form a doubly linked chain, newest first,
from ``head[slot]``; freed records go on a stack ``free[:n_free[0]]``. ``p_slot`` is -1 for a
free record, ``p_found[r, :p_nfound[r]]`` the distinct items the user consumed since the list.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from streamrec.model.metrics import as_int64

__all__ = ["COLD", "Closed", "LATE", "NO_LIST", "State", "WARM", "prequential_ranks"]

#: Trigger time of a slot that holds no list.
NO_LIST = np.iinfo(np.int64).min

# Status codes of ``prequential_ranks``.
WARM, COLD, LATE = 0, 1, 2


class State(NamedTuple):
    """Everything the kernels read and write (every array int64)."""

    cur_items: np.ndarray  # [U, W] per user slot: the current list, -1 padded
    cur_time: np.ndarray  # [U] its trigger time (NO_LIST: none)
    cur_gid: np.ndarray  # [U] its (model, version) group
    prev_items: np.ndarray  # [U, W] the list before it
    prev_time: np.ndarray
    prev_gid: np.ndarray
    head: np.ndarray  # [U] the user's newest pending record, -1 if none
    p_slot: np.ndarray  # [P] pending records: user slot (-1: free)
    p_prev: np.ndarray  # [P] chain links
    p_next: np.ndarray
    p_time: np.ndarray  # [P] trigger time
    p_gid: np.ndarray  # [P] group
    p_items: np.ndarray  # [P, W] the list
    p_found: np.ndarray  # [P, H] distinct items consumed since
    p_nfound: np.ndarray  # [P]
    free: np.ndarray  # [P] stack of free records
    n_free: np.ndarray  # [1] its height


class Closed(NamedTuple):
    """Lists whose recall horizon closed: group, closing time, |F|, Recall@K per cut-off (NaN if |F| = 0)."""

    gid: np.ndarray
    time: np.ndarray
    n_future: np.ndarray
    recall: np.ndarray  # [c, len(ks)]

    @staticmethod
    def empty(n: int, n_ks: int) -> "Closed":
        return Closed(np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64), np.empty((n, n_ks)))

    def head(self, n: int) -> "Closed":
        return Closed(*(a[:n] for a in self))


def _grow(a: np.ndarray, n: int, fill) -> np.ndarray:
    out = np.full((n,) + a.shape[1:], fill, dtype=a.dtype)
    out[: len(a)] = a
    return out


def new_state(width: int, horizon_items: int, users: int = 1024, pool: int = 1024) -> State:
    lists, times, ids = np.full((0, width), -1, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    state = State(lists, times, ids, lists, times, ids, ids, ids, ids, ids, times, ids, lists,
                  np.empty((0, horizon_items), np.int64), ids, ids, np.zeros(1, np.int64))
    return grow_pool(grow_users(state, users), pool)


def grow_users(state: State, n: int) -> State:
    """Room for ``n`` user slots (capacity doubles)."""
    cap = max(len(state.cur_time), 1)
    if n <= len(state.cur_time):
        return state
    while cap < n:
        cap *= 2
    fills = {"cur_items": -1, "prev_items": -1, "cur_time": NO_LIST, "prev_time": NO_LIST,
             "cur_gid": -1, "prev_gid": -1, "head": -1}
    return state._replace(**{name: _grow(getattr(state, name), cap, fill) for name, fill in fills.items()})


def grow_pool(state: State, extra: int) -> State:
    """Room for ``extra`` more pending records: every new record goes on the free stack."""
    old = len(state.p_slot)
    cap = max(2 * old, old + extra)
    fills = {"p_slot": -1, "p_prev": -1, "p_next": -1, "p_time": 0, "p_gid": -1, "p_nfound": 0,
             "p_items": -1, "p_found": -1}
    grown = {name: _grow(getattr(state, name), cap, fill) for name, fill in fills.items()}
    n_free = int(state.n_free[0])
    free = np.empty(cap, dtype=np.int64)
    free[:n_free] = state.free[:n_free]
    free[n_free : n_free + cap - old] = np.arange(cap - 1, old - 1, -1)
    return state._replace(**grown, free=free, n_free=np.array([n_free + cap - old], dtype=np.int64))


def n_pending(state: State) -> int:
    """Lists still waiting for their recall horizon to close."""
    return len(state.p_slot) - int(state.n_free[0])


# --- which list was shown before each event ------------------------------------------------------


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
    slots, items, times = as_int64(slots, 1, "slots"), as_int64(items, 1, "items"), as_int64(times, 1, "times")
    cur_items, prev_items = as_int64(cur_items, 2, "cur_items"), as_int64(prev_items, 2, "prev_items")
    cur_time, prev_time = as_int64(cur_time, 1, "cur_time"), as_int64(prev_time, 1, "prev_time")
    if not len(slots) == len(items) == len(times):
        raise ValueError("slots, items and times need the same length")
    if cur_items.shape != prev_items.shape:
        raise ValueError("cur_items and prev_items need the same shape")
    return _prequential_ranks(slots, items, times, cur_items, cur_time, prev_items, prev_time)


def ranks_before(state: State, slots: np.ndarray, items: np.ndarray, times: np.ndarray):
    """``prequential_ranks`` against the lists of ``state``."""
    s = state
    return _prequential_ranks(slots, items, times, s.cur_items, s.cur_time, s.prev_items, s.prev_time)


# --- recall horizons: lists waiting for the user's next distinct items ---------------------------


@numba.njit(cache=True)
def _unlink(r, s):
    a, b = s.p_prev[r], s.p_next[r]
    if a >= 0:
        s.p_next[a] = b
    else:
        s.head[s.p_slot[r]] = b
    if b >= 0:
        s.p_prev[b] = a
    s.p_slot[r] = -1
    s.p_prev[r] = -1
    s.p_next[r] = -1
    s.free[s.n_free[0]] = r
    s.n_free[0] += 1


@numba.njit(cache=True)
def _close(r, when, ks, s, out, n_out):
    """Write record ``r``'s recall to ``out[n_out]`` and free it; returns ``n_out + 1``."""
    nf = s.p_nfound[r]
    width = s.p_items.shape[1]
    out.gid[n_out] = s.p_gid[r]
    out.time[n_out] = when
    out.n_future[n_out] = nf
    for c in range(len(ks)):
        k = ks[c]
        if nf == 0:
            out.recall[n_out, c] = np.nan
            continue
        kk = min(k, width)
        found = 0
        for a in range(nf):
            f = s.p_found[r, a]
            for j in range(kk):
                if s.p_items[r, j] == f:
                    found += 1
                    break
        out.recall[n_out, c] = found / min(k, nf)
    _unlink(r, s)
    return n_out + 1


@numba.njit(cache=True)
def _observe(slots, items, times, horizon, ks, s, out):
    """Feed events (sorted by time per user) to their users' pending lists; close lists whose
    horizon is full (H distinct items) or whose time horizon an event of the user passed.
    Returns the number of closed lists written to ``out``."""
    h = s.p_found.shape[1]
    n_out = 0
    for e in range(len(slots)):
        u = slots[e]
        if u < 0:
            continue
        t, it = times[e], items[e]
        r = s.head[u]
        while r >= 0:
            nxt = s.p_next[r]
            tl = s.p_time[r]
            if tl < t:  # strictly after the trigger, like the hit metrics
                if t - tl > horizon:  # the horizon closed before this event
                    n_out = _close(r, tl + horizon, ks, s, out, n_out)
                else:
                    nf = s.p_nfound[r]
                    new = it >= 0
                    for a in range(nf):
                        if s.p_found[r, a] == it:
                            new = False
                            break
                    if new:
                        s.p_found[r, nf] = it
                        s.p_nfound[r] = nf + 1
                        if nf + 1 == h:
                            n_out = _close(r, t, ks, s, out, n_out)
            r = nxt
    return n_out


@numba.njit(cache=True)
def _expire(until, horizon, ks, s, out):
    """Close every pending list whose time horizon ended before ``until`` (a watermark)."""
    n_out = 0
    for r in range(len(s.p_slot)):
        if s.p_slot[r] >= 0 and s.p_time[r] < until - horizon:
            n_out = _close(r, s.p_time[r] + horizon, ks, s, out, n_out)
    return n_out


@numba.njit(cache=True)
def _record(slots, items, times, gids, s):
    """Make each list its user's current one and open a pending horizon record for it.

    Per user, trigger times must not decrease: a list older than the current one is stale and
    dropped; one with the same trigger time replaces the current list (and its pending record,
    which no event could have reached yet). Needs ``n_free[0] >= len(slots)``.
    Returns the number of stale lists.
    """
    n_stale = 0
    width = s.cur_items.shape[1]
    for i in range(len(slots)):
        u, t = slots[i], times[i]
        ct = s.cur_time[u]
        if ct != NO_LIST and t < ct:
            n_stale += 1
            continue
        if ct != NO_LIST and t == ct:
            r = s.head[u]  # newest pending record: the replaced list's, if still open
            if r >= 0 and s.p_time[r] == t:
                _unlink(r, s)
        elif ct != NO_LIST:
            s.prev_time[u] = ct
            s.prev_gid[u] = s.cur_gid[u]
            for j in range(width):
                s.prev_items[u, j] = s.cur_items[u, j]
        s.cur_time[u] = t
        s.cur_gid[u] = gids[i]
        for j in range(width):
            s.cur_items[u, j] = items[i, j]
        # open a pending record, pushed at the head of the user's chain
        s.n_free[0] -= 1
        r = s.free[s.n_free[0]]
        s.p_slot[r], s.p_time[r], s.p_gid[r], s.p_nfound[r] = u, t, gids[i], 0
        for j in range(width):
            s.p_items[r, j] = items[i, j]
        s.p_prev[r] = -1
        s.p_next[r] = s.head[u]
        if s.head[u] >= 0:
            s.p_prev[s.head[u]] = r
        s.head[u] = r
    return n_stale


def record(state: State, slots: np.ndarray, lists: np.ndarray, times: np.ndarray, gids: np.ndarray) -> int:
    """``_record`` (the caller has grown the state to fit); returns the number of stale lists."""
    return int(_record(slots, lists, times, gids, state))


def observe(state: State, slots, items, times, horizon: int, ks: np.ndarray) -> Closed:
    """Events into the pending lists of their users; the lists that closed."""
    out = Closed.empty(n_pending(state), len(ks))
    return out.head(_observe(slots, items, times, horizon, ks, state, out))


def expire(state: State, until: int, horizon: int, ks: np.ndarray) -> Closed:
    """Close the lists whose horizon ended before ``until``, in closing-time order."""
    out = Closed.empty(n_pending(state), len(ks))
    closed = out.head(_expire(until, horizon, ks, state, out))
    order = np.argsort(closed.time, kind="stable")  # expiries come in pool order, not time order
    return Closed(*(a[order] for a in closed))
