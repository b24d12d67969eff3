"""The worker's DuckDB database: the accepted event log and each user's rolling sequence.

Tables (one database file per worker; DuckDB allows one writing process per file):

* ``events``: every accepted event once, keyed by ``key`` (64-bit hash of the event id).
* ``sequences``: per user, the last ``seq_len`` item ids and event times in event-time order
  (ties broken by Kafka offset, i.e. arrival order within the user's partition).

Writes are one transaction per micro-batch: new events are inserted with
``ON CONFLICT DO NOTHING`` (a redelivered event changes nothing), and only users with genuinely
new events get their sequence rewritten. A late event lands at its place in time.
Sequences are also cached in memory, so a batch costs no reads for users the worker knows.

>>> import tempfile, os, numpy as np
>>> store = EventStore(os.path.join(tempfile.mkdtemp(), "w.duckdb"), seq_len=2)
>>> cols = dict(key=np.array([1, 2, 3], np.uint64), event_id=["a", "b", "c"], user=np.array([7, 7, 7]),
...             item=np.array([10, 11, 12]), event_time=np.array([5, 9, 1]), event_type=["view"] * 3,
...             rating=np.full(3, np.nan, np.float32), partition=np.zeros(3, np.int32), offset=np.arange(3))
>>> res = store.append(**cols)
>>> res.n_new, store.sequence(7).tolist()   # late event 12 (t=1) sorts first, then falls off
(3, [10, 11])
>>> store.append(**cols).n_new                # redelivery: nothing changes
0
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import duckdb
import numpy as np
import pyarrow as pa

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    key UBIGINT PRIMARY KEY,
    event_id VARCHAR NOT NULL,
    user_id BIGINT NOT NULL,
    item_id BIGINT NOT NULL,
    event_time BIGINT NOT NULL,       -- ms since epoch
    event_type VARCHAR NOT NULL,
    rating FLOAT,
    kafka_partition INTEGER NOT NULL,
    kafka_offset BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS sequences (
    user_id BIGINT PRIMARY KEY,
    items BIGINT[] NOT NULL,          -- last seq_len item ids, oldest first
    event_times BIGINT[] NOT NULL,
    n_events BIGINT NOT NULL          -- all of the user's events, not only the last seq_len
);
"""


@dataclass
class UserState:
    """In-memory view of one user: last N events (sorted) and every item ever seen."""

    times: np.ndarray  # int64 event times of the last N events
    order: np.ndarray  # int64 tie-breaker (Kafka offset)
    items: np.ndarray  # int64 item ids of the last N events
    seen: np.ndarray  # int64 sorted unique item ids of all events
    n_events: int


@dataclass
class AppendResult:
    n_new: int  # events stored by this call
    new_mask: np.ndarray  # bool per input row: stored now (False: duplicate or already stored)
    users: np.ndarray  # int64 users with new events, sorted


class EventStore:
    def __init__(self, path: str | Path, seq_len: int = 200, read_only: bool = False):
        self.path, self.seq_len = str(path), seq_len
        self.con = duckdb.connect(self.path, read_only=read_only)
        if not read_only:
            self.con.execute(SCHEMA)
        self._state: dict[int, UserState] = {}
        self.n_events = self.count()  # events in the log, kept current by append
        # Users with stored events; anyone else is new and needs no read.
        self._known: set[int] = set(self.con.execute("SELECT user_id FROM sequences").fetchnumpy()["user_id"].tolist())

    def close(self) -> None:
        self.con.close()

    # -- writes ------------------------------------------------------------------------------
    def append(self, key, event_id, user, item, event_time, event_type, rating, partition, offset) -> AppendResult:
        """Store a micro-batch of valid events durably, idempotently, in one transaction."""
        key = np.asarray(key, np.uint64)
        n = len(key)
        if n == 0:
            return AppendResult(0, np.zeros(0, bool), np.zeros(0, np.int64))
        # Duplicates inside the batch: keep the first occurrence. Sort by key for the index.
        _, first = np.unique(key, return_index=True)
        rows = first[np.argsort(key[first], kind="stable")]
        table = pa.table({
            "key": key[rows],
            "event_id": pa.array([event_id[i] for i in rows.tolist()], pa.string()),
            "user_id": np.asarray(user, np.int64)[rows],
            "item_id": np.asarray(item, np.int64)[rows],
            "event_time": np.asarray(event_time, np.int64)[rows],
            "event_type": pa.array([event_type[i] for i in rows.tolist()], pa.string()),
            "rating": np.asarray(rating, np.float32)[rows],
            "kafka_partition": np.asarray(partition, np.int32)[rows],
            "kafka_offset": np.asarray(offset, np.int64)[rows],
        })
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            con.register("batch", table)
            inserted = con.execute(
                "INSERT INTO events SELECT key, event_id, user_id, item_id, event_time, event_type,"
                " NULLIF(rating, 'NaN'::FLOAT), kafka_partition, kafka_offset FROM batch"
                " ON CONFLICT DO NOTHING RETURNING key"
            ).fetchnumpy()["key"]
            con.unregister("batch")
            new_mask = np.zeros(n, bool)
            new_mask[rows[np.isin(key[rows], inserted)]] = True
            users = self._update_sequences(new_mask, user, item, event_time, offset)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            self._state.clear()  # the cache may hold uncommitted merges; reload on demand
            self._known = set(con.execute("SELECT user_id FROM sequences").fetchnumpy()["user_id"].tolist())
            raise
        self.n_events += int(new_mask.sum())
        return AppendResult(int(new_mask.sum()), new_mask, users)

    def _update_sequences(self, new_mask, user, item, event_time, offset) -> np.ndarray:
        user = np.asarray(user, np.int64)[new_mask]
        if len(user) == 0:
            return np.zeros(0, np.int64)
        item = np.asarray(item, np.int64)[new_mask]
        times = np.asarray(event_time, np.int64)[new_mask]
        order = np.asarray(offset, np.int64)[new_mask]
        by_user = np.argsort(user, kind="stable")
        users, starts = np.unique(user[by_user], return_index=True)
        self._load(users)
        bounds = np.append(starts, len(by_user))
        n_users = len(users)
        lengths = np.empty(n_users, np.int64)
        out_items, out_times, n_events = [], [], np.empty(n_users, np.int64)
        for j, u in enumerate(users.tolist()):
            idx = by_user[bounds[j] : bounds[j + 1]]
            st = self._state.get(u)
            if st is None:
                t, o, it, seen, n_ev = times[idx], order[idx], item[idx], np.zeros(0, np.int64), 0
            else:
                t = np.concatenate([st.times, times[idx]])
                o = np.concatenate([st.order, order[idx]])
                it = np.concatenate([st.items, item[idx]])
                seen, n_ev = st.seen, st.n_events
            srt = np.lexsort((o, t))[-self.seq_len :]
            st = UserState(t[srt], o[srt], it[srt], np.union1d(seen, item[idx]), n_ev + len(idx))
            self._state[u] = st
            lengths[j] = len(st.items)
            out_items.append(st.items)
            out_times.append(st.times)
            n_events[j] = st.n_events
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        table = pa.table({
            "user_id": users,
            "items": pa.ListArray.from_arrays(offsets, np.concatenate(out_items)),
            "event_times": pa.ListArray.from_arrays(offsets, np.concatenate(out_times)),
            "n_events": n_events,
        })
        self.con.register("seqs", table)
        self.con.execute("INSERT OR REPLACE INTO sequences SELECT * FROM seqs")
        self.con.unregister("seqs")
        self._known.update(users.tolist())
        return users

    def _load(self, users: np.ndarray) -> None:
        """Fill the cache for known users that are not in it (after a restart)."""
        missing = [u for u in users.tolist() if u not in self._state and u in self._known]
        if not missing:
            return
        self.con.register("missing", pa.table({"user_id": np.asarray(missing, np.int64)}))
        seq = self.con.execute(
            "SELECT s.user_id, s.items, s.event_times, s.n_events FROM sequences s JOIN missing USING (user_id)"
        ).fetchall()
        seen = dict(self.con.execute(
            "SELECT e.user_id, list(DISTINCT e.item_id) FROM events e JOIN missing USING (user_id) GROUP BY e.user_id"
        ).fetchall())
        offsets = dict(self.con.execute(
            "SELECT e.user_id, list(e.kafka_offset ORDER BY e.event_time, e.kafka_offset) FROM events e"
            " JOIN missing USING (user_id) GROUP BY e.user_id"
        ).fetchall())
        self.con.unregister("missing")
        for u, items, times, n_ev in seq:
            # The tie-breakers of the last N events are the last N offsets in time order.
            order = np.asarray(offsets[u][-len(items) :], np.int64)
            self._state[u] = UserState(
                np.asarray(times, np.int64), order, np.asarray(items, np.int64),
                np.unique(np.asarray(seen[u], np.int64)), int(n_ev),
            )

    # -- reads -------------------------------------------------------------------------------
    def sequence(self, user: int) -> np.ndarray:
        """The user's last ``seq_len`` item ids, oldest first (empty for an unknown user)."""
        return self.sequences([user])[0]

    def sequences(self, users: Sequence[int]) -> list[np.ndarray]:
        self._load(np.asarray(users, np.int64))
        empty = np.zeros(0, np.int64)
        return [self._state[u].items if u in self._state else empty for u in users]

    def seen(self, users: Sequence[int]) -> list[np.ndarray]:
        """Every item each user has interacted with (sorted unique)."""
        self._load(np.asarray(users, np.int64))
        empty = np.zeros(0, np.int64)
        return [self._state[u].seen if u in self._state else empty for u in users]

    def count(self) -> int:
        return self.con.execute("SELECT count(*) FROM events").fetchone()[0]

    def recent_items(self, n: int) -> np.ndarray:
        """Item ids of the newest ``n`` stored events in event-time order (to warm popularity)."""
        rows = self.con.execute(
            "SELECT item_id FROM (SELECT item_id, event_time, kafka_partition, kafka_offset FROM events"
            " ORDER BY event_time DESC, kafka_partition DESC, kafka_offset DESC LIMIT ?)"
            " ORDER BY event_time, kafka_partition, kafka_offset", [n]
        ).fetchnumpy()
        return rows["item_id"]


def read_ratings(db_path: str | Path):
    """The event log of a (stopped) worker's database as :class:`storage.movielens.Ratings`,
    ordered by event time then arrival; timestamps in seconds."""
    from storage.movielens import Ratings

    con = duckdb.connect(str(db_path), read_only=True)
    try:
        cols = con.execute(
            "SELECT user_id, item_id, coalesce(rating, 0)::FLOAT AS rating, event_time // 1000 AS ts"
            " FROM events ORDER BY event_time, kafka_partition, kafka_offset"
        ).fetchnumpy()
    finally:
        con.close()
    return Ratings(
        np.asarray(cols["user_id"], np.int64), np.asarray(cols["item_id"], np.int64),
        np.asarray(cols["rating"], np.float32), np.asarray(cols["ts"], np.int64),
    )
