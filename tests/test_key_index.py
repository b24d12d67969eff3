"""Sorted key runs and dense codes against plain Python sets and dicts, on random streams."""

import numpy as np

from streamrec.storage.codes import Codes
from streamrec.storage.key_index import SortedRuns


def test_sorted_runs_agree_with_a_dict_through_many_merges():
    rng = np.random.default_rng(3)
    runs, truth = SortedRuns(values=True), {}
    for _ in range(200):
        keys = np.unique(rng.integers(0, 2**64, int(rng.integers(1, 300)), dtype=np.uint64))
        found, _ = runs.lookup(keys)
        assert found.tolist() == [int(k) in truth for k in keys.tolist()]
        new = keys[~found]
        vals = rng.integers(0, 2**64, len(new), dtype=np.uint64)
        runs.add(new, vals)
        truth.update(zip(new.tolist(), vals.tolist()))
    assert len(runs) == len(truth) and runs.runs <= 8  # merged: log-many runs, not 200
    probe = np.array(list(truth)[::7] + [1, 2, 3], np.uint64)
    found, vals = runs.lookup(probe)
    assert found.tolist() == [int(k) in truth for k in probe.tolist()]
    assert vals[found].tolist() == [truth[int(k)] for k in probe[found].tolist()]


def test_ranges_group_every_key_in_its_interval():
    rng = np.random.default_rng(5)
    runs, keys = SortedRuns(), set()
    for _ in range(30):
        k = np.unique(rng.integers(0, 10_000, 50, dtype=np.uint64))
        k = k[~runs.lookup(k)[0]]
        runs.add(k)
        keys.update(k.tolist())
    lo = np.array([0, 500, 9000, 300, 20_000], np.uint64)
    hi = np.array([100, 500, 10_000, 2000, 30_000], np.uint64)
    flat, total = runs.ranges(lo, hi)
    groups = np.split(flat, np.cumsum(total)[:-1])
    for a, b, g in zip(lo.tolist(), hi.tolist(), groups):
        assert sorted(g.tolist()) == sorted(k for k in keys if a <= k < b)


def test_codes_are_dense_in_order_of_first_sight():
    c = Codes()
    rng = np.random.default_rng(1)
    truth: dict[int, int] = {}
    for _ in range(50):
        ids = rng.integers(0, 2**63 - 1, 40) // rng.integers(1, 2**40, 40)  # repeats and big ids
        codes = c.encode(ids)
        for i in ids.tolist():
            truth.setdefault(i, len(truth))
        assert codes.tolist() == [truth[i] for i in ids.tolist()]
    assert len(c) == len(truth) and c.ids.tolist() == list(truth)
    assert c.lookup(np.array([-5])).tolist() == [-1]


def test_codes_through_the_direct_table_and_the_search_agree_with_a_dict(monkeypatch):
    """Small ids (direct table, grown by doubling), ids past its cap and negative ids (binary
    search) get the codes a dict gives; a snapshot taken before new ids were coded reads them as
    unknown, also where the table was written in place."""
    from streamrec.storage import codes

    monkeypatch.setattr(codes, "DENSE_MAX", 5000)  # small, so the stream crosses it
    rng = np.random.default_rng(7)
    c, truth, snaps = Codes(), {}, []
    for step in range(60):
        ids = np.concatenate([rng.integers(0, 50 * (step + 1), 30), rng.integers(4000, 9000, 5),
                              -rng.integers(1, 100, 3), rng.integers(0, 2**62, 2)])
        snaps.append((c.snapshot_lookup(), dict(truth)))
        codes = c.encode(ids)
        for i in ids.tolist():
            truth.setdefault(i, len(truth))
        assert codes.tolist() == [truth[i] for i in ids.tolist()]
    # (only ids the direct table cannot hold are kept sorted)
    assert 0 < len(c._dense) <= 5000 and len(c._sorted) == sum(1 for i in truth if not 0 <= i < 5000)
    probe = np.array(list(truth) + [4999, 5000, -1000, 2**63 - 1], np.int64)
    assert c.lookup(probe).tolist() == [truth.get(i, -1) for i in probe.tolist()]
    for lookup, then in snaps[::5]:
        assert lookup(probe).tolist() == [then.get(i, -1) for i in probe.tolist()]


def test_directory_lookups_equal_a_plain_search():
    """Runs long enough for a directory (uniform 64-bit keys like event keys, and clustered
    (user << 32 | item) codes like seen pairs) find exactly what np.isin finds, values included,
    for keys inside, between, below and above the runs' ranges."""
    from streamrec.storage import key_index

    rng = np.random.default_rng(11)
    uniform = np.unique(rng.integers(0, 2**64, 300_000, dtype=np.uint64))
    users, items = rng.integers(5, 3000, 400_000), rng.integers(0, 20_000, 400_000)
    clustered = np.unique((users.astype(np.uint64) << np.uint64(32)) | items.astype(np.uint64))
    for keys in (uniform, clustered):
        assert len(keys) >= key_index.DIRECTORY_MIN
        runs = SortedRuns(keys, keys * np.uint64(3), is_sorted=True)
        assert runs._dirs[0] is not None
        probe = np.concatenate([keys[::97], keys[::89] + np.uint64(1), keys[:50] - np.uint64(1),
                                np.array([0, 1, 2**64 - 1, int(keys[-1]) + 5], np.uint64)])
        found, vals = runs.lookup(probe)
        assert found.tolist() == np.isin(probe, keys).tolist()
        assert (vals[found] == probe[found] * np.uint64(3)).all()
    # ranges through the directories: every seen pair of users (present, absent, out of range), as
    # the store asks for them, over two runs (one with a directory, one without)
    runs.add(np.array([(3001 << 32) | 5, (7 << 32) | 20_001], np.uint64), np.zeros(2, np.uint64))
    everything = np.sort(np.append(clustered, runs._keys[1]))
    users_asked = np.array([7, 5, 2999, 4, 3001, 3002, 1000, 6, 2**20], np.uint64)
    lo, hi = users_asked << np.uint64(32), (users_asked + np.uint64(1)) << np.uint64(32)
    flat, total = runs.ranges(lo, hi)
    groups = np.split(flat, np.cumsum(total)[:-1])
    for a, b, g in zip(lo, hi, groups):
        assert sorted(g.tolist()) == everything[np.searchsorted(everything, a):np.searchsorted(everything, b)].tolist()


def test_sorted_runs_with_directories_through_many_merges(monkeypatch):
    """The merge test again with a directory on every run of 4 keys or more."""
    from streamrec.storage import key_index

    monkeypatch.setattr(key_index, "DIRECTORY_MIN", 4)
    monkeypatch.setattr(key_index, "PER_SLICE", 2)
    test_sorted_runs_agree_with_a_dict_through_many_merges()
