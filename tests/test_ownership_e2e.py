"""Scale-out ownership on the embedded broker and real DuckDB files: the interleavings a worker's
threads produce, played in a fixed order so that they cannot flake.

The worker fences from the ownership log on a timer: it reads the log on one thread and fences on
the store thread, where its own claims (a takeover) may come in between. A read made before those
claims must not be applied after them: it would disown the rows the worker stored under its own
new claims, and their redeliveries are then taken for duplicates, so the events end up owned by
no database (the `streamrec demo --workers 2` loss: 546 of 8,002 events).
"""

from __future__ import annotations

import dataclasses
import time

import duckdb
import msgspec
import numpy as np
from confluent_kafka import Producer

from streamrec.storage.store import EventStore
from streamrec.streams.events import Event, decode_batch
from streamrec.streams.ownership import Ownership, read_partition
from streamrec.streams.topics import ensure_topics

PER_PARTITION = 300


def produce(s, partitions: int) -> None:
    """PER_PARTITION events to each partition (user ids chosen per partition), acknowledged."""
    p = Producer({"bootstrap.servers": s.bootstrap_servers, "enable.idempotence": True})
    enc, now = msgspec.json.Encoder().encode, int(time.time() * 1000)
    for part in range(partitions):
        for i in range(PER_PARTITION):
            user = 10 * (i % 7) + part
            p.produce(s.interactions_topic, partition=part, key=str(user).encode(),
                      value=enc(Event(user, 1000 + i, now - 60_000 + i, "rating", 4.0)))
    assert p.flush(30) == 0


def store_range(own: Ownership, s, partition: int, lo: int, hi: int) -> int:
    """What a worker's store stage does with a micro-batch of ``partition`` at offsets [lo, hi):
    claim the partition if new since the last rebalance, then store the batch as owned."""
    values, offsets, keys, stamps = read_partition(s.bootstrap_servers, s.interactions_topic, partition, lo, hi)
    parts = np.full(len(values), partition, np.int32)
    own.ensure(parts, offsets)
    batch = decode_batch(values, keys, stamps, own.contract, parts, offsets)
    assert not batch.rejected
    return own.store.append(batch).n_new


def owned_keys(path: str) -> set[int]:
    con = duckdb.connect(path, read_only=True)
    try:
        return set(con.execute("SELECT key FROM events WHERE owned").fetchnumpy()["key"].tolist())
    finally:
        con.close()


def exporting_owner(settings, tmp_path):
    """Two partitions produced; B, a database that names ``exp-b`` as its export directory.
    Returns (settings, B's store, B's ownership)."""
    s = dataclasses.replace(settings, partitions=2)
    ensure_topics(s)
    produce(s, 2)
    b_store = EventStore(tmp_path / "b.duckdb")
    b = Ownership(b_store, s.bootstrap_servers, s.interactions_topic, s.group_id, export_dir=str(tmp_path / "exp-b"))
    return s, b_store, b


def test_a_stale_read_of_the_log_never_disowns_rows_of_later_own_claims(settings, tmp_path):
    s = dataclasses.replace(settings, partitions=2)
    ensure_topics(s)
    produce(s, 2)
    a = Ownership(EventStore(tmp_path / "a.duckdb"), s.bootstrap_servers, s.interactions_topic, s.group_id)
    b_store = EventStore(tmp_path / "b.duckdb")
    b = Ownership(b_store, s.bootstrap_servers, s.interactions_topic, s.group_id)
    try:
        # Two workers, a partition each; B stores 200 events of partition 1, commits 150, dies.
        assert store_range(a, s, 0, 0, 200) == 200
        assert store_range(b, s, 1, 0, 200) == 200
        b_store.close()
        # A's fencing timer reads the log (A's and B's claims) ...
        stale = a.log.read()
        # ... and before it fences on the store thread, A takes partition 1 over at B's commit
        # (150) and stores the rest of both partitions under its new claims.
        a.reset()
        assert store_range(a, s, 0, 200, PER_PARTITION) == PER_PARTITION - 200
        assert store_range(a, s, 1, 150, PER_PARTITION) == PER_PARTITION - 150
        assert a.recovered_events == 150  # B's part of partition 1, copied from Kafka
        owned_before = a.store.count()
        assert owned_before == PER_PARTITION + (PER_PARTITION - 150)
        # The timer's fencing with the read made before the takeover: nothing of A's changes.
        assert a.refresh(stale) == 0
        assert a.store.count() == owned_before
        # A later read fences nothing either: A stored nothing that another database owns.
        assert a.refresh() == 0 and a.store.count() == owned_before
    finally:
        a.store.close()
    # B's database opened again (as a restart would) fences its 50 events past its commit.
    b_store = EventStore(tmp_path / "b.duckdb")
    try:
        assert Ownership(b_store, s.bootstrap_servers, s.interactions_topic, s.group_id).refresh() == 50
    finally:
        b_store.close()
    # Every event owned by exactly one of the two databases.
    keys_a, keys_b = owned_keys(str(tmp_path / "a.duckdb")), owned_keys(str(tmp_path / "b.duckdb"))
    assert not keys_a & keys_b
    assert len(keys_a) + len(keys_b) == 2 * PER_PARTITION


def test_a_takeover_reads_the_previous_owners_exported_segments_then_kafka(settings, tmp_path):
    """B exports its events of partition 1 up to offset 119, stores up to 199 and dies after committing
    150. A takes partition 1 over at 150: offsets 0-119 come from B's segments, 120-149 from Kafka,
    and A then holds exactly what a replay from Kafka alone gives."""
    from streamrec.storage.export import export_new_events

    s, b_store, b = exporting_owner(settings, tmp_path)
    assert store_range(b, s, 1, 0, 120) == 120
    assert export_new_events(b_store.con, tmp_path / "exp-b") == 120
    assert store_range(b, s, 1, 120, 200) == 80  # stored, not exported, then B dies
    b_store.close()
    a = Ownership(EventStore(tmp_path / "a.duckdb"), s.bootstrap_servers, s.interactions_topic, s.group_id)
    kafka_only = Ownership(EventStore(tmp_path / "k.duckdb"), s.bootstrap_servers, s.interactions_topic, s.group_id)
    try:
        assert store_range(a, s, 1, 150, PER_PARTITION) == PER_PARTITION - 150
        assert (a.recovered_events, a.recovered_from_segments) == (150, 120)
        users = sorted({10 * (i % 7) + 1 for i in range(PER_PARTITION)})
        # The same takeover with no segments to read (B's directory gone): all 150 from Kafka.
        kafka_only.log.claim(1, 0, "db-without-exports")  # a previous owner that exports nothing
        kafka_only.reset()
        assert store_range(kafka_only, s, 1, 150, PER_PARTITION) == PER_PARTITION - 150
        assert (kafka_only.recovered_events, kafka_only.recovered_from_segments) == (150, 0)
        for mine, ref in zip(a.store.sequences(users), kafka_only.store.sequences(users)):
            assert mine.tolist() == ref.tolist() and len(mine) > 0
        seen = lambda o: [sorted(x.tolist()) for x in o.store.seen(users)]  # noqa: E731
        assert seen(a) == seen(kafka_only)
    finally:
        a.store.close()
        kafka_only.store.close()


def test_an_unreadable_segment_sends_the_takeover_to_kafka(settings, tmp_path):
    """A corrupt file among the previous owner's segments: the new owner logs it and copies the
    partition from Kafka instead; nothing is lost."""
    s, b_store, b = exporting_owner(settings, tmp_path)
    assert store_range(b, s, 0, 0, 100) == 100
    b_store.close()
    (tmp_path / "exp-b").mkdir()
    (tmp_path / "exp-b" / "events-000001.parquet").write_bytes(b"not parquet")
    a = Ownership(EventStore(tmp_path / "a.duckdb"), s.bootstrap_servers, s.interactions_topic, s.group_id)
    try:
        assert store_range(a, s, 0, 100, PER_PARTITION) == PER_PARTITION - 100
        assert (a.recovered_events, a.recovered_from_segments) == (100, 0)
    finally:
        a.store.close()
