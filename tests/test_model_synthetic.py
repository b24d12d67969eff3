"""End-to-end on synthetic streams: sequential structure is learnt, popularity is hard to beat
when there is none. Uses the real pipeline: Ratings -> sequences -> split -> train -> evaluate."""

import numpy as np
import pytest
import torch

from streamrec.model.config import ModelConfig, TrainConfig
from streamrec.model.data import build_sequences, leave_one_out
from streamrec.model.evaluate import evaluate_split, model_scorer
from streamrec.model.train import train
from streamrec.storage.movielens import Ratings

torch.set_num_threads(1)  # tiny models: threads only add contention on a shared CI box

N_ITEMS, N_USERS, LENGTH = 60, 240, 12


def ratings(users: list[np.ndarray]) -> Ratings:
    """One event per second, users interleaved in time; external ids 1000 + 7 * item."""
    n = len(users[0])
    user = np.repeat(np.arange(len(users)) + 1, n).reshape(len(users), n).T.ravel()
    item = np.stack(users).T.ravel() * 7 + 1000
    return Ratings(user.astype(np.int64), item.astype(np.int64), np.full(len(user), 4.0, np.float32),
                   np.arange(len(user), dtype=np.int64))


def chain_stream(seed=0) -> Ratings:
    """Items form one fixed cycle in random order; every user walks LENGTH steps along it from a
    random start. The next item is a function of the last one: a sequence model should nail it,
    while popularity (nearly uniform here) is lost."""
    rng = np.random.default_rng(seed)
    cycle = rng.permutation(N_ITEMS)
    starts = rng.integers(0, N_ITEMS, N_USERS)
    return ratings([cycle[(s + np.arange(LENGTH)) % N_ITEMS] for s in starts])


def popularity_stream(seed=0, n_items=400) -> Ratings:
    """Every user draws distinct items from one Zipf-like distribution over a larger catalogue,
    in random order: the best possible ranking is the global popularity order, and any
    "sequential pattern" a model finds is noise."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1) ** 1.1
    p /= p.sum()
    return ratings([rng.choice(n_items, size=LENGTH, replace=False, p=p) for _ in range(N_USERS)])


def fit_and_evaluate(stream: Ratings, kind: str) -> dict[str, dict[str, float]]:
    seqs, vocab = build_sequences(stream, min_user_events=5)
    split = leave_one_out(seqs)
    mcfg = ModelConfig(kind=kind, n_items=len(vocab), max_len=16, d_model=32, n_heads=2, dropout=0.1)
    tcfg = TrainConfig(epochs=25, batch_size=32, lr=5e-3, warmup_steps=10, patience=25, seed=0)
    res = train(split, mcfg, tcfg, progress=False)
    assert res.history and res.best_epoch >= 1
    return evaluate_split({kind: model_scorer(res.model)}, split, len(vocab), sampled=False)


@pytest.mark.parametrize("kind", ["sasrec", "bert4rec"])
def test_sequential_stream_models_beat_popularity_by_far(kind):
    res = fit_and_evaluate(chain_stream(), kind)
    model, pop = res[kind]["NDCG@10"], res["popularity"]["NDCG@10"]
    assert pop < 0.25
    assert model > 0.6 and model > 3 * pop, res  # measured: SASRec 1.0, BERT4Rec 0.8 vs 0.2
    assert res[kind]["HitRate@10"] > 0.85


@pytest.mark.parametrize("kind", ["sasrec", "bert4rec"])
def test_popularity_driven_stream_popularity_wins(kind):
    res = fit_and_evaluate(popularity_stream(), kind)
    model, pop = res[kind]["NDCG@10"], res["popularity"]["NDCG@10"]
    assert pop > 0.15  # there is signal to find ...
    # ... and no sequence model beats the popularity order on it: at best it re-learns it (through
    # its output bias) and ties; measured with this seed: popularity 0.220, SASRec 0.218, BERT4Rec 0.216.
    assert pop >= model - 0.01, res
