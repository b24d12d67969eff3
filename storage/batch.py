"""A micro-batch of events as columns: what the worker decodes and what the store appends.

One row per event, in arrival order. ``streams.events.decode_batch`` builds it from Kafka
records (and says which records it refused); ``storage.store.EventStore.append`` stores it.

>>> b = EventBatch.of(key=[7], event_id=["a"], user=[1], item=[2], event_time=[900], event_type=["view"])
>>> len(b), b.rating.dtype.name, b.partition.tolist(), b.index.tolist()
(1, 'float32', [0], [0])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class EventBatch:
    key: np.ndarray  # uint64: the idempotence key (hash of the event id)
    event_id: list[str]
    user: np.ndarray  # int64
    item: np.ndarray  # int64
    event_time: np.ndarray  # int64 ms
    event_type: list[str]
    rating: np.ndarray  # float32, NaN where absent
    partition: np.ndarray  # int32: Kafka partition and offset of each event's record
    offset: np.ndarray  # int64
    # What decoding found: the position of each row in its input, and the refused inputs.
    index: np.ndarray  # int64
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (position, reason)
    conflicts: int = 0  # rows the store stage found to conflict with a stored event (streams/dead_letters.py)

    def __len__(self) -> int:
        return len(self.user)

    def without_inputs(self, keep: np.ndarray) -> "EventBatch":
        """The rows whose input position is kept (``keep``: a mask over the inputs), renumbered
        as positions among the kept inputs; rejected inputs likewise.

        >>> b = EventBatch.of(key=[1, 2], event_id=["a", "b"], user=[1, 1], item=[5, 6], event_time=[0, 0],
        ...                   event_type=["view", "view"], index=[0, 2])
        >>> b.rejected = [(1, "bad")]
        >>> c = b.without_inputs(np.array([False, True, True]))
        >>> c.item.tolist(), c.index.tolist(), c.rejected
        ([6], [1], [(0, 'bad')])
        """
        keep = np.asarray(keep, bool)
        position = np.cumsum(keep) - 1  # input position -> position among the kept inputs
        rows = np.flatnonzero(keep[self.index])
        pick = rows.tolist()
        return EventBatch(
            key=self.key[rows], event_id=[self.event_id[i] for i in pick], user=self.user[rows],
            item=self.item[rows], event_time=self.event_time[rows],
            event_type=[self.event_type[i] for i in pick], rating=self.rating[rows],
            partition=self.partition[rows], offset=self.offset[rows], index=position[self.index[rows]],
            rejected=[(int(position[i]), reason) for i, reason in self.rejected if keep[i]],
        )

    @classmethod
    def of(cls, key, event_id, user, item, event_time, event_type, rating=None, partition=None, offset=None,
           index=None) -> "EventBatch":
        """Columns from sequences, with the dtypes above; absent ratings NaN, absent partitions 0,
        absent offsets and positions 0, 1, 2, ..."""
        n = len(event_id)
        return cls(
            key=np.asarray(key, np.uint64), event_id=list(event_id), user=np.asarray(user, np.int64),
            item=np.asarray(item, np.int64), event_time=np.asarray(event_time, np.int64),
            event_type=list(event_type),
            rating=np.full(n, np.nan, np.float32) if rating is None else np.asarray(rating, np.float32),
            partition=np.zeros(n, np.int32) if partition is None else np.asarray(partition, np.int32),
            offset=np.arange(n, dtype=np.int64) if offset is None else np.asarray(offset, np.int64),
            index=np.arange(n, dtype=np.int64) if index is None else np.asarray(index, np.int64),
        )
