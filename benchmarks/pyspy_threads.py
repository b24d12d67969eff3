"""What each thread of a worker did, from a py-spy profile taken with native frames and idle threads.

    py-spy record -p WORKER_PID --native --idle --threads --format raw --rate 50 -d 10 -o worker.raw
    python benchmarks/pyspy_threads.py worker.raw

Each sample of a thread is put in one class, by its innermost frames:

* ``idle: waiting for work``: blocked in a thread pool's, queue's or lock's wait (no batch to do);
* ``I/O: fdatasync``: DuckDB making a commit durable;
* ``waiting for the GIL``: a C call (NumPy, DuckDB, a compiled kernel, the Kafka client) is done and
  the thread waits in ``pthread_cond_timedwait`` to take the interpreter lock back;
* ``idle: I/O poll``: the event loop or the consumer waiting on sockets;
* ``running``: anything else (Python, or C code that released the GIL).

py-spy pauses the process for each sample, so the worker runs slower meanwhile (about half the rate
at 50 samples/s); compare shares between profiles taken alike, not rates.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path


def classify(frames: list[str]) -> str:
    python = [f for f in frames if ".py:" in f]
    last_python = python[-1] if python else ""
    leaf = " ".join(frames[-3:])
    if any(m in last_python for m in ("concurrent/futures/thread.py", "queue.py", "threading.py")):
        return "idle: waiting for work"
    if "fdatasync" in leaf or "fsync" in leaf:
        return "I/O: fdatasync"
    if "pthread_cond_timedwait" in leaf:
        return "waiting for the GIL"
    if "epoll" in leaf or "poll (" in leaf or "select" in leaf:
        return "idle: I/O poll"
    return "running"


def shares(raw: Path) -> dict[str, collections.Counter]:
    """Samples per class, per thread name, from a py-spy ``--format raw`` file."""
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, n = line.rsplit(" ", 1)
        frames = stack.split(";")
        out[frames[0].split(":")[-1].strip()][classify(frames)] += int(n)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", type=Path, help="a py-spy profile written with --format raw --threads --native --idle")
    args = ap.parse_args(argv)
    if not args.raw.is_file():
        sys.exit(f"pyspy_threads: no profile at {args.raw} (py-spy record ... --format raw -o FILE writes one)")
    for thread, counts in shares(args.raw).items():
        total = sum(counts.values())
        print(f"{thread:14s}", ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in counts.most_common()))


if __name__ == "__main__":
    main()
