"""The worker's DuckDB database: the accepted event log and each user's rolling sequence.

Tables (one database file per worker; DuckDB allows one writing process per file):

* ``events``: every accepted event once, keyed by ``key`` (64-bit hash of the event id).
  ``owned`` marks the events this database is the record of; with several workers, a worker that
  takes a partition over also copies that partition's older events, which another worker's
  database owns, from Kafka (``owned = false``), so that its users' sequences are whole.
* ``sequences``: a view, per user, of the last ``seq_len`` item ids and event times in
  event-time order (ties broken by Kafka partition and offset: arrival order within the user's
  partition), with the user's total event count.

``sequences`` is a view over the log rather than a second table, so it can never disagree with
the log (a crash between two writes cannot leave it behind) and a micro-batch costs one insert:
rewriting thousands of users' list rows per batch cost more than everything else the worker
does (measured: ~80-180 ms per 5,000-event batch over 20k users). The worker keeps the same
sequences in memory, updated per batch, and reloads a user from the log after a restart.

Writes are one transaction per micro-batch: new events are inserted with
``ON CONFLICT DO NOTHING`` (a redelivered event changes nothing), and a late event lands at its
place in time.

>>> import tempfile, os, numpy as np
>>> store = EventStore(os.path.join(tempfile.mkdtemp(), "w.duckdb"), seq_len=2)
>>> batch = EventBatch.of(key=[1, 2, 3], event_id=["a", "b", "c"], user=[7, 7, 7], item=[10, 11, 12],
...                       event_time=[5, 9, 1], event_type=["view"] * 3)
>>> res = store.append(batch)
>>> res.n_new, store.sequence(7).tolist()   # late event 12 (t=1) sorts first, then falls off
(3, [10, 11])
>>> store.append(batch).n_new                 # redelivery: nothing changes
0
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import duckdb
import numpy as np
import pyarrow as pa

from streamrec.storage.batch import EventBatch

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
    kafka_offset BIGINT NOT NULL,
    owned BOOLEAN NOT NULL DEFAULT true  -- false: a copy of an event another database owns
);
CREATE TABLE IF NOT EXISTS meta (db_id VARCHAR NOT NULL);
-- Offset ranges [lo, hi) of a partition copied from Kafka (owned elsewhere), so as not to copy twice.
CREATE TABLE IF NOT EXISTS recovered (kafka_partition INTEGER NOT NULL, lo BIGINT NOT NULL, hi BIGINT NOT NULL);
"""

# The last {n} events per user, oldest first; n_events counts all of the user's events.
SEQUENCES_VIEW = """
CREATE OR REPLACE VIEW sequences AS
SELECT user_id,
       list(item_id ORDER BY event_time, kafka_partition, kafka_offset) AS items,
       list(event_time ORDER BY event_time, kafka_partition, kafka_offset) AS event_times,
       any_value(n_events) AS n_events
FROM (SELECT user_id, item_id, event_time, kafka_partition, kafka_offset,
             row_number() OVER w AS newest, count(*) OVER (PARTITION BY user_id) AS n_events
      FROM events
      WINDOW w AS (PARTITION BY user_id ORDER BY event_time DESC, kafka_partition DESC, kafka_offset DESC))
WHERE newest <= {n}
GROUP BY user_id
"""


@dataclass
class UserState:
    """In-memory view of one user: last N events (sorted) and every item ever seen.

    Plain lists and a set, not arrays: a micro-batch touches thousands of users with a few
    events each, and small-array NumPy calls would cost more than the work itself.
    """

    times: list[int]  # event times of the last N events, ascending
    order: list[int]  # tie-breaker (Kafka offset)
    items: list[int]  # item ids of the last N events
    seen: set[int]  # item ids of all events
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
        # One DuckDB thread: the worker's other threads (decode, Kafka) need the second core, and a
        # 5,000-row insert gains nothing from parallelism (measured 211k vs 168k events/s). Rarer
        # checkpoints: each one rewrites the key index; the WAL is replayed on open after a crash.
        self.con.execute("SET threads = 1")
        self.con.execute("SET checkpoint_threshold = '256MB'")
        if not read_only:
            self.con.execute(SCHEMA)
            self.con.execute(SEQUENCES_VIEW.format(n=int(seq_len)))
            if self.con.execute("SELECT count(*) FROM meta").fetchone()[0] == 0:
                self.con.execute("INSERT INTO meta VALUES (?)", [uuid.uuid4().hex])
        # This file's identity in the ownership log (streams/ownership.py): it names the database,
        # not the process, so a restarted worker on the same file is the same owner.
        self.db_id: str = self.con.execute("SELECT db_id FROM meta").fetchone()[0]
        self._state: dict[int, UserState] = {}
        self.n_events = self.count()  # events in the log, kept current by append
        # Users with stored events; anyone else is new and needs no read.
        self._known: set[int] = self._stored_users()

    def close(self) -> None:
        self.con.close()

    # -- writes ------------------------------------------------------------------------------
    def append(self, batch: EventBatch, owned: bool = True) -> AppendResult:
        """Store a micro-batch of valid events durably, idempotently, in one transaction.

        ``owned=False``: copies of events another database owns (a partition taken over); they
        count in sequences and seen items, not in :meth:`count`.
        """
        key = np.asarray(batch.key, np.uint64)
        n = len(key)
        if n == 0:
            return AppendResult(0, np.zeros(0, bool), np.zeros(0, np.int64))
        # Duplicates inside the batch: keep the first occurrence. Sort by key for the index.
        _, first = np.unique(key, return_index=True)
        rows = first[np.argsort(key[first], kind="stable")]
        table = pa.table({
            "key": key[rows],
            "event_id": pa.array([batch.event_id[i] for i in rows.tolist()], pa.string()),
            "user_id": np.asarray(batch.user, np.int64)[rows],
            "item_id": np.asarray(batch.item, np.int64)[rows],
            "event_time": np.asarray(batch.event_time, np.int64)[rows],
            "event_type": pa.array([batch.event_type[i] for i in rows.tolist()], pa.string()),
            "rating": np.asarray(batch.rating, np.float32)[rows],
            "kafka_partition": np.asarray(batch.partition, np.int32)[rows],
            "kafka_offset": np.asarray(batch.offset, np.int64)[rows],
        })
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            con.register("batch", table)
            inserted = con.execute(
                "INSERT INTO events SELECT key, event_id, user_id, item_id, event_time, event_type,"
                f" NULLIF(rating, 'NaN'::FLOAT), kafka_partition, kafka_offset, {bool(owned)} FROM batch"
                " ON CONFLICT DO NOTHING RETURNING key"
            ).fetchnumpy()["key"]
            con.unregister("batch")
            new_mask = np.zeros(n, bool)
            new_mask[rows[np.isin(key[rows], inserted)]] = True
            users = self._update_sequences(new_mask, batch.user, batch.item, batch.event_time, batch.offset)
            con.execute("COMMIT")
        except BaseException as e:
            try:
                con.execute("ROLLBACK")
                self._known = self._stored_users()
            except Exception as rollback_error:  # e.g. DuckDB aborted it already (a full disk): the cause stays
                e.add_note(f"(rollback failed too: {rollback_error})")
            self._state.clear()  # the cache may hold uncommitted merges; reload on demand
            raise
        if owned:
            self.n_events += int(new_mask.sum())
        return AppendResult(int(new_mask.sum()), new_mask, users)

    def disown(self, partition: int, lo: int, hi: int | None) -> int:
        """Mark this database's events of ``partition`` at offsets [lo, hi) as owned elsewhere.

        They stay (as copies: the events are real), but no longer count as this database's
        record; returns how many changed.
        """
        hi = 2**63 - 1 if hi is None else hi
        n = len(self.con.execute(
            "UPDATE events SET owned = false WHERE owned AND kafka_partition = ? AND kafka_offset >= ?"
            " AND kafka_offset < ? RETURNING key", [partition, lo, hi]).fetchall())
        self.n_events -= n
        return n

    def is_recovered(self, partition: int, lo: int, hi: int) -> bool:
        """Whether [lo, hi) of ``partition`` was copied from Kafka before."""
        return self.con.execute("SELECT count(*) FROM recovered WHERE kafka_partition = ? AND lo <= ? AND hi >= ?",
                                [partition, lo, hi]).fetchone()[0] > 0

    def mark_recovered(self, partition: int, lo: int, hi: int) -> None:
        self.con.execute("INSERT INTO recovered VALUES (?, ?, ?)", [partition, lo, hi])

    def _update_sequences(self, new_mask, user, item, event_time, offset) -> np.ndarray:
        user = np.asarray(user, np.int64)[new_mask]
        if len(user) == 0:
            return np.zeros(0, np.int64)
        by_user = np.lexsort((np.asarray(offset, np.int64)[new_mask], np.asarray(event_time, np.int64)[new_mask], user))
        u_sorted = user[by_user]
        users, starts = np.unique(u_sorted, return_index=True)
        self._load(users)
        bounds = np.append(starts, len(by_user)).tolist()
        item = np.asarray(item, np.int64)[new_mask][by_user].tolist()
        times = np.asarray(event_time, np.int64)[new_mask][by_user].tolist()
        order = np.asarray(offset, np.int64)[new_mask][by_user].tolist()
        n, state = self.seq_len, self._state
        for j, u in enumerate(users.tolist()):
            a, b = bounds[j], bounds[j + 1]
            st = state.get(u)
            if st is None:
                st = state[u] = UserState([], [], [], set(), 0)
            if st.times and (times[a], order[a]) < (st.times[-1], st.order[-1]):
                # A late event: merge in time order (rare, so a plain sort is fine).
                merged = sorted(zip(st.times + times[a:b], st.order + order[a:b], st.items + item[a:b]))
                st.times, st.order, st.items = (list(c) for c in zip(*merged))
            else:
                st.times += times[a:b]
                st.order += order[a:b]
                st.items += item[a:b]
            if len(st.items) > n:
                del st.times[:-n], st.order[:-n], st.items[:-n]
            st.seen.update(item[a:b])
            st.n_events += b - a
        self._known.update(users.tolist())
        return users

    def _stored_users(self) -> set[int]:
        return set(self.con.execute("SELECT DISTINCT user_id FROM events").fetchnumpy()["user_id"].tolist())

    def _load(self, users: np.ndarray) -> None:
        """Fill the cache from the log for known users that are not in it (after a restart)."""
        missing = [u for u in users.tolist() if u not in self._state and u in self._known]
        if not missing:
            return
        self.con.register("missing", pa.table({"user_id": np.asarray(missing, np.int64)}))
        rows = self.con.execute(
            "SELECT user_id, list(item_id ORDER BY event_time, kafka_partition, kafka_offset),"
            " list(event_time ORDER BY event_time, kafka_partition, kafka_offset),"
            " list(kafka_offset ORDER BY event_time, kafka_partition, kafka_offset)"
            " FROM events JOIN missing USING (user_id) GROUP BY user_id"
        ).fetchall()
        self.con.unregister("missing")
        n = self.seq_len
        for u, items, times, offsets in rows:
            self._state[u] = UserState(times[-n:], offsets[-n:], items[-n:], set(items), len(items))

    # -- reads -------------------------------------------------------------------------------
    def sequence(self, user: int) -> np.ndarray:
        """The user's last ``seq_len`` item ids, oldest first (empty for an unknown user)."""
        return self.sequences([user])[0]

    def sequences(self, users: Sequence[int]) -> list[np.ndarray]:
        self._load(np.asarray(users, np.int64))
        state, empty = self._state, np.zeros(0, np.int64)
        return [np.array(state[u].items, np.int64) if u in state else empty for u in users]

    def seen(self, users: Sequence[int]) -> list[np.ndarray]:
        """Every item each user has interacted with (unique, in no particular order)."""
        self._load(np.asarray(users, np.int64))
        state, empty = self._state, np.zeros(0, np.int64)
        return [np.fromiter(state[u].seen, np.int64, len(state[u].seen)) if u in state else empty for u in users]

    def count(self) -> int:
        """Events this database owns (copies of other databases' events excluded)."""
        return self.con.execute("SELECT count(*) FROM events WHERE owned").fetchone()[0]

    def recent_items(self, n: int) -> np.ndarray:
        """Item ids of the newest ``n`` stored events in event-time order (to warm popularity)."""
        rows = self.con.execute(
            "SELECT item_id FROM (SELECT item_id, event_time, kafka_partition, kafka_offset FROM events"
            " ORDER BY event_time DESC, kafka_partition DESC, kafka_offset DESC LIMIT ?)"
            " ORDER BY event_time, kafka_partition, kafka_offset", [n]
        ).fetchnumpy()
        return rows["item_id"]

    def recent_events(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(user ids, item ids) of the newest ``n`` stored events in event-time order (to warm
        the item-to-item baselines)."""
        rows = self.con.execute(
            "SELECT user_id, item_id FROM (SELECT user_id, item_id, event_time, kafka_partition, kafka_offset"
            " FROM events ORDER BY event_time DESC, kafka_partition DESC, kafka_offset DESC LIMIT ?)"
            " ORDER BY event_time, kafka_partition, kafka_offset", [n]
        ).fetchnumpy()
        return rows["user_id"], rows["item_id"]


def read_ratings(db_path: str | Path):
    """The event log of a (stopped) worker's database as :class:`storage.movielens.Ratings`,
    ordered by event time then arrival; timestamps in seconds."""
    from streamrec.storage.movielens import Ratings

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
