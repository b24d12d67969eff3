"""The decode stage in a child process (streams/decoder.py): the same batches as decoding in the
worker's thread, for every kind of message the fuzz test makes; a killed child is replaced and
the batch decoded again; a worker's exit ends its child."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings

from streamrec.streams.decoder import DecodeProcess
from streamrec.streams.events import Contract, decode_batch
from tests.test_fuzz_events import NOW, messages

CONTRACT = Contract(max_skew_ms=60_000)
_process = DecodeProcess(CONTRACT)  # one child for the examples


def same(a, b) -> bool:
    arrays = ("key", "user", "item", "event_time", "partition", "offset", "index")
    return (all(np.array_equal(getattr(a, n), getattr(b, n)) for n in arrays)
            and np.array_equal(a.rating, b.rating, equal_nan=True)
            and (a.event_id, a.event_type, a.rejected) == (b.event_id, b.event_type, b.rejected))


@hyp_settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(messages())
def test_the_child_decodes_every_batch_as_the_thread_does(batch):
    keys, values = [k for k, _ in batch], [v for _, v in batch]
    n = len(batch)
    stamps = np.full(n, NOW, np.int64)
    parts, offsets = np.zeros(n, np.int32), np.arange(100, 100 + n, dtype=np.int64)
    here = decode_batch(values, keys, stamps, CONTRACT, parts, offsets)
    there = _process.decode(values, keys, stamps, parts, offsets)
    assert same(here, there)
    assert len(here.rejected) + len(here) == n


def test_a_killed_child_is_replaced_and_the_batch_decoded_again():
    p = DecodeProcess(Contract())
    value = b'{"user_id": 1, "item_id": 2, "event_time": 900000000000, "event_type": "view"}'
    first = p._child.pid
    os.kill(first, signal.SIGKILL)
    p._child.wait(10)
    batch = p.decode([value], [b"1"], np.array([900000000000], np.int64))
    assert batch.user.tolist() == [1] and p.restarts == 1 and p._child.pid != first
    p.close()
    assert p._child.poll() is not None


def test_the_child_ends_with_its_parent_even_one_killed():
    parent = subprocess.Popen([sys.executable, "-c", (
        "import time; from streamrec.streams.decoder import DecodeProcess; from streamrec.streams.events import "
        "Contract; p = DecodeProcess(Contract()); print(p._child.pid, flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(child, 0)  # running
    parent.kill()
    parent.wait(10)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":  # exited (not reaped where PID 1 does not)
                    return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    raise AssertionError(f"the decoder process {child} outlived its killed parent")


def test_ctrl_c_stops_the_worker_and_its_decoder_without_a_traceback(settings, tmp_path):
    """A terminal's Ctrl-C reaches the whole process group: the worker stops as before, and its
    decoder (which ignores SIGINT) ends with it, silently."""
    from streamrec.storage.movielens import load_ratings
    from streamrec.streams.replay import replay
    from tests.conftest import start_worker, wait_stored

    w = start_worker(settings, tmp_path / "worker.log")
    w.wait_ready()
    replay(load_ratings(Path(__file__).parent / "data" / "ratings.csv").slice(0, 500), settings.bootstrap_servers,
           settings.interactions_topic, progress=False)
    wait_stored(w, 500)  # (decoded by the child)
    children = subprocess.run(["pgrep", "-P", str(w.proc.pid), "-f", "streamrec.streams.decoder"],
                              capture_output=True, text=True).stdout.split()
    assert len(children) == 1, children
    os.killpg(w.proc.pid, signal.SIGINT)  # (the worker runs in a session of its own, as in a terminal)
    w.proc.wait(60)
    log = Path(w.log).read_text()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-3000:]
    for child in children:
        deadline = time.time() + 10
        while time.time() < deadline and Path(f"/proc/{child}").exists():
            with open(f"/proc/{child}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    break
            time.sleep(0.1)
        else:
            assert not Path(f"/proc/{child}").exists(), f"child {child} outlived its worker"
