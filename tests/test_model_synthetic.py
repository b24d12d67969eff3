"""End-to-end on synthetic streams: sequential structure is learnt, popularity is hard to beat
when there is none. Uses the real pipeline: Ratings -> sequences -> split -> train -> evaluate."""

from dataclasses import replace

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


def first_item_stream(seed=0) -> Ratings:
    """Every user starts with one of two "sign-up" items (popular nowhere else), then walks the
    chain: only a model that learns how sequences *start* can score a user with no history."""
    rng = np.random.default_rng(seed)
    cycle = rng.permutation(np.arange(2, N_ITEMS))
    starts = rng.integers(0, len(cycle), N_USERS)
    return ratings([np.append(rng.integers(0, 2), cycle[(s + np.arange(LENGTH - 1)) % len(cycle)]) for s in starts])


def test_start_token_scores_users_with_no_history():
    seqs, vocab = build_sequences(first_item_stream(), min_user_events=5)
    split = leave_one_out(seqs)
    tcfg = TrainConfig(epochs=15, batch_size=32, lr=5e-3, warmup_steps=10, patience=15, seed=0)
    signup = vocab.encode([1000, 1007])  # items 0 and 1 as external ids
    top2 = {}
    for start in (False, True):
        mcfg = ModelConfig(kind="sasrec", n_items=len(vocab), max_len=16, d_model=32, n_heads=2, dropout=0.1,
                           start_token=start)
        model = train(split, mcfg, tcfg, progress=False).model
        empty = model_scorer(model)([np.zeros(0, np.int64)])[0]
        top2[start] = set((torch.topk(empty, 2).indices + 1).tolist())
        # A history that fills the input whole gets no start token (its start is not in view), a
        # shorter one gets it: the same weights score them as the plain model does, or not.
        full = torch.from_numpy(np.arange(16)[None] % len(vocab) + 1)
        with_token = model.score(full), model.score(full[:, 1:])
        model.cfg = replace(model.cfg, start_token=False)
        assert torch.equal(with_token[0], model.score(full))
        assert torch.equal(with_token[1], model.score(full[:, 1:])) != start
    assert top2[True] == set(signup.tolist())  # the sign-up items, learned from the start token
    assert top2[False] != set(signup.tolist())  # without it, an empty history scores noise


def test_refit_trains_on_the_validation_items_too():
    """The refit trains again on the training and validation items together, for the validated run's
    best number of epochs: the same validation history, a different model (other data, other weights)."""
    seqs, vocab = build_sequences(chain_stream(), min_user_events=5)
    split = leave_one_out(seqs)
    mcfg = ModelConfig(kind="sasrec", n_items=len(vocab), max_len=16, d_model=32, n_heads=2, dropout=0.1)
    tcfg = TrainConfig(epochs=6, batch_size=32, lr=5e-3, warmup_steps=10, patience=6, seed=0)
    plain = train(split, mcfg, tcfg, progress=False)
    refit = train(split, mcfg, TrainConfig.from_dict({**tcfg.to_dict(), "refit": True}), progress=False)
    assert plain.refit_epochs == 0 and refit.refit_epochs == refit.best_epoch == plain.best_epoch
    assert refit.model is not plain.model and refit.history == plain.history  # same validated run
    diff = [(a - b).abs().max().item() for a, b in zip(plain.model.parameters(), refit.model.parameters())]
    assert max(diff) > 0  # other data: other weights
