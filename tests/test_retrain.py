"""Retraining: warm start that grows the vocabulary, fine-tuning that learns new items, the
offline gate (a worse candidate is rejected), corrupt candidates never promoted."""

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from streamrec.model.checkpoint import WEIGHTS
from streamrec.model.config import ModelConfig, TrainConfig
from streamrec.model.inference import TransformerRecommender
from streamrec.model.registry import Registry
from streamrec.model.retrain import RetrainConfig, RetrainError, retrain
from streamrec.model.transformer import build_model
from streamrec.model.vocab import ItemVocab
from streamrec.model.warm_start import grow_model, grow_vocab
from streamrec.storage.movielens import Ratings

torch.set_num_threads(1)

OLD = list(range(10, 40))  # the catalogue of phase 1: users walk a cycle through it
NEW = [5, 41, 42, 43, 44, 45, 46, 47, 48, 49]  # phase 2 brings new items (5 sorts before every old id)


def walks(users, cycle, steps, t0, seed):
    rng = np.random.default_rng(seed)
    rows, t = [], t0
    for u in users:
        s = rng.integers(0, len(cycle))
        for k in range(steps):
            rows.append((u, cycle[(s + k) % len(cycle)], t))
            t += 1
    return rows, t


def ratings(rows) -> Ratings:
    a = np.array(rows, dtype=np.int64)
    return Ratings(a[:, 0], a[:, 1], np.full(len(a), 4.0, np.float32), a[:, 2])


def config(kind="sasrec", **kw) -> RetrainConfig:
    mc = ModelConfig(kind=kind, max_len=10, d_model=32, n_heads=1, n_layers=1, dropout=0.1)
    return RetrainConfig(
        model=mc,
        cold_train=TrainConfig(epochs=30, lr=5e-3, warmup_steps=5, batch_size=32, patience=5),
        train=TrainConfig(epochs=10, lr=5e-3, warmup_steps=5, batch_size=32, patience=3),
        margin=0.01,
        **kw,
    )


@pytest.fixture(scope="module")
def stream():
    p1, t = walks(range(1, 121), OLD, 8, 1_000, seed=0)  # v1 is trained on this
    p2, t = walks(range(200, 260), NEW, 8, t, seed=1)  # new items, sequentially predictable
    p3a, t = walks(range(300, 330), OLD, 6, t, seed=2)  # later traffic on both catalogues
    p3b, t = walks(range(330, 360), NEW, 6, t, seed=3)
    return p1, p2, p3a + p3b


@pytest.fixture(scope="module")
def v2_registry(stream, tmp_path_factory):
    """v1 (cold, first model) then v2 (warm, after the new items arrived)."""
    p1, p2, _ = stream
    root = tmp_path_factory.mktemp("registry")
    reg = Registry(root)
    r1 = retrain(reg, ratings(p1), config())
    r2 = retrain(reg, ratings(p1 + p2), config())
    return root, r1, r2


@pytest.fixture
def reg(v2_registry, tmp_path):
    root, _, _ = v2_registry
    shutil.copytree(root, tmp_path / "reg")
    return Registry(tmp_path / "reg")


@pytest.mark.parametrize("kind", ["sasrec", "bert4rec"])
def test_grow_model_keeps_old_rows_bit_exact(kind):
    torch.manual_seed(0)
    old_vocab = ItemVocab.from_ids([10, 20, 30, 40])
    model = build_model(ModelConfig(kind=kind, n_items=4, max_len=6, d_model=8, n_heads=2, n_layers=1)).eval()
    with torch.no_grad():
        model.out_bias.copy_(torch.randn(4))
    new_vocab, new_ids = grow_vocab(old_vocab, [5, 20, 25, 50, 10])
    assert new_ids.tolist() == [5, 25, 50] and new_vocab.to_list() == [5, 10, 20, 25, 30, 40, 50]
    grown = grow_model(model, old_vocab, new_vocab, seed=0)
    assert grown.cfg.n_items == 7 and grown.cfg.mask_id == 8
    old_sd, sd = model.state_dict(), grown.state_dict()
    pos_old, pos_new = old_vocab.encode(old_vocab.ids), new_vocab.encode(old_vocab.ids)
    assert torch.equal(sd["item_emb.weight"][pos_new], old_sd["item_emb.weight"][pos_old])
    assert torch.equal(sd["out_bias"][pos_new - 1], old_sd["out_bias"][pos_old - 1])
    assert torch.equal(sd["item_emb.weight"][0], old_sd["item_emb.weight"][0])  # padding
    assert torch.equal(sd["item_emb.weight"][8], old_sd["item_emb.weight"][5])  # mask token moved 5 -> 8
    for k in old_sd:
        if k not in ("item_emb.weight", "out_bias"):
            assert torch.equal(sd[k], old_sd[k]), k
    fresh = new_vocab.encode(new_ids)
    assert torch.isfinite(sd["item_emb.weight"][fresh]).all()
    assert not torch.equal(sd["item_emb.weight"][fresh[0]], sd["item_emb.weight"][fresh[1]])
    # Same history -> same scores for the old items (the new model only adds columns).
    hist = np.array([[10, 30, 20]])
    s_old = model.score(torch.from_numpy(old_vocab.encode(hist)))
    s_new = grown.score(torch.from_numpy(new_vocab.encode(hist)))
    assert torch.allclose(s_new[:, pos_new - 1], s_old, atol=1e-5)


def test_first_model_then_warm_retrain_learns_new_items(v2_registry, stream):
    root, r1, r2 = v2_registry
    reg = Registry(root)
    assert (r1.version, r1.promoted, r1.mode, r1.champion_ndcg) == ("v1", True, "cold", None)
    assert "first model" in r1.reason and r1.candidate_ndcg > 0.5  # the cycle is learnable

    assert (r2.version, r2.promoted, r2.mode, r2.parent) == ("v2", True, "warm", "v1")
    assert r2.new_items == len(NEW) and r2.gate_users == 60
    # The gate's held-out targets are new items: v1 cannot know them, v2 learned them.
    assert r2.champion_ndcg == 0.0 and r2.candidate_ndcg > 0.5
    assert reg.champion() == "v2" and reg.get("v1").status == "retired"
    info = reg.get("v2")
    assert info.parent == "v1" and info.cutoff_time == stream[1][-1][2]  # newest event of phase 2
    assert reg.get("v1").cutoff_time == stream[0][-1][2]
    assert info.metrics["gate"]["champion_NDCG@10"] == 0.0 and info.training_seconds > 0

    rec = TransformerRecommender(reg.path("v2"), device="cpu")
    assert rec.version == "v2" and len(rec.vocab) == len(OLD) + len(NEW)
    # Histories walking the new cycle: the next new item is recommended first.
    hists = [np.array(NEW[i : i + 3]) for i in range(6)]
    out = rec.recommend(hists, hists, k=5)
    expected = [NEW[i + 3] for i in range(6)]
    assert (out.items[:, 0] == expected).mean() >= 5 / 6, out.items
    assert np.isin(out.items, NEW).mean() > 0.6
    assert set(out.versions) == {"v2"}
    # ... and the old cycle is still served.
    old_hists = [np.array(OLD[i : i + 3]) for i in range(0, 24, 4)]
    top = rec.recommend(old_hists, old_hists, k=1).items[:, 0]
    assert (top == [OLD[i + 3] for i in range(0, 24, 4)]).mean() >= 5 / 6, top


def test_worse_candidate_is_rejected(reg, stream):
    p1, p2, p3 = stream
    cfg = config(cold=True)
    cfg.cold_train.epochs = 0  # random weights
    res = retrain(reg, ratings(p1 + p2 + p3), cfg)
    assert res.version == "v3" and not res.promoted and res.mode == "cold"
    assert res.candidate_ndcg < res.champion_ndcg - cfg.margin
    assert f"{res.candidate_ndcg:.4f} < champion v2 {res.champion_ndcg:.4f}" in res.reason
    assert reg.champion() == "v2"
    info = reg.get("v3")
    assert info.status == "rejected" and info.reason == res.reason
    assert info.metrics["gate"]["NDCG@10"] == res.candidate_ndcg


def test_good_warm_candidate_is_promoted_on_new_traffic(reg, stream):
    p1, p2, p3 = stream
    res = retrain(reg, ratings(p1 + p2 + p3), config())
    assert res.promoted and res.new_items == 0 and res.gate_users == 60
    assert res.candidate_ndcg >= res.champion_ndcg - 0.01
    assert reg.champion() == "v3" and reg.get("v3").parent == "v2" and reg.rollback() == "v2"


def test_corrupt_candidate_is_never_promoted(reg, stream, monkeypatch):
    p1, p2, p3 = stream
    register = Registry.register

    def register_then_truncate(self, *a, **kw):  # a disk fault right after the candidate is written
        version = register(self, *a, **kw)
        w = self.path(version) / WEIGHTS
        w.write_bytes(w.read_bytes()[:100])
        return version

    monkeypatch.setattr(Registry, "register", register_then_truncate)
    res = retrain(reg, ratings(p1 + p2 + p3), config())
    assert not res.promoted and res.reason.startswith("corrupt candidate")
    assert reg.champion() == "v2" and reg.get(res.version).status == "rejected"


def test_warm_start_from_a_corrupt_champion_is_refused(reg, stream):
    p1, p2, p3 = stream
    (reg.path("v2") / WEIGHTS).write_bytes(b"garbage")
    with pytest.raises(RetrainError, match="cannot be loaded"):
        retrain(reg, ratings(p1 + p2 + p3), config())
    assert reg.champion() == "v2" and len(reg.list()) == 2


def test_nothing_new_since_the_champion(reg, stream):
    p1, p2, _ = stream
    with pytest.raises(RetrainError, match="cut-off"):
        retrain(reg, ratings(p1 + p2), config())


def test_bert4rec_warm_retrain(tmp_path, stream):
    p1, p2, _ = stream
    reg = Registry(tmp_path)
    assert retrain(reg, ratings(p1), config("bert4rec")).promoted
    r2 = retrain(reg, ratings(p1 + p2), config("bert4rec"))
    assert r2.promoted and r2.new_items == len(NEW) and r2.candidate_ndcg > 0.3
    rec = TransformerRecommender(reg.path(reg.champion()), device="cpu")
    hists = [np.array(NEW[i : i + 3]) for i in range(6)]
    assert np.isin(rec.recommend(hists, hists, k=3).items, NEW).mean() > 0.6


def test_recent_window_and_replay_bound_the_fine_tuning_set(reg, stream):
    p1, p2, p3 = stream
    events = ratings(p1 + p2 + p3)
    small = retrain(reg, events, config(window_events=60, replay_fraction=0.0))
    # 60 events of 6-event walks: 10 users; the gate still covers all 60 users with new events.
    assert small.train_sequences == 10 and small.gate_users == 60
    if small.promoted:  # gate the next one against v2 again
        reg.rollback()
    wide = retrain(reg, events, config(replay_fraction=1.0))
    assert wide.train_sequences == len(np.unique(events.user))  # every user: recent ones + all replayed


def test_a_first_model_is_gated_against_popularity(v2_registry, tmp_path):
    """No champion to compare with: the candidate must not lose to what a worker serves without a
    model. The cycle-walking v1 beats popularity; an untrained model on popularity-driven clicks does not."""
    root, r1, _ = v2_registry
    assert r1.promoted and ">= popularity" in r1.reason, r1.reason
    gate = Registry(root).get("v1").metrics["gate"]
    assert gate["NDCG@10"] > gate["popularity_NDCG@10"] + 0.01

    rng = np.random.default_rng(5)
    weights = 1.0 / np.arange(1, 31) ** 1.2  # Zipf clicks over 30 items, no order to learn
    rows = [(u, 10 + int(i), 1_000 + 8 * u + k) for u in range(1, 151)
            for k, i in enumerate(rng.choice(30, size=8, replace=False, p=weights / weights.sum()))]
    untrained = dataclasses.replace(config(), cold_train=TrainConfig(epochs=1, lr=1e-7, warmup_steps=1, batch_size=32,
                                                                     patience=1))
    reg = Registry(tmp_path / "reg")
    r = retrain(reg, ratings(rows), untrained)
    assert not r.promoted and r.status == "rejected" and reg.champion() is None
    assert "< popularity" in r.reason and "popularity keeps serving" in r.reason, r.reason
    r = retrain(Registry(tmp_path / "reg2"), ratings(rows), dataclasses.replace(untrained, popularity_gate=False))
    assert r.promoted and "not measured" in r.reason  # the mechanics' tests turn it off
