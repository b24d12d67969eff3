"""Order within one second is unknown: the loader and the splits must not depend on it."""

from pathlib import Path

import numpy as np

from streamrec.model.data import build_sequences, leave_one_out
from streamrec.storage.movielens import load_ratings

DATA = Path(__file__).parent / "data"


def _write(path: Path, rows: np.ndarray) -> Path:
    with path.open("w") as f:
        f.write("userId,movieId,rating,timestamp\n")
        for u, i, r, t in rows:
            f.write(f"{int(u)},{int(i)},{r:.1f},{int(t)}\n")
    return path


def test_same_second_order_in_the_file_does_not_change_the_split(tmp_path):
    raw = np.loadtxt(DATA / "ratings.csv", delimiter=",", skiprows=1)
    raw = raw[np.isin(raw[:, 0], np.arange(1, 121))]  # 120 users keep the test short
    by_item = raw[np.lexsort((raw[:, 1], raw[:, 0], raw[:, 3]))]  # ties ordered by item id (ml-latest-small's order)
    rng = np.random.default_rng(7)
    shuffled = raw[np.lexsort((rng.random(len(raw)), raw[:, 3]))]  # ties in random order
    assert not np.array_equal(by_item[:, 1], shuffled[:, 1])  # the files do differ within seconds
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a = load_ratings(_write(tmp_path / "a" / "ratings.csv", by_item))
    b = load_ratings(_write(tmp_path / "b" / "ratings.csv", shuffled))
    assert np.array_equal(a.item, b.item) and np.array_equal(a.user, b.user)
    sa, va = build_sequences(a, min_user_events=5)
    sb, vb = build_sequences(b, min_user_events=5)
    la, lb = leave_one_out(sa), leave_one_out(sb)
    assert np.array_equal(va.decode(la.test_targets), vb.decode(lb.test_targets))
    assert np.array_equal(va.decode(la.valid_targets), vb.decode(lb.valid_targets))
    assert np.array_equal(va.decode(la.train.items), vb.decode(lb.train.items))
    # ...whereas file order would have leaked: the two files give different splits.
    fa = build_sequences(load_ratings(tmp_path / "a" / "ratings.csv", ties="file"), min_user_events=5)
    fb = build_sequences(load_ratings(tmp_path / "b" / "ratings.csv", ties="file"), min_user_events=5)
    assert not np.array_equal(fa[1].decode(leave_one_out(fa[0]).test_targets),
                              fb[1].decode(leave_one_out(fb[0]).test_targets))


def test_hash_order_is_not_item_order_within_a_second():
    r = load_ratings(DATA / "ratings.csv")
    same = (np.diff(r.timestamp) == 0) & (r.user[1:] == r.user[:-1])
    ascending = np.mean(r.item[1:][same] > r.item[:-1][same])
    assert 0.4 < ascending < 0.6, ascending  # file order would give 1.0
    assert np.all(np.diff(r.timestamp) >= 0)


def test_training_reshuffles_only_within_a_user_and_second():
    from streamrec.model.data import Sequences

    s = Sequences(np.array([1, 2]), np.array([0, 4, 7]), np.array([1, 2, 3, 4, 5, 6, 7]),
                  np.array([1, 1, 1, 2, 5, 5, 6]))
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(60):
        x = s.shuffle_ties(rng)
        assert np.array_equal(x.times, s.times) and np.array_equal(x.offsets, s.offsets)
        assert sorted(x.items[:3]) == [1, 2, 3] and x.items[3] == 4 and sorted(x.items[4:6]) == [5, 6]
        assert x.items[6] == 7
        seen.add(tuple(x.items[:3]))
    assert len(seen) == 6  # every order of the 3-event burst turns up
