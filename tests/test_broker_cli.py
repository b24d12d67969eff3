"""`streamrec broker`: a busy port fails at once naming it; a broker that dies is reported, exit 1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def test_busy_port_fails_at_once_naming_it(broker):
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "streamrec", "broker", "--port", str(broker.port)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and time.time() - t0 < 30
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and str(broker.port) in errors[0] and "in use" in errors[0], r.stderr


def test_a_broker_that_dies_is_reported_with_its_log(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "streamrec", "broker"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = ""
        while "Kafka bootstrap servers" not in line:
            line = p.stdout.readline()
            assert line or p.poll() is None, p.stderr.read()
        children = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 1, children  # Tansu
        os.kill(int(children[0]), signal.SIGKILL)
        p.wait(30)
        err = p.stderr.read()
        assert p.returncode == 1, err
        assert "died (exit code -9)" in err and "tansu broker" in err, err  # its log's first line is shown
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(30)


def _broker_error(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "streamrec", "broker", *args], capture_output=True, text=True,
                       timeout=120)
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    return errors[0]


def test_a_data_dir_that_another_broker_uses_or_that_is_a_file(tmp_path):
    """A second broker on a persistent broker's folder used to start its own SeaweedFS there (which died
    with a Go stack trace); a file given as the folder was '[Errno 17] File exists'."""
    from streamrec.streams.broker import EmbeddedBroker

    (tmp_path / "a-file").write_text("x")
    line = _broker_error("--data-dir", str(tmp_path / "a-file"))
    assert "--data-dir" in line and "is a file, not a folder" in line
    with EmbeddedBroker(data_dir=tmp_path / "data"):
        line = _broker_error("--data-dir", str(tmp_path / "data"))
        assert f"in use by another broker (pid {os.getpid()})" in line and "another --data-dir" in line, line
    with EmbeddedBroker(data_dir=tmp_path / "data") as again:  # the folder is free once the first one stopped
        assert again.failure() is None
