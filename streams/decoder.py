"""The decode stage in a child process, off the worker's GIL.

Decoding is Python per record (msgspec, the event id, its blake2b key, the column passes): a
quarter of the time the worker's threads held its one GIL at ML-20M scale (py-spy ``--gil``,
docs/benchmarks.md#store), while the worker used ~1.1 of two cores. In a child process
(``python -m streamrec.streams.decoder``, see streams/child.py) it runs beside the worker instead
of taking turns with its store and publish stages. What crosses the pipes is small: the records'
values and keys (each list joined into one buffer) one way, an ``EventBatch`` (NumPy arrays and
two lists of short strings) back. A child that dies is replaced and the batch decoded again:
decoding is a pure function.

>>> pool = DecodeProcess(Contract())
>>> batch = pool.decode([b'{"user_id": 1, "item_id": 2, "event_time": 900000000000, "event_type": "view"}',
...                      b'not json'])
>>> batch.user.tolist(), batch.rejected
([1], [(1, 'malformed JSON: invalid character (byte 4)')])
>>> pool.close()
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from streamrec.storage.batch import EventBatch
from streamrec.streams.child import ChildProcess, pack, serve, unpack
from streamrec.streams.events import Contract, decode_batch


class DecodeProcess(ChildProcess):
    """:func:`decode_batch` with one contract, run in a child process."""

    def __init__(self, contract: Contract):
        super().__init__("streamrec.streams.decoder", contract)
        self.contract = contract

    def decode(self, values: Sequence[bytes | None], keys: Sequence[bytes | None] | None = None,
               timestamps: np.ndarray | None = None, partitions: np.ndarray | None = None,
               offsets: np.ndarray | None = None) -> EventBatch:
        """:func:`decode_batch` of these records with this object's contract, in the child."""
        return self.ask((pack(values), None if keys is None else pack(keys), timestamps, partitions, offsets))


def _decode(contract: Contract, request) -> EventBatch:
    values, keys, timestamps, partitions, offsets = request
    return decode_batch(unpack(*values), None if keys is None else unpack(*keys), timestamps, contract,
                        partitions, offsets)


if __name__ == "__main__":
    serve(_decode)
