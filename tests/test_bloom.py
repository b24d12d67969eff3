"""The Bloom filter in front of the store's key runs: never a false negative, few false positives."""

import numpy as np

from streamrec.storage.bloom import MIN_BITS, Bloom
from streamrec.storage.key_index import SortedRuns


def test_no_false_negatives_and_few_false_positives_when_full():
    rng = np.random.default_rng(11)
    b = Bloom(capacity=200_000)
    # (user, item) pair codes, as the seen-pair set holds: structured, not random, keys.
    users, items = rng.integers(0, 5_000, 400_000), rng.integers(0, 30_000, 400_000)
    pairs = np.unique((users.astype(np.uint64) << np.uint64(32)) | items.astype(np.uint64))
    held, other = pairs[: b.capacity], pairs[b.capacity:]
    for chunk in np.array_split(held, 37):
        b.add(chunk)
    assert len(b) == len(held) and not b.full(0) and b.full(1)
    assert b.might_contain(held).all()
    false_positives = b.might_contain(other).mean()
    assert 0 < false_positives < 0.05, false_positives  # ~2-3% at MIN_BITS bits a key
    assert len(b.words) * 64 / len(b) >= MIN_BITS


def test_sorted_runs_find_every_key_after_their_filter_is_rebuilt():
    rng = np.random.default_rng(12)
    start = np.unique(rng.integers(0, 2**64, 3_000, dtype=np.uint64))
    runs = SortedRuns(start)
    first_filter = runs._bloom
    added = [start]
    for _ in range(40):  # ~60k keys: the filter is outgrown and rebuilt several times
        keys = np.unique(rng.integers(0, 2**64, 1_500, dtype=np.uint64))
        keys = keys[~runs.lookup(keys)[0]]
        runs.add(keys)
        added.append(keys)
    assert runs._bloom is not first_filter and runs._bloom.capacity >= len(runs)
    every = np.concatenate(added)
    assert runs.lookup(every)[0].all()
    absent = rng.integers(0, 2**64, 20_000, dtype=np.uint64)
    absent = absent[~np.isin(absent, every)]
    assert not runs.lookup(absent)[0].any()
