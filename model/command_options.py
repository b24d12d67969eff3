"""Checks of the model commands' options, done when the command line is parsed (or, for ``--out``,
before any data is read): a bad value ends in one line naming the option, what it takes and the
value given, instead of a crash or a meaningless run after minutes of work.

Each ``type=`` helper raises ``argparse.ArgumentTypeError`` (argparse prints it as one usage line,
exit status 2); a value that is not a number at all gets argparse's "invalid ... value" line.

>>> count = ranged(int, low=1)
>>> count("3")
3
>>> count("0")
Traceback (most recent call last):
argparse.ArgumentTypeError: must be 1 or more, not 0
>>> ranged(float, low=0.0, high=1.0, high_open=True)("1")
Traceback (most recent call last):
argparse.ArgumentTypeError: must be at least 0 and below 1, not 1
>>> ranged(float, low=0.0, low_open=True)("nan")
Traceback (most recent call last):
argparse.ArgumentTypeError: must be above 0, not nan
>>> device("auto"), device("cpu")
('auto', 'cpu')
>>> device("banana")
Traceback (most recent call last):
argparse.ArgumentTypeError: unknown device 'banana': use auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tempfile
from pathlib import Path


def _want(low, high, low_open: bool, high_open: bool) -> str:
    """The range in words: "1 or more", "above 0", "from 0 to 1", "at least 0 and below 1"."""
    if high is None and low == -math.inf:
        return "a finite number"
    low, high = (x if x is None or isinstance(x, int) else f"{x:g}" for x in (low, high))  # 0.0 -> "0"
    if high is None:
        return f"above {low}" if low_open else f"{low} or more"
    if not low_open and not high_open:
        return f"from {low} to {high}"
    start = f"above {low}" if low_open else f"at least {low}"
    return f"{start} and {'below' if high_open else 'at most'} {high}"


def ranged(kind: type, low, high=None, *, low_open: bool = False, high_open: bool = False):
    """An argparse ``type=`` for a number (``int`` or ``float``) in [low, high] (``*_open``: the bound
    itself excluded; ``high`` None: no upper bound). NaN and infinities are out of every range."""

    def parse(text: str):
        x = kind(text)  # ValueError: argparse says "invalid whole number value: 'abc'"
        ok = math.isfinite(x) and (x > low if low_open else x >= low)
        if ok and high is not None:
            ok = x < high if high_open else x <= high
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {_want(low, high, low_open, high_open)}, not {text}")
        return x

    parse.__name__ = "whole number" if kind is int else "number"
    return parse


COUNT = ranged(int, 1)  # epochs, batch sizes, heads ...: 1 or more
NONNEGATIVE = ranged(int, 0)  # 0 means "off" or "none"
SEED = ranged(int, 0, 2**32 - 1)  # numpy's generators take no negative seed
RATE = ranged(float, 0.0, low_open=True)  # learning rate, minutes: above 0
PROBABILITY = ranged(float, 0.0, 1.0)  # from 0 to 1
BELOW_ONE = ranged(float, 0.0, 1.0, high_open=True)  # dropout, label smoothing: 1 would leave nothing
WEIGHT = ranged(float, 0.0)  # weight decay: 0 or more
REAL = ranged(float, -math.inf, low_open=True)  # any finite number (a rating threshold)

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda)(:\d+)?$")


def device(text: str) -> str:
    """``--device``: auto, cpu, cuda, cuda:N or mps, one this machine has; returned as given."""
    m = _DEVICE.match(text.strip().lower())
    if m is None or (m.group(2) and m.group(1) != "cuda"):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: use auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps")
    kind = m.group(1)
    if kind in ("auto", "cpu"):
        return text.strip().lower()
    import torch

    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError("mps: no Apple GPU (MPS) here; use --device cpu or auto")
        return "mps"
    if not torch.cuda.is_available():
        why = f"torch {torch.__version__} built without CUDA" if torch.version.cuda is None else \
            f"torch {torch.__version__} with CUDA {torch.version.cuda} finds no GPU"
        raise argparse.ArgumentTypeError(f"{text}: no CUDA device here ({why}); use --device cpu or auto")
    n = torch.cuda.device_count()
    if m.group(2) and int(m.group(2)[1:]) >= n:
        raise argparse.ArgumentTypeError(f"{text}: this machine has {n} CUDA device{'s' if n > 1 else ''} "
                                         f"(cuda:0 to cuda:{n - 1}); use one of them, cuda or auto")
    return text.strip().lower()


def check_out_dir(path: Path, option: str = "--out") -> None:
    """Fail now, before minutes of training, unless ``path`` is a writable directory or one that can be
    created (``PermissionError`` or ``NotADirectoryError``, one line each). Leaves
    nothing behind: the probe is a temporary directory, removed at once."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{option} {path} is a file, not a directory: give a directory (it is created "
                                 "if missing)")
    parent = path
    while not parent.exists():  # the nearest existing ancestor is where the new directories start
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"{option} {path}: {parent} is a file, not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=".streamrec-probe-", dir=parent)
    except OSError as e:
        raise PermissionError(f"{option} {path}: cannot write in {parent} ({e.strerror or e}); "
                              "give a directory you can write to") from None
    os.rmdir(probe)


def read_event_log(db: Path):
    """``--db``: the event log of a (stopped) worker's DuckDB file, as ``Ratings``; one line
    (``FileNotFoundError``, ``IsADirectoryError``, ``FormatError``) for a path that is none."""
    import duckdb

    from streamrec.storage.movielens import FormatError
    from streamrec.storage.store import read_ratings

    db = Path(db)
    if db.is_dir():
        raise IsADirectoryError(f"--db {db} is a directory, not a database: give the DuckDB file a worker wrote")
    if not db.exists():
        raise FileNotFoundError(f"database not found: {db} (--db takes the DuckDB file a worker wrote)")
    try:
        return read_ratings(db)
    except duckdb.CatalogException:
        raise FormatError(f"{db} has no event log (no events table): not a worker's database; give the --db a "
                          "worker wrote, or --ratings FILE") from None
    except duckdb.IOException as e:
        if "not a valid DuckDB database" not in str(e):
            raise  # e.g. a running worker's lock, which streamrec's error handler explains
        raise FormatError(f"{db} is not a DuckDB database file: give the --db a worker wrote, or --ratings FILE "
                          "for a ratings file") from None
