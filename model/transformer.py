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

from streamrec.model.config import ModelConfig
from streamrec.model.data import Sequences, pad_left, windows


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
        x = self.drop(self.item_emb(seq) + self.pos_emb(pos))
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

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Scores of the real items 1..n_items (column j is item j + 1) for hidden states h [..., d]."""
        return h @ self.item_emb.weight[1 : self.cfg.n_items + 1].T + self.out_bias

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
        return self.logits(h).float()


class BERT4Rec(SequentialTransformer):
    """Bidirectional encoder trained with the cloze task; predicts a mask token appended at the end."""

    causal = False

    def cloze(self, seq: torch.Tensor, generator: torch.Generator | None = None):
        """Mask ~mask_prob of the real positions: 80% -> mask token, 10% -> random item, 10% kept.
        Returns (inputs, labels) with label 0 where nothing is predicted."""
        cfg, real = self.cfg, seq > 0
        chosen = (torch.rand(seq.shape, generator=generator) < cfg.mask_prob) & real
        # Every sequence predicts at least its newest item: short sequences still teach something,
        # and a masked last position is exactly what inference asks.
        chosen[~chosen.any(1), -1] = True
        labels = torch.where(chosen, seq, 0)
        r = torch.rand(seq.shape, generator=generator)
        inputs = seq.clone()
        inputs[chosen & (r < 0.8)] = cfg.mask_id
        swap = chosen & (r >= 0.8) & (r < 0.9)
        inputs[swap] = torch.randint(1, cfg.n_items + 1, (int(swap.sum()),), generator=generator)
        return inputs, labels

    def training_windows(self, seqs: Sequences) -> list[np.ndarray]:
        return windows(seqs, self.cfg.max_len, min_len=1)

    def make_batch(self, ws: list[np.ndarray], gen: torch.Generator | None = None):
        return self.cloze(torch.from_numpy(pad_left(ws)), generator=gen)

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the full item vocabulary at the masked positions."""
        sel = labels > 0
        h = self.encode(inputs)[sel]  # project only the positions that have a label
        return F.cross_entropy(self.logits(h).float(), labels[sel] - 1)

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
        return windows(seqs, self.cfg.max_len + 1, min_len=2)  # input = w[:-1], targets = w[1:]

    def make_batch(self, ws: list[np.ndarray], gen: torch.Generator | None = None):
        """(inputs [B, L], targets [B, L, future]): targets[:, p, j] is the item j + 1 steps after
        position p within the window (0 past its end)."""
        x = torch.from_numpy(pad_left(ws))  # [B, L + 1]
        L, k = x.size(1) - 1, self.cfg.future
        shifted = F.pad(x, (0, k - 1))  # zeros after the window's end
        targets = torch.stack([shifted[:, 1 + j : 1 + j + L] for j in range(k)], dim=2)
        targets[x[:, :-1] == 0] = 0  # padding positions predict nothing
        return x[:, :-1], targets

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
            logp = F.log_softmax(self.logits(h).float(), dim=-1)
            valid = t > 0
            picked = logp.gather(1, (t - 1).clamp(min=0)) * valid
            nll = -picked.sum(1) / valid.sum(1)
            return ((1 - ls) * nll - ls * logp.mean(1)).mean()
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
