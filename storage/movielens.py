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
    table = {"dat": _read_dat, "inter": _read_inter, "csv": _read_csv}[ratings_format(path)](path)
    user = np.asarray(table["user"], dtype=np.int64)
    item = np.asarray(table["item"], dtype=np.int64)
    rating = np.asarray(table["rating"], dtype=np.float32)
    ts = np.asarray(table["timestamp"], dtype=np.int64)
    order = np.argsort(ts, kind="stable") if ties == "file" else tie_order(user, item, ts, seed)
    out = Ratings(user[order], item[order], rating[order], ts[order])
    if min_rating is not None:
        out = out.filter(out.rating >= min_rating)
    return out


def ratings_format(path: str | Path) -> str:
    """Which reader a ratings file needs, from its first line: ``dat`` (ML-1M ``u::i::r::t``), ``inter``
    (RecBole) or ``csv`` (ML-20M / ml-latest); a clear error for a path that is none of them (checked
    before a long run starts, e.g. by the demo)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a ratings file: give the ratings.csv or ratings.dat in it")
    if not path.is_file():
        raise FileNotFoundError(f"ratings file not found: {path}")
    with path.open("r", encoding="utf-8", errors="replace") as f:
        first = f.readline().strip()
    if "::" in first:
        return "dat"
    if path.suffix == ".inter" or ":token" in first:
        return "inter"
    if first.lower().replace(" ", "").startswith("userid,movieid,rating,timestamp"):
        return "csv"
    raise FormatError(
        f"{path}: unrecognised header {first[:80]!r}; expected 'userId,movieId,rating,timestamp' "
        "(ML-20M/ml-latest), 'u::i::r::t' lines (ML-1M) or a RecBole .inter header"
    )


def _columns(table: pa.Table, names: list[str]) -> dict[str, np.ndarray]:
    cols = table.columns
    return {n: cols[i].to_numpy() for i, n in enumerate(names)}


_CSV_FIELDS = [("userId", int), ("movieId", int), ("rating", float), ("timestamp", float)]


def _bad_row(path: Path, sep: str, fields: list[tuple[str, type]], skip: int = 0) -> str | None:
    """Where a file stops parsing, in words ("line 3: movieId 'abc' is not a whole number"): the first
    line with another number of fields or a field that is not a number; None if every line parses.
    Only run once a reader has failed, to name the place its own message does not.

    >>> import pathlib, tempfile
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "r.csv"
    >>> _ = f.write_text("userId,movieId,rating,timestamp\\n1,2,3.5,4\\n1,x,3,5\\n1,2\\n")
    >>> _bad_row(f, ",", _CSV_FIELDS, skip=1)
    "line 3: movieId 'x' is not a whole number"
    """
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if n <= skip or not line.strip():
                continue
            values = line.rstrip("\r\n").split(sep)
            if len(values) != len(fields):
                return f"line {n} has {len(values)} fields, not {len(fields)} ({line.strip()[:60]!r})"
            for (name, kind), v in zip(fields, values):
                try:
                    kind(v)
                except ValueError:
                    return f"line {n}: {name} {v!r} is not a {'whole number' if kind is int else 'number'}"
    return None


def _malformed(path: Path, why: str | None, reader_says: str, expected: str) -> FormatError:
    said = " ".join(reader_says.split())[:160]
    return FormatError(f"{path}: {why or said}; expected {expected} in every line (fix or drop that line)")


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    names = ["user", "item", "rating", "timestamp"]
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(skip_rows=1, column_names=names),
            convert_options=pacsv.ConvertOptions(
                column_types={"user": pa.int64(), "item": pa.int64(), "rating": pa.float32(), "timestamp": pa.float64()}
            ),
        )
    except pa.ArrowInvalid as e:
        raise _malformed(path, _bad_row(path, ",", _CSV_FIELDS, skip=1), str(e), "userId,movieId,rating,timestamp") \
            from None
    if any(table.column(n).null_count for n in names):  # empty fields (or NA, NULL ...) read as missing
        why = _bad_row(path, ",", _CSV_FIELDS, skip=1) or "a value is missing"
        raise _malformed(path, why, "", "userId,movieId,rating,timestamp")
    return _columns(table, names)


def _read_dat(path: Path) -> dict[str, np.ndarray]:
    # '::' is a two-character delimiter, which the Arrow reader does not take; the files are
    # small enough (1M lines) for numpy after a single replace.
    text = path.read_bytes().replace(b"::", b"\t")
    try:
        rows = np.loadtxt(text.splitlines(), delimiter="\t", dtype=np.float64, ndmin=2)
    except ValueError as e:
        fields = [(n, float) for n in ("user", "item", "rating", "timestamp")]
        raise _malformed(path, _bad_row(path, "::", fields), str(e), "user::item::rating::timestamp") from None
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
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(skip_rows=1, column_names=names),
            parse_options=pacsv.ParseOptions(delimiter="\t"),
        )
    except pa.ArrowInvalid as e:
        raise _malformed(path, None, str(e), f"the {len(names)} tab-separated fields of its header") from None
    cols = [table.column(names[i]).to_numpy() for i in idx]
    return dict(zip(["user", "item", "rating", "timestamp"], cols))


def load_titles(path: str | Path) -> dict[int, str]:
    """``movieId -> title`` from a MovieLens ``movies.csv`` (or ML-1M ``movies.dat``); ``FormatError``
    for a file without those columns or with a movieId that is not a whole number."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a movies file: give the movies.csv in it")
    if not path.is_file():
        raise FileNotFoundError(f"movies file not found: {path}")
    titles: dict[int, str] = {}
    if path.suffix == ".dat":
        for n, line in enumerate(path.read_text(encoding="latin-1").splitlines(), 1):
            parts = line.split("::")
            if len(parts) >= 2:
                titles[_movie_id(path, n, parts[0])] = parts[1]
        return titles
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        rows = csv.DictReader(f)
        if not {"movieId", "title"} <= set(rows.fieldnames or []):
            raise FormatError(f"{path}: header {','.join(rows.fieldnames or [])[:80]!r} lacks movieId,title; "
                              "expected a MovieLens movies.csv (movieId,title,genres)")
        for row in rows:
            titles[_movie_id(path, rows.line_num, row["movieId"])] = row["title"]
    return titles


def _movie_id(path: Path, line: int, text: str | None) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise FormatError(f"{path}: line {line}: movieId {text!r} is not a whole number") from None


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
