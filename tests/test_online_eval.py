"""The online evaluator: rolling accumulators, a hand-computed stream, and random streams
checked against a plain-Python re-statement of the definitions in model/online.py."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.model import metrics as mk
from streamrec.model import prequential as pq
from streamrec.model.accumulators import Mean, Rolling, TimeRolling
from streamrec.model.online import OnlineEvaluator
from streamrec.model.slot_index import SlotIndex

# --- accumulators: update/revert equals recomputation from scratch ---------------------------

batches_st = st.lists(
    st.lists(st.tuples(st.floats(0, 1), st.integers(0, 5)), max_size=12),  # (value, time step)
    min_size=1, max_size=25)


@settings(max_examples=200, deadline=None)
@given(batches_st, st.integers(1, 15), st.integers(1, 20))
def test_rolling_windows_equal_recomputation_after_every_revert(batches, size, period):
    by_count = Rolling(Mean(2), window_size=size)
    by_time = TimeRolling(Mean(2), period=period)
    seen, clock = [], 0
    for batch in batches:
        xs = np.array([[v, 1 - v] for v, _ in batch]).reshape(len(batch), 2)
        times = []
        for _, step in batch:
            clock += step
            times.append(clock)
        seen += [(x, t) for x, t in zip(xs.tolist(), times)]
        by_count.update_many(xs)
        by_time.update_many(xs, np.array(times, dtype=np.int64))

        last = [x for x, _ in seen[-size:]]
        assert by_count.n == len(last)
        np.testing.assert_allclose(by_count.window(), np.array(last).reshape(-1, 2))
        if last:
            np.testing.assert_allclose(by_count.get(), np.mean(last, axis=0), rtol=1e-9, atol=1e-12)

        recent = [x for x, t in seen if t > clock - period] if seen else []
        assert by_time.n == len(recent)
        if recent:
            np.testing.assert_allclose(by_time.get(), np.mean(recent, axis=0), rtol=1e-9, atol=1e-12)
        else:
            assert np.isnan(by_time.get()).all()
    by_time.advance(clock + period)  # the clock alone empties a time window
    assert by_time.n == 0 and np.isnan(by_time.get()).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(0, 1), st.floats(0.1, 3)), max_size=40))
def test_mean_update_revert_equals_recomputation(ops):
    m, kept = Mean(1), []
    for add, x, w in ops:
        if add or not kept:
            m.update([x], w)
            kept.append((x, w))
        else:
            x, w = kept.pop(0)
            m.revert([x], w)
        if kept:
            expected = sum(x * w for x, w in kept) / sum(w for _, w in kept)
            assert m.get()[0] == pytest.approx(expected, rel=1e-9, abs=1e-12)
            assert m.n == pytest.approx(sum(w for _, w in kept))
        else:
            assert m.n == 0 and np.isnan(m.get()[0])


def test_slot_index_is_a_dict():
    idx, ref = SlotIndex(), {}
    rng = np.random.default_rng(0)
    for _ in range(30):
        keys = rng.integers(-50, 50, size=rng.integers(0, 10))
        got = idx.add(keys)
        for k in keys.tolist():
            ref.setdefault(k, len(ref))
        assert got.tolist() == [ref[k] for k in keys.tolist()]
        probe = rng.integers(-60, 60, size=20)
        assert idx.lookup(probe).tolist() == [ref.get(k, -1) for k in probe.tolist()]


# --- a hand-computed stream --------------------------------------------------------------------

L2, L3 = 1 / math.log2(3), 1 / math.log2(4)  # NDCG of ranks 1 and 2


def hand_stream() -> tuple[OnlineEvaluator, list]:
    ev = OnlineEvaluator(ks=(1, 3), window_events=2, window_seconds=50, horizon_items=2, horizon_seconds=100)
    results = [ev.score_events([1, 2], [1, 2], [10, 10])]  # nothing shown yet: cold
    ev.record_lists([1, 2], [[5, 1, 2], [3, 4, -1]], [10, 10], ["sasrec", "popularity"], ["v1", "w"])
    # user 2's event at t=10 ties with its list's trigger: graded against the list before (none)
    results.append(ev.score_events([1, 1, 2, 2, 3], [1, 2, 3, 4, 3], [20, 20, 10, 15, 20]))
    ev.record_lists([1, 2], [[2, 7], [9, -1]], [20, 15], ["sasrec", "popularity"], ["v2", "w"])
    results.append(ev.score_events([2], [9], [200]))
    return ev, results


def test_hand_computed_stream_per_event():
    ev, (r1, r2, r3) = hand_stream()
    assert r1.status.tolist() == [pq.COLD, pq.COLD]
    assert r2.status.tolist() == [pq.WARM, pq.WARM, pq.COLD, pq.WARM, pq.COLD]
    assert r2.ranks.tolist() == [1, 2, -1, 1, -1]
    assert [ev.groups[g] if g >= 0 else None for g in r2.groups.tolist()] == [
        ("sasrec", "v1"), ("sasrec", "v1"), None, ("popularity", "w"), None]
    np.testing.assert_allclose(r2.metrics[0], [0, 0, 0, 1, L2, 0.5])
    np.testing.assert_allclose(r2.metrics[1], [0, 0, 0, 1, L3, 1 / 3])
    assert np.isnan(r2.metrics[2]).all()  # cold events carry no metric values
    assert r3.ranks.tolist() == [0]


def test_hand_computed_stream_recall():
    ev, (r1, r2, r3) = hand_stream()
    # user 1's list @10 [5, 1, 2] saw {1, 2} = H items at t=20: 0/min(1,2) and 2/min(3,2)
    assert r2.recall.tolist() == [[0.0, 1.0]] and r2.recall_times.tolist() == [20]
    assert r2.recall_n_future.tolist() == [2]
    # t=200 closes user 2's lists @15 (no future) and @10 ({4}: 0/1 and 1/min(3,1)), then
    # the watermark closes user 1's list @20 (no future)
    closed = sorted(zip(r3.recall_times.tolist(), r3.recall_n_future.tolist(),
                        [tuple(x) for x in r3.recall.tolist()]))
    assert closed[0] == (110, 1, (0.0, 1.0))
    assert [c[:2] for c in closed[1:]] == [(115, 0), (120, 0)]
    assert ev.n_pending == 0


def test_hand_computed_stream_aggregates():
    ev, _ = hand_stream()
    snap = {(r.model, r.version, r.window, r.metric, r.k): (r.value, r.n) for r in ev.snapshot()}

    def val(model, version, window, metric, k):
        return snap[(model, version, window, metric, k)][0]

    assert val("all", "all", "all", "HitRate", 1) == pytest.approx(1 / 4)
    assert val("all", "all", "all", "HitRate", 3) == pytest.approx(1.0)
    assert val("all", "all", "all", "NDCG", 3) == pytest.approx((L2 + L3 + L2 + 1) / 4)
    assert val("all", "all", "all", "MRR", 3) == pytest.approx((1 / 2 + 1 / 3 + 1 / 2 + 1) / 4)
    assert snap[("all", "all", "all", "HitRate", 3)][1] == 4  # the 4 cold events are not zeros
    assert val("sasrec", "v1", "all", "NDCG", 3) == pytest.approx((L2 + L3) / 2)
    assert val("sasrec", "all", "all", "MRR", 3) == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert val("popularity", "w", "all", "HitRate", 1) == pytest.approx(1 / 2)
    assert ("sasrec", "v2", "all", "HitRate", 1) not in snap  # never graded: no row
    # recall: only lists with a future count
    assert val("all", "all", "all", "Recall", 3) == pytest.approx(1.0)
    assert val("all", "all", "all", "Recall", 1) == pytest.approx(0.0)
    assert snap[("all", "all", "all", "Recall", 3)][1] == 2
    assert val("popularity", "all", "all", "Recall", 3) == pytest.approx(1.0)
    # last 2 warm events in time order: user 1's rank 2 at t=20, user 2's rank 0 at t=200
    assert val("all", "all", "last_2", "HitRate", 1) == pytest.approx(1 / 2)
    assert val("all", "all", "last_2", "MRR", 3) == pytest.approx((1 / 3 + 1) / 2)
    # last 50 s of event time at watermark 200: only the event at t=200
    assert snap[("all", "all", "last_50s", "HitRate", 1)] == (1.0, 1.0)
    assert val("all", "all", "all", "coverage", 0) == pytest.approx(4 / 8)
    assert val("all", "all", "all", "events_cold", 0) == 4
    assert val("all", "all", "all", "events_warm", 0) == 4
    assert val("all", "all", "all", "lists_closed", 0) == 4
    assert val("all", "all", "all", "lists_no_future", 0) == 2


def test_cold_events_do_not_move_the_means():
    ev = OnlineEvaluator(ks=(2,), horizon_items=5)
    ev.record_lists([1], [[4, 5]], [0], "popularity", "w")
    ev.score_events([1, 1], [4, 9], [1, 2])
    before = {(r.window, r.metric): r.value for r in ev.snapshot() if r.model == "all" and r.k == 2}
    ev.score_events([7, 8, 9], [4, 4, 4], [3, 3, 3])  # unknown users
    after = {(r.window, r.metric): r.value for r in ev.snapshot() if r.model == "all" and r.k == 2}
    assert before == after and before[("all", "HitRate")] == 0.5
    assert ev.counts["events_cold"] == 3


def test_same_trigger_time_replaces_and_older_is_stale():
    ev = OnlineEvaluator(ks=(1,), horizon_items=1)
    ev.record_lists([1], [[4]], [10], "popularity", "a")
    ev.record_lists([1], [[5]], [10], "popularity", "b")  # replaces: no event saw "a"
    ev.record_lists([1], [[6]], [9], "popularity", "c")  # stale
    r = ev.score_events([1], [5], [11])
    assert r.ranks.tolist() == [0] and ev.groups[r.groups[0]] == ("popularity", "b")
    assert r.recall.tolist() == [[1.0]] and ev.groups[r.recall_groups[0]] == ("popularity", "b")
    assert ev.counts["lists_stale"] == 1 and ev.counts["lists_recorded"] == 2
    assert ev.n_pending == 0  # the replaced list's horizon record was dropped


def test_late_event_is_counted_apart():
    ev = OnlineEvaluator(ks=(1,))
    ev.record_lists([1], [[4]], [10], "m", "1")
    ev.record_lists([1], [[4]], [20], "m", "1")
    r = ev.score_events([1, 1, 1], [4, 4, 4], [10, 15, 25])
    assert r.status.tolist() == [pq.LATE, pq.WARM, pq.WARM]
    assert ev.counts["events_late"] == 1


def test_flush_closes_pending_lists_and_bad_input_is_rejected():
    ev = OnlineEvaluator(ks=(2,), horizon_items=3, horizon_seconds=1000)
    ev.record_lists([1, 2], [[4, 5], [4, 5]], [0, 0], "m", "1")
    ev.score_events([1], [5], [3])
    r = ev.flush()
    assert sorted(r.recall_n_future.tolist()) == [0, 1] and ev.n_pending == 0
    assert r.recall_times.max() <= 3  # stamped no later than the watermark
    with pytest.raises(ValueError):
        ev.record_lists([1, 2], [[4]], [0, 0], "m", "1")
    with pytest.raises(ValueError):
        ev.record_lists([1, 2], [[4], [5]], [0, 0], ["m"], "1")
    with pytest.raises(TypeError):
        ev.score_events([1.5], [2], [3])
    with pytest.raises(ValueError):  # "all" labels the aggregates
        ev.record_lists([1], [[4]], [0], "popularity", "all")


# --- random streams against a plain-Python evaluator ------------------------------------------


class RefEvaluator:
    """The module docstring's definitions, restated with lists and dicts."""

    def __init__(self, ks, horizon_items, horizon, lateness):
        self.ks, self.h, self.horizon, self.lateness = ks, horizon_items, horizon, lateness
        self.kept = defaultdict(list)  # user -> retained lists [(t_l, items, group)], oldest first
        self.open = defaultdict(list)  # user -> pending [t_l, items, group, found]
        self.watermark = None
        self.events = []  # (status, rank, group)
        self.closed = []  # (group, time, n_future, recall tuple)

    def record(self, user, items, t, group):
        kept = self.kept[user]
        if kept and t < kept[-1][0]:
            return
        if kept and t == kept[-1][0]:
            kept.pop()
            self.open[user] = [p for p in self.open[user] if p[0] != t]
        kept.append((t, items, group))
        self.open[user].append([t, items, group, []])

    def _close(self, p, when):
        t, items, group, found = p
        rec = tuple(
            len(set(x for x in items[:k] if x >= 0) & set(found)) / min(k, len(found)) if found else math.nan
            for k in self.ks)
        self.closed.append((group, when, len(found), rec))

    def score(self, user, item, t):
        kept = self.kept[user]
        if len(kept) >= 2 and t <= kept[-2][0]:
            self.events.append((pq.LATE, -1, -1))
        else:
            before = [lst for lst in kept if lst[0] < t]
            if not before:
                self.events.append((pq.COLD, -1, -1))
            else:
                _, items, group = before[-1]
                rank = items.index(item) if item in items else -1
                self.events.append((pq.WARM, rank, group))
        for p in list(self.open[user]):
            if p[0] >= t:
                continue
            if t - p[0] > self.horizon:
                self._close(p, p[0] + self.horizon)
                self.open[user].remove(p)
            elif item not in p[3]:
                p[3].append(item)
                if len(p[3]) == self.h:
                    self._close(p, t)
                    self.open[user].remove(p)

    def end_batch(self, times):
        if times:
            self.watermark = max([*times, self.watermark] if self.watermark is not None else times)
        if self.watermark is None:
            return
        for user, pend in self.open.items():
            for p in list(pend):
                if p[0] + self.horizon < self.watermark - self.lateness:
                    self._close(p, p[0] + self.horizon)
                    pend.remove(p)


GROUPS = [("sasrec", "v1"), ("sasrec", "v2"), ("popularity", "w")]


@st.composite
def streams(draw):
    """Micro-batches of (events, lists) following the worker's protocol, with time ties,
    repeated items, short lists and, sometimes, out-of-order times."""
    batches, clock = [], 0
    shuffle = draw(st.booleans())  # break per-user time order: exercises late events
    for _ in range(draw(st.integers(1, 12))):
        events = []
        for _ in range(draw(st.integers(0, 10))):
            clock += draw(st.integers(0, 3))
            t = clock - draw(st.integers(0, 12)) if shuffle else clock
            events.append((draw(st.integers(0, 4)), draw(st.integers(0, 7)), t))
        lists = []
        for user in sorted({u for u, _, _ in events}) + draw(st.lists(st.integers(0, 4), max_size=2)):
            t = max([t for u, _, t in events if u == user], default=clock) - draw(st.sampled_from([0, 0, 0, 2]))
            width = draw(st.integers(0, 6))
            items = [draw(st.integers(-1, 7)) for _ in range(width)]
            lists.append((user, items, t, draw(st.integers(0, len(GROUPS) - 1))))
        batches.append((events, lists))
    return batches


@settings(max_examples=150, deadline=None)
@given(streams(), st.integers(1, 4), st.integers(1, 12), st.integers(0, 3), st.integers(1, 6))
def test_evaluator_equals_reference_on_random_streams(batches, h, horizon, lateness, window):
    ks = (1, 2, 5)
    ev = OnlineEvaluator(ks=ks, window_events=window, window_seconds=5, horizon_items=h,
                         horizon_seconds=horizon, lateness_seconds=lateness)
    ref = RefEvaluator(ks, h, horizon, lateness)
    got_events, got_closed = [], []
    warm_rows_in_order = []  # per batch, warm events in time order: what "last N" covers
    for events, lists in batches:
        r = ev.score_events([e[0] for e in events], [e[1] for e in events], [e[2] for e in events])
        for e in events:
            ref.score(*e)
        ref.end_batch([e[2] for e in events])
        got_events += [(s, rk, -1 if g < 0 else GROUPS.index(ev.groups[g]))
                       for s, rk, g in zip(r.status.tolist(), r.ranks.tolist(), r.groups.tolist())]
        got_closed += [(GROUPS.index(ev.groups[g]), t, nf, tuple(x))
                       for g, t, nf, x in zip(r.recall_groups.tolist(), r.recall_times.tolist(),
                                              r.recall_n_future.tolist(), r.recall.tolist())]
        order = np.argsort([e[2] for e in events], kind="stable")
        warm_rows_in_order += [r.metrics[i] for i in order if r.status[i] == pq.WARM]
        if lists:
            ev.record_lists([x[0] for x in lists], _pad([x[1] for x in lists]), [x[2] for x in lists],
                            [GROUPS[x[3]][0] for x in lists], [GROUPS[x[3]][1] for x in lists])
            for user, items, t, g in lists:
                ref.record(user, items[: max(ks)], t, g)

    assert got_events == ref.events

    def key(c):
        return (c[0], c[1], c[2], tuple(-1.0 if math.isnan(x) else round(x, 12) for x in c[3]))

    assert sorted(map(key, got_closed)) == sorted(map(key, ref.closed))

    # aggregates against recomputation from the reference's per-event values
    snap = {(r.model, r.version, r.window, r.metric, r.k): r for r in ev.snapshot()}
    warm = [(rank, g) for s, rank, g in ref.events if s == pq.WARM]
    for k in ks:
        for name, sel in (("all", lambda g: True), ("sasrec", lambda g: GROUPS[g][0] == "sasrec")):
            ranks = [rank for rank, g in warm if sel(g)]
            row = snap.get((name, "all", "all", "NDCG", k))
            if not ranks:
                assert row is None
                continue
            expected = sum(1 / math.log2(rk + 2) for rk in ranks if 0 <= rk < k) / len(ranks)
            assert row.n == len(ranks) and row.value == pytest.approx(expected, abs=1e-12)
        recalls = [c[3][list(ks).index(k)] for c in ref.closed if c[2] > 0]
        row = snap.get(("all", "all", "all", "Recall", k))
        assert (row is None) == (not recalls)
        if recalls:
            assert row.value == pytest.approx(sum(recalls) / len(recalls), abs=1e-12)
        if warm_rows_in_order:  # the last-N window after every revert it went through
            last = np.array(warm_rows_in_order[-window:])
            row = snap[("all", "all", f"last_{window}", "HitRate", k)]
            assert row.n == len(last)
            assert row.value == pytest.approx(last[:, 3 * list(ks).index(k)].mean(), abs=1e-12)
    n_warm = len(warm)
    n_cold = sum(s == pq.COLD for s, _, _ in ref.events)
    assert ev.counts["events_warm"] == n_warm and ev.counts["events_cold"] == n_cold
    if n_warm + n_cold:
        assert snap[("all", "all", "all", "coverage", 0)].value == pytest.approx(n_warm / (n_warm + n_cold))


def _pad(rows: list[list[int]]) -> np.ndarray:
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


# --- export: the evaluation table and the report --------------------------------------------


def test_snapshots_round_trip_through_duckdb_and_plot(tmp_path):
    import duckdb

    from streamrec.model.report import plot_report
    from streamrec.storage.evaluation_log import read_evaluation, write_snapshot

    ev, _ = hand_stream()
    db = tmp_path / "run.duckdb"
    con = duckdb.connect(str(db))
    rows = ev.snapshot()
    assert write_snapshot(con, rows, event_time=ev.watermark, time_scale=ev.time_scale) == len(rows)
    assert write_snapshot(con, [], event_time=0) == 0
    got = read_evaluation(con, metric="NDCG", k=3, window="all")
    want = sorted((r.model, r.version, r.value) for r in rows if (r.metric, r.k, r.window) == ("NDCG", 3, "all"))
    assert sorted(zip(got["model"].tolist(), got["version"].tolist(), got["value"].tolist())) == want
    assert set(got["event_time"].tolist()) == {200}
    con.close()

    out = plot_report(db, tmp_path / "report.png", k=3, window="all")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        plot_report(db, tmp_path / "x.png", k=3, window="last_999")


def test_growing_past_initial_capacity_keeps_every_list():
    rng = np.random.default_rng(1)
    ev = OnlineEvaluator(ks=(10,), horizon_items=3, horizon_seconds=10**6)
    users = rng.permutation(5000) * 7 + 3  # sparse ids, more users than the first allocation
    lists = rng.integers(0, 100, size=(5000, 10))
    for part in np.array_split(np.arange(5000), 7):
        ev.record_lists(users[part], lists[part], np.full(len(part), 5), "m", "1")
    assert ev.n_pending == 5000
    pick = rng.integers(0, 10, size=5000)
    r = ev.score_events(users, lists[np.arange(5000), pick], np.full(5000, 6))
    assert r.n_warm == 5000
    assert r.ranks.tolist() == mk.ranks_in_lists(lists, lists[np.arange(5000), pick]).tolist()
    empty = ev.score_events(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64))
    assert len(empty.status) == 0 and empty.metrics.shape == (0, 3)


def test_every_snapshot_metric_has_a_prometheus_gauge():
    from streamrec.streams.prometheus import PROMETHEUS_GAUGES

    ev, _ = hand_stream()
    metrics = {r.metric for r in ev.snapshot()}
    assert metrics <= PROMETHEUS_GAUGES.keys()
    names = [name for name, _ in PROMETHEUS_GAUGES.values()]
    assert len(set(names)) == len(names) and all(n.startswith("streamrec_online_") for n in names)


def test_paired_user_interval_is_wider_when_a_users_events_move_together():
    """Two users, 100 events each: one always gains +1, the other always loses 1. Over events the
    normal interval is narrow around 0; resampling users it spans almost [-1, +1]."""
    from streamrec.model.paired_eval import PairedResult

    r = PairedResult(k=10)
    users = np.repeat([1, 2], 100)
    served = np.where(users == 1, 1.0, 0.0)
    base = np.where(users == 1, 0.0, 1.0)
    r.ndcg.update_many(champion=base, candidate=served)
    r.graded.append((users, served, base))
    lo, hi = PairedResult.interval(r.ndcg)
    ulo, uhi = r.ndcg_user_interval()
    assert hi - lo < 0.4 and ulo <= -0.99 and uhi >= 0.99
