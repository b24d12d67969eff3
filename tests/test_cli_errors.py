"""Every user error, as a user meets it: the command in a subprocess, one line on stderr naming the
problem and the fix, exit status 2 for usage errors and 1 otherwise, no traceback (unless --debug)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

DATA = Path(__file__).parent / "data"


def streamrec(*args: str, env: dict | None = None, timeout: float = 60.0, cwd=None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    return subprocess.run([sys.executable, "-m", "streamrec", *args], capture_output=True, text=True,
                          timeout=timeout, env={**environ, **(env or {})}, cwd=cwd)


def one_line_error(r: subprocess.CompletedProcess, status: int, *words: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == status, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args, env, words", [
    (["worker", "--top-k", "0"], {}, ["--top-k", "out of range", "from 1"]),
    (["worker", "--top-k", "-3"], {}, ["--top-k", "out of range"]),
    (["worker", "--top-k", "abc"], {}, ["--top-k", "whole number"]),
    (["worker", "--baseline", "knn"], {}, ["--baseline", "one of popularity, item2item, itemknn"]),
    (["worker", "--batch-size", "0"], {}, ["batch_size", "out of range"]),
    (["worker"], {"STREAMREC_TOP_K": "abc"}, ["STREAMREC_TOP_K", "whole number"]),
    (["worker"], {"STREAMREC_METRICS_PORT": "70000"}, ["metrics_port", "out of range"]),
    (["replay", str(DATA / "ratings.csv"), "--limit", "-1"], {}, ["--limit", "negative"]),
    (["worker", "--kafka-config", "/nope.properties", "--bootstrap-servers", "127.0.0.1:9"], {},
     ["/nope.properties", "--kafka-config"]),
    (["replay", str(DATA / "ratings.csv")], {}, ["--bootstrap-servers", "streamrec broker"]),
    (["no-such-command"], {}, ["invalid choice", "--help"]),
    ([], {}, ["COMMAND", "--help"]),
])
def test_usage_errors_exit_2(args, env, words):
    one_line_error(streamrec(*args, env=env), 2, *words)


def test_missing_and_unrecognised_files_exit_1(tmp_path):
    one_line_error(streamrec("replay", "/nope.csv", "--bootstrap-servers", "127.0.0.1:9"), 1, "not found", "/nope.csv")
    one_line_error(streamrec("demo", "--ratings", "/nope.csv", cwd=tmp_path), 1, "--ratings", "not found")
    assert not (tmp_path / "demo-run").exists()  # found before anything started
    readme = tmp_path / "README.md"
    readme.write_text("# not ratings\nsome text\n")
    one_line_error(streamrec("replay", str(readme), "--bootstrap-servers", "127.0.0.1:9"), 1,
                   "unrecognised header", "userId,movieId,rating,timestamp")
    one_line_error(streamrec("worker", "--checkpoint", str(tmp_path), "--bootstrap-servers", "127.0.0.1:9",
                             "--db", str(tmp_path / "w.duckdb")), 1, "not a checkpoint", "--checkpoint")
    one_line_error(streamrec("rollback", "--registry", str(tmp_path / "registry")), 1, "nothing to roll back")
    bad = tmp_path / "client.properties"
    bad.write_text("security.protocol=PLAINTEXT\nthis line has no separator\n")
    one_line_error(streamrec("worker", "--kafka-config", str(bad), "--bootstrap-servers", "127.0.0.1:9"), 2,
                   "client.properties:2", "key=value")


def test_debug_shows_the_traceback():
    r = streamrec("--debug", "replay", "/nope.csv", "--bootstrap-servers", "127.0.0.1:9")
    assert r.returncode == 1 and "Traceback" in r.stderr and r.stderr.strip().endswith("not found: /nope.csv")
    r = streamrec("replay", "/nope.csv", "--bootstrap-servers", "127.0.0.1:9", env={"STREAMREC_DEBUG": "1"})
    assert r.returncode == 1 and "Traceback" in r.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens once it is closed


@pytest.mark.parametrize("command", ["replay", "worker"])
def test_unreachable_broker_is_reported_within_seconds(command, tmp_path):
    args = ([str(DATA / "ratings.csv")] if command == "replay"
            else ["--db", str(tmp_path / "w.duckdb"), "--metrics-port", str(_closed_port())])
    # The connection check gives up after its own 6 s (the message says so); a command that waited on
    # librdkafka's defaults instead would hang for minutes and fail here on the subprocess's timeout.
    # (Not a timing assertion on the whole run: interpreter start and imports took 8.7 s idle, 23 s on a
    # busy 2-core box.)
    r = streamrec(command, *args, "--bootstrap-servers", f"127.0.0.1:{_closed_port()}", timeout=90)
    one_line_error(r, 1, "cannot reach Kafka", "within 6s", "Connection refused", "--bootstrap-servers")


def test_locked_duckdb_found_before_joining_the_group(broker, settings, tmp_path):
    holder = duckdb.connect(settings.db)  # this test process holds the lock
    try:
        r = streamrec("worker", "--bootstrap-servers", settings.bootstrap_servers, "--db", settings.db,
                      "--group-id", settings.group_id, "--interactions-topic", settings.interactions_topic)
    finally:
        holder.close()
    line = one_line_error(r, 1, "locked", f"process {os.getpid()}", "--db")
    assert settings.db in line
    assert "group" not in r.stdout.lower()  # it never got as far as the consumer group


def test_busy_metrics_port(broker, settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = streamrec("worker", "--bootstrap-servers", settings.bootstrap_servers, "--db", settings.db,
                      "--metrics-port", str(port))
        demo = streamrec("demo", "--metrics-port", str(port), "--workdir", str(Path(settings.db).parent / "demo"))
    one_line_error(r, 1, f"port {port} on 127.0.0.1", "in use", "--metrics-port")
    one_line_error(demo, 1, f"port {port} on 127.0.0.1", "in use", "--metrics-port")


def test_ctrl_c_during_replay_flushes_and_counts(broker, settings):
    from tests.conftest import read_topic

    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamrec", "replay", str(DATA / "ratings.csv"), "--quiet", "--speedup", "20000000",
         "--bootstrap-servers", settings.bootstrap_servers, "--interactions-topic", settings.interactions_topic],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # Interrupt once events arrive (the whole file at this speed-up takes ~35 s).
    reader = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "ctrl-c-probe"})
    reader.assign([TopicPartition(settings.interactions_topic, 0, OFFSET_BEGINNING)])
    deadline = time.monotonic() + 60
    while not [m for m in reader.consume(10, timeout=0.5) if not m.error()] and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
    reader.close()
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    lines = [ln for ln in err.strip().splitlines() if "INFO" not in ln]
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "still in queue" not in err, err
    assert len(lines) == 1 and "events sent" in lines[0], err
    sent = int(lines[0].split("interrupted: ")[1].split()[0])
    assert sent > 0
    # What it says it sent is what the topic holds: nothing queued was lost silently.
    assert len(read_topic(settings.bootstrap_servers, settings.interactions_topic, min_count=sent)) == sent


def test_every_command_is_registered_statically_with_help(capsys):
    from streamrec.streams import cli

    names = set(cli.COMMANDS)
    assert {"broker", "worker", "replay", "demo", "train", "evaluate", "recommend", "report", "retrain",
            "shadow", "models", "promote", "rollback"} <= names
    parser = cli.build_parser()
    for name in sorted(names):
        with pytest.raises(SystemExit) as e:
            parser.parse_args([name, "--help"])
        assert e.value.code == 0
        assert f"usage: streamrec {name}" in capsys.readouterr().out
    # No command is loaded behind a try/except ImportError that would hide a broken module.
    assert "ImportError" not in Path(cli.__file__).read_text()
