"""Shadow mode on the wire: the worker's shadowed candidate, its paired tallies on the
``model-evaluations`` topic, and the retraining job's wait for enough of them.

1. The job announces ``shadow vN`` on ``model-updates`` (the candidate stays ``candidate`` in the
   registry). Every worker following the registry loads it in the background and, from the next
   micro-batch on, scores it beside the champion; its lists are graded, never published
   (``model.shadow.ShadowComparison``).
2. Every ``--eval-snapshot-seconds`` each worker publishes its running tally
   (``ShadowReport``: cumulative since its shadow began) to ``model-evaluations`` (1 partition).
3. The job (``wait_for_shadow``) reads that topic, sums the latest report of each worker for its
   (champion, candidate) pair and applies ``model.shadow.shadow_decision``. Then it promotes
   (``promote`` announcement: workers swap in the candidate they already hold) or rejects
   (``unshadow``: workers drop it).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streamrec.model.recommender import Recommender
from streamrec.model.shadow import PairedTally, ShadowComparison, ShadowDecision, shadow_decision
from streamrec.streams.config import kafka_config
from streamrec.streams.model_updates import ensure_topic

log = logging.getLogger(__name__)


class ShadowReport(msgspec.Struct):
    """A worker's paired tally (JSON on ``model-evaluations``, keyed by worker)."""

    worker: str  # host:pid, so a restarted worker is a new reporter (its tally restarts at 0)
    champion: str  # version of the published lists
    candidate: str  # version scored in shadow
    n: int  # paired events
    sum_diff: float  # sum of NDCG@10(candidate) - NDCG@10(champion)
    sum_sq_diff: float
    sum_champion: float  # sums of each side's NDCG@10 over the paired events
    sum_candidate: float
    published_at: int  # ms since the epoch

    def tally(self) -> PairedTally:
        return PairedTally(self.n, self.sum_diff, self.sum_sq_diff, self.sum_champion, self.sum_candidate)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Shadow:
    """A candidate a worker scores beside its champion (``BatchProcessor.shadow``).

    >>> from streamrec.model.recommender import PopularityRecommender
    >>> s = Shadow(PopularityRecommender(window=10), champion="v1", topic="model-evaluations", worker="w:1")
    >>> s.comparison.tally.update(champion=0.0, candidate=1.0)
    >>> r = s.report(); (r.worker, r.champion, r.candidate, r.n, r.sum_diff)
    ('w:1', 'v1', 'window-10', 1, 1.0)
    """

    recommender: Recommender  # the candidate, with the champion's popularity fallback
    champion: str  # version it is compared with
    topic: str  # where tallies go
    comparison: ShadowComparison = field(default_factory=ShadowComparison)
    worker: str = field(default_factory=worker_id)

    @property
    def version(self) -> str:
        return self.recommender.version

    def summary(self) -> str:
        t = self.comparison.tally
        return (f"{t.n} paired events, NDCG@10 candidate {self.version} {t.candidate_mean:.4f} vs champion "
                f"{self.champion} {t.champion_mean:.4f}")

    def report(self) -> ShadowReport:
        t = self.comparison.tally
        return ShadowReport(self.worker, self.champion, self.version, t.n, t.sum_diff, t.sum_sq_diff,
                            t.sum_champion, t.sum_candidate, int(time.time() * 1000))


def wait_for_shadow(
    bootstrap: str,
    topic: str,
    champion: str,
    candidate: str,
    since_ms: int,
    min_events: int,
    timeout: float,
    margin: float = 0.005,
    alpha: float = 0.05,
    progress: Callable[[ShadowDecision, int], None] | None = None,
    still_valid: Callable[[], str | None] | None = None,
) -> ShadowDecision:
    """Read tallies for (``champion``, ``candidate``) published after ``since_ms`` until
    ``shadow_decision`` promotes or rejects, or ``timeout`` seconds pass (then: reject).

    ``progress(decision, n_workers)`` is called after every new tally; ``still_valid()`` returns a
    reason to stop (e.g. the champion changed meanwhile), checked every second."""
    ensure_topic(bootstrap, topic)
    consumer = Consumer(kafka_config("consumer", bootstrap, {"group.id": f"streamrec-shadow-{uuid.uuid4().hex[:8]}",
                                                         "enable.auto.commit": False}))
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    decode = msgspec.json.Decoder(ShadowReport).decode
    latest: dict[str, ShadowReport] = {}  # worker -> its newest report (tallies are cumulative)
    deadline, last_log = time.monotonic() + timeout, 0.0
    decision = shadow_decision(PairedTally(), min_events, margin, alpha)
    try:
        while time.monotonic() < deadline:
            fresh = False
            for msg in consumer.consume(500, timeout=1.0):
                if msg.error():
                    continue
                try:
                    r = decode(msg.value())
                except msgspec.DecodeError as e:
                    log.error("ignoring malformed tally at offset %d: %s", msg.offset(), e)
                    continue
                if (r.champion, r.candidate) == (champion, candidate) and r.published_at >= since_ms:
                    if r.worker not in latest or r.published_at >= latest[r.worker].published_at:
                        latest[r.worker], fresh = r, True
            if fresh:
                total = sum((r.tally() for r in latest.values()), PairedTally())
                decision = shadow_decision(total, min_events, margin, alpha)
                if progress is not None:
                    progress(decision, len(latest))
                if time.monotonic() - last_log > 10 or decision.verdict != "wait":
                    last_log = time.monotonic()
                    log.info("shadow %s vs %s: %d/%d paired events from %d worker(s): %s", candidate, champion,
                             total.n, min_events, len(latest), decision.reason)
                if decision.verdict != "wait":
                    return decision
            if still_valid is not None and (why := still_valid()):
                return ShadowDecision("reject", decision.n, decision.mean, decision.lower, decision.upper, why)
        total = sum((r.tally() for r in latest.values()), PairedTally())
        return shadow_decision(total, min_events, margin, alpha, timed_out=True)
    finally:
        consumer.close()
