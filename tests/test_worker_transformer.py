"""The worker serving a trained transformer, with popularity for users it cannot score."""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import msgspec
import numpy as np
import pytest

from streamrec.storage.movielens import Ratings, load_ratings
from streamrec.streams.cli import main as streamrec
from streamrec.streams.list_encoder import Recommendation
from streamrec.streams.processes import metric_sum
from streamrec.streams.replay import replay
from tests.conftest import read_topic, start_worker, wait_stored

pytestmark = pytest.mark.slow
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny SASRec trained on the first 20,000 lines of ml-latest-small (seconds on a CPU)."""
    tmp = tmp_path_factory.mktemp("ck")
    lines = (DATA / "ratings.csv").read_text().splitlines()[:20_001]
    (tmp / "ratings.csv").write_text("\n".join(lines) + "\n")
    out = tmp / "sasrec"
    assert streamrec(["train", "--ratings", str(tmp / "ratings.csv"), "--model", "sasrec", "--out", str(out),
                      "--epochs", "1", "--d-model", "16", "--max-len", "20", "--heads", "1"]) == 0
    return out


def test_worker_serves_transformer_with_popularity_fallback(settings, checkpoint, tmp_path):
    card = json.loads((checkpoint / "card.json").read_text())
    known = set(card["items"])
    ratings = load_ratings(DATA / "ratings.csv").slice(0, 30_000)
    # fetch_wait=1.5 (faust's own, the default until 2026-11-26): the recall check below rests on the
    # ~6 lists of this replay that have future events, and which lists those are depends on how the
    # stream is cut into micro-batches; with 10 ms fetches the tiny model hit none of them in 4 of 5 runs.
    worker = start_worker(settings, tmp_path / "worker.log", checkpoint=str(checkpoint), eval_snapshot_seconds=1.0,
                          fetch_wait=1.5)
    try:
        worker.wait_ready()
        replay(ratings, settings.bootstrap_servers, settings.interactions_topic, progress=False)
        # A newcomer whose items the model has never seen: only popularity can serve them.
        strangers = Ratings(np.full(3, 999_001), np.array([10**9, 10**9 + 1, 10**9 + 2]),
                            np.full(3, 4.0, np.float32), ratings.timestamp[-1] + np.arange(1, 4))
        replay(strangers, settings.bootstrap_servers, settings.interactions_topic, progress=False)
        total = len(ratings) + 3
        wait_stored(worker, total)
        time.sleep(2.5)  # one more evaluation snapshot
        m = worker.metrics()
        lists = read_topic(settings.bootstrap_servers, settings.recommendations_topic,
                           min_count=int(metric_sum(m, "streamrec_lists_published_total")))
    finally:
        worker.stop()
    assert m["streamrec_store_events"] == total
    assert m[f'streamrec_model_info{{model="sasrec",version="{card["version"]}"}}'] == 1
    recs = [msgspec.json.decode(x.value(), type=Recommendation) for x in lists]
    by_model = {r.model for r in recs}
    assert by_model == {"sasrec", "popularity"}, by_model
    assert {r.model for r in recs if r.user_id == 999_001} == {"popularity"}
    con = duckdb.connect(settings.db, read_only=True)
    log = con.execute("SELECT user_id, item_id, kafka_offset FROM events").fetchall()
    con.close()
    seen: dict[int, list[tuple[int, int]]] = {}
    for u, i, off in log:
        seen.setdefault(u, []).append((off, i))
    for r in recs:
        before = {i for off, i in seen[r.user_id] if off <= r.source_offset}
        assert not before & set(r.items), f"user {r.user_id} shown a seen item"
        if r.model == "sasrec":
            assert r.model_version == card["version"] and set(r.items) <= known and len(r.items) == 20
        else:  # popularity only for users the model knows nothing of
            assert not before & known
    for name in ("streamrec_online_ndcg", "streamrec_online_recall"):
        values = [v for k, v in m.items() if k.startswith(name + "{") and 'model="sasrec"' in k]
        assert values and max(values) > 0, name
