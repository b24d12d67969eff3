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
        users[0] = 100 * batch  # a new, larger user code every batch: the pool grows past 1,024 rows
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
    assert late_seen > 50 and len(pool.length) > 29_900  # late events and growth both exercised
