"""Worker processes on this machine, for the demo, the tests and the benchmarks."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from streamrec.streams.broker import free_port


class WorkerProcess:
    """``streamrec worker`` in a child process, with its own DuckDB file and metrics port."""

    def __init__(self, bootstrap: str, db: str | Path, log: str | Path, port: int | None = None,
                 loglevel: str = "info", **settings):
        self.bootstrap, self.db, self.log, self.loglevel = bootstrap, str(db), str(log), loglevel
        self.port = port or free_port()
        self.settings = settings
        self.proc: subprocess.Popen | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def start(self) -> "WorkerProcess":
        cmd = [sys.executable, "-m", "streamrec", "worker", "--bootstrap-servers", self.bootstrap,
               "--db", self.db, "--metrics-port", str(self.port), "--loglevel", self.loglevel]
        for k, v in self.settings.items():
            cmd += ["--" + k.replace("_", "-"), str(v)]
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        return self

    def _get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def wait_ready(self, timeout: float = 90.0) -> dict:
        """Wait until the worker has joined its group and owns partitions."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}; see {self.log}")
            try:
                status, body = self._get("/ready")
                if status == 200:
                    return json.loads(body)
            except (OSError, ValueError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f"worker not ready after {timeout}s; see {self.log}")

    def metrics(self) -> dict[str, float]:
        """Scrape ``/metrics`` into ``{'name{labels}': value}``."""
        _, body = self._get("/metrics")
        return parse_metrics(body.decode())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash the tests recover from."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        if not self.alive():
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format to a flat dict.

    >>> parse_metrics('# HELP x y\\nstreamrec_events_stored_total 5.0\\nm{a="b"} 1\\n')
    {'streamrec_events_stored_total': 5.0, 'm{a="b"}': 1.0}
    """
    out = {}
    for line in text.splitlines():
        if m := _LINE.match(line.strip()):
            out[m.group(1)] = float(m.group(2))
    return out


def metric_sum(metrics: dict[str, float], name: str) -> float:
    """Sum of a metric over all its label sets."""
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))
