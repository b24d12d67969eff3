"""The faust internals ``streams/faust_bulk.py`` relies on still exist, with the same shapes.

If faust-streaming is upgraded and one of these fails, read ``streams/faust_bulk.py`` against
the new faust before changing the expectation here: the bulk path copies faust's drain loop.
"""

import asyncio
import hashlib
import inspect
from collections import defaultdict

import faust
import pytest
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types import tuples as faust_tuples

from streamrec.streams.faust_bulk import FAUST_VERSION, BulkApp, BulkConsumer, BulkTransport, RecordBuffer

# sha256 of faust's own Consumer._drain_messages, which BulkConsumer replaces: a change there may
# be a fix our copy lacks.
DRAIN_SOURCE_SHA256 = "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"


def params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_written_against_the_installed_faust():
    assert faust.__version__ == FAUST_VERSION


def test_faust_drain_loop_unchanged():
    source = inspect.getsource(faust_consumer.Consumer._drain_messages)
    assert hashlib.sha256(source.encode()).hexdigest() == DRAIN_SOURCE_SHA256


def test_private_methods_keep_their_signatures():
    base = faust_aiokafka.Consumer
    assert params(base._drain_messages) == ["self", "fetcher"]
    assert params(base._wait_next_records) == ["self", "timeout"]
    assert params(base._add_gap) == ["self", "tp", "offset_from", "offset_to"]
    assert params(base._to_message) == ["self", "tp", "record"]
    assert params(base.on_partitions_revoked) == ["self", "revoked"]
    assert params(base.on_partitions_assigned) == ["self", "assigned", "generation_id"]
    assert params(base.highwater) == ["self", "tp"]
    assert params(base._new_offset) == ["self", "tp"]
    assert params(base._filter_committable_offsets) == ["self", "tps"]
    assert params(base._filter_tps_with_pending_acks) == ["self", "topics"]
    assert params(faust.App._new_transport) == ["self"]
    assert faust_aiokafka.Transport.Consumer is faust_aiokafka.Consumer
    assert BulkTransport.Consumer is BulkConsumer
    assert hasattr(faust_tuples, "ack_lock") and hasattr(faust_tuples.ack_lock, "__enter__")
    assert faust.App.consumer_generation_id == 0


def test_private_attributes_on_a_built_consumer():
    """Build (not start) a bulk app and its consumer: the attributes the drain loop reads exist."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        app = BulkApp("faust-bulk-check", record_buffer=RecordBuffer({"t"}, 10), broker="kafka://127.0.0.1:1",
                      store="memory://")
        consumer = app.consumer
        assert isinstance(consumer, BulkConsumer)
        for name in ("_read_offset", "_committed_offset", "_acked"):
            assert isinstance(getattr(consumer, name), defaultdict), name
        tp = TP("t", 0)
        assert consumer._read_offset[tp] is None and consumer._committed_offset[tp] is None
        assert consumer._acked[tp] == []
        assert consumer._n_acked == 0
        assert consumer._buffered_partitions == set()
        assert hasattr(consumer, "_commit_every") and hasattr(consumer._stopped, "is_set")
        assert consumer.flow_active is True and callable(consumer.callback)
        assert callable(app.monitor.track_tp_end_offset)
        # The bulk ack keeps the last offset acked; faust's commit asks _new_offset of the
        # partitions in _acked and commits what it returns when it is past the committed offset.
        other = TP("faust-topic", 0)
        consumer._acked[other].extend([7, 8, 10])  # faust's own bookkeeping: commits up to the first gap
        assert consumer._new_offset(other) == 9
        assert consumer._new_offset(tp) is None  # nothing acked yet
        consumer.ack_through(tp, 4, 2)
        consumer.ack_through(tp, 9, 5)
        consumer.ack_through(tp, 6, 3)  # older than what was acked (a retried batch): no change
        assert tp in set(consumer._filter_tps_with_pending_acks())
        assert consumer._new_offset(tp) == 10 and consumer._n_acked == 7
        assert consumer._filter_committable_offsets([tp]) == {tp: 10}
        consumer._committed_offset[tp] = 10  # what faust records once that commit succeeds
        assert consumer._filter_committable_offsets([tp]) == {}
        consumer.ack_through(tp, 8, 1)  # below the committed offset: ignored
        assert consumer._new_offset(tp) == 10
    finally:
        loop.close()
        asyncio.set_event_loop(None)


@pytest.mark.parametrize("n", [2, 5])
def test_record_buffer_takes_at_most_n(n):
    async def run():
        buf = RecordBuffer({"t"}, maxsize=100)
        tp = TP("t", 0)
        assert await buf.put(tp, [1, 2, 3])
        assert await buf.put(tp, [4])
        taken, _ = await buf.take(n, within=0.0)
        return [r for _, recs in taken for r in recs], buf.size

    got, left = asyncio.run(run())
    assert got == [1, 2, 3, 4][:n] and left == 4 - len(got)


def test_record_buffer_pause_drops_revoked_partitions():
    async def run():
        buf = RecordBuffer({"t"}, maxsize=100)
        await buf.put(TP("t", 0), [1, 2])
        await buf.put(TP("t", 1), [3])
        dropped = buf.pause({TP("t", 0)})
        refused = await buf.put(TP("t", 1), [4])
        return dropped, refused, buf.size

    assert asyncio.run(run()) == (2, False, 1)


def test_fetch_wait_reaches_the_aiokafka_consumer():
    """faust hard-codes fetch_max_wait_ms=1500; the bulk consumer thread sets the app's ``fetch_wait``
    where aiokafka's fetcher reads it (``AIOKafkaConsumer.start`` builds the Fetcher from it)."""
    import aiokafka

    assert "fetch_max_wait_ms=1500" in inspect.getsource(faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer)
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    assert params(faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer) == ["self", "transport"]
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        app = BulkApp("faust-bulk-wait", record_buffer=RecordBuffer({"t"}, 10), broker="kafka://127.0.0.1:1",
                      store="memory://", fetch_wait=0.02)
        thread = app.consumer._thread
        assert type(thread).__name__ == "BulkConsumerThread"

        async def build():  # aiokafka builds its consumer inside a running loop
            return thread._create_worker_consumer(app.transport)
        consumer = loop.run_until_complete(build())
        assert isinstance(consumer, aiokafka.AIOKafkaConsumer)
        assert consumer._fetch_max_wait_ms == 20
    finally:
        loop.close()


# sha256 of aiokafka's PartitionRecords._consumer_record, which faust_bulk wraps for the bulk topics.
CONSUMER_RECORD_SOURCE_SHA256 = "e668541600b047ab928a9008b54c00951d9ae7e2a11b82e7b00f3a5d71b0cc0c"


def _build_bulk_app(name: str) -> None:
    """Build (not start) a bulk app for the topic "bulk": what it installs into aiokafka is in place."""
    loop = asyncio.new_event_loop()
    try:
        BulkApp(name, record_buffer=RecordBuffer({"bulk"}, 10), broker="kafka://127.0.0.1:1", loop=loop)
    finally:
        loop.close()


def test_bare_records_for_the_bulk_topics_only():
    """Records of the bulk topics stay aiokafka's fetched-batch records, which carry the four fields
    the bulk path reads; other topics still get aiokafka's ConsumerRecord."""
    import aiokafka
    from aiokafka.consumer import fetcher as aiokafka_fetcher
    from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
    from aiokafka.structs import ConsumerRecord, TopicPartition

    from streamrec.streams import faust_bulk

    assert aiokafka.__version__ == faust_bulk.AIOKAFKA_VERSION
    source = inspect.getsource(faust_bulk._consumer_record)
    assert hashlib.sha256(source.encode()).hexdigest() == CONSUMER_RECORD_SOURCE_SHA256
    assert params(faust_bulk._consumer_record) == ["self", "tp", "record"]
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=2**20)
    builder.append(0, timestamp=1234, key=b"7", value=b'{"user_id": 7}', headers=[])
    record = next(iter(DefaultRecordBatch(bytes(builder.build()))))
    _build_bulk_app("faust-bulk-bare")
    assert aiokafka_fetcher.PartitionRecords._consumer_record is faust_bulk._bare_or_wrapped
    fake = type("Fake", (), {"_key_deserializer": None, "_value_deserializer": None})()
    bare = faust_bulk._bare_or_wrapped(fake, TopicPartition("bulk", 3), record)
    assert bare is record and (bare.offset, bare.timestamp, bare.key, bare.value) == (0, 1234, b"7", b'{"user_id": 7}')
    other = faust_bulk._bare_or_wrapped(fake, TopicPartition("other", 3), record)
    assert isinstance(other, ConsumerRecord) and (other.partition, other.value) == (3, b'{"user_id": 7}')


# sha256 of aiokafka's FetchResult.getall, which faust_bulk replaces for the bulk topics, and of
# PartitionRecords._unpack_records, whose rules faust_bulk._records_of copies per record batch.
GETALL_SOURCE_SHA256 = "3e717e30de5068d549dd41b231928c67a24e832a928d48bac5f485e448daa903"
UNPACK_SOURCE_SHA256 = "b803e6d46480732c7a7faa8e784b338bcdd4e707ea67fba96c013654b04b8a08"


class _Position:
    """The subscription state a FetchResult reads (aiokafka's assignment, reduced to what it asks)."""

    active, paused = True, False

    def __init__(self, position: int):
        self.position = position

    def state_value(self, tp):
        return self

    def consumed_to(self, offset: int) -> None:
        self.position = offset


def _fetch(batches: list[bytes], topic: str, position: int):
    from aiokafka.consumer import fetcher as aiokafka_fetcher
    from aiokafka.record.memory_records import MemoryRecords
    from aiokafka.structs import TopicPartition

    tp = TopicPartition(topic, 0)
    records = aiokafka_fetcher.PartitionRecords(tp, MemoryRecords(b"".join(batches)), [], position, None, None,
                                                True, 0)
    state = _Position(position)
    return aiokafka_fetcher.FetchResult(tp, assignment=state, partition_records=records, backoff=0), state


def _batch(base: int, n: int, control: bool = False) -> bytes:
    from aiokafka.record.default_records import DefaultRecordBatchBuilder
    from aiokafka.record.util import calc_crc32c

    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=int(control), producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=2**20)
    for j in range(n):
        builder.append(j, timestamp=1000 + base + j, key=str(base + j).encode(), value=b'{"v": %d}' % (base + j),
                       headers=[])
    raw = bytearray(builder.build())
    raw[0:8] = base.to_bytes(8, "big", signed=True)  # the batch's base offset
    if control:  # attributes bit 5: a control batch (transaction markers), never handed to consumers
        raw[21:23] = (int.from_bytes(raw[21:23], "big") | 0x20).to_bytes(2, "big")
        raw[17:21] = calc_crc32c(bytes(raw[21:])).to_bytes(4, "big")  # the CRC covers the attributes on
    return bytes(raw)


def test_bulk_getall_takes_what_aiokafka_takes():
    """For a bulk topic, a fetch's records a record batch at a time are the records aiokafka's own
    getall returns, in order, with the same position after: batches after a control batch, a fetch
    position inside the first batch; ``max_records`` or a fetch already read one by one go through
    aiokafka's own. The copied and replaced aiokafka code is unchanged."""
    from aiokafka.consumer import fetcher as aiokafka_fetcher

    from streamrec.streams import faust_bulk

    assert hashlib.sha256(inspect.getsource(faust_bulk._getall).encode()).hexdigest() == GETALL_SOURCE_SHA256
    source = inspect.getsource(aiokafka_fetcher.PartitionRecords._unpack_records)
    assert hashlib.sha256(source.encode()).hexdigest() == UNPACK_SOURCE_SHA256
    _build_bulk_app("faust-bulk-getall")
    assert aiokafka_fetcher.FetchResult.getall is faust_bulk._getall_bulk
    batches = [_batch(0, 40), _batch(40, 3, control=True), _batch(43, 25), _batch(68, 1)]
    fields = lambda recs: [(r.offset, r.timestamp, r.key, r.value) for r in recs]  # noqa: E731
    for position in (0, 17):
        bulk, bulk_state = _fetch(batches, "bulk", position)
        mine = bulk.getall()
        assert bulk._partition_records is None  # drained: aiokafka fetches again
        theirs, their_state = _fetch(batches, "other", position)  # not a bulk topic: aiokafka's own getall
        expected = faust_bulk._getall(theirs)
        assert fields(mine) == fields(expected)
        assert [r.offset for r in mine] == list(range(position, 40)) + list(range(43, 69))
        assert bulk_state.position == their_state.position == 69
    limited, state = _fetch(batches, "bulk", 0)
    assert [r.offset for r in limited.getall(max_records=5)] == [0, 1, 2, 3, 4] and state.position == 5
    started, state = _fetch(batches, "bulk", 0)
    assert started.getone().offset == 0
    assert [r.offset for r in started.getall()] == list(range(1, 40)) + list(range(43, 69))
