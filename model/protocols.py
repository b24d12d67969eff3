"""The offline protocols side by side, their five metrics and paired bootstrap intervals.

(a) **leave-one-out**, full ranking: each user's newest item is the target, everything before it
    the history; ranked against every item with the user's seen items masked (``a-masked``) or
    not (``a-unmasked``, how RecBole 1.2.1 scores sequential models).
(b) **global temporal split**: train on events before the time T by which ``quantile`` of events
    have happened; score *every* later event, with the user's *strictly earlier* events as history
    (same-second events are neither history nor masked for each other: their order is unknown),
    seen items masked; targets unknown at T are misses.

One target per event, so Precision@10 = Recall@10 / 10 and MAP@10 = MRR@10; all five are printed
because they are what other tables report. Means are over events (for (a), one per user);
intervals resample users (a user's events stay together).

>>> m = event_metrics(np.array([0, 1, 9, 10, -1]))
>>> [round(float(m[k].mean()), 4) for k in METRICS]
[0.384, 0.6, 0.32, 0.06, 0.32]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from streamrec.model.data import Sequences, Split, build_sequences, holdout_last, length_sorted_batches
from streamrec.model.evaluate import Scorer, full_ranks
from streamrec.model.vocab import ItemVocab
from streamrec.storage.movielens import Ratings

METRICS = ["NDCG@10", "Recall@10", "MRR@10", "Precision@10", "MAP@10"]
PROTOCOLS = ["a-masked", "a-unmasked", "b"]


@dataclass
class EvalSet:
    """Events to score: per event a history (item indices, oldest first), a target (0 = unknown
    item, always a miss) and the user it belongs to (the bootstrap's unit)."""

    histories: list[np.ndarray]
    targets: np.ndarray
    users: np.ndarray


def loo_set(split: Split) -> EvalSet:
    return EvalSet(split.test_inputs.as_list(), split.test_targets, split.users)


@dataclass
class TemporalSplit:
    cut_time: int  # T: training events have timestamp < T
    train: Split  # pre-T sequences, newest item of each user held out for early stopping
    train_seqs: Sequences  # all pre-T events per user (what the baselines count)
    vocab: ItemVocab  # items known at T
    test: EvalSet


def temporal_split(ratings: Ratings, quantile: float = 0.9, max_history: int = 200,
                   min_user_events: int = 5) -> TemporalSplit:
    """Protocol (b) on time-ordered ``ratings`` (users with < ``min_user_events`` events dropped,
    as in (a))."""
    users, counts = np.unique(ratings.user, return_counts=True)
    ratings = ratings.filter(np.isin(ratings.user, users[counts >= min_user_events]))
    cut = int(np.quantile(ratings.timestamp, quantile))
    before = ratings.timestamp < cut
    seqs, vocab = build_sequences(ratings.filter(before), min_user_events=1)
    # Every event's history: the same user's strictly earlier events, known items only.
    idx = vocab.encode(ratings.item)
    order = np.argsort(ratings.user, kind="stable")  # per user, time order kept
    u, it, ts = ratings.user[order], idx[order], ratings.timestamp[order]
    bounds = np.flatnonzero(np.diff(u)) + 1
    histories, targets, owners = [], [], []
    for a, b in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(u)]])):
        t_u, i_u = ts[a:b], it[a:b]
        for p in np.flatnonzero(t_u >= cut):
            h = i_u[: np.searchsorted(t_u, t_u[p], side="left")]
            histories.append(h[h > 0][-max_history:])
            targets.append(i_u[p])
            owners.append(u[a])
    test = EvalSet(histories, np.asarray(targets, np.int64), np.asarray(owners, np.int64))
    return TemporalSplit(cut, holdout_last(seqs), seqs, vocab, test)


def rank_events(scorer: Scorer, es: EvalSet, batch_size: int = 256) -> dict[str, np.ndarray]:
    """0-based ranks of every target, masked and unmasked (-1: unknown target, a miss)."""
    n = len(es.targets)
    masked, unmasked = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    known = np.flatnonzero(es.targets > 0)
    lengths = np.array([len(es.histories[i]) for i in known])
    for b in length_sorted_batches(lengths, batch_size):
        rows = known[b]
        hs, t = [es.histories[i] for i in rows], es.targets[rows]
        scores = scorer(hs).float()
        target = scores[torch.arange(len(rows)), torch.from_numpy(t - 1).to(scores.device)]
        unmasked[rows] = ((scores >= target[:, None]).sum(1) - 1).cpu().numpy()  # ties count against
        masked[rows] = full_ranks(scores, hs, t).cpu().numpy()
    return {"masked": masked, "unmasked": unmasked}


def event_metrics(ranks: np.ndarray, k: int = 10) -> dict[str, np.ndarray]:
    """Per-event metrics at ``k`` from 0-based ranks (-1 = miss)."""
    r = np.asarray(ranks, np.float64)
    hit = (r >= 0) & (r < k)
    r = np.where(hit, r, k)  # misses: any value keeps the formulas finite, hit zeroes them
    rr = np.where(hit, 1.0 / (r + 1), 0.0)
    return {"NDCG@10": np.where(hit, 1.0 / np.log2(r + 2), 0.0), "Recall@10": hit.astype(np.float64),
            "MRR@10": rr, "Precision@10": hit / k, "MAP@10": rr}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, users: np.ndarray, n_boot: int = 2000,
                     seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``a - b`` over events and its percentile interval, resampling users with their events."""
    _, inv = np.unique(users, return_inverse=True)
    d = np.bincount(inv, weights=np.asarray(a, np.float64) - b)
    c = np.bincount(inv).astype(np.float64)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(d), size=(n_boot, len(d)))
    boot = d[pick].sum(1) / c[pick].sum(1)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(d.sum() / c.sum()), float(lo), float(hi)
