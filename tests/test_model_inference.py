"""Checkpoints round-trip exactly and never unpickle; the worker-facing recommender masks seen
items, drops unknown ones and falls back to popularity."""

import json
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from streamrec.model.checkpoint import CARD, WEIGHTS, load_checkpoint, save_checkpoint
from streamrec.model.config import ModelConfig
from streamrec.model.inference import TransformerRecommender
from streamrec.model.recommender import FallbackRecommender, PopularityRecommender
from streamrec.model.transformer import build_model
from streamrec.model.vocab import ItemVocab
from streamrec.storage.seen_items import SeenItems

torch.set_num_threads(1)  # tiny models: threads only add contention on a shared CI box

IDS = np.array([5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60])  # external ids of the 12 items


def make(kind, tmp_path, **card):
    torch.manual_seed(1)
    cfg = ModelConfig(kind=kind, n_items=len(IDS), max_len=8, d_model=16, n_heads=2, dropout=0.3)
    model = build_model(cfg)
    with torch.no_grad():  # make the output bias matter so the ranking is not all ties
        model.out_bias.copy_(torch.linspace(0, 1, len(IDS)))
    return save_checkpoint(tmp_path / kind, model.eval(), ItemVocab(IDS), **card), model


@pytest.mark.parametrize("kind", ["sasrec", "bert4rec"])
def test_checkpoint_roundtrip_is_exact_and_never_unpickles(kind, tmp_path, monkeypatch):
    path, model = make(kind, tmp_path, data={"cutoff_time": 1234}, metrics={"valid": {"NDCG@10": 0.5}},
                       training_seconds=1.5)
    assert sorted(p.name for p in path.iterdir()) == [CARD, WEIGHTS]
    with safe_open(path / WEIGHTS, "pt") as f:  # a real safetensors file
        assert f.metadata()["kind"] == kind and "item_emb.weight" in f.keys()

    def no_unpickling(*a, **k):
        raise AssertionError("checkpoint loading must not unpickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    ck = load_checkpoint(path)
    assert not ck.model.training
    for (n, a), (_, b) in zip(model.state_dict().items(), ck.model.state_dict().items()):
        assert torch.equal(a, b), n
    x = torch.tensor([[0, 0, 3, 1, 7], [2, 4, 6, 8, 10]])
    assert torch.equal(model.score(x), ck.model.score(x))
    card = json.loads((path / CARD).read_text())
    assert card["items"] == IDS.tolist() and card["config"]["kind"] == kind
    assert card["data"]["cutoff_time"] == 1234 and card["training_seconds"] == 1.5
    assert ck.version == card["version"] and ck.vocab.to_list() == IDS.tolist()
    # the recommender built from the directory gives the same lists and the card's version
    rec = TransformerRecommender(path, device="cpu")
    assert (rec.name, rec.version) == (kind, card["version"])
    a = rec.recommend([np.array([5, 10, 15])], [np.array([5, 10, 15])], k=5)
    b = TransformerRecommender(ck, device="cpu").recommend([np.array([5, 10, 15])], [np.array([5, 10, 15])], k=5)
    assert np.array_equal(a.items, b.items) and np.array_equal(a.scores, b.scores)


@pytest.fixture(scope="module", params=["sasrec", "bert4rec"])
def rec(request, tmp_path_factory):
    path, _ = make(request.param, tmp_path_factory.mktemp("ck"))
    return TransformerRecommender(path, device="cpu")


ext_ids = st.sampled_from(IDS.tolist() + [1, 2, 999])  # some unknown to the model


@settings(max_examples=60, deadline=None)
@given(
    seqs=st.lists(st.lists(ext_ids, max_size=12), min_size=1, max_size=6),
    extra_seen=st.lists(st.lists(ext_ids, max_size=12), min_size=6, max_size=6),
    k=st.integers(1, 15),
)
def test_seen_items_never_come_back(rec, seqs, extra_seen, k):
    seqs = [np.array(s, dtype=np.int64) for s in seqs]
    seen = [np.union1d(s, e).astype(np.int64) for s, e in zip(seqs, extra_seen)]
    out = rec.recommend(seqs, seen, k)
    assert out.items.shape == out.scores.shape == (len(seqs), k)
    for i in range(len(seqs)):
        row, scores = out.items[i], out.scores[i]
        got = row[row >= 0]
        assert not set(got.tolist()) & set(seen[i].tolist())
        assert set(got.tolist()) <= set(IDS.tolist()) and len(set(got.tolist())) == len(got)
        n_left = len(set(IDS.tolist()) - set(seen[i].tolist()))
        assert len(got) == min(k, n_left)  # everything unseen is offered, padding only after
        assert np.all(row[len(got):] == -1) and np.all(np.isneginf(scores[len(got):]))
        assert np.all(np.diff(scores[: len(got)]) <= 0)
    assert out.models == [rec.name] * len(seqs)


def test_unknown_items_are_dropped_and_can_score(rec):
    known, noisy = np.array([5, 20, 35]), np.array([999, 5, 1, 20, 2, 35])
    a = rec.recommend([known], [known], 4)
    b = rec.recommend([noisy], [known], 4)
    assert np.array_equal(a.items, b.items)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    assert rec.can_score(noisy) and not rec.can_score(np.array([1, 2, 999])) and not rec.can_score(np.array([]))
    # longer histories than the model takes are cut to the newest items
    long = np.tile(IDS, 3)
    c = rec.recommend([long], [np.array([], np.int64)], 3)
    d = rec.recommend([long[-rec.model.history_len :]], [np.array([], np.int64)], 3)
    assert np.array_equal(c.items, d.items)


def test_batching_does_not_change_results(rec):
    rng = np.random.default_rng(0)
    seqs = [rng.choice(IDS, size=rng.integers(1, 10)) for _ in range(40)]
    seen = [np.array([], np.int64)] * 40
    whole = rec.recommend(seqs, seen, 5)
    rec_small = TransformerRecommender.__new__(TransformerRecommender)
    rec_small.__dict__.update(rec.__dict__, batch_size=3)
    parts = rec_small.recommend(seqs, seen, 5)
    assert np.array_equal(whole.items, parts.items)
    np.testing.assert_allclose(whole.scores, parts.scores, rtol=1e-5, atol=1e-6)


def test_worker_fallback_to_popularity(rec):
    pop = PopularityRecommender(window=100)
    pop.observe(np.array([60, 60, 60, 55, 55, 50]))
    fb = FallbackRecommender(rec, pop, min_history=1)
    out = fb.recommend([np.array([5, 10]), np.array([999]), np.array([], np.int64)],
                       [np.array([5, 10]), np.array([999]), np.array([], np.int64)], k=2)
    assert out.models == [rec.name, "popularity", "popularity"]
    assert out.items[1].tolist() == [60, 55] and out.versions[0] == rec.version


def test_each_list_is_what_the_model_gives_that_user_alone(rec):
    """The batched path (all users' items encoded at once, histories placed into one padded array)
    against scoring each user by hand: the newest known items, left-padded, seen items masked."""
    rng = np.random.default_rng(3)
    pool = np.concatenate([IDS, [1, 2, 999]])
    seqs = [rng.choice(pool, size=n) for n in rng.integers(0, 25, 30)]  # longer than history_len too
    seqs[0] = np.array([1, 999])  # nothing known
    seen = [np.union1d(s, rng.choice(IDS, 3)) for s in seqs]
    out = rec.recommend(seqs, seen, 4)
    coded = rec.recommend(seqs, SeenItems.of(seen), 4)  # the store's flat form of the same seen items
    assert np.array_equal(out.items, coded.items) and np.array_equal(out.scores, coded.scores)
    for i, (s, sn) in enumerate(zip(seqs, seen)):
        h = rec.vocab.encode(s)
        h = h[h > 0][-rec.model.history_len:]
        with torch.inference_mode():
            x = torch.from_numpy(h.reshape(1, -1) if len(h) else np.zeros((1, 1), np.int64))
            scores = rec.model.score(x)[0]
            masked = rec.vocab.encode(sn)
            scores[masked[masked > 0] - 1] = float("-inf")
            top = torch.topk(scores, 4)
        want = np.where(np.isfinite(top.values.numpy()), rec.vocab.decode(top.indices.numpy() + 1), -1)
        assert out.items[i].tolist() == want.tolist(), i
        np.testing.assert_allclose(out.scores[i], top.values.numpy(), rtol=1e-5, atol=1e-6)


def test_can_score_all_is_can_score_of_each(rec):
    seqs = [np.array([5, 20]), np.array([999]), np.array([], np.int64), np.array([1, 2, 60])]
    assert rec.can_score_all(seqs).tolist() == [rec.can_score(s) for s in seqs] == [True, False, False, True]


@settings(max_examples=80, deadline=None)
@given(ids=st.sets(st.integers(-5, 3_000_000), max_size=40),
       items=st.lists(st.integers(-10, 3_000_001), max_size=30))
def test_vocab_lookup_table_and_binary_search_agree(ids, items):
    """Small non-negative ids go through a direct table, others through searchsorted: the same map."""
    vocab = ItemVocab.from_ids(sorted(ids))
    items = np.array(items + sorted(ids)[:5], dtype=np.int64)
    want = {e: j + 1 for j, e in enumerate(sorted(ids))}
    assert vocab.encode(items).tolist() == [want.get(x, 0) for x in items.tolist()]
    small = ItemVocab.from_ids([x for x in ids if 0 <= x < 1000])
    assert small.encode(items).tolist() == [small.smap.get(x, 0) for x in items.tolist()]
    assert (small._table is not None) == (len(small) > 0)
