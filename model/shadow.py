"""Shadow comparison: a candidate model graded against the champion on the same live events.

While a candidate is shadowed, the worker scores it for the same users and at the same moments
as the champion, but publishes only the champion's lists. A second ``OnlineEvaluator`` keeps the
candidate's lists (same users, same trigger times), so every later event of a user is graded
against the champion's list *and* the candidate's: a **paired** comparison. An event counts when
both evaluators grade it (both *warm*); since both recorded lists at the same trigger times from
the moment the shadow began, both then grade it against lists computed from the same history.

Per paired event, the metric is NDCG@10 of the event's item (``1 / log2(rank + 2)`` if it is in
the top 10, else 0; ranks come from ``model.metrics``' kernels) and the evidence is the paired
difference ``d = NDCG(candidate) - NDCG(champion)``, kept as running ``n``, ``sum d`` and
``sum d^2`` (``PairedTally``): tallies of several workers add up.

**Decision** (``shadow_decision``), one-sided at confidence ``1 - alpha`` with the normal
approximation, once at least ``min_events`` paired events were counted:

* promote iff ``mean(d) - z * sd(d) / sqrt(n) >= -margin`` (the candidate is at most ``margin``
  worse, with confidence ``1 - alpha``);
* reject iff ``mean(d) + z * sd(d) / sqrt(n) < -margin`` (it is worse by more than ``margin``);
* otherwise wait; at the timeout, reject for lack of evidence.

Looking again after every new tally inflates the error rate of a fixed-n test somewhat; a larger
``min_events`` or a smaller ``alpha`` buys it back.

>>> cmp = ShadowComparison(k=10)
>>> cmp.record_lists([1], [[5, 6, 7]], [100])                        # the candidate's list
>>> champion = OnlineEvaluator(ks=(10,))
>>> champion.record_lists([1], [[7, 8, 9]], [100], model="sasrec")    # the champion's list
>>> graded = champion.score_events([1], [6], [101])                   # item 6: candidate rank 1
>>> cmp.score_events(graded, [1], [6], [101])
1
>>> round(cmp.tally.mean_diff, 4), cmp.tally.champion_mean
(0.6309, 0.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np

from streamrec.model import metrics as mk
from streamrec.model import prequential as pq
from streamrec.model.online import OnlineEvaluator, ScoreResult

__all__ = ["PairedTally", "ShadowComparison", "ShadowDecision", "shadow_decision"]


@dataclass
class PairedTally:
    """Running sums of paired per-event metrics, river style (``update`` / ``revert``).

    >>> t = PairedTally()
    >>> t.update_many(champion=np.array([1.0, 0.0, 0.5]), candidate=np.array([1.0, 0.5, 1.0]))
    >>> t.n, t.mean_diff, t.champion_mean, t.candidate_mean
    (3, 0.3333333333333333, 0.5, 0.8333333333333334)
    >>> round(t.sd_diff, 4)
    0.2887
    >>> t.revert(champion=0.5, candidate=1.0); t.n, t.mean_diff
    (2, 0.25)
    >>> (t + t).n
    4
    """

    n: int = 0
    sum_diff: float = 0.0  # of candidate - champion
    sum_sq_diff: float = 0.0
    sum_champion: float = 0.0
    sum_candidate: float = 0.0

    def update(self, champion: float, candidate: float) -> None:
        d = candidate - champion
        self.n += 1
        self.sum_diff += d
        self.sum_sq_diff += d * d
        self.sum_champion += champion
        self.sum_candidate += candidate

    def revert(self, champion: float, candidate: float) -> None:
        d = candidate - champion
        self.n -= 1
        self.sum_diff -= d
        self.sum_sq_diff -= d * d
        self.sum_champion -= champion
        self.sum_candidate -= candidate

    def update_many(self, champion: np.ndarray, candidate: np.ndarray) -> None:
        """``update`` for each pair, in one vectorised step."""
        champion, candidate = np.asarray(champion, np.float64), np.asarray(candidate, np.float64)
        d = candidate - champion
        self.n += len(d)
        self.sum_diff += float(d.sum())
        self.sum_sq_diff += float(d @ d)
        self.sum_champion += float(champion.sum())
        self.sum_candidate += float(candidate.sum())

    def __add__(self, other: "PairedTally") -> "PairedTally":
        """Tallies of disjoint events (e.g. of two workers) add up."""
        return PairedTally(self.n + other.n, self.sum_diff + other.sum_diff, self.sum_sq_diff + other.sum_sq_diff,
                           self.sum_champion + other.sum_champion, self.sum_candidate + other.sum_candidate)

    @property
    def mean_diff(self) -> float:
        return self.sum_diff / self.n if self.n else math.nan

    @property
    def sd_diff(self) -> float:
        """Sample standard deviation of the differences (n - 1 in the denominator)."""
        if self.n < 2:
            return math.nan
        var = (self.sum_sq_diff - self.sum_diff * self.sum_diff / self.n) / (self.n - 1)
        return math.sqrt(max(var, 0.0))  # rounding can push a zero variance slightly below 0

    @property
    def champion_mean(self) -> float:
        return self.sum_champion / self.n if self.n else math.nan

    @property
    def candidate_mean(self) -> float:
        return self.sum_candidate / self.n if self.n else math.nan


@dataclass(frozen=True)
class ShadowDecision:
    verdict: str  # "promote", "reject" or "wait"
    n: int
    mean: float  # mean paired difference, candidate - champion
    lower: float  # one-sided confidence bounds of the mean difference
    upper: float
    reason: str


def shadow_decision(tally: PairedTally, min_events: int, margin: float = 0.005, alpha: float = 0.05,
                    timed_out: bool = False) -> ShadowDecision:
    """Promote, reject or wait; see the module docstring for the rule.

    >>> better = PairedTally(n=1000, sum_diff=30.0, sum_sq_diff=40.0)   # mean +0.03, sd 0.2
    >>> shadow_decision(better, min_events=500).verdict
    'promote'
    >>> worse = PairedTally(n=1000, sum_diff=-30.0, sum_sq_diff=40.0)
    >>> shadow_decision(worse, min_events=500).verdict
    'reject'
    >>> shadow_decision(better, min_events=5000).verdict                # too few events yet
    'wait'
    >>> print(shadow_decision(better, min_events=5000, timed_out=True).reason)
    not enough evidence: 1000 paired events of the 5000 required
    """
    n, mean, sd = tally.n, tally.mean_diff, tally.sd_diff
    if n >= 2:
        half = NormalDist().inv_cdf(1 - alpha) * sd / math.sqrt(n)
        lower, upper = mean - half, mean + half
    else:
        lower, upper = -math.inf, math.inf
    summary = (f"NDCG@10 candidate {tally.candidate_mean:.4f} vs champion {tally.champion_mean:.4f} over {n} paired "
               f"events, difference {mean:+.4f}, {100 * (1 - alpha):g}% bounds [{lower:+.4f}, {upper:+.4f}], "
               f"margin {margin}")
    if n < min_events:
        if timed_out:
            return ShadowDecision("reject", n, mean, lower, upper,
                                  f"not enough evidence: {n} paired events of the {min_events} required")
        return ShadowDecision("wait", n, mean, lower, upper, f"{n} of {min_events} paired events")
    if lower >= -margin:
        return ShadowDecision("promote", n, mean, lower, upper, f"not worse: {summary}")
    if upper < -margin:
        return ShadowDecision("reject", n, mean, lower, upper, f"worse: {summary}")
    if timed_out:
        return ShadowDecision("reject", n, mean, lower, upper, f"not enough evidence (inconclusive): {summary}")
    return ShadowDecision("wait", n, mean, lower, upper, f"inconclusive: {summary}")


class ShadowComparison:
    """The candidate's lists and the paired tally against the champion's evaluator.

    Worker protocol, per micro-batch (after the champion's own calls)::

        graded = evaluator.score_events(users, items, times)         # the champion's evaluator
        comparison.score_events(graded, users, items, times)         # same events, candidate lists
        ...
        comparison.record_lists(touched, candidate_items, trigger_times)
    """

    def __init__(self, k: int = 10, time_scale: int = 1000):
        self.k = k
        self.evaluator = OnlineEvaluator(ks=(k,), time_scale=time_scale)
        self.tally = PairedTally()

    def record_lists(self, users, items, trigger_times, model: str | Sequence[str] = "candidate",
                     version: str | Sequence[str] = "0") -> None:
        self.evaluator.record_lists(users, items, trigger_times, model, version)

    def score_events(self, champion: ScoreResult, users, items, times) -> int:
        """Grade the events against the candidate's lists; add the events that both the
        champion's lists (``champion``: its evaluator's result for the same events) and the
        candidate's graded to the tally. Returns how many were paired."""
        candidate = self.evaluator.score_events(users, items, times)
        both = (champion.status == pq.WARM) & (candidate.status == pq.WARM)
        _, ndcg_champion, _ = mk.metrics_at_k(champion.ranks[both], self.k)
        _, ndcg_candidate, _ = mk.metrics_at_k(candidate.ranks[both], self.k)
        self.tally.update_many(ndcg_champion, ndcg_candidate)
        return int(both.sum())
