"""Replay a MovieLens ratings file to the interactions topic as a timed stream.

Events keep their event-time gaps divided by ``speedup`` (``speedup=0``: as fast as possible).
Each rating becomes an event of type ``rating`` keyed by its user id.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
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
    errors: list[str] = []
    delivered = [0]

    def on_delivery(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            delivered[0] += 1

    start = time.time()
    bar = tqdm(total=len(values), unit="ev", disable=not progress, desc=f"replay -> {topic}", smoothing=0.1)
    try:
        _produce_all(producer, topic, values, keys, times, speedup, start, bar, on_delivery)
    except KeyboardInterrupt:
        bar.close()
        lost = producer.flush(interrupt_wait)
        if lost:
            producer.purge()  # or librdkafka reports them at exit as "still in queue"
            producer.flush(0)
        del producer  # gone now, not when the traceback is: no reconnection noise after the broker stops
        raise ReplayInterrupted(delivered[0], lost) from None
    remaining = producer.flush(60)
    bar.close()
    elapsed = time.time() - start
    if remaining or errors:
        raise RuntimeError(f"replay: {remaining} events undelivered, errors: {errors[:3]}")
    return ReplayStats(len(values), elapsed)


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
            while True:
                try:
                    producer.produce(topic, value=values[j], key=keys[j], on_delivery=on_delivery)
                    break
                except BufferError:  # local queue full: let it drain
                    producer.poll(0.05)
        producer.poll(0)
        bar.update(min(step, len(values) - a))


def replay_file(path: str | Path, bootstrap: Settings | str, topic: str, speedup: float = 0.0,
                min_rating: float | None = None,
                start: int = 0, limit: int | None = None, progress: bool = True) -> ReplayStats:
    ratings = load_ratings(path, min_rating=min_rating)
    ratings = ratings.slice(start, None if limit is None else start + limit)
    log.info("replaying %d ratings from %s", len(ratings), path)
    return replay(ratings, bootstrap, topic, speedup=speedup, progress=progress)
