"""Closed-loop replay: a user's next event waits for the list their previous one triggered.

A timed replay compresses event time. At the speeds that replay MovieLens in minutes a whole rating
session lands in one micro-batch, so every event of it is graded against the list shown *before*
the session (docs/accuracy.md, "Within a session and across sessions"); in real time the worker
refreshes a user's list within ~0.1 s, long before their next click. The closed loop restores that
order, as a user who looks at their list before rating again:

* a user's same-second events go out together (a burst: their order is unknown);
* if the user's next burst follows within ``session_gap`` seconds of event time, it waits until a
  list triggered by this burst (``event_time`` >= its time) is published, or ``list_timeout``
  seconds pass (counted as a timeout); later bursts need no wait;
* other users go on meanwhile, but no event is sent more than ``max_skew`` seconds of event time
  ahead of the oldest unsent one (default a year). Per user the order is exact; across users it is
  relaxed because MovieLens has few users active at a time, so a strict time order would send one
  event per round trip (ml-latest-small's live half: ~19,000 round trips with 30 days of skew,
  ~5,800 with a year). What a list holds depends on its user's own events (and, for the popularity
  fallback, on the window of recent events, which the skew shuffles a little).

The worker grades each event against the user's latest list with an earlier trigger time, as
always; what changes is that such a list now exists within a session. Needs a ``ListFollower``
on the recommendations topic (it notifies waiters as lists arrive).
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from streamrec.storage.movielens import Ratings
from streamrec.streams.replay import Deliveries, ReplayStats, encode_ratings, make_producer, produce


class NoLists(RuntimeError):
    """A wait timed out and no event of this run has triggered any list yet: nobody is serving."""


@dataclass
class ClosedLoopStats(ReplayStats):
    waits: int = 0  # bursts held until their user's list arrived
    timeouts: int = 0  # of those, released after list_timeout without the list


def user_bursts(ratings: Ratings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``ratings`` grouped per user into bursts (same user, same second), each user's in
    time order: (rows in that order, burst start offsets into them, burst user).

    >>> r = Ratings(np.array([1, 2, 1, 1]), np.array([5, 6, 7, 8]), np.ones(4, np.float32), np.array([0, 0, 0, 9]))
    >>> rows, starts, users = user_bursts(r)
    >>> rows.tolist(), starts.tolist(), users.tolist()
    ([0, 2, 3, 1], [0, 2, 3, 4], [1, 1, 2])
    """
    rows = np.lexsort((ratings.timestamp, ratings.user))  # per user in time order; stable within a second
    u, t = ratings.user[rows], ratings.timestamp[rows]
    new = np.ones(len(rows), bool)
    new[1:] = (u[1:] != u[:-1]) | (t[1:] != t[:-1])
    starts = np.flatnonzero(new)
    return rows, np.append(starts, len(rows)), u[starts]


def closed_loop_replay(ratings: Ratings, bootstrap, topic: str, follower, session_gap: float = 3600.0,
                       max_skew: float = 365 * 86_400.0, list_timeout: float = 5.0, progress: bool = True,
                       producer=None) -> ClosedLoopStats:
    """Produce every rating of ``ratings`` (any order; times in s) in the closed loop described above;
    returns when all are acknowledged. Ctrl-C raises ``ReplayInterrupted`` like ``replay``."""
    producer = producer or make_producer(bootstrap, **{"linger.ms": 0})
    values, keys = encode_ratings(ratings), [str(u).encode() for u in ratings.user.tolist()]
    rows, starts, burst_user = user_bursts(ratings)
    burst_time = ratings.timestamp[rows[starts[:-1]]].astype(np.int64)
    new_user = burst_user[1:] != burst_user[:-1]
    last_of_user = np.append(new_user, True)  # burst b is its user's last
    ready = [(int(burst_time[b]), b) for b in np.flatnonzero(np.append(True, new_user))]
    heapq.heapify(ready)  # (event time, burst): users free to send their next burst
    # user -> (event time (ms) the awaited list must have seen, monotonic time of the send, the
    # user's next burst, wall time (ms) of the send)
    waiting: dict[int, tuple[int, float, int, int]] = {}
    stats = ClosedLoopStats(len(values), 0.0)
    deliveries = Deliveries()
    start = time.time()
    bar = tqdm(total=len(values), unit="ev", disable=not progress, desc=f"closed loop -> {topic}", smoothing=0.1)
    stop = None
    try:
        while ready or waiting:
            _release(follower, waiting, ready, burst_time, list_timeout, stats, int(start * 1000) - 1000)
            heads = [int(burst_time[w[2]]) for w in waiting.values()] + ([ready[0][0]] if ready else [])
            oldest = min(heads)  # the oldest unsent event: nothing goes out more than max_skew after it
            sent = 0
            while ready and ready[0][0] <= oldest + max_skew:
                t, b = heapq.heappop(ready)
                for j in rows[starts[b]:starts[b + 1]].tolist():
                    produce(producer, topic, values[j], keys[j], deliveries)
                sent += starts[b + 1] - starts[b]
                if last_of_user[b]:
                    continue
                if burst_time[b + 1] - t <= session_gap:
                    waiting[int(burst_user[b])] = (t * 1000, time.monotonic(), b + 1, int(time.time() * 1000))
                    stats.waits += 1
                else:
                    heapq.heappush(ready, (int(burst_time[b + 1]), b + 1))
            producer.poll(0)
            bar.update(sent)
            if not sent and waiting:
                with follower.arrived:
                    follower.arrived.wait(0.05)
    except NoLists:
        bar.close()
        producer.flush(5)
        raise
    except KeyboardInterrupt:
        bar.close()
        stop = deliveries.interrupted(producer, 10)
    if stop is not None:  # raised outside the handler: no traceback keeps the producer alive
        del producer  # gone now: no reconnection noise once the broker stops
        raise stop
    deliveries.check(producer, "closed-loop replay")
    bar.close()
    stats.seconds = time.time() - start
    return stats


def _release(follower, waiting: dict, ready: list, burst_time: np.ndarray, list_timeout: float,
             stats: ClosedLoopStats, run_start_ms: int) -> None:
    """Free the users whose awaited list arrived (or whose wait timed out); ``NoLists`` if a wait
    timed out and no event of this run (sent from ``run_start_ms``) has triggered any list yet."""
    if not waiting:
        return
    now = time.monotonic()
    with follower.lock:
        recs = {u: follower.latest.get(u) for u in waiting}
    got = {u: (rec.event_time, rec.source_timestamp) for u, rec in recs.items() if rec is not None}
    for u, (trigger, since, nxt, sent_ms) in list(waiting.items()):
        # The list must have seen this burst, and its trigger must be this run's message (Kafka
        # timestamp not before the send, 1 s of clock slack): a topic may hold older runs' lists.
        event_time, source_ms = got.get(u, (-1, -1))
        arrived = event_time >= trigger and source_ms >= sent_ms - 1000
        if arrived or now - since > list_timeout:
            if not arrived and follower.newest_source < run_start_ms:
                raise NoLists(f"no list arrived within {list_timeout:g} s of a user's event (topic "
                              f"{follower.topic!r}): is a worker running on these topics?")
            del waiting[u]
            stats.timeouts += not arrived
            heapq.heappush(ready, (int(burst_time[nxt]), nxt))
