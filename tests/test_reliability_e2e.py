"""Faults on the embedded broker, no mocks: poison pills, a paused broker, a restarted persistent
broker, a full disk. Each ends with the same check: every source event stored exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import duckdb
import pytest
from confluent_kafka import Producer

from streamrec.streams.broker import EmbeddedBroker
from streamrec.streams.config import Settings
from streamrec.streams.events import Event, encode
from streamrec.streams.processes import metric_sum
from streamrec.streams.seaweedfs import weed_binary
from tests.conftest import read_topic, start_worker, tiny_disk, wait_metrics, wait_stored

pytestmark = pytest.mark.slow
T0 = 1_500_000_000_000  # 2017, ms


def events(n: int, start: int = 0, users: int = 50) -> list[tuple[bytes, bytes]]:
    """(key, value) of ``n`` distinct valid events."""
    return [(str(i % users).encode(), encode(Event(i % users, 1000 + i, T0 + i * 1000, "click")))
            for i in range(start, start + n)]


def produce(bootstrap: str, topic: str, records, **conf) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True, **conf})
    for key, value in records:
        p.produce(topic, key=key, value=value)
        p.poll(0)
    assert p.flush(60) == 0


def stored_offsets(db: str) -> list[int]:
    """Offsets of the stored events; each must appear once."""
    con = duckdb.connect(db, read_only=True)
    try:
        rows = con.execute("SELECT kafka_offset FROM events WHERE owned ORDER BY kafka_offset").fetchall()
        return [r[0] for r in rows]
    finally:
        con.close()


def ready_status(worker) -> tuple[int, dict]:
    status, body = worker._get("/ready")
    return status, json.loads(body or b"{}")


def test_poison_pills_are_dead_letters_and_valid_neighbours_are_stored(settings, tmp_path):
    """(a) deep nesting, invalid UTF-8, 1.5 MB, binary, empty between valid events: the worker stays up."""
    deep = b'{"user_id": 1, "item_id": 2, "event_time": 1500000000000, "event_type": "view", "x": ' \
        + b'{"a": ' * 1000 + b"1" + b"}" * 1000 + b"}"
    poison = [(b"1", deep),
              (b"1", b'{"user_id": 1, "item_id": 2, "event_time": 1500000000000, "event_type": "view", '
                     b'"event_id": "\xff\xfe"}'),
              (b"1", b'{"user_id": 1, "junk": "' + b"z" * 1_500_000 + b'"}'),
              (b"1", bytes(range(256)) * 4),
              (b"1", b""), (b"1", None)]
    good = events(12)
    records = good[:5] + poison + good[5:]
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        produce(settings.bootstrap_servers, settings.interactions_topic, records, **{"message.max.bytes": 2_000_000})
        m = wait_stored(worker, len(good), timeout=60)
        m = wait_metrics(worker, lambda m: metric_sum(m, "streamrec_events_rejected_total") >= len(poison),
                         "poison dead-lettered", timeout=30)
        assert worker.alive()
        dlq = read_topic(settings.bootstrap_servers, settings.dlq_topic, min_count=len(poison), idle=1.0)
        assert sorted(int(dict(d.headers())["source_offset"]) for d in dlq) == list(range(5, 5 + len(poison)))
        big = [dict(d.headers()) for d in dlq if dict(d.headers())["source_offset"] == b"7"][0]
        assert big["truncated"] == b"true" and int(big["original_size"]) > 1_500_000
        reasons = [dict(d.headers())["reason"].decode() for d in sorted(dlq, key=lambda d: d.offset())]
        assert "nested too deeply" in reasons[0] and "invalid UTF-8" in reasons[1]
        assert metric_sum(m, "streamrec_events_stored_total") == len(good)
    finally:
        worker.stop()
    assert stored_offsets(settings.db) == [o for o in range(len(records)) if not 5 <= o < 5 + len(poison)]


def test_full_disk_turns_ready_503_then_a_restart_stores_everything_once(settings, tmp_path):
    """(d) a store that fails: /ready answers 503 within seconds, the worker exits with "No space
    left on device" first; with space back, a restart stores every event once."""
    with tiny_disk(tmp_path, "24m") as disk:
        s = Settings(**{**settings.__dict__, "db": str(disk / "w.duckdb")})
        log = tmp_path / "worker.log"
        worker = start_worker(s, log, stage_retries=3, stage_backoff=0.5)
        worker.wait_ready()
        first = events(2000)
        produce(s.bootstrap_servers, s.interactions_topic, first)
        wait_stored(worker, len(first), timeout=60)
        filler = disk / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)  # until ENOSPC
        rest = events(20_000, start=2000)
        produce(s.bootstrap_servers, s.interactions_topic, rest)
        deadline = time.time() + 30
        while time.time() < deadline and worker.alive():
            status, body = ready_status(worker)
            if status == 503:
                break
            time.sleep(0.2)
        assert status == 503 and "failing" in body.get("reason", ""), (status, body)
        worker.proc.wait(60)  # past stage_retries it exits on its own
        assert worker.proc.returncode != 0
        fatal = [line for line in log.read_text().splitlines() if "fatal:" in line][0]
        assert "No space left on device" in fatal.split("fatal:")[1].split("(then:")[0], fatal
        filler.unlink()  # space returns
        worker = start_worker(s, tmp_path / "worker2.log")
        worker.wait_ready()
        wait_stored(worker, len(first) + len(rest), timeout=90)
        worker.stop()
        assert stored_offsets(s.db) == list(range(len(first) + len(rest)))


@pytest.fixture
def own_broker(tmp_path):
    """A broker for one test only: it will be paused or restarted."""
    b = EmbeddedBroker(log_file=tmp_path / "tansu.log").start()
    yield b
    if b.proc is not None:
        b.proc.send_signal(signal.SIGCONT)
    b.stop()


# CI pauses 35 s (past the 30 s that used to kill the worker); by hand, e.g.
# STREAMREC_TEST_OUTAGE_SECONDS=310 shows a five-minute outage ridden out (docs/operations.md).
OUTAGE = float(os.environ.get("STREAMREC_TEST_OUTAGE_SECONDS", "35"))


def test_broker_paused_longer_than_30s_is_ridden_out(own_broker, settings, tmp_path):
    """(b) SIGSTOP for 35 s (OUTAGE) under a running worker: nothing lost or doubled; the
    reachability metric dips and recovers; /ready says why meanwhile."""
    s = Settings(**{**settings.__dict__, "bootstrap_servers": own_broker.bootstrap})
    worker = start_worker(s, tmp_path / "worker.log", broker_outage_limit=max(300.0, OUTAGE + 60))
    try:
        worker.wait_ready()
        first = events(3000)
        produce(s.bootstrap_servers, s.interactions_topic, first)
        wait_stored(worker, len(first), timeout=60)
        own_broker.proc.send_signal(signal.SIGSTOP)
        paused = time.time()
        try:
            wait_metrics(worker, lambda m: m.get("streamrec_broker_reachable") == 0, "broker unreachable",
                             timeout=20)
            status, body = ready_status(worker)
            assert status == 503 and "broker unreachable" in body["reason"]
            time.sleep(max(0.0, OUTAGE - (time.time() - paused)))
            assert worker.alive()
        finally:
            own_broker.proc.send_signal(signal.SIGCONT)
        rest = events(3000, start=3000)
        produce(s.bootstrap_servers, s.interactions_topic, rest)
        wait_stored(worker, len(first) + len(rest), timeout=120)
        wait_metrics(worker, lambda m: m.get("streamrec_broker_reachable") == 1, "broker reachable again", timeout=20)
        assert "broker unreachable for" in Path(worker.log).read_text()
    finally:
        worker.stop()
    assert stored_offsets(s.db) == list(range(len(first) + len(rest)))


def test_persistent_broker_restarted_under_a_running_worker(settings, tmp_path):
    """(c) `--data-dir` broker stopped and started again on its port: the worker carries on, counts exact."""
    weed_binary()  # (a test dependency: a missing one fails here, naming the pip package)
    broker = EmbeddedBroker(data_dir=tmp_path / "broker").start()
    s = Settings(**{**settings.__dict__, "bootstrap_servers": broker.bootstrap})
    worker = start_worker(s, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        first = events(2000)
        produce(s.bootstrap_servers, s.interactions_topic, first)
        wait_stored(worker, len(first), timeout=60)
        broker.stop()
        for _ in range(10):  # the port may be "in use" a moment after Tansu exits
            try:
                broker = EmbeddedBroker(port=broker.port, data_dir=tmp_path / "broker").start()
                break
            except Exception:
                time.sleep(1)
        rest = events(2000, start=2000)
        produce(s.bootstrap_servers, s.interactions_topic, rest)
        wait_stored(worker, len(first) + len(rest), timeout=120)
        assert worker.alive()
    finally:
        worker.stop()
        broker.stop()
    assert stored_offsets(s.db) == list(range(len(first) + len(rest)))


def test_outage_past_the_limit_exits_with_that_message(own_broker, settings, tmp_path):
    """Past broker_outage_limit the worker exits non-zero saying the broker was unreachable."""
    s = Settings(**{**settings.__dict__, "bootstrap_servers": own_broker.bootstrap})
    log = tmp_path / "worker.log"
    worker = start_worker(s, log, broker_outage_limit=4)
    try:
        worker.wait_ready()
        own_broker.proc.send_signal(signal.SIGSTOP)
        worker.proc.wait(60)
        assert worker.proc.returncode == 3
        fatal = [line for line in log.read_text().splitlines() if "fatal:" in line]
        assert fatal and "broker unreachable for" in fatal[0], fatal
    finally:
        own_broker.proc.send_signal(signal.SIGCONT)
        worker.stop()
