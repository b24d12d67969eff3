"""Each thread's CPU per micro-batch of a running worker, in windows (Linux).

Finds the ``streamrec worker`` process (or takes ``--pid``), names its threads once with
``py-spy dump`` when py-spy is on the PATH or given (Python threads are all "python" to the
kernel), and every ``--interval`` seconds prints each thread's CPU (``/proc/<pid>/task/<tid>/stat``)
per ``--batch`` events stored (``streamrec_events_stored_total`` on the worker's metrics port):

    python benchmarks/thread_cpu.py --out /tmp/threads.log &
    python benchmarks/bench_scale.py --ratings ratings.csv --out /tmp/scale

Used for docs/benchmarks.md ("Tenth pass"): which threads' work grows as the log grows.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def find_worker() -> tuple[int, str | None]:
    """(pid, metrics port) of the first ``streamrec worker`` process found."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        except OSError:
            continue
        if "streamrec" in cmd and "worker" in cmd:
            return int(pid), cmd[cmd.index("--metrics-port") + 1] if "--metrics-port" in cmd else None
    return 0, None


def thread_names(pid: int, py_spy: str | None) -> dict[str, str]:
    if not py_spy:
        return {}
    dump = subprocess.run([py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True).stdout
    return {m.group(1): m.group(2) for m in re.finditer(r'^Thread (\d+) \(\w+\): "([^"]+)"', dump, re.M)}


def unnamed(pid: int, names: dict[str, str]) -> bool:
    """Whether a Python thread (named "python" by the kernel) has no name from py-spy yet."""
    for tid in set(os.listdir(f"/proc/{pid}/task")) - set(names):
        try:
            if Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip() == "python":
                return True
        except OSError:
            pass
    return False


def thread_cpu(pid: int, names: dict[str, str]) -> dict[str, float]:
    """CPU seconds so far per thread name (threads of one pool summed: ``store_0`` -> ``store``)."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = names.get(tid) or Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue  # (a thread that ended)
        key = re.sub(r"_\d+$", "", name)
        out[key] = out.get(key, 0.0) + stat_cpu(f"/proc/{pid}/task/{tid}/stat")
    return out


def stat_cpu(path: str) -> float:
    """User + system CPU seconds in a ``/proc`` stat file (a process's or a thread's); 0 if it is gone."""
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def stored(port: str | None) -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except (OSError, ValueError):
        return None
    m = re.search(r"^streamrec_events_stored_total (\S+)", text, re.M)
    return float(m.group(1)) if m else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pid", type=int, help="the worker's pid (default: found by its command line)")
    ap.add_argument("--port", help="its metrics port (default: from its command line)")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds per window")
    ap.add_argument("--batch", type=int, default=5000, help="events per batch, for the per-batch figures")
    ap.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy, to name the threads")
    ap.add_argument("--out", type=Path, help="also append the lines to this file")
    ap.add_argument("--wait", type=float, default=600.0, help="seconds to wait for a worker to appear")
    args = ap.parse_args()
    pid, port, deadline = args.pid, args.port, time.time() + args.wait
    while not pid and time.time() < deadline:
        pid, port = find_worker()
        time.sleep(1)
    if not pid or not port:
        sys.exit("thread_cpu: no streamrec worker with a metrics port found (give --pid and --port)")
    out = open(args.out, "a") if args.out else None
    names = thread_names(pid, args.py_spy)
    prev, prev_n, prev_t = thread_cpu(pid, names), stored(port), time.time()
    while os.path.exists(f"/proc/{pid}"):
        time.sleep(args.interval)
        try:
            if args.py_spy and unnamed(pid, names):  # (the stage threads start with the first batches)
                names = thread_names(pid, args.py_spy)
            cur = thread_cpu(pid, names)
        except OSError:
            break  # (it ended)
        n, t = stored(port), time.time()
        if n is not None and prev_n is not None and n > prev_n:
            batches = (n - prev_n) / args.batch
            per = sorted(((k, 1000 * (v - prev.get(k, 0.0)) / batches) for k, v in cur.items()), key=lambda x: -x[1])
            line = (f"stored {n / 1e6:6.2f}M  {(n - prev_n) / (t - prev_t):8,.0f} events/s  CPU ms a batch: "
                    f"all {sum(v for _, v in per):5.1f}  " + "  ".join(f"{k} {v:.1f}" for k, v in per if v >= 0.05))
            print(line, flush=True)
            if out:
                print(line, file=out, flush=True)
        prev, prev_n, prev_t = cur, n, t


if __name__ == "__main__":
    main()
