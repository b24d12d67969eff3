"""Worker processes on this machine, for the demo, the tests and the benchmarks."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from streamrec.streams.broker import free_port


class ChildFailed(RuntimeError):
    """A child process (worker) is not running as it should; the message says why, in one line,
    followed by its last log lines."""


class PortBusy(ChildFailed):
    """An explicitly requested port is taken by another process."""


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    """Raise ``PortBusy`` at once when ``port`` cannot be bound: a child told to use it would
    die with "address already in use" while whoever holds it answers in its place."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise PortBusy(f"port {port} on {host} is in use by another process ({e.strerror}); "
                           "choose another port or leave the option out to get a free one") from None


class WorkerProcess:
    """``streamrec worker`` in a child process, with its own DuckDB file and metrics port.

    ``port=None`` picks a free port; a given port must be free when the worker starts.
    """

    def __init__(self, bootstrap: str, db: str | Path, log: str | Path, port: int | None = None,
                 loglevel: str = "info", **settings):
        self.bootstrap, self.db, self.log, self.loglevel = bootstrap, str(db), str(log), loglevel
        self.requested_port = port
        self.port = port or free_port()
        self.settings = settings
        self.proc: subprocess.Popen | None = None
        self.stopping = False  # set by stop()/kill(): an exit we asked for, not a failure

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    @property
    def name(self) -> str:
        return Path(self.db).stem

    def start(self) -> "WorkerProcess":
        if self.requested_port:
            check_port_free(self.requested_port)
        self.stopping = False
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
        """Wait until the worker has joined its group and owns partitions.

        Only an answer carrying our child's pid counts: another process on the same port
        (a worker of another run, anything answering 200) is not our worker being ready.
        """
        deadline = time.monotonic() + timeout
        foreign = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ChildFailed(self.failure())
            try:
                status, body = self._get("/ready")
                answer = json.loads(body)
                if answer.get("pid") == self.proc.pid:
                    if status == 200:
                        return answer
                else:
                    foreign = answer.get("pid", "unknown")
            except (OSError, ValueError, AttributeError):
                pass
            time.sleep(0.25)
        other = f"; port {self.port} answers for another process (pid {foreign})" if foreign else ""
        raise ChildFailed(f"{self.name} (pid {self.proc.pid}) not ready after {timeout:.0f}s{other}; see {self.log}")

    def died(self) -> str | None:
        """None while running (or stopped on purpose); else how it ended (``failure``)."""
        if self.stopping or self.proc is None or self.proc.poll() is None:
            return None
        return self.failure()

    def failure(self) -> str:
        """One line saying how the child ended, then its last log lines (errors first)."""
        code = self.proc.returncode if self.proc is not None else None
        lines = "\n".join(f"    {x}" for x in last_log_lines(self.log))
        pid = self.proc.pid if self.proc else "-"
        return f"{self.name} (pid {pid}) exited with status {code}; log {self.log}:\n{lines}"

    def metrics(self) -> dict[str, float]:
        """Scrape ``/metrics`` into ``{'name{labels}': value}``."""
        _, body = self._get("/metrics")
        return parse_metrics(body.decode())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash the tests recover from."""
        self.stopping = True
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        self.stopping = True
        if not self.alive():
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def last_log_lines(path: str | Path, n: int = 3, errors: int = 4) -> list[str]:
    """The last ``errors`` error lines of a log (faust's ``[ERROR]``/``[CRITICAL]`` records and
    exception lines), then its last ``n`` lines: why a child died, without its shutdown chatter."""
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError as e:
        return [f"(no log: {e})"]
    bad = [x for x in text if "[ERROR]" in x or "[CRITICAL]" in x or _EXC.match(x)]
    tail = [x for x in text[-n:] if x not in bad[-errors:]]
    return [x[:300] for x in bad[-errors:] + tail]


_EXC = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*:")


class Watchdog(threading.Thread):
    """Notices at once when a child that should be running exits.

    ``checks``: callables returning None while their child is fine, else why it is not (e.g.
    ``WorkerProcess.died``, ``EmbeddedBroker.failure``). Polled every ``interval`` s; the first
    failure is passed to ``on_death(message)`` once, then the watch ends.
    """

    def __init__(self, checks: list, on_death, interval: float = 0.2):
        super().__init__(daemon=True, name="watchdog")
        self.checks, self.on_death, self.interval = checks, on_death, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            for check in list(self.checks):
                if (why := check()) is not None and not self.stopped.is_set():
                    self.on_death(why)
                    return

    def stop(self) -> None:
        self.stopped.set()


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
