"""What the worker and the other streaming commands check before they start (streams/preflight.py,
streams/cli.py, streams/lists.py): a user's mistake is one line, never a crash inside faust."""

from __future__ import annotations

import http.server
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tests.test_cli_errors import DATA, one_line_error, streamrec

UNREACHABLE = "127.0.0.1:9"  # nothing is asked of the broker: each check comes before the first connection


def _damaged_checkpoint(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "card.json").write_text("{")
    (ck / "model.safetensors").write_bytes(b"")
    return ["--checkpoint", str(ck)], ["card.json", "not valid JSON", "--checkpoint"]


def _file(tmp_path, option):
    (tmp_path / "a-file").write_text("x")
    return [option, str(tmp_path / "a-file")], [option, "is a file"]


CASES = {
    "damaged checkpoint": _damaged_checkpoint,
    "registry is a file": lambda tmp: _file(tmp, "--registry"),
    "export folder is a file": lambda tmp: _file(tmp, "--export-dir"),
    "unknown metrics host": lambda tmp: (["--metrics-host", "no-such-host.invalid"],
                                         ["--metrics-host", "no such host"]),
    "database is a folder": lambda tmp: (["--db", str(tmp)], ["--db", "is a directory"]),
    "database in a missing folder": lambda tmp: (["--db", str(tmp / "no" / "w.duckdb")],
                                                 ["--db", "does not exist", "create it"]),
}


@pytest.mark.parametrize("case", CASES)
def test_worker_mistakes_are_one_line_before_anything_starts(case, tmp_path):
    args, words = CASES[case](tmp_path)
    db = [] if "--db" in args else ["--db", str(tmp_path / "w.duckdb")]
    r = streamrec("worker", "--bootstrap-servers", UNREACHABLE, *db, *args, timeout=60)
    one_line_error(r, 1, *words)
    assert "cannot reach Kafka" not in r.stderr  # found before the first connection
    assert not (tmp_path / "w.duckdb.faust").exists()  # faust never started


def test_a_damaged_registry_champion_is_named(tmp_path):
    """The registry's champion whose card is damaged: the worker says which, and how to get out."""
    from streamrec.model.registry import Registry
    from tests.test_registry import register

    reg = Registry(tmp_path / "reg")
    v1 = register(reg)
    reg.promote(v1)
    (reg.path(v1) / "card.json").write_text("not json")
    r = streamrec("worker", "--bootstrap-servers", UNREACHABLE, "--db", str(tmp_path / "w.duckdb"),
                  "--registry", str(reg.root), timeout=60)
    line = one_line_error(r, 1, "card.json", v1, "rollback")
    assert str(reg.path(v1)) in line


def test_a_bad_environment_value_does_not_hide_help():
    r = streamrec("worker", "--help", env={"STREAMREC_TOP_K": "abc"})
    assert r.returncode == 0 and r.stdout.startswith("usage: streamrec worker"), r.stderr
    r = streamrec("worker", "--bootstrap-servers", UNREACHABLE, env={"STREAMREC_TOP_K": "abc"})
    one_line_error(r, 2, "STREAMREC_TOP_K='abc'", "whole number")
    # A command with a required option (retrain's --registry, given by the environment too) names the
    # bad variable, not "--registry is required".
    r = streamrec("retrain", env={"STREAMREC_RETRAIN_EVERY": "soon", "STREAMREC_RETRAIN_REGISTRY": "reg"})
    one_line_error(r, 2, "STREAMREC_RETRAIN_EVERY='soon'")


@pytest.mark.parametrize("args, words", [
    (["broker", "--port", "70000"], ["--port", "from 0 to 65535"]),
    (["demo", "--duration", "-1"], ["--duration", "out of range"]),
    (["demo", "--train-fraction", "1"], ["--train-fraction", "(0, 1)"]),
    (["demo", "--kill-at", "1.5"], ["--kill-at", "[0, 1)"]),
    (["demo", "--ratings", str(DATA)], ["--ratings", "a directory"]),
    (["lists", "1", "--worker-url", "garbage"], ["--worker-url", "not a web address"]),
])
def test_option_values_out_of_range(args, words):
    r = streamrec(*args)
    line = one_line_error(r, 2 if args[0] != "demo" or "--ratings" not in args else 1, *words)
    assert "Traceback" not in line


def test_demo_workdir_that_is_a_file_and_ratings_that_are_not_ratings(tmp_path):
    (tmp_path / "run").write_text("x")
    one_line_error(streamrec("demo", "--workdir", str(tmp_path / "run")), 1, "--workdir", "is a file")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    r = streamrec("demo", "--ratings", str(tmp_path / "other.csv"), "--workdir", str(tmp_path / "demo"))
    one_line_error(r, 1, "unrecognised header", "userId,movieId,rating,timestamp")
    assert not (tmp_path / "demo").exists()  # said before the broker and the workers started


def test_kafka_client_settings_librdkafka_refuses(tmp_path):
    """A --kafka-config asking for a SASL mechanism this librdkafka lacks (GSSAPI, the default)."""
    props = tmp_path / "client.properties"
    props.write_text("security.protocol=SASL_SSL\n")
    r = streamrec("worker", "--bootstrap-servers", UNREACHABLE, "--db", str(tmp_path / "w.duckdb"),
                  "--kafka-config", str(props), timeout=60)
    one_line_error(r, 1, "Kafka client", "SASL", "--kafka-config")


def test_metrics_port_0_takes_a_free_port_and_says_which(broker, settings, tmp_path):
    log = tmp_path / "worker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    with open(log, "w") as out:
        p = subprocess.Popen([sys.executable, "-m", "streamrec", "worker", "--bootstrap-servers",
                              settings.bootstrap_servers, "--db", settings.db, "--group-id", settings.group_id,
                              "--interactions-topic", settings.interactions_topic, "--metrics-port", "0"],
                             stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline, found = time.time() + 90, None
        while found is None:
            assert time.time() < deadline and p.poll() is None, log.read_text()[-3000:]
            found = re.search(r"web \(metrics, lists\) http://127\.0\.0\.1:(\d+)", log.read_text())
            time.sleep(0.5)
        port = int(found.group(1))
        assert port != 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
            assert "streamrec_events_stored_total" in page.read().decode()
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(30)


def test_lists_follow_says_it_is_waiting_for_a_first_list(tmp_path):
    """``lists --follow`` for a user without a list yet (a 404): one line saying so, then it waits."""
    not_found = type("NotFound", (http.server.BaseHTTPRequestHandler,), {  # a worker that has no list for user 7
        "do_GET": lambda self: (self.send_response(404), self.send_header("Content-Type", "application/json"),
                                self.end_headers(), self.wfile.write(b'{"error": "no list for user 7"}')),
        "log_message": lambda self, *a: None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), not_found)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        p = subprocess.Popen([sys.executable, "-m", "streamrec", "lists", "7", "--follow", "--worker-url",
                              f"http://127.0.0.1:{server.server_address[1]}"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        time.sleep(4)  # a few polls, a second apart: the line comes once
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        server.shutdown()
    assert p.returncode == 0 and out == "", (p.returncode, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no list for user 7 yet" in lines[0] and "waiting" in lines[0], err


def test_demo_clears_only_its_own_files_from_its_workdir(tmp_path, capsys):
    from streamrec.streams.demo import clear_workdir

    work = tmp_path / "run"
    (work / "mydata").mkdir(parents=True)
    (work / "mydata" / "notes.txt").write_text("keep")
    (work / "precious.txt").write_text("keep")
    for name in ("worker-0.log", "broker.log", "report.png", "worker-0.duckdb.wal"):
        (work / name).write_text("old")
    for folder in ("registry/v1", "export-0", "worker-0.duckdb.faust"):
        (work / folder).mkdir(parents=True)
    (work / "worker-1.duckdb").write_bytes(b"\x00" * 5000)  # damaged (a demo killed mid-write): not "in use"
    clear_workdir(work)
    assert sorted(p.name for p in work.iterdir()) == ["mydata", "precious.txt"]
    assert (work / "mydata" / "notes.txt").read_text() == "keep"
    assert "removed the previous demo's files" in capsys.readouterr().out


def test_demo_workdir_in_use_is_said_and_nothing_is_touched(tmp_path):
    from streamrec.streams.demo import clear_workdir
    from streamrec.streams.preflight import UserError

    work = tmp_path / "run"
    work.mkdir()
    (work / "worker-0.log").write_text("the running demo's log")
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(60)", str(work / "worker-0.duckdb")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"in use by a running demo .*pid {holder.pid}.*another --workdir"):
            clear_workdir(work)
    finally:
        holder.kill()
        holder.wait()
    assert (work / "worker-0.log").read_text() == "the running demo's log"


@pytest.mark.parametrize("args, why", [
    (["--start", "999999"], "--start 999,999 is past its 100,004"),
    (["--min-rating", "6"], "--min-rating 6 keeps none of them"),
])
def test_a_replay_with_nothing_to_send_says_why(args, why):
    """It printed "replayed 0 events" and exit 0 (``--limit 0``, which asks for none, still does)."""
    r = streamrec("replay", str(DATA / "ratings.csv"), "--bootstrap-servers", UNREACHABLE, *args)
    one_line_error(r, 1, "nothing to replay", why)


def test_report_reads_the_database_the_worker_was_given_by_the_environment(tmp_path):
    r = streamrec("report", cwd=tmp_path, env={"STREAMREC_DB": str(tmp_path / "live.duckdb")})
    one_line_error(r, 1, f"database not found: {tmp_path / 'live.duckdb'}")


def test_a_registry_without_a_champion_is_said(tmp_path):
    """An empty registry (a new deployment, before the first promotion): served by the baseline, said."""
    (tmp_path / "reg").mkdir()
    r = streamrec("worker", "--bootstrap-servers", UNREACHABLE, "--db", str(tmp_path / "w.duckdb"),
                  "--registry", str(tmp_path / "reg"), timeout=60)
    assert f"registry {tmp_path / 'reg'} has no champion yet: serving the baseline" in r.stderr, r.stderr
    assert r.returncode == 1 and "cannot reach Kafka" in r.stderr.strip().splitlines()[-1]
