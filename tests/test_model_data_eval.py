"""Sequences, filters, leave-one-out, vocabulary, and the ranking/metric code of the evaluation."""

import numpy as np
import pytest
import torch

from streamrec.model.data import Sequences, build_sequences, leave_one_out, pad_left, windows
from streamrec.model.evaluate import (
    evaluate_histories,
    full_ranks,
    item_counts,
    popularity_scorer,
    sample_negatives,
    sampled_ranks,
)
from streamrec.model.vocab import ItemVocab
from streamrec.storage.movielens import Ratings, load_ratings


def test_vocab_roundtrip_and_unknowns():
    v = ItemVocab.from_ids([50, 7, 7, 1000, 3])
    assert v.to_list() == [3, 7, 50, 1000]
    assert v.encode([3, 7, 50, 1000]).tolist() == [1, 2, 3, 4]
    assert v.encode([0, 4, 2000, -5]).tolist() == [0, 0, 0, 0]
    assert v.decode(v.encode([1000, 3])).tolist() == [1000, 3]
    assert v.decode([0, 5]).tolist() == [-1, -1]
    assert v.smap[50] == 3 and v.reverse_smap[3] == 50
    assert ItemVocab([]).encode([1, 2]).tolist() == [0, 0]


def test_build_sequences_filters_and_keeps_time_order():
    r = Ratings(
        user=np.array([1, 2, 1, 3, 1, 2, 1, 2, 1]),
        item=np.array([10, 20, 11, 30, 12, 21, 13, 22, 14]),
        rating=np.array([5, 5, 1, 5, 5, 5, 5, 5, 5], np.float32),
        timestamp=np.arange(9),
    )
    seqs, vocab = build_sequences(r, min_rating=None, min_user_events=3)
    assert seqs.users.tolist() == [1, 2]  # user 3 has one event
    assert vocab.decode(seqs[0]).tolist() == [10, 11, 12, 13, 14]
    assert vocab.decode(seqs[1]).tolist() == [20, 21, 22]
    assert 30 not in vocab.to_list()
    seqs, vocab = build_sequences(r, min_rating=3, min_user_events=3)
    assert vocab.decode(seqs[0]).tolist() == [10, 12, 13, 14]  # the 1-star rating is gone
    # a given vocabulary drops unknown items
    seqs, _ = build_sequences(r, min_user_events=3, vocab=ItemVocab.from_ids([11, 13, 21]))
    assert [s.tolist() for s in seqs.as_list()] == [[1, 2], [3]]


def test_leave_one_out_on_real_data_is_in_time_order(tmp_path):
    r = load_ratings("tests/data/ratings.csv")
    seqs, vocab = build_sequences(r, min_user_events=5)
    split = leave_one_out(seqs)
    assert len(split.users) == len(seqs) == 671  # ml-latest-small (2016): every user has >= 20 ratings
    u = 0
    user_rows = r.filter(r.user == split.users[u])
    items = vocab.encode(user_rows.item)
    assert split.test_targets[u] == items[-1] and split.valid_targets[u] == items[-2]
    assert split.train[u].tolist() == items[:-2].tolist()
    assert split.test_inputs[u].tolist() == items[:-1].tolist()
    assert np.all(np.diff(user_rows.timestamp) >= 0)


def test_windows_and_padding():
    s = Sequences.from_list([1, 2], [np.arange(1, 8), np.array([9])])
    assert [w.tolist() for w in windows(s, 3)] == [[5, 6, 7], [2, 3, 4], [1], [9]]
    assert [w.tolist() for w in windows(s, 3, min_len=2)] == [[5, 6, 7], [2, 3, 4]]
    assert pad_left([np.array([1, 2]), np.array([3, 4, 5, 6])], 3).tolist() == [[0, 1, 2], [4, 5, 6]]
    assert pad_left([np.array([1]), np.array([], np.int64)]).tolist() == [[1], [0]]


def test_full_ranks_exclude_history_but_not_target():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5], [1.0, 1.0, 1.0, 1.0, 1.0]])
    # user 0: target item 4 (score 0.6) behind items 1, 2, 3; item 1 and 2 were seen -> rank 1
    # user 1: target item 1 (0.1), seen items 1 and 5: the target stays, item 5 goes -> rank 3
    # user 2: all tied -> ties count against the target: rank 4 of 5
    ranks = full_ranks(scores, [np.array([1, 2]), np.array([1, 5]), np.array([], np.int64)], np.array([4, 1, 3]))
    assert ranks.tolist() == [1, 3, 4]
    neg = np.array([[1, 2], [2, 3], [1, 2]])
    assert sampled_ranks(scores, np.array([4, 1, 3]), neg).tolist() == [2, 2, 2]


def test_evaluate_histories_oracle_and_popularity():
    hist = [np.array([1, 2]), np.array([3]), np.array([2, 4])]
    targets = np.array([3, 4, 1])

    def oracle(hs):  # knows the answer
        s = torch.zeros(len(hs), 5)
        for i, h in enumerate(hs):
            s[i, targets[[np.array_equal(h, x) for x in hist].index(True)] - 1] = 1
        return s

    m = evaluate_histories(oracle, hist, targets)
    assert m["NDCG@10"] == m["HitRate@10"] == m["MRR@10"] == 1.0
    counts = item_counts(hist, 5)
    assert counts.tolist() == [0, 1, 2, 1, 1, 0]
    m = evaluate_histories(popularity_scorer(counts), hist, targets, ks=(1, 10))
    # popularity: 2 > {1,3,4} > 5. user 0 -> item 3 ranks 1 of {3,4,5}; user 1 -> item 4 rank 2
    # (ties with 1 count against it); user 2 -> item 1 rank 1 of {1,3,5}
    assert m["HitRate@1"] == 0.0
    assert m["MRR@10"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)


def test_sampled_negatives_exclude_history_and_target():
    rng = np.random.default_rng(0)
    hist = [rng.choice(np.arange(1, 301), 50, replace=False) for _ in range(20)]
    targets = rng.integers(1, 301, 20)
    counts = np.bincount(np.concatenate(hist), minlength=301)
    for c in (None, counts):
        neg = sample_negatives(hist, targets, 300, n=100, counts=c, seed=1)
        assert neg.shape == (20, 100) and neg.min() >= 1 and neg.max() <= 300
        for h, t, row in zip(hist, targets, neg):
            assert len(set(row.tolist())) == 100
            assert not set(row.tolist()) & (set(h.tolist()) | {int(t)})
    with pytest.raises(ValueError):
        sample_negatives([np.arange(1, 250)], np.array([250]), 300, n=100)


def test_popularity_negatives_for_a_user_who_saw_every_popular_item_end():
    """What is left to draw has (almost) no popularity: the sampler still returns, with distinct
    unseen items (it used to loop for ever; `evaluate --min-user-events 1000` on a small sample)."""
    counts = np.zeros(1001)
    counts[1:901] = 100  # 900 popular items, 100 never seen in training
    neg = sample_negatives([np.arange(1, 901)], np.array([950]), 1000, n=50, counts=counts, seed=3)
    assert neg.shape == (1, 50) and len(set(neg[0].tolist())) == 50
    assert neg.min() > 900 and 950 not in neg[0]  # only the unseen items, never the target
