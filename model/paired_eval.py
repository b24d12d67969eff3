"""The lists a run published, graded beside a baseline's on the same events: a paired comparison.

Input: the events of a replay (time order, ms) and every list the worker published (user,
trigger time, items, model). Each event is graded against the list its user was shown before it,
exactly as the worker's ``OnlineEvaluator`` does (prequential: the latest list with trigger time
``< t``). A baseline (popularity over a sliding window, the worker's fallback) is asked for a
list for the **same user at the same trigger time**, so both arms are graded on the same events
against lists computed at the same moments: per event NDCG@k and per closed list Recall@k (the
evaluator's horizon recall), tallied as paired differences (``model.shadow.PairedTally``, as in
shadow mode) with a normal interval.

Only events at or after ``since`` (the start of the live replay) are graded, and only lists
triggered from then on are recorded: a user's first live event is cold in both arms and counts
in neither. Events before ``since`` still feed the baseline's window and users' seen items.

The normal interval treats events as independent; events of one user are correlated, so it is too
narrow (the same caveat as shadow mode's decision rule): ``ndcg_user_interval`` resamples users.

>>> from streamrec.model.recommender import PopularityRecommender
>>> ev = dict(users=np.array([1, 2, 1, 1]), items=np.array([5, 5, 6, 7]), times=np.array([0, 10, 20, 30]))
>>> lists = PublishedLists(users=np.array([1]), trigger_times=np.array([0]), items=np.array([[6, 9]]),
...                        models=["sasrec"], versions=["v1"])
>>> r = compare_with_baseline(**ev, lists=lists, baseline=PopularityRecommender(), since=0, k=2, chunk=1)
>>> r.ndcg.n, r.ndcg.candidate_mean, r.ndcg.champion_mean   # events 20 and 30 graded; 6 is first on sasrec's list
(2, 0.5, 0.0)
>>> list(r.ndcg_by_model)
['sasrec v1']
"""

from __future__ import annotations

import inspect
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from streamrec.model import prequential as pq
from streamrec.model.online import OnlineEvaluator
from streamrec.model.protocols import paired_bootstrap
from streamrec.model.recommender import Recommender
from streamrec.model.shadow import PairedTally


@dataclass
class PublishedLists:
    """Lists as published, in any order. ``items``: int64 [n, >= k], -1 padded."""

    users: np.ndarray
    trigger_times: np.ndarray  # ms: event time of the newest event the list has seen
    items: np.ndarray
    models: list[str]
    versions: list[str]


@dataclass
class PairedResult:
    """``candidate`` = the served lists, ``champion`` = the baseline (PairedTally's names)."""

    k: int
    ndcg: PairedTally = field(default_factory=PairedTally)
    recall: PairedTally = field(default_factory=PairedTally)
    cold: int = 0  # live events with no list before them (not graded)
    lists_by_model: Counter = field(default_factory=Counter)  # live lists per "model version"
    ndcg_by_model: dict = field(default_factory=dict)  # "model version" of the served list -> PairedTally
    graded: list = field(default_factory=list)  # per graded run of events: (users, served NDCG, baseline NDCG)

    @staticmethod
    def interval(t: PairedTally, z: float = 1.96) -> tuple[float, float]:
        """Normal interval of the mean paired difference (95% with the default ``z``)."""
        if t.n < 2:
            return (-math.inf, math.inf)
        half = z * t.sd_diff / math.sqrt(t.n)
        return (t.mean_diff - half, t.mean_diff + half)

    def ndcg_user_interval(self, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
        """95% interval of the mean NDCG@k difference resampling *users* with all their events
        (``model.protocols.paired_bootstrap``): a user's events are correlated, which the normal
        interval of ``interval`` ignores."""
        if not self.graded:
            return (-math.inf, math.inf)
        users, served, base = (np.concatenate(x) for x in zip(*self.graded))
        _, lo, hi = paired_bootstrap(served, base, users, n_boot=n_boot, seed=seed)
        return lo, hi


def compare_with_baseline(users, items, times, lists: PublishedLists, baseline: Recommender, since: int,
                          k: int = 10, chunk: int = 64, horizon_seconds: int = 86_400) -> PairedResult:
    """Grade the published lists and ``baseline``'s on the events at or after ``since`` (``times``
    sorted). Events go in runs of at most ``chunk`` (the baseline learns run by run), cut where lists
    take effect, so every event meets the list its user had then.
    ``horizon_seconds``: of event time, the future a list's Recall@k counts (the evaluator's)."""
    users, items, times = (np.asarray(a, np.int64) for a in (users, items, times))
    out = PairedResult(k)
    served, base = (OnlineEvaluator(ks=(k,), time_scale=1000, horizon_seconds=horizon_seconds) for _ in range(2))
    live = np.flatnonzero(lists.trigger_times >= since)
    order = live[np.argsort(lists.trigger_times[live], kind="stable")]
    trig = lists.trigger_times[order]
    out.lists_by_model.update(f"{lists.models[i]} {lists.versions[i]}" for i in order.tolist())
    seen: dict[int, list[int]] = defaultdict(list)
    done = 0  # lists recorded so far (positions in ``order``)
    ndcg_col = 1  # OnlineEvaluator's metric columns per k: hit, ndcg, mrr
    takes_users = "users" in inspect.signature(baseline.observe).parameters

    for a, b in _chunks(times, trig, chunk):
        # Lists triggered before this chunk's first event: into both evaluators, the baseline's
        # computed now, from the events up to here (as the worker would have).
        upto = int(np.searchsorted(trig, times[a], side="left"))
        if upto > done:
            sel = order[done:upto]
            u = lists.users[sel]
            served.record_lists(u, lists.items[sel][:, :k], lists.trigger_times[sel],
                                [lists.models[i] for i in sel.tolist()], [lists.versions[i] for i in sel.tolist()])
            hist = [np.asarray(seen[x], np.int64) for x in u.tolist()]
            recs = baseline.recommend(hist, hist, k)
            base.record_lists(u, recs.items, lists.trigger_times[sel], baseline.name, baseline.version)
            done = upto
        g = slice(a, b)
        graded = times[g] >= since
        if graded.any():
            cu, ci, ct = users[g][graded], items[g][graded], times[g][graded]
            r1, r2 = served.score_events(cu, ci, ct), base.score_events(cu, ci, ct)
            both = (r1.status == pq.WARM) & (r2.status == pq.WARM)
            out.cold += int((r1.status == pq.COLD).sum())
            out.ndcg.update_many(champion=r2.metrics[both, ndcg_col], candidate=r1.metrics[both, ndcg_col])
            out.graded.append((cu[both], r1.metrics[both, ndcg_col], r2.metrics[both, ndcg_col]))
            for gid in np.unique(r1.groups[both]).tolist():  # the same, split by the served list's model
                sel = both & (r1.groups == gid)
                tally = out.ndcg_by_model.setdefault(" ".join(served.groups[gid]), PairedTally())
                tally.update_many(champion=r2.metrics[sel, ndcg_col], candidate=r1.metrics[sel, ndcg_col])
            _pair_recall(out, r1, r2)
        if takes_users:  # sequence baselines (item2item, itemknn) learn per user
            baseline.observe(items[g], users[g])
        else:
            baseline.observe(items[g])
        for x, i in zip(users[g].tolist(), items[g].tolist()):
            seen[x].append(i)
    _pair_recall(out, served.flush(), base.flush())
    return out


def _chunks(times: np.ndarray, triggers: np.ndarray, size: int):
    """(start, stop) of runs of at most ``size`` events, cut wherever a list takes effect: a list
    triggered at ``t`` is shown from the first event later than ``t``, so a new run starts there,
    and the events before it (all at or before ``t``) are exactly what the baseline has seen.

    >>> list(_chunks(np.array([1, 2, 2, 3, 5]), np.array([2, 4]), 8))
    [(0, 3), (3, 4), (4, 5)]
    """
    cuts = np.union1d(np.searchsorted(times, triggers, side="right"), np.arange(0, len(times), size))
    cuts = np.append(cuts[(cuts > 0) & (cuts < len(times))], len(times))
    return zip(np.append(0, cuts[:-1]).tolist(), cuts.tolist())


def _pair_recall(out: PairedResult, r1, r2) -> None:
    """Lists close at the same events in both arms (closing depends on the events, not on the
    lists' contents), so the closed lists line up one to one."""
    if len(r1.recall_times) != len(r2.recall_times) or not np.array_equal(r1.recall_times, r2.recall_times):
        raise AssertionError("paired evaluators closed different lists: the comparison is not paired")
    ok = ~np.isnan(r1.recall[:, 0]) & ~np.isnan(r2.recall[:, 0])
    out.recall.update_many(champion=r2.recall[ok, 0], candidate=r1.recall[ok, 0])
