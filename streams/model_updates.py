"""Model announcements on the ``model-updates`` topic, and the worker's follower of them.

Promotion (or rollback, or the start and end of a shadow comparison) writes one small JSON
message naming the version and where its checkpoint lies. Every worker must see every
announcement, so workers do not read this topic in their consumer group (a group would hand each
message to one member): each assigns itself the topic's partitions and reads it from the
beginning, skipping announcements made before it loaded its model from the registry.
"""

from __future__ import annotations

import logging
import time

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streamrec.streams.config import kafka_config

log = logging.getLogger(__name__)


class ModelUpdate(msgspec.Struct):
    version: str
    path: str  # checkpoint directory, readable by every worker
    action: str  # "promote" or "rollback" (serve it); "shadow" (score it beside the champion, publish
    # nothing: streams/shadow_topic.py) or "unshadow" (stop that)
    announced_at: int  # ms since the epoch


def ensure_topic(bootstrap: str, topic: str) -> None:
    from streamrec.streams.topics import create_topics

    create_topics(bootstrap, {topic: (1, {})}, timeout=10)


def announce(bootstrap: str, topic: str, version: str, path: str, action: str = "promote") -> ModelUpdate:
    """Publish an announcement and wait until the broker has it."""
    ensure_topic(bootstrap, topic)
    update = ModelUpdate(version, str(path), action, int(time.time() * 1000))
    producer = Producer(kafka_config("producer", bootstrap, {"enable.idempotence": True}))
    producer.produce(topic, key=b"model", value=msgspec.json.encode(update))
    if producer.flush(30):
        raise RuntimeError(f"announcement of {version} not delivered to {topic}")
    log.info("announced %s %s on %s", action, version, topic)
    return update


class UpdateFollower:
    """Non-blocking reader of announcements newer than ``since_ms``."""

    def __init__(self, bootstrap: str, topic: str, since_ms: int):
        ensure_topic(bootstrap, topic)
        self.since_ms = since_ms
        self.consumer = Consumer(kafka_config("consumer", bootstrap, {"group.id": "streamrec-model-follower",
                                                                     "enable.auto.commit": False}))
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.decode = msgspec.json.Decoder(ModelUpdate).decode
        self.skipped = 0  # records that are not announcements (logged, counted, skipped)

    def poll(self) -> list[ModelUpdate]:
        out = []
        for msg in self.consumer.consume(100, timeout=0):
            if msg.error():
                continue
            try:
                update = self.decode(msg.value() or b"")
            except Exception as e:  # msgspec errors, RecursionError, UnicodeDecodeError: never a crash
                self.skipped += 1
                log.error("%s@%d: skipping a record that is not a model update: %s: %s",
                          msg.topic(), msg.offset(), type(e).__name__, str(e)[:200])
                continue
            if update.announced_at > self.since_ms:
                out.append(update)
        return out

    def close(self) -> None:
        self.consumer.close()
