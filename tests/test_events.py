"""Event validation: every rule gives a precise reason; valid events decode to columns."""

import math

import numpy as np
import pytest

from streamrec.streams.events import (
    Contract,
    Event,
    InvalidEvent,
    check_record,
    decode,
    decode_batch,
    encode,
    event_key,
)
from streamrec.streams.prometheus import reject_class

T = 900_000_000_000  # 1998-07-09, ms
VALID = b'{"user_id": 5, "item_id": 9, "event_time": 900000000000, "event_type": "rating", "rating": 4.5}'


@pytest.mark.parametrize("value, reason, cls", [
    (b"not json", "malformed JSON", "malformed_json"),
    (b'{"user_id": 5', "malformed JSON", "malformed_json"),
    (b"[1, 2]", "Expected `object`, got `array`", "wrong_type"),
    (b'{"item_id": 9, "event_time": 1, "event_type": "view"}', "missing required field `user_id`", "missing_field"),
    (b'{"user_id": 5, "item_id": 9, "event_type": "view"}', "missing required field `event_time`", "missing_field"),
    (b'{"user_id": 5.0, "item_id": 9, "event_time": 1, "event_type": "view"}',
     "Expected `int`, got `float` - at `$.user_id`", "wrong_type"),
    (b'{"user_id": true, "item_id": 9, "event_time": 1, "event_type": "view"}', "Expected `int`, got `bool`",
     "wrong_type"),
    (b'{"user_id": 5, "item_id": "9", "event_time": 1, "event_type": "view"}',
     "Expected `int`, got `str` - at `$.item_id`", "wrong_type"),
    (b'{"user_id": -1, "item_id": 9, "event_time": 1, "event_type": "view"}', "Expected `int` >= 0 - at `$.user_id`",
     "out_of_range"),
    (b'{"user_id": 99999999999999999999999, "item_id": 9, "event_time": 1, "event_type": "view"}',
     "<= 9223372036854775807", "out_of_range"),
    (b'{"user_id": 5, "item_id": 9, "event_time": 1, "event_type": "like"}',
     "Invalid enum value 'like' - at `$.event_type`", "invalid_value"),
    (b'{"user_id": 5, "item_id": 9, "event_time": 1, "event_type": "rating"}', "requires a 'rating'", "invalid_value"),
    (b'{"user_id": 5, "item_id": 9, "event_time": 1, "event_type": "rating", "rating": NaN}', "ratings must be finite",
     "malformed_json"),
    (b'{"user_id": 5, "item_id": 9, "event_time": 1, "event_type": "rating", "rating": -Infinity}',
     "ratings must be finite", "malformed_json"),
    (b'{"user_id": 5, "item_id": 9, "event_time": 1, "event_type": "rating", "rating": 1e400}',
     "Number out of range - at `$.rating`", "out_of_range"),
    (b'{"user_id": 5, "item_id": 9, "event_time": 1, "event_type": "view", "event_id": ""}', "length >= 1",
     "out_of_range"),
    (None, "empty message", "empty"),
    (b"", "empty message (zero bytes)", "empty"),
    (b'{"user_id": 5, "item_id": 9, "event_time": 900000000000, "event_type": "rating", "rating": 1e39}',
     "rating 1e+39 out of range", "out_of_range"),
    (b'{"user_id": 5, "item_id": 9, "event_time": 900000000000, "event_type": "rating", "rating": -3.5e38}',
     "out of range (float32", "out_of_range"),
    (b'{"user_id": 5, "item_id": 9, "event_time": 788918399999, "event_type": "view"}', "before 1995-01-01",
     "out_of_range"),
    (b'{"user_id": 5, "item_id": 9, "event_time": 1260759144, "event_type": "view"}', "before 1995-01-01",
     "out_of_range"),
    (b'{"a": ' * 3000 + b"1" + b"}" * 3000, "nested too deeply (more than 64 levels)", "malformed_json"),
    (b'{"user_id": 5, "item_id": 9, "event_time": 900000000000, "event_type": "view", "event_id": "\xff\xfe"}',
     "malformed JSON: invalid UTF-8 in a string", "malformed_json"),
    (bytes(range(256)), "malformed JSON", "malformed_json"),
])
def test_invalid_events_have_precise_reasons(value, reason, cls):
    with pytest.raises(InvalidEvent) as e:
        decode(value)
    assert reason in str(e.value)
    assert reject_class(str(e.value)) == cls


def test_valid_event_and_derived_id():
    ev = decode(VALID)
    assert (ev.user_id, ev.item_id, ev.event_time, ev.event_type, ev.rating) == (5, 9, T, "rating", 4.5)
    assert ev.id() == f"5:9:{T}:rating"
    assert decode(b'{"user_id": 5, "item_id": 9, "event_time": 900000000000, "event_type": "click", "event_id": "abc",'
                  b' "extra": 1}').id() == "abc"
    assert decode(VALID.replace(b"4.5", b"3.4e38")).rating == 3.4e38  # float32's largest order still fits
    assert decode(encode(ev)) == ev


def test_event_key_is_a_fixed_64_bit_hash_of_the_event_id():
    """The idempotence key of every stored event: it must not change between processes, runs or
    releases (a salted or changed hash would store a redelivered event twice), so it is pinned."""
    assert event_key("5:9:900000000000:rating") == 6350315781599551576
    assert event_key("a") == 3405396810240292928  # blake2b, 8-byte digest, little-endian
    assert event_key("a") != event_key("b")


def test_decode_batch_keeps_positions_of_valid_and_rejected():
    b = decode_batch([VALID, b"{", VALID.replace(b"4.5", b"3"), None])
    assert b.index.tolist() == [0, 2]
    assert [i for i, _ in b.rejected] == [1, 3]
    assert b.rating.tolist() == [4.5, 3.0]
    assert b.key.dtype == np.uint64 and len(set(b.key.tolist())) == 1  # same derived id twice
    nb = decode_batch([b'{"user_id": 1, "item_id": 2, "event_time": 900000000000, "event_type": "view"}'])
    assert math.isnan(nb.rating[0])


def test_round_trip_of_struct():
    ev = Event(1, 2, T, "view")
    assert encode(ev) == b'{"user_id":1,"item_id":2,"event_time":900000000000,"event_type":"view"}'
    assert decode(encode(ev)) == ev


def test_record_rules_key_and_clock_skew():
    """The key must be the user id; event_time at most the skew ahead of the Kafka timestamp."""
    day = 86_400_000
    values = [VALID] * 6 + [VALID.replace(b"900000000000", str(T + day + 1).encode())] * 2
    keys = [b"5", b"05", b"6", None, b"5", b" 5", b"5", b"5"]
    stamps = [T] * 6 + [T, T + 1]
    b = decode_batch(values, keys, stamps, Contract())
    assert b.index.tolist() == [0, 4, 7]  # T + day + 1 is one day + 1 ms ahead of T, exactly one day of T + 1
    reasons = dict(b.rejected)
    assert [reject_class(reasons[i]) for i in (1, 2, 3, 5)] == ["wrong_key"] * 4
    assert "not the user id 5" in reasons[1] and "null" in reasons[3]
    assert "ahead of the record's Kafka timestamp" in reasons[6] and reject_class(reasons[6]) == "out_of_range"
    lenient = decode_batch(values[:4], keys[:4], stamps[:4], Contract(max_skew_ms=day, allow_null_keys=True))
    assert lenient.index.tolist() == [0, 3]
    # No Kafka timestamp (<= 0): no skew check; no keys given: no key check.
    assert len(decode_batch(values[6:], [b"5", b"5"], [0, -1])) == 2 and len(decode_batch(values)) == 8


def test_decode_never_raises_anything_but_invalid_event():
    """Whatever a message holds, one bad message is a reason, not an exception that stops the batch."""
    bad = [b'{"a": ' * 5000 + b"1" + b"}" * 5000, b'[' * 100_000, b'{"user_id": "\xc3\x28"}',
           rb'{"user_id": 1, "item_id": 2, "event_time": 900000000000, "event_type": "view", "event_id": "\ud800"}',
           b"\x00" * 10, b"1e999999", b'"' + b"\\" * 1001 + b'"']
    b = decode_batch([VALID] * 5 + bad + [VALID] * 5)
    assert len(b) == 10 and [i for i, _ in b.rejected] == list(range(5, 5 + len(bad)))


def test_batch_path_gives_the_per_message_verdicts():
    """decode_batch's array tests only pick who takes the per-message path: every message gets exactly
    the verdict and reason of decode() + check_record(), in input order."""
    ok = b'{"user_id": 5, "item_id": 2, "event_time": 900000000000, "event_type": "view"}'
    values = [ok,
              ok.replace(b'"view"', b'"rating", "rating": 1e39'),  # beyond float32
              ok.replace(b'"view"', b'"rating"'),  # rating missing
              ok.replace(b"900000000000", b"700000000000"),  # before 1995
              ok.replace(b"900000000000", b"900100000000"),  # too far ahead of the record
              ok.replace(b'"view"', b'"click", "x": ' + b"[" * 70 + b"]" * 70),  # too deep
              ok.replace(b'"view"', b'"click", "x": ' + b"[" * 30 + b"]" * 30),  # deep but allowed
              ok, ok, None, b"", ok.replace(b'"view"', b'"rating", "rating": 4.5')]
    keys = [b"5"] * 7 + [b"5\x00", b"6", b"5", b"5", b"5"]
    stamps = [T] * len(values)
    batch = decode_batch(values, keys, stamps, Contract())
    expected_ok, expected_rejected = [], []
    for i, v in enumerate(values):
        try:
            check_record(decode(v), keys[i], stamps[i], Contract())
            expected_ok.append(i)
        except InvalidEvent as e:
            expected_rejected.append((i, str(e)))
    assert batch.index.tolist() == expected_ok == [0, 6, 11]
    assert batch.rejected == expected_rejected and len(expected_rejected) == 9


def test_batch_verdicts_agree_with_decode_depth_rule_included():
    """decode_batch's fast path gives decode()'s verdicts, also for a message nested exactly
    MAX_DEPTH levels (accepted) or one more (rejected), and derives or keeps event ids as decode() does."""
    from streamrec.streams.events import MAX_DEPTH

    def nested(levels: int) -> bytes:  # the event object is level 1; "x" adds levels - 1
        return VALID[:-1] + b', "x": ' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"

    named = VALID[:-1] + b', "event_id": "abc"}'
    for values in ([VALID] * 10 + [nested(MAX_DEPTH)], [VALID] * 10 + [nested(MAX_DEPTH + 1)],
                   [nested(MAX_DEPTH + 1)] + [VALID] * 200, [VALID, named, VALID]):
        expected = []
        for i, v in enumerate(values):
            try:
                decode(v)
                expected.append(i)
            except InvalidEvent:
                pass
        b = decode_batch(values)
        assert b.index.tolist() == expected and len(b.rejected) == len(values) - len(expected)
        assert all("nested too deeply" in reason for _, reason in b.rejected)
        assert b.event_id == [decode(values[i]).id() for i in expected]
        assert b.key.tolist() == [event_key(decode(values[i]).id()) for i in expected]
    assert decode_batch([VALID, named]).event_id == [f"5:9:{T}:rating", "abc"]
