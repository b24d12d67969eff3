"""The interaction event: its JSON form on the ``interactions`` topic, validation and batch decoding.

One JSON object per Kafka message, keyed by the user id (as decimal text), so that all of a
user's events share a partition and keep their order::

    {"user_id": 42, "item_id": 318, "event_time": 1260759144000,
     "event_type": "rating", "rating": 4.5, "event_id": "optional-unique-string"}

* ``user_id``, ``item_id``: integers in [0, 2**63 - 1].
* ``event_time``: milliseconds since the Unix epoch, from 1995-01-01 on, and at most
  ``max_event_skew`` (default one day) ahead of the Kafka timestamp of its record: an event
  from the far future would stay its user's newest event for ever.
* ``event_type``: one of ``view``, ``click``, ``rating``, ``cart``, ``purchase``.
* ``rating``: a finite number within float32's range (it is stored as float32); required when
  ``event_type`` is ``rating``, optional otherwise.
* ``event_id``: at most 200 characters. When absent it is derived from the other fields as
  ``"{user_id}:{item_id}:{event_time}:{event_type}"``, so a producer's retry of the same event
  is recognised as the same event. Other fields are ignored (forward compatible).
* The record's key: the user id as decimal text (``b"42"``); a null key is rejected unless
  ``allow_null_keys`` is set.

A message that breaks any rule is rejected with a precise reason and goes to the dead-letter
topic. Decoding never raises for one bad message, whatever the error (deep nesting, invalid
UTF-8, anything else): it becomes a dead letter and the rest of the batch goes on. An event id
seen before with a different payload is a ``conflict`` (found by the store stage,
``streams/pipeline.py``); a true redelivery is a silent duplicate.

>>> batch = decode_batch([b'{"user_id": 1, "item_id": 2, "event_time": 900000000000, "event_type": "click"}',
...                       b'{"user_id": "1", "item_id": 2, "event_time": 900000000000, "event_type": "click"}'])
>>> batch.user.tolist(), batch.event_id
([1], ['1:2:900000000000:click'])
>>> batch.rejected
[(1, 'Expected `int`, got `str` - at `$.user_id`')]
"""

from __future__ import annotations

import hashlib
import math
import operator
from dataclasses import dataclass
from typing import Annotated, Literal, Sequence

import msgspec
import numpy as np

from streamrec.storage.batch import EventBatch

MAX_ID = 2**63 - 1
EVENT_TYPES = ("view", "click", "rating", "cart", "purchase")
MIN_EVENT_TIME = 788_918_400_000  # 1995-01-01T00:00:00Z in ms: older data is a unit mistake (seconds)
MAX_DEPTH = 64  # nesting levels of a message: an event has 1 (deeper extra fields are allowed up to this)
MAX_RATING = float(np.finfo(np.float32).max)  # ratings are stored as float32: larger would become inf
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


@dataclass(frozen=True)
class Contract:
    """The record-level rules (``Settings.max_event_skew`` and ``Settings.allow_null_keys``)."""

    max_skew_ms: int = 86_400_000  # event_time at most this far ahead of the record's Kafka timestamp
    allow_null_keys: bool = False


_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()


class InvalidEvent(ValueError):
    """A message that is not a valid event; ``str(e)`` is the reason."""


def decode(value: bytes | None) -> Event:
    """Decode and validate one message value, or raise :class:`InvalidEvent` with the reason.

    Raises nothing else: whatever goes wrong while decoding one message is its reason.

    >>> decode(b'{"a": ' * 2000 + b'1' + b'}' * 2000)
    Traceback (most recent call last):
    ...
    streamrec.streams.events.InvalidEvent: malformed JSON: nested too deeply (more than 64 levels)
    """
    if not value:
        raise InvalidEvent("empty message (null value)" if value is None else "empty message (zero bytes)")
    # msgspec's own limit depends on how deep the caller's stack is: the same message could pass in
    # one thread and fail in another. A fixed limit first (counting is C-fast; the scan is rare).
    if value.count(b"{") + value.count(b"[") > MAX_DEPTH and nesting_depth(value) > MAX_DEPTH:
        raise InvalidEvent(f"malformed JSON: nested too deeply (more than {MAX_DEPTH} levels)")
    try:
        ev = _decoder.decode(value)
    except msgspec.ValidationError as e:
        raise InvalidEvent(str(e)) from None
    except msgspec.DecodeError as e:
        reason = str(e).removeprefix("JSON is malformed: ")
        if "UTF-8" in reason:  # msgspec >= 0.23 says so itself (before: a UnicodeDecodeError, below)
            raise InvalidEvent(f"malformed JSON: invalid UTF-8 in a string ({reason})") from None
        if b"NaN" in value or b"Infinity" in value:
            reason += " (NaN and Infinity are not JSON numbers; ratings must be finite)"
        raise InvalidEvent(f"malformed JSON: {reason}") from None
    except RecursionError:  # an unknown field nested ~1,000 levels deep
        raise InvalidEvent("malformed JSON: nested too deeply (RecursionError)") from None
    except UnicodeDecodeError as e:  # invalid UTF-8 inside a JSON string
        raise InvalidEvent(f"malformed JSON: invalid UTF-8 in a string ({e.reason})") from None
    except Exception as e:  # anything else: a dead letter too, never a crash
        raise InvalidEvent(f"undecodable: {type(e).__name__}: {str(e)[:200]}") from None
    if ev.rating is not None:
        if not math.isfinite(ev.rating):
            raise InvalidEvent(f"rating must be a finite number, got {ev.rating}")
        if abs(ev.rating) > MAX_RATING:
            raise InvalidEvent(f"rating {ev.rating!r} out of range (float32: |rating| <= {MAX_RATING:.7g})")
    if ev.event_type == "rating" and ev.rating is None:
        raise InvalidEvent("event_type 'rating' requires a 'rating' field")
    if ev.event_time < MIN_EVENT_TIME:
        raise InvalidEvent(f"event_time {ev.event_time} out of range: before 1995-01-01 "
                           f"({MIN_EVENT_TIME} ms; event times are milliseconds)")
    return ev


def nesting_depth(value: bytes) -> int:
    """Deepest nesting of objects and arrays in a JSON text (brackets inside strings do not count).

    >>> nesting_depth(b'{"a": [1, {"b": "[[["}]}'), nesting_depth(b"1")
    (3, 0)
    """
    depth = deepest = 0
    in_string = escaped = False
    for c in value:
        if in_string:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:  # quote
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c in (0x7B, 0x5B):  # { [
            depth += 1
            deepest = max(deepest, depth)
        elif c in (0x7D, 0x5D):
            depth -= 1
    return deepest


def check_record(ev: Event, key: bytes | None, timestamp: int, contract: Contract) -> None:
    """The rules that need the Kafka record: its key and its timestamp (ms; <= 0: none).

    >>> ev = decode(b'{"user_id": 7, "item_id": 1, "event_time": 900000000000, "event_type": "view"}')
    >>> check_record(ev, b"8", 900000000000, Contract())
    Traceback (most recent call last):
    ...
    streamrec.streams.events.InvalidEvent: wrong key: b'8' is not the user id 7 as decimal text
    """
    if key is None:
        if not contract.allow_null_keys:
            raise InvalidEvent(f"wrong key: null, expected the user id {ev.user_id} as decimal text "
                               "(allow_null_keys accepts null keys)")
    elif key != str(ev.user_id).encode():
        raise InvalidEvent(f"wrong key: {key[:40]!r} is not the user id {ev.user_id} as decimal text")
    if timestamp > 0 and ev.event_time > timestamp + contract.max_skew_ms:
        raise InvalidEvent(f"event_time {ev.event_time} out of range: more than {contract.max_skew_ms} ms "
                           f"ahead of the record's Kafka timestamp {timestamp}")


def encode(ev: Event) -> bytes:
    return _encoder.encode(ev)


def event_key(event_id: str) -> int:
    """64-bit key of an event id: the idempotence key of the event log."""
    return int(event_keys([event_id])[0])


def event_keys(event_ids: Sequence[str]) -> np.ndarray:
    """uint64 keys of many event ids (:func:`event_key` of each), hashed into one buffer.

    >>> event_keys(["a", "b"]).tolist() == [event_key("a"), event_key("b")]
    True
    """
    digest = hashlib.blake2b
    return np.frombuffer(b"".join([digest(s.encode(), digest_size=8).digest() for s in event_ids]), "<u8").copy()


def decode_batch(values: Sequence[bytes | None], keys: Sequence[bytes | None] | None = None,
                 timestamps: Sequence[int] | None = None, contract: Contract = Contract(),
                 partitions: np.ndarray | None = None, offsets: np.ndarray | None = None) -> EventBatch:
    """Decode a micro-batch; invalid messages are reported in ``rejected``, never dropped.

    ``keys`` and ``timestamps`` (of the Kafka records): checked by :func:`check_record` when given.
    ``partitions`` and ``offsets`` (of the records, default 0 and the position): carried by the
    valid events' rows.

    Fast path: msgspec per message, then the rules of :func:`decode` and :func:`check_record` as
    array tests over the batch. A message any test flags goes through those two functions, which
    give the exact reason (or accept it): the tests only choose who takes the slow path.
    """
    events: list[Event] = []
    index: list[int] = []
    rejected: list[tuple[int, str]] = []
    fast = _decoder.decode
    for i, v in enumerate(values):
        try:
            # Deeper than MAX_DEPTH takes MAX_DEPTH + 1 opening and closing brackets: a shorter
            # message cannot be (a malformed one fails msgspec and gets decode()'s verdict).
            if len(v) > 2 * MAX_DEPTH and v.count(b"{") + v.count(b"[") > MAX_DEPTH:
                raise InvalidEvent  # maybe too deep: decode() decides
            events.append(fast(v))
            index.append(i)
        except Exception:  # empty, malformed, invalid, anything: decode() gives the reason
            ev = _slow(values, keys, timestamps, contract, i, rejected)
            if ev is not None:
                events.append(ev)
                index.append(i)
    c = _columns(events)
    flagged = _flag(c, index, keys, timestamps, contract)
    if len(flagged):
        keep = np.ones(len(events), bool)
        for j in flagged.tolist():
            keep[j] = _slow(values, keys, timestamps, contract, index[j], rejected) is not None
        events = [e for e, k in zip(events, keep.tolist()) if k]
        index = [i for i, k in zip(index, keep.tolist()) if k]
        c = {name: col[keep] for name, col in c.items()}
        rejected.sort()
    ids = [e.id() for e in events]
    idx = np.asarray(index, dtype=np.int64)
    return EventBatch(
        key=event_keys(ids),
        event_id=ids,
        user=c["user"],
        item=c["item"],
        event_time=c["event_time"],
        event_type=[e.event_type for e in events],
        rating=c["rating"].astype(np.float32),
        partition=np.zeros(len(idx), np.int32) if partitions is None else np.asarray(partitions, np.int32)[idx],
        offset=idx.copy() if offsets is None else np.asarray(offsets, np.int64)[idx],
        index=idx,
        rejected=rejected,
    )


def _columns(events: list[Event]) -> dict[str, np.ndarray]:
    n = len(events)
    return {
        "user": np.fromiter((e.user_id for e in events), np.int64, n),
        "item": np.fromiter((e.item_id for e in events), np.int64, n),
        "event_time": np.fromiter((e.event_time for e in events), np.int64, n),
        "rating": np.fromiter((math.nan if e.rating is None else e.rating for e in events), np.float64, n),
        "needs_rating": np.fromiter((e.event_type == "rating" for e in events), bool, n),
    }


def _slow(values, keys, timestamps, contract, i: int, rejected: list) -> Event | None:
    """Message ``i`` through :func:`decode` and :func:`check_record`: the event, or None with its
    reason appended to ``rejected``."""
    try:
        ev = decode(values[i])
        if keys is not None:
            check_record(ev, keys[i], int(timestamps[i]) if timestamps is not None else 0, contract)
        return ev
    except InvalidEvent as e:
        rejected.append((i, str(e)))
        return None


def _flag(c: dict[str, np.ndarray], index: list[int], keys, timestamps, contract: Contract) -> np.ndarray:
    """Rows that may break a rule past msgspec's schema (ratings, event times, keys, skew). A
    superset of the rule breakers is fine; none may be missed."""
    rating, times = c["rating"], c["event_time"]
    missing = np.isnan(rating)
    bad = (missing & c["needs_rating"]) | (~missing & ~(np.abs(rating) <= MAX_RATING)) | (times < MIN_EVENT_TIME)
    if keys is not None and len(index):
        expected = c["user"].astype("S20").tolist()  # decimal text of each user id
        mine = keys if len(index) == len(keys) else [keys[i] for i in index]
        bad |= np.fromiter(map(operator.ne, mine, expected), bool, len(index))
        if timestamps is not None:
            ts = np.asarray(timestamps, np.int64)[index]
            bad |= (ts > 0) & (times > ts + contract.max_skew_ms)
    return np.flatnonzero(bad)
