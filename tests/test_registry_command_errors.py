"""The registry's commands (retrain, shadow, models, promote, rollback) as a user meets their errors: one
line on stderr, exit status 2 for a bad option and 1 otherwise, and the registry left as the line says.

An unreachable broker is found before the registry changes (and before retraining starts); a broker lost
after the change is reported with what the registry recorded. A mistyped registry path is never created
by a command that only reads or changes an existing registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from streamrec.model.registry import Registry, RegistryError
from tests.test_cli_errors import DATA, one_line_error, streamrec
from tests.test_registry import register

UNREACHABLE = ["--bootstrap-servers", "127.0.0.1:1"]


def make_registry(root: Path) -> Registry:
    """v1 champion, v2 candidate: tiny models, registered in milliseconds."""
    r = Registry(root)
    v1 = register(r)
    register(r, seed=1)
    r.promote(v1)
    return r


@pytest.fixture
def reg(tmp_path) -> Registry:
    return make_registry(tmp_path / "registry")


def concurrently(run, *calls: list[str]) -> list[subprocess.CompletedProcess]:
    """``run(*args)`` for each argument list, all at once (each waits out its own 6 s Kafka timeout)."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda args: run(*args), calls))


def state(r: Registry) -> tuple:
    return r.champion(), r.history(), [(v.version, v.status) for v in r.list()]


def test_promote_and_rollback_to_an_unreachable_broker_change_nothing(reg):
    reg.promote("v2")  # either command would now change the champion back to v1
    before = state(reg)
    promote, rollback = concurrently(lambda *a: streamrec(*a, timeout=90),
                                     ["promote", "--registry", str(reg.root), "v1", *UNREACHABLE],
                                     ["rollback", "--registry", str(reg.root), *UNREACHABLE])
    for r in (promote, rollback):
        one_line_error(r, 1, "cannot reach Kafka", "127.0.0.1:1", "--bootstrap-servers")
        assert r.stdout == ""
    assert state(reg) == before and reg.champion() == "v2"


def test_retrain_checks_the_broker_before_training(tmp_path):
    registry = tmp_path / "registry"
    r = streamrec("retrain", "--registry", str(registry), "--ratings", str(DATA / "ratings.csv"), "--epochs", "1",
                  "--margin", "1", *UNREACHABLE, timeout=90)
    one_line_error(r, 1, "cannot reach Kafka", "127.0.0.1:1")
    assert "promoted" not in r.stdout and "NDCG" not in r.stdout  # nothing trained, nothing registered
    assert not registry.exists()


def test_unknown_version_and_nothing_to_roll_back_are_said_before_the_broker_is_tried(reg):
    one_line_error(streamrec("promote", "--registry", str(reg.root), "v9", *UNREACHABLE), 1, "no version v9",
                   "have v1, v2")
    one_line_error(streamrec("rollback", "--registry", str(reg.root), *UNREACHABLE), 1, "nothing to roll back")
    assert reg.champion() == "v1"


def lost_broker(*args: str) -> subprocess.CompletedProcess:
    """The CLI, with a broker that answers the check before the change and is gone by the announcement
    (the check is skipped; the announcement goes to a closed port)."""
    code = ("import sys; from streamrec.streams import cli, retrain_job; "
            "retrain_job._reachable = lambda kafka: None; sys.exit(cli.main(sys.argv[1:]))")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    return subprocess.run([sys.executable, "-c", code, *args, *UNREACHABLE], capture_output=True, text=True,
                          timeout=90, env=environ, cwd=Path(__file__).parent.parent)


def test_an_announcement_lost_after_the_change_says_what_the_registry_recorded(tmp_path):
    promoted, rolled_back = make_registry(tmp_path / "a"), make_registry(tmp_path / "b")
    rolled_back.promote("v2")
    runs = concurrently(lost_broker, ["promote", "--registry", str(promoted.root), "v2"],
                        ["rollback", "--registry", str(rolled_back.root)])
    for r, command, reg in zip(runs, ("promote", "rollback"), (promoted, rolled_back)):
        version = reg.champion()  # what the line says happened did happen
        assert version == {"promote": "v2", "rollback": "v1"}[command]
        line = one_line_error(r, 1, f"{command} {version} recorded in the registry but not announced",
                              "cannot reach Kafka", f"`streamrec promote {version}`")
        assert "unexpected" not in line and "announced" not in r.stdout


def test_promote_to_a_reachable_broker_announces(reg, broker, tmp_path):
    from tests.conftest import read_topic

    topic = f"model-updates-{tmp_path.name}"
    r = streamrec("promote", "--registry", str(reg.root), "v2", "--bootstrap-servers", broker.bootstrap,
                  "--model-updates-topic", topic, timeout=90)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert f"announced promote v2 on {topic}" in r.stdout and reg.champion() == "v2"
    assert len(read_topic(broker.bootstrap, topic, min_count=1)) == 1
    # Again (e.g. after an announcement was lost): said to be the champion already, announced again.
    r = streamrec("promote", "--registry", str(reg.root), "v2", "--bootstrap-servers", broker.bootstrap,
                  "--model-updates-topic", topic, timeout=90)
    assert r.returncode == 0 and r.stdout.startswith("v2 is the champion already: the registry is unchanged"), r
    assert f"announced promote v2 on {topic}" in r.stdout and reg.champion() == "v2"
    assert len(read_topic(broker.bootstrap, topic, min_count=2)) == 2


@pytest.mark.parametrize("command", ["models", "promote", "rollback", "shadow"])
def test_a_missing_registry_is_reported_and_never_created(tmp_path, command):
    missing = tmp_path / "typo_reg"
    version = ["v1"] if command in ("promote", "shadow") else []
    kafka = UNREACHABLE if command != "models" else []
    line = one_line_error(streamrec(command, "--registry", str(missing), *version, *kafka), 1,
                          f"no registry at {missing}")
    assert "cannot reach Kafka" not in line  # said before the broker is tried
    assert not missing.exists()


def test_retrain_may_create_the_registry(tmp_path):
    registry = tmp_path / "new" / "registry"
    r = streamrec("retrain", "--registry", str(registry), "--export-dir", str(tmp_path / "none"))
    assert r.returncode == 1 and "no events" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert registry.is_dir()


def test_a_file_is_not_a_registry(tmp_path):
    file = tmp_path / "bin.dat"
    file.write_bytes(b"\x00\x01 not a registry")
    calls = (["models"], ["retrain", "--ratings", str(DATA / "ratings.csv")], ["promote", "v1"])
    for r in concurrently(streamrec, *([c[0], "--registry", str(file), *c[1:]] for c in calls)):
        line = one_line_error(r, 1, f"{file} is a file, not a registry directory")
        assert "unexpected" not in line
    assert file.read_bytes() == b"\x00\x01 not a registry"
    with pytest.raises(RegistryError, match="is a file, not a registry directory"):
        Registry(file)  # what the worker's --registry goes through


@pytest.mark.parametrize("args, words", [
    (["shadow", "v2", "--shadow-events", "0"], ["--shadow-events", "out of range", ">= 1"]),
    (["shadow", "v2", "--shadow-alpha", "2"], ["--shadow-alpha", "out of range", "from 0.0001 to 0.5"]),
    (["shadow", "v2", "--shadow-alpha", "0"], ["--shadow-alpha", "out of range"]),
    (["shadow", "v2", "--shadow-timeout", "-5"], ["--shadow-timeout", "out of range", ">= 1"]),
    (["shadow", "v2", "--shadow-timeout", "0"], ["--shadow-timeout", "out of range"]),
    (["shadow", "v2", "--shadow-timeout", "abc"], ["--shadow-timeout", "a duration", "90s, 10m or 1h"]),
    (["retrain", "--epochs", "0"], ["--epochs", "out of range", ">= 1"]),
    (["retrain", "--epochs", "-2"], ["--epochs", "out of range"]),
    (["retrain", "--threads", "0"], ["--threads", "out of range", ">= 1"]),
    (["retrain", "--threads", "-3"], ["--threads", "out of range"]),
    (["retrain", "--metrics-port", "70000"], ["--metrics-port", "out of range", "from 0 to 65535"]),
    (["retrain", "--every", "0"], ["--every", "a period or a number of events", "90s, 10m, 2h or 50000ev"]),
    (["retrain", "--every", "0s"], ["--every", "more than 0"]),
    (["retrain", "--every", "soon"], ["--every", "a period or a number of events"]),
])
def test_meaningless_values_are_usage_errors(reg, args, words):
    extra = ["--ratings", str(DATA / "ratings.csv")] if args[0] == "retrain" else []
    before = state(reg)
    line = one_line_error(streamrec(args[0], "--registry", str(reg.root), *args[1:], *extra, *UNREACHABLE), 2,
                          *words)
    assert "tuple" not in line and "expected a number" not in line
    if "--shadow-timeout" in args:
        assert "--every" not in line  # no hint about another option
    assert state(reg) == before


def test_zero_metrics_port_still_means_off():
    from streamrec.streams.cli import build_parser
    from streamrec.streams.retrain_settings import RetrainSettings

    args = build_parser().parse_args(["retrain", "--registry", "r", "--metrics-port", "0", "--shadow-timeout", "10m"])
    job = RetrainSettings.from_args(args)
    assert job.metrics_port == 0 and job.shadow_timeout == 600.0


def test_retrain_epochs_bound_a_first_cold_model_too(tmp_path):
    """`--epochs` used to reach only the warm fine-tuning: a first model ran the cold default (30)."""
    small = tmp_path / "small.csv"
    small.write_text("".join((DATA / "ratings.csv").read_text().splitlines(keepends=True)[:4001]))
    r = streamrec("retrain", "--registry", str(tmp_path / "reg"), "--ratings", str(small), "--epochs", "1",
                  timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    card = json.loads((tmp_path / "reg" / "v1" / "card.json").read_text())
    assert card["mode"] == "cold" and card["train"]["epochs"] == 1 and len(card["history"]) <= 1, card["history"]
