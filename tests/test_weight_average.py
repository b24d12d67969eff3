"""``TrainConfig.ema``: validation and the returned model use a moving average of the weights."""

import numpy as np
import torch

from streamrec.model.config import ModelConfig, TrainConfig
from streamrec.model.data import Sequences, holdout_last
from streamrec.model.evaluate import evaluate_histories, model_scorer
from streamrec.model.train import WeightAverage, train

torch.set_num_threads(1)


def test_average_follows_the_weights_with_a_ramped_decay():
    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    avg = WeightAverage(lin, decay=0.9)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    avg.update(lin)  # step 1: decay min(0.9, 2/11), so the average moves 9/11 of the way
    assert torch.allclose(avg.avg["weight"], torch.full((1, 2), 9 / 11))
    for _ in range(200):
        avg.update(lin)
    assert torch.allclose(avg.avg["weight"], torch.ones(1, 2), atol=1e-6)


def test_applied_swaps_the_average_in_and_the_live_weights_back():
    lin = torch.nn.Linear(2, 1, bias=False)
    avg = WeightAverage(lin, decay=0.5)
    live = lin.weight.detach().clone()
    avg.avg["weight"] = torch.full((1, 2), 7.0)
    with avg.applied(lin) as m:
        assert torch.equal(m.weight.detach(), torch.full((1, 2), 7.0))
    assert torch.equal(lin.weight.detach(), live)


def test_training_with_ema_returns_the_validated_average():
    rng = np.random.default_rng(0)
    seqs = Sequences.from_list(np.arange(60), [rng.integers(1, 41, size=10) for _ in range(60)])
    split = holdout_last(seqs)
    mcfg = ModelConfig(kind="sasrec", n_items=40, max_len=12, d_model=16, n_heads=2, n_layers=1)
    res = {e: train(split, mcfg, TrainConfig(epochs=4, patience=5, ema=e, max_seconds=None, batch_size=8),
                    progress=False) for e in (0.0, 0.9)}
    w0, w9 = (res[e].model.item_emb.weight.detach() for e in (0.0, 0.9))
    assert not torch.allclose(w0, w9)  # the average is not the last step's weights
    # The returned weights are the ones validation scored (the average, not the live weights)
    again = evaluate_histories(model_scorer(res[0.9].model), split.train.as_list(), split.valid_targets, ks=(10, 20))
    assert again == {k: v for k, v in res[0.9].valid.items() if k in again}



def test_a_refit_that_runs_out_of_time_on_its_last_epoch_still_returns_the_average():
    from streamrec.model.train import _run_epochs
    from streamrec.model.transformer import build_model

    rng = np.random.default_rng(0)
    seqs = Sequences.from_list(np.arange(40), [rng.integers(1, 31, size=9) for _ in range(40)])
    mcfg = ModelConfig(kind="sasrec", n_items=30, max_len=10, d_model=16, n_heads=2, n_layers=1)
    out = {}
    for name, deadline in (("in time", None), ("late", 0.0)):  # 0.0: perf_counter is past it at once
        torch.manual_seed(0)
        model = build_model(mcfg)
        tcfg = TrainConfig(epochs=1, ema=0.9, batch_size=8, shuffle_ties=False)
        _, finished = _run_epochs(model, seqs, tcfg, 1, torch.device("cpu"), deadline, progress=False)
        out[name] = (finished, model.item_emb.weight.detach().clone())
    assert out["in time"][0] and out["late"][0]  # both ran their one epoch
    assert torch.equal(out["in time"][1], out["late"][1])  # and both return the average


class _Clock:
    """A stand-in for the ``time`` module of ``model.train``: seconds pass only when the test says."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def process_time(self) -> float:
        return self.now


def test_the_budget_is_a_bound_an_epoch_starts_only_if_it_should_end_in_time(monkeypatch):
    import streamrec.model.train as train_module

    clock, real_epoch, real_eval = _Clock(), train_module.train_epoch, train_module.evaluate_histories

    def epoch_of_10s(*a, **kw):
        clock.now += 10.0
        return real_epoch(*a, **kw)

    def validation_of_1s(*a, **kw):
        clock.now += 1.0
        return real_eval(*a, **kw)

    monkeypatch.setattr(train_module, "time", clock)
    monkeypatch.setattr(train_module, "train_epoch", epoch_of_10s)
    monkeypatch.setattr(train_module, "evaluate_histories", validation_of_1s)
    rng = np.random.default_rng(0)
    seqs = Sequences.from_list(np.arange(40), [rng.integers(1, 31, size=9) for _ in range(40)])
    mcfg = ModelConfig(kind="sasrec", n_items=30, max_len=10, d_model=16, n_heads=2, n_layers=1)
    tcfg = TrainConfig(epochs=10, patience=100, max_seconds=35, batch_size=8, refit=True)
    res = train(holdout_last(seqs), mcfg, tcfg, progress=False)
    # 11 s an epoch: after the third (33 s) a fourth would end at 44 s, past 35; it is not started,
    # and neither is a refit (3 more epochs). The rule it replaced ran the fourth and ended at 44 s.
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert res.seconds == 33.0 and res.refit_epochs == 0
    clock.now = 0.0
    res = train(holdout_last(seqs), mcfg, TrainConfig(epochs=10, patience=100, max_seconds=36, batch_size=8),
                progress=False)
    assert [h["epoch"] for h in res.history] == [1, 2, 3] and res.seconds == 33.0  # 44 > 36 too
    clock.now = 0.0
    res = train(holdout_last(seqs), mcfg, TrainConfig(epochs=10, patience=100, max_seconds=44, batch_size=8),
                progress=False)
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4] and res.seconds == 44.0  # exactly fits
