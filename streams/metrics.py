"""Prometheus metrics of a worker, in one registry per worker (served at ``/metrics``).

Names follow Prometheus conventions: ``streamrec_`` prefix, ``_total`` for counters, base units
(seconds), and bounded label sets (stages, reject classes and model names are small fixed sets).
"""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000)

# DLQ reasons are free text; the label is one of these classes (bounded cardinality).
REJECT_CLASSES = ("malformed_json", "missing_field", "wrong_type", "out_of_range", "invalid_value", "empty")


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
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.consumed = Counter("streamrec_events_consumed_total", "Messages taken from the interactions topic", registry=r)
        self.stored = Counter("streamrec_events_stored_total", "Valid events newly written to DuckDB", registry=r)
        self.duplicates = Counter("streamrec_events_duplicate_total", "Valid events already stored (redeliveries)", registry=r)
        self.rejected = Counter("streamrec_events_rejected_total", "Invalid messages sent to the DLQ", ["reason"], registry=r)
        for c in REJECT_CLASSES:
            self.rejected.labels(c)
        self.batch_size = Histogram("streamrec_batch_size_events", "Messages per micro-batch", buckets=BATCH_BUCKETS, registry=r)
        self.stage_latency = Histogram(
            "streamrec_stage_latency_seconds",
            "Time from a batch being consumed until it is stored, scored and published",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.stage_duration = Histogram(
            "streamrec_stage_duration_seconds", "Time spent in each stage of a micro-batch",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )
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
        self.model_info = Gauge("streamrec_model_info", "The serving model (value 1)", ["model", "version"], registry=r)
        self.model_loads = Counter("streamrec_model_loads_total", "Model loads after an announcement",
                                   ["outcome"], registry=r)
        for outcome in ("ok", "failed"):
            self.model_loads.labels(outcome)
        self.exported = Counter("streamrec_events_exported_total", "Events written to Parquet export segments", registry=r)
        self.lag = Gauge("streamrec_consumer_lag_events",
                         "Records of the interactions partition not yet processed (high watermark from fetch responses)",
                         ["partition"], registry=r)
        self.store_events = Gauge("streamrec_store_events", "Events in this worker's DuckDB event log", registry=r)
        self.last_event_time = Gauge("streamrec_last_event_time_seconds", "Event time of the newest stored event", registry=r)

        # Online (prequential) evaluation, set from the evaluator's snapshots.
        from model.online import PROMETHEUS_GAUGES

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

    def expose(self) -> bytes:
        return generate_latest(self.registry)
