"""Prometheus metrics of a worker, in one registry per worker (served at ``/metrics``).

Names follow Prometheus conventions: ``streamrec_`` prefix, ``_total`` for counters, base units
(seconds), and bounded label sets (stages, reject classes and model names are small fixed sets).
"""

from __future__ import annotations

import time

import numpy as np
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000)

# DLQ reasons are free text; the label is one of these classes (bounded cardinality).
REJECT_CLASSES = ("malformed_json", "missing_field", "wrong_type", "out_of_range", "invalid_value", "empty",
                  "wrong_key", "conflict")


#: A Prometheus gauge per online-evaluation snapshot metric (``model.online.OnlineEvaluator.snapshot``;
#: labels model, version, k, window). Counts are exported as gauges too: they come from snapshots,
#: not from increments.
PROMETHEUS_GAUGES = {
    "HitRate": ("streamrec_online_hit_rate", "Share of graded events whose item was in the top K shown"),
    "NDCG": ("streamrec_online_ndcg", "NDCG@K of graded events against the list shown before them"),
    "MRR": ("streamrec_online_mrr", "Reciprocal rank (0 beyond K) of graded events"),
    "Recall": ("streamrec_online_recall", "Recall@K of closed lists over the user's next distinct items"),
    "coverage": ("streamrec_online_coverage", "Share of warm among warm and cold events"),
    "events_warm": ("streamrec_online_events_warm", "Events graded against an earlier list"),
    "events_cold": ("streamrec_online_events_cold", "Events with no earlier list for their user"),
    "events_late": ("streamrec_online_events_late", "Events older than the lists kept for their user"),
    "lists_recorded": ("streamrec_online_lists_recorded", "Lists remembered for grading"),
    "lists_stale": ("streamrec_online_lists_stale", "Lists dropped: triggered before the user's current list"),
    "lists_closed": ("streamrec_online_lists_closed", "Lists whose recall horizon closed"),
    "lists_no_future": ("streamrec_online_lists_no_future", "Closed lists whose user consumed nothing in the horizon"),
}


def process_registry() -> CollectorRegistry:
    """A registry with the standard process (CPU, memory, open files), platform and GC collectors."""
    r = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        r.register(collector)
    return r


def stage_start() -> tuple[float, float]:
    """Where a stage starts, for :meth:`WorkerMetrics.stage_done`: (wall time, this thread's CPU time)."""
    return time.time(), time.thread_time()


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every value, in one vectorised step.

    prometheus_client has no batch observe, and a call per published list costs more than
    publishing it; this adds the same bucket counts and sum through the histogram's fields.

    >>> h = Histogram("h_seconds", "doc", buckets=(1, 2), registry=CollectorRegistry())
    >>> observe_many(h, np.array([0.5, 1.5, 1.0, 3.0]))
    >>> [s.value for s in h.collect()[0].samples if s.name == "h_seconds_bucket"]
    [2.0, 3.0, 4.0]
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    if bounds is None or buckets is None:  # a prometheus_client without these fields
        for v in values.tolist():
            histogram.observe(v)
        return
    # Bucket i counts values <= bounds[i] that fall above bounds[i-1] (le is inclusive).
    idx = np.searchsorted(np.asarray(bounds, dtype=np.float64), values, side="left")
    counts = np.bincount(idx, minlength=len(bounds))
    for i, c in enumerate(counts.tolist()):
        if c:
            buckets[i].inc(c)
    histogram._sum.inc(float(values.sum()))


def reject_class(reason: str) -> str:
    """Map a validation reason to its metric label.

    >>> reject_class("Expected `int` <= 9223372036854775807 - at `$.user_id`")
    'out_of_range'
    """
    r = reason.lower()
    for cls in ("conflict", "wrong key", "empty"):  # reasons of streams/events.py that name their class
        if r.startswith(cls):
            return cls.replace(" ", "_")
    if r.startswith("malformed json"):
        return "malformed_json"
    if "missing required field" in r:
        return "missing_field"
    if "invalid enum" in r:
        return "invalid_value"
    if "<=" in r or ">=" in r or "out of range" in r or "length" in r:
        return "out_of_range"
    if "expected `" in r:
        return "wrong_type"
    if r.startswith("empty"):
        return "empty"
    return "invalid_value"


class WorkerMetrics:
    """The worker's Prometheus metrics, in groups: ingest, models, reliability, scale-out, lists."""

    def __init__(self) -> None:
        self.registry = r = process_registry()
        self._ingest(r)
        self._models(r)
        self._reliability(r)
        self._scale_out(r)
        self._lists(r)

    def stage_done(self, stage: str, started: tuple[float, float]) -> float:
        """A stage's wall time and its thread's CPU since ``started`` (:func:`stage_start`), over
        the same span; returns the wall time now."""
        now = time.time()
        self.stage_duration.labels(stage).observe(now - started[0])
        self.stage_cpu.labels(stage).inc(time.thread_time() - started[1])
        return now

    def _ingest(self, r: CollectorRegistry) -> None:
        """Messages, events and the stages of a micro-batch."""
        self.consumed = Counter("streamrec_events_consumed_total", "Messages taken from the interactions topic",
                                registry=r)
        self.stored = Counter("streamrec_events_stored_total", "Valid events newly written to DuckDB", registry=r)
        self.duplicates = Counter("streamrec_events_duplicate_total", "Valid events already stored (redeliveries)",
                                  registry=r)
        self.rejected = Counter("streamrec_events_rejected_total", "Invalid messages sent to the DLQ", ["reason"],
                                registry=r)
        for c in REJECT_CLASSES:
            self.rejected.labels(c)
        self.batch_size = Histogram("streamrec_batch_size_events", "Messages per micro-batch", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.stage_latency = Histogram(
            "streamrec_stage_latency_seconds",
            "Time from a batch being consumed until it is stored, scored and published",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.stage_duration = Histogram(
            "streamrec_stage_duration_seconds", "Time spent in each stage of a micro-batch",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )
        # Beside a stage's wall time, its thread's CPU: the difference is time spent waiting for the
        # GIL, for a free core or for I/O (on two cores, a quarter of the store stage's; docs/benchmarks.md).
        self.stage_cpu = Counter("streamrec_stage_cpu_seconds", "CPU time of the thread running each stage",
                                 ["stage"], registry=r)
        self.freshness = Histogram(
            "streamrec_freshness_seconds",
            "From the triggering event's Kafka timestamp to its user's list being published",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.lists = Counter("streamrec_lists_published_total", "Top-K lists published", ["model"], registry=r)
        self.users_scored = Counter("streamrec_users_scored_total", "Users scored", registry=r)
        self.inference_seconds = Histogram(
            "streamrec_inference_seconds", "Model time per micro-batch", buckets=LATENCY_BUCKETS, registry=r
        )

    def _models(self, r: CollectorRegistry) -> None:
        """The serving model, its loads and shadow mode; Parquet export; lag and the log's size."""
        self.model_info = Gauge("streamrec_model_info", "The serving model (value 1)", ["model", "version"], registry=r)
        self.model_loads = Counter("streamrec_model_loads_total", "Model loads after an announcement",
                                   ["outcome"], registry=r)
        for outcome in ("ok", "failed"):
            self.model_loads.labels(outcome)
        # Shadow mode (streams/shadow_topic.py): candidate vs champion on the same events, while it lasts.
        self.shadow_events = Gauge("streamrec_shadow_events", "Events graded against both the champion's and the "
                                   "shadowed candidate's list", ["champion", "candidate"], registry=r)
        self.shadow_ndcg = Gauge("streamrec_shadow_ndcg",
                                 "Mean NDCG@10 over the paired events of the shadow comparison",
                                 ["role", "version"], registry=r)
        self.exported = Counter("streamrec_events_exported_total", "Events written to Parquet export segments",
                                registry=r)
        self.lag = Gauge("streamrec_consumer_lag_events",
                         "Records of the interactions partition not yet processed "
                         "(high watermark from fetch responses)",
                         ["partition"], registry=r)
        self.store_events = Gauge("streamrec_store_events", "Events this worker's DuckDB event log owns", registry=r)
        # The bounded sequence cache (--sequence-users): evictions and reads back mean the cap is too small.
        self.sequence_users = Gauge("streamrec_sequence_cache_users",
                                    "Users whose rolling sequence is held in memory", registry=r)
        self.sequence_evictions = Counter("streamrec_sequence_cache_evictions_total",
                                          "Users' sequences dropped from memory to stay within --sequence-users",
                                          registry=r)
        self.sequence_reads = Counter("streamrec_sequence_reads_total",
                                      "Users' sequences read from DuckDB (after a restart, an eviction or a "
                                      "late event)",
                                      registry=r)

    def _reliability(self, r: CollectorRegistry) -> None:
        """Failures are counted where they happen, never silent (streams/health.py)."""
        self.stage_failures = Counter("streamrec_stage_failures_total", "Failed attempts at a micro-batch stage "
                                      "(the batch is retried with backoff)", ["stage"], registry=r)
        for stage in ("decode", "store", "publish"):
            self.stage_failures.labels(stage)
        self.broker_reachable = Gauge("streamrec_broker_reachable", "1 while the Kafka cluster answers metadata "
                                      "requests, 0 while it does not", registry=r)
        self.broker_reachable.set(1)
        self.skipped_records = Counter("streamrec_control_records_skipped_total", "Records of the ownership log or "
                                       "model-updates topic that do not decode (logged and skipped)", ["topic"],
                                       registry=r)

    def _scale_out(self, r: CollectorRegistry) -> None:
        """Partitions taken over, their history copied from Kafka (streams/ownership.py)."""
        self.partition_claims = Counter("streamrec_partition_claims_total",
                                        "Partitions claimed in the ownership log (one per partition per assignment)",
                                        registry=r)
        self.recovered = Counter("streamrec_events_recovered_total",
                                 "Earlier events of taken-over partitions copied from Kafka "
                                 "(owned by another database)", registry=r)
        self.disowned = Counter("streamrec_events_disowned_total",
                                "Stored events found owned by another database (stored past a commit before a crash)",
                                registry=r)
        self.recovery_seconds = Histogram("streamrec_partition_recovery_seconds",
                                          "Time to claim a partition and copy its history before its first batch",
                                          buckets=LATENCY_BUCKETS, registry=r)

    def _lists(self, r: CollectorRegistry) -> None:
        """What the published lists look like, and how they score online."""
        self.last_event_time = Gauge("streamrec_last_event_time_seconds", "Event time of the newest stored event",
                                     registry=r)
        # The feedback-loop watch (model/exposure.py): are the lists collapsing onto a few items?
        self.list_coverage = Gauge("streamrec_list_coverage",
                                   "Share of the catalogue in the model's recent published lists",
                                   ["model"], registry=r)
        self.list_gini = Gauge("streamrec_list_gini",
                               "Gini index of item exposure in the model's recent published lists",
                               ["model"], registry=r)

        # Online (prequential) evaluation, set from the evaluator's snapshots.
        self.online = {
            metric: Gauge(name, doc, ["model", "version", "k", "window"], registry=r)
            for metric, (name, doc) in PROMETHEUS_GAUGES.items()
        }

    def set_online(self, rows) -> None:
        """Publish evaluator snapshot rows ``(model, version, k, window, metric, value, n)``."""
        for row in rows:
            gauge = self.online.get(row.metric)
            if gauge is not None:
                gauge.labels(row.model, row.version, str(row.k), row.window).set(row.value)

    def set_exposure(self, exposure) -> None:
        """Publish a ``model.exposure.Exposure``'s coverage and Gini index per model."""
        for model in exposure.models():
            self.list_coverage.labels(model).set(exposure.coverage(model))
            self.list_gini.labels(model).set(exposure.gini(model))

    def set_shadow(self, report) -> None:
        """Publish a worker's ``streams.shadow_topic.ShadowReport``."""
        t = report.tally()
        self.shadow_events.labels(report.champion, report.candidate).set(t.n)
        self.shadow_ndcg.labels("champion", report.champion).set(t.champion_mean)
        self.shadow_ndcg.labels("candidate", report.candidate).set(t.candidate_mean)

    def clear_shadow(self) -> None:
        """The shadow ended: its series go (a stale comparison must not look live)."""
        self.shadow_events.clear()
        self.shadow_ndcg.clear()

    def expose(self) -> bytes:
        return generate_latest(self.registry)


RETRAIN_OUTCOMES = ("promoted", "rejected", "shadow_promoted", "shadow_rejected", "skipped", "failed")
RETRAIN_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)


class RetrainMetrics:
    """Prometheus metrics of the retraining job (``streamrec retrain --metrics-port``).

    >>> m = RetrainMetrics()
    >>> m.runs.labels("skipped").inc()
    >>> b'streamrec_retrain_runs_total{outcome="skipped"} 1.0' in m.expose()
    True
    >>> b"process_resident_memory_bytes" in m.expose() and b"python_info" in m.expose()
    True
    """

    def __init__(self) -> None:
        self.registry = r = process_registry()
        nan = float("nan")  # "no value yet", not a measured 0
        self.runs = Counter("streamrec_retrain_runs_total", "Retraining runs by outcome", ["outcome"], registry=r)
        for outcome in RETRAIN_OUTCOMES:
            self.runs.labels(outcome)
        self.duration = Histogram("streamrec_retrain_duration_seconds",
                                  "Time per phase of a run: train (data, training, offline gate), shadow (waiting "
                                  "for the paired comparison)", ["phase"], buckets=RETRAIN_BUCKETS, registry=r)
        for phase in ("train", "shadow"):
            self.duration.labels(phase)
        self.last_success = Gauge("streamrec_retrain_last_success_timestamp_seconds",
                                  "Unix time of the last run that ended in a decision (promoted or rejected)",
                                  registry=r)
        self.gate_ndcg = Gauge("streamrec_retrain_gate_ndcg", "Offline gate NDCG@10 of the last run's models",
                               ["role"], registry=r)
        for role in ("candidate", "champion"):
            self.gate_ndcg.labels(role).set(nan)
        self.shadow_events = Gauge("streamrec_retrain_shadow_events",
                                   "Paired events summed over the workers in the current (or last) shadow comparison",
                                   registry=r)
        self.shadow_workers = Gauge("streamrec_retrain_shadow_workers",
                                    "Workers that reported a tally for the current (or last) shadow comparison",
                                    registry=r)
        self.shadow_diff = Gauge("streamrec_retrain_shadow_ndcg_diff",
                                 "Mean paired NDCG@10 difference, candidate - champion, and its confidence bounds",
                                 ["bound"], registry=r)
        for bound in ("mean", "lower", "upper"):
            self.shadow_diff.labels(bound).set(nan)

    def shadow_started(self) -> None:
        self.shadow_events.set(0)
        self.shadow_workers.set(0)
        for bound in ("mean", "lower", "upper"):
            self.shadow_diff.labels(bound).set(float("nan"))

    def shadow_progress(self, decision, n_workers: int) -> None:
        """``progress`` callback of ``streams.shadow_topic.wait_for_shadow``."""
        self.shadow_events.set(decision.n)
        self.shadow_workers.set(n_workers)
        for bound, value in (("mean", decision.mean), ("lower", decision.lower), ("upper", decision.upper)):
            self.shadow_diff.labels(bound).set(value)

    def serve(self, host: str, port: int):
        """Serve ``/metrics`` from prometheus_client's own HTTP server (a daemon thread)."""
        from prometheus_client import start_http_server

        return start_http_server(port, addr=host, registry=self.registry)

    def expose(self) -> bytes:
        return generate_latest(self.registry)
