"""Fuzz: thousands of generated messages through the pipeline's stages on the embedded broker.

Whatever a message holds (valid events, redeliveries, conflicting payloads, mutated JSON, deep
nesting, invalid UTF-8, binary, empty, null, wrong keys, clocks far ahead), nothing raises, and
every message is exactly one of: stored at its offset, in the dead-letter topic with its offset,
or a silent duplicate of an identical event stored earlier. Real Kafka (records produced and
consumed back, dead letters read from the DLQ topic) and a real DuckDB file; no worker process,
so hundreds of batches stay fast.
"""

from __future__ import annotations

import gc
import time
import uuid

import msgspec
import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from streamrec.model.recommender import PopularityRecommender
from streamrec.storage.store import EventStore
from streamrec.streams.config import Settings
from streamrec.streams.decoder import DecodeProcess
from streamrec.streams.events import decode, event_key
from streamrec.streams.ownership import Ownership
from streamrec.streams.pipeline import BatchProcessor, RawBatch
from streamrec.streams.prometheus import WorkerMetrics
from streamrec.streams.topics import ensure_topics
from tests.conftest import read_topic

NOW = int(time.time() * 1000)
times = st.one_of(st.integers(NOW - 10**11, NOW + 2 * 86_400_000), st.integers(0, 2**63 - 1), st.just(788_918_400_000))
event = st.fixed_dictionaries(
    {"user_id": st.integers(0, 20), "item_id": st.integers(0, 50), "event_time": times,
     "event_type": st.sampled_from(["view", "click", "rating", "purchase", "like"])},
    optional={"rating": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.just(1e39)),
              "event_id": st.text(max_size=8), "extra": st.recursive(st.integers(), lambda c: st.lists(c, max_size=3))})
json_event = event.map(lambda d: msgspec.json.encode(d))
valid_event = st.fixed_dictionaries(
    {"user_id": st.integers(0, 10**6), "item_id": st.integers(0, 10**6), "event_time": st.integers(NOW - 10**11, NOW),
     "event_type": st.sampled_from(["view", "click", "cart"])},
    optional={"event_id": st.text(min_size=1, max_size=12)}).map(lambda d: msgspec.json.encode(d))


@st.composite
def mutated(draw) -> bytes:
    """A valid-looking event with a byte flipped, cut short, nested deep or with invalid UTF-8."""
    raw = draw(json_event)
    how = draw(st.sampled_from(["flip", "cut", "deep", "utf8", "none"]))
    if how == "flip" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        return raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1:]
    if how == "cut":
        return raw[:draw(st.integers(0, len(raw)))]
    if how == "deep":
        n = draw(st.integers(500, 3000))
        return raw[:-1] + b', "x": ' + b'{"a": ' * n + b"1" + b"}" * n + b"}"
    if how == "utf8":
        return raw.replace(b'"view"', b'"vi\xff\xfeew"').replace(b'"click"', b'"cl\xc3\x28ick"')
    return raw


@st.composite
def messages(draw):
    """(key, value) pairs: keys mostly right, values mostly valid, many repeats."""
    out = []
    for _ in range(draw(st.integers(50, 150))):
        kind = draw(st.sampled_from(["valid"] * 6 + ["wild", "repeat", "mutated", "binary", "empty"]))
        if kind == "repeat" and out:
            key, value = out[draw(st.integers(0, len(out) - 1))]
            if value and draw(st.booleans()):  # the same id, another payload: a conflict (or the same one)
                value = value.replace(b'"item_id":', b'"item_id":1', 1)
        elif kind == "mutated":
            value, key = draw(mutated()), None
        elif kind == "binary":
            value, key = draw(st.binary(max_size=300)), b"1"
        elif kind == "empty":
            value, key = draw(st.sampled_from([None, b""])), b"1"
        else:
            value, key = draw(valid_event if kind == "valid" else json_event), None
        if key is None:  # the user id as decimal text, or now and then something else
            try:
                uid = msgspec.json.decode(value).get("user_id")
            except Exception:
                uid = 1
            key = draw(st.sampled_from([str(uid).encode()] * 20 + [None, b"x", b"0" + str(uid).encode()]))
        out.append((key, value))
    return out


class Harness:
    """One topic, one DuckDB file, one BatchProcessor for all examples (offsets keep growing)."""

    def __init__(self, broker, tmp_path):
        tag = uuid.uuid4().hex[:8]
        self.s = Settings(bootstrap_servers=broker.bootstrap, interactions_topic=f"fuzz-{tag}",
                          dlq_topic=f"fuzz-{tag}.dlq",
                          group_id=f"fuzz-{tag}",
                          recommendations_topic=f"fuzz-{tag}.recs", db=str(tmp_path / "fuzz.duckdb"))
        ensure_topics(self.s)
        self.producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
        self.consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"fuzz-{tag}",
                                  "enable.auto.commit": False})
        self.consumer.assign([TopicPartition(self.s.interactions_topic, 0, 0)])
        self.store = EventStore(self.s.db)
        self.processor = BatchProcessor(self.s, self.store, PopularityRecommender(window=1000),
                                        Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5}),
                                        WorkerMetrics(),
                                        Ownership(self.store, broker.bootstrap, self.s.interactions_topic,
                                                  self.s.group_id))
        self.processor.decoder = DecodeProcess(self.processor.contract)  # as the worker decodes
        self.sent: list[tuple[int, bytes | None]] = []  # (offset, value)

    def run(self, batch: list[tuple[bytes | None, bytes | None]]) -> None:
        for key, value in batch:
            self.producer.produce(self.s.interactions_topic, key=key, value=value)
        assert self.producer.flush(30) == 0
        recs, deadline = [], time.time() + 30
        while len(recs) < len(batch) and time.time() < deadline:
            recs += [m for m in self.consumer.consume(len(batch) - len(recs), timeout=0.5) if not m.error()]
        assert len(recs) == len(batch)
        self.sent += [(m.offset(), m.value()) for m in recs]
        raw = RawBatch(self.s.interactions_topic, [m.key() for m in recs], [m.value() for m in recs],
                       np.array([m.partition() for m in recs], np.int32), np.array([m.offset() for m in recs],
                                                                                   np.int64),
                       np.array([m.timestamp()[1] for m in recs], np.int64), time.time())
        p = self.processor
        decoded = p.decode(raw)
        p.publish(raw, decoded, p.store_batch(raw, decoded))

    def close(self) -> None:
        # librdkafka clients live until the last reference goes: left to the garbage collector they
        # outlive the test and retry the session broker after it stops (log noise at the end of CI).
        self.consumer.close()
        self.producer.flush(10)
        self.processor.producer.flush(10)
        self.store.close()
        self.processor.decoder.close()
        del self.producer, self.processor, self.consumer
        gc.collect()


def test_fuzzed_messages_are_stored_once_or_dead_lettered(broker, tmp_path):
    h = Harness(broker, tmp_path)
    try:
        check_fuzzed_messages(h)
    finally:
        h.close()


def check_fuzzed_messages(h: Harness) -> None:
    # No shrinking: every example costs broker round trips; a failure names its offset and value.
    @hyp_settings(max_examples=30, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.large_base_example])
    @given(messages())
    def feed(batch):
        h.run(batch)

    feed()
    n = len(h.sent)
    assert n >= 1500, n
    dlq = read_topic(h.s.bootstrap_servers, h.s.dlq_topic, min_count=1, idle=1.0)
    dead = [int(dict(m.headers())["source_offset"]) for m in dlq]
    assert len(dead) == len(set(dead)), "a message dead-lettered twice"
    rows = h.store.con.execute("SELECT kafka_offset, key, event_id, user_id, item_id, event_time, event_type, rating"
                               " FROM events").fetchall()
    stored = {r[0]: r for r in rows}
    assert len(stored) == len(rows), "two events stored at one offset"
    by_key = {r[1]: r for r in rows}
    dead_set, duplicates = set(dead), 0
    for offset, value in h.sent:
        if offset in stored:
            assert offset not in dead_set, f"offset {offset} stored and dead-lettered"
            continue
        if offset in dead_set:
            continue
        # Neither: it must be a true redelivery of an event stored earlier with the same payload.
        ev = decode(value)  # raises if it was invalid: then it should have been dead-lettered
        first = by_key.get(event_key(ev.id()))
        assert first is not None and first[0] < offset, f"offset {offset} lost: {value[:200]!r}"
        assert first[2:7] == (ev.id(), ev.user_id, ev.item_id, ev.event_time,
                              ev.event_type), f"offset {offset}: conflict kept silent"
        duplicates += 1
    assert len(stored) > 0.1 * n and len(dead) > 0.1 * n and duplicates > 0, (len(stored), len(dead), duplicates)
