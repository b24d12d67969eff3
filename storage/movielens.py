"""Readers for MovieLens-style interaction files, as columns in time order.

Three formats are understood, chosen from the file's name and first line:

* ``ratings.csv`` of ML-20M / ml-latest: ``userId,movieId,rating,timestamp`` with a header;
* ``ratings.dat`` of ML-1M / ML-10M: ``user::item::rating::timestamp``, no header;
* RecBole atomic ``.inter`` files (ML-100K in the ``recbole`` wheel): tab separated, header
  ``user_id:token\titem_id:token\trating:float\ttimestamp:float``.

Rows are ordered by timestamp. Order *within one second* is unknown (51% of consecutive ML-100K
events and 22% in ml-latest-small share a second, and ml-latest-small lists a user's same-second
ratings by ascending movieId), so file order must not leak into training or targets: ties are
ordered by a seeded hash of (user, item) (``tie_order``), the same whatever the file order.
``ties="file"`` keeps file order (only to measure what the leak was worth, docs/accuracy.md).

>>> import io, pathlib, tempfile
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\\n1,10,4.0,5\\n2,11,3.5,3\\n1,12,5.0,5\\n")
>>> r = load_ratings(d / "ratings.csv")
>>> r.user.tolist(), r.item.tolist(), r.timestamp.tolist()
([2, 1, 1], [11, 12, 10], [3, 5, 5])
>>> load_ratings(d / "ratings.csv", ties="file").item.tolist()
[11, 10, 12]
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv


@dataclass(frozen=True)
class Ratings:
    """Interactions as parallel columns, sorted by ``timestamp`` (seconds); see ``tie_order``."""

    user: np.ndarray  # int64
    item: np.ndarray  # int64
    rating: np.ndarray  # float32
    timestamp: np.ndarray  # int64, Unix seconds

    def __len__(self) -> int:
        return len(self.user)

    def slice(self, start: int = 0, stop: int | None = None) -> "Ratings":
        s = slice(start, stop)
        return Ratings(self.user[s], self.item[s], self.rating[s], self.timestamp[s])

    def filter(self, mask: np.ndarray) -> "Ratings":
        return Ratings(self.user[mask], self.item[mask], self.rating[mask], self.timestamp[mask])


class FormatError(ValueError):
    """The file is not one of the interaction formats we read."""


def tie_order(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices sorting by timestamp, and within a second by a seeded hash of (user, item): a
    reproducible random order that does not depend on the order of the rows given."""
    with np.errstate(over="ignore"):
        x = np.asarray(user, np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x ^= np.asarray(item, np.int64).astype(np.uint64) + np.uint64(0x632BE59BD9B4E019 + seed)
        # splitmix64 finaliser: nearby ids land far apart
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return np.lexsort((x, np.asarray(timestamp)))


def load_ratings(path: str | Path, min_rating: float | None = None, ties: str = "hash", seed: int = 0) -> Ratings:
    """Read a ratings file in any supported format, sorted by timestamp; same-second events in
    ``tie_order`` (``ties="hash"``, seeded by ``seed``) or in file order (``ties="file"``)."""
    if ties not in ("hash", "file"):
        raise ValueError(f"ties must be 'hash' or 'file', not {ties!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ratings file not found: {path}")
    with path.open("r", encoding="utf-8", errors="replace") as f:
        first = f.readline().strip()
    if "::" in first:
        table = _read_dat(path)
    elif path.suffix == ".inter" or ":token" in first:
        table = _read_inter(path)
    elif first.lower().replace(" ", "").startswith("userid,movieid,rating,timestamp"):
        table = _read_csv(path)
    else:
        raise FormatError(
            f"{path}: unrecognised header {first[:80]!r}; expected 'userId,movieId,rating,timestamp' "
            "(ML-20M/ml-latest), 'u::i::r::t' lines (ML-1M) or a RecBole .inter header"
        )
    user = np.asarray(table["user"], dtype=np.int64)
    item = np.asarray(table["item"], dtype=np.int64)
    rating = np.asarray(table["rating"], dtype=np.float32)
    ts = np.asarray(table["timestamp"], dtype=np.int64)
    order = np.argsort(ts, kind="stable") if ties == "file" else tie_order(user, item, ts, seed)
    out = Ratings(user[order], item[order], rating[order], ts[order])
    if min_rating is not None:
        out = out.filter(out.rating >= min_rating)
    return out


def _columns(table: pa.Table, names: list[str]) -> dict[str, np.ndarray]:
    cols = table.columns
    return {n: cols[i].to_numpy() for i, n in enumerate(names)}


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(skip_rows=1, column_names=["user", "item", "rating", "timestamp"]),
        convert_options=pacsv.ConvertOptions(
            column_types={"user": pa.int64(), "item": pa.int64(), "rating": pa.float32(), "timestamp": pa.float64()}
        ),
    )
    return _columns(table, ["user", "item", "rating", "timestamp"])


def _read_dat(path: Path) -> dict[str, np.ndarray]:
    # '::' is a two-character delimiter, which the Arrow reader does not take; the files are
    # small enough (1M lines) for numpy after a single replace.
    text = path.read_bytes().replace(b"::", b"\t")
    rows = np.loadtxt(text.splitlines(), delimiter="\t", dtype=np.float64, ndmin=2)
    if rows.shape[1] < 4:
        raise FormatError(f"{path}: expected 4 fields per line, found {rows.shape[1]}")
    return {"user": rows[:, 0], "item": rows[:, 1], "rating": rows[:, 2], "timestamp": rows[:, 3]}


def _read_inter(path: Path) -> dict[str, np.ndarray]:
    with path.open("r", encoding="utf-8") as f:
        header = next(csv.reader(f, delimiter="\t"))
    names = [h.split(":")[0] for h in header]
    try:
        idx = [names.index(n) for n in ("user_id", "item_id", "rating", "timestamp")]
    except ValueError as e:
        raise FormatError(f"{path}: .inter header {header} lacks user_id/item_id/rating/timestamp") from e
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(skip_rows=1, column_names=names),
        parse_options=pacsv.ParseOptions(delimiter="\t"),
    )
    cols = [table.column(names[i]).to_numpy() for i in idx]
    return dict(zip(["user", "item", "rating", "timestamp"], cols))


def load_titles(path: str | Path) -> dict[int, str]:
    """``movieId -> title`` from a MovieLens ``movies.csv`` (or ML-1M ``movies.dat``)."""
    path = Path(path)
    titles: dict[int, str] = {}
    if path.suffix == ".dat":
        for line in path.read_text(encoding="latin-1").splitlines():
            parts = line.split("::")
            if len(parts) >= 2:
                titles[int(parts[0])] = parts[1]
        return titles
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            titles[int(row["movieId"])] = row["title"]
    return titles


def recbole_ml100k_path() -> Path:
    """Path of ML-100K inside the installed ``recbole`` wheel (never copied into this repository)."""
    import importlib.util

    spec = importlib.util.find_spec("recbole")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("recbole is not installed: pip install --no-deps recbole==1.2.1")
    path = Path(spec.origin).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
    if not path.is_file():
        raise FileNotFoundError(f"ML-100K not found at {path}")
    return path
