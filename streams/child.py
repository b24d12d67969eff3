"""Work off the worker's GIL: a long-lived child process answering one request at a time.

The worker's three stage threads share one GIL; at ML-20M scale it used ~1.1 of two cores while
its Python held the GIL most of the time (docs/benchmarks.md#store). Pure per-record
Python (decoding events: streams/decoder.py) runs instead in a child process beside it, over
pipes: what crosses them is small (bytes joined into one buffer with their lengths, NumPy arrays).

A child is ``python -m <module>`` (``multiprocessing``'s spawn would re-import the worker's
``__main__``) whose ``__main__`` calls :func:`serve` with its handler; they talk length-prefixed
pickles over its stdin and stdout. It ignores SIGINT (Ctrl-C reaches the whole process group; the
worker stops, and its child reads the end of its stdin and exits), so it outlives no worker, even
one killed with SIGKILL. If it dies, the next request starts a new one and is asked again: the
handlers are pure functions.
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
from typing import Any, BinaryIO, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)
_LENGTH = struct.Struct("<Q")
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class ChildDied(RuntimeError):
    """The child process ended before answering."""


class ChildProcess:
    """``python -m module``, given ``setup`` once, then asked requests in turn (a lock keeps them
    in turn); a child that died is replaced and the request asked again, once."""

    def __init__(self, module: str, setup: Any = None):
        self.module, self.setup = module, setup
        self.restarts = 0  # children started again after one died
        self._lock = threading.Lock()
        self._child = self._start()

    def _start(self) -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, "-m", self.module], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for pipe in (child.stdin, child.stdout):  # a batch's ~0.7 MB in one write: 4 ms less a batch than 64 kB
            try:
                fcntl.fcntl(pipe.fileno(), F_SETPIPE_SZ, 1 << 20)
            except OSError:  # (Linux only; the default works, a little slower)
                pass
        send(child.stdin, self.setup)
        return child

    def ask(self, request: Any) -> Any:
        with self._lock:
            try:
                return self._ask(request)
            except (ChildDied, OSError):  # killed, out of memory: a new child, the same request
                self.restarts += 1
                log.warning("the %s process ended (exit status %s); starting a new one", self.module,
                            self._child.poll())
                self._stop()
                self._child = self._start()
                return self._ask(request)

    def _ask(self, request: Any) -> Any:
        send(self._child.stdin, request)
        answer = receive(self._child.stdout)
        if answer is None:
            raise ChildDied(f"the {self.module} process ended")
        if isinstance(answer, BaseException):  # a handler never raises for bad input: a bug
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


def pack(items: Sequence[bytes | None]) -> tuple[bytes, np.ndarray]:
    """Byte strings as (their concatenation, each one's length, -1 for None): pickling 5,000
    bytes objects one by one cost 1.5 ms of the worker's GIL, joining them 0.1 ms."""
    if None in items:
        lengths = np.array([-1 if x is None else len(x) for x in items], np.int64)
        return b"".join(x for x in items if x is not None), lengths
    return b"".join(items), np.fromiter(map(len, items), np.int64, len(items))


def unpack(blob: bytes, lengths: np.ndarray) -> list[bytes | None]:
    """
    >>> unpack(*pack([b"ab", None, b"", b"c"]))
    [b'ab', None, b'', b'c']
    """
    ends = np.cumsum(np.maximum(lengths, 0)).tolist()
    starts = [0] + ends[:-1]
    out = list(map(blob.__getitem__, map(slice, starts, ends)))
    for i in np.flatnonzero(lengths < 0).tolist():
        out[i] = None
    return out


def send(stream: BinaryIO, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)))
    stream.write(data)
    stream.flush()


def receive(stream: BinaryIO):
    """The next object, or None at the end of the stream."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (n,) = _LENGTH.unpack(head)
    data = stream.read(n)
    return pickle.loads(data) if len(data) == n else None


def answer_all(handle: Callable[[Any, Any], Any], stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The setup, then one request in, ``handle(setup, request)`` (or its error) out, until EOF."""
    setup = receive(stdin)
    while (request := receive(stdin)) is not None:
        try:
            out = handle(setup, request)
        except Exception as e:  # (a bug: handlers give bad input back as data) told, not hidden
            out = e
        send(stdout, out)


def serve(handle: Callable[[Any, Any], Any]) -> None:
    """A child's ``__main__``: answer the worker's requests on stdin/stdout until it closes them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker handles Ctrl-C; its exit closes our stdin
    # The answers get the pipe to themselves: anything printed to stdout (a library's notice) goes to
    # stderr, the worker's log, instead of into the byte stream the worker reads.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    answer_all(handle, sys.stdin.buffer, answers)
