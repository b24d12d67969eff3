"""faust with a bulk path: fetched records of chosen topics go to a buffer, not through streams.

faust's per-message machinery (a Message, an Event and a task switch for every record) caps an
agent at roughly 13k events/s on two cores (see docs/benchmarks.md). :class:`BulkConsumer`
keeps faust's consumer, group membership, rebalancing and offset commits, but its drain loop
passes each partition's fetched records for the topics of a :class:`RecordBuffer` to that buffer
in one call; the worker acks them in bulk, in order (:meth:`BulkConsumer.ack_through`), once a
batch is durable and published. Other topics go through faust's usual callback.

This module is the only one that touches faust internals. It is written against
**faust-streaming 0.15.3** (``faust.transport.drivers.aiokafka``), and relies on:

- ``Consumer._drain_messages(fetcher)``: overridden (a copy of faust's loop, reshaped for bulk);
- ``Consumer._wait_next_records(timeout)``, ``Consumer._add_gap(tp, offset_from, offset_to)``,
  ``Consumer._to_message(tp, record)``: called;
- ``Consumer._new_offset(tp)``: overridden for the bulk topics (the offset after the last ack; the
  others keep faust's), called by faust's commit for the partitions that have an entry in ``_acked``;
- consumer attributes ``_read_offset``, ``_committed_offset``, ``_acked``, ``_n_acked``,
  ``_commit_every``, ``_buffered_partitions``, ``_stopped`` (and the fetcher's ``_stopped``), besides
  the public ``callback``, ``flow_active``, ``should_stop``, ``highwater``;
- ``faust.types.tuples.ack_lock`` (taken around the ack bookkeeping, as ``Consumer.ack`` does);
- ``App._new_transport()`` (overridden to build :class:`BulkTransport`), ``Transport.Consumer``,
  ``App.consumer_generation_id`` and ``app.monitor.track_tp_end_offset(tp, offset)``;
- ``Consumer._new_consumer_thread()`` and ``AIOKafkaConsumerThread._create_worker_consumer(transport)``
  (overridden: faust hard-codes the aiokafka consumer's ``fetch_max_wait_ms=1500``; we set the
  consumer's ``_fetch_max_wait_ms`` before it starts, which is where aiokafka's fetcher reads it).

and on **aiokafka 0.14.0**'s ``aiokafka.consumer.fetcher``:

- ``PartitionRecords._consumer_record(tp, record)``, replaced (see :func:`_bare_or_wrapped`): for the
  bulk topics it returns aiokafka's record batch entry (``offset``, ``timestamp``, ``key``, ``value``)
  as it is, instead of a ``ConsumerRecord``;
- ``FetchResult.getall(max_records)``, replaced (see :func:`_getall_bulk`): for the bulk topics, when
  no ``max_records`` is asked (faust's default), it takes a fetch's records a record batch at a time
  with the rules of ``PartitionRecords._unpack_records`` (copied: CRC check, aborted transactions,
  control batches, offsets before the fetch position), using ``PartitionRecords``' attributes
  ``_records``, ``_tp``, ``_check_crcs``, ``_isolation_level``, ``_aborted_producers``,
  ``_records_iterator``, ``next_fetch_offset``, its methods ``_consume_aborted_up_to`` and
  ``_contains_abort_marker``, and ``FetchResult``'s ``_partition_records``, ``_topic_partition``,
  ``check_assignment`` and ``_update_position``.

``tests/test_faust_bulk.py`` checks each of these on the installed faust and fails if one changed.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Awaitable, Callable

import faust
from aiokafka.consumer import fetcher as aiokafka_fetcher
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ack_lock

FAUST_VERSION = "0.15.3"  # the faust-streaming this adapter was written and checked against
AIOKAFKA_VERSION = "0.14.0"  # the aiokafka under it (for PartitionRecords._consumer_record)

# Topics whose fetched records stay aiokafka's bare record objects (see _bare_or_wrapped).
_BARE_TOPICS: set[str] = set()
_consumer_record = aiokafka_fetcher.PartitionRecords._consumer_record


def _bare_or_wrapped(self, tp, record):
    """aiokafka's per-record ``ConsumerRecord`` (sizes, a headers tuple, a dataclass) costs ~0.5 us
    a record: aiokafka alone read Tansu at 476k records/s with it, 626k without. The bulk path
    reads four fields, which the record of the fetched batch has already."""
    if tp.topic in _BARE_TOPICS:
        return record
    return _consumer_record(self, tp, record)

_getall = aiokafka_fetcher.FetchResult.getall


def _getall_bulk(self, max_records=None):
    """A fetch's records of a bulk topic, a record batch at a time (aiokafka's getall resumes a
    Python generator, checks and appends per record: 4.3 ms per 5,000 records against 1.0 ms here,
    in the consumer thread, which holds the worker's GIL meanwhile). Anything else, or a fetch whose
    records were already partly taken one by one (``getone``), goes through aiokafka's own."""
    pr = self._partition_records
    if (max_records is not None or pr is None or pr._tp.topic not in _BARE_TOPICS
            or inspect.getgeneratorstate(pr._records_iterator) != inspect.GEN_CREATED):
        return _getall(self, max_records)
    if not self.check_assignment(self._topic_partition):
        return []
    records = _records_of(pr)
    self._update_position()
    self._partition_records = None
    return records


def _records_of(pr) -> list:
    """Every record of ``pr`` (a PartitionRecords) from its fetch position on, by the rules of
    aiokafka 0.14.0's ``PartitionRecords._unpack_records``, applied per record batch."""
    out, records = [], pr._records
    while records.has_next():
        batch = records.next_batch()
        if pr._check_crcs and not batch.validate_crc():
            raise aiokafka_fetcher.Errors.CorruptRecordException(f"Invalid CRC - {pr._tp}")
        if pr._isolation_level == aiokafka_fetcher.READ_COMMITTED and batch.producer_id is not None:
            pr._consume_aborted_up_to(batch.base_offset)
            if batch.is_control_batch and pr._contains_abort_marker(batch):
                pr._aborted_producers.discard(batch.producer_id)
            if batch.is_transactional and batch.producer_id in pr._aborted_producers:
                pr.next_fetch_offset = batch.next_offset
                continue
        if batch.is_control_batch:  # skipped whatever the isolation level
            pr.next_fetch_offset = batch.next_offset
            continue
        recs = list(batch)
        if recs and recs[0].offset < pr.next_fetch_offset:  # a batch the fetch position is inside of
            recs = [r for r in recs if r.offset >= pr.next_fetch_offset]
        out += recs
        pr.next_fetch_offset = batch.next_offset
    return out

RevokeHook = Callable[[set[TP]], Awaitable[None]]


class RecordBuffer:
    """Raw records of the bulk topics, between the consumer's fetch loop and the agent.

    Bounded: when it holds ``maxsize`` records the fetch loop waits (back-pressure).
    """

    def __init__(self, topics: set[str], maxsize: int):
        self.topics, self.maxsize = topics, maxsize
        self.chunks: list[tuple[TP, list]] = []
        self.size = 0
        self.first_arrival = 0.0
        self._data = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self.paused = False

    async def put(self, tp: TP, records: list) -> bool:
        """Add a fetched chunk; False (and nothing added) while a rebalance is under way."""
        while self.size >= self.maxsize and not self.paused:
            self._space.clear()
            await self._space.wait()
        if self.paused:
            return False
        if not self.chunks:
            self.first_arrival = time.time()
        self.chunks.append((tp, records))
        self.size += len(records)
        self._data.set()
        return True

    async def take(self, n: int, within: float) -> tuple[list[tuple[TP, list]], float]:
        """Up to ``n`` records, waiting at most ``within`` s after the first one arrives."""
        while not self.chunks:
            self._data.clear()
            await self._data.wait()
        deadline = self.first_arrival + within
        while self.size < n and (left := deadline - time.time()) > 0:
            self._data.clear()
            try:
                await asyncio.wait_for(self._data.wait(), left)
            except asyncio.TimeoutError:
                break
        taken, count, arrival = [], 0, self.first_arrival
        while self.chunks and count < n:
            tp, recs = self.chunks[0]
            room = n - count
            if len(recs) <= room:
                self.chunks.pop(0)
            else:
                self.chunks[0] = (tp, recs[room:])
                recs = recs[:room]
            taken.append((tp, recs))
            count += len(recs)
        self.size -= count
        self.first_arrival = time.time() if self.chunks else 0.0
        self._space.set()
        return taken, arrival

    def pause(self, revoked: set[TP]) -> int:
        """A rebalance starts: forget buffered records of revoked partitions (their next owner
        consumes them from the committed offset) and take no more until :meth:`resume`.

        Records fetched in the old generation but handed over after this point would otherwise
        be processed out of turn while the consumer, repositioned at the committed offset,
        skips them as already read: that lost one record per partition at a takeover.
        """
        self.paused = True
        keep = [(tp, r) for tp, r in self.chunks if tp not in revoked]
        dropped = self.size - sum(len(r) for _, r in keep)
        self.chunks, self.size = keep, self.size - dropped
        self._space.set()
        return dropped

    def resume(self) -> None:
        self.paused = False


class BulkConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread, building its aiokafka consumer with ``app.fetch_wait``."""

    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        # faust passes fetch_max_wait_ms=1500 and has no setting for it. Tansu holds a fetch that
        # finds no data for the whole wait (data arriving meanwhile does not end it), so this wait
        # is how late a record can be taken: it bounds the lists' freshness.
        consumer._fetch_max_wait_ms = int(self.app.fetch_wait * 1000)
        return consumer


class BulkConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer with a bulk path for the topics of ``app.record_buffer``."""

    app: "BulkApp"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._acked_through: dict[TP, int] = {}  # per bulk partition: the last offset acked (in order)

    def _new_consumer_thread(self) -> BulkConsumerThread:
        return BulkConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher) -> None:  # pragma: no cover - exercised end to end
        stopped = lambda: self._stopped.is_set() or fetcher._stopped.is_set()  # noqa: E731
        while not stopped():
            records, active = await self._wait_next_records(1.0)
            if not records or self.should_stop:
                await asyncio.sleep(0)
                continue
            generation = self.app.consumer_generation_id
            for tp, recs in records.items():
                if not recs or (active is not None and tp not in active and tp not in self._buffered_partitions):
                    continue
                if self.app.consumer_generation_id != generation or not self.flow_active:
                    break  # a rebalance started: these records will be fetched again
                if not await self._hand_over(tp, recs):
                    break  # a rebalance started: fetched again from the committed offset
            if self._commit_every is not None and self._n_acked >= self._commit_every:
                self._n_acked = 0
                await self.commit()

    async def _hand_over(self, tp: TP, recs: list) -> bool:
        """One partition's fetched records to the buffer (or faust's callback); False if the
        buffer refused them because a rebalance started."""
        read = self._read_offset[tp]
        if read is not None:
            # faust's read offset is the last record handed over, or after a seek the
            # committed offset, i.e. the *next* one to read: like faust, keep records
            # at or above it (skipping that one record lost it at every takeover; a
            # record seen twice is stored once).
            if recs[0].offset < read:
                recs = [r for r in recs if r.offset >= read]
            if not recs:
                return True
        buffer = self.app.record_buffer
        if tp.topic not in buffer.topics:  # faust's acks need the gaps (a bulk topic commits through its last ack)
            await self._record_gaps(tp, read, recs)
        self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
        if tp.topic in buffer.topics:
            if not await buffer.put(tp, recs):
                return False
        else:
            for r in recs:
                await self.callback(self._to_message(tp, r))
        self._read_offset[tp] = recs[-1].offset
        return True

    async def _record_gaps(self, tp: TP, read: int | None, recs: list) -> None:
        """Offsets skipped before and inside the fetch (compaction, transaction markers), for faust's acks."""
        if read is not None and recs[0].offset - read > 1:
            await self._add_gap(tp, read + 1, recs[0].offset - 1)
        if recs[-1].offset - recs[0].offset != len(recs) - 1:  # rare
            offsets = [r.offset for r in recs]
            for a, b in zip(offsets, offsets[1:]):
                if b - a > 1:
                    await self._add_gap(tp, a + 1, b - 1)

    async def on_partitions_revoked(self, revoked) -> None:
        """Finish the batches in flight and commit them while the partitions are still ours.

        faust itself forgets processed-but-uncommitted offsets of revoked partitions before it
        commits, so their next owner would consume them again (and store them a second time, in
        its own database).
        """
        await self.app.before_revoke(set(revoked))
        await self.commit()
        await super().on_partitions_revoked(revoked)
        for tp in revoked:
            self._acked_through.pop(tp, None)

    async def on_partitions_assigned(self, assigned, generation_id: int = 0) -> None:
        await super().on_partitions_assigned(assigned, generation_id)  # seeks to committed offsets
        self.app.record_buffer.resume()

    def ack_through(self, tp: TP, last: int, n: int) -> None:
        """Every record of ``tp`` up to offset ``last`` is processed (``n`` of them new): the worker
        acks its batches in order, so the next commit may take ``last + 1``.

        faust's own ack keeps every offset in a list and a set, and each commit sorts them and
        walks them for the first gap (Python work per record, in the event loop's thread: ~6% of
        the worker's GIL at 100k events/s); a bulk topic keeps only its last acked offset.
        """
        with ack_lock:
            committed = self._committed_offset[tp]
            if (committed is not None and last < committed) or last <= self._acked_through.get(tp, -1):
                return
            self._acked_through[tp] = last
            self._acked[tp]  # (an entry: faust's commit asks _new_offset of the partitions in _acked)
            self._n_acked += n

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit: for a bulk topic the one after its last ack (kept until the partition
        is revoked: a failed commit is tried again with it); faust's own for the others."""
        if tp.topic in self.app.record_buffer.topics:
            last = self._acked_through.get(tp)
            return None if last is None else last + 1
        return super()._new_offset(tp)


class BulkTransport(faust_aiokafka.Transport):
    Consumer = BulkConsumer


async def _no_hook(revoked: set[TP]) -> None:
    return None


class BulkApp(faust.App):
    """A faust app whose consumer hands the records of ``record_buffer.topics`` to that buffer.

    ``before_revoke(revoked)`` runs before a rebalance takes partitions away (the consumer
    commits right after it). ``fetch_wait``: seconds the broker may hold a fetch that finds no
    data (aiokafka's ``fetch_max_wait_ms``; faust's own is 1.5).
    """

    record_buffer: RecordBuffer
    before_revoke: RevokeHook

    def __init__(self, id: str, *, record_buffer: RecordBuffer, before_revoke: RevokeHook = _no_hook,
                 fetch_wait: float = 1.5, **options):
        super().__init__(id, **options)
        self.record_buffer, self.before_revoke, self.fetch_wait = record_buffer, before_revoke, fetch_wait
        _BARE_TOPICS.update(record_buffer.topics)
        aiokafka_fetcher.PartitionRecords._consumer_record = _bare_or_wrapped
        aiokafka_fetcher.FetchResult.getall = _getall_bulk

    def _new_transport(self):
        return BulkTransport(self.conf.broker_consumer, self)
