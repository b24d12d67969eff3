"""The README does what it says: its first screen holds the quick start and snippets that run
against a real broker and worker; its command and configuration tables match the code both ways;
no link leaves the repository; the list format says what ``scores`` mean for every model."""

from __future__ import annotations

import re
import time
from dataclasses import fields
from pathlib import Path

import pytest

from streamrec.streams.broker import EmbeddedBroker
from streamrec.streams.cli import COMMANDS
from streamrec.streams.config import Settings, settings_markdown
from streamrec.streams.processes import WorkerProcess
from streamrec.streams.topics import ensure_topics

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
FIRST_SCREEN = "\n".join(README.splitlines()[:60])


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def section(heading: str) -> str:
    """The README's text under ``## heading`` up to the next ``## ``."""
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert m, f"no '## {heading}' section"
    return m.group(1)


def test_first_screen_is_the_quick_start():
    assert "./scripts/demo.sh" in FIRST_SCREEN and "./scripts/test.sh" in FIRST_SCREEN
    assert "## Use it with your own events" in FIRST_SCREEN
    producer, consumer = python_blocks(FIRST_SCREEN)
    assert "Producer(" in producer and '"interactions"' in producer
    assert "Consumer(" in consumer and '"recommendations"' in consumer
    assert "streamrec lists" in FIRST_SCREEN and "GET /recommendations/" in FIRST_SCREEN


def test_first_screen_snippets_run_against_the_embedded_broker(tmp_path, monkeypatch):
    producer, consumer = python_blocks(FIRST_SCREEN)
    with EmbeddedBroker(log_file=tmp_path / "tansu.log") as broker:
        monkeypatch.setenv("STREAMREC_BOOTSTRAP_SERVERS", broker.bootstrap)
        ensure_topics(Settings(bootstrap_servers=broker.bootstrap))  # the default topic names, as a user has them
        worker = WorkerProcess(broker.bootstrap, tmp_path / "w.duckdb", tmp_path / "worker.log",
                               group_id="readme-worker").start()
        try:
            worker.wait_ready()
            exec(compile(producer, "README producer", "exec"), {})
            # The README's reader runs forever; here it stops once both users have a list.
            assert consumer.count("while True:") == 1
            bounded = consumer.replace("while True:", "while len(latest) < 2 and time.monotonic() < deadline:")
            ns = {"time": time, "deadline": time.monotonic() + 60}
            exec(compile(bounded, "README consumer", "exec"), ns)
        finally:
            worker.stop()
    latest = ns["latest"]
    assert set(latest) == {1, 2}, latest
    assert latest[1]["items"] and not {318, 296} & set(latest[1]["items"])  # never a seen item
    assert latest[2]["items"] and not {593, 318} & set(latest[2]["items"])
    assert latest[1]["scores"] == sorted(latest[1]["scores"], reverse=True)  # higher is better


def test_configuration_table_matches_settings_both_ways():
    text = section("Configuration")
    assert settings_markdown() in text, "regenerate the table: python -c 'from streamrec.streams.config " \
                                        "import settings_markdown; print(settings_markdown())'"
    rows = re.findall(r"^\| `--([a-z0-9-]+)` \| `(STREAMREC_[A-Z0-9_]+)` \|", text, re.M)
    assert sorted(r[0].replace("-", "_") for r in rows) == sorted(f.name for f in fields(Settings))
    assert all(env == Settings.env_name(f) for (_, env), f in zip(rows, fields(Settings)))


def test_command_table_lists_every_command_once():
    rows = re.findall(r"^\| `streamrec ([a-z-]+)[^`]*` \|", section("Commands"), re.M)
    assert sorted(rows) == sorted(COMMANDS), "every command one line, and only commands that exist"


def test_scores_are_explained_for_every_model():
    text = section("Events and lists")
    for model in ("popularity", "sasrec", "bert4rec", "item2item", "itemknn"):
        assert re.search(rf"`{model}`[^\n]*scores|scores[^\n]*`{model}`|^\| `{model}` \|", text, re.M), model


@pytest.mark.parametrize("doc", ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")))
def test_no_link_leaves_the_repository(doc):
    path = ROOT / doc
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        assert not re.match(r"[a-z]+://", target), f"{doc}: external link {target}"
        file = target.split("#")[0]
        if file:
            resolved = (path.parent / file).resolve()
            assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{doc}: {target} is not in the repository"
    assert "shared/notes" not in path.read_text(), f"{doc} points at notes outside the repository"


def test_files_the_docs_name_exist():
    """A renamed module leaves no stale pointer in README.md or docs/."""
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for path in re.findall(r"`((?:streams|model|storage|tests|benchmarks|scripts|deploy)/[\w/.-]+\.\w+)`",
                               doc.read_text()):
            assert (ROOT / path).exists(), f"{doc.name} names {path}, which does not exist"
