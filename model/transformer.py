"""BERT4Rec and SASRec, nanoGPT-style: a shared transformer Block and two thin models on top.

Sequences are *left*-padded with 0, so the newest item is always the last column. Positions are
counted from the right end (the newest item gets position max_len - 1 whatever the length), so a
batch can be trimmed to its longest sequence at inference and the model sees what it saw in
training. Output scores are dot products with the item embedding table (tied weights) over the
real items 1..n_items only: padding and the mask token can never be recommended.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from streamrec.model import history
from streamrec.model.config import ModelConfig
from streamrec.model.data import Sequences, pad_left, windows
from streamrec.model.knn_prior import knn_table, own_pairs

KNN_SCALE = 10.0  # the item-kNN prior's weights are parameters times this
REPEAT_SCALE = 10.0  # the repeat score is its parameter times this (Adam moves it ~lr a step)


class Block(nn.Module):
    """Self-attention + MLP with residuals; pre-LN (GPT-2) or post-LN (original BERT/SASRec)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.pre_ln = cfg.n_heads, cfg.pre_ln
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc = nn.Linear(d, 4 * d)
        self.fc_out = nn.Linear(4 * d, d)
        self.drop = nn.Dropout(cfg.dropout)

    def attention(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool) -> torch.Tensor:
        B, L, D = x.shape
        w, b = self.qkv.weight, self.qkv.bias
        # Keys and values are needed at every position, queries only where we want outputs.
        q = F.linear(x[:, -1:] if last_only else x, w[:D], b[:D])
        k, v = F.linear(x, w[D:], b[D:]).split(D, dim=2)
        if last_only:
            mask = mask[..., -1:, :]

        def heads(t):  # [B, T, D] -> [B, H, T, D/H]
            return t.view(B, t.size(1), self.n_heads, D // self.n_heads).transpose(1, 2)

        # No dropout on the attention probabilities: on CPU drawing the [B, H, L, L] mask cost about
        # a third of a training step; the residual and embedding dropouts remain.
        y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask)
        return self.drop(self.proj(y.transpose(1, 2).reshape(B, -1, D)))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc_out(F.gelu(self.fc(x))))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """``mask``: bool, True where a query may attend to a key; [B, 1, L, L] or [B, 1, 1, L].
        ``last_only``: compute the output of the last position only (the one inference scores)."""
        res = x[:, -1:] if last_only else x
        if self.pre_ln:
            x = res + self.attention(self.ln1(x), mask, last_only)
            return x + self.mlp(self.ln2(x))
        x = self.ln1(res + self.attention(x, mask, last_only))
        return self.ln2(x + self.mlp(x))


class SequentialTransformer(nn.Module):
    """Embeddings + blocks + tied output layer; subclasses choose the attention pattern and loss."""

    causal = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model) if cfg.pre_ln else nn.Identity()
        self.out_bias = nn.Parameter(torch.zeros(cfg.n_items))  # per-item popularity prior
        self.apply(self._init)
        if cfg.knn_k > 0:  # "SASRec with an item-kNN prior": the table comes from set_knn (training data)
            self.register_buffer("knn_ids", torch.zeros(cfg.n_items + 1, cfg.knn_k, dtype=torch.long))
            self.register_buffer("knn_vals", torch.zeros(cfg.n_items + 1, cfg.knn_k))
            # Item counts of the training data: training takes each user's own pairs out of the prior.
            self.register_buffer("knn_counts", torch.zeros(cfg.n_items + 1, dtype=torch.long), persistent=False)
            # One weight per age of the voting item, starting at item-kNN's 0.8 ** age (times KNN_SCALE,
            # so Adam's ~lr-sized steps move the prior's strength at a useful pace).
            self.knn_weight = nn.Parameter(0.8 ** torch.arange(cfg.knn_window, dtype=torch.float32))
            self._dense_knn: tuple | None = None
        if cfg.repeat_bias:  # starts neutral; the data say whether users come back to an item
            self.repeat = nn.Parameter(torch.zeros(()))

    @staticmethod
    def _init(m: nn.Module) -> None:
        # GPT-2 init: small normal weights; the default N(0, 1) embeddings make early logits huge.
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    @property
    def history_len(self) -> int:
        """How many past items fit in the input (BERT4Rec keeps one slot for the mask token)."""
        return self.cfg.max_len - (0 if self.causal else 1)

    def encode(self, seq: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Hidden states [B, L, d] (or [B, 1, d] with ``last_only``) of left-padded ids [B, L]."""
        B, L = seq.shape
        if L > self.cfg.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len={self.cfg.max_len}")
        pos = torch.arange(self.cfg.max_len - L, self.cfg.max_len, device=seq.device)
        x = self.drop(self._item_inputs(seq) + self.pos_emb(pos))
        real = seq != 0
        if self.causal:
            causal = torch.ones(L, L, dtype=torch.bool, device=seq.device).tril()
            eye = torch.eye(L, dtype=torch.bool, device=seq.device)
            # Padding keys are hidden; a padding query sees itself so its softmax is not empty (NaN).
            mask = (causal & real[:, None, None, :]) | eye
        else:
            mask = real[:, None, None, :]
        for i, block in enumerate(self.blocks):
            x = block(x, mask, last_only=last_only and i == len(self.blocks) - 1)
        return self.ln_f(x)

    def _item_inputs(self, seq: torch.Tensor) -> torch.Tensor:
        """Item embeddings of ``seq``; in training, with ``item_dropout``, some real items' are zeroed:
        the position stays (and the prior still counts the item), so the encoder cannot lean on any
        one history item's identity, which the prior already scores."""
        emb = self.item_emb(seq)
        p = self.cfg.item_dropout
        if not self.training or p <= 0:
            return emb
        drop = (torch.rand(seq.shape, device=seq.device) < p) & (seq > 0) & (seq <= self.cfg.n_items)
        return emb.masked_fill(drop[..., None], 0.0)

    def init_emb_from_knn(self) -> None:
        """``emb_init="knn"``: item embeddings from the top ``d_model`` singular vectors of the
        (symmetrised) prior matrix, scaled to the usual init's std 0.02: items that co-occur start
        close, so the tied output layer begins near the co-occurrence structure, not at noise."""
        n, d = self.cfg.n_items, self.cfg.d_model
        s = self.knn_matrix()[1:].float()
        if not bool(s.any()):  # no co-occurrence at all: nothing to start from, the normal init stays
            return
        s = (s + s.T) / 2
        with torch.random.fork_rng(devices=[s.device] if s.is_cuda else []):  # its draws leave training's stream
            u, sv, _ = torch.svd_lowrank(s, q=min(d, n))
        e = torch.zeros(n, d, device=s.device)
        e[:, : u.size(1)] = u * sv.clamp(min=0).sqrt()
        with torch.no_grad():
            self.item_emb.weight[1 : n + 1] = e * (0.02 / e.std().clamp(min=1e-8))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Scores of the real items 1..n_items (column j is item j + 1) for hidden states h [..., d]."""
        return h @ self.item_emb.weight[1 : self.cfg.n_items + 1].T + self.out_bias

    def set_knn(self, ids: np.ndarray, vals: np.ndarray, counts: np.ndarray | None = None) -> None:
        """Load the neighbour table (``knn_prior.knn_table`` of the training sequences) and the
        item counts it came from (without them, training leaves each user's own pairs in)."""
        self.knn_ids.copy_(torch.as_tensor(ids))
        self.knn_vals.copy_(torch.as_tensor(vals))
        self.knn_counts.copy_(torch.as_tensor(counts if counts is not None else np.zeros(len(ids), np.int64)))

    def fit_knn(self, sequences: list[np.ndarray]) -> None:
        """(Re)build the prior's table from item-index ``sequences`` (the data it may count)."""
        seqs = [np.asarray(s, np.int64) for s in sequences]
        counts = np.bincount(np.concatenate(seqs) if seqs else np.zeros(0, np.int64), minlength=self.cfg.n_items + 1)
        self.set_knn(*knn_table(seqs, self.cfg.n_items, self.cfg.knn_k, self.cfg.knn_window), counts)

    def knn_matrix(self) -> torch.Tensor:
        """The table as a dense [n_items + 1, n_items] matrix (row 0 and missing neighbours: 0),
        rebuilt only when the table changed (a new table or loaded weights bump the versions)."""
        key = (self.knn_ids._version, self.knn_vals._version, self.knn_ids.device)
        if self._dense_knn is None or self._dense_knn[0] != key:
            m = torch.zeros(self.cfg.n_items + 1, self.cfg.n_items + 1, device=self.knn_ids.device)
            m.scatter_add_(1, self.knn_ids, self.knn_vals)
            self._dense_knn = (key, m[:, 1:].contiguous())
        return self._dense_knn[1]

    def knn_prior(self, recent: torch.Tensor) -> torch.Tensor:
        """Item-kNN scores [N, n_items] of ``recent`` [N, knn_window] (newest item first, 0 = none).
        Training sums rows of the dense matrix (fast for many positions); inference scatters the
        top-k rows, so a serving model never holds an n_items x n_items matrix."""
        w = KNN_SCALE * self.knn_weight
        if self.training:
            return F.embedding_bag(recent, self.knn_matrix(), per_sample_weights=w.expand_as(recent).contiguous(),
                                   mode="sum")
        vals = self.knn_vals[recent] * w[:, None]  # [N, W, k]
        out = torch.zeros(len(recent), self.cfg.n_items + 1, dtype=vals.dtype, device=vals.device)
        return out.scatter_add_(1, self.knn_ids[recent].flatten(1), vals.flatten(1))[:, 1:]

    def recent_items(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, L, knn_window]: at every position the item there and the ones before it, newest first."""
        W = self.cfg.knn_window
        return F.pad(seq, (W - 1, 0)).unfold(1, W, 1).flip(-1)

    def _without_own_pairs(self, prior: torch.Tensor, x: torch.Tensor, sel: torch.Tensor,
                           voters: torch.Tensor | None = None) -> torch.Tensor:
        """``prior`` at the positions ``sel`` less the user's own pairs in windows ``x`` [B, L + 1]
        (``knn_prior.own_pairs``); in training only, and only once the table's item counts are known."""
        if not self.training or not bool(self.knn_counts.any()):
            return prior
        cols, vals = own_pairs(x, self.cfg.knn_window, self.knn_matrix(), self.knn_counts,
                               KNN_SCALE * self.knn_weight, voters=voters)
        return prior.scatter_add(1, (cols[sel] - 1).clamp(min=0), -vals[sel])

    def _in_rows(self, seq: torch.Tensor) -> torch.Tensor:
        return history.in_rows(seq, self.cfg.n_items)

    def _with_repeat(self, logits: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """``repeat_bias``: the learned repeat score added where ``seen`` [N, n_items] is True. Learned,
        not assumed: on MovieLens nobody rates a film twice and it turns strongly negative (the lists
        then skip seen items even unmasked); on data with re-consumption it would turn positive."""
        return logits + (REPEAT_SCALE * self.repeat) * seen

    def _repeat_at(self, logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """``_with_repeat`` for histories given as (row, item - 1) pairs, each at most once, added in
        place: a history holds ~L of n_items items, so a dense [N, n_items] mask costs ~n_items / L
        times more (a full-length step on ml-latest-small, SASRec / BERT4Rec: +30% / +25% with it). The same logits
        and the same gradient for them; the score's own gradient sums the same terms in another order."""
        return logits.index_put_((rows, cols), (REPEAT_SCALE * self.repeat).expand(len(rows)), accumulate=True)

    def _inference_input(self, seq: torch.Tensor) -> torch.Tensor:
        return seq

    def training_windows(self, seqs: Sequences) -> list[np.ndarray]:
        """Training examples cut from the users' sequences; ``make_batch`` turns a list into tensors."""
        raise NotImplementedError

    def make_batch(self, ws: list[np.ndarray], gen: torch.Generator | None = None):
        """(inputs, labels) tensors for ``forward``, trimmed to the longest window of the batch."""
        raise NotImplementedError

    @torch.inference_mode()
    def score(self, seq: torch.Tensor) -> torch.Tensor:
        """Next-item scores [B, n_items] for left-padded histories [B, L] (L <= history_len)."""
        h = self.encode(self._inference_input(seq), last_only=True)[:, -1]
        out = self.logits(h)
        if self.cfg.knn_k > 0:
            out = out + self.knn_prior(self.recent_items(seq)[:, -1])
        if self.cfg.repeat_bias:
            out = self._with_repeat(out, self._in_rows(seq))
        return out.float()


class BERT4Rec(SequentialTransformer):
    """Bidirectional encoder trained with the cloze task; predicts a mask token appended at the end."""

    causal = False

    def cloze(self, seq: torch.Tensor, generator: torch.Generator | None = None):
        """Mask ~mask_prob of the real positions: 80% -> mask token, 10% -> random item, 10% kept.
        Returns (inputs, labels) with label 0 where nothing is predicted."""
        cfg, real = self.cfg, seq > 0
        chosen = (torch.rand(seq.shape, generator=generator) < cfg.mask_prob) & real
        only_last = None
        if cfg.last_mask > 0:  # (drawn only then: the default's random stream stays as it was)
            # Inference masks one position after a clean history; the cloze rarely shows that (when
            # the newest item is masked, ~mask_prob of the items before it are too). Sun et al. (2019)
            # add windows that mask their last item alone.
            only_last = torch.rand(seq.size(0), generator=generator) < cfg.last_mask
            chosen[only_last] = False
        # Every sequence predicts at least its newest item: short sequences still teach something,
        # and a masked last position is exactly what inference asks.
        chosen[~chosen.any(1), -1] = True
        labels = torch.where(chosen, seq, 0)
        r = torch.rand(seq.shape, generator=generator)
        inputs = seq.clone()
        inputs[chosen & (r < 0.8)] = cfg.mask_id
        swap = chosen & (r >= 0.8) & (r < 0.9)
        inputs[swap] = torch.randint(1, cfg.n_items + 1, (int(swap.sum()),), generator=generator)
        if only_last is not None:
            inputs[only_last, -1] = cfg.mask_id  # always the mask token, as at inference
        return inputs, labels

    def training_windows(self, seqs: Sequences) -> list[np.ndarray]:
        return windows(seqs, self.cfg.max_len, min_len=1)

    def make_batch(self, ws: list[np.ndarray], gen: torch.Generator | None = None):
        return self.cloze(torch.from_numpy(pad_left(ws)), generator=gen)

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the full item vocabulary at the masked positions."""
        sel = labels > 0
        h = self.encode(inputs)[sel]  # project only the positions that have a label
        logits = self.logits(h)
        if self.cfg.knn_k > 0:
            logits = logits + self._training_prior(inputs, labels, sel)
        if self.cfg.repeat_bias:
            logits = self._repeat_at(logits, *history.elsewhere_pairs(inputs, sel, self.cfg.n_items))
        return F.cross_entropy(logits.float(), labels[sel] - 1)

    def _training_prior(self, inputs: torch.Tensor, labels: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
        """The prior of a masked position: the items before it vote, as at inference (a mask token
        votes for nothing); less the user's own pairs, counted in the sequence before masking
        (``own_pairs``: the masked target's co-occurrence with its neighbours is this user's own)."""
        before = F.pad(inputs.masked_fill(inputs == self.cfg.mask_id, 0), (1, 0))  # [B, L + 1]
        prior = self.knn_prior(self.recent_items(before[:, :-1])[sel])
        seq = torch.where(labels > 0, labels, inputs)  # the window as the table counted it
        voters = F.pad(seq.masked_fill(inputs != seq, 0), (1, 0))  # masked or swapped items did not vote
        return self._without_own_pairs(prior, F.pad(seq, (1, 0)), sel, voters)

    def _inference_input(self, seq: torch.Tensor) -> torch.Tensor:
        mask = torch.full((seq.size(0), 1), self.cfg.mask_id, dtype=seq.dtype, device=seq.device)
        return torch.cat([seq[:, -self.history_len :], mask], dim=1)


class SASRec(SequentialTransformer):
    """Causal encoder; every position predicts the items that follow it.

    ``cfg.future`` > 1: each position learns the next ``future`` items (a multi-target softmax),
    not only the very next one. Order inside a burst of same-second events is unknown, so "the
    next item" is a random member of the burst; the items of the near future are the signal.
    """

    causal = True

    def training_windows(self, seqs: Sequences) -> list[np.ndarray]:
        if self.cfg.start_token:  # the first item is learned too, from the start token alone
            seqs = Sequences.from_list(seqs.users, [np.append(self.cfg.mask_id, s) for s in seqs.as_list()])
        return windows(seqs, self.cfg.max_len + 1, min_len=2)  # input = w[:-1], targets = w[1:]

    def _inference_input(self, seq: torch.Tensor) -> torch.Tensor:
        """With ``start_token``: the token before every history that fits whole (fewer than
        max_len items), as in training; an empty history is the start token alone."""
        if not self.cfg.start_token:
            return seq
        n = (seq > 0).sum(1)
        x = F.pad(seq, (1, 0)) if seq.size(1) < self.cfg.max_len else seq.clone()
        at = x.size(1) - 1 - n  # just before the first real item
        rows = ((n < self.cfg.max_len) & (at >= 0)).nonzero().flatten()
        x[rows, at[rows]] = self.cfg.mask_id
        return x

    def make_batch(self, ws: list[np.ndarray], gen: torch.Generator | None = None):
        """(inputs [B, L], targets [B, L, future]): targets[:, p, j] is the item j + 1 steps after
        position p within the window (0 past its end)."""
        x = torch.from_numpy(pad_left(ws))  # [B, L + 1]
        L, k = x.size(1) - 1, self.cfg.future
        shifted = F.pad(x, (0, k - 1))  # zeros after the window's end
        targets = torch.stack([shifted[:, 1 + j : 1 + j + L] for j in range(k)], dim=2)
        targets[x[:, :-1] == 0] = 0  # padding positions predict nothing
        return x[:, :-1], targets

    def _training_prior(self, inputs: torch.Tensor, targets: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
        """The item-kNN prior at the positions ``sel``, less the user's own pairs (``own_pairs``)."""
        inputs = inputs.masked_fill(inputs > self.cfg.n_items, 0)  # the start token votes for nothing
        prior = self.knn_prior(self.recent_items(inputs)[sel])
        x = torch.cat([inputs, targets[:, -1:, 0]], dim=1)  # the whole window: inputs + the last target
        return self._without_own_pairs(prior, x, sel)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Full-softmax cross-entropy (SASRec+) with label smoothing, averaged over the next
        ``future`` items; or sampled softmax over cfg.negatives items shared by the batch (next
        item only) when the catalogue is too large for full logits."""
        if targets.dim() == 2:
            targets = targets[..., None]
        sel = targets[..., 0] > 0
        h, t = self.encode(inputs)[sel], targets[sel]  # [N, d], [N, future]
        n, ls = self.cfg.negatives, self.cfg.label_smoothing
        if n <= 0:
            logits = self.logits(h)
            if self.cfg.knn_k > 0:
                logits = logits + self._training_prior(inputs, targets, sel)
            keep = None
            if self.cfg.mask_seen:  # the history as a dense mask, built once for both
                seen = history.seen_before(inputs, sel, self.cfg.n_items)
                if self.cfg.repeat_bias:
                    logits = self._with_repeat(logits, seen)
                keep = history.unseen(seen, t)
            elif self.cfg.repeat_bias:
                logits = self._repeat_at(logits, *history.history_pairs(inputs, sel, self.cfg.n_items))
            if keep is not None:
                logits = logits.masked_fill(~keep, -1e4)
            logp = F.log_softmax(logits.float(), dim=-1)
            valid = t > 0
            picked = logp.gather(1, (t - 1).clamp(min=0)) * valid
            nll = -picked.sum(1) / valid.sum(1)
            smooth = logp.mean(1) if keep is None else (logp * keep).sum(1) / keep.sum(1)
            return ((1 - ls) * nll - ls * smooth).mean()
        t = t[:, 0]
        neg = torch.randint(1, self.cfg.n_items + 1, (n,), device=h.device)
        w, b = self.item_emb.weight, self.out_bias
        pos = (h * w[t]).sum(-1, keepdim=True) + b[t - 1, None]
        negs = h @ w[neg].T + b[neg - 1]
        negs = negs.masked_fill(neg[None, :] == t[:, None], float("-inf"))  # a negative that is the target
        logits = torch.cat([pos, negs], dim=1).float()
        return F.cross_entropy(logits, torch.zeros(len(t), dtype=torch.long, device=h.device))


def build_model(cfg: ModelConfig) -> SequentialTransformer:
    return {"bert4rec": BERT4Rec, "sasrec": SASRec}[cfg.kind](cfg)
