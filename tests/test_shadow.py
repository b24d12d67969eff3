"""Shadow mode's arithmetic: the paired tally, the promote/reject/wait rule, and which events the
comparison pairs (the end-to-end run with a worker is tests/test_shadow_e2e.py)."""

import math

import numpy as np
import pytest

from streamrec.model.online import OnlineEvaluator
from streamrec.model.shadow import PairedTally, ShadowComparison, shadow_decision
from streamrec.streams.shadow_topic import ShadowReport


def tally_of(diffs, champion=None) -> PairedTally:
    champion = np.zeros(len(diffs)) if champion is None else champion
    t = PairedTally()
    t.update_many(champion, champion + np.asarray(diffs))
    return t


def test_tally_matches_numpy_and_adds_up_across_workers():
    rng = np.random.default_rng(0)
    champion, candidate = rng.random(500), rng.random(500)
    one_by_one = PairedTally()
    for a, b in zip(champion, candidate):
        one_by_one.update(a, b)
    a, b = tally_of(candidate[:200] - champion[:200], champion[:200]), tally_of(candidate[200:] - champion[200:],
                                                                                champion[200:])
    merged = a + b
    d = candidate - champion
    for t in (one_by_one, merged):
        assert t.n == 500
        assert t.mean_diff == pytest.approx(d.mean())
        assert t.sd_diff == pytest.approx(d.std(ddof=1))
        assert t.champion_mean == pytest.approx(champion.mean())
        assert t.candidate_mean == pytest.approx(candidate.mean())
    merged.revert(champion[-1], candidate[-1])
    assert merged.n == 499 and merged.mean_diff == pytest.approx(d[:-1].mean())


def test_tally_survives_the_wire():
    t = tally_of([0.5, -0.25, 0.0])
    r = ShadowReport("host:1", "v1", "v2", t.n, t.sum_diff, t.sum_sq_diff, t.sum_champion, t.sum_candidate, 0)
    assert r.tally() == t


def test_empty_and_constant_tallies():
    assert math.isnan(PairedTally().mean_diff) and math.isnan(tally_of([0.3]).sd_diff)
    assert shadow_decision(PairedTally(), min_events=0).verdict == "wait"  # no bounds from < 2 events
    same = tally_of(np.zeros(1000))  # identical lists: no difference, no variance
    assert same.sd_diff == 0.0
    assert shadow_decision(same, min_events=1000, margin=0.0).verdict == "promote"


@pytest.mark.parametrize("mean, verdict", [(0.03, "promote"), (0.003, "promote"), (0.0, "wait"), (-0.004, "wait"),
                                           (-0.013, "reject"), (-0.03, "reject")])
def test_decision_at_margin(mean, verdict):
    # sd 0.2, n 2000: half-width of the 95% one-sided bound = 1.645 * 0.2 / sqrt(2000) = 0.0074
    rng = np.random.default_rng(1)
    d = rng.normal(0, 1, 2000)
    d = mean + 0.2 * (d - d.mean()) / d.std(ddof=1)
    decision = shadow_decision(tally_of(d), min_events=2000, margin=0.005, alpha=0.05)
    assert decision.verdict == verdict, decision.reason
    assert decision.lower == pytest.approx(mean - 0.0074, abs=1e-4)
    assert decision.upper == pytest.approx(mean + 0.0074, abs=1e-4)


def test_more_confidence_needs_more_events():
    t = tally_of(np.r_[np.full(600, 0.2), np.full(400, -0.25)])  # mean +0.02, sd ~0.22
    assert shadow_decision(t, min_events=1000, margin=0.0, alpha=0.05).verdict == "promote"
    assert shadow_decision(t, min_events=1000, margin=0.0, alpha=0.001).verdict == "wait"
    timed_out = shadow_decision(t, min_events=1000, margin=0.0, alpha=0.001, timed_out=True)
    assert timed_out.verdict == "reject" and timed_out.reason.startswith("not enough evidence (inconclusive)")
    assert shadow_decision(t, min_events=5000, timed_out=True).reason.startswith("not enough evidence: 1000")


def test_false_rejections_of_an_equal_candidate_stay_near_alpha():
    """No true difference, margin 0, one look at n = 500: about alpha of the runs reject."""
    rng = np.random.default_rng(2)
    verdicts = [shadow_decision(tally_of(rng.normal(0, 0.2, 500)), min_events=500, margin=0.0, alpha=0.05).verdict
                for _ in range(400)]
    rejected = verdicts.count("reject") / len(verdicts)
    assert 0.02 <= rejected <= 0.09
    assert verdicts.count("promote") / len(verdicts) == pytest.approx(0.05, abs=0.035)


def test_comparison_pairs_only_events_both_lists_graded():
    champion = OnlineEvaluator(ks=(5, 10, 20), time_scale=1)
    cmp = ShadowComparison(k=10, time_scale=1)
    # Before the shadow: user 1 was shown a champion list at t=10.
    champion.record_lists([1], [[50, 51, 52]], [10], model="sasrec", version="v1")
    # The shadow starts: users 1 and 2 get lists from both at t=20; user 3 only ever from the champion.
    champion.record_lists([1, 2, 3], [[60, 61], [70, 71], [80, 81]], [20, 20, 20], model="sasrec", version="v1")
    cmp.record_lists([1, 2], [[61, 60], [99, 98]], [20, 20])
    users, items, times = [1, 1, 2, 3, 4], [50, 61, 70, 80, 1], [15, 21, 21, 21, 21]
    graded = champion.score_events(users, items, times)
    assert graded.status.tolist() == [0, 0, 0, 0, 1]  # the champion grades users 1-3
    assert cmp.score_events(graded, users, items, times) == 2  # t=15: only the champion's old list applied
    t = cmp.tally
    # user 1, item 61: champion rank 1 (1/log2(3)), candidate rank 0 (1); user 2: champion rank 0, candidate miss.
    assert t.sum_champion == pytest.approx(1 / math.log2(3) + 1.0)
    assert t.sum_candidate == pytest.approx(1.0)
    assert t.mean_diff == pytest.approx(((1 - 1 / math.log2(3)) + (0 - 1)) / 2)


def test_comparison_cuts_at_k():
    champion = OnlineEvaluator(ks=(20,), time_scale=1)
    cmp = ShadowComparison(k=10, time_scale=1)
    long_list = list(range(100, 120))
    champion.record_lists([1], [long_list], [1], model="sasrec")
    cmp.record_lists([1], [long_list], [1])
    graded = champion.score_events([1, 1], [105, 115], [2, 3])  # ranks 5 and 15
    assert cmp.score_events(graded, [1, 1], [105, 115], [2, 3]) == 2
    assert cmp.tally.sum_champion == pytest.approx(1 / math.log2(7)) == cmp.tally.sum_candidate  # rank 15: beyond 10
