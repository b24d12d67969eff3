"""The transformer modules: shapes, padding/trimming invariance, and that each model can overfit."""

import numpy as np
import pytest
import torch

from streamrec.model.config import ModelConfig
from streamrec.model.data import pad_left
from streamrec.model.transformer import BERT4Rec, SASRec, build_model

torch.set_num_threads(1)  # tiny models: threads only add contention on a shared CI box


def tiny(kind, n_items=30, **kw):
    torch.manual_seed(0)
    cfg = dict(kind=kind, n_items=n_items, max_len=12, d_model=32, n_heads=2, n_layers=2, dropout=0.0)
    return build_model(ModelConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize("kind", ["bert4rec", "sasrec"])
@pytest.mark.parametrize("pre_ln", [True, False])
def test_last_only_and_padding_trim_do_not_change_scores(kind, pre_ln):
    model = tiny(kind, pre_ln=pre_ln)
    seqs = [np.array([3, 4, 5]), np.array([7, 1, 9, 2, 8, 6]), np.array([11])]
    trimmed = torch.from_numpy(pad_left(seqs))  # [3, 6]
    padded = torch.from_numpy(pad_left(seqs, model.history_len))  # [3, 11 or 12]
    s_trim, s_pad = model.score(trimmed), model.score(padded)
    assert s_trim.shape == (3, 30)
    torch.testing.assert_close(s_trim, s_pad, atol=1e-5, rtol=1e-5)
    # each user scored alone, without any padding, gets the same scores as in the batch
    for i, s in enumerate(seqs):
        torch.testing.assert_close(model.score(torch.from_numpy(s)[None]), s_trim[i : i + 1], atol=1e-5, rtol=1e-5)
    # the last-position shortcut equals the full forward pass
    x = model._inference_input(padded)
    with torch.no_grad():
        full = model.encode(x)[:, -1]
        last = model.encode(x, last_only=True)[:, -1]
    torch.testing.assert_close(full, last, atol=1e-5, rtol=1e-5)


def test_sasrec_is_causal_and_bert4rec_is_not():
    seq = torch.tensor([[3, 4, 5, 6]])
    changed = torch.tensor([[3, 4, 5, 9]])
    for model, same in ((tiny("sasrec"), True), (tiny("bert4rec"), False)):
        with torch.no_grad():
            a, b = model.encode(seq)[0, :3], model.encode(changed)[0, :3]
        assert torch.allclose(a, b, atol=1e-6) is same


def test_cloze_masking_proportions():
    model = tiny("bert4rec", n_items=1000, max_len=200)
    seq = torch.randint(1, 1001, (400, 200))
    seq[:, :50] = 0  # padding is never masked
    inputs, labels = model.cloze(seq, generator=torch.Generator().manual_seed(0))
    chosen = labels > 0
    assert not chosen[:, :50].any()
    assert torch.equal(labels[chosen], seq[chosen])
    frac = chosen[:, 50:].float().mean().item()
    assert 0.14 < frac < 0.16
    masked = (inputs[chosen] == model.cfg.mask_id).float().mean().item()
    kept = (inputs[chosen] == seq[chosen]).float().mean().item()
    assert 0.77 < masked < 0.83 and 0.08 < kept < 0.12  # 80% mask; ~10% kept (+ random hits itself)
    assert torch.equal(inputs[~chosen], seq[~chosen])
    assert chosen.any(1).all()  # at least one prediction per sequence


def test_cloze_last_mask_windows_predict_their_newest_item_alone():
    seq = torch.randint(1, 1001, (400, 200))
    seq[:, :50] = 0
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    inputs, labels = tiny("bert4rec", n_items=1000, max_len=200, last_mask=1.0).cloze(seq, generator=gen())
    assert torch.equal(labels[:, -1], seq[:, -1]) and not labels[:, :-1].any()  # the newest item, alone
    assert (inputs[:, -1] == 1001).all() and torch.equal(inputs[:, :-1], seq[:, :-1])  # masked; the rest clean
    inputs, labels = tiny("bert4rec", n_items=1000, max_len=200, last_mask=0.25).cloze(seq, generator=gen())
    alone = (labels > 0).sum(1) == 1
    assert 0.18 < alone.float().mean().item() < 0.32  # ~a quarter (a cloze row of 150 items is never alone)
    assert (inputs[alone, -1] == 1001).all()
    # The default draws exactly what it drew before the option existed.
    a = tiny("bert4rec", n_items=1000, max_len=200).cloze(seq, generator=gen())
    b = tiny("bert4rec", n_items=1000, max_len=200, last_mask=0.0).cloze(seq, generator=gen())
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_scores_cover_real_items_only():
    model = tiny("bert4rec")
    s = model.score(torch.tensor([[1, 2, 3]]))
    assert s.shape == (1, model.cfg.n_items)  # no column for padding (0) or the mask token (n+1)
    assert torch.isfinite(s).all()


def test_sampled_softmax_loss_trains():
    torch.manual_seed(0)
    model = tiny("sasrec", negatives=8).train()
    seqs = torch.from_numpy(pad_left([np.arange(1, 11), np.arange(11, 21)]))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = model(seqs[:, :-1], seqs[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.parametrize("kind", ["sasrec", "bert4rec"])
def test_each_model_overfits_a_tiny_dataset(kind):
    """Six fixed random sequences: after training, every user's next item is ranked first."""
    rng = np.random.default_rng(0)
    users = [rng.choice(np.arange(1, 31), size=10, replace=False) for _ in range(6)]
    torch.manual_seed(0)
    model = tiny(kind).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.from_numpy(pad_left(users))
    for _ in range(300):
        if isinstance(model, SASRec):
            loss = model(x[:, :-1], x[:, 1:])
        else:
            assert isinstance(model, BERT4Rec)
            loss = model(*model.cloze(x, generator=gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    # predict the last item of each training sequence from the items before it
    pred = model.score(torch.from_numpy(pad_left([u[:-1] for u in users]))).argmax(1) + 1
    assert pred.tolist() == [int(u[-1]) for u in users]
    if isinstance(model, SASRec):  # and every next item along the way
        with torch.no_grad():
            logits = model.logits(model.encode(x[:, :-1]))
        # (position 0 sees a single item, which two users may share: skip it)
        assert torch.equal(logits.argmax(-1)[:, 1:] + 1, x[:, 2:])
