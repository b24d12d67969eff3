"""Exposure: catalogue coverage and Gini of the published lists, against a direct count."""

import numpy as np

from streamrec.model.exposure import Exposure


def test_coverage_and_gini_equal_a_direct_count_over_random_batches():
    rng = np.random.default_rng(5)
    e, catalogue, shown = Exposure(window=10**9), set(), {}
    for _ in range(30):
        items = rng.integers(0, 300, 200)
        e.observe_events(items)
        catalogue |= set(items.tolist())
        lists = rng.integers(0, 400, (20, 5))  # ids >= 300: shown without an event (still in the catalogue)
        lists[rng.random(lists.shape) < 0.1] = -1  # padding
        e.update(lists, ["pop"] * 20)
        for i in lists[lists >= 0].tolist():
            shown[i] = shown.get(i, 0) + 1
    universe = catalogue | set(shown)
    assert e.coverage("pop") == len(shown) / len(universe)
    x = np.sort(np.array([shown.get(i, 0) for i in universe], np.float64))
    n, i = len(x), np.arange(1, len(x) + 1)
    assert abs(e.gini("pop") - ((2 * i - n - 1) * x).sum() / (n * x.sum())) < 1e-12
