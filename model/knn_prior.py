"""The item-kNN prior of "SASRec with an item-kNN prior": a top-K neighbour table per item.

The same co-occurrence as ``baselines.ItemKNNRecommender`` (items within ``window`` consecutive
events of one user, either order, cosine-normalised by the items' event counts), computed from
the transformer's *training* sequences only and truncated to each item's ``k`` strongest
neighbours, so the table is a fixed-size tensor the checkpoint can carry ([n_items + 1, k] ids and
values; row 0, padding, is empty). The transformer adds a learned, per-age weighted sum of the rows
of the user's last ``window`` items to its logits and learns the residual over item-kNN.

>>> ids, vals = knn_table([np.array([1, 2, 3]), np.array([1, 2])], n_items=3, k=2, window=1)
>>> ids.tolist()  # item 1's neighbours: 2 (twice together); item 3's: 2
[[0, 0], [2, 0], [1, 3], [2, 0]]
>>> round(float(vals[1, 0]), 4)  # 2 pairs / sqrt(2 events * 2 events)
1.0
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def knn_table(sequences: Sequence[np.ndarray], n_items: int, k: int, window: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine neighbours of every item index 1..n_items (0 = no neighbour, value 0)."""
    seqs = [np.asarray(s, np.int64) for s in sequences]
    counts = np.bincount(np.concatenate(seqs) if seqs else np.zeros(0, np.int64), minlength=n_items + 1)
    src, dst = [], []
    for s in seqs:
        for lag in range(1, window + 1):
            src.append(s[:-lag])
            dst.append(s[lag:])
    ids = np.zeros((n_items + 1, k), np.int64)
    vals = np.zeros((n_items + 1, k), np.float32)
    if not src:
        return ids, vals
    a, b = np.concatenate(src + dst), np.concatenate(dst + src)  # undirected: both orders
    keep = a != b
    key, cnt = np.unique(a[keep] * (n_items + 1) + b[keep], return_counts=True)
    a, b = key // (n_items + 1), key % (n_items + 1)
    cos = cnt / np.sqrt(np.maximum(counts[a], 1) * np.maximum(counts[b], 1))
    order = np.lexsort((b, -cos, a))  # per row a: strongest first (ties: smaller id, as the baseline)
    a, b, cos = a[order], b[order], cos[order]
    start = np.searchsorted(a, a, side="left")
    rank = np.arange(len(a)) - start
    top = rank < k
    ids[a[top], rank[top]] = b[top]
    vals[a[top], rank[top]] = cos[top]
    return ids, vals


def own_pairs(x: torch.Tensor, window: int, dense: torch.Tensor, counts: torch.Tensor,
              weight: torch.Tensor, voters: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What a training sequence itself put into the prior, to take back out (leave-user-out).

    The table is counted from the training sequences, so at a training position the target and
    the user's other items get a share of the prior that came from this very user: a leak that
    held-out targets never enjoy, and the model would learn to over-trust the prior. For windows
    ``x`` [B, L + 1] (left-padded, inputs ``x[:, :-1]``) returns (columns, values) [B, L, M]: at input
    position p, the prior of item ``columns - 1`` holds ``values`` (weight of the voting item's age
    times one pair / sqrt(n_h n_j)) from the user's own pairs (h, j) within ``window`` events.
    Pairs the top-k table dropped (``dense`` [n + 1, n] is 0 there) are not counted.
    ``voters`` (same shape as ``x``, default ``x``): the items that voted in the prior, where they
    differ from the sequence the table counted (BERT4Rec: a masked item does not vote, its pairs
    with the items around it are in the table all the same).
    """
    B, T = x.shape
    L, dev = T - 1, x.device
    off = torch.cat([torch.arange(-window, 0, device=dev), torch.arange(1, window + 1, device=dev)])
    hpos = torch.arange(L, device=dev)[:, None] - torch.arange(window, device=dev)  # [L, W]: voter of age a
    qpos = hpos[..., None] + off  # [L, W, 2W]: its partners
    h = (x if voters is None else voters)[:, hpos.clamp(min=0)]  # [B, L, W]
    j = x[:, qpos.clamp(0, T - 1)]  # [B, L, W, 2W]
    ok = (hpos >= 0)[..., None] & (qpos >= 0) & (qpos < T)
    ok = ok & (h > 0)[..., None] & (j > 0) & (j != h[..., None])
    hh = h[..., None].expand_as(j)
    ok = ok & (dense[hh, (j - 1).clamp(min=0)] > 0)
    n = counts.to(torch.float32)
    val = weight[:, None] / torch.sqrt(n[hh].clamp(min=1) * n[j].clamp(min=1))
    val = torch.where(ok, val, torch.zeros((), device=dev))
    return j.reshape(B, L, -1), val.reshape(B, L, -1)
