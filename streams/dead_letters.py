"""Dead letters: a rejected record copied to the DLQ topic with why and where it came from.

Nothing may vanish without a record, not even a value too large to produce again: a record the
broker accepted can exceed the worker's producer limit (librdkafka's ``message.max.bytes``,
1,000,000 by default), and producing it as-is would fail the whole batch on every retry. Such a
value is stored truncated; its headers give its original size and the SHA-256 of the whole value,
so the original can still be found (and checked) at its source topic, partition and offset.

Headers of every dead letter: ``reason``, ``source_topic``, ``source_partition``,
``source_offset``, ``original_size``, ``sha256``; ``truncated`` (``true``) when cut.

>>> headers = dict(dead_letter_headers("t", 0, 5, b"x" * 10, "bad"))
>>> headers["original_size"], headers["sha256"][:8]
(b'10', b'fc11d6f2')
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pyarrow as pa

# Room left under the producer's 1,000,000-byte message limit for the key, headers and framing.
MAX_VALUE_BYTES = 900_000
MAX_REASON_BYTES = 1000


def dead_letter_headers(topic: str, partition: int, offset: int, value: bytes | None,
                        reason: str) -> list[tuple[str, bytes]]:
    value = value or b""
    return [("reason", reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]),
            ("source_topic", topic.encode()), ("source_partition", str(int(partition)).encode()),
            ("source_offset", str(int(offset)).encode()), ("original_size", str(len(value)).encode()),
            ("sha256", hashlib.sha256(value).hexdigest().encode())]


def dead_letter(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                reason: str) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """(key, value, headers) of the DLQ record of a rejected one; a value too large is cut.

    >>> k, v, h = dead_letter("t", 1, 7, b"k" * 5000, b"y" * 2_000_000, "too big")
    >>> len(v), len(k), dict(h)["truncated"], dict(h)["original_size"]
    (900000, 1000, b'true', b'2000000')
    """
    headers = dead_letter_headers(topic, partition, offset, value, reason)
    if value is not None and len(value) > MAX_VALUE_BYTES:
        value = value[:MAX_VALUE_BYTES]
        headers.append(("truncated", b"true"))
    if key is not None and len(key) > 1000:  # a key is not evidence: its start is enough
        key = key[:1000]
    return key, value, headers


def conflicts(store, batch, new_mask) -> list[tuple[int, str]]:
    """[(row of ``batch``, reason)] of the events not stored now whose id is stored with another
    payload: the stored one stays, the newcomer is a dead letter. A redelivery (same payload)
    is a silent duplicate. ``store``: the EventStore the batch was just appended to; it finds the
    conflicts by payload hash in memory, and only those are read back, to name what differs."""
    rows = store.conflicting_rows(batch, new_mask)
    if len(rows) == 0:
        return []
    cur = store.con.cursor()
    try:
        cur.register("dup_keys", pa.table({"key": np.unique(batch.key[rows])}))
        stored = {r[0]: r[1:] for r in cur.execute(
            "SELECT key, event_id, user_id, item_id, event_time, event_type, rating"
            " FROM events JOIN dup_keys USING (key)").fetchall()}
    finally:
        cur.close()
    out = []
    for j in rows.tolist():
        s = stored.get(int(batch.key[j]))
        if s is None:  # not stored (cannot happen after a committed append): nothing to compare
            continue
        rating = float(batch.rating[j])
        mine = (batch.event_id[j], int(batch.user[j]), int(batch.item[j]), int(batch.event_time[j]),
                batch.event_type[j], None if math.isnan(rating) else rating)
        theirs = s[:5] + (None if s[5] is None else float(np.float32(s[5])),)
        if mine != theirs:
            diff = [name for name, a, b in zip(PAYLOAD, mine, theirs) if a != b]
            out.append((j, f"conflict: event id {batch.event_id[j][:200]!r} was stored before with another "
                           f"payload (differs in {', '.join(diff)}); the stored event stays"))
    return out


PAYLOAD = ("event_id", "user_id", "item_id", "event_time", "event_type", "rating")
