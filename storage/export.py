"""Consistent snapshots of a worker's event log as Parquet segments, for the retraining job.

DuckDB allows one writing process per database file, and a worker holds its file for as long
as it runs, so the retraining job never opens it. Instead the worker appends the events stored
since its last export to a new segment ``events-<n>.parquet`` in ``export_dir`` (written to a
temporary name, then renamed: a reader sees whole segments or nothing). Segments are immutable;
the job reads every segment of every worker's directory. Why this rather than a second Kafka
consumer group for the job: the exported events are exactly the accepted, de-duplicated log
(the DLQ and redeliveries are already filtered out), and the job needs no broker access.

>>> import tempfile, os, numpy as np
>>> from streamrec.storage.batch import EventBatch
>>> from streamrec.storage.store import EventStore
>>> d = tempfile.mkdtemp()
>>> store = EventStore(os.path.join(d, "w.duckdb"))
>>> _ = store.append(EventBatch.of(key=[1, 2], event_id=["a", "b"], user=[7, 7], item=[10, 11],
...                                event_time=[2000, 1000], event_type=["view", "view"]))
>>> export_new_events(store.con, os.path.join(d, "export"))
2
>>> export_new_events(store.con, os.path.join(d, "export"))  # nothing new
0
>>> read_events(os.path.join(d, "export")).item.tolist()      # event-time order
[11, 10]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np

from streamrec.storage.batch import EventBatch
from streamrec.storage.movielens import Ratings

SCHEMA = """
CREATE TABLE IF NOT EXISTS exports (
    segment INTEGER PRIMARY KEY,
    max_rowid BIGINT NOT NULL,      -- events.rowid up to which this segment holds the log
    n_events BIGINT NOT NULL,
    path VARCHAR NOT NULL,
    exported_at TIMESTAMP NOT NULL DEFAULT now()
)
"""
COLUMNS = "key, event_id, user_id, item_id, event_time, event_type, rating, kafka_partition, kafka_offset"


def export_new_events(con: duckdb.DuckDBPyConnection, export_dir: str | Path) -> int:
    """Write events stored since the last export to the next segment; returns how many.

    ``events`` is append-only, so its rowids only grow: a segment holds the rowids above the
    previous segment's maximum.
    """
    con.execute(SCHEMA)
    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    last_segment, last_rowid = con.execute(
        "SELECT coalesce(max(segment), 0), coalesce(max(max_rowid), -1) FROM exports").fetchone()
    # Owned events only: each worker exports the events its database is the record of.
    top, n = con.execute("SELECT coalesce(max(rowid), -1), count(*) FILTER (WHERE owned) FROM events WHERE rowid > ?",
                         [last_rowid]).fetchone()
    if n == 0:
        return 0
    segment = last_segment + 1
    final = export_dir / f"events-{segment:06d}.parquet"
    tmp = export_dir / f".events-{segment:06d}.parquet.tmp"
    con.execute(
        f"COPY (SELECT {COLUMNS} FROM events WHERE owned AND rowid > {int(last_rowid)} AND rowid <= {int(top)}"
        " ORDER BY rowid)"
        f" TO '{tmp}' (FORMAT parquet)"
    )
    os.replace(tmp, final)  # atomic: readers never see a partial segment
    con.execute("INSERT INTO exports (segment, max_rowid, n_events, path) VALUES (?, ?, ?, ?)",
                [segment, int(top), int(n), str(final)])
    return int(n)


def read_events(*export_dirs: str | Path, since_ms: int | None = None) -> Ratings:
    """Every exported event of the given directories, in event-time order (seconds).

    Events exported by two workers (after a partition moved) appear once: rows are
    de-duplicated by their event key.
    """
    files = [str(p) for d in export_dirs for p in sorted(Path(d).glob("events-*.parquet"))]
    if not files:
        empty = np.zeros(0, np.int64)
        return Ratings(empty, empty, np.zeros(0, np.float32), empty)
    where = f"WHERE event_time >= {int(since_ms)}" if since_ms is not None else ""
    con = duckdb.connect()
    try:
        cols = con.execute(
            f"SELECT user_id, item_id, coalesce(rating, 0)::FLOAT AS rating, event_time // 1000 AS ts"
            f" FROM (SELECT DISTINCT ON (key) * FROM read_parquet(?)) {where}"
            " ORDER BY event_time, kafka_partition, kafka_offset", [files]
        ).fetchnumpy()
    finally:
        con.close()
    return Ratings(np.asarray(cols["user_id"], np.int64), np.asarray(cols["item_id"], np.int64),
                   np.asarray(cols["rating"], np.float32), np.asarray(cols["ts"], np.int64))


def read_partition_segments(export_dir: str | Path, partition: int, lo: int, hi: int,
                            chunk: int = 500_000) -> Iterator[tuple[EventBatch, int]]:
    """The exported events of Kafka ``partition`` at offsets [lo, hi), in offset order, as batches
    of at most ``chunk`` rows, each with the highest offset it reaches.

    A partition's new owner reads its previous owner's segments this way instead of replaying the
    partition from Kafka (columns, no JSON, no fetches); only offsets past the last one exported
    still come from Kafka. Nothing (no batch) when the directory holds no segment.
    """
    files = sorted(str(p) for p in Path(export_dir).glob("events-*.parquet"))
    if not files:
        return
    con = duckdb.connect()
    try:
        con.execute("SET threads = 1")
        reader = con.sql(
            f"SELECT {COLUMNS} FROM read_parquet(?) WHERE kafka_partition = ? AND kafka_offset >= ?"
            " AND kafka_offset < ? ORDER BY kafka_offset",
            params=[files, int(partition), int(lo), int(hi)]).to_arrow_reader(chunk)
        for t in reader:
            if t.num_rows == 0:
                continue
            c = {name: t.column(name) for name in t.schema.names}
            offsets = c["kafka_offset"].to_numpy()
            rating = c["rating"].fill_null(float("nan")).to_numpy(zero_copy_only=False)
            yield EventBatch.of(
                key=c["key"].to_numpy(), event_id=c["event_id"].to_pylist(), user=c["user_id"].to_numpy(),
                item=c["item_id"].to_numpy(), event_time=c["event_time"].to_numpy(),
                event_type=c["event_type"].to_pylist(), rating=rating, partition=c["kafka_partition"].to_numpy(),
                offset=offsets), int(offsets[-1])
    finally:
        con.close()
