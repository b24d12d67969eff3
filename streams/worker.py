"""The faust worker: interactions in, micro-batches through the pipeline, lists out.

faust's per-message machinery (a Message, an Event and a task switch for every record) caps an
agent at roughly 13k events/s on two cores (see the README's benchmark). So the hot path hands
faust's fetched records to this worker *in bulk*: :class:`BulkConsumer` keeps faust's consumer,
group membership, rebalancing and offset commits, but its drain loop passes each partition's
fetched records for the interactions topic to a :class:`RecordBuffer` in one call, and acks
offsets in bulk once a batch is durable. Everything else (timers, web views, other topics)
is plain faust.

The agent below says what the stream does::

    while True:
        batch = await buffer.take(batch_size, within)       # micro-batch of raw records
        await run_in_thread(processor.process, batch)        # decode, store, score, publish
        consumer.ack_offsets(batch)                          # faust commits them later
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import faust
import numpy as np
from confluent_kafka import Producer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ack_lock

from streamrec.model.recommender import FallbackRecommender, PopularityRecommender, Recommender
from streamrec.storage.store import EventStore
from streamrec.streams.config import Settings
from streamrec.storage.export import export_new_events
from streamrec.streams.metrics import WorkerMetrics
from streamrec.streams.model_updates import UpdateFollower, ensure_topic
from streamrec.streams.ownership import Ownership
from streamrec.streams.pipeline import BatchProcessor, RawBatch
from streamrec.streams.shadow import Shadow

log = logging.getLogger(__name__)


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


class BulkConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer with a bulk path for the topics of ``app.record_buffer``."""

    async def _drain_messages(self, fetcher) -> None:  # pragma: no cover - exercised end to end
        buffer: RecordBuffer = self.app.record_buffer
        callback = self.callback
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
                read = self._read_offset[tp]
                if read is not None:
                    # faust's read offset is the last record handed over, or after a seek the
                    # committed offset, i.e. the *next* one to read: like faust, keep records
                    # at or above it (skipping that one record lost it at every takeover; a
                    # record seen twice is stored once).
                    if recs[0].offset < read:
                        recs = [r for r in recs if r.offset >= read]
                    if not recs:
                        continue
                    if recs[0].offset - read > 1:
                        await self._add_gap(tp, read + 1, recs[0].offset - 1)
                first, last = recs[0].offset, recs[-1].offset
                if last - first != len(recs) - 1:  # gaps inside a fetch (compaction, markers): rare
                    offsets = [r.offset for r in recs]
                    for a, b in zip(offsets, offsets[1:]):
                        if b - a > 1:
                            await self._add_gap(tp, a + 1, b - 1)
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                if tp.topic in buffer.topics:
                    if not await buffer.put(tp, recs):
                        break  # a rebalance started: fetched again from the committed offset
                else:
                    for r in recs:
                        await callback(self._to_message(tp, r))
                self._read_offset[tp] = last
            if self._commit_every is not None and self._n_acked >= self._commit_every:
                self._n_acked = 0
                await self.commit()

    async def on_partitions_revoked(self, revoked) -> None:
        """Finish the batches in flight and commit them while the partitions are still ours.

        faust itself forgets processed-but-uncommitted offsets of revoked partitions before it
        commits, so their next owner would consume them again (and store them a second time, in
        its own database).
        """
        await self.app.before_revoke(set(revoked))
        await self.commit()
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned, generation_id: int = 0) -> None:
        await super().on_partitions_assigned(assigned, generation_id)  # seeks to committed offsets
        self.app.record_buffer.resume()

    def ack_offsets(self, tp: TP, offsets: list[int]) -> int:
        """Mark offsets of ``tp`` processed, like :meth:`ack` does for one message."""
        with ack_lock:
            committed = self._committed_offset[tp]
            index, acked = self._acked_index[tp], self._acked[tp]
            new = [o for o in offsets if (committed is None or o >= committed) and o not in index]
            index.update(new)
            acked.extend(new)
            self._n_acked += len(new)
            return len(new)


class BulkTransport(faust_aiokafka.Transport):
    Consumer = BulkConsumer


class App(faust.App):
    def _new_transport(self):
        return BulkTransport(self.conf.broker_consumer, self)


def registry_champion(registry: str) -> tuple[str, str] | None:
    """(version, checkpoint directory) of the registry's champion, if it has one."""
    from streamrec.model.registry import Registry

    reg = Registry(registry)
    champion = reg.champion()
    return None if champion is None else (champion, str(reg.path(champion)))


def build_recommender(settings: Settings, store: EventStore) -> Recommender:
    popularity = PopularityRecommender(window=settings.popularity_window)
    popularity.observe(store.recent_items(settings.popularity_window))  # warm after a restart
    checkpoint, version = settings.checkpoint, None
    champion = registry_champion(settings.registry) if settings.registry else None
    if champion is not None:
        version, checkpoint = champion
    if not checkpoint:
        return popularity
    return with_model(checkpoint, popularity, version)


def with_model(checkpoint: str, popularity: PopularityRecommender, version: str | None = None) -> FallbackRecommender:
    """The transformer of ``checkpoint`` with ``popularity`` for users it cannot score.

    ``version``: the registry's name for it (``v2``), carried by lists and metrics.
    """
    from streamrec.model.inference import TransformerRecommender

    model = TransformerRecommender(checkpoint)
    if version is not None:
        model.version = version
    return FallbackRecommender(model, popularity)


def popularity_of(rec: Recommender) -> PopularityRecommender:
    return rec if isinstance(rec, PopularityRecommender) else rec.fallback


def create_app(settings: Settings) -> App:
    app = App(
        settings.group_id,
        broker=f"kafka://{settings.bootstrap_servers}",
        store="memory://",
        web_bind=settings.metrics_host,
        web_port=settings.metrics_port,
        web_host=settings.metrics_host,
        broker_session_timeout=settings.session_timeout,  # Tansu answers JoinGroup after half of it
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.partitions,
        topic_allow_declare=False,
        producer_acks=-1,
        broker_commit_interval=1.0,
        consumer_max_fetch_size=8 * 1024**2,  # per partition: fewer, larger fetches to parse in bulk
    )
    interactions = app.topic(settings.interactions_topic, value_type=bytes, key_type=bytes, acks=True)
    app.record_buffer = RecordBuffer({settings.interactions_topic}, maxsize=4 * settings.batch_size)
    metrics = WorkerMetrics()
    # One thread per stage; each runs its batches in submission order.
    decoder = ThreadPoolExecutor(1, thread_name_prefix="decode")  # validate, dead-letter
    storer = ThreadPoolExecutor(1, thread_name_prefix="store")  # DuckDB (and the Parquet export)
    executor = ThreadPoolExecutor(1, thread_name_prefix="publish")  # model, evaluator, producer
    loader = ThreadPoolExecutor(1, thread_name_prefix="model-loader")  # models, the ownership log
    pending: deque[asyncio.Future] = deque()  # batches stored or publishing, oldest first

    async def drain() -> None:
        """Wait until no batch is in flight (every one published and acked)."""
        while pending:
            await pending.popleft()
    state: dict = {}
    busy = asyncio.Lock()

    app.topics.add(interactions)  # subscribe it: the ingest task reads the buffer, not a stream

    async def before_revoke(revoked: set[TP]) -> None:
        """Called by the consumer before a rebalance takes partitions away."""
        async with busy:  # let batches in flight finish and ack before the partitions go
            await drain()
            dropped = app.record_buffer.pause(revoked)
            if "processor" in state and state["processor"].ownership is not None:
                state["processor"].ownership.reset()  # claim again after the new assignment
        if dropped:
            log.info("rebalance: dropped %d buffered records of revoked partitions", dropped)

    app.before_revoke = before_revoke

    def open_pipeline() -> BatchProcessor:
        store = EventStore(settings.db, seq_len=settings.seq_len)
        state["model_loaded_at"] = int(time.time() * 1000)  # announcements before this are in the registry
        recommender = build_recommender(settings, store)
        metrics.model_info.labels(recommender.name, recommender.version).set(1)
        metrics.store_events.set(store.n_events)
        producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 5,
                             "enable.idempotence": True, "queue.buffering.max.messages": 1_000_000})
        processor = BatchProcessor(settings, store, recommender, producer, metrics)
        processor.ownership = Ownership(store, settings.bootstrap_servers, settings.interactions_topic, settings.group_id)
        metrics.disowned.inc(processor.ownership.refresh())  # what others took over while we were down
        metrics.store_events.set(store.n_events)
        log.info("worker store %s (database %s) owns %d events; recommender %s/%s",
                 settings.db, store.db_id, store.n_events, recommender.name, recommender.version)
        return processor

    @app.task
    async def ingest() -> None:
        """Micro-batches in order through three stage threads: decode n+2 | store n+1 | publish n."""
        loop = asyncio.get_running_loop()
        processor = state["processor"] = await loop.run_in_executor(executor, open_pipeline)
        buffer = app.record_buffer
        while not app.should_stop:
            chunks, arrival = await buffer.take(settings.batch_size, settings.batch_within)
            raw = to_raw_batch(settings.interactions_topic, chunks, arrival)
            decoded = await loop.run_in_executor(decoder, processor.decode, raw)
            async with busy:
                while len(pending) >= 2:  # bounded: at most two batches past decoding
                    await pending.popleft()
                stored = storer.submit(processor.store_batch, raw, decoded)
                published = executor.submit(lambda r=raw, d=decoded, st=stored: processor.publish(r, d, st.result()))
                pending.append(asyncio.ensure_future(ack_when_published(asyncio.wrap_future(published), chunks)))

    async def ack_when_published(published: asyncio.Future, chunks) -> None:
        await published
        consumer = app.consumer
        for tp, recs in chunks:  # durable and published: faust may commit these offsets now
            consumer.ack_offsets(tp, [r.offset for r in recs])
            # The high watermark comes from fetch responses, which Tansu reports correctly
            # (its ListOffsets answer is wrong, so end_offsets() is not used).
            high = consumer.highwater(tp)
            if high is not None:
                metrics.lag.labels(str(tp.partition)).set(max(high - recs[-1].offset - 1, 0))

    @app.timer(interval=10.0)
    async def fence_from_ownership_log() -> None:
        """Disown rows other databases claimed since our own last claim (streams/ownership.py)."""
        if "processor" in state:
            processor, loop = state["processor"], asyncio.get_running_loop()
            # Reading the log takes a consumer round trip: not on the store thread's time.
            claims = await loop.run_in_executor(loader, processor.ownership.log.read)
            n = await loop.run_in_executor(storer, processor.ownership.refresh, claims)
            if n:
                metrics.disowned.inc(n)
                metrics.store_events.set(processor.store.n_events)

    @app.timer(interval=settings.eval_snapshot_seconds)
    async def snapshot_evaluation() -> None:
        """Export online metrics even when the stream is idle (same thread as the batches)."""
        if "processor" in state:
            await asyncio.get_running_loop().run_in_executor(executor, state["processor"].snapshot_evaluation)

    if settings.export_dir:
        @app.timer(interval=settings.export_every)
        async def export_events() -> None:
            """Parquet segments of the log for the retraining job (it never opens our database)."""
            if "processor" in state:
                n = await asyncio.get_running_loop().run_in_executor(
                    storer, export_new_events, state["processor"].store.con, settings.export_dir)
                metrics.exported.inc(n)


    async def follow_shadow(processor: BatchProcessor, update) -> None:
        """Start or stop scoring a candidate beside the champion (streams/shadow.py): loaded in the
        background like a promotion; a failed load is counted and changes nothing."""
        loop = asyncio.get_running_loop()
        current = processor.shadow
        if update.action == "unshadow":
            if current is not None and current.version == update.version:
                await loop.run_in_executor(executor, processor.end_shadow)  # between two batches
                log.info("unshadow: stopped scoring %s: %s", current.version, current.summary())
            return
        if update.version == processor.recommender.version or (current and current.version == update.version):
            return  # serving it already, or scoring it already
        try:
            candidate = await loop.run_in_executor(
                loader, with_model, update.path, popularity_of(processor.recommender), update.version)
            await loop.run_in_executor(loader, ensure_topic, settings.bootstrap_servers, settings.model_evaluations_topic)
        except Exception as e:  # missing or corrupt checkpoint: nothing changes
            metrics.model_loads.labels("failed").inc()
            log.error("shadow: model %s (%s) failed to load; not shadowing it: %s", update.version, update.path, e)
            return
        metrics.model_loads.labels("ok").inc()
        if current is not None:  # a newer candidate replaces the one being compared
            await loop.run_in_executor(executor, processor.end_shadow)
        champion = processor.recommender.version
        # The publish thread reads processor.shadow once per batch: it applies from the next one.
        processor.shadow = Shadow(candidate, champion, settings.model_evaluations_topic)
        log.info("shadow: scoring %s/%s beside champion %s on live traffic; its lists are graded, not published; "
                 "tallies every %.0fs to %s", candidate.name, candidate.version, champion,
                 settings.eval_snapshot_seconds, settings.model_evaluations_topic)

    @app.timer(interval=1.0)
    async def follow_model_updates() -> None:
        """Load announced models in the background; swap between two micro-batches ("promote",
        "rollback") or score them beside the champion ("shadow", until "unshadow" or a swap).

        Only a worker serving a registry follows announcements (they name registry versions);
        one started with a fixed ``--checkpoint`` keeps it.
        """
        if "processor" not in state or not settings.registry:
            return
        if "updates" not in state:
            state["updates"] = await asyncio.get_running_loop().run_in_executor(
                loader, lambda: UpdateFollower(settings.bootstrap_servers, settings.model_updates_topic,
                                               state["model_loaded_at"]))
        for update in state["updates"].poll():
            processor = state["processor"]
            if update.action in ("shadow", "unshadow"):
                await follow_shadow(processor, update)
                continue
            if update.version == processor.recommender.version:
                continue
            shadow = processor.shadow
            if shadow is not None and shadow.version == update.version:
                new = shadow.recommender  # loaded when its shadow began, and scoring since
            else:
                popularity = popularity_of(processor.recommender)
                try:
                    new = await asyncio.get_running_loop().run_in_executor(
                        loader, with_model, update.path, popularity, update.version)
                except Exception as e:  # missing or corrupt checkpoint: keep serving the old model
                    metrics.model_loads.labels("failed").inc()
                    log.error("model %s (%s) failed to load, still serving %s/%s: %s",
                              update.version, update.path, processor.recommender.name, processor.recommender.version, e)
                    continue
                metrics.model_loads.labels("ok").inc()
            async with busy:  # between micro-batches: none is being applied now
                await drain()
                # A shadow compares with the champion being replaced: it ends with it.
                ended = await asyncio.get_running_loop().run_in_executor(executor, processor.end_shadow)
                old = processor.recommender
                processor.recommender = new
            if ended is not None:
                log.info("shadow of %s ended by %s %s: %s", ended.version, update.action, update.version, ended.summary())
            metrics.model_info.labels(old.name, old.version).set(0)
            metrics.model_info.labels(new.name, new.version).set(1)
            log.info("%s: now serving %s/%s (was %s/%s)", update.action, new.name, new.version, old.name, old.version)

    @app.page("/metrics")
    async def metrics_view(web, request):
        return web.bytes(metrics.expose(), content_type="text/plain; version=0.0.4")

    @app.page("/ready")
    async def ready_view(web, request):
        # Ready once the pipeline is open and this worker owns partitions of the topic.
        assigned = [tp for tp in app.consumer.assignment() if tp.topic == settings.interactions_topic]
        ok = "processor" in state and bool(assigned)
        # pid: whoever started us can tell our answer from another process's on the same port.
        return web.json({"ready": ok, "partitions": sorted(tp.partition for tp in assigned), "pid": os.getpid()},
                        status=200 if ok else 503)

    app.streamrec_metrics = metrics
    return app


def to_raw_batch(topic: str, chunks: list[tuple[TP, list]], arrival: float) -> RawBatch:
    recs = [r for _, r_list in chunks for r in r_list]
    return RawBatch(
        topic=topic,
        keys=[r.key for r in recs],
        values=[r.value for r in recs],
        partitions=np.fromiter((r.partition for r in recs), np.int32, len(recs)),
        offsets=np.fromiter((r.offset for r in recs), np.int64, len(recs)),
        timestamps=np.fromiter((r.timestamp for r in recs), np.int64, len(recs)),
        received_at=arrival,
    )


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run a worker until interrupted (SIGINT/SIGTERM)."""
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=loglevel)
    worker.execute_from_commandline()
