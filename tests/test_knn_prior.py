"""SASRec with an item-kNN prior: the table is item-kNN's, the model carries it, training takes each
user's own pairs out of it."""

import numpy as np
import pytest
import torch

from streamrec.model.baselines import ItemKNNRecommender
from streamrec.model.checkpoint import load_checkpoint, save_checkpoint
from streamrec.model.config import ModelConfig, TrainConfig
from streamrec.model.data import Sequences
from streamrec.model.knn_prior import knn_table, own_pairs
from streamrec.model.train import _fresh_model
from streamrec.model.transformer import KNN_SCALE, build_model
from streamrec.model.vocab import ItemVocab
from streamrec.model.warm_start import fit, grow_model, grow_vocab

torch.set_num_threads(1)


def random_sequences(n_items, n_users, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, n_items + 1, size=rng.integers(3, 25)) for _ in range(n_users)]


def dense(ids, vals, n):
    return torch.zeros(n + 1, n + 1).scatter_add_(1, torch.from_numpy(ids), torch.from_numpy(vals))[:, 1:]


def test_untruncated_table_gives_item_knn_scores():
    n, seqs = 30, random_sequences(30, 40)
    ids, vals = knn_table(seqs, n, k=n, window=10)
    m = dense(ids, vals, n).double()
    knn = ItemKNNRecommender(window=10, decay=0.8).fit(seqs)
    for h in random_sequences(n, 5, seed=1):
        recent = h[-10:][::-1]
        ours = sum(0.8**a * m[i] for a, i in enumerate(recent))
        c, s = knn.candidates(np.asarray(h))
        theirs = torch.zeros(n).index_add_(0, torch.from_numpy(c - 1), torch.from_numpy(s).float()).double()
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_own_pairs_are_exactly_the_users_share_of_the_prior():
    n, W = 12, 3
    seqs = random_sequences(n, 20)
    ids, vals = knn_table(seqs, n, k=n, window=W)
    counts = torch.from_numpy(np.bincount(np.concatenate(seqs), minlength=n + 1))
    x = seqs[3]
    xp = [0, 0, *x.tolist()]  # left-padded window
    cols, v = own_pairs(torch.tensor([xp]), W, dense(ids, vals, n), counts, torch.ones(W))
    got = torch.zeros(len(xp) - 1, n + 1).scatter_add_(1, cols[0], v[0])[:, 1:]
    want = torch.zeros(len(xp) - 1, n + 1, dtype=torch.float64)  # brute force over the user's pairs
    for p in range(len(xp) - 1):
        for r in range(p - W + 1, p + 1):
            for q in range(len(xp)):
                if r >= 0 and xp[r] and xp[q] and xp[q] != xp[r] and 0 < abs(q - r) <= W:
                    want[p, xp[q]] += 1 / np.sqrt(float(counts[xp[r]] * counts[xp[q]]))
    assert want.sum() > 0
    assert torch.allclose(got.double(), want[:, 1:], atol=1e-6)


def test_prior_steers_an_untrained_model_and_survives_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    seqs = [np.array([1, 2, 3, 4]), np.array([1, 2, 5]), np.array([6, 7, 6, 7])] * 5
    cfg = ModelConfig(n_items=7, max_len=8, d_model=8, n_heads=1, n_layers=1, knn_k=3)
    model = build_model(cfg).eval()
    model.set_knn(*knn_table(seqs, 7, 3))
    s = model.score(torch.tensor([[6]]))
    assert s.argmax().item() + 1 == 7  # 6's only neighbour; the untrained logits are ~0.01
    assert torch.allclose(model.knn_weight, 0.8 ** torch.arange(10.0))
    assert s[0, 6] - s[0, 0] > 0.5 * KNN_SCALE
    save_checkpoint(tmp_path / "ck", model, ItemVocab.from_ids(range(1, 8)))
    back = load_checkpoint(tmp_path / "ck").model
    assert torch.equal(back.score(torch.tensor([[1, 2]])), model.score(torch.tensor([[1, 2]])))


def test_grown_model_rebuilds_its_table_from_the_fine_tuning_data():
    torch.manual_seed(0)
    old = ItemVocab.from_ids([1, 2, 3])
    model = build_model(ModelConfig(n_items=3, max_len=6, d_model=8, n_heads=1, n_layers=1, knn_k=2))
    model.set_knn(*knn_table([np.array([1, 2, 3])], 3, 2))
    new, _ = grow_vocab(old, [4, 5])
    grown = grow_model(model, old, new)
    assert grown.knn_ids.shape == (6, 2) and not grown.knn_ids.any()
    seqs = [np.array([4, 5, 4, 5, 1])] * 4
    grown, _ = fit(grown, seqs, seqs, np.array([5] * 4), TrainConfig(epochs=1, device="cpu"))
    assert grown.knn_ids[4, 0].item() == 5 and grown.knn_ids[5, 0].item() == 4


def test_training_and_serving_compute_the_same_prior():
    seqs = random_sequences(50, 30)
    model = build_model(ModelConfig(n_items=50, max_len=24, d_model=8, n_heads=1, n_layers=1, knn_k=10))
    model.set_knn(*knn_table(seqs, 50, 10))
    recent = model.recent_items(torch.from_numpy(np.stack([s[:3] for s in seqs])))[:, -1]
    dense_path = model.train().knn_prior(recent)  # rows of the dense matrix
    sparse_path = model.eval().knn_prior(recent)  # scattered top-k rows
    assert dense_path.abs().max() > 1 and torch.allclose(dense_path, sparse_path, atol=1e-5)


def test_bert4rec_prior_leaves_the_users_own_pairs_out_of_masked_positions():
    """At each masked position the prior is item-kNN's over the items before it that were not masked,
    less each voter's own pairs with the items within W of it in the unmasked window (brute force);
    a random item swapped in votes with the whole table (those pairs are not the user's)."""
    n, W = 10, 3
    seqs = random_sequences(n, 25, seed=2)
    counts = np.bincount(np.concatenate(seqs), minlength=n + 1)
    model = build_model(ModelConfig(kind="bert4rec", n_items=n, max_len=16, d_model=8, n_heads=1, n_layers=1,
                                    knn_k=n, knn_window=W)).train()
    model.set_knn(*knn_table(seqs, n, n, W), counts)
    user = seqs[4][:15]
    seq = torch.tensor([[0] * (15 - len(user)) + user.tolist()])
    inputs, labels = model.cloze(seq, generator=torch.Generator().manual_seed(3))
    assert (labels > 0).sum() >= 1
    sel = labels > 0
    got = model._training_prior(inputs, labels, sel).double()

    def pairs(s):  # [n + 1, n + 1]: co-occurrences within W events, either order, as knn_table counts
        c = np.zeros((n + 1, n + 1))
        for i in range(len(s)):
            for j in range(max(0, i - W), min(len(s), i + W + 1)):
                if i != j and s[i] != s[j]:
                    c[s[i], s[j]] += 1
        return c

    norm = np.sqrt(np.maximum(counts, 1)[:, None] * np.maximum(counts, 1)[None, :])
    full = sum(pairs(s) for s in seqs) / norm
    w = (KNN_SCALE * model.knn_weight).detach().double().numpy()
    x, orig, want = inputs[0].tolist(), seq[0].tolist(), []
    for p in sel[0].nonzero().flatten().tolist():
        row = np.zeros(n)
        for a, q in enumerate(range(p - 1, max(-1, p - 1 - W), -1)):
            if 0 < x[q] <= n:  # a swapped-in random item votes with the whole table: not its own pair
                row += w[a] * full[x[q], 1:]
                if x[q] == orig[q]:  # its own pairs in this window (the occurrence at q) come out
                    for r in range(max(0, q - W), min(len(orig), q + W + 1)):
                        if orig[r] and orig[r] != orig[q]:
                            row[orig[r] - 1] -= w[a] / norm[orig[q], orig[r]]
        want.append(row)
    want = torch.tensor(np.array(want))
    assert want.abs().sum() > 0
    assert torch.allclose(got, want, atol=1e-5)


def _group_gap(model) -> float:
    """Mean cosine of item embeddings within the two item groups below, less across them."""
    e = torch.nn.functional.normalize(model.item_emb.weight[1:21].detach(), dim=1)
    sim = e @ e.T
    same = torch.block_diag(torch.ones(10, 10), torch.ones(10, 10)).bool()
    return float(sim[same & ~torch.eye(20, dtype=torch.bool)].mean() - sim[~same].mean())


def test_knn_embedding_init_starts_co_occurring_items_close():
    """``emb_init="knn"`` (BERT4Rec's recipe): training starts with items that co-occur close together,
    so the tied output layer begins at the co-occurrence structure; the normal init knows nothing of it."""
    rng = np.random.default_rng(0)
    seqs = [rng.choice(np.arange(1, 11) + 10 * (u % 2), 6, replace=False) for u in range(40)]  # two groups
    data = Sequences.from_list(np.arange(40), seqs)
    gaps = {}
    for init in ("normal", "knn"):
        cfg = ModelConfig.defaults("bert4rec", 20, max_len=12, d_model=16, emb_init=init)
        gaps[init] = _group_gap(_fresh_model(cfg, TrainConfig(), data, torch.device("cpu")))
    assert gaps["knn"] > 0.3 and abs(gaps["normal"]) < 0.1, gaps
    with pytest.raises(ValueError, match="emb_init"):
        ModelConfig(n_items=20, emb_init="svd")


def test_item_dropout_hides_item_identity_in_training_only():
    torch.manual_seed(0)
    cfg = ModelConfig(n_items=20, max_len=8, d_model=16, n_heads=2, n_layers=1, dropout=0.0, item_dropout=1.0)
    model = build_model(cfg)
    a, b = torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5, 6]])
    assert torch.equal(model.train().encode(a), model.encode(b))  # every item dropped: positions alone
    assert not torch.allclose(model.eval().encode(a), model.encode(b))
