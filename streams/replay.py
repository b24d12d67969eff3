"""Replay a MovieLens ratings file to the interactions topic as a timed stream.

Events keep their event-time gaps divided by ``speedup`` (``speedup=0``: as fast as possible).
Each rating becomes an event of type ``rating`` keyed by its user id.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import msgspec
from confluent_kafka import Producer
from tqdm import tqdm

from streamrec.storage.movielens import Ratings, load_ratings
from streamrec.streams.config import Settings, kafka_config
from streamrec.streams.events import Event

log = logging.getLogger(__name__)


class ReplayInterrupted(Exception):
    """Ctrl-C during a replay: what was queued got a bounded wait to be delivered."""

    def __init__(self, sent: int, lost: int):
        super().__init__(f"replay interrupted: {sent} events sent (acknowledged by the broker)"
                         + (f", {lost} still queued were dropped" if lost else ""))
        self.sent, self.lost = sent, lost


@dataclass
class ReplayStats:
    events: int
    seconds: float

    def __add__(self, other: "ReplayStats") -> "ReplayStats":
        """Two parts of one replay: every count (and the seconds) summed, of any subclass."""
        return replace(self, **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def make_producer(bootstrap: Settings | str, **overrides) -> Producer:
    """The replay's producer (``bootstrap``: settings or a bare address; the Kafka properties file applies)."""
    conf = {
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 1_000_000,
        "enable.idempotence": True,  # a retried send is not written twice
    }
    conf.update(overrides)
    return Producer(kafka_config("producer", bootstrap, conf))


def encode_ratings(r: Ratings) -> list[bytes]:
    enc = msgspec.json.Encoder().encode
    return [
        enc(Event(u, i, t * 1000, "rating", x))
        for u, i, t, x in zip(r.user.tolist(), r.item.tolist(), r.timestamp.tolist(), r.rating.tolist())
    ]


class Deliveries:
    """A producer's delivery callback: counts the events the broker acknowledged, keeps errors."""

    def __init__(self):
        self.acked, self.errors = 0, []

    def __call__(self, err, msg) -> None:
        if err is not None:
            self.errors.append(str(err))
        else:
            self.acked += 1

    def interrupted(self, producer: Producer, wait: float) -> ReplayInterrupted:
        """After Ctrl-C: up to ``wait`` s for what is queued, the rest dropped; the exception to raise."""
        lost = producer.flush(wait)
        if lost:
            producer.purge()  # or librdkafka reports them at exit as "still in queue"
            producer.flush(0)
        return ReplayInterrupted(self.acked, lost)

    def check(self, producer: Producer, what: str) -> None:
        """Wait for every queued event; an error if some were not delivered."""
        remaining = producer.flush(60)
        if remaining or self.errors:
            raise RuntimeError(f"{what}: {remaining} events undelivered, errors: {self.errors[:3]}")


def produce(producer: Producer, topic: str, value: bytes, key: bytes, on_delivery) -> None:
    """One event; when the local queue is full, let it drain first."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)


def replay(ratings: Ratings, bootstrap: Settings | str, topic: str, speedup: float = 0.0,
           progress: bool = True, producer: Producer | None = None, interrupt_wait: float = 10.0) -> ReplayStats:
    """Produce every rating in order; returns when all are acknowledged by the broker.

    Ctrl-C stops producing, gives the queued events up to ``interrupt_wait`` s to be delivered and
    raises :class:`ReplayInterrupted` with how many the broker acknowledged.
    """
    producer = producer or make_producer(bootstrap)
    values = encode_ratings(ratings)
    keys = [str(u).encode() for u in ratings.user.tolist()]
    times = ratings.timestamp.tolist()
    deliveries = Deliveries()
    start = time.time()
    bar = tqdm(total=len(values), unit="ev", disable=not progress, desc=f"replay -> {topic}", smoothing=0.1)
    stop = None
    try:
        _produce_all(producer, topic, values, keys, times, speedup, start, bar, deliveries)
    except KeyboardInterrupt:
        bar.close()
        stop = deliveries.interrupted(producer, interrupt_wait)
    if stop is not None:  # raised outside the handler: no traceback keeps the producer alive
        del producer  # gone now: no reconnection noise once the broker stops
        raise stop
    deliveries.check(producer, "replay")
    bar.close()
    return ReplayStats(len(values), time.time() - start)


def _produce_all(producer, topic, values, keys, times, speedup, start, bar, on_delivery) -> None:
    t0 = times[0] if times else 0
    step = 2000
    for a in range(0, len(values), step):
        if speedup > 0:  # sleep until this slice's first event is due
            due = start + (times[a] - t0) / speedup
            if (wait := due - time.time()) > 0:
                time.sleep(wait)
        for j in range(a, min(a + step, len(values))):
            if speedup > 0 and (wait := start + (times[j] - t0) / speedup - time.time()) > 0.001:
                time.sleep(wait)
            produce(producer, topic, values[j], keys[j], on_delivery)
        producer.poll(0)
        bar.update(min(step, len(values) - a))


def replay_file(path: str | Path, bootstrap: Settings | str, topic: str, speedup: float = 0.0,
                min_rating: float | None = None,
                start: int = 0, limit: int | None = None, progress: bool = True) -> ReplayStats:
    ratings = load_ratings(path, min_rating=min_rating)
    ratings = ratings.slice(start, None if limit is None else start + limit)
    log.info("replaying %d ratings from %s", len(ratings), path)
    return replay(ratings, bootstrap, topic, speedup=speedup, progress=progress)
