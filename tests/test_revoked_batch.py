"""A batch taken before a rebalance and stored after it loses the records of the revoked partitions
(their next owner consumes them from the committed offset); what stays is exactly what decoding
the kept records alone gives."""

from __future__ import annotations

from collections import namedtuple

from faust.types import TP

from streamrec.streams.events import Event, decode_batch, encode
from streamrec.streams.pipeline import to_raw_batch, without_revoked

Record = namedtuple("Record", "key value partition offset timestamp")
T = 900_000_000_000


def chunk(partition: int, n: int, bad: set[int]) -> tuple[TP, list]:
    recs = []
    for o in range(n):
        user = 10 + partition
        value = b"{" if o in bad else encode(Event(user, 100 * partition + o, T + o, "click"))
        recs.append(Record(str(user).encode(), value, partition, 1000 * partition + o, T + o))
    return TP("interactions", partition), recs


def decode(raw):
    return decode_batch(raw.values, raw.keys, raw.timestamps, partitions=raw.partitions, offsets=raw.offsets)


def test_records_of_revoked_partitions_leave_the_batch():
    chunks = [chunk(0, 4, {1}), chunk(1, 3, {0}), chunk(2, 5, {4}), chunk(1, 2, set())]
    raw = to_raw_batch("interactions", chunks, 0.0)
    decoded = decode(raw)
    kept, raw2, decoded2 = without_revoked(chunks, raw, decoded, [{TP("interactions", 3)}, {TP("interactions", 1)}])
    assert [tp.partition for tp, _ in kept] == [0, 2]
    alone = to_raw_batch("interactions", kept, 0.0)
    expected = decode(alone)
    assert raw2.offsets.tolist() == alone.offsets.tolist() == [0, 1, 2, 3, 2000, 2001, 2002, 2003, 2004]
    assert raw2.values == alone.values and raw2.keys == alone.keys
    assert decoded2.index.tolist() == expected.index.tolist() == [0, 2, 3, 4, 5, 6, 7]
    assert decoded2.rejected == expected.rejected and [i for i, _ in decoded2.rejected] == [1, 8]
    assert decoded2.item.tolist() == expected.item.tolist() and decoded2.event_id == expected.event_id
    assert decoded2.offset.tolist() == expected.offset.tolist() and decoded2.key.tolist() == expected.key.tolist()


def test_a_batch_without_revoked_partitions_is_unchanged():
    chunks = [chunk(0, 3, set())]
    raw = to_raw_batch("interactions", chunks, 0.0)
    decoded = decode(raw)
    assert without_revoked(chunks, raw, decoded, [{TP("interactions", 5)}]) == (chunks, raw, decoded)
