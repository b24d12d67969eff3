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
