"""Scale-out: which worker's database owns which offsets of each interactions partition, and
how a worker that takes a partition over gets that partition's users' history.

Several workers share the ``interactions`` partitions through their consumer group, each with
its own DuckDB file. Two problems arise when a partition moves from worker A to worker B:

1. **B needs the users' history**, which lies in A's database. B replays the partition from
   Kafka up to where it starts (``recover``) and stores those events as copies
   (``owned = false``), so its ``sequences`` and seen items are whole. Not a compacted
   changelog of sequences: that would add a message per touched user per micro-batch to the hot
   path, and the interactions log already holds everything needed (limit: the topic's retention
   must keep every event; a partition trimmed by retention recovers what is left, with a warning).

2. **Each event must be owned by exactly one database.** A worker stores a micro-batch, then
   publishes, then its offsets are committed; if it is killed between its DuckDB commit and the
   Kafka commit, its database holds events that the partition's next owner consumes again. No
   order of two commits in two systems closes that window, so ownership is written down in
   Kafka instead: before a worker stores the first batch of a partition after an assignment, it
   appends a *claim* ``(partition, first offset, database id)`` to the ownership log (a
   one-partition topic, ``<interactions>.owners``) and waits for the broker's ack. Offset ``o``
   of a partition belongs to the database of the *last claim in log order whose start <= o*.
   Whenever a worker reads the log (on start and on every claim) it marks the rows it holds in
   offsets that another database owns as ``owned = false`` (``fence``): the events a killed worker
   stored past its last commit are owned by whoever consumed them next, as soon as the killed
   worker's database is opened again (a running worker also re-reads the log every few seconds:
   a restarted worker's claims may precede the claims of the worker that took its partitions). A
   gracefully stopped or rebalanced worker commits before it lets its partitions go (see
   ``streams/worker.py``), so it leaves nothing to fence.

Limits: a worker that is alive but has lost its partitions (a long pause past the session
timeout) may store a batch after the new owner's claim; those rows are fenced at its next claim
or restart, not at once. Users' in-memory state of partitions a worker lost stays until restart.

>>> claims = [Claim("g", 0, 0, "A", 1), Claim("g", 0, 120, "B", 2), Claim("g", 1, 0, "B", 3)]
>>> segments(claims, 0)
[(0, 120, 'A'), (120, None, 'B')]
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import duckdb
import msgspec
import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streamrec.storage.export import read_partition_segments
from streamrec.storage.store import EventStore
from streamrec.streams.config import kafka_config
from streamrec.streams.events import Contract, decode_batch

log = logging.getLogger(__name__)


class Claim(msgspec.Struct):
    group: str  # consumer group: several deployments may share one interactions topic
    partition: int
    start: int  # first offset the claiming database owns
    db_id: str
    claimed_at: int  # ms since the epoch
    nonce: str = ""  # lets the claimant find its own claim when it reads the log back
    export_dir: str = ""  # where the claimant exports its events (storage/export.py); "" when it does not


def owners_topic(interactions_topic: str) -> str:
    return f"{interactions_topic}.owners"


def segments(claims: list[Claim], partition: int) -> list[tuple[int, int | None, str]]:
    """[(lo, hi, db_id)] of ``partition``; ``hi`` None is open-ended. Each claim, in log order,
    takes everything from its start on.

    >>> segments([Claim("g", 0, 0, "A", 1), Claim("g", 0, 50, "B", 2), Claim("g", 0, 90, "A", 3)], 0)
    [(0, 50, 'A'), (50, 90, 'B'), (90, None, 'A')]
    >>> segments([Claim("g", 0, 10, "A", 1), Claim("g", 0, 10, "A", 2)], 0)   # a re-claim changes nothing
    [(10, None, 'A')]
    """
    out: list[tuple[int, int | None, str]] = []
    for c in claims:
        if c.partition != partition:
            continue
        out = [(lo, c.start if hi is None or hi > c.start else hi, db) for lo, hi, db in out if lo < c.start]
        if out and out[-1][2] == c.db_id and out[-1][1] == c.start:
            out[-1] = (out[-1][0], None, c.db_id)
        else:
            out.append((c.start, None, c.db_id))
    return out


class OwnershipLog:
    """The claims of one consumer group, read from and appended to the owners topic."""

    def __init__(self, bootstrap: str, topic: str, group: str):
        self.bootstrap, self.topic, self.group = bootstrap, topic, group
        self.producer = Producer(kafka_config("producer", bootstrap, {"enable.idempotence": True}))
        self._decode = msgspec.json.Decoder(Claim).decode
        self.skipped = 0  # records of the log that are not claims (logged once each, skipped)
        self._bad_offsets: set[int] = set()

    def read(self, until_nonce: str | None = None, timeout: float = 30.0) -> list[Claim]:
        """Every claim of this group in log order (up to and including ``until_nonce``'s)."""
        c = Consumer(kafka_config("consumer", self.bootstrap, {"group.id": f"owners-reader-{uuid.uuid4().hex}",
                                                           "enable.auto.commit": False, "enable.partition.eof": True}))
        c.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        claims, deadline, found = [], time.monotonic() + timeout, until_nonce is None
        try:
            while time.monotonic() < deadline:
                msg = c.poll(0.5)
                if msg is None:
                    continue
                if msg.error():  # end of the log (fetch responses carry the true high watermark)
                    if found:
                        return claims
                    continue
                claim = self._claim_of(msg)
                if claim is None:
                    continue
                if claim.group == self.group:
                    claims.append(claim)
                found = found or claim.nonce == until_nonce
        finally:
            c.close()
        raise TimeoutError(f"ownership log {self.topic}: not read to its end in {timeout}s")

    def _claim_of(self, msg) -> Claim | None:
        """The claim in a record, or None (logged and counted once) for one that is not a claim:
        a stray record must not stop every worker of the group, as a crash here would."""
        try:
            return self._decode(msg.value() or b"")
        except Exception as e:  # msgspec errors, RecursionError, UnicodeDecodeError, ...
            if msg.offset() not in self._bad_offsets:
                self._bad_offsets.add(msg.offset())
                self.skipped += 1
                log.error("ownership log %s@%d: skipping a record that is not a claim: %s: %s",
                          self.topic, msg.offset(), type(e).__name__, str(e)[:200])
            return None

    def claim(self, partition: int, start: int, db_id: str, export_dir: str = "") -> list[Claim]:
        """Append a claim, wait for the broker's ack; returns the log up to and including it."""
        claim = Claim(self.group, partition, start, db_id, int(time.time() * 1000), uuid.uuid4().hex, export_dir)
        self.producer.produce(self.topic, key=str(partition).encode(), value=msgspec.json.encode(claim))
        if self.producer.flush(30):
            raise RuntimeError(f"claim of partition {partition} not acknowledged by {self.topic}")
        return self.read(until_nonce=claim.nonce)


def fence(store: EventStore, claims: list[Claim]) -> int:
    """Disown the rows ``store`` holds in offsets another database owns; returns how many."""
    n = 0
    for p in sorted({c.partition for c in claims}):
        for lo, hi, db in segments(claims, p):
            if db != store.db_id:
                n += store.disown(p, lo, hi)
    return n


def read_partition(bootstrap: str, topic: str, partition: int, lo: int, hi: int, timeout: float = 120.0):
    """Raw records of ``topic[partition]`` at offsets [lo, hi) as (values, offsets, keys, timestamps)."""
    values, offsets, keys, stamps = [], [], [], []
    for v, o, k, t in read_partition_chunks(bootstrap, topic, partition, lo, hi, timeout=timeout):
        values += v
        offsets.append(o)
        keys += k
        stamps += t
    return values, np.concatenate(offsets) if offsets else np.zeros(0, np.int64), keys, stamps


def read_partition_chunks(bootstrap: str, topic: str, partition: int, lo: int, hi: int, chunk: int = 200_000,
                          timeout: float = 120.0):
    """:func:`read_partition` in pieces of about ``chunk`` records (memory stays bounded);
    ``timeout``: the longest wait for the next piece."""
    if lo >= hi:
        return
    c = Consumer(kafka_config("consumer", bootstrap, {"group.id": f"recovery-{uuid.uuid4().hex}",
                                                  "enable.auto.commit": False, "fetch.max.bytes": 64 * 1024**2}))
    c.assign([TopicPartition(topic, partition, lo)])
    values, offsets, keys, stamps, deadline, first = [], [], [], [], time.monotonic() + timeout, True
    try:
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}[{partition}] offsets {lo}..{hi}: not read in {timeout}s")
            msgs = [m for m in c.consume(10_000, timeout=0.5) if not m.error()]
            if not msgs:
                continue
            deadline = time.monotonic() + timeout
            if first and msgs[0].offset() > lo:
                log.warning("%s[%d]: offsets %d..%d are gone from Kafka (retention); those users' history is partial",
                            topic, partition, lo, msgs[0].offset() - 1)
            first = False
            for m in msgs:
                if m.offset() < hi:
                    values.append(m.value())
                    offsets.append(m.offset())
                    keys.append(m.key())
                    stamps.append(m.timestamp()[1])
            done = msgs[-1].offset() >= hi - 1
            if len(values) >= chunk or (done and values):
                yield values, np.asarray(offsets, np.int64), keys, stamps
                values, offsets, keys, stamps = [], [], [], []
            if done:
                return
    finally:
        c.close()


class Ownership:
    """A worker's side of it: claim each partition once per assignment, fence, recover."""

    def __init__(self, store: EventStore, bootstrap: str, interactions_topic: str, group: str,
                 contract: Contract = Contract(), export_dir: str = ""):
        self.store, self.bootstrap, self.topic, self.contract = store, bootstrap, interactions_topic, contract
        # Named in this worker's claims, so that whoever takes a partition over next reads the
        # events of it from these segments rather than from Kafka.
        self.export_dir = str(Path(export_dir).resolve()) if export_dir else ""
        self.log = OwnershipLog(bootstrap, owners_topic(interactions_topic), group)
        self.claimed: set[int] = set()
        self.recovered_events = 0  # copies stored by recoveries, for the metric
        self.recovered_from_segments = 0  # of those, read from the previous owner's exported segments
        self.fenced_events = 0
        # Length of the newest log applied. The log only grows, so a read of it is a prefix of
        # every later read: a shorter one is older than what was applied, and applying it would
        # disown rows this database stored under its own later claims (the timer reads the log
        # on one thread and fences on the store thread, where claims may come in between).
        self._applied = -1

    def refresh(self, claims: list[Claim] | None = None) -> int:
        """Disown what other databases own by now: on start (what they took over while this one
        was down) and every few seconds (claims made after this worker's own last claim).

        ``claims``: the log, read beforehand (the worker reads it off the store thread); the
        database is only touched when the log has grown since the last fencing.
        """
        claims = self.log.read() if claims is None else claims
        if len(claims) <= self._applied:  # nothing new, or a read older than one applied already
            if len(claims) < self._applied:
                log.info("ownership: a read of the log older than the one applied (%d < %d claims) is ignored",
                         len(claims), self._applied)
            return 0
        n = fence(self.store, claims)
        self._applied = len(claims)
        self.fenced_events += n
        if n:
            log.warning("ownership: %d events this database stored past its last commit are owned elsewhere", n)
        return n

    def reset(self) -> None:
        """A rebalance: every partition is claimed again before its next batch is stored."""
        self.claimed.clear()

    def ensure(self, partitions: np.ndarray, offsets: np.ndarray) -> list[int]:
        """Claim the batch's partitions not claimed since the last rebalance (the first offset of
        each is where this database's ownership starts); returns those claimed now."""
        new = sorted(set(np.unique(partitions).tolist()) - self.claimed)
        for p in new:
            start = int(offsets[partitions == p].min())
            claims = self.log.claim(p, start, self.store.db_id, self.export_dir)
            self.refresh(claims)
            self._recover(p, start, claims)
            self.claimed.add(p)
        return new

    def _recover(self, partition: int, start: int, claims: list[Claim]) -> None:
        """Copy the events of ``partition`` below ``start`` that other databases own: from the
        owner's exported Parquet segments as far as they reach, the rest from Kafka, in chunks
        (memory bounded)."""
        t0 = time.time()
        n = from_segments = 0
        for lo, hi, db in segments(claims, partition):
            hi = start if hi is None or hi > start else hi
            if db == self.store.db_id or lo >= hi or self.store.is_recovered(partition, lo, hi):
                continue
            done = lo
            export_dir = exports_of(claims, db)
            if export_dir:
                try:
                    for batch, top in read_partition_segments(export_dir, partition, lo, hi):
                        got = self.store.append(batch, owned=False).n_new
                        n, from_segments, done = n + got, from_segments + got, top + 1
                except duckdb.Error as e:  # an unreadable segment: what is left comes from Kafka
                    log.warning("ownership: partition %d: segments of %s unreadable (%s); offsets from %d "
                                "come from Kafka", partition, export_dir, str(e).splitlines()[0][:200], done)
            # Past the last exported offset (the owner stored batches whole and in offset order, so
            # nothing below it is missing from the segments): Kafka, under the owner's rules (what
            # it dead-lettered is not copied either).
            for values, offsets, keys, stamps in read_partition_chunks(self.bootstrap, self.topic, partition, done, hi):
                batch = decode_batch(values, keys, stamps, self.contract, np.full(len(values), partition), offsets)
                n += self.store.append(batch, owned=False).n_new
            self.store.mark_recovered(partition, lo, hi)
        self.recovered_events += n
        self.recovered_from_segments += from_segments
        if n:
            log.info("ownership: partition %d from offset %d; recovered %d earlier events (%d from exported segments, "
                     "the rest from Kafka) in %.1fs", partition, start, n, from_segments, time.time() - t0)


def exports_of(claims: list[Claim], db_id: str) -> str:
    """The export directory the newest claim of ``db_id`` names, if this machine can read it."""
    for c in reversed(claims):
        if c.db_id == db_id and c.export_dir:
            return c.export_dir if Path(c.export_dir).is_dir() else ""
    return ""
