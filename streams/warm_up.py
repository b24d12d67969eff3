"""The worker's compiled (numba) kernels, compiled or loaded before it takes events.

numba compiles a kernel on its first call, or loads it from its cache on disk (``__pycache__``
beside the module, or ``NUMBA_CACHE_DIR``). On a fresh install that happened in the worker's
first micro-batches: the first million events of an ML-20M-shaped replay ran at 87k events/s
instead of 151k (``benchmarks/bench_scale.py``, 2026-12-07), and lists waited meanwhile. So the
worker runs a few events through each stage's code once, on a throwaway database, before it
reports ready: ~0.5 s with the cache, a few seconds once without it.

>>> seconds = compile_kernels()
>>> 0 < seconds < 120
True
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from streamrec.model.exposure import Exposure
from streamrec.model.online import OnlineEvaluator
from streamrec.model.recommender import PopularityRecommender
from streamrec.storage.key_index import DIRECTORY_MIN, Directory
from streamrec.storage.store import EventStore
from streamrec.streams.events import Event, decode_batch, encode
from streamrec.streams.list_encoder import ListColumns, encode_lists

T0 = 1_700_000_000_000  # ms (2023)
# user, item, event time (ms): user 7's last event is older than its first, so it is "late"
EVENTS = [(7, 10, T0 + 5_000), (7, 11, T0 + 9_000), (8, 12, T0 + 6_000), (8, 10, T0 + 7_000), (7, 13, T0 + 1_000)]


log = logging.getLogger(__name__)


def warm_up() -> None:
    """:func:`compile_kernels`, logged; a failure (e.g. no room in the temporary directory) is a
    warning, not the worker's end: the kernels then compile in the first batches, as before."""
    try:
        log.info("compiled kernels ready in %.1fs (before the first batch, not in it)", compile_kernels())
    except Exception as e:
        log.warning("kernels not compiled ahead (the first batches will compile them): %s: %s",
                    type(e).__name__, str(e)[:300])


def compile_kernels() -> float:
    """Run a few events through the store, the popularity ranker, the online evaluator and the
    list encoder, with the dtypes the worker's stages pass (decoded from Kafka-like records);
    returns the seconds it took."""
    t0 = time.perf_counter()
    values = [encode(Event(user_id=u, item_id=i, event_time=t, event_type="view")) for u, i, t in EVENTS]
    batch = decode_batch(values, offsets=np.arange(len(values), dtype=np.int64))
    if batch.rejected:  # (a contract change made these events invalid: they would warm nothing up)
        raise ValueError(f"warm-up events rejected: {batch.rejected}")
    with tempfile.TemporaryDirectory(prefix="streamrec-warm-up-") as tmp:
        store = EventStore(Path(tmp) / "warm-up.duckdb", seq_len=3)
        try:
            first = np.arange(len(batch)) < 3
            for half in (batch.without_inputs(first), batch.without_inputs(~first)):
                result = store.append(half)
                users = np.unique(half.user)
                sequences, seen = store.sequences(users.tolist()), store.seen(users.tolist())
                _rank_and_grade(users, half, result.new_mask, sequences, seen)
            store.append(batch)  # redelivered: the stored keys are searched in the runs
        finally:
            store.close()
    Directory.of(np.arange(DIRECTORY_MIN, dtype=np.uint64))  # (a run long enough for a directory)
    return time.perf_counter() - t0


def _rank_and_grade(users, batch, new, sequences, seen) -> None:
    """What the publish stage runs for a batch (streams/pipeline.py), without a producer."""
    ranker, evaluator, exposure = PopularityRecommender(), OnlineEvaluator(time_scale=1000), Exposure()
    ranker.observe(batch.item[new], batch.user[new])
    exposure.observe_events(batch.item[new])
    evaluator.score_events(batch.user[new], batch.item[new], batch.event_time[new])
    recs = ranker.recommend(sequences, seen, 2)
    times = np.full(len(users), int(batch.event_time.max()), np.int64)
    evaluator.record_lists(users, recs.items, times, recs.models, recs.versions)
    evaluator.score_events(batch.user[new], batch.item[new], batch.event_time[new] + 1)
    exposure.update(recs.items, recs.models)
    evaluator.snapshot()
    zeros = np.zeros(len(users), np.int64)
    encode_lists(ListColumns(users, recs.items, recs.scores, recs.models, recs.versions, times, zeros,
                             zeros.astype(np.int32), zeros, 0, 0, 0))
