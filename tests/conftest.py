"""Shared fixtures: one embedded Tansu broker for the session, helpers to read topics back."""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streamrec.streams.broker import EmbeddedBroker
from streamrec.streams.config import Settings
from streamrec.streams.processes import WorkerProcess
from streamrec.streams.topics import ensure_topics

# The longest files, started first: with `--dist loadfile` a file starts when a test process is
# free, and the seed example (~3 min of training) collected late in the alphabet was the suite's tail.
LONGEST_FIRST = ("test_seed_example.py", "test_pipeline_e2e.py", "test_reliability_e2e.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST else 99)


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    b = EmbeddedBroker(log_file=tmp_path_factory.mktemp("broker") / "tansu.log")
    b.start()
    yield b
    b.stop()


_names = itertools.count()


@pytest.fixture
def settings(broker, tmp_path) -> Settings:
    """Fresh topics and group per test, on the shared broker."""
    tag = f"{next(_names)}-{uuid.uuid4().hex[:6]}"
    return Settings(
        bootstrap_servers=broker.bootstrap,
        interactions_topic=f"interactions-{tag}",
        dlq_topic=f"interactions-{tag}.dlq",
        recommendations_topic=f"recommendations-{tag}",
        group_id=f"worker-{tag}",
        db=str(tmp_path / "worker.duckdb"),
    )


def read_topic(bootstrap: str, topic: str, min_count: int = 0, idle: float = 2.0, timeout: float = 60.0) -> list:
    """Every message of ``topic`` from the beginning.

    Tansu's ListOffsets end offset is wrong, so instead of asking for it we read until at least
    ``min_count`` messages arrived and nothing new came for ``idle`` seconds.
    """
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                  "enable.auto.commit": False})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    out, last, deadline = [], time.time(), time.time() + timeout
    try:
        while time.time() < deadline:
            batch = [m for m in c.consume(5000, timeout=0.2) if not m.error()]
            if batch:
                out.extend(batch)
                last = time.time()
            elif len(out) >= min_count and time.time() - last > idle:
                break
    finally:
        c.close()
    return out


def start_worker(s: Settings, log, **extra) -> WorkerProcess:
    """A worker process on the topics, group and DuckDB file of ``s`` (topics created first)."""
    ensure_topics(s)
    return WorkerProcess(s.bootstrap_servers, s.db, log, group_id=s.group_id, interactions_topic=s.interactions_topic,
                         dlq_topic=s.dlq_topic, recommendations_topic=s.recommendations_topic, **extra).start()


def wait_metrics(worker: WorkerProcess, ok, what: str, timeout: float = 180.0) -> dict:
    """Scrape the worker until ``ok(metrics)``; returns that scrape. Fails if the worker dies."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert worker.alive(), f"worker died; see {worker.log}"
        m = worker.metrics()
        if ok(m):
            return m
        time.sleep(0.2)
    raise TimeoutError(f"worker: no {what} after {timeout}s; see {worker.log}")


def wait_stored(worker: WorkerProcess, n: int, timeout: float = 180.0) -> dict:
    return wait_metrics(worker, lambda m: m.get("streamrec_store_events", 0) >= n, f"{n} events stored", timeout)


@contextlib.contextmanager
def tiny_disk(parent: Path, size: str):
    """A tmpfs of ``size`` mounted at ``parent/disk`` (a full disk on demand); skips the test where
    it cannot be mounted (not root, or no CAP_SYS_ADMIN). Unmounted (lazily) on the way out."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tiny tmpfs (a full disk on demand)")
    disk = parent / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)]
    if subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
