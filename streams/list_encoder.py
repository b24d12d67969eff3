"""Published lists as JSON: the message format, and a micro-batch's lists encoded at once.

(Encoding in a child process, as decoding is, was measured: the publish thread's CPU fell ~3 ms a
batch, the worker's rate on two cores did not measurably rise; docs/benchmarks.md#store.)

>>> columns = ListColumns(np.array([7]), np.array([[3, 5, -1]]), np.array([[2.0, 1.0, 0.0]], np.float32),
...                       ["popularity"], ["0"], np.array([1000]), np.array([1001]), np.array([0]), np.array([42]),
...                       1500, 1200, 1300)
>>> values = encode_lists(columns)
>>> msgspec.json.decode(values[0], type=Recommendation).items
[3, 5]
"""

from __future__ import annotations

from itertools import repeat
from typing import NamedTuple

import msgspec
import numpy as np


class Recommendation(msgspec.Struct):
    """A published top-K list (JSON on the recommendations topic, keyed by user id)."""

    user_id: int
    items: list[int]
    scores: list[float]
    model: str
    model_version: str
    event_time: int  # ms: event time of the newest event that triggered this list
    source_timestamp: int  # ms: Kafka timestamp of that event's message
    source_partition: int  # Kafka partition and offset of that event's message: the list
    source_offset: int  # reflects every event of the user up to and including it
    published_at: int  # ms: wall time of publication
    # Where the time between source_timestamp and published_at went (ms, wall time): the worker
    # received the micro-batch holding that event / had it durable in DuckDB. 0: not given.
    received_at: int = 0
    stored_at: int = 0


class ListColumns(NamedTuple):
    """A micro-batch's lists, one row per user (items -1 padded; the padding is not published)."""

    users: np.ndarray
    items: np.ndarray  # [n, k]
    scores: np.ndarray  # [n, k]
    models: list[str]
    versions: list[str]
    trigger_time: np.ndarray
    trigger_ts: np.ndarray
    trigger_partition: np.ndarray
    trigger_offset: np.ndarray
    published_at: int  # ms, the same for the whole batch
    received_at: int
    stored_at: int


_encode = msgspec.json.Encoder().encode


def encode_lists(c: ListColumns) -> list[bytes]:
    """Each row's :class:`Recommendation` as JSON, in C-level passes (a Python loop over ~1,000
    users a batch cost ~5 us each)."""
    items, scores = c.items.tolist(), c.scores.tolist()
    n_valid = (c.items >= 0).sum(axis=1)
    if (n_valid < c.items.shape[1]).any():  # short lists (few items known yet): no -1 padding
        items = list(map(list.__getitem__, items, map(slice, n_valid.tolist())))
        scores = list(map(list.__getitem__, scores, map(slice, n_valid.tolist())))
    rows = map(Recommendation, c.users.tolist(), items, scores, c.models, c.versions, c.trigger_time.tolist(),
               c.trigger_ts.tolist(), c.trigger_partition.tolist(), c.trigger_offset.tolist(),
               repeat(c.published_at), repeat(c.received_at), repeat(c.stored_at))
    return list(map(_encode, rows))
