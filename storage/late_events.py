"""A late event's user put back in time order from the recent part of the log only.

An event older than its user's newest one in memory (late: clients that upload in bulk, several
producers) cannot simply be appended. The store used to reload such a user's whole sequence with a
join over the entire log: 12 ms for one user at 19M events stored, 79 ms for a hundred, growing
with the log. But the memory already holds the user's newest events in order, so only the events
at or after the late one's time are needed, and DuckDB skips every row group whose ``event_time``
range ends before that (zone maps: the log is appended roughly in time order). With ``d`` of those
events already in memory, the user's new sequence is the memory's older part, ``items[:len - d]``,
then the log's rows from that time on, cut to the last ``seq_len``.

Where memory cannot be trusted to hold those ``d`` events (it holds fewer than ``d`` and is not
full), the user is returned for a whole reload, as before.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from streamrec.storage.sequence_pool import SequencePool

QUERY = (
    "SELECT user_id, event_time, kafka_offset, item_id FROM events JOIN late USING (user_id)"
    " WHERE event_time >= ? AND event_time >= late.since"
    " ORDER BY user_id, event_time, kafka_partition, kafka_offset"
)


def splice_late(con, pool: SequencePool, late: np.ndarray, codes: np.ndarray, times: np.ndarray,
                ids: np.ndarray, item_code) -> np.ndarray:
    """Put the ``late`` user codes back in time order. ``codes``, ``times``: the user code and event
    time of each event the batch stored, grouped by user and oldest first within a user; ``ids``:
    external user id by code; ``item_code``: external item ids -> codes; ``con``: the store's DuckDB
    connection (the batch committed). Returns the codes that need a whole reload instead."""
    starts = np.flatnonzero(np.append(True, codes[1:] != codes[:-1]))  # one run of events per user
    runs = np.flatnonzero(np.isin(codes[starts], late))
    late, since = codes[starts[runs]], times[starts[runs]]  # each late user's oldest event of the batch
    added = np.diff(np.append(starts, len(codes)))[runs]
    cur = con.cursor()
    try:
        cur.register("late", pa.table({"user_id": ids[late], "since": since}))
        rows = cur.execute(QUERY, [int(since.min())]).fetchnumpy()
    finally:
        cur.close()
    return _splice(pool, late, ids[late], added, rows, item_code)


def _splice(pool: SequencePool, codes: np.ndarray, user_ids: np.ndarray, added: np.ndarray, rows: dict,
            item_code) -> np.ndarray:
    """Each late user's new row: memory's older part, then the log's ``rows`` from its late time on."""
    q_user = np.asarray(rows["user_id"], np.int64)
    q_items = item_code(np.asarray(rows["item_id"], np.int64))
    q_time, q_offset = np.asarray(rows["event_time"], np.int64), np.asarray(rows["kafka_offset"], np.int64)
    # Late users come in ascending user id (the batch was sorted by user), as the query's rows do.
    bounds = np.searchsorted(q_user, user_ids, side="left"), np.searchsorted(q_user, user_ids, side="right")
    users, items, times, offsets, whole = [], [], [], [], []
    for code, lo, hi, held, n_added in zip(codes, *bounds, pool.rows(codes), added):
        before = (hi - lo) - int(n_added)  # events at or after the late time that memory already has
        if before > len(held) and len(held) < pool.seq_len:
            whole.append(code)
            continue
        older = held[:max(len(held) - before, 0)]
        new_items = np.concatenate([older, q_items[lo:hi]])[-pool.seq_len:]
        n_old = max(len(new_items) - (hi - lo), 0)  # (the older part keeps placeholder times: only
        users.append(np.full(len(new_items), code))  # the newest event's time and offset are kept)
        items.append(new_items)
        times.append(np.concatenate([np.full(n_old, q_time[lo]), q_time[lo:hi]])[-len(new_items):])
        offsets.append(np.concatenate([np.zeros(n_old, np.int64), q_offset[lo:hi]])[-len(new_items):])
    if users:
        pool.load(np.concatenate(users), np.concatenate(items), np.concatenate(times), np.concatenate(offsets))
    return np.asarray(whole, np.int64)
