"""Prequential (test-then-train) evaluation of the lists the worker publishes.

Every accepted event ``(user u, item i, time t)`` grades the list we last showed ``u``.

Which list: the one with the largest trigger time ``t_l < t`` among the lists recorded for
``u`` (recording order breaks ties: a list recorded with the same trigger time as the current
one replaces it). The inequality is strict: a list triggered by events at time ``t_l`` was
computed from them and could not have been shown before another event stamped ``t_l``, so
such a tied event is graded against the list before. Per user, the evaluator keeps the
current list and the one before it; a list recorded with a trigger time older than the
current one is *stale* and dropped.

Per event, for every ``K`` in ``ks`` (default 5, 10, 20), with ``rank`` the 0-based position
of ``i`` in that list (-1 if absent):

* ``HitRate@K = [0 <= rank < K]``, ``NDCG@K = HitRate@K / log2(rank + 2)``,
  ``MRR@K = HitRate@K / (rank + 1)`` (see ``model.metrics``).

Events with no list before them are *cold*: they are counted (``events_cold``, ``coverage =
warm / (warm + cold)``) and never enter the means as zeros. Events for which only a list we
no longer keep could apply (out-of-order data) are *late* and only counted.

Per list, Recall@K with a horizon: let ``F`` be the first ``H`` distinct items (``H =
horizon_items``, default ``max(ks)``) that ``u`` consumed at times in ``(t_l, t_l +
horizon_seconds]``, in event order, whichever list was current meanwhile. Then

    ``Recall@K = |top-K of the list ∩ F| / min(K, |F|)``

(the normalisation of Liang et al. 2018, so a perfect list scores 1 whatever ``|F|``). A list
is closed, and its recall recorded at that event time, when ``|F|`` reaches ``H`` or when its
time horizon ends: at the first event of ``u`` past it, or when the watermark (largest event
time scored, minus ``lateness_seconds``) passes it, or on ``flush()``. Lists closed with
``F`` empty are counted (``lists_no_future``) and carry no recall. A list replaced by one with
the same trigger time is discarded without a recall: no event could have graded it.

Worker protocol, once per micro-batch::

    result = evaluator.score_events(users, items, times)    # graded against earlier lists
    recs = recommender.recommend(...)                        # new lists for touched users
    evaluator.record_lists(touched, recs.items, trigger_times, recs.models, recs.versions)

so no event is ever graded against a list computed from it. ``trigger_times`` is, per user,
the largest event time that the new list has seen. Events may arrive in any order across
users but must be sorted by time per user; a user may appear many times in one batch.

Means are kept with an update/revert protocol (``model.accumulators``, like river's
``utils.Rolling``): over the whole stream, over the last ``window_events`` observations and over
the last ``window_seconds`` of event time; overall, per recommender name and per (name, version).
The per-event work runs in the Numba kernels of ``model.prequential``.

>>> ev = OnlineEvaluator(ks=(1, 2), window_events=10, window_seconds=100, horizon_items=2)
>>> ev.record_lists([7], [[10, 11]], [100], model="popularity", version="v1")
>>> r = ev.score_events([7, 7, 8], [11, 12, 10], [101, 102, 102])
>>> r.status.tolist(), r.ranks.tolist()
([0, 0, 1], [1, -1, -1])
>>> r.recall.tolist()  # list closed after two distinct items, {11, 12}: 1 of min(2, 2)
[[0.0, 0.5]]
>>> rows = {(x.model, x.window, x.metric, x.k): x.value for x in ev.snapshot()}
>>> rows[("popularity", "all", "HitRate", 2)], rows[("all", "all", "coverage", 0)]
(0.5, 0.6666666666666666)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from streamrec.model import prequential as pq
from streamrec.model.accumulators import ALL, WindowSet
from streamrec.model.metrics import as_int64, metric_matrix
from streamrec.model.slot_index import SlotIndex

__all__ = ["OnlineEvaluator", "ScoreResult", "SnapshotRow"]


class SnapshotRow(NamedTuple):
    """One exported value. ``k`` is 0 for metrics without a cut-off (counts, coverage)."""

    model: str
    version: str
    k: int
    window: str
    metric: str
    value: float
    n: float


@dataclass
class ScoreResult:
    """What one ``score_events`` call measured.

    Per event (input order): ``status`` (0 warm, 1 cold, 2 late), ``ranks`` (-1 if missed or not
    warm), ``groups`` (index into ``OnlineEvaluator.groups``, -1 if not warm) and ``metrics``
    (``[m, 3 * len(ks)]``: hit, ndcg, mrr per K; NaN rows if not warm). Per list closed during
    the call: ``recall`` (``[c, len(ks)]``, NaN rows for lists without future items),
    ``recall_groups``, ``recall_times`` (event time of the closing), ``recall_n_future``.
    """

    status: np.ndarray
    ranks: np.ndarray
    groups: np.ndarray
    metrics: np.ndarray
    recall: np.ndarray
    recall_groups: np.ndarray
    recall_times: np.ndarray
    recall_n_future: np.ndarray

    @property
    def n_warm(self) -> int:
        return int((self.status == pq.WARM).sum())

    @property
    def n_cold(self) -> int:
        return int((self.status == pq.COLD).sum())

    @property
    def n_late(self) -> int:
        return int((self.status == pq.LATE).sum())


def _labels(value: str | Sequence[str], n: int, what: str) -> list[str]:
    if isinstance(value, str):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{what}: {len(value)} labels for {n} lists")
    return value


class OnlineEvaluator:
    """Grades each event against the list last shown to its user; see the module docstring.

    ``time_scale`` is the number of event-time units per second (1 for seconds, 1000 for
    milliseconds); ``window_seconds`` and ``horizon_seconds`` are converted with it.
    """

    def __init__(
        self,
        ks: Sequence[int] = (5, 10, 20),
        window_events: int = 10_000,
        window_seconds: int = 86_400,
        horizon_items: int | None = None,
        horizon_seconds: int = 86_400,
        lateness_seconds: int = 0,
        time_scale: int = 1,
    ):
        self.ks = np.asarray(sorted({int(k) for k in ks}), dtype=np.int64)
        if len(self.ks) == 0 or self.ks[0] < 1:
            raise ValueError("ks must be positive cut-offs")
        self.width = int(self.ks[-1])  # lists are kept up to the largest K
        self.horizon_items = int(horizon_items or self.width)
        self.horizon = int(horizon_seconds * time_scale)
        self.lateness = int(lateness_seconds * time_scale)
        self.time_scale = int(time_scale)
        self._windows = (window_events, window_seconds, time_scale)
        self.watermark = pq.NO_LIST  # largest event time scored

        self.users = SlotIndex()
        self.groups: list[tuple[str, str]] = []  # gid -> (model, version)
        self._gid: dict[tuple[str, str], int] = {}
        self._group_model: np.ndarray = np.empty(0, dtype=np.int64)  # gid -> model index
        self._models: list[str] = []

        self.state = pq.new_state(self.width, self.horizon_items)  # lists per user, pending horizons
        n_metrics = 3 * len(self.ks)
        self._event_stats: dict[tuple[str, str], WindowSet] = {(ALL, ALL): self._window_set(n_metrics)}
        self._recall_stats: dict[tuple[str, str], WindowSet] = {(ALL, ALL): self._window_set(len(self.ks))}
        self._coverage = self._window_set(1)  # warm indicator over warm and cold events
        self.counts = dict.fromkeys(
            ["events_warm", "events_cold", "events_late", "lists_recorded", "lists_stale",
             "lists_closed", "lists_no_future"], 0)

    def _window_set(self, n_columns: int) -> WindowSet:
        return WindowSet(n_columns, *self._windows)

    # -- bookkeeping

    def _group_ids(self, models: list[str], versions: list[str]) -> np.ndarray:
        for pair in dict.fromkeys(zip(models, versions)):  # first-seen order: stable group ids
            if pair in self._gid:
                continue
            if ALL in pair:
                raise ValueError(f"{ALL!r} is reserved for aggregates; got model/version {pair}")
            self._gid[pair] = len(self.groups)
            self.groups.append(pair)
            if pair[0] not in self._models:
                self._models.append(pair[0])
            self._group_model = np.append(self._group_model, self._models.index(pair[0]))
            self._event_stats[pair] = self._window_set(3 * len(self.ks))
            self._recall_stats[pair] = self._window_set(len(self.ks))
            self._event_stats.setdefault((pair[0], ALL), self._window_set(3 * len(self.ks)))
            self._recall_stats.setdefault((pair[0], ALL), self._window_set(len(self.ks)))
        gid = self._gid
        return np.fromiter((gid[p] for p in zip(models, versions)), dtype=np.int64, count=len(models))

    @property
    def n_pending(self) -> int:
        """Lists still waiting for their recall horizon to close."""
        return pq.n_pending(self.state)

    # -- the worker's two calls

    def record_lists(self, users, items, trigger_times, model: str | Sequence[str],
                     version: str | Sequence[str] = "0") -> None:
        """Remember ``items[j]`` (best first, -1 padded) as the list shown to ``users[j]``
        after the events up to ``trigger_times[j]``, produced by ``model[j]`` at
        ``version[j]`` (a str applies to every row). Columns beyond ``max(ks)`` are ignored."""
        users = as_int64(users, 1, "users")
        items = as_int64(items, 2, "items")
        times = as_int64(trigger_times, 1, "trigger_times")
        n = len(users)
        if not len(items) == len(times) == n:
            raise ValueError("users, items and trigger_times need the same length")
        if n == 0:
            return
        lists = np.full((n, self.width), -1, dtype=np.int64)
        w = min(self.width, items.shape[1])
        lists[:, :w] = items[:, :w]
        gids = self._group_ids(_labels(model, n, "model"), _labels(version, n, "version"))
        slots = self.users.add(users)
        self.state = pq.grow_users(self.state, len(self.users))
        if self.state.n_free[0] < n:
            self.state = pq.grow_pool(self.state, n)
        n_stale = pq.record(self.state, slots, lists, times, gids)
        self.counts["lists_recorded"] += n - n_stale
        self.counts["lists_stale"] += n_stale

    def score_events(self, users, items, times) -> ScoreResult:
        """Grade a batch of events against the lists recorded before it and update the means."""
        users, items, times = (as_int64(a, 1, name) for a, name in
                               ((users, "users"), (items, "items"), (times, "times")))
        if not len(users) == len(items) == len(times):
            raise ValueError("users, items and times need the same length")
        slots = self.users.lookup(users)
        ranks, which, status = pq.ranks_before(self.state, slots, items, times)
        warm = status == pq.WARM
        safe = np.maximum(slots, 0)
        groups = np.where(which == 0, self.state.cur_gid[safe], np.where(which == 1, self.state.prev_gid[safe], -1))
        values = metric_matrix(ranks, self.ks)
        values[~warm] = np.nan

        # Recall horizons: feed this batch's events, then close what the watermark passed.
        closed = [pq.observe(self.state, slots, items, times, self.horizon, self.ks)]
        if len(times):
            self.watermark = max(self.watermark, int(times.max()))
        if self.watermark != pq.NO_LIST:
            closed.append(pq.expire(self.state, self.watermark - self.lateness, self.horizon, self.ks))
        c = pq.Closed(*(np.concatenate(cols) for cols in zip(*closed)))

        self._aggregate(values, groups, times, status, c)
        return ScoreResult(status, np.where(warm, ranks, -1), groups, values, c.recall, c.gid, c.time, c.n_future)

    def flush(self) -> ScoreResult:
        """Close every pending list with the future it has gathered (e.g. at the end of a replay);
        closings are stamped no later than the watermark."""
        c = pq.expire(self.state, np.iinfo(np.int64).max, self.horizon, self.ks)
        if self.watermark != pq.NO_LIST:
            c = c._replace(time=np.minimum(c.time, self.watermark))
        empty = np.empty(0, dtype=np.int64)
        self._aggregate(np.empty((0, 3 * len(self.ks))), empty, empty, empty, c)
        return ScoreResult(empty, empty, empty, np.empty((0, 3 * len(self.ks))), c.recall, c.gid, c.time, c.n_future)

    # -- aggregation

    def _aggregate(self, values, groups, times, status, closed: pq.Closed) -> None:
        warm, cold = status == pq.WARM, status == pq.COLD
        self.counts["events_warm"] += int(warm.sum())
        self.counts["events_cold"] += int(cold.sum())
        self.counts["events_late"] += int((status == pq.LATE).sum())
        self.counts["lists_closed"] += len(closed.gid)
        self.counts["lists_no_future"] += int((closed.n_future == 0).sum())

        # Time order within the batch, so that "the last N" and "the last T seconds" agree.
        order = np.argsort(times, kind="stable")
        graded = order[(warm | cold)[order]]
        self._coverage.update_many(warm[graded].astype(np.float64)[:, None], times[graded])
        w = order[warm[order]]
        self._update_groups(self._event_stats, values[w], groups[w], times[w])
        has = closed.n_future > 0
        self._update_groups(self._recall_stats, closed.recall[has], closed.gid[has], closed.time[has])
        if self.watermark != pq.NO_LIST:
            for ws in (self._coverage, *self._event_stats.values(), *self._recall_stats.values()):
                ws.advance(self.watermark)

    def _update_groups(self, stats, values, gids, times) -> None:
        if len(gids) == 0:
            return
        stats[(ALL, ALL)].update_many(values, times)
        models = self._group_model[gids]
        for codes, key in ((gids, lambda c: self.groups[c]), (models, lambda c: (self._models[c], ALL))):
            order = np.argsort(codes, kind="stable")  # stable: keeps time order inside a group
            uniq, start = np.unique(codes[order], return_index=True)
            for c, rows in zip(uniq.tolist(), np.split(order, start[1:])):
                stats[key(c)].update_many(values[rows], times[rows])

    # -- export

    def snapshot(self) -> list[SnapshotRow]:
        """Every mean and count as flat rows ``(model, version, k, window, metric, value, n)``.

        ``model``/``version`` are ``"all"`` for aggregates over all of them; empty windows are
        left out. Metrics: HitRate, NDCG, MRR (n = graded events), Recall (n = closed lists
        with a future), coverage (n = warm + cold events), and counts (k = 0, window "all").
        """
        rows: list[SnapshotRow] = []
        ks = self.ks.tolist()
        for kind, stats in (("event", self._event_stats), ("recall", self._recall_stats)):
            for (model, version), ws in stats.items():
                for wname, win in ws.windows.items():
                    if win.n <= 0:
                        continue
                    vals = win.get().tolist()
                    for c, k in enumerate(ks):
                        if kind == "event":
                            for j, metric in enumerate(("HitRate", "NDCG", "MRR")):
                                rows.append(SnapshotRow(model, version, k, wname, metric, vals[3 * c + j], win.n))
                        else:
                            rows.append(SnapshotRow(model, version, k, wname, "Recall", vals[c], win.n))
        for wname, win in self._coverage.windows.items():
            if win.n > 0:
                rows.append(SnapshotRow(ALL, ALL, 0, wname, "coverage", float(win.get()[0]), win.n))
        for metric, count in self.counts.items():
            rows.append(SnapshotRow(ALL, ALL, 0, ALL, metric, float(count), float(count)))
        return rows
