"""Event validation: every rule gives a precise reason; valid events decode to columns."""

import math

import numpy as np
import pytest

from streamrec.streams.events import Event, InvalidEvent, decode, decode_batch, encode, event_key
from streamrec.streams.prometheus import reject_class

VALID = b'{"user_id": 5, "item_id": 9, "event_time": 1000, "event_type": "rating", "rating": 4.5}'


@pytest.mark.parametrize("value, reason, cls", [
    (b"not json", "malformed JSON", "malformed_json"),
    (b'{"user_id": 5', "malformed JSON", "malformed_json"),
    (b"[1, 2]", "Expected `object`, got `array`", "wrong_type"),
    (b'{"item_id": 9, "event_time": 1, "event_type": "view"}', "missing required field `user_id`", "missing_field"),
    (b'{"user_id": 5, "item_id": 9, "event_type": "view"}', "missing required field `event_time`", "missing_field"),
    (b'{"user_id": 5.0, "item_id": 9, "event_time": 1, "event_type": "view"}', "Expected `int`, got `float` - at `$.user_id`", "wrong_type"),
    (b'{"user_id": true, "item_id": 9, "event_time": 1, "event_type": "view"}', "Expected `int`, got `bool`", "wrong_type"),
    (b'{"user_id": 5, "item_id": "9", "event_time": 1, "event_type": "view"}', "Expected `int`, got `str` - at `$.item_id`", "wrong_type"),
    (b'{"user_id": -1, "item_id": 9, "event_time": 1, "event_type": "view"}', "Expected `int` >= 0 - at `$.user_id`", "out_of_range"),
    (b'{"user_id": 99999999999999999999999, "item_id": 9, "event_time": 1, "event_type": "view"}', "<= 9223372036854775807", "out_of_range"),
    (b'{"user_id": 5, "item_id": 9, "event_time": 1, "event_type": "like"}', "Invalid enum value 'like' - at `$.event_type`", "invalid_value"),
    (b'{"user_id": 5, "item_id": 9, "event_time": 1, "event_type": "rating"}', "requires a 'rating'", "invalid_value"),
    (b'{"user_id": 5, "item_id": 9, "event_time": 1, "event_type": "rating", "rating": NaN}', "ratings must be finite", "malformed_json"),
    (b'{"user_id": 5, "item_id": 9, "event_time": 1, "event_type": "rating", "rating": -Infinity}', "ratings must be finite", "malformed_json"),
    (b'{"user_id": 5, "item_id": 9, "event_time": 1, "event_type": "rating", "rating": 1e400}', "Number out of range - at `$.rating`", "out_of_range"),
    (b'{"user_id": 5, "item_id": 9, "event_time": 1, "event_type": "view", "event_id": ""}', "length >= 1", "out_of_range"),
    (None, "empty message", "empty"),
])
def test_invalid_events_have_precise_reasons(value, reason, cls):
    with pytest.raises(InvalidEvent) as e:
        decode(value)
    assert reason in str(e.value)
    assert reject_class(str(e.value)) == cls


def test_valid_event_and_derived_id():
    ev = decode(VALID)
    assert (ev.user_id, ev.item_id, ev.event_time, ev.event_type, ev.rating) == (5, 9, 1000, "rating", 4.5)
    assert ev.id() == "5:9:1000:rating"
    assert decode(b'{"user_id": 5, "item_id": 9, "event_time": 1000, "event_type": "click", "event_id": "abc", "extra": 1}').id() == "abc"
    assert decode(encode(ev)) == ev


def test_event_key_is_deterministic_and_64_bit():
    assert event_key("5:9:1000:rating") == event_key("5:9:1000:rating")
    assert event_key("a") != event_key("b")
    assert 0 <= event_key("x") < 2**64


def test_decode_batch_keeps_positions_of_valid_and_rejected():
    b = decode_batch([VALID, b"{", VALID.replace(b"4.5", b"3"), None])
    assert b.index.tolist() == [0, 2]
    assert [i for i, _ in b.rejected] == [1, 3]
    assert b.rating.tolist() == [4.5, 3.0]
    assert b.key.dtype == np.uint64 and len(set(b.key.tolist())) == 1  # same derived id twice
    nb = decode_batch([b'{"user_id": 1, "item_id": 2, "event_time": 3, "event_type": "view"}'])
    assert math.isnan(nb.rating[0])


def test_round_trip_of_struct():
    ev = Event(1, 2, 3, "view")
    assert encode(ev) == b'{"user_id":1,"item_id":2,"event_time":3,"event_type":"view"}'
