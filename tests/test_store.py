"""DuckDB event store: idempotent batches, late events, rolling sequences, restart."""

import numpy as np
import pytest

from streamrec.storage.batch import EventBatch
from streamrec.storage.store import EventStore, read_ratings
from streamrec.streams.events import event_key


def batch(rows, start_offset=0) -> EventBatch:
    """rows: (user, item, time[, event_id]) -> a batch of views at offsets from ``start_offset``."""
    ids = [r[3] if len(r) > 3 else f"{r[0]}:{r[1]}:{r[2]}:view" for r in rows]
    n = len(rows)
    return EventBatch.of(key=[event_key(i) for i in ids], event_id=ids, user=[r[0] for r in rows],
                         item=[r[1] for r in rows], event_time=[r[2] for r in rows], event_type=["view"] * n,
                         offset=np.arange(start_offset, start_offset + n))


@pytest.fixture
def store(tmp_path):
    s = EventStore(tmp_path / "w.duckdb", seq_len=3)
    yield s
    s.close()


def seq_view(store):
    return {u: items for u, items in store.con.execute("SELECT user_id, items FROM sequences").fetchall()}


def test_redelivery_and_in_batch_duplicates_change_nothing(store):
    r = store.append(batch([(1, 10, 100), (1, 11, 200), (1, 10, 100)]))
    assert r.n_new == 2 and r.new_mask.tolist() == [True, True, False]
    again = store.append(batch([(1, 10, 100), (1, 11, 200)], start_offset=3))
    assert again.n_new == 0 and len(again.users) == 0
    assert store.count() == 2
    assert store.sequence(1).tolist() == [10, 11]


def test_same_event_id_is_the_same_event(store):
    store.append(batch([(1, 10, 100, "e1")]))
    assert store.append(batch([(1, 99, 500, "e1")], start_offset=1)).n_new == 0
    assert store.sequence(1).tolist() == [10]


def test_late_event_lands_at_its_place_and_window_rolls(store):
    store.append(batch([(1, 10, 100), (1, 11, 300)]))
    store.append(batch([(1, 12, 200)], start_offset=2))  # late
    assert store.sequence(1).tolist() == [10, 12, 11]
    store.append(batch([(1, 13, 400), (1, 14, 50)], start_offset=3))  # one new, one very late
    assert store.sequence(1).tolist() == [12, 11, 13]
    assert sorted(store.seen([1])[0].tolist()) == [10, 11, 12, 13, 14]
    assert seq_view(store)[1] == [12, 11, 13]


def test_ties_in_time_keep_arrival_order(store):
    store.append(batch([(2, 5, 100), (2, 3, 100), (2, 4, 100)]))
    assert store.sequence(2).tolist() == [5, 3, 4]
    assert seq_view(store)[2] == [5, 3, 4]


def test_restart_reloads_users_from_the_log(tmp_path):
    path = tmp_path / "w.duckdb"
    s = EventStore(path, seq_len=3)
    s.append(batch([(1, 10, 100), (1, 11, 200), (1, 12, 300), (1, 13, 400), (2, 20, 150)]))
    s.close()
    s = EventStore(path, seq_len=3)
    assert s.n_events == 5
    assert s.sequence(1).tolist() == [11, 12, 13]
    # A late event after a restart still lands in time order among the reloaded events.
    s.append(batch([(1, 14, 250)], start_offset=5))
    assert s.sequence(1).tolist() == [14, 12, 13]  # 11@200, 14@250, 12@300, 13@400: last 3
    assert sorted(s.seen([1])[0].tolist()) == [10, 11, 12, 13, 14]
    assert s.sequence(999).tolist() == []
    s.close()
    r = read_ratings(path)
    assert r.item.tolist() == [10, 20, 11, 14, 12, 13]


def test_read_ratings_turns_milliseconds_into_whole_seconds(tmp_path):
    path = tmp_path / "w.duckdb"
    s = EventStore(path)
    t = 900_000_000_000  # 1998-07-09 in ms
    s.append(batch([(1, 10, t + 1999), (1, 11, t), (2, 12, t + 1000), (2, 13, t + 59_999)]))
    s.close()
    r = read_ratings(path)
    assert r.item.tolist() == [11, 12, 10, 13]  # event-time order
    assert r.timestamp.tolist() == [900_000_000, 900_000_001, 900_000_001, 900_000_059]  # floor(ms / 1000)


def random_batches(s: EventStore, seed: int, batches: int, users: int, most: int):
    """Append random batches (user, event time, item) to ``s``; yields after each one."""
    rng, off = np.random.default_rng(seed), 0
    for _ in range(batches):
        n = int(rng.integers(1, most))
        rows = [(int(rng.integers(0, users)), int(rng.integers(0, 50)), int(rng.integers(0, 1000))) for _ in range(n)]
        s.append(batch(rows, start_offset=off))
        off += n
        yield


def test_sequences_view_matches_cache_on_random_streams(tmp_path):
    s = EventStore(tmp_path / "r.duckdb", seq_len=4)
    for _ in random_batches(s, seed=7, batches=20, users=5, most=30):
        pass
    view = seq_view(s)
    for u, items in view.items():
        assert s.sequence(u).tolist() == items


def test_decoded_batch_carries_each_valid_record_s_partition_and_offset(store):
    """One EventBatch from decoding to the log: the rows of valid records keep their record's place."""
    from streamrec.streams.events import decode_batch

    good = b'{"user_id": 1, "item_id": %d, "event_time": 900000000000, "event_type": "view"}'
    values = [good % 10, b"{", good % 11, None, good % 12]
    b = decode_batch(values, partitions=np.array([3, 3, 4, 4, 5]), offsets=np.array([70, 71, 80, 81, 90]))
    assert b.index.tolist() == [0, 2, 4] and [i for i, _ in b.rejected] == [1, 3]
    assert b.partition.tolist() == [3, 4, 5] and b.offset.tolist() == [70, 80, 90]
    assert store.append(b).n_new == 3
    rows = store.con.execute("SELECT item_id, kafka_partition, kafka_offset FROM events ORDER BY item_id").fetchall()
    assert rows == [(10, 3, 70), (11, 4, 80), (12, 5, 90)]


def test_restart_then_first_append_of_an_unloaded_user_adds_each_event_once(tmp_path):
    path = tmp_path / "w.duckdb"
    s = EventStore(path, seq_len=5)
    s.append(batch([(1, 10, 100), (1, 11, 200), (1, 10, 150, "twice")]))
    s.close()
    s = EventStore(path, seq_len=5)  # the seen pairs rebuilt from the log: (1, 10) once
    s.append(batch([(1, 12, 300), (1, 10, 400, "again")], start_offset=3))  # user 1 not loaded before
    assert s.sequence(1).tolist() == [10, 10, 11, 12, 10]
    assert sorted(s.seen([1, 2])[0].tolist()) == [10, 11, 12] and s.seen([1, 2])[1].tolist() == []
    s.close()


def test_a_rolled_back_batch_leaves_the_key_index_right(tmp_path):
    s = EventStore(tmp_path / "w.duckdb", seq_len=5)
    s.append(batch([(1, 10, 100)]))
    bad = batch([(1, 11, 200), (2, 20, 150)], start_offset=1)
    bad.event_type = ["view", None]  # NOT NULL violated: the whole transaction rolls back
    with pytest.raises(Exception):
        s.append(bad)
    assert s.count() == 1 and s.sequence(2).tolist() == [] and s.seen([2])[0].tolist() == []
    good = batch([(1, 11, 200), (2, 20, 150)], start_offset=1)
    assert s.append(good).n_new == 2  # not taken for stored by the failed attempt
    assert s.sequence(1).tolist() == [10, 11] and s.count() == 3
    s.close()


OLD_SCHEMA = """CREATE TABLE events (key UBIGINT PRIMARY KEY, event_id VARCHAR NOT NULL, user_id BIGINT NOT NULL,
    item_id BIGINT NOT NULL, event_time BIGINT NOT NULL, event_type VARCHAR NOT NULL, rating FLOAT,
    kafka_partition INTEGER NOT NULL, kafka_offset BIGINT NOT NULL, owned BOOLEAN NOT NULL DEFAULT true)"""


def test_a_database_with_the_old_primary_key_schema_opens_and_stays_idempotent(tmp_path):
    import duckdb

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute(OLD_SCHEMA)
    b = batch([(1, 10, 100), (1, 11, 200)])
    con.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, 'view', NULL, 0, ?, true)",
                    [[int(b.key[i]), b.event_id[i], 1, int(b.item[i]), int(b.event_time[i]), i] for i in range(2)])
    con.close()
    s = EventStore(path, seq_len=5)
    assert s.n_events == 2
    r = s.append(batch([(1, 10, 100), (1, 12, 300)], start_offset=2))  # one redelivery, one new
    assert r.new_mask.tolist() == [False, True] and s.count() == 3
    assert s.sequence(1).tolist() == [10, 11, 12]
    s.close()


def test_conflicts_are_found_by_payload_hash_after_a_restart(tmp_path):
    path = tmp_path / "w.duckdb"
    s = EventStore(path)
    s.append(batch([(1, 10, 100, "e1"), (2, 20, 100, "e2")]))
    s.close()
    s = EventStore(path)  # hashes of the stored rows recomputed on open must match new ones
    again = batch([(1, 10, 100, "e1"), (2, 21, 100, "e2")], start_offset=2)
    r = s.append(again)
    assert r.n_new == 0 and s.conflicting_rows(again, r.new_mask).tolist() == [1]
    s.close()


def test_seen_items_from_the_store_rank_like_plain_lists(store):
    """The store's seen items (flat item codes) give the popularity ranker the same lists as the
    same items as plain arrays, also for a subset of users (the fallback's take) and for items
    ranked by popularity that the store has never stored."""
    from streamrec.model.recommender import PopularityRecommender
    from streamrec.storage.seen_items import SeenItems

    rng = np.random.default_rng(3)
    rows = [(int(u), int(i), t) for t, (u, i) in enumerate(zip(rng.integers(1, 40, 600), rng.zipf(1.4, 600) % 90))]
    store.append(batch(rows))
    pop = PopularityRecommender(window=1000)
    pop.observe(np.append(np.array([r[1] for r in rows]), [500, 500, 501]))  # 500, 501: never stored
    users = list(range(0, 42))  # 0, 40, 41: unknown users
    coded = store.seen(users)
    plain = [np.array(sorted({i for u2, i, _ in rows if u2 == u}), np.int64) for u in users]
    assert isinstance(coded, SeenItems) and [sorted(s.tolist()) for s in coded] == [s.tolist() for s in plain]
    for k in (1, 10, 95):
        assert pop.recommend(users, coded, k).items.tolist() == pop.recommend(users, plain, k).items.tolist()
    sub = [5, 0, 41, 5]
    assert (pop.recommend(sub, coded.take(sub), 10).items.tolist()
            == pop.recommend(sub, [plain[j] for j in sub], 10).items.tolist())


def test_seen_items_are_those_stored_when_asked_even_if_read_after_later_batches(store):
    """The worker's publish thread reads a batch's seen items while the store thread appends the
    next batches: they must be the items stored when ``seen`` was called, also once the pairs'
    runs have merged and new items (new codes) have come since."""
    store.append(batch([(1, 10, 0), (1, 11, 1), (2, 10, 2)]))
    before = store.seen([1, 2, 3])
    for j in range(1, 40):  # each batch a run of new pairs: merges as the runs grow
        store.append(batch([(1, 100 + j, 10 * j), (2, 200 + j, 10 * j + 1), (3, 300 + j, 10 * j + 2)], 3 * j))
    assert [sorted(s.tolist()) for s in before] == [[10, 11], [10], []]
    now = store.seen([1])
    assert sorted(now[0].tolist()) == [10, 11] + list(range(101, 140))


def test_sequences_stay_right_with_a_cache_smaller_than_the_users(tmp_path):
    """Two users' sequences in memory for six users: the others are evicted and reloaded from the
    log when they come back, late events included; every sequence always equals the log's."""
    s = EventStore(tmp_path / "small.duckdb", seq_len=4, max_users=2)
    reads = 0
    for _ in random_batches(s, seed=8, batches=30, users=6, most=4):
        read = s.sequence_cache()[2]
        assert read >= reads
        reads = read
        for u, items in seq_view(s).items():
            assert s.sequence(u).tolist() == items
    in_memory, evicted, read = s.sequence_cache()
    assert evicted == s._pool.evicted > 5 and in_memory == (s._pool.user_of >= 0).sum()
    assert read >= evicted  # every evicted user came back (sequence() reads all six) and was read from the log


@pytest.mark.parametrize("seed,times", [(11, 1000), (12, 1000), (13, 4)])  # 4: ties in time everywhere
def test_late_users_are_spliced_from_the_recent_log_and_match_it(tmp_path, monkeypatch, seed, times):
    """A late event's user is put back from the log's rows at or after the late time joined to the older
    part memory holds (storage/late_events.py), not reloaded whole; after every batch each sequence
    equals the log's view."""
    import streamrec.storage.store as store_module

    calls = {"late": 0, "whole": 0}
    splice = store_module.splice_late

    def counting(con, pool, late, *args):
        whole = splice(con, pool, late, *args)
        calls["late"] += len(late)
        calls["whole"] += len(whole)
        return whole

    monkeypatch.setattr(store_module, "splice_late", counting)
    s = EventStore(tmp_path / "late.duckdb", seq_len=4)
    rng, off = np.random.default_rng(seed), 0
    for _ in range(40):
        n = int(rng.integers(1, 9))
        rows = [(int(rng.integers(0, 6)), int(rng.integers(0, 50)), int(rng.integers(0, times))) for _ in range(n)]
        s.append(batch(rows, start_offset=off))
        off += n
        for u, items in seq_view(s).items():
            assert s.sequence(u).tolist() == items
    assert calls["late"] > 20 and calls["whole"] == 0  # memory always held what the splice needed
