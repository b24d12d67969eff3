"""From interactions to per-user item sequences, leave-one-out splits and padded batches.

>>> from streamrec.storage.movielens import Ratings
>>> r = Ratings(np.array([1, 2, 1, 1, 2, 1]), np.array([5, 6, 7, 5, 8, 9]),
...             np.ones(6, np.float32), np.arange(6))
>>> seqs, vocab = build_sequences(r, min_user_events=3)
>>> seqs.users.tolist(), vocab.decode(seqs[0]).tolist()
([1], [5, 7, 5, 9])
>>> s = leave_one_out(seqs)
>>> vocab.decode(s.train[0]).tolist(), vocab.decode(s.valid_targets).tolist(), vocab.decode(s.test_targets).tolist()
([5, 7], [5], [9])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamrec.model.vocab import ItemVocab
from streamrec.storage.movielens import Ratings


@dataclass
class Sequences:
    """Item-index sequences in time order, stored CSR-style: user u has items[offsets[u]:offsets[u+1]]."""

    users: np.ndarray  # external user ids, one per sequence
    offsets: np.ndarray  # int64 [n + 1]
    items: np.ndarray  # int64 item indices (1..n_items)
    times: np.ndarray | None = None  # int64 Unix seconds per item, where known

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u] : self.offsets[u + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def as_list(self) -> list[np.ndarray]:
        return np.split(self.items, self.offsets[1:-1]) if len(self) else []

    def cut(self, start: int, stop: int, min_len: int = 1) -> "Sequences":
        """Per user ``seq[start:stop]`` (Python slice semantics) of the users with >= min_len items."""
        keep = self.lengths() >= min_len
        sl = slice(start, stop)
        parts = [(self.items[a:b][sl], None if self.times is None else self.times[a:b][sl])
                 for a, b, k in zip(self.offsets[:-1], self.offsets[1:], keep) if k]
        out = Sequences.from_list(self.users[keep], [p[0] for p in parts])
        if self.times is not None:
            out.times = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
        return out

    def shuffle_ties(self, rng: np.random.Generator) -> "Sequences":
        """A copy with each user's same-second items in a fresh random order (``times`` needed):
        their true order is unknown, so training on one order would learn the file's."""
        if self.times is None:
            return self
        user = np.repeat(np.arange(len(self)), self.lengths())
        order = np.lexsort((rng.random(len(self.items)), self.times, user))
        return Sequences(self.users, self.offsets, self.items[order], self.times[order])

    def recent_items(self, n: int) -> np.ndarray:
        """The ``n`` newest items over all users, oldest first (needs ``times``)."""
        if self.times is None:
            raise ValueError("these sequences carry no times")
        return self.items[np.argsort(self.times, kind="stable")[-n:]]

    @classmethod
    def from_list(cls, users, seqs: list[np.ndarray]) -> "Sequences":
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        items = np.concatenate(seqs).astype(np.int64) if seqs else np.zeros(0, np.int64)
        return cls(np.asarray(users, dtype=np.int64), offsets, items)


def build_sequences(
    ratings: Ratings,
    min_rating: float | None = None,
    min_user_events: int = 5,
    vocab: ItemVocab | None = None,
) -> tuple[Sequences, ItemVocab]:
    """Group time-ordered interactions by user. Filters: rating >= min_rating, then users with at
    least min_user_events events. Without a ``vocab`` one is built from the kept items; with one,
    unknown items are dropped."""
    if min_rating is not None:
        ratings = ratings.filter(ratings.rating >= min_rating)
    users, counts = np.unique(ratings.user, return_counts=True)
    keep_users = users[counts >= min_user_events]
    ratings = ratings.filter(np.isin(ratings.user, keep_users))
    if vocab is None:
        vocab = ItemVocab.from_ids(ratings.item)
    idx = vocab.encode(ratings.item)
    known = idx > 0
    user, idx, ts = ratings.user[known], idx[known], np.asarray(ratings.timestamp)[known]
    order = np.argsort(user, kind="stable")  # stable: keeps each user's events in time order
    user, idx, ts = user[order], idx[order], ts[order].astype(np.int64)
    uniq, start, counts = np.unique(user, return_index=True, return_counts=True)
    offsets = np.concatenate([start, [len(user)]]).astype(np.int64)
    return Sequences(uniq, offsets, idx, ts), vocab


@dataclass
class Split:
    """Leave-one-out in time order: the newest item is the test target, the one before it the
    validation target, everything earlier is training data."""

    users: np.ndarray
    train: Sequences  # seq[:-2]: training sequences and validation inputs
    valid_targets: np.ndarray
    test_inputs: Sequences  # seq[:-1]
    test_targets: np.ndarray
    refit: Sequences | None = None  # training plus validation items: what a final refit trains on
    valid_histories: list[np.ndarray] | None = None  # None: validate each training sequence's next item

    def __post_init__(self):
        if self.refit is None:
            self.refit = self.test_inputs


def leave_one_out(seqs: Sequences) -> Split:
    keep = seqs.lengths() >= 3  # need a training item, a validation and a test target
    full = seqs.cut(0, None, min_len=3)
    return Split(
        users=seqs.users[keep],
        train=full.cut(0, -2),
        valid_targets=full.items[full.offsets[1:] - 2],
        test_inputs=full.cut(0, -1),
        test_targets=full.items[full.offsets[1:] - 1],
    )


def holdout_last(seqs: Sequences) -> Split:
    """Everything known is for training except each user's newest item, which is the validation
    target (early stopping); there are no test targets (the temporal protocol scores later events)."""
    full = seqs.cut(0, None, min_len=2)
    empty = np.zeros(0, np.int64)
    return Split(full.users, full.cut(0, -1), full.items[full.offsets[1:] - 1],
                 Sequences(empty, np.zeros(1, np.int64), empty), empty, refit=full)


def windows(seqs: Sequences, length: int, min_len: int = 1) -> list[np.ndarray]:
    """Cut every sequence into consecutive windows of at most ``length`` items, from the newest end,
    so long histories contribute all their items per epoch (BERT4Rec's sliding window with stride =
    window); windows shorter than ``min_len`` are dropped."""
    out = []
    for s in seqs.as_list():
        for end in range(len(s), 0, -length):
            w = s[max(0, end - length) : end]
            if len(w) >= min_len:
                out.append(w)
    return out


def pad_left(seqs: list[np.ndarray], length: int | None = None) -> np.ndarray:
    """Left-pad (with 0) and left-truncate to ``length`` (default: the longest sequence)."""
    if length is None:
        length = max((len(s) for s in seqs), default=0)
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[-length:] if length else s[:0]
        if len(s):
            out[i, length - len(s) :] = s
    return out


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of similar length, so trimming to the batch maximum
    removes almost all padding."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
