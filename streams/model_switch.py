"""Which model a worker serves: the first one at start-up, then promotions, rollbacks and shadows.

A worker serving a registry follows the announcements on ``model-updates``
(``streams/model_updates.py``). Models load in the background (the ``loader`` thread); a swap
happens between two micro-batches (``between_batches``), and a shadowed candidate is scored
beside the champion from the next batch on (``streams/shadow_topic.py``). A model that fails to load
is counted and changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from contextlib import AbstractAsyncContextManager
from typing import Callable

from streamrec.model.recommender import FallbackRecommender, PopularityRecommender, Recommender
from streamrec.storage.store import EventStore
from streamrec.streams.config import Settings
from streamrec.streams.model_updates import ModelUpdate, UpdateFollower, ensure_topic
from streamrec.streams.pipeline import BatchProcessor
from streamrec.streams.prometheus import WorkerMetrics
from streamrec.streams.shadow_topic import Shadow

log = logging.getLogger(__name__)


def registry_champion(registry: str) -> tuple[str, str] | None:
    """(version, checkpoint directory) of the registry's champion, if it has one."""
    from streamrec.model.registry import Registry

    reg = Registry(registry)
    champion = reg.champion()
    return None if champion is None else (champion, str(reg.path(champion)))


def build_baseline(settings: Settings, store: EventStore) -> Recommender:
    """``settings.baseline``, warmed from the newest stored events (after a restart)."""
    from streamrec.model.baselines import BASELINES

    if settings.baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {sorted(BASELINES)}, not {settings.baseline!r}")
    if settings.baseline == "popularity":
        popularity = PopularityRecommender(window=settings.popularity_window)
        popularity.observe(store.recent_items(settings.popularity_window))
        return popularity
    base = BASELINES[settings.baseline](popularity_window=settings.popularity_window)
    users, items = store.recent_events(settings.popularity_window)
    base.observe(items, users)
    return base


def build_recommender(settings: Settings, store: EventStore) -> Recommender:
    popularity = build_baseline(settings, store)
    checkpoint, version = settings.checkpoint, None
    champion = registry_champion(settings.registry) if settings.registry else None
    if champion is not None:
        version, checkpoint = champion
    if not checkpoint:
        return popularity
    return with_model(checkpoint, popularity, version)


def with_model(checkpoint: str, popularity: Recommender, version: str | None = None) -> FallbackRecommender:
    """The transformer of ``checkpoint`` with the baseline ``popularity`` for users it cannot score.

    ``version``: the registry's name for it (``v2``), carried by lists and metrics.
    """
    from streamrec.model.inference import TransformerRecommender

    model = TransformerRecommender(checkpoint)
    if version is not None:
        model.version = version
    return FallbackRecommender(model, popularity)


def popularity_of(rec: Recommender) -> Recommender:
    """The baseline (fallback) of the served recommender."""
    return rec.fallback if isinstance(rec, FallbackRecommender) else rec


class ModelSwitch:
    """The worker's model changes. ``loader`` loads models; ``publisher`` is the thread that
    publishes batches (a shadow ends there, between two batches); ``between_batches()`` holds
    the pipeline still while the served model is replaced."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics, loader: Executor, publisher: Executor,
                 between_batches: Callable[[], AbstractAsyncContextManager]):
        self.settings, self.metrics = settings, metrics
        self.loader, self.publisher, self.between_batches = loader, publisher, between_batches
        self.loaded_at = 0  # ms: announcements before this are already in the registry
        self.updates: UpdateFollower | None = None

    def first_model(self, store: EventStore) -> Recommender:
        """The model to start with: the registry's champion, else the checkpoint, else popularity."""
        self.loaded_at = int(time.time() * 1000)
        recommender = build_recommender(self.settings, store)
        self.metrics.model_info.labels(recommender.name, recommender.version).set(1)
        return recommender

    async def _run(self, executor: Executor, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    async def follow(self, processor: BatchProcessor) -> None:
        """Apply the announcements made since the last call.

        Only a worker serving a registry follows announcements (they name registry versions);
        one started with a fixed ``--checkpoint`` keeps it.
        """
        s = self.settings
        if not s.registry:
            return
        if self.updates is None:
            self.updates = await self._run(self.loader, UpdateFollower, s.bootstrap_servers, s.model_updates_topic,
                                           self.loaded_at)
        for update in self.updates.poll():
            if update.action in ("shadow", "unshadow"):
                await self.follow_shadow(processor, update)
            elif update.version != processor.recommender.version:
                await self.swap(processor, update)

    async def _load(self, processor: BatchProcessor, update: ModelUpdate) -> Recommender:
        return await self._run(self.loader, with_model, update.path, popularity_of(processor.recommender),
                               update.version)

    async def swap(self, processor: BatchProcessor, update: ModelUpdate) -> None:
        """Serve ``update``'s model ("promote", "rollback") from the next micro-batch on."""
        shadow = processor.shadow
        if shadow is not None and shadow.version == update.version:
            new = shadow.recommender  # loaded when its shadow began, and scoring since
        else:
            try:
                new = await self._load(processor, update)
            except Exception as e:  # missing or corrupt checkpoint: keep serving the old model
                self.metrics.model_loads.labels("failed").inc()
                log.error("model %s (%s) failed to load, still serving %s/%s: %s", update.version, update.path,
                          processor.recommender.name, processor.recommender.version, e)
                return
            self.metrics.model_loads.labels("ok").inc()
        async with self.between_batches():  # none is being applied now
            # A shadow compares with the champion being replaced: it ends with it.
            ended = await self._run(self.publisher, processor.end_shadow)
            old = processor.recommender
            processor.recommender = new
        if ended is not None:
            log.info("shadow of %s ended by %s %s: %s", ended.version, update.action, update.version, ended.summary())
        self.metrics.model_info.labels(old.name, old.version).set(0)
        self.metrics.model_info.labels(new.name, new.version).set(1)
        log.info("%s: now serving %s/%s (was %s/%s)", update.action, new.name, new.version, old.name, old.version)

    async def follow_shadow(self, processor: BatchProcessor, update: ModelUpdate) -> None:
        """Start or stop scoring a candidate beside the champion (streams/shadow_topic.py): loaded in the
        background like a promotion; a failed load is counted and changes nothing."""
        s, current = self.settings, processor.shadow
        if update.action == "unshadow":
            if current is not None and current.version == update.version:
                await self._run(self.publisher, processor.end_shadow)  # between two batches
                log.info("unshadow: stopped scoring %s: %s", current.version, current.summary())
            return
        if update.version == processor.recommender.version or (current and current.version == update.version):
            return  # serving it already, or scoring it already
        try:
            candidate = await self._load(processor, update)
            await self._run(self.loader, ensure_topic, s.bootstrap_servers, s.model_evaluations_topic)
        except Exception as e:  # missing or corrupt checkpoint: nothing changes
            self.metrics.model_loads.labels("failed").inc()
            log.error("shadow: model %s (%s) failed to load; not shadowing it: %s", update.version, update.path, e)
            return
        self.metrics.model_loads.labels("ok").inc()
        if current is not None:  # a newer candidate replaces the one being compared
            await self._run(self.publisher, processor.end_shadow)
        champion = processor.recommender.version
        # The publish thread reads processor.shadow once per batch: it applies from the next one.
        processor.shadow = Shadow(candidate, champion, s.model_evaluations_topic)
        log.info("shadow: scoring %s/%s beside champion %s on live traffic; its lists are graded, not published; "
                 "tallies every %.0fs to %s", candidate.name, candidate.version, champion,
                 s.eval_snapshot_seconds, s.model_evaluations_topic)
