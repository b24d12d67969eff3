"""Offline evaluation, leave-one-out: rank each user's held-out item given their history.

Two protocols:

* **full ranking** (the honest one): the target is ranked against every item the user has not
  already seen (items in the history are removed from the ranking; the target never is);
* **sampled** (what the BERT4Rec/SASRec papers report): the target against 100 negatives the user
  has not seen, drawn uniformly or in proportion to popularity. Far easier than full ranking (101
  candidates instead of thousands), so the numbers are not comparable with full-ranking ones.

Ranks are 0-based and computed in torch; ties count against the target (a constant scorer gets no
credit). The metrics themselves come from ``model.metrics`` (the same Numba kernels as the online
evaluator).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from streamrec.model.data import Split, length_sorted_batches, pad_left
from streamrec.model.transformer import SequentialTransformer

# histories (lists of item indices) -> scores [B, n_items], column j = item j + 1
Scorer = Callable[[list[np.ndarray]], torch.Tensor]


def model_scorer(model: SequentialTransformer) -> Scorer:
    device = next(model.parameters()).device

    def score(histories: list[np.ndarray]) -> torch.Tensor:
        x = pad_left([h[-model.history_len :] for h in histories])
        if x.shape[1] == 0:  # nobody has history: one padding column keeps shapes valid
            x = np.zeros((len(histories), 1), np.int64)
        return model.score(torch.from_numpy(x).to(device))

    return score


def popularity_scorer(counts: np.ndarray) -> Scorer:
    """Scores = interaction counts (``counts[i]`` for item index i, index 0 unused)."""
    row = torch.as_tensor(np.asarray(counts[1:], dtype=np.float32))
    return lambda histories: row.expand(len(histories), -1)


def item_counts(histories: list[np.ndarray], n_items: int) -> np.ndarray:
    items = np.concatenate(histories) if histories else np.zeros(0, np.int64)
    return np.bincount(items, minlength=n_items + 1).astype(np.int64)


def full_ranks(scores: torch.Tensor, histories: list[np.ndarray], targets: np.ndarray) -> torch.Tensor:
    """0-based rank of each target among the items not in its user's history."""
    scores = scores.float().clone()
    t = torch.from_numpy(np.asarray(targets) - 1).to(scores.device)
    ar = torch.arange(len(t), device=scores.device)
    target = scores[ar, t].clone()  # before masking: the target may repeat a seen item
    lens = [len(h) for h in histories]
    if sum(lens):
        rows = torch.from_numpy(np.repeat(np.arange(len(histories)), lens)).to(scores.device)
        cols = torch.from_numpy(np.concatenate(histories) - 1).to(scores.device)
        scores[rows, cols] = float("-inf")
    scores[ar, t] = target
    return (scores >= target[:, None]).sum(1) - 1


def sampled_ranks(scores: torch.Tensor, targets: np.ndarray, negatives: np.ndarray) -> torch.Tensor:
    """0-based rank of each target among itself and its row of sampled negatives [B, n]."""
    cand = torch.from_numpy(np.concatenate([np.asarray(targets)[:, None], negatives], 1) - 1)
    s = torch.gather(scores.float(), 1, cand.to(scores.device))
    return (s[:, 1:] >= s[:, :1]).sum(1)


def sample_negatives(
    histories: list[np.ndarray],
    targets: np.ndarray,
    n_items: int,
    n: int = 100,
    counts: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """[B, n] distinct item indices per user, none in the history or equal to the target; uniform,
    or proportional to ``counts`` (popularity sampling, as in the BERT4Rec evaluation code)."""
    rng = np.random.default_rng(seed)
    p = None
    if counts is not None:
        w = np.asarray(counts[1:], dtype=np.float64) + 1e-9  # unseen items stay possible
        p = w / w.sum()
    out = np.zeros((len(targets), n), dtype=np.int64)
    for u, (h, t) in enumerate(zip(histories, targets)):
        banned = np.union1d(h, [t])
        if n_items - len(banned) < n:
            raise ValueError(f"user {u} has seen too many items to draw {n} negatives")
        got, rounds = np.zeros(0, np.int64), 0
        while len(got) < n and rounds < 50:
            c = rng.choice(n_items, size=2 * n, p=p) + 1
            c = c[~np.isin(c, banned)]
            c = np.concatenate([got, c])
            _, first = np.unique(c, return_index=True)
            got, rounds = c[np.sort(first)], rounds + 1
        if len(got) < n:  # what is left to draw carries almost no weight (a user who saw the popular items):
            rest = np.setdiff1d(np.arange(1, n_items + 1), np.union1d(banned, got))  # draw from it directly
            q = None if p is None else p[rest - 1] / p[rest - 1].sum()
            got = np.concatenate([got, rng.choice(rest, size=n - len(got), replace=False, p=q)])
        out[u] = got[:n]
    return out


def evaluate_histories(
    scorer: Scorer,
    histories: list[np.ndarray],
    targets: np.ndarray,
    ks=(10, 20),
    batch_size: int = 256,
    negatives: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Full-ranking metrics, plus ``"<name>/<metric>"`` for each set of sampled negatives."""
    from streamrec.model.metrics import summarize  # the shared Numba kernels (online evaluator's module)

    targets = np.asarray(targets, dtype=np.int64)
    negatives = negatives or {}
    full = np.zeros(len(targets), np.int64)
    sampled = {name: np.zeros(len(targets), np.int64) for name in negatives}
    lengths = np.array([len(h) for h in histories])
    for b in length_sorted_batches(lengths, batch_size):
        hs = [histories[i] for i in b]
        scores = scorer(hs)
        full[b] = full_ranks(scores, hs, targets[b]).cpu().numpy()
        for name, neg in negatives.items():
            sampled[name][b] = sampled_ranks(scores, targets[b], neg[b]).cpu().numpy()
    out = {k: float(v) for k, v in summarize(full, ks=ks).items()}
    for name, r in sampled.items():
        out.update({f"{name}/{k}": float(v) for k, v in summarize(r, ks=ks).items()})
    return out


def evaluate_split(
    scorers: dict[str, Scorer],
    split: Split,
    n_items: int,
    part: str = "test",
    sampled: bool = True,
    n_negatives: int = 100,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, dict[str, float]]:
    """Metrics per scorer on the validation or test targets of a leave-one-out split; the
    ``"popularity"`` scorer is added, counted over the inputs (nothing a target could leak)."""
    if part == "test":
        histories, targets = split.test_inputs.as_list(), split.test_targets
    elif part == "valid":
        histories, targets = split.train.as_list(), split.valid_targets
    else:
        raise ValueError(f"part must be 'test' or 'valid', not {part!r}")
    counts = item_counts(histories, n_items)
    scorers = {**scorers, "popularity": popularity_scorer(counts)}
    negatives = None
    # Sampled metrics need n distinct unseen negatives for every user: skip them on tiny catalogues.
    if sampled and all(n_items - len(h) - 1 >= n_negatives for h in histories):
        negatives = {
            "uniform100": sample_negatives(histories, targets, n_items, n_negatives, seed=seed),
            "popular100": sample_negatives(histories, targets, n_items, n_negatives, counts, seed=seed + 1),
        }
    return {
        name: evaluate_histories(s, histories, targets, batch_size=batch_size, negatives=negatives)
        for name, s in scorers.items()
    }
