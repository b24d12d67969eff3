"""The faust worker: interactions in, micro-batches through the pipeline, lists out.

The hot path takes faust's fetched records in bulk (``streams/faust_bulk.py``: faust's
per-message machinery would cap it at ~13k events/s); everything else is plain faust: one
:class:`Worker` holds the state, and its methods are the app's task, timers and pages::

    app.task(worker.ingest)                          # micro-batches: decode | store | publish
    app.timer(10.0)(worker.fence_from_ownership_log)  # rows other workers took over
    app.timer(eval_snapshot_seconds)(worker.snapshot_evaluation)
    app.timer(export_every)(worker.export_events)     # Parquet segments for retraining
    app.timer(1.0)(worker.follow_model_updates)       # promotions, rollbacks, shadows
    app.timer(ANNOUNCE_EVERY)(worker.announce_address)  # so peers can forward list requests
    app.page("/metrics"), app.page("/ready"), GET /recommendations/{user_id} (streams/latest_lists.py)

The ingest task says what the stream does::

    while True:
        chunks = await buffer.take(batch_size, within)          # micro-batch of raw records
        decoded = await decode thread(processor.decode, raw)    # validate, dead-letter
        stored = store thread(processor.store_batch, ...)      # DuckDB: durable
        published = publish thread(processor.publish, ...)      # grade, score, publish, flush
        then consumer.ack_through(...)                           # faust commits them later
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import faust
from confluent_kafka import Producer
from faust.types import TP

from streamrec.storage.evaluation_log import export_evaluation
from streamrec.storage.export import export_new_events
from streamrec.storage.store import EventStore
from streamrec.streams.config import Settings, kafka_config
from streamrec.streams.decoder import DecodeProcess
from streamrec.streams.events import Contract
from streamrec.streams.faust_bulk import BulkApp, RecordBuffer
from streamrec.streams.health import (
    BrokerMonitor,
    Health,
    Skipped,
    StageFailed,
    describe,
    fatal,
    quiet_kafka_client_logs,
)
from streamrec.streams.latest_lists import (
    ANNOUNCE_EVERY,
    LatestLists,
    Peers,
    add_views,
    ensure_workers_topic,
    web_address,
)
from streamrec.streams.model_switch import ModelSwitch
from streamrec.streams.ownership import Ownership, owners_topic
from streamrec.streams.pipeline import BatchProcessor, RawBatch, to_raw_batch, without_revoked
from streamrec.streams.prometheus import WorkerMetrics
from streamrec.streams.warm_up import warm_up

log = logging.getLogger(__name__)


def make_app(settings: Settings, buffer: RecordBuffer, worker: "Worker") -> BulkApp:
    conf = dict(
        store="memory://",
        datadir=str(settings.faust_datadir()),  # beside the DuckDB file, not in the working directory
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
    conf.update(kafka_config("faust", settings))  # broker, client id, credentials of --kafka-config
    return BulkApp(settings.group_id, record_buffer=buffer, before_revoke=worker.before_revoke,
                   fetch_wait=settings.fetch_wait, **conf)


class Worker:
    """One worker process: its faust app, its pipeline and the threads that run it."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = WorkerMetrics()
        self.buffer = RecordBuffer({settings.interactions_topic}, maxsize=4 * settings.batch_size)
        self.app = make_app(settings, self.buffer, self)
        # One thread per stage; each runs its batches in submission order.
        self.decoder = ThreadPoolExecutor(1, thread_name_prefix="decode")  # validate, dead-letter
        self.storer = ThreadPoolExecutor(1, thread_name_prefix="store")  # DuckDB (and the Parquet export)
        self.publisher = ThreadPoolExecutor(1, thread_name_prefix="publish")  # model, evaluator, producer
        self.loader = ThreadPoolExecutor(1, thread_name_prefix="model-loader")  # models, the ownership log
        self.pending: deque[asyncio.Future] = deque()  # batches stored or publishing, oldest first
        self.busy = asyncio.Lock()  # held while a batch is handed to the stage threads
        self.revocations: list[set[TP]] = []  # the partitions each rebalance took away, in order
        self.processor: BatchProcessor | None = None  # opened by the ingest task
        self.health = Health(settings, self.metrics)  # failures: retries, /ready, fatal exit (streams/health.py)
        quiet_kafka_client_logs()  # a broker outage: one line per kind of error per 10 s, not 50 a second
        for topic in (owners_topic(settings.interactions_topic), settings.model_updates_topic):
            self.metrics.skipped_records.labels(topic)  # exported at 0 from the start
        self.healthy = asyncio.Event()  # cleared while a failed batch is being retried
        self.healthy.set()
        self.last_batch: asyncio.Future | None = None  # the newest batch's completion
        self._skipped_seen: dict[str, int] = {}
        self.models = ModelSwitch(settings, self.metrics, self.loader, self.publisher, self.between_batches)
        self.latest = LatestLists()  # each user's latest list, for /recommendations/{user_id}
        self.peers: Peers | None = None  # the group's other workers, who answer for their users
        self.web = web_address(settings.metrics_host, settings.metrics_port)  # /metrics, /recommendations
        self._register()

    def _register(self) -> None:
        app, s = self.app, self.settings
        app.topics.add(app.topic(s.interactions_topic, value_type=bytes, key_type=bytes, acks=True))  # subscribe it:
        # the ingest task reads the buffer, not a stream
        app.task(self.ingest)
        app.timer(interval=10.0)(self.fence_from_ownership_log)
        app.timer(interval=s.eval_snapshot_seconds)(self.periodic(self.snapshot_evaluation))
        if s.export_dir:
            app.timer(interval=s.export_every)(self.periodic(self.export_events))
        app.timer(interval=1.0)(self.periodic(self.follow_model_updates))
        app.page("/metrics")(self.metrics_page)
        app.page("/ready")(self.ready_page)
        add_views(app, s, self.latest, lambda: self.peers.live() if self.peers else [], self.assigned_partitions)
        app.timer(interval=ANNOUNCE_EVERY)(self.periodic(self.announce_address))

    def periodic(self, job):
        """A timer's job that fails (the broker away, a full disk) is tried again at its next tick:
        an exception in a faust timer would end the worker (the 30 s ownership read once did)."""
        @functools.wraps(job)
        async def tick() -> None:
            try:
                await job()
            except Exception as e:
                if self.health.problem is None:  # else the problem is reported already, at its pace
                    log.warning("%s failed (tried again at its next tick): %s", job.__name__, describe(e))
        return tick

    async def _run(self, executor: ThreadPoolExecutor, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    # --- the pipeline -----------------------------------------------------------------------------

    def open_pipeline(self) -> BatchProcessor:
        s, metrics = self.settings, self.metrics
        if s.checkpoint or s.registry:  # a transformer will score, in this (the publish) thread
            import torch

            # torch's default (one thread per core) made SASRec 2.5x slower in the worker than alone:
            # its threads and the stage threads took the same two cores (docs/benchmarks.md).
            torch.set_num_threads(s.torch_threads)
        warm_up()  # the compiled kernels, before the first batch (streams/warm_up.py)
        store = EventStore(s.db, seq_len=s.seq_len, max_users=s.sequence_users)
        recommender = self.models.first_model(store)
        # Lists and dead letters wait out a broker outage as long as the worker does (librdkafka's
        # default of 300 s would drop them just as a five-minute outage ends).
        hold_ms = min(int((s.broker_outage_limit + 60) * 1000), 2**31 - 1)
        # Delivery reports only for failures: a Python callback per list cost ~1 us of GIL each.
        producer = Producer(kafka_config("producer", s, {"linger.ms": 5, "enable.idempotence": True,
                                                         "queue.buffering.max.messages": 1_000_000,
                                                         "message.timeout.ms": hold_ms,
                                                         "delivery.report.only.error": True}))
        ownership = Ownership(store, s.bootstrap_servers, s.interactions_topic, s.group_id,
                              Contract(int(s.max_event_skew * 1000), s.allow_null_keys), s.export_dir)
        metrics.disowned.inc(ownership.refresh())  # what others took over while we were down
        metrics.store_events.set(store.n_events)
        log.info("worker store %s (database %s) owns %d events; recommender %s/%s; web (metrics, lists) %s", s.db,
                 store.db_id, store.n_events, recommender.name, recommender.version, self.web)
        processor = BatchProcessor(s, store, recommender, producer, metrics, ownership, self.latest)
        processor.decoder = DecodeProcess(processor.contract) if s.decode_process else None  # (a child process)
        return processor

    async def ingest(self) -> None:
        """Micro-batches in order through three stage threads: decode n+2 | store n+1 | publish n."""
        s = self.settings
        self.health.broker = BrokerMonitor(kafka_config("admin", s), s.broker_outage_limit, self.metrics)
        self.health.broker.start()
        processor = self.processor = await self._run(self.publisher, self.open_pipeline)
        tune_garbage_collector(s.gc_young)  # the long-lived objects are loaded now
        guarded = self.health.guarded
        while not self.app.should_stop:
            rebalances = len(self.revocations)
            chunks, arrival = await self.buffer.take(s.batch_size, s.batch_within)
            raw = to_raw_batch(s.interactions_topic, chunks, arrival)
            decoded = await self.health.with_retries("decode", lambda r=raw: self._run(self.decoder, processor.decode,
                                                                                       r))
            async with self.busy:
                if len(self.revocations) > rebalances:
                    # Partitions were taken away while this batch was decoded: their records now
                    # belong to the next owner, who consumes them from the committed offset.
                    chunks, raw, decoded = without_revoked(chunks, raw, decoded, self.revocations[rebalances:])
                    if not chunks:
                        continue
                while len(self.pending) >= 2:  # bounded: at most two batches past decoding
                    await self.pending.popleft()
                await self.healthy.wait()  # no new batch while a failed one is retried
                stored = self.storer.submit(guarded, "store", processor.store_batch, raw, decoded)

                def publish(r=raw, d=decoded, st=stored):
                    result = st.result()  # the store's own failure (or Skipped) first
                    return guarded("publish", processor.publish, r, d, result)
                published = self.publisher.submit(publish)
                done = asyncio.ensure_future(self.complete(self.last_batch, asyncio.wrap_future(published), raw,
                                                           decoded, chunks))
                done.add_done_callback(self._exit_on_error)
                self.pending.append(done)
                self.last_batch = done

    async def complete(self, previous: asyncio.Future | None, published: asyncio.Future, raw: RawBatch,
                       decoded, chunks: list[tuple[TP, list]]) -> None:
        """Ack a batch once published; a failed one is retried first, in batch order."""
        error = None
        try:
            await published
        except Exception as e:
            error = e
            self.healthy.clear()  # seen now, not when more batches arrive
            if not isinstance(e, Skipped):
                self.health.count_failure(e)
        if previous is not None:
            await previous  # an earlier batch is acked (or retried) first
        if error is not None:
            processor = self.processor

            async def again():  # the same threads as always: each stage's state stays in one thread
                try:
                    # Its dead letters again: a failed flush may have lost them (the DLQ is at least once).
                    await self._run(self.decoder, processor.dead_letter_all, raw, decoded, False)
                    stored = await self._run(self.storer, processor.store_batch, raw, decoded)
                except Exception as e:
                    raise StageFailed("store", e) from e
                try:
                    await self._run(self.publisher, processor.publish, raw, decoded, stored)
                except Exception as e:
                    raise StageFailed("publish", e) from e
            await self.health.with_retries("batch (store, publish)", again, first_error=error)
            if asyncio.current_task() is self.last_batch:  # no batch behind it: carry on
                self.health.halted = False
                self.health.stage_problem = None
                self.healthy.set()
        self.ack(chunks)

    def _exit_on_error(self, done: asyncio.Future) -> None:
        """A batch's completion that raised (a bug in the retry path itself) must not go unnoticed."""
        if not done.cancelled() and done.exception() is not None:
            if self.app.should_stop:
                log.warning("batch not acked at shutdown: %s", describe(done.exception()))
            else:
                fatal(f"batch completion failed: {describe(done.exception())}")

    def ack(self, chunks: list[tuple[TP, list]]) -> None:
        consumer = self.app.consumer
        for tp, recs in chunks:  # durable and published: faust may commit these offsets now
            consumer.ack_through(tp, recs[-1].offset, len(recs))  # (batches are acked in order)
            # The high watermark comes from fetch responses, which Tansu reports correctly
            # (its ListOffsets answer is wrong, so end_offsets() is not used).
            high = consumer.highwater(tp)
            if high is not None:
                self.metrics.lag.labels(str(tp.partition)).set(max(high - recs[-1].offset - 1, 0))

    async def drain(self) -> None:
        """Wait until no batch is in flight (every one published and acked)."""
        while self.pending:
            await self.pending.popleft()

    @contextlib.asynccontextmanager
    async def between_batches(self):
        """No batch is in flight while the body runs, and none starts."""
        async with self.busy:
            await self.drain()
            yield

    async def before_revoke(self, revoked: set[TP]) -> None:
        """Called by the consumer before a rebalance takes partitions away."""
        async with self.between_batches():  # batches in flight finish and ack before the partitions go
            self.revocations.append(set(revoked))
            dropped = self.buffer.pause(revoked)
            if self.processor is not None:
                self.processor.ownership.reset()  # claim again after the new assignment
        if dropped:
            log.info("rebalance: dropped %d buffered records of revoked partitions", dropped)

    # --- timers ------------------------------------------------------------------------------------

    async def fence_from_ownership_log(self) -> None:
        """Disown rows other databases claimed since our own last claim (streams/ownership.py).

        Periodic: a failure (the broker away, the log unreadable) is logged and tried again at the
        next tick; it must not end the worker, as the 30 s read timeout once did."""
        if self.processor is None or self.health.problem is not None:
            return
        ownership = self.processor.ownership
        try:
            # Reading the log takes a consumer round trip: not on the store thread's time.
            claims = await self._run(self.loader, ownership.log.read)
            n = await self._run(self.storer, ownership.refresh, claims)
        except Exception as e:
            log.warning("ownership log not read (tried again in 10 s): %s", describe(e))
            return
        finally:
            self._count_skipped()
        if n:
            self.metrics.disowned.inc(n)
            self.metrics.store_events.set(self.processor.store.n_events)

    def _count_skipped(self) -> None:
        """Records of the control topics that did not decode, into the metric."""
        sources = [(self.processor.ownership.log.topic, self.processor.ownership.log.skipped)]
        if self.models.updates is not None:
            sources.append((self.settings.model_updates_topic, self.models.updates.skipped))
        for topic, n in sources:
            if n > self._skipped_seen.get(topic, 0):
                self.metrics.skipped_records.labels(topic).inc(n - self._skipped_seen.get(topic, 0))
                self._skipped_seen[topic] = n

    async def snapshot_evaluation(self) -> None:
        """Export online metrics even when the stream is idle (same thread as the batches)."""
        if self.processor is not None:
            await self._run(self.publisher, self.processor.snapshot_evaluation)

    async def export_events(self) -> None:
        """Parquet segments of the log for the retraining job (it never opens our database)."""
        if self.processor is not None:
            n = await self._run(self.storer, export_new_events, self.processor.store.con, self.settings.export_dir)
            self.metrics.exported.inc(n)
            # ``streamrec report --export-dir`` reads this while we hold the database.
            await self._run(self.storer, export_evaluation, self.processor.store.con, self.settings.export_dir)

    async def announce_address(self) -> None:
        """Tell the group's other workers our web address; hear theirs (streams/latest_lists.py)."""
        s = self.settings
        if self.peers is None:
            self.latest.warm_in_background(s.bootstrap_servers, s.recommendations_topic)  # lists from before we started
            topic = f"{s.group_id}.workers"
            await self._run(self.loader, ensure_workers_topic, s, topic)
            self.peers = await self._run(self.loader, Peers, s.bootstrap_servers, topic, self.web)
        await self._run(self.loader, self.peers.announce_and_read)

    def assigned_partitions(self) -> set[int]:
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.settings.interactions_topic}

    async def follow_model_updates(self) -> None:
        """Load announced models in the background; swap between two micro-batches ("promote",
        "rollback") or score them beside the champion ("shadow", until "unshadow" or a swap)."""
        if self.processor is not None:
            await self.models.follow(self.processor)

    # --- pages (faust calls a bound method with the request only) -----------------------------------

    async def metrics_page(self, request):
        return self.app.web.bytes(self.metrics.expose(), content_type="text/plain; version=0.0.4")

    async def ready_page(self, request):
        """Ready once the pipeline is open and this worker owns partitions of the topic, and while
        it can make progress (no batch failing, the broker reachable); else 503 with the reason.
        ``pid``: whoever started us can tell our answer from another process's on the same port."""
        assigned = [tp for tp in self.app.consumer.assignment() if tp.topic == self.settings.interactions_topic]
        problem = self.health.problem
        ok = self.processor is not None and bool(assigned) and problem is None
        body = {"ready": ok, "partitions": sorted(tp.partition for tp in assigned), "pid": os.getpid()}
        if problem is not None:
            body["reason"] = problem
        return self.app.web.json(body, status=200 if ok else 503)


def tune_garbage_collector(young: int) -> None:
    """Keep Python's cycle collector from stalling the stream.

    Every record allocates objects that die young (Kafka records, events, lists), and with Python's
    default thresholds (700, 10, 10) a full collection ran every ~1.5 s and walked every object the
    worker holds, with the GIL held: 49 collections took 7.8 s of a 45 s run of 3M events (docs/
    benchmarks.md#store). What is loaded by now (modules, faust, the store's indexes, the model)
    lives as long as the worker, so it is frozen out of all later collections, and the young
    generation is collected every ``young`` allocations; cycles are still collected, less often.
    """
    gc.freeze()
    gc.set_threshold(young, 10, 10)


def create_app(settings: Settings) -> BulkApp:
    """The faust app of a worker (its :class:`Worker` is reachable only through the app's handlers)."""
    return Worker(settings).app


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run a worker until interrupted (SIGINT/SIGTERM)."""
    faust.Worker(create_app(settings), loglevel=loglevel).execute_from_commandline()
