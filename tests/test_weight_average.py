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
