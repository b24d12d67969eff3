"""MovieLens readers (three formats, stable time order) and the popularity recommender."""

from pathlib import Path

import numpy as np
import pytest

from streamrec.model.recommender import (
    FallbackRecommender,
    PopularityRecommender,
    Recommendations,
    Recommender,
    by_count_then_id,
)
from streamrec.storage.movielens import FormatError, load_ratings, load_titles, recbole_ml100k_path
from streamrec.streams.config import Settings

DATA = Path(__file__).parent / "data"


def test_ml_latest_small_is_complete_and_stably_sorted():
    r = load_ratings(DATA / "ratings.csv")
    assert len(r) == 100_004 and len(np.unique(r.user)) == 671
    assert np.all(np.diff(r.timestamp) >= 0)
    # ties="file" keeps file order: compare with a stable sort of the raw file.
    raw = np.loadtxt(DATA / "ratings.csv", delimiter=",", skiprows=1)
    order = np.argsort(raw[:, 3], kind="stable")
    f = load_ratings(DATA / "ratings.csv", ties="file")
    assert np.array_equal(f.user, raw[order, 0].astype(np.int64))
    assert np.array_equal(f.item, raw[order, 1].astype(np.int64))
    # the default order is a permutation of it within seconds
    assert np.array_equal(r.timestamp, f.timestamp) and not np.array_equal(r.item, f.item)
    assert load_titles(DATA / "movies.csv")[1] == "Toy Story (1995)"


def test_ml1m_dat_and_filters(tmp_path):
    p = tmp_path / "ratings.dat"
    p.write_text("1::1193::5::978300760\n1::661::3::978302109\n2::3::4::978300760\n3::1::1::5\n")
    r = load_ratings(p, ties="file")
    assert r.user.tolist() == [3, 1, 2, 1] and r.item.tolist() == [1, 1193, 3, 661]
    assert load_ratings(p, min_rating=4, ties="file").item.tolist() == [1193, 3]
    assert r.slice(1, 3).item.tolist() == [1193, 3]


def test_recbole_inter_ml100k():
    # RecBole's wheel is part of the test set-up (scripts/setup.sh): without it this fails with
    # recbole_ml100k_path()'s message rather than skipping, so CI cannot go quietly without ML-100K.
    r = load_ratings(recbole_ml100k_path())
    assert len(r) == 100_000 and len(np.unique(r.user)) == 943 and len(np.unique(r.item)) == 1682


def test_unknown_format_is_a_clear_error(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(FormatError, match="unrecognised header"):
        load_ratings(p)
    with pytest.raises(FileNotFoundError):
        load_ratings(tmp_path / "missing.csv")


def test_popularity_window_counts_and_excludes_seen():
    pop = PopularityRecommender(window=5)
    pop.observe(np.array([1, 1, 1, 2, 2]))
    pop.observe(np.array([3, 3, 3]))  # window now [1, 2, 2, 3, 3, 3]... last 5: [2, 2, 3, 3, 3]
    ids, cnt = pop.ranked()
    assert ids.tolist() == [3, 2] and cnt.tolist() == [3, 2]
    recs = pop.recommend([np.array([3])], [np.array([3])], k=3)
    assert recs.items.tolist() == [[2, -1, -1]]
    assert recs.row(0) == ([2], [2.0])


def test_popularity_lists_equal_a_per_user_scan():
    """The vectorised lists equal, user by user, the ranked items minus the user's seen ones, first k:
    with users who have seen nothing, everything, items outside the window, the same item twice,
    and more seen items than k + the catalogue."""
    rng = np.random.default_rng(7)
    pop = PopularityRecommender(window=3000)
    pop.observe(rng.zipf(1.3, 3000) % 400 + 1)
    ids, cnt = pop.ranked()
    seen = [np.zeros(0, np.int64), ids.copy(), np.array([10**6, 10**6 + 1]), np.array([ids[0], ids[0], ids[2]])]
    seen += [rng.choice(np.arange(1, 500), size=int(m), replace=False) for m in rng.integers(0, 450, 60)]
    for k in (1, 20, 500):
        recs = pop.recommend(seen, seen, k)
        for u, s in enumerate(seen):
            keep = [(int(i), float(c)) for i, c in zip(ids, cnt) if i not in set(s.tolist())][:k]
            pad = k - len(keep)
            assert recs.items[u].tolist() == [i for i, _ in keep] + [-1] * pad, (k, u)
            assert recs.scores[u].tolist() == [c for _, c in keep] + [-np.inf] * pad, (k, u)


class Echo(Recommender):
    name, version = "echo", "1"

    def can_score(self, seq):
        return len(seq) >= 2

    def recommend(self, sequences, seen, k):
        n = len(sequences)
        items = np.array([[s[-1] + 1000] + [-1] * (k - 1) for s in sequences], np.int64)
        return Recommendations(items, np.zeros((n, k), np.float32), [self.name] * n, [self.version] * n)


@pytest.mark.parametrize("id_range", [(0, 5000), (-(2**62), 2**62)])  # one int64 key; ids too far apart for one
def test_popularity_order_equals_a_two_key_sort(id_range):
    """Most counted first, ties by smaller id: as ``np.lexsort`` orders them, with many ties."""
    rng = np.random.default_rng(7)
    for n in (1, 2, 30, 500):
        ids = rng.choice(np.arange(*id_range, max((id_range[1] - id_range[0]) // 1000, 1)), n, replace=False)
        cnt = rng.integers(1, 6, n)
        assert by_count_then_id(ids, cnt).tolist() == np.lexsort((ids, -cnt)).tolist()


def test_fallback_routes_short_histories_to_popularity():
    pop = PopularityRecommender(window=10)
    pop.observe(np.array([7, 7, 8]))
    fb = FallbackRecommender(Echo(), pop)
    recs = fb.recommend([np.array([1, 2]), np.array([5])], [np.array([1, 2]), np.array([5])], k=2)
    assert recs.items.tolist() == [[1002, -1], [7, 8]]
    assert recs.models == ["echo", "popularity"]


def test_settings_from_env_and_args():
    import argparse

    s = Settings.from_env({"STREAMREC_TOP_K": "5", "STREAMREC_BOOTSTRAP_SERVERS": "k:9092"})
    assert (s.top_k, s.bootstrap_servers) == (5, "k:9092")
    with pytest.raises(ValueError, match="STREAMREC_TOP_K"):
        Settings.from_env({"STREAMREC_TOP_K": "many"})
    p = argparse.ArgumentParser()
    Settings.add_arguments(p)
    assert Settings.from_args(p.parse_args(["--top-k", "9", "--db", "x.duckdb"])).top_k == 9
