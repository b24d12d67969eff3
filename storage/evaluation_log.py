"""The ``evaluation`` table: periodic snapshots of the online evaluator, for plotting a run.

Each snapshot is the flat rows of ``OnlineEvaluator.snapshot()`` stamped with the wall time and
the evaluator's watermark (event time). Rows are written in one ``INSERT ... SELECT`` from an
Arrow table, never one statement per row.

>>> import duckdb
>>> from streamrec.model.online import SnapshotRow
>>> con = duckdb.connect()
>>> rows = [SnapshotRow("popularity", "w", 10, "all", "NDCG", 0.25, 40.0)]
>>> write_snapshot(con, rows, event_time=1_000, time_scale=1)
1
>>> got = read_evaluation(con, metric="NDCG")
>>> got["model"].tolist(), got["value"].tolist(), got["event_time"].tolist()
(['popularity'], [0.25], [1000])
"""

from __future__ import annotations

import datetime as dt
from typing import Iterable, Sequence

import duckdb
import numpy as np
import pyarrow as pa

SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluation (
    wall_time TIMESTAMP NOT NULL,     -- UTC, when the snapshot was taken
    event_time BIGINT NOT NULL,       -- the evaluator's watermark, in stream time units
    time_scale INTEGER NOT NULL,      -- stream time units per second (1000: ms since epoch)
    model VARCHAR NOT NULL,           -- recommender name, 'all' for every model
    version VARCHAR NOT NULL,         -- model version, 'all' for every version
    k INTEGER NOT NULL,               -- cut-off; 0 for counts and coverage
    "window" VARCHAR NOT NULL,        -- 'all', 'last_<N>' events or 'last_<T>s' of event time
    metric VARCHAR NOT NULL,          -- HitRate, NDCG, MRR, Recall, coverage, events_warm, ...
    value DOUBLE NOT NULL,
    n DOUBLE NOT NULL                 -- observations behind the value
)
"""

COLUMNS = ("wall_time", "event_time", "time_scale", "model", "version", "k", "window", "metric", "value", "n")


def create_table(con: duckdb.DuckDBPyConnection) -> None:
    """Create ``evaluation`` if it does not exist."""
    con.execute(SCHEMA)


def write_snapshot(
    con: duckdb.DuckDBPyConnection,
    rows: Sequence[tuple] | Iterable[tuple],
    event_time: int,
    time_scale: int = 1000,
    wall_time: dt.datetime | None = None,
) -> int:
    """Append snapshot rows ``(model, version, k, window, metric, value, n)``; returns how many.

    ``event_time`` is the evaluator's watermark and ``time_scale`` its units per second.
    """
    rows = list(rows)
    create_table(con)
    if not rows:
        return 0
    model, version, k, window, metric, value, n = zip(*rows)
    wall = (wall_time or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc).replace(tzinfo=None)
    m = len(rows)
    table = pa.table({
        "wall_time": pa.array([wall] * m, pa.timestamp("us")),
        "event_time": np.full(m, int(event_time), np.int64),
        "time_scale": np.full(m, int(time_scale), np.int32),
        "model": pa.array(model, pa.string()),
        "version": pa.array(version, pa.string()),
        "k": np.asarray(k, np.int32),
        "window": pa.array(window, pa.string()),
        "metric": pa.array(metric, pa.string()),
        "value": np.asarray(value, np.float64),
        "n": np.asarray(n, np.float64),
    })
    con.register("evaluation_batch", table)
    try:
        con.execute('INSERT INTO evaluation SELECT * FROM evaluation_batch')
    finally:
        con.unregister("evaluation_batch")
    return m


def read_evaluation(
    con: duckdb.DuckDBPyConnection,
    metric: str | None = None,
    k: int | None = None,
    window: str | None = None,
) -> dict[str, np.ndarray]:
    """Rows of ``evaluation`` as numpy columns ordered by event time then wall time, optionally
    only one metric / cut-off / window."""
    where, params = [], []
    for col, val in (("metric", metric), ("k", k), ('"window"', window)):
        if val is not None:
            where.append(f"{col} = ?")
            params.append(val)
    sql = "SELECT " + ", ".join(f'"{c}"' for c in COLUMNS) + " FROM evaluation"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY event_time, wall_time, model, version"
    return {c: np.asarray(v) for c, v in con.execute(sql, params).fetchnumpy().items()}


def export_evaluation(con: duckdb.DuckDBPyConnection, export_dir) -> int:
    """Write the whole ``evaluation`` table to ``export_dir/evaluation.parquet`` (a temporary
    file, then renamed: readers see the old or the new snapshot, never half of one), so
    ``streamrec report --export-dir`` can draw a run while its worker holds the database.
    Returns the rows written.

    >>> import duckdb, tempfile, os
    >>> con = duckdb.connect()
    >>> create_table(con)
    >>> export_evaluation(con, tempfile.mkdtemp())
    0
    """
    import os
    from pathlib import Path

    create_table(con)
    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    tmp, final = export_dir / ".evaluation.parquet.tmp", export_dir / "evaluation.parquet"
    con.execute(f"COPY evaluation TO '{tmp}' (FORMAT parquet)")
    os.replace(tmp, final)
    return int(con.execute("SELECT count(*) FROM evaluation").fetchone()[0])
