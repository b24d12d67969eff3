"""The worker's warm-up of its compiled kernels: a failure there is a warning, never the worker's end."""

import logging
import re
import tempfile

from streamrec.streams.warm_up import warm_up
from tests.conftest import tiny_disk


def test_warm_up_without_room_warns_in_one_line_and_returns(tmp_path, monkeypatch, caplog):
    """A temporary directory with room for a name but not for DuckDB's file (a full /tmp): the
    worker logs why and goes on (it used to crash at start with a traceback)."""
    with tiny_disk(tmp_path, "4k") as disk:
        monkeypatch.setattr(tempfile, "tempdir", str(disk))
        with caplog.at_level(logging.INFO, logger="streamrec.streams.warm_up"):
            warm_up()
    lines = [r.getMessage() for r in caplog.records if r.name == "streamrec.streams.warm_up"]
    assert len(lines) == 1 and "kernels not compiled ahead" in lines[0], lines
    assert "No space left on device" in lines[0] and "\n" not in lines[0]


def test_warm_up_logs_its_time(caplog):
    with caplog.at_level(logging.INFO, logger="streamrec.streams.warm_up"):
        warm_up()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and re.match(r"compiled kernels ready in \d+\.\ds ", messages[0]), messages
