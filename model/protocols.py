"""The offline protocols side by side, their five metrics and paired bootstrap intervals.

(a) **leave-one-out**, full ranking: each user's newest item is the target, everything before it
    the history; ranked against every item with the user's seen items masked (``a-masked``) or
    not (``a-unmasked``, how RecBole 1.2.1 scores sequential models).
(b) **global temporal split**: train on events before the time T by which ``quantile`` of events
    have happened; score *every* later event, with the user's *strictly earlier* events as history
    (same-second events are neither history nor masked for each other: their order is unknown),
    seen items masked; targets unknown at T are misses. Early stopping validates the same way one
    step back (``temporal_holdout``: the newest 5% of the pre-T events).

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
    train: Split  # pre-T sequences and the validation of early stopping (``valid``)
    train_seqs: Sequences  # all pre-T events per user (what the baselines count)
    vocab: ItemVocab  # items known at T
    test: EvalSet


VALID_QUANTILE = 0.95  # "recent" validation: the newest 5% of the pre-T events
VALID_MAX_EVENTS = 10_000  # at most this many of them (a seeded sample), so an epoch's validation stays cheap


def temporal_split(ratings: Ratings, quantile: float = 0.9, max_history: int = 200,
                   min_user_events: int = 5, valid: str = "recent") -> TemporalSplit:
    """Protocol (b) on time-ordered ``ratings`` (users with < ``min_user_events`` events dropped,
    as in (a)). ``valid``: how early stopping validates, ``"recent"`` (``temporal_holdout``: the
    test's protocol one step back) or ``"last"`` (each user's newest pre-T event, the old way)."""
    if valid not in ("recent", "last"):
        raise ValueError(f"valid must be 'recent' or 'last', not {valid!r}")
    users, counts = np.unique(ratings.user, return_counts=True)
    ratings = ratings.filter(np.isin(ratings.user, users[counts >= min_user_events]))
    cut = int(np.quantile(ratings.timestamp, quantile))
    before = ratings.timestamp < cut
    seqs, vocab = build_sequences(ratings.filter(before), min_user_events=1)
    order = np.argsort(ratings.user, kind="stable")  # per user, time order kept
    u = ratings.user[order]
    offsets = np.concatenate([[0], np.flatnonzero(np.diff(u)) + 1, [len(u)]]).astype(np.int64)
    everyone = Sequences(u[offsets[:-1]], offsets, vocab.encode(ratings.item)[order], ratings.timestamp[order])
    test = later_events(everyone, cut, max_history)
    held = temporal_holdout(seqs, max_history=max_history) if valid == "recent" else holdout_last(seqs)
    return TemporalSplit(cut, held, seqs, vocab, test)


def later_events(seqs: Sequences, cut: int, max_history: int = 200) -> EvalSet:
    """Every event of ``seqs`` (with times) at or after ``cut``, its history the same user's strictly
    earlier events (same-second ones are neither; index 0, an unknown item, is left out of it)."""
    histories, targets, owners = [], [], []
    for user, a, b in zip(seqs.users, seqs.offsets[:-1], seqs.offsets[1:]):
        t_u, i_u = seqs.times[a:b], seqs.items[a:b]
        for p in np.flatnonzero(t_u >= cut):
            h = i_u[: np.searchsorted(t_u, t_u[p], side="left")]
            histories.append(h[h > 0][-max_history:])
            targets.append(i_u[p])
            owners.append(user)
    return EvalSet(histories, np.asarray(targets, np.int64), np.asarray(owners, np.int64))


def temporal_holdout(seqs: Sequences, quantile: float = VALID_QUANTILE, max_history: int = 200,
                     max_events: int = VALID_MAX_EVENTS, seed: int = 0) -> Split:
    """Early stopping for (b) the way (b) tests: train on the events before the time by which
    ``quantile`` of ``seqs``' events have happened, validate on every later one (at most
    ``max_events``, a seeded sample) with its user's strictly earlier events as history, refit on all.
    Each user's newest event (the "last" way) mixes targets from the whole period; (b) asks how a model
    trained up to a time does after it, and a validation peak that does not carry forward in time
    is what made ML-100K's (b) runs with late best epochs lose (docs/accuracy.md, "Recent validation").

    >>> s = Sequences(np.array([7, 8]), np.array([0, 3, 5]), np.array([1, 2, 3, 1, 4]), np.array([1, 2, 9, 1, 9]))
    >>> h = temporal_holdout(s, quantile=0.8)
    >>> h.train.as_list(), h.valid_histories, h.valid_targets.tolist(), h.refit is s
    ([array([1, 2]), array([1])], [array([1, 2]), array([1])], [3, 4], True)
    """
    cut = int(np.quantile(seqs.times, quantile))
    valid = later_events(seqs, cut, max_history)
    if len(valid.targets) > max_events:
        pick = np.sort(np.random.default_rng(seed).choice(len(valid.targets), max_events, replace=False))
        valid = EvalSet([valid.histories[i] for i in pick], valid.targets[pick], valid.users[pick])
    before = seqs.times < cut
    counts = np.bincount(np.repeat(np.arange(len(seqs)), seqs.lengths())[before], minlength=len(seqs))
    keep = counts > 0
    train = Sequences(seqs.users[keep], np.concatenate([[0], np.cumsum(counts[keep])]).astype(np.int64),
                      seqs.items[before], seqs.times[before])
    empty = np.zeros(0, np.int64)
    return Split(train.users, train, valid.targets, Sequences(empty, np.zeros(1, np.int64), empty), empty,
                 refit=seqs, valid_histories=valid.histories)


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
