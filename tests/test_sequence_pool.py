"""SequencePool against a plain per-user list, late events and growth included."""

from __future__ import annotations

import numpy as np

from streamrec.storage.sequence_pool import SequencePool


def test_pool_keeps_each_users_last_items_in_time_order_and_flags_late_events():
    rng = np.random.default_rng(3)
    seq_len, truth = 5, {}  # user -> [(time, offset, item)] of every event
    pool, offset, late_seen = SequencePool(seq_len), 0, 0
    for batch in range(300):
        n = int(rng.integers(1, 40))
        users = rng.integers(0, 40, n)
        users[0] = 100 * batch  # a new, larger user code every batch
        times = rng.integers(0, 80, n) + batch * 40  # half of a batch's times reach back into the last one
        items = rng.integers(0, 1000, n).astype(np.int32)
        offsets = np.arange(offset, offset + n)
        offset += n
        order = np.lexsort((offsets, times, users))
        late = pool.append(users[order], items[order], times[order], offsets[order])
        for u, t, o, i in zip(users.tolist(), times.tolist(), offsets.tolist(), items.tolist()):
            truth.setdefault(u, []).append((t, o, i))
        for u in late.tolist():  # what the store does: reload the user from the log, in time order
            events = sorted(truth[u])
            pool.load(np.full(len(events), u), np.array([e[2] for e in events], np.int32),
                      np.array([e[0] for e in events]), np.array([e[1] for e in events]))
        late_seen += len(late)
        asked = np.array(sorted(truth) + [10**6, -1])  # known users, one never seen, a missing code
        expected = [[i for _, _, i in sorted(truth[u])[-seq_len:]] for u in sorted(truth)] + [[], []]
        assert [r.tolist() for r in pool.rows(asked)] == expected
        flat, n = pool.gather(asked)
        assert flat.tolist() == [i for e in expected for i in e] and n.tolist() == [len(e) for e in expected]
    assert late_seen > 50 and len(pool.row_of) > 29_900  # late events; user codes past 1,024


def test_pool_evicts_the_least_recently_used_users_beyond_its_cap():
    pool = SequencePool(seq_len=3, max_users=4)
    one = lambda u, item, t: pool.append(np.array([u]), np.array([item], np.int32), np.array([t]),  # noqa: E731
                                         np.array([t]))
    for t, u in enumerate([0, 1, 2, 3]):
        pool.tick()
        one(u, 10 + u, t)
    pool.tick()
    pool.gather(np.array([0]))  # reading a user counts as using it
    pool.tick()
    one(4, 14, 10)  # a fifth user: the least recently used (1) makes room
    assert pool.resident(np.arange(6)).tolist() == [True, False, True, True, True, False]
    assert pool.evicted == 1 and len(pool.user_of) == 4 and pool.users == 4
    assert [r.tolist() for r in pool.rows(np.array([0, 1, 4]))] == [[10], [], [14]]
    pool.tick()  # one batch with more new users than the cap: none of them is evicted by the others
    many = np.arange(10, 17)
    late = pool.append(many, np.arange(7, dtype=np.int32), np.full(7, 20), np.arange(7))
    assert len(late) == 0 and pool.resident(many).all() and len(pool.user_of) == 7 and pool.evicted == 5
    assert pool.users == 7 == (pool.user_of >= 0).sum()
    assert [r.tolist() for r in pool.rows(many)] == [[i] for i in range(7)]
    pool.tick()  # the next new user brings the pool back to its cap (the newcomer and 3 others)
    one(30, 1, 30)
    assert pool.users == 4 == pool.resident(np.append(many, 30)).sum() and pool.evicted == 9
    assert pool.resident(np.array([30]))[0]


def test_at_the_cap_the_pool_evicts_a_share_of_it_at_once_least_recent_first():
    """Finding the least recently used rows is a pass over all rows: done once per cap // EVICT_SHARE
    new users, not once per batch. The rows go in least-recent order; the freed rows are reused."""
    from streamrec.storage.sequence_pool import EVICT_SHARE

    cap = 2 * EVICT_SHARE  # two rows evicted at a time
    pool = SequencePool(seq_len=2, max_users=cap)
    for u in range(cap):  # users 0..cap-1, one a batch: user u last used at clock u + 2
        pool.tick()
        pool.append(np.array([u]), np.array([u], np.int32), np.array([u]), np.array([u]))
    pool.tick()
    pool.gather(np.array([0]))  # user 0 read: now the most recent; 1 and 2 are the oldest
    pool.tick()
    pool.append(np.array([1000]), np.array([7], np.int32), np.array([0]), np.array([0]))
    assert pool.evicted == 2 and pool.users == cap - 1
    assert pool.resident(np.array([0, 1, 2, 3, 1000])).tolist() == [True, False, False, True, True]
    pool.tick()
    pool.append(np.array([1001]), np.array([8], np.int32), np.array([0]), np.array([0]))  # a free row: no eviction
    assert pool.evicted == 2 and pool.users == cap and len(pool.user_of) == cap
    assert [r.tolist() for r in pool.rows(np.array([1000, 1001, 3]))] == [[7], [8], [3]]
