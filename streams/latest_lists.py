"""``GET /recommendations/{user_id}``: a user's latest list, from any worker of the group.

Each worker keeps the latest list it published per user (``LatestLists``: the JSON bytes it
already encoded for the topic, one dict entry per user, set by the publish thread). A user's
lists come from the owner of the user's partition, so another worker does not hold them: it asks
its peers (``?local=1``, so they do not ask further) and passes the owner's answer on, with
``served_by`` naming who answered. Peers find each other on a small compacted topic,
``<group>.workers``, where each worker announces its web address every few seconds.

The answer: ``user_id, items, scores, model, version, event_time`` (ms, newest event the list has
seen), ``published_at`` (ms), ``freshness_seconds`` (that event's Kafka timestamp to
publication), ``age_seconds`` (publication to now), ``partition``/``offset`` of that event and
``served_by``. An unknown user is a 404 with the reason in ``error``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streamrec.streams.config import Settings, kafka_config
from streamrec.streams.list_encoder import Recommendation
from streamrec.streams.topics import create_topics

log = logging.getLogger(__name__)

ANNOUNCE_EVERY = 3.0  # seconds between a worker's announcements of its address
PEER_TTL = 15.0  # a peer not heard of for this long is gone


class LatestLists:
    """The latest published list per user, as encoded for the topic (bytes).

    Written by the publish thread only; read by the web views. A dict assignment and lookup are
    atomic in CPython, so no lock is needed.
    """

    def __init__(self):
        self._lists: dict[int, bytes] = {}
        self._decode = msgspec.json.Decoder(Recommendation).decode

    def put_many(self, lists: list[tuple[int, bytes]]) -> None:
        """``(user, list as published)`` pairs, oldest first, once delivered to the topic."""
        self._lists.update(lists)

    def __len__(self) -> int:
        return len(self._lists)

    def warm_in_background(self, bootstrap: str, topic: str) -> threading.Thread:
        """``warm`` in a thread of its own (a long topic must not hold up the worker), logged."""
        def run() -> None:
            try:
                log.info("/recommendations: %d users' latest lists read back from %s", self.warm(bootstrap, topic),
                         topic)
            except Exception as e:  # the page still answers for the lists published from now on
                log.warning("/recommendations: could not read back earlier lists from %s: %s", topic, e)

        t = threading.Thread(target=run, daemon=True, name="lists-warm")
        t.start()
        return t

    def warm(self, bootstrap: str, topic: str, idle: float = 1.0, timeout: float = 600.0) -> int:
        """Add each user's last list on the (compacted) topic, for users we hold none for: after a
        restart the latest lists are still answered. Reads each partition from the beginning up to
        its first list stamped (Kafka CreateTime) since this call began, or until nothing new comes
        for ``idle`` s (Tansu's end offsets cannot be trusted); a list this worker publishes
        meanwhile is newer and is kept (``setdefault``). Blocking: run it in a thread. Returns
        the users added.

        (It used to stop only when the topic went quiet: under a steady stream it followed the
        worker's own lists for its whole ``timeout``, 5% of the worker's GIL time at 20M events.)"""
        consumer = Consumer(kafka_config("consumer", bootstrap, {"group.id": f"lists-warm-{os.getpid()}",
                                                                  "enable.auto.commit": False}))
        found: dict[int, bytes] = {}
        since_ms = int(time.time() * 1000)  # lists stamped from now on are this worker's, or newer
        try:
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or not meta.partitions:
                return 0
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
            caught_up: set[int] = set()  # partitions read up to a list stamped since_ms or later
            last = time.time()
            deadline = last + timeout
            while time.time() < deadline and len(caught_up) < len(meta.partitions):
                got = [m for m in consumer.consume(5000, timeout=0.2) if not m.error() and m.value() is not None]
                for m in got:
                    if m.partition() in caught_up:
                        continue
                    if m.timestamp()[1] >= since_ms:
                        caught_up.add(m.partition())
                        consumer.pause([TopicPartition(topic, m.partition())])
                        continue
                    try:
                        found[int(m.key())] = m.value()  # the key is the user id
                    except (TypeError, ValueError):
                        continue
                if got:
                    last = time.time()
                elif time.time() - last > idle:
                    break
        finally:
            consumer.close()
        before = len(self._lists)
        for user, value in found.items():
            self._lists.setdefault(user, value)
        return len(self._lists) - before

    def answer(self, user: int, served_by: str) -> dict | None:
        raw = self._lists.get(user)
        if raw is None:
            return None
        r = self._decode(raw)
        return {"user_id": r.user_id, "items": r.items, "scores": r.scores, "model": r.model,
                "version": r.model_version, "event_time": r.event_time, "published_at": r.published_at,
                "freshness_seconds": (r.published_at - r.source_timestamp) / 1000,
                "age_seconds": round(time.time() - r.published_at / 1000, 3),
                "partition": r.source_partition, "offset": r.source_offset, "served_by": served_by}


class Peers:
    """The other workers' web addresses, from the ``<group>.workers`` topic (and ours on it)."""

    def __init__(self, bootstrap: str, topic: str, url: str):
        self.topic, self.url = topic, url
        self._producer = Producer(kafka_config("producer", bootstrap, {"linger.ms": 0}))
        self._consumer = Consumer(kafka_config("consumer", bootstrap, {"group.id": f"peers-{os.getpid()}",
                                                                      "enable.auto.commit": False}))
        parts = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.seen: dict[str, float] = {}  # url -> time of its last announcement (its wall clock)

    def announce_and_read(self) -> list[str]:
        """Announce our address, read the others' announcements; returns the live peers (blocking:
        run it off the event loop)."""
        now = time.time()
        self._producer.produce(self.topic, key=self.url.encode(), value=json.dumps({"url": self.url,
                                                                                    "at": now}).encode())
        self._producer.poll(0)
        for msg in self._consumer.consume(1000, timeout=0.2):
            if msg.error() or msg.value() is None:
                continue
            try:
                a = json.loads(msg.value())
                self.seen[a["url"]] = float(a["at"])
            except (ValueError, KeyError, TypeError):
                continue
        return self.live()

    def live(self) -> list[str]:
        now = time.time()
        return [u for u, at in self.seen.items() if u != self.url and now - at < PEER_TTL]

    def close(self) -> None:
        self._producer.flush(2)
        self._consumer.close()


def ensure_workers_topic(settings: Settings, topic: str) -> None:
    """The peers' topic: one partition, compacted (the key is the worker's address)."""
    create_topics(settings, {topic: (1, {"cleanup.policy": "compact"})}, settings.replication_factor)


def web_address(host: str, port: int) -> str:
    """The address peers can reach us at (a wildcard bind advertises this host's name)."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://{host}:{port}"


async def ask_peers(peers: list[str], user: int, timeout: float = 2.0) -> tuple[int, dict] | None:
    """The first peer's 200 answer for ``user`` (``?local=1``), or None."""
    import aiohttp

    if not peers:
        return None
    t = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=t) as session:
        async def one(url: str):
            try:
                async with session.get(f"{url}/recommendations/{user}", params={"local": "1"}) as r:
                    if r.status == 200:
                        return await r.json()
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                return None
            return None

        for answer in await asyncio.gather(*(one(u) for u in peers)):
            if answer is not None:
                return 200, answer
    return None


def add_views(app, settings, lists: LatestLists, peers_of, assigned) -> None:
    """Register ``/recommendations/{user_id}`` on the faust app. ``peers_of()``: the live peers'
    addresses; ``assigned()``: the partitions this worker owns now."""
    me = web_address(settings.metrics_host, settings.metrics_port)

    @app.page("/recommendations/{user_id}")
    async def recommendations_view(web, request, user_id):
        try:
            user = int(user_id)
        except ValueError:
            return web.json({"error": f"user id must be an integer, not {user_id!r}"}, status=400)
        answer = lists.answer(user, me)
        if answer is not None and answer["partition"] in assigned():
            return web.json(answer)  # we own the user's partition: ours is the latest
        local = request.query.get("local") == "1"
        if not local:  # the owner has it (or a newer one, if the partition moved to it)
            found = await ask_peers(peers_of(), user)
            if found is not None:
                return web.json(found[1], status=found[0])
        if answer is not None:  # its partition moved away and its new owner has published nothing yet
            return web.json(answer)
        where = "this worker" if local else f"any of the {len(peers_of()) + 1} workers of group {settings.group_id}"
        return web.json({"error": f"unknown user {user}: no list published for them by {where} since it started "
                                  "(none of their events processed yet, or a wrong id)", "user_id": user},
                        status=404)
