"""The decode stage in a child process, off the worker's GIL.

Decoding is Python per record (msgspec, the event id, its blake2b key, the column passes): a
quarter of the time the worker's threads held its one GIL at ML-20M scale (py-spy ``--gil``,
docs/benchmarks.md#store), while the worker used ~1.1 of two cores. In a child process it runs
beside the worker instead of taking turns with its store and publish stages. What crosses the
pipes is small: the records' values and keys (bytes, pickled in C) one way, an ``EventBatch``
(NumPy arrays and two lists of short strings) back.

The child is ``python -m streamrec.streams.decoder``, talking length-prefixed pickles over its
stdin and stdout (``multiprocessing``'s spawn would re-import the worker's ``__main__``). It
ignores SIGINT (Ctrl-C reaches the whole process group; the worker stops, and its child reads
the end of its stdin and exits), so it outlives no worker, even one killed with SIGKILL. If it
dies, the next call starts a new one and decodes the batch again: decoding is a pure function.

>>> pool = DecodeProcess(Contract())
>>> batch = pool.decode([b'{"user_id": 1, "item_id": 2, "event_time": 900000000000, "event_type": "view"}',
...                      b'not json'])
>>> batch.user.tolist(), batch.rejected
([1], [(1, 'malformed JSON: invalid character (byte 4)')])
>>> pool.close()
"""

from __future__ import annotations

import fcntl
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from typing import BinaryIO, Sequence

import numpy as np

from streamrec.storage.batch import EventBatch
from streamrec.streams.events import Contract, decode_batch

log = logging.getLogger(__name__)
_LENGTH = struct.Struct("<Q")
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class DecoderDied(RuntimeError):
    """The decoder process ended before answering."""


class DecodeProcess:
    """:func:`decode_batch` with one contract, run in a child process (see the module's docstring).
    One call at a time (a lock keeps them in turn)."""

    def __init__(self, contract: Contract):
        self.contract = contract
        self.restarts = 0  # children started again after one died
        self._lock = threading.Lock()
        self._child = self._start()

    def _start(self) -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, "-m", "streamrec.streams.decoder"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE)
        for pipe in (child.stdin, child.stdout):  # a batch's ~0.7 MB in one write: 4 ms less a batch than 64 kB
            try:
                fcntl.fcntl(pipe.fileno(), F_SETPIPE_SZ, 1 << 20)
            except OSError:  # (Linux only; the default works, a little slower)
                pass
        _send(child.stdin, self.contract)
        return child

    def decode(self, values: Sequence[bytes | None], keys: Sequence[bytes | None] | None = None,
               timestamps: np.ndarray | None = None, partitions: np.ndarray | None = None,
               offsets: np.ndarray | None = None) -> EventBatch:
        """:func:`decode_batch` of these records with this object's contract, in the child."""
        # Each list as one buffer and its lengths: pickling 5,000 bytes objects one by one cost
        # 1.5 ms of the worker's GIL a batch, joining them 0.1 ms.
        args = (_pack(values), None if keys is None else _pack(keys), timestamps, partitions, offsets)
        with self._lock:
            try:
                return self._ask(args)
            except (DecoderDied, OSError):  # killed, out of memory: a new child, the same batch
                self.restarts += 1
                log.warning("the decoder process ended (exit status %s); starting a new one", self._child.poll())
                self._stop()
                self._child = self._start()
                return self._ask(args)

    def _ask(self, args) -> EventBatch:
        _send(self._child.stdin, args)
        answer = _receive(self._child.stdout)
        if answer is None:
            raise DecoderDied("the decoder process ended")
        if isinstance(answer, BaseException):  # decode_batch never raises for a bad record: a bug
            raise answer
        return answer

    def _stop(self) -> None:
        for stream in (self._child.stdin, self._child.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self._child.wait(5)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()

    def close(self) -> None:
        with self._lock:
            self._stop()


def _pack(items: Sequence[bytes | None]) -> tuple[bytes, np.ndarray]:
    """Byte strings as (their concatenation, each one's length, -1 for None)."""
    if None in items:
        lengths = np.array([-1 if x is None else len(x) for x in items], np.int64)
        return b"".join(x for x in items if x is not None), lengths
    return b"".join(items), np.fromiter(map(len, items), np.int64, len(items))


def _unpack(blob: bytes, lengths: np.ndarray) -> list[bytes | None]:
    """
    >>> _unpack(*_pack([b"ab", None, b"", b"c"]))
    [b'ab', None, b'', b'c']
    """
    ends = np.cumsum(np.maximum(lengths, 0)).tolist()
    starts = [0] + ends[:-1]
    out = list(map(blob.__getitem__, map(slice, starts, ends)))
    for i in np.flatnonzero(lengths < 0).tolist():
        out[i] = None
    return out


def _send(stream: BinaryIO, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream: BinaryIO):
    """The next object, or None at the end of the stream."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (n,) = _LENGTH.unpack(head)
    data = stream.read(n)
    return pickle.loads(data) if len(data) == n else None


def _serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The child: the contract, then one batch in, one ``EventBatch`` (or the error) out, until EOF."""
    contract = _receive(stdin)
    while (args := _receive(stdin)) is not None:
        values, keys, timestamps, partitions, offsets = args
        try:
            out = decode_batch(_unpack(*values), None if keys is None else _unpack(*keys), timestamps, contract,
                               partitions, offsets)
        except Exception as e:  # (a bug: decode_batch gives bad records as reasons) told, not hidden
            out = e
        _send(stdout, out)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker handles Ctrl-C; its exit closes our stdin
    # The answers get the pipe to themselves: anything printed to stdout (a library's notice) goes to
    # stderr, the worker's log, instead of into the byte stream the worker is decoding.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _serve(sys.stdin.buffer, answers)
