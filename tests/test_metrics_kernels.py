"""The Numba kernels of model.metrics against plain-Python references written here.

Each hypothesis example draws a whole batch of rows, so a few hundred examples cover
thousands of (list, target) cases, including empty lists, -1 padding, repeated items and
cut-offs larger than the list.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.model import metrics as mk
from streamrec.model import prequential as pq

SETTINGS = settings(max_examples=300, deadline=None)
items_st = st.integers(min_value=-1, max_value=6)  # small range: many repeats and hits


# --- plain-Python references -------------------------------------------------------------------


def ref_rank(row: list[int], target: int) -> int:
    if target < 0:
        return -1
    for j, x in enumerate(row):
        if x == target:
            return j
    return -1


def ref_metrics(rank: int, k: int) -> tuple[float, float, float]:
    if 0 <= rank < k:
        return 1.0, 1.0 / math.log2(rank + 2), 1.0 / (rank + 1)
    return 0.0, 0.0, 0.0


def ref_recall(row: list[int], relevant: list[int], k: int) -> float:
    if not relevant:
        return math.nan
    top = {x for x in row[:k] if x >= 0}
    return len(top & set(relevant)) / min(k, len(relevant))


@st.composite
def lists_and_targets(draw):
    n = draw(st.integers(0, 40))
    width = draw(st.integers(0, 12))
    rows = [[draw(items_st) for _ in range(width)] for _ in range(n)]
    targets = [draw(items_st) for _ in range(n)]
    return np.array(rows, dtype=np.int64).reshape(n, width), np.array(targets, dtype=np.int64)


# --- ranks and per-event metrics -------------------------------------------------------------


@SETTINGS
@given(lists_and_targets())
def test_ranks_equal_reference(case):
    lists, targets = case
    expected = [ref_rank(r, t) for r, t in zip(lists.tolist(), targets.tolist())]
    assert mk.ranks_in_lists(lists, targets).tolist() == expected


@SETTINGS
@given(lists_and_targets(), st.integers(1, 20))
def test_metrics_at_k_equal_reference(case, k):
    lists, targets = case
    ranks = mk.ranks_in_lists(lists, targets)
    hit, ndcg, mrr = mk.metrics_at_k(ranks, k)
    ref = [ref_metrics(r, k) for r in ranks.tolist()]
    assert hit.dtype == ndcg.dtype == mrr.dtype == np.float64
    np.testing.assert_allclose(hit, [r[0] for r in ref], rtol=0, atol=0)
    np.testing.assert_allclose(ndcg, [r[1] for r in ref], rtol=1e-12)
    np.testing.assert_allclose(mrr, [r[2] for r in ref], rtol=1e-12)


@SETTINGS
@given(st.lists(st.integers(-1, 30), max_size=60), st.lists(st.integers(1, 25), min_size=1, max_size=4))
def test_metric_matrix_and_summarize_equal_reference(ranks, ks):
    ranks = np.array(ranks, dtype=np.int64)
    m = mk.metric_matrix(ranks, ks)
    assert m.shape == (len(ranks), 3 * len(ks))
    s = mk.summarize(ranks, ks)
    for c, k in enumerate(ks):
        ref = [ref_metrics(r, k) for r in ranks.tolist()]
        for j, name in enumerate(("HitRate", "NDCG", "MRR")):
            col = [r[j] for r in ref]
            np.testing.assert_allclose(m[:, 3 * c + j], col, rtol=1e-12)
            assert s[f"{name}@{k}"] == pytest.approx(sum(col) / len(col) if col else 0.0, rel=1e-12)
        assert s[f"Recall@{k}"] == s[f"HitRate@{k}"]  # one held-out target per event
    assert all(isinstance(v, float) for v in s.values())


def test_summarize_known_values_and_empty():
    s = mk.summarize(np.array([0, 1, 9, 10, -1]), ks=(10,))
    assert s["HitRate@10"] == pytest.approx(3 / 5)
    assert s["MRR@10"] == pytest.approx((1 + 1 / 2 + 1 / 10) / 5)
    assert s["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 5)
    empty = mk.summarize(np.empty(0, dtype=np.int64), ks=(5, 10))
    assert set(empty) == {f"{m}@{k}" for m in ("HitRate", "NDCG", "MRR", "Recall") for k in (5, 10)}
    assert all(v == 0.0 for v in empty.values())


@SETTINGS
@given(st.data())
def test_recall_at_k_equals_reference(data):
    n = data.draw(st.integers(0, 30))
    width = data.draw(st.integers(0, 10))
    k = data.draw(st.integers(1, 15))
    lists = np.array([[data.draw(items_st) for _ in range(width)] for _ in range(n)], dtype=np.int64)
    lists = lists.reshape(n, width)
    rel = [data.draw(st.lists(st.integers(0, 6), max_size=5, unique=True)) for _ in range(n)]
    relevant = np.full((n, 5), -7, dtype=np.int64)
    for i, r in enumerate(rel):
        relevant[i, : len(r)] = r
    got = mk.recall_at_k(lists, relevant, np.array([len(r) for r in rel], dtype=np.int64), k)
    expected = [ref_recall(row, r, k) for row, r in zip(lists.tolist(), rel)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)  # NaN == NaN here


# --- the prequential lookup ----------------------------------------------------------------


def ref_prequential(slot, item, t, cur, cur_t, prev, prev_t):
    """(rank, which, status) from the documented rule, one event at a time."""
    if slot < 0 or cur_t[slot] is None:
        return -1, -1, pq.COLD
    if cur_t[slot] < t:
        return ref_rank(cur[slot], item), 0, pq.WARM
    if prev_t[slot] is None:
        return -1, -1, pq.COLD
    if prev_t[slot] < t:
        return ref_rank(prev[slot], item), 1, pq.WARM
    return -1, -1, pq.LATE


@SETTINGS
@given(st.data())
def test_prequential_ranks_equal_reference(data):
    n_slots = data.draw(st.integers(1, 6))
    width = data.draw(st.integers(0, 6))
    cur = [[data.draw(items_st) for _ in range(width)] for _ in range(n_slots)]
    prev = [[data.draw(items_st) for _ in range(width)] for _ in range(n_slots)]
    cur_t, prev_t = [], []
    for _ in range(n_slots):  # the evaluator's invariant: prev_t < cur_t, both may be missing
        c = data.draw(st.none() | st.integers(0, 8))
        p = None if c is None else data.draw(st.none() | st.integers(0, 8).filter(lambda x, c=c: x < c))
        cur_t.append(c)
        prev_t.append(p)
    m = data.draw(st.integers(0, 40))
    slots = [data.draw(st.integers(-1, n_slots - 1)) for _ in range(m)]
    items = [data.draw(items_st) for _ in range(m)]
    times = [data.draw(st.integers(0, 10)) for _ in range(m)]  # ties with triggers are common

    def arr_t(ts):
        return np.array([pq.NO_LIST if x is None else x for x in ts], dtype=np.int64)

    got = pq.prequential_ranks(
        slots, items, times,
        np.array(cur, dtype=np.int64).reshape(n_slots, width), arr_t(cur_t),
        np.array(prev, dtype=np.int64).reshape(n_slots, width), arr_t(prev_t))
    expected = [ref_prequential(s, i, t, cur, cur_t, prev, prev_t) for s, i, t in zip(slots, items, times)]
    assert list(zip(*(g.tolist() for g in got))) == expected


def test_tie_with_trigger_time_uses_the_list_before():
    cur, prev = np.array([[1, 2]]), np.array([[2, 1]])
    ranks, which, status = pq.prequential_ranks([0, 0], [1, 1], [5, 6], cur, [5], prev, [3])
    assert which.tolist() == [1, 0]  # t == 5 is not after the list triggered at 5
    assert ranks.tolist() == [1, 0]


# --- input checking --------------------------------------------------------------------------


def test_wrappers_reject_bad_input():
    with pytest.raises(TypeError):
        mk.ranks_in_lists(np.ones((2, 3)), np.array([1, 2]))
    with pytest.raises(ValueError):
        mk.ranks_in_lists(np.ones((2, 3), dtype=np.int64), np.array([1, 2, 3]))
    with pytest.raises(ValueError):
        mk.metrics_at_k(np.zeros((2, 2), dtype=np.int64), 3)
    with pytest.raises(ValueError):
        mk.recall_at_k(np.zeros((1, 3), np.int64), np.zeros((1, 2), np.int64), np.array([3]), 2)


def test_int32_input_is_accepted():
    lists = np.array([[3, 4]], dtype=np.int32)
    assert mk.ranks_in_lists(lists, np.array([4], dtype=np.int32)).tolist() == [1]
