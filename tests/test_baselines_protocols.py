"""Simple baselines (incremental = bulk, serve as Recommenders) and the offline protocols."""

from pathlib import Path

import numpy as np
import pytest
import torch

from streamrec.model.baselines import ItemKNNRecommender, TransitionRecommender
from streamrec.model.config import ModelConfig, TrainConfig
from streamrec.model.data import Sequences, Split
from streamrec.model.protocols import (
    VALID_MAX_EVENTS,
    VALID_QUANTILE,
    EvalSet,
    event_metrics,
    later_events,
    paired_bootstrap,
    rank_events,
    temporal_split,
)
from streamrec.model.recommender import FallbackRecommender, PopularityRecommender
from streamrec.model.train import train
from streamrec.storage.movielens import Ratings, load_ratings


def _stream(n_users=40, n_events=600, seed=0):
    """Users walk a ring of 30 items (after i comes i + 1), with a random start."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1, n_users + 1, n_events)
    pos = {u: int(rng.integers(1, 31)) for u in range(1, n_users + 1)}
    items = []
    for u in users.tolist():
        items.append(pos[u])
        pos[u] = pos[u] % 30 + 1
    return np.array(items, np.int64), users


@pytest.mark.parametrize("cls", [TransitionRecommender, ItemKNNRecommender])
def test_incremental_updates_equal_a_bulk_fit(cls):
    items, users = _stream()
    inc = cls()
    for a in range(0, len(items), 97):  # micro-batches of any size
        inc.observe(items[a : a + 97], users=users[a : a + 97])
    bulk = cls().fit([items[users == u] for u in np.unique(users)])
    assert inc.model.rows == bulk.model.rows and len(inc.model.rows) > 0
    assert np.array_equal(inc.model.count(np.arange(31)), bulk.model.count(np.arange(31)))


def test_item2item_learns_the_successor_and_never_returns_seen_items():
    items, users = _stream()
    m = TransitionRecommender()
    m.observe(items, users=users)
    recs = m.recommend([np.array([3, 7]), np.array([30])], [np.array([3, 7, 8]), np.array([30])], k=5)
    assert recs.items[1, 0] == 1  # the ring wraps: after 30 comes 1
    assert 8 not in recs.items[0] and 7 not in recs.items[0] and (recs.items[0] >= 0).all()  # popularity fills
    assert recs.models == ["item2item"] * 2
    # dense offline scores agree with the served list
    s = m.scorer(30)([np.array([30])])
    assert int(torch.argmax(s[0])) + 1 == 1


def test_itemknn_scores_neighbours_and_serves_as_fallback():
    items, users = _stream()
    knn = ItemKNNRecommender(window=3)
    fb = FallbackRecommender(knn, PopularityRecommender(window=100), min_history=1)
    fb.observe(items)  # users unknown: popularity learns, item-kNN does not
    assert knn.model.rows == {}
    knn.observe(items, users=users)
    top = knn.recommend([np.array([10])], [np.array([10])], k=4).items[0].tolist()
    assert set(top) <= {7, 8, 9, 11, 12, 13}  # within 3 steps either way on the ring
    assert fb.recommend([np.array([], np.int64)], [np.array([], np.int64)], k=3).models == ["popularity"]


def test_temporal_split_histories_are_strictly_earlier_and_unknown_items_miss():
    # user 1: items 1,2 at t=1; 3 at t=5; user 2: 1,2,3,4 then 9 (new at T) and 3 at the same second
    r = Ratings(user=np.array([1, 1, 2, 2, 2, 2, 1, 2, 2]), item=np.array([1, 2, 1, 2, 3, 4, 3, 9, 3]),
                rating=np.ones(9, np.float32), timestamp=np.array([1, 1, 2, 2, 2, 2, 5, 6, 6]))
    r = Ratings(r.user, np.where(np.arange(9) == 8, 2, r.item), r.rating, r.timestamp)  # last: item 2 again
    t = temporal_split(r, quantile=0.7, min_user_events=1)
    assert 2 < t.cut_time <= 5
    dec = [t.vocab.decode(h).tolist() for h in t.test.histories]
    assert t.test.users.tolist() == [1, 2, 2]
    assert dec[0] == [1, 2] and dec[1] == dec[2] == [1, 2, 3, 4]  # same-second events: not history
    assert t.vocab.decode(t.test.targets).tolist() == [3, -1, 2]  # item 9 unknown at T
    ranks = rank_events(lambda hs: torch.tensor([[4.0, 3.0, 2.0, 1.0]] * len(hs)), t.test)
    assert ranks["masked"][1] == -1 and ranks["unmasked"].tolist() == [2, -1, 1]
    assert ranks["masked"].tolist()[0] == 0  # items 1, 2 seen: 3 is first among the rest


def test_metrics_and_paired_bootstrap():
    m = event_metrics(np.array([0, 9, 10, -1]))
    assert m["Recall@10"].tolist() == [1, 1, 0, 0] and m["MRR@10"].tolist() == [1, 0.1, 0, 0]
    assert m["Precision@10"].sum() == pytest.approx(0.2) and np.allclose(m["MAP@10"], m["MRR@10"])
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(200), 3)
    a = rng.random(600)
    assert paired_bootstrap(a, a, users) == (0.0, 0.0, 0.0)
    d, lo, hi = paired_bootstrap(a + 0.05, a + rng.normal(0, 0.1, 600), users)
    assert lo < d < hi and lo > 0  # a real difference: the interval excludes zero
    d, lo, hi = paired_bootstrap(a, a + rng.normal(0, 0.1, 600), users)
    assert lo < 0 < hi  # no difference: it includes zero
    es = EvalSet([np.array([1])], np.array([2]), np.array([5]))
    assert rank_events(lambda hs: torch.zeros(len(hs), 3), es)["unmasked"].tolist() == [2]  # ties count against


@pytest.mark.parametrize("name", ["popularity", "item2item", "itemknn"])
def test_worker_builds_the_configured_baseline_warm_from_the_store(name, tmp_path):
    from dataclasses import fields

    from streamrec.model.baselines import BASELINES
    from streamrec.storage.batch import EventBatch
    from streamrec.storage.store import EventStore
    from streamrec.streams.config import Settings
    from streamrec.streams.events import event_key
    from streamrec.streams.model_switch import build_recommender

    items, users = _stream(n_events=200)
    ids = [f"{u}:{i}:{t}" for t, (u, i) in enumerate(zip(users, items))]
    store = EventStore(tmp_path / "w.duckdb")
    try:
        store.append(EventBatch.of(key=[event_key(i) for i in ids], event_id=ids, user=users, item=items,
                                   event_time=np.arange(200) * 1000, event_type=["view"] * 200))
        rec = build_recommender(Settings(baseline=name, popularity_window=1000), store)
    finally:
        store.close()
    assert rec.name == name
    top = rec.recommend([np.array([30])], [np.array([30])], k=3).items[0].tolist()
    if name == "item2item":
        assert top[0] == 1  # learnt from the stored events: after 30 comes 1
    assert 30 not in top and min(top) >= 1
    with pytest.raises(ValueError, match="give one of popularity, item2item, itemknn"):
        build_recommender(Settings(baseline="nope"), None)  # refused where settings are read
    choices = next(f for f in fields(Settings) if f.name == "baseline").metadata["choices"]
    assert set(choices) == set(BASELINES)  # the setting offers exactly the baselines there are


def test_recent_validation_is_the_temporal_protocol_one_step_back():
    r = load_ratings(Path(__file__).parent / "data" / "ratings.csv")
    t = temporal_split(r, valid="recent")
    v, pre = t.train, t.train_seqs
    assert v.refit is pre  # the refit learns every pre-T event
    cut_v = int(np.quantile(pre.times, VALID_QUANTILE))
    assert t.cut_time > cut_v and v.train.times.max() < cut_v  # training stops where validation starts
    n_valid = int((pre.times >= cut_v).sum())
    assert len(v.valid_targets) == len(v.valid_histories) == min(n_valid, VALID_MAX_EVENTS) > 1000
    assert len(v.train.items) == len(pre.items) - n_valid  # nothing lost, nothing twice
    # each validation target's history: its user's strictly earlier pre-T events, as (b)'s test builds them
    longest = np.argmax(pre.lengths())
    u0, a, b = int(pre.users[longest]), pre.offsets[longest], pre.offsets[longest + 1]
    times, items = pre.times[a:b], pre.items[a:b]
    every = later_events(pre, cut_v)
    mine = np.flatnonzero(every.users == u0)
    assert len(mine), "the longest user has validation events"
    for k, p in zip(mine, np.flatnonzero(times >= cut_v)):
        assert every.histories[k].tolist() == items[times < times[p]][-200:].tolist()
    last = temporal_split(r, valid="last")
    assert last.train.valid_histories is None and len(last.train.valid_targets) == len(pre)
    with pytest.raises(ValueError, match="recent"):
        temporal_split(r, valid="first")


def test_training_validates_on_the_splits_own_histories():
    # after item i comes i + 1 (a ring of 30); validation asks for the successor of one given item
    seqs = Sequences.from_list(np.arange(60), [np.arange(s, s + 12) % 30 + 1 for s in range(60)])
    hist = [np.array([i]) for i in range(1, 30)]
    split = Split(seqs.users, seqs, np.arange(2, 31), seqs, np.zeros(0, np.int64), valid_histories=hist)
    assert len(split.valid_targets) != len(split.train)  # the training sequences could not be its inputs
    mcfg = ModelConfig(kind="sasrec", n_items=30, max_len=12, d_model=32, n_heads=2, n_layers=1, dropout=0.0)
    res = train(split, mcfg, TrainConfig(epochs=15, patience=15, lr=1e-2, batch_size=16, warmup_steps=5,
                                         max_seconds=None), progress=False)
    assert res.valid["NDCG@10"] > 0.8  # the successor of the given item, learned from the ring
