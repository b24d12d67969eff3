"""Records of the control topics that do not decode are logged, counted and skipped, on a real broker:
one bad record on ``interactions.owners`` must not stop every worker of the group."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Producer

from streamrec.streams.model_updates import UpdateFollower, announce, ensure_topic
from streamrec.streams.ownership import OwnershipLog

pytestmark = pytest.mark.slow
BAD = [b"not json", b'{"a": ' * 3000 + b"1" + b"}" * 3000, b'{"group": "\xff\xfe"}', b"", None, b"[1, 2]"]


def _produce(bootstrap: str, topic: str, values) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    for v in values:
        p.produce(topic, key=b"0", value=v)
    assert p.flush(10) == 0


def test_ownership_log_skips_what_is_not_a_claim(broker):
    topic = f"owners-{uuid.uuid4().hex[:8]}"
    ensure_topic(broker.bootstrap, topic)
    log = OwnershipLog(broker.bootstrap, topic, "g")
    log.claim(0, 0, "A")
    _produce(broker.bootstrap, topic, BAD)
    claims = log.claim(0, 10, "B")  # reads the log back through the bad records to its own claim
    assert [(c.start, c.db_id) for c in claims] == [(0, "A"), (10, "B")]
    assert log.skipped == len(BAD)
    assert [c.db_id for c in log.read()] == ["A", "B"] and log.skipped == len(BAD)  # each counted once


def test_model_update_follower_skips_what_is_not_an_announcement(broker):
    topic = f"updates-{uuid.uuid4().hex[:8]}"
    ensure_topic(broker.bootstrap, topic)
    follower = UpdateFollower(broker.bootstrap, topic, since_ms=0)
    _produce(broker.bootstrap, topic, BAD)
    announce(broker.bootstrap, topic, "v7", "/models/v7")
    got, deadline = [], time.time() + 20
    while not got and time.time() < deadline:
        got = follower.poll()
        time.sleep(0.2)
    follower.close()
    assert [u.version for u in got] == ["v7"] and follower.skipped == len(BAD)
