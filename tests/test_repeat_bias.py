"""The learned repeat score (``repeat_bias``): one parameter added to the items a history holds,
which training pushes down where users never come back to an item and up where they do."""

import numpy as np
import pytest
import torch

from streamrec.model import history
from streamrec.model.config import ModelConfig
from streamrec.model.data import Sequences
from streamrec.model.transformer import REPEAT_SCALE, build_model

torch.set_num_threads(1)
N_ITEMS = 30


def tiny(kind: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(kind=kind, n_items=N_ITEMS, max_len=12, d_model=16, n_heads=2, n_layers=1, dropout=0.0,
                      repeat_bias=True, **kw)
    return build_model(cfg)


def test_sasrec_history_of_each_position_is_itself_and_what_came_before():
    inputs = torch.tensor([[0, 0, 3, 5, 3, 7], [2, 4, 6, 8, 10, 12]])
    sel = inputs > 0
    got = history.seen_before(inputs, sel, N_ITEMS)
    want = [set(row[: p + 1].tolist()) - {0} for row in inputs for p in range(inputs.size(1)) if row[p] > 0]
    assert got.shape == (len(want), N_ITEMS)
    assert [set((torch.nonzero(g).flatten() + 1).tolist()) for g in got] == want


def _random_batch(seed: int, B: int = 16, L: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded rows with repeats, some led by the start token (SASRec) or showing the mask token
    (BERT4Rec; both are N_ITEMS + 1, no history), and a random selection of positions."""
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randint(1, 8, (B, L), generator=gen)  # 7 items in 20 positions: many repeats
    inputs[::2] = torch.randint(1, N_ITEMS + 1, (len(inputs[::2]), L), generator=gen)  # and items shown once
    inputs[torch.rand(B, L, generator=gen) < 0.15] = N_ITEMS + 1
    pad = torch.randint(0, L, (B,), generator=gen)
    inputs[torch.arange(L)[None, :] < pad[:, None]] = 0
    return inputs, (torch.rand(B, L, generator=gen) < 0.7) & (inputs > 0)


def shown_elsewhere(inputs: torch.Tensor, sel: torch.Tensor, n_items: int) -> torch.Tensor:
    """The dense reference of ``history.elsewhere_pairs`` (the form BERT4Rec's training used before):
    [N, n_items] bool, the items a masked position's row shows, less its own where shown only there."""
    B, V = inputs.size(0), n_items + 2
    count = torch.zeros(B, V, dtype=torch.int32, device=inputs.device)
    count.scatter_add_(1, inputs, torch.ones_like(inputs, dtype=torch.int32))
    rows, own = sel.nonzero()[:, 0], inputs[sel]
    seen = (count > 0)[rows]
    alone = (count[rows, own] == 1).nonzero().flatten()
    seen[alone, own[alone]] = False
    return seen[:, 1 : n_items + 1]


DENSE_AND_PAIRS = {"sasrec": (history.seen_before, history.history_pairs),
                   "bert4rec": (shown_elsewhere, history.elsewhere_pairs)}


@pytest.mark.parametrize("kind", ["sasrec", "bert4rec"])
@pytest.mark.parametrize("seed", range(5))
def test_history_pairs_are_the_dense_history_each_item_once(kind, seed):
    inputs, sel = _random_batch(seed)
    dense_of, pairs_of = DENSE_AND_PAIRS[kind]
    n, cols = pairs_of(inputs, sel, N_ITEMS)
    dense = torch.zeros(int(sel.sum()), N_ITEMS, dtype=torch.int64)
    dense.index_put_((n, cols), torch.ones_like(n), accumulate=True)
    assert torch.equal(dense, dense_of(inputs, sel, N_ITEMS).long())  # once: never a 2


@pytest.mark.parametrize("kind", ["sasrec", "bert4rec"])
def test_sparse_repeat_score_gives_the_dense_logits_and_gradients(kind):
    """Training adds the score at the history's pairs (``_repeat_at``), not through a dense
    [N, n_items] mask: the same logits and logits' gradient exactly; the score's own gradient sums the
    same terms in another order."""
    model = tiny(kind)
    with torch.no_grad():
        model.repeat.fill_(-0.3)
    inputs, sel = _random_batch(0)
    dense_of, pairs_of = DENSE_AND_PAIRS[kind]
    base = torch.randn(int(sel.sum()), N_ITEMS, generator=torch.Generator().manual_seed(1))
    weights = torch.randn_like(base)
    out = []
    for sparse in (False, True):
        logits = base.clone().requires_grad_(True)
        model.repeat.grad = None
        if sparse:
            got = model._repeat_at(logits.clone(), *pairs_of(inputs, sel, N_ITEMS))
        else:
            got = model._with_repeat(logits, dense_of(inputs, sel, N_ITEMS))
        (got * weights).sum().backward()
        out.append((got.detach(), logits.grad, model.repeat.grad.clone()))
    (dense_out, dense_g, dense_r), (sparse_out, sparse_g, sparse_r) = out
    assert torch.equal(dense_out, sparse_out) and torch.equal(dense_g, sparse_g)
    assert torch.allclose(dense_r, sparse_r, rtol=1e-5) and float(dense_r) != 0.0


def test_sasrec_seen_item_mask_keeps_the_targets():
    """``mask_seen`` takes the same history (``seen_before``) out of the softmax, the targets excepted."""
    inputs = torch.tensor([[0, 3, 5, 3, 7], [N_ITEMS + 1, 2, 4, 6, 8]])  # N_ITEMS + 1: the start token
    targets = torch.tensor([[[0, 0], [5, 3], [3, 7], [7, 9], [9, 0]],
                            [[2, 4], [4, 6], [6, 8], [8, 2], [2, 0]]])
    sel = targets[..., 0] > 0
    keep = history.unseen(history.seen_before(inputs, sel, N_ITEMS), targets[sel])
    hidden = [set((torch.nonzero(~k).flatten() + 1).tolist()) for k in keep]
    # row 0, positions 1-4: history {3}, {3, 5}, {3, 5}, {3, 5, 7}; row 1, positions 0-4 (start token first)
    assert hidden == [set(), {5}, {3, 5}, {3, 5, 7}, set(), {2}, {2, 4}, {4, 6}, {4, 6, 8}]


def test_bert4rec_history_of_a_masked_position_is_its_row_without_itself():
    """The cloze may keep the true item at a masked position: that sighting is not history."""
    m = N_ITEMS + 1  # the mask token
    inputs = torch.tensor([[0, 3, m, 5, 3, 7], [2, 4, 6, 8, m, 12]])
    sel = torch.tensor([[False, True, True, False, False, True], [False, False, False, True, True, False]])
    n, cols = history.elsewhere_pairs(inputs, sel, N_ITEMS)
    got = [set((cols[n == k] + 1).tolist()) for k in range(int(sel.sum()))]
    # row 0: position 1 shows 3, which also shows at position 4; position 5 shows 7 only there
    assert got == [{3, 5, 7}, {3, 5, 7}, {3, 5}, {2, 4, 6, 12}, {2, 4, 6, 8, 12}]


@pytest.mark.parametrize("kind", ["sasrec", "bert4rec"])
def test_scores_move_by_the_repeat_score_on_seen_items_only(kind):
    model = tiny(kind).eval()
    seq = torch.tensor([[0, 0, 4, 9, 2], [11, 12, 13, 14, 15]])
    before = model.score(seq)
    with torch.no_grad():
        model.repeat.fill_(-0.5)
    diff = model.score(seq) - before
    seen = torch.zeros_like(diff, dtype=torch.bool)
    for r, row in enumerate(seq):
        seen[r, row[row > 0] - 1] = True
    assert torch.allclose(diff[seen], torch.full_like(diff[seen], -0.5 * REPEAT_SCALE))
    assert torch.all(diff[~seen] == 0)


def _sequences(repeat: bool, n_users: int = 60) -> Sequences:
    """Distinct items per user; with ``repeat`` the user then goes through the same items again."""
    rng = np.random.default_rng(0)
    seqs = [rng.choice(np.arange(1, N_ITEMS + 1), 5, replace=False) for _ in range(n_users)]
    if repeat:
        seqs = [np.concatenate([s, s]) for s in seqs]
    return Sequences.from_list(np.arange(n_users), seqs)


@pytest.mark.parametrize("kind", ["sasrec", "bert4rec"])
@pytest.mark.parametrize("repeat", [False, True])
def test_training_learns_whether_users_come_back(kind, repeat):
    """The sign is the data's: items never repeat -> the score turns negative; every second half of a
    sequence repeats its first -> positive."""
    model = tiny(kind, mask_prob=0.4).train()
    ws = model.training_windows(_sequences(repeat))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        loss = model(*model.make_batch(ws, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    value = float(model.repeat.detach()) * REPEAT_SCALE
    assert (value > 1.0) if repeat else (value < -1.0), value


def test_the_repeat_score_steps_at_its_own_rate_in_every_recipe():
    """BERT4Rec's lr (5e-4) left the score at -1 on ml-latest-small; it gets REPEAT_LR whatever the recipe's."""
    from streamrec.model.config import TrainConfig
    from streamrec.model.train import REPEAT_LR, configure_optimizer

    for kind in ("sasrec", "bert4rec"):
        model = build_model(ModelConfig.defaults(kind, N_ITEMS))
        opt = configure_optimizer(model, TrainConfig.defaults(kind))
        (group,) = [g for g in opt.param_groups if any(p is model.repeat for p in g["params"])]
        assert group["lr"] == REPEAT_LR and len(group["params"]) == 1 and group["weight_decay"] == 0.0
        assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
