"""Dead letters: oversized values cut with evidence; conflicting payloads for a stored event id."""

import hashlib

import numpy as np

from streamrec.storage.store import EventStore
from streamrec.streams.dead_letters import MAX_VALUE_BYTES, conflicts, dead_letter
from streamrec.streams.events import decode_batch
from streamrec.streams.prometheus import reject_class


def test_too_large_value_is_cut_with_size_and_hash_of_the_whole():
    value = bytes(range(256)) * 6000  # 1.5 MB, binary
    key, cut, headers = dead_letter("interactions", 2, 41, b"7", value, "malformed JSON: x")
    h = dict(headers)
    assert cut == value[:MAX_VALUE_BYTES] and key == b"7"
    assert h["original_size"] == b"1536000" and h["truncated"] == b"true"
    assert h["sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert (h["source_topic"], h["source_partition"], h["source_offset"]) == (b"interactions", b"2", b"41")
    _, same, small = dead_letter("t", 0, 0, None, b"{", "r")
    assert same == b"{" and "truncated" not in dict(small)


def _append(store, batch, offset0=0):
    batch.offset = np.arange(offset0, offset0 + len(batch))  # the records' offsets
    return store.append(batch)


def test_conflicting_payload_is_found_redelivery_is_not(tmp_path):
    store = EventStore(tmp_path / "w.duckdb")
    ev = (b'{"user_id": 1, "item_id": 2, "event_time": 900000000000, "event_type": "rating", "rating": 4.5, '
          b'"event_id": "e1"}')
    first = decode_batch([ev, ev.replace(b'"e1"', b'"e2"')])
    assert _append(store, first).n_new == 2
    # Again: the same e1 (a redelivery), e1 with another item, e2 with another rating, a new e3,
    # and inside the batch a new e4 twice with different payloads (the first one is stored).
    e4 = ev.replace(b'"e1"', b'"e4"')
    second = decode_batch([ev, ev.replace(b'"item_id": 2', b'"item_id": 3'), ev.replace(b'"e1"',
                                                                                        b'"e2"').replace(b"4.5", b"4"),
                           ev.replace(b'"e1"', b'"e3"'), e4, e4.replace(b'"user_id": 1', b'"user_id": 9')])
    result = _append(store, second, 2)
    assert result.new_mask.tolist() == [False, False, False, True, True, False]
    found = conflicts(store, second, result.new_mask)
    assert [j for j, _ in found] == [1, 2, 5]
    reasons = [r for _, r in found]
    assert "differs in item_id" in reasons[0] and "differs in rating" in reasons[1]
    assert "differs in user_id" in reasons[2]
    assert {reject_class(r) for r in reasons} == {"conflict"}
    assert store.con.execute("SELECT item_id FROM events WHERE event_id = 'e1'").fetchall() == [(2,
                                                                                                 )]  # stored one stays
