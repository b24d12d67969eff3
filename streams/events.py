"""The interaction event: its JSON form on the ``interactions`` topic, validation and batch decoding.

One JSON object per Kafka message, keyed by the user id (as decimal text), so that all of a
user's events share a partition and keep their order::

    {"user_id": 42, "item_id": 318, "event_time": 1260759144000,
     "event_type": "rating", "rating": 4.5, "event_id": "optional-unique-string"}

* ``user_id``, ``item_id``: integers in [0, 2**63 - 1].
* ``event_time``: milliseconds since the Unix epoch (integer, >= 0).
* ``event_type``: one of ``view``, ``click``, ``rating``, ``cart``, ``purchase``.
* ``rating``: a finite number; required when ``event_type`` is ``rating``, optional otherwise.
* ``event_id``: at most 200 characters. When absent it is derived from the other fields as
  ``"{user_id}:{item_id}:{event_time}:{event_type}"``, so a producer's retry of the same event
  is recognised as the same event. Other fields are ignored (forward compatible).

A message that breaks any rule is rejected with a precise reason and goes to the dead-letter topic.

>>> batch = decode_batch([b'{"user_id": 1, "item_id": 2, "event_time": 3, "event_type": "click"}',
...                       b'{"user_id": "1", "item_id": 2, "event_time": 3, "event_type": "click"}'])
>>> batch.user.tolist(), batch.event_id
([1], ['1:2:3:click'])
>>> batch.rejected
[(1, 'Expected `int`, got `str` - at `$.user_id`')]
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Annotated, Literal, Sequence

import msgspec
import numpy as np

MAX_ID = 2**63 - 1
EVENT_TYPES = ("view", "click", "rating", "cart", "purchase")
Id = Annotated[int, msgspec.Meta(ge=0, le=MAX_ID)]


class Event(msgspec.Struct, omit_defaults=True):
    user_id: Id
    item_id: Id
    event_time: Annotated[int, msgspec.Meta(ge=0, le=MAX_ID)]
    event_type: Literal["view", "click", "rating", "cart", "purchase"]
    rating: float | None = None
    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None

    def id(self) -> str:
        return self.event_id or f"{self.user_id}:{self.item_id}:{self.event_time}:{self.event_type}"


_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()


class InvalidEvent(ValueError):
    """A message that is not a valid event; ``str(e)`` is the reason."""


def decode(value: bytes | None) -> Event:
    """Decode and validate one message value, or raise :class:`InvalidEvent` with the reason."""
    if value is None:
        raise InvalidEvent("empty message (null value)")
    try:
        ev = _decoder.decode(value)
    except msgspec.ValidationError as e:
        raise InvalidEvent(str(e)) from None
    except msgspec.DecodeError as e:
        reason = str(e).removeprefix("JSON is malformed: ")
        if b"NaN" in value or b"Infinity" in value:
            reason += " (NaN and Infinity are not JSON numbers; ratings must be finite)"
        raise InvalidEvent(f"malformed JSON: {reason}") from None
    if ev.rating is not None and not math.isfinite(ev.rating):
        raise InvalidEvent(f"rating must be a finite number, got {ev.rating}")
    if ev.event_type == "rating" and ev.rating is None:
        raise InvalidEvent("event_type 'rating' requires a 'rating' field")
    return ev


def encode(ev: Event) -> bytes:
    return _encoder.encode(ev)


def event_key(event_id: str) -> int:
    """64-bit key of an event id: the idempotence key of the event log."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


@dataclass
class EventBatch:
    """Valid events of a micro-batch as columns, in arrival order; plus what was rejected."""

    key: np.ndarray  # uint64 idempotence keys
    event_id: list[str]
    user: np.ndarray  # int64
    item: np.ndarray  # int64
    event_time: np.ndarray  # int64 ms
    event_type: list[str]
    rating: np.ndarray  # float32, NaN where absent
    index: np.ndarray  # int64: position of each valid event in the input batch
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (position, reason)

    def __len__(self) -> int:
        return len(self.user)


def decode_batch(values: Sequence[bytes | None]) -> EventBatch:
    """Decode a micro-batch; invalid messages are reported in ``rejected``, never dropped."""
    events: list[Event] = []
    index: list[int] = []
    rejected: list[tuple[int, str]] = []
    for i, v in enumerate(values):
        try:
            events.append(decode(v))
            index.append(i)
        except InvalidEvent as e:
            rejected.append((i, str(e)))
    ids = [e.id() for e in events]
    return EventBatch(
        key=np.fromiter((event_key(s) for s in ids), dtype=np.uint64, count=len(ids)),
        event_id=ids,
        user=np.fromiter((e.user_id for e in events), dtype=np.int64, count=len(events)),
        item=np.fromiter((e.item_id for e in events), dtype=np.int64, count=len(events)),
        event_time=np.fromiter((e.event_time for e in events), dtype=np.int64, count=len(events)),
        event_type=[e.event_type for e in events],
        rating=np.fromiter((math.nan if e.rating is None else e.rating for e in events), dtype=np.float32, count=len(events)),
        index=np.asarray(index, dtype=np.int64),
        rejected=rejected,
    )
