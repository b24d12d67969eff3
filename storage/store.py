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
does (measured: ~80-180 ms per 5,000-event batch over 20k users).

Idempotence without a DuckDB index: ``key`` has no ``PRIMARY KEY``. Its ART index, updated at
random places for random 64-bit keys, made each batch slower as the log grew (30 -> 190 ms per
5,000 events at 1M -> 8M stored; docs/benchmarks.md#store). The store keeps the stored keys in
memory instead (``storage/key_index.py``: sorted NumPy runs, 16 bytes an event, with a hash of
each event's payload so that a conflicting redelivery is found without a query), loaded from the
log on open and updated only after ``COMMIT``, so a rolled-back batch leaves it right. A batch is
one transaction of plain appends of the rows whose key is new; a late event lands at its place
in time. A database written with the old ``PRIMARY KEY`` schema opens as it is.

In memory, bounded by the users' state rather than the log: per user the last ``seq_len``
events as one (3, n) int64 array (times, offsets, items), and the (user, item) pairs seen as
sorted runs of 8-byte codes; a user's sequence is reloaded from the log after a restart.

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

import contextlib
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import duckdb
import numpy as np
import pyarrow as pa

from streamrec.storage.batch import EventBatch
from streamrec.storage.codes import Codes
from streamrec.storage.key_index import SortedRuns
from streamrec.storage.late_events import splice_late
from streamrec.storage.seen_items import SeenItems
from streamrec.storage.sequence_pool import SequencePool, split

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    key UBIGINT NOT NULL,             -- unique: the store checks it in memory (see above)
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

# A hash of what an event says: the same SQL expression over the same column types, for the
# stored rows (on open) and for new batches, so equal payloads always hash alike in one process.
PAYLOAD_HASH = "hash(event_id, user_id, item_id, event_time, event_type, rating)"
COLUMNS = "key, event_id, user_id, item_id, event_time, event_type, rating, kafka_partition, kafka_offset"
# DuckDB's memory while the indexes load from the log, and afterwards (appends: ~10% slower
# inserts than with 256MB, measured at 19M events stored).
LOAD_MEMORY, APPEND_MEMORY = "256MB", "128MB"


@dataclass
class AppendResult:
    n_new: int  # events stored by this call
    new_mask: np.ndarray  # bool per input row: stored now (False: duplicate or already stored)
    users: np.ndarray  # int64 users with new events, sorted


class EventStore:
    def __init__(self, path: str | Path, seq_len: int = 200, read_only: bool = False, max_users: int = 1_000_000):
        """``max_users``: users whose sequences stay in memory (the least recently active are
        evicted, and reloaded from the log when they come back)."""
        self.path, self.seq_len, self.max_users = str(path), seq_len, max_users
        self.con = duckdb.connect(self.path, read_only=read_only)
        # One DuckDB thread: the worker's other threads (decode, Kafka) need the second core, and a
        # 5,000-row insert gains nothing from parallelism (measured 211k vs 168k events/s).
        self.con.execute("SET threads = 1")
        # A checkpoint stalls the insert that triggers it (also when run from another thread), for a
        # time proportional to the WAL: without the key index, 8M events inserted stalled at most
        # 0.3 s (16MB), 0.5 s (64MB) or 1.3 s (256MB), at 4.6, 3.5 and 2.2 ms a batch on average
        # (docs/benchmarks.md#store). 64MB: stalls under the freshness budget, little throughput lost.
        self.con.execute("SET checkpoint_threshold = '64MB'")
        # DuckDB caches table blocks up to 80% of RAM by default, so its share of the worker's memory
        # grew with the log (~25 MB a million events); the log is on disk and is read back rarely.
        # Loading the indexes sorts the whole log (256MB, then spilling); afterwards appends need
        # little, and DuckDB keeps freed blocks up to its limit (163 MB of RSS at 20M events).
        self.con.execute(f"SET memory_limit = '{LOAD_MEMORY}'")
        self.con.execute("SET enable_progress_bar = false")  # (long loads on open drew bars in the worker's log)
        if not read_only:
            self.con.execute(SCHEMA)
            self.con.execute(SEQUENCES_VIEW.format(n=int(seq_len)))
            if self.con.execute("SELECT count(*) FROM meta").fetchone()[0] == 0:
                self.con.execute("INSERT INTO meta VALUES (?)", [uuid.uuid4().hex])
        # This file's identity in the ownership log (streams/ownership.py): it names the database,
        # not the process, so a restarted worker on the same file is the same owner.
        self.db_id: str = self.con.execute("SELECT db_id FROM meta").fetchone()[0]
        self._pool: SequencePool | None = None
        self._appender = self.con.cursor()  # _insert's own connection: no other call's unread result blocks it
        self.sequences_read, self._evicted_before = 0, 0  # (totals over this object's life, for the metrics)
        self._load_indexes()
        self.con.execute(f"SET memory_limit = '{APPEND_MEMORY}'")

    def _load_indexes(self) -> None:
        """The in-memory indexes from the log: stored keys, users, items, seen pairs."""
        con = self.con
        # DuckDB sorts and de-duplicates (NumPy took minutes for 8M rows on a busy machine).
        keys = con.execute(f"SELECT key, {PAYLOAD_HASH} AS h FROM events ORDER BY key").fetchnumpy()
        self._keys = SortedRuns(np.asarray(keys["key"], np.uint64), np.asarray(keys["h"], np.uint64), is_sorted=True)
        del keys
        # Users with stored events, and their items, coded in id order so that the pairs come sorted.
        self._users, self._items = Codes(), Codes()
        self._users.encode(con.execute("SELECT DISTINCT user_id FROM events ORDER BY 1").fetchnumpy()["user_id"])
        self._items.encode(con.execute("SELECT DISTINCT item_id FROM events ORDER BY 1").fetchnumpy()["item_id"])
        pairs = con.execute("SELECT user_id, item_id FROM events ORDER BY 1, 2").fetchnumpy()  # (sorts spill)
        pairs = self._pairs(pairs["user_id"], pairs["item_id"])
        first = np.ones(len(pairs), bool)
        first[1:] = pairs[1:] != pairs[:-1]
        self._seen = SortedRuns(pairs[first], is_sorted=True)
        del pairs
        if self._pool is not None:  # (rebuilt after a failure: its evictions still count)
            self._evicted_before += self._pool.evicted
        self._pool = SequencePool(self.seq_len, self.max_users)  # the last seq_len item codes of loaded users
        self.n_events = self.count()  # events in the log, kept current by append

    def _pairs(self, users, items) -> np.ndarray:
        """(user, item) as one uint64: user code in the high half, item code in the low half."""
        u = self._users.encode(np.asarray(users, np.int64)).astype(np.uint64)
        i = self._items.encode(np.asarray(items, np.int64)).astype(np.uint64)
        return (u << np.uint64(32)) | i

    def close(self) -> None:
        self._appender.close()
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
        # New rows: the first occurrence in the batch of each key not stored yet, in arrival order.
        _, first = np.unique(key, return_index=True)
        stored, _ = self._keys.lookup(key[first])
        rows = np.sort(first[~stored])
        new_mask = np.zeros(n, bool)
        new_mask[rows] = True
        if len(rows) == 0:
            return AppendResult(0, new_mask, np.zeros(0, np.int64))
        self._pool.tick()  # (the batch's users stay in memory through this batch)
        self._load(np.unique(np.asarray(batch.user, np.int64)[rows]))  # before the insert: without its rows
        new_keys, hashes = self._insert(batch, rows, owned)
        try:  # after COMMIT: the memory follows the log
            self._keys.add(new_keys, hashes)
            pairs = np.unique(self._pairs(batch.user[rows], batch.item[rows]))
            self._seen.add(pairs[~self._seen.lookup(pairs)[0]])
            users = self._update_sequences(rows, batch)
        except BaseException:
            self._load_indexes()  # whatever was half done: rebuild from the log
            raise
        if owned:
            self.n_events += len(rows)
        return AppendResult(len(rows), new_mask, users)

    def _insert(self, batch: EventBatch, rows: np.ndarray, owned: bool) -> tuple[np.ndarray, np.ndarray]:
        """Append ``rows`` of the batch in one transaction; (keys, payload hashes) as inserted."""
        table = pa.table({
            "key": np.asarray(batch.key, np.uint64)[rows],
            **_payload(batch, rows),
            "kafka_partition": np.asarray(batch.partition, np.int32)[rows],
            "kafka_offset": np.asarray(batch.offset, np.int64)[rows],
        })
        con = self._appender
        # One statement in autocommit: its own transaction, committed (or rolled back, on any
        # error) before the call returns. Every DuckDB call lets the GIL go and waits to take it
        # back from the worker's other threads; BEGIN / INSERT / COMMIT as three calls made the
        # worker ~13% slower over 6M ML-20M-shaped events (docs/benchmarks.md#store, "Seventh pass").
        con.register("batch", table)
        try:
            out = con.execute(f"INSERT INTO events SELECT {COLUMNS}, {bool(owned)} FROM batch"
                              f" RETURNING key, {PAYLOAD_HASH} AS h").fetchnumpy()
        except BaseException:
            with contextlib.suppress(Exception):  # an error while reading its rows leaves it open: end it
                con.abort()  # (rolled back)
            raise
        finally:
            con.unregister("batch")
        return np.asarray(out["key"], np.uint64), np.asarray(out["h"], np.uint64)

    def conflicting_rows(self, batch: EventBatch, new_mask: np.ndarray) -> np.ndarray:
        """Rows of ``batch`` not stored now whose event id is stored with another payload (by
        payload hash; no query unless a row is not new)."""
        dup = np.flatnonzero(~np.asarray(new_mask, bool))
        if len(dup) == 0:
            return dup
        stored, theirs = self._keys.lookup(np.asarray(batch.key, np.uint64)[dup])
        table = pa.table(_payload(batch, dup))
        cur = self.con.cursor()
        try:
            cur.register("dups", table)
            mine = np.asarray(cur.execute(f"SELECT {PAYLOAD_HASH} AS h FROM dups").fetchnumpy()["h"], np.uint64)
        finally:
            cur.close()
        return dup[stored & (mine != theirs)]

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

    def _update_sequences(self, rows: np.ndarray, batch: EventBatch) -> np.ndarray:
        """Each user's last ``seq_len`` items in memory, with the batch's ``rows`` merged in (one compiled
        pass, storage/sequence_pool.py; a user with a late event: storage/late_events.py)."""
        user = np.asarray(batch.user, np.int64)[rows]
        time = np.asarray(batch.event_time, np.int64)[rows]
        offset = np.asarray(batch.offset, np.int64)[rows]
        by_user = np.lexsort((offset, time, user))
        time, offset = time[by_user], offset[by_user]
        codes = self._users.lookup(user[by_user])  # (users and items coded by _pairs before this)
        items = self._items.lookup(np.asarray(batch.item, np.int64)[rows][by_user])
        late = self._pool.append(codes, items, time, offset)
        if len(late):  # an event older than its user's newest: placed by the log's recent rows
            whole = splice_late(self.con, self._pool, late, codes, time, self._users.ids, self._items.lookup)
            self.sequences_read += len(late) - len(whole)
            if len(whole):
                self._load(self._users.ids[whole], again=True)
        return np.unique(user)

    def _load(self, users: np.ndarray, again: bool = False) -> None:
        """Load from the log the sequences of stored users that are not in memory (after a restart,
        or evicted), or (``again``) of these users whatever memory holds."""
        users = np.asarray(users, np.int64)
        codes = self._users.lookup(users)
        codes = codes[codes >= 0]
        # (vectorised: a Python membership test per user cost ~1 ms a batch at 19M events stored)
        missing_codes = codes if again else codes[~self._pool.resident(codes)]
        if len(missing_codes) == 0:
            return
        missing = np.unique(self._users.ids[missing_codes])
        cur = self.con.cursor()  # the appending connection may be inside a transaction
        try:
            cur.register("missing", pa.table({"user_id": missing}))
            rows = cur.execute(
                "SELECT user_id, event_time, kafka_offset, item_id FROM events JOIN missing USING (user_id)"
                " QUALIFY row_number() OVER (PARTITION BY user_id"
                "   ORDER BY event_time DESC, kafka_partition DESC, kafka_offset DESC) <= ?"
                " ORDER BY user_id, event_time, kafka_partition, kafka_offset", [self.seq_len]).fetchnumpy()
        finally:
            cur.close()
        self._pool.load(self._users.lookup(np.asarray(rows["user_id"], np.int64)),
                        self._items.lookup(np.asarray(rows["item_id"], np.int64)),
                        rows["event_time"], rows["kafka_offset"])
        self.sequences_read += len(missing)  # (once read: a failed read is retried with the batch)

    def sequence_cache(self) -> tuple[int, int, int]:
        """Users whose sequence is in memory (at most ``max_users``, unless one batch needs more),
        users evicted from memory so far, and users' sequences read from the log so far (after a
        restart, an eviction, or a late event)."""
        return self._pool.users, self._evicted_before + self._pool.evicted, self.sequences_read

    # -- reads -------------------------------------------------------------------------------
    def sequence(self, user: int) -> np.ndarray:
        """The user's last ``seq_len`` item ids, oldest first (empty for an unknown user)."""
        return self.sequences([user])[0]

    def sequences(self, users: Sequence[int]) -> list[np.ndarray]:
        """Each user's last ``seq_len`` item ids, oldest first (copies; empty for an unknown user)."""
        users = np.asarray(users, np.int64)
        self._load(users)
        flat, n = self._pool.gather(self._users.lookup(users))
        return split(self._items.ids[flat], n)

    def seen(self, users: Sequence[int]) -> SeenItems:
        """Every item each user has interacted with (unique, in no particular order), as item codes
        of this store; ``seen[j]`` is user j's array of item ids."""
        codes = self._users.lookup(np.asarray(users, np.int64))
        lo = np.where(codes >= 0, codes, 0).astype(np.uint64) << np.uint64(32)
        hi = np.where(codes >= 0, lo + np.uint64(1 << 32), lo)  # unknown user: an empty range
        flat, total = self._seen.ranges(lo, hi, low32=True)  # (the pairs' low halves: the item codes)
        # A snapshot of the item codes: the next batch's append may code new items meanwhile.
        return SeenItems(flat, np.append(0, np.cumsum(total)), self._items.ids,
                         self._items.snapshot_lookup())

    def count(self) -> int:
        """Events this database owns (copies of other databases' events excluded)."""
        return self.con.execute("SELECT count(*) FROM events WHERE owned").fetchone()[0]

    def recent_items(self, n: int) -> np.ndarray:
        """Item ids of the newest ``n`` stored events in event-time order (to warm popularity)."""
        return self.recent_events(n)[1]

    def recent_events(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(user ids, item ids) of the newest ``n`` stored events in event-time order (to warm
        the item-to-item baselines)."""
        rows = self.con.execute(
            "SELECT user_id, item_id FROM (SELECT user_id, item_id, event_time, kafka_partition, kafka_offset"
            " FROM events ORDER BY event_time DESC, kafka_partition DESC, kafka_offset DESC LIMIT ?)"
            " ORDER BY event_time, kafka_partition, kafka_offset", [n]
        ).fetchnumpy()
        return rows["user_id"], rows["item_id"]


def _payload(batch: EventBatch, rows: np.ndarray) -> dict:
    """The payload columns of ``rows`` (sorted, distinct) of a batch: what ``PAYLOAD_HASH`` hashes."""
    rating = np.asarray(batch.rating, np.float32)[rows]
    ids, types = batch.event_id, batch.event_type
    if len(rows) < len(ids):  # (usually every row: no list to build)
        row_list = rows.tolist()
        ids, types = [ids[i] for i in row_list], [types[i] for i in row_list]
    return {
        "event_id": pa.array(ids, pa.string()),
        "user_id": np.asarray(batch.user, np.int64)[rows],
        "item_id": np.asarray(batch.item, np.int64)[rows],
        "event_time": np.asarray(batch.event_time, np.int64)[rows],
        "event_type": pa.array(types, pa.string()),
        "rating": pa.array(rating, pa.float32(), mask=np.isnan(rating)),
    }


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
