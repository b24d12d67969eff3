"""``streamrec demo`` end to end (shortened by its options) and the checks that keep a start from
failing silently: busy ports, readiness from our own child, a child that dies."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time

import duckdb
import pytest

from streamrec.streams.processes import ChildFailed, PortBusy, WorkerProcess, last_log_lines

DEFAULT_PORT = 6066  # Settings.metrics_port: where a worker of another run would be answering


class _Ready(http.server.BaseHTTPRequestHandler):
    """Answers 200 {"ready": true} to everything, as a stranger's worker would."""

    def do_GET(self):
        body = json.dumps({"ready": True, "partitions": [0]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def stranger():
    """An HTTP server answering 200 on a port; yields the port."""

    def serve(port: int):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Ready)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    servers: list = []
    yield serve
    for s in servers:
        s.shutdown()
        s.server_close()


def demo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamrec", "demo", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_demo_transformer_beside_a_stranger_on_the_default_port(stranger, tmp_path):
    """The demo trains SASRec, serves it, retrains it, and compares it with popularity, while
    another process answers 200 on the default metrics port: it uses its own worker."""
    try:
        stranger(DEFAULT_PORT)
    except OSError:  # something already holds 6066: the situation this test is about
        pass
    work = tmp_path / "run"
    r = demo("--workdir", str(work), "--limit", "3000", "--train-seconds", "2", "--retrain-seconds", "2",
             "--duration", "6", "--show-users", "1")
    out = r.stdout
    assert r.returncode == 0, f"demo failed ({r.returncode}):\n{out[-3000:]}\n{r.stderr[-3000:]}"
    ready = next(line for line in out.splitlines() if line.startswith("worker ready"))
    assert f":{DEFAULT_PORT}/" not in ready  # its own, free port
    served = next(line for line in out.splitlines() if line.strip().startswith("lists served"))
    assert "sasrec v1" in served  # the transformer served the live part
    ndcg = next(line for line in out.splitlines() if line.strip().startswith("NDCG@10"))
    assert "sasrec" in ndcg and "vs popularity" in ndcg and "95% interval" in ndcg
    assert any(line.strip().startswith("Recall@10") for line in out.splitlines())
    assert "retrained v2" in out  # the mid-stream retraining ran (promoted or rejected by its gate)
    assert "the seed's example" in out and "Harry Potter" in out
    assert (work / "report.png").stat().st_size > 1000


def test_demo_stops_at_once_when_the_worker_cannot_start(tmp_path):
    """The worker exits at start (its checkpoint's card is damaged): the demo says why and fails."""
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "card.json").write_text("{")
    (ck / "model.safetensors").write_bytes(b"")
    t0 = time.time()
    r = demo("--workdir", str(tmp_path / "run"), "--model", "popularity", "--checkpoint", str(ck), "--limit", "100",
             timeout=120)
    took = time.time() - t0
    assert r.returncode != 0
    assert "exited with status" in r.stderr and "card.json" in r.stderr, r.stderr[-3000:]
    assert took < 60, f"the demo took {took:.0f}s to notice"


def test_demo_in_a_workdir_another_demo_uses_stops_before_starting(tmp_path):
    """Its worker database is held by another process (a demo running there): said, nothing started."""
    work = tmp_path / "run"
    work.mkdir()
    (work / "worker-0.log").write_text("the other demo's log")
    con = duckdb.connect(str(work / "worker-0.duckdb"))  # held: this process is the "other demo"
    try:
        r = demo("--workdir", str(work), "--model", "popularity", "--limit", "100", timeout=120)
    finally:
        con.close()
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-3000:]
    assert f"in use by a running demo (worker-0.duckdb is held by pid {os.getpid()})" in r.stderr
    assert (work / "worker-0.log").read_text() == "the other demo's log" and not (work / "broker.log").exists()


def test_demo_refuses_a_busy_port_it_was_given(stranger, tmp_path):
    port = stranger(0)
    r = demo("--workdir", str(tmp_path / "run"), "--model", "popularity", "--metrics-port", str(port), timeout=60)
    assert r.returncode != 0
    assert str(port) in r.stderr and ("busy" in r.stderr or "in use" in r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_readiness_only_from_our_own_child(broker, stranger, tmp_path):
    """A stranger answers 200 on the port the worker was given: not taken for our worker's /ready."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    w = WorkerProcess(broker.bootstrap, tmp_path / "w.duckdb", tmp_path / "w.log", port=port)
    stranger(port)  # after the free-port check a worker would do: it loses the race for the port
    w.requested_port = None
    w.start()
    try:
        with pytest.raises(ChildFailed, match="exited with status"):
            w.wait_ready(timeout=60)
    finally:
        w.stop()
    with pytest.raises(PortBusy, match=f"port {port}"):
        WorkerProcess(broker.bootstrap, tmp_path / "w2.duckdb", tmp_path / "w2.log", port=port).start()


def test_last_log_lines_put_errors_first(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("start\n[ERROR] boom: disk full\nTraceback (most recent call last):\n  x\n"
                   "duckdb.IOException: IO Error: lock\nstopping 1\nstopping 2\nbye\n")
    assert last_log_lines(log, n=2) == ["[ERROR] boom: disk full", "duckdb.IOException: IO Error: lock",
                                        "stopping 2", "bye"]


def test_demo_stops_when_its_worker_dies_mid_replay(tmp_path):
    """SIGKILL the worker while the demo replays: the demo notices at once, says so, exits 1."""
    import os
    import re
    import signal

    p = subprocess.Popen([sys.executable, "-m", "streamrec", "demo", "--workdir", str(tmp_path / "run"), "--model",
                          "popularity", "--limit", "20000", "--duration", "60"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pid = None
        for line in p.stdout:  # "worker ready (pid N), ...", then "replaying ..."
            if m := re.match(r"worker ready \(pid (\d+)\)", line):
                pid = int(m.group(1))
            if line.startswith("replaying"):
                break
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        t0 = time.time()
        _, err = p.communicate(timeout=60)
        took = time.time() - t0
    finally:
        p.kill()
    assert p.returncode == 1
    assert f"worker-0 (pid {pid}) exited with status -9" in err, err[-2000:]
    assert took < 30, f"the demo took {took:.0f}s to stop"  # the replay alone would take 60 s
