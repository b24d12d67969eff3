"""One micro-batch through the pipeline: decode, dead-letter, store, score, publish.

This is the heavy work of the worker, in three stages (``decode``, ``store_batch``, ``publish``)
that the worker runs in three threads off the event loop. It knows nothing of faust: it takes
raw Kafka records, and ``publish`` returns when everything the batch produced is delivered, so
the caller may then commit the batch's offsets.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import TYPE_CHECKING

import msgspec
import numpy as np
from confluent_kafka import Producer

from streamrec.model.exposure import Exposure
from streamrec.model.online import OnlineEvaluator
from streamrec.model.prequential import NO_LIST
from streamrec.model.recommender import Recommendations, Recommender
from streamrec.storage.batch import EventBatch
from streamrec.storage.evaluation_log import write_snapshot
from streamrec.storage.store import AppendResult, EventStore
from streamrec.streams.config import Settings
from streamrec.streams.dead_letters import conflicts, dead_letter
from streamrec.streams.decoder import DecodeProcess
from streamrec.streams.events import Contract, decode_batch
from streamrec.streams.list_encoder import ListColumns, encode_lists
from streamrec.streams.ownership import Ownership
from streamrec.streams.prometheus import WorkerMetrics, observe_many, reject_class, stage_start

if TYPE_CHECKING:
    from faust.types import TP

    from streamrec.streams.latest_lists import LatestLists
    from streamrec.streams.shadow_topic import Shadow

log = logging.getLogger(__name__)


@dataclass
class RawBatch:
    """Records of a micro-batch as taken from Kafka, in consumption order."""

    topic: str
    keys: list[bytes | None]
    values: list[bytes | None]
    partitions: np.ndarray  # int32
    offsets: np.ndarray  # int64
    timestamps: np.ndarray  # int64 ms, Kafka record timestamps
    received_at: float  # wall time (s) the first record reached the worker

    def __len__(self) -> int:
        return len(self.values)


def to_raw_batch(topic: str, chunks: list[tuple[TP, list]], arrival: float) -> RawBatch:
    """``chunks``: (partition, its records) as the consumer fetched them; a record has ``offset``,
    ``timestamp``, ``key`` and ``value`` (aiokafka's bare record, see streams/faust_bulk.py)."""
    recs = chunks[0][1] if len(chunks) == 1 else [r for _, r_list in chunks for r in r_list]
    column = lambda name: map(attrgetter(name), recs)  # noqa: E731 - (C-level passes, in the event loop's thread)
    return RawBatch(
        topic=topic,
        keys=list(column("key")),
        values=list(column("value")),
        partitions=np.repeat(np.array([tp.partition for tp, _ in chunks], np.int32), [len(r) for _, r in chunks]),
        offsets=np.fromiter(column("offset"), np.int64, len(recs)),
        timestamps=np.fromiter(column("timestamp"), np.int64, len(recs)),
        received_at=arrival,
    )


def without_revoked(chunks: list[tuple[TP, list]], raw: RawBatch, decoded: EventBatch,
                    revocations: list[set[TP]]) -> tuple[list[tuple[TP, list]], RawBatch, EventBatch]:
    """The batch less the records of partitions revoked since it was taken."""
    revoked = set().union(*revocations)
    if not any(tp in revoked for tp, _ in chunks):
        return chunks, raw, decoded
    kept = [(tp, recs) for tp, recs in chunks if tp not in revoked]
    gone = np.array(sorted(tp.partition for tp, _ in chunks if tp in revoked), np.int32)
    keep = ~np.isin(raw.partitions, gone)
    rows = np.flatnonzero(keep)
    raw = replace(raw, keys=[raw.keys[i] for i in rows.tolist()],
                              values=[raw.values[i] for i in rows.tolist()], partitions=raw.partitions[rows],
                              offsets=raw.offsets[rows], timestamps=raw.timestamps[rows])
    return kept, raw, decoded.without_inputs(keep)


@dataclass
class Stored:
    """What stage 2 hands to stage 3: the append result, and per user to score (sorted), the
    model inputs and the event that triggers the list."""

    result: AppendResult
    users: np.ndarray
    sequences: list[np.ndarray]
    seen: list[np.ndarray]
    trigger_time: np.ndarray  # event time, ms
    trigger_ts: np.ndarray  # Kafka timestamp, ms
    trigger_partition: np.ndarray
    trigger_offset: np.ndarray
    stored_at: float = 0.0  # wall time (s) the batch was durable


class BatchProcessor:
    def __init__(self, settings: Settings, store: EventStore, recommender: Recommender,
                 producer: Producer, metrics: WorkerMetrics, ownership: Ownership, latest: LatestLists | None = None):
        self.settings, self.store, self.recommender = settings, store, recommender
        self.producer, self.metrics = producer, metrics
        self._encode = msgspec.json.Encoder().encode
        # Grades every stored event against the list its user was shown before it.
        self.evaluator = OnlineEvaluator(time_scale=1000)  # event times are in ms
        self.exposure = Exposure()  # coverage and Gini of the published lists, per model
        self._next_snapshot = time.time() + settings.eval_snapshot_seconds
        self._eval_con = store.con.cursor()
        self._delivery_errors: list[str] = []
        self.ownership = ownership  # which partitions' rows this database holds (scale-out)
        self.shadow: Shadow | None = None  # a candidate scored beside the champion; the worker sets it
        self.latest = latest  # delivered lists per user, for GET /recommendations (none: not kept)
        self._sent: list[tuple[int, bytes]] = []  # this batch's lists, for ``latest`` once delivered
        self.contract = Contract(int(settings.max_event_skew * 1000), settings.allow_null_keys)
        self.decoder: DecodeProcess | None = None  # the worker sets one (settings.decode_process)
        self._cache_totals = (0, 0)  # the store's evictions and sequence reads already counted

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self._delivery_errors.append(str(err))

    def _flush(self) -> None:
        remaining = self.producer.flush(30)
        if remaining or self._delivery_errors:
            errors, self._delivery_errors = self._delivery_errors, []
            # Raising keeps the batch un-acked: it will be consumed again (idempotently).
            raise RuntimeError(f"{remaining} messages undelivered; errors: {errors[:3]}")

    def decode(self, raw: RawBatch) -> EventBatch:
        """Stage 1 (pure Python): validate, and dead-letter what is invalid.

        The worker runs the three stages in three threads, so decoding batch n+2, storing n+1
        and publishing n overlap (DuckDB, NumPy and librdkafka release the GIL); with a
        ``decoder`` (streams/decoder.py) the decoding itself runs in a child process, and this
        thread only waits for it. Dead letters are delivered by the ``publish`` of this batch.
        """
        m = self.metrics
        started = stage_start()
        m.consumed.inc(len(raw))
        m.batch_size.observe(len(raw))
        if self.decoder is not None:  # in the child process: the worker's GIL is for the other stages
            batch = self.decoder.decode(raw.values, raw.keys, raw.timestamps, raw.partitions, raw.offsets)
        else:
            batch = decode_batch(raw.values, raw.keys, raw.timestamps, self.contract, raw.partitions, raw.offsets)
        self.dead_letter_all(raw, batch)
        m.stage_done("decode", started)  # (its CPU: this thread's; the decoder child's is not counted)
        return batch

    def dead_letter_all(self, raw: RawBatch, batch: EventBatch, count: bool = True) -> None:
        """The batch's rejected records to the DLQ (again, uncounted, when the worker retries a failed batch)."""
        for i, reason in batch.rejected:
            self._dead_letter(raw, i, reason, count)

    def _dead_letter(self, raw: RawBatch, i: int, reason: str, count: bool = True) -> None:
        """Copy record ``i`` to the DLQ (delivered by this batch's ``publish``, before its commit)."""
        key, value, headers = dead_letter(raw.topic, raw.partitions[i], raw.offsets[i], raw.keys[i], raw.values[i],
                                          reason)
        try:
            self.producer.produce(self.settings.dlq_topic, value=value, key=key, headers=headers,
                                  on_delivery=self._on_delivery)
        except BufferError:  # local queue full: wait for deliveries, then retry once
            self.producer.poll(1)
            self.producer.produce(self.settings.dlq_topic, value=value, key=key, headers=headers,
                                  on_delivery=self._on_delivery)
        if count:
            self.metrics.rejected.labels(reject_class(reason)).inc()
            log.warning("rejected %s[%d]@%d: %s", raw.topic, raw.partitions[i], raw.offsets[i], reason)

    def store_batch(self, raw: RawBatch, batch: EventBatch) -> "Stored":
        """Stage 2: the batch into DuckDB (durable when this returns), and the model inputs of
        its users taken from the store's memory, so stage 3 of this batch can run while stage 2
        of the next one changes that memory."""
        m = self.metrics
        self._claim(raw)  # partitions new since the last rebalance: claim, recover
        started = stage_start()
        idx = batch.index
        result = self.store.append(batch)
        t_stored = m.stage_done("store", started)
        for j, reason in conflicts(self.store, batch, result.new_mask):
            self._dead_letter(raw, int(idx[j]), reason)
            result.new_mask[j] = False  # (already False: a conflict is never stored)
            batch.conflicts += 1
        m.stored.inc(result.n_new)
        m.store_events.set(self.store.n_events)
        self._export_cache()
        m.duplicates.inc(len(batch) - result.n_new - batch.conflicts)
        m.stage_latency.labels("stored").observe(t_stored - raw.received_at)
        # Every user with a valid event in the batch gets a list, triggered by their newest event
        # (max event time, then offset). Users whose events were all redeliveries too: after a
        # crash between storing and publishing, that is how their list still gets out.
        order = np.lexsort((raw.offsets[idx], batch.event_time, batch.user))
        users_sorted = batch.user[order]
        last = np.flatnonzero(np.append(users_sorted[1:] != users_sorted[:-1], True)) if len(order) else order
        # (no valid event in the batch, e.g. a burst of bad messages: no user, nothing to score)
        pick = lambda col: col[order][last]  # noqa: E731
        users = users_sorted[last]
        user_list = users.tolist()
        return Stored(result, users, self.store.sequences(user_list), self.store.seen(user_list),
                      pick(batch.event_time), pick(raw.timestamps[idx]), pick(raw.partitions[idx]),
                      pick(raw.offsets[idx]), t_stored)

    def _export_cache(self) -> None:
        users, evicted, read = self.store.sequence_cache()
        self.metrics.sequence_users.set(users)
        self.metrics.sequence_evictions.inc(evicted - self._cache_totals[0])
        self.metrics.sequence_reads.inc(read - self._cache_totals[1])
        self._cache_totals = (evicted, read)

    def _claim(self, raw: RawBatch) -> None:
        own, m = self.ownership, self.metrics
        t0, recovered, fenced = time.time(), own.recovered_events, own.fenced_events
        claimed = own.ensure(raw.partitions, raw.offsets)
        if claimed:
            m.partition_claims.inc(len(claimed))
            m.recovered.inc(own.recovered_events - recovered)
            m.disowned.inc(own.fenced_events - fenced)
            m.recovery_seconds.observe(time.time() - t0)
            m.store_events.set(self.store.n_events)

    def publish(self, raw: RawBatch, batch: EventBatch, stored: "Stored") -> None:
        """Stage 3: grade, score, publish, flush; batches must come in the order they were stored."""
        m = self.metrics
        shadow = self.shadow  # read once: the worker may start or end a shadow between two batches
        result, idx = stored.result, batch.index
        if result.n_new:
            new = result.new_mask
            order = np.lexsort((raw.offsets[idx][new], batch.event_time[new]))  # event time, then arrival
            users, items, times = batch.user[new][order], batch.item[new][order], batch.event_time[new][order]
            self.recommender.observe(items, users)
            self.exposure.observe_events(items)
            # Prequential: graded against lists of earlier batches, before this batch's lists exist.
            graded = self.evaluator.score_events(users, items, times)
            if shadow is not None:  # the same events against the candidate's lists: paired
                shadow.comparison.score_events(graded, users, items, times)
            m.last_event_time.set(float(batch.event_time[new].max()) / 1000)
        if len(stored.users):
            recs = self._score_and_publish(stored, raw)
            self.evaluator.record_lists(stored.users, recs.items, stored.trigger_time, recs.models, recs.versions)
            self.exposure.update(recs.items, recs.models)
            if shadow is not None:
                self._score_shadow(shadow, stored)
        if time.time() >= self._next_snapshot:
            self.snapshot_evaluation()
        started = stage_start()
        self._flush()  # DLQ records and lists delivered before the caller commits offsets
        if self.latest is not None:
            self.latest.put_many(self._sent)
        self._sent = []
        t_done = m.stage_done("publish", started)
        m.stage_latency.labels("published").observe(t_done - raw.received_at)
        observe_many(m.freshness, np.maximum(t_done - stored.trigger_ts / 1000.0, 0.0))

    def snapshot_evaluation(self) -> None:
        """Online metrics to the Prometheus gauges and the DuckDB ``evaluation`` table; while a
        candidate is shadowed, its paired tally to the gauges and the evaluations topic."""
        rows = self.evaluator.snapshot()
        self.metrics.set_online(rows)
        self.metrics.set_exposure(self.exposure)
        if self.evaluator.watermark != NO_LIST and rows:  # NO_LIST: nothing scored yet
            # Its own cursor: stage 2 may be writing events on the store's connection meanwhile.
            write_snapshot(self._eval_con, rows, int(self.evaluator.watermark), self.evaluator.time_scale)
        shadow = self.shadow
        if shadow is not None:
            self._report_shadow(shadow)
        self._next_snapshot = time.time() + self.settings.eval_snapshot_seconds

    def _score_and_publish(self, stored: "Stored", raw: RawBatch) -> Recommendations:
        """Score the batch's users once and queue one list per user."""
        m, s = self.metrics, self.settings
        started = stage_start()
        recs = self.recommender.recommend(stored.sequences, stored.seen, s.top_k)
        t_scored = m.stage_done("score", started)
        m.inference_seconds.observe(t_scored - started[0])
        m.stage_latency.labels("scored").observe(t_scored - raw.received_at)
        m.users_scored.inc(len(stored.users))
        user_list = stored.users.tolist()
        columns = ListColumns(stored.users, recs.items, recs.scores, recs.models, recs.versions, stored.trigger_time,
                              stored.trigger_ts, stored.trigger_partition, stored.trigger_offset,
                              int(time.time() * 1000), int(raw.received_at * 1000), int(stored.stored_at * 1000))
        values = encode_lists(columns)
        keys = stored.users.astype("S20").tolist()  # the user ids as decimal text
        produce, topic, on_delivery = self.producer.produce, s.recommendations_topic, self._on_delivery
        for value, key in zip(values, keys):
            try:
                produce(topic, value, key, on_delivery=on_delivery)
            except BufferError:  # local queue full: wait for deliveries, then retry once
                self.producer.poll(1)
                produce(topic, value, key, on_delivery=on_delivery)
        if self.latest is not None:
            self._sent.extend(zip(user_list, values))
        for model, count in Counter(recs.models).items():
            m.lists.labels(model).inc(count)
        return recs

    # --- shadow mode (streams/shadow_topic.py) -----------------------------------------------------------

    def _score_shadow(self, shadow: "Shadow", stored: "Stored") -> None:
        """The candidate's lists for the batch's users: recorded for grading, never published."""
        t0 = time.time()
        recs = shadow.recommender.recommend(stored.sequences, stored.seen, shadow.comparison.k)
        shadow.comparison.record_lists(stored.users, recs.items, stored.trigger_time, recs.models, recs.versions)
        self.metrics.stage_duration.labels("shadow").observe(time.time() - t0)

    def _report_shadow(self, shadow: "Shadow") -> None:
        """The running paired tally to the gauges and the evaluations topic (for the retraining job)."""
        report = shadow.report()
        self.metrics.set_shadow(report)
        # Its own delivery callback: a lost tally is superseded by the next one and must not
        # fail (and so redeliver) a micro-batch as a lost list would.
        self.producer.produce(shadow.topic, value=self._encode(report), key=shadow.worker.encode(),
                              on_delivery=_log_delivery_error)
        self.producer.poll(0)

    def end_shadow(self) -> "Shadow | None":
        """Stop scoring the candidate (run in the publish thread, between two batches); returns it."""
        shadow, self.shadow = self.shadow, None
        self.metrics.clear_shadow()
        return shadow


def _log_delivery_error(err, msg) -> None:
    if err is not None:
        log.warning("shadow tally not delivered to %s: %s", msg.topic(), err)
