"""BatchProcessor's three stages in this process, on the session's real broker and a real DuckDB."""

from __future__ import annotations

import numpy as np
from confluent_kafka import Producer

from streamrec.model.recommender import PopularityRecommender
from streamrec.storage.store import EventStore
from streamrec.streams.ownership import Ownership
from streamrec.streams.pipeline import BatchProcessor, RawBatch
from streamrec.streams.prometheus import WorkerMetrics
from streamrec.streams.topics import ensure_topics
from tests.conftest import read_topic


def raw_batch(topic: str, values: list[bytes | None], first_offset: int = 0) -> RawBatch:
    n = len(values)
    return RawBatch(topic=topic, keys=[b"1"] * n, values=values, partitions=np.zeros(n, np.int32),
                    offsets=np.arange(first_offset, first_offset + n, dtype=np.int64),
                    timestamps=np.full(n, 900_000_000_000, np.int64), received_at=0.0)


def test_a_batch_of_only_invalid_records_is_dead_lettered_and_the_next_one_stored(settings):
    """Every record of a micro-batch invalid (a burst of bad messages): nothing to store or score,
    all of it on the DLQ, and the pipeline goes on with the next batch."""
    ensure_topics(settings)
    store = EventStore(settings.db)
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    ownership = Ownership(store, settings.bootstrap_servers, settings.interactions_topic, settings.group_id)
    p = BatchProcessor(settings, store, PopularityRecommender(window=100), producer, WorkerMetrics(), ownership)
    bad = raw_batch(settings.interactions_topic, [b"{", None, b'{"user_id": "x"}'])
    decoded = p.decode(bad)
    assert len(decoded) == 0 and len(decoded.rejected) == 3
    p.publish(bad, decoded, p.store_batch(bad, decoded))  # returns once the dead letters are delivered
    good = raw_batch(settings.interactions_topic,
                     [b'{"user_id": 1, "item_id": 5, "event_time": 900000000000, "event_type": "view"}'], 3)
    decoded = p.decode(good)
    p.publish(good, decoded, p.store_batch(good, decoded))
    assert store.n_events == 1
    assert len(read_topic(settings.bootstrap_servers, settings.dlq_topic, min_count=3, idle=0.5)) == 3
    assert len(read_topic(settings.bootstrap_servers, settings.recommendations_topic, min_count=1, idle=0.5)) == 1
    store.close()


def test_the_worker_freezes_what_it_loaded_and_collects_young_objects_less_often():
    """``tune_garbage_collector`` (called by the worker once its pipeline is open): the objects that
    exist then leave the collector's generations, and the young generation's threshold is the
    setting's. In a child process: the collector is process-wide."""
    import subprocess
    import sys

    code = ("import gc; from streamrec.streams.worker import tune_garbage_collector; "
            "before = len(gc.get_objects()); tune_garbage_collector(12345); "
            "print(gc.get_threshold()[0], gc.get_freeze_count() >= before, len(gc.get_objects()) < before // 10)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["12345", "True", "True"]


def test_short_lists_are_published_without_padding_keyed_by_user(settings):
    """With fewer unseen items known than top_k, each list is shorter (no -1 padding), its scores
    match its items, and the record's key is the user id as decimal text."""
    import msgspec

    ensure_topics(settings)
    store = EventStore(settings.db)
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    ownership = Ownership(store, settings.bootstrap_servers, settings.interactions_topic, settings.group_id)
    p = BatchProcessor(settings, store, PopularityRecommender(window=100), producer, WorkerMetrics(), ownership)
    events = [(1, 5), (1, 6), (22, 5), (22, 7), (22, 8), (333, 7)]  # (user, item): items 5-8 known
    values = [b'{"user_id": %d, "item_id": %d, "event_time": 900000000000, "event_type": "view"}' % e for e in events]
    raw = RawBatch(topic=settings.interactions_topic, keys=[str(u).encode() for u, _ in events], values=values,
                   partitions=np.zeros(len(events), np.int32), offsets=np.arange(len(events), dtype=np.int64),
                   timestamps=np.full(len(events), 900_000_000_000, np.int64), received_at=0.0)
    decoded = p.decode(raw)
    p.publish(raw, decoded, p.store_batch(raw, decoded))
    got = {m.key(): msgspec.json.decode(m.value()) for m in
           read_topic(settings.bootstrap_servers, settings.recommendations_topic, min_count=3, idle=0.5)}
    assert set(got) == {b"1", b"22", b"333"} and settings.top_k > 3
    assert [got[b"1"]["items"], got[b"22"]["items"], got[b"333"]["items"]] == [[7, 8], [6], [5, 6, 8]]
    assert all(len(r["scores"]) == len(r["items"]) and r["user_id"] == int(k) for k, r in got.items())
    assert got[b"333"]["scores"] == [2.0, 1.0, 1.0]  # popularity counts: 5 twice, 6 and 8 once
    store.close()
