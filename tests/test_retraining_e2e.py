"""Retraining end to end on the embedded broker: v1 serves, new items arrive, v2 is trained from
the worker's exports, promoted, hot-swapped in the running worker; a corrupt version never
replaces the champion; rollback restores v1. Nothing is stored twice across the swaps."""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import msgspec
import numpy as np
import pytest

from streamrec.model.config import ModelConfig, TrainConfig
from streamrec.model.registry import CorruptCheckpointError, Registry
from streamrec.model.retrain import RetrainConfig, retrain
from streamrec.storage.movielens import Ratings, load_ratings
from streamrec.streams.cli import main as streamrec
from streamrec.streams.list_encoder import Recommendation
from streamrec.streams.model_updates import announce
from streamrec.streams.replay import replay
from tests.conftest import read_topic, start_worker, wait_metrics

pytestmark = pytest.mark.slow
DATA = Path(__file__).parent / "data"
TINY = ModelConfig(kind="sasrec", d_model=16, n_heads=1, max_len=20)


RELEASES = np.arange(9_000_000, 9_000_005)  # items v1 cannot know


def with_releases(part: Ratings) -> Ratings:
    """A wave of new releases: after every 3rd event of an even-numbered user, that user watches
    the next of five new movies (in order), one second later. Odd users never see them."""
    cols = ([], [], [], [])
    taken: dict[int, int] = {}
    for k, (u, i, r, t) in enumerate(zip(part.user.tolist(), part.item.tolist(), part.rating.tolist(),
                                         part.timestamp.tolist())):
        for c, v in zip(cols, (u, i, r, t)):
            c.append(v)
        if u % 2 == 0 and k % 3 == 0 and taken.get(u, 0) < len(RELEASES):
            for c, v in zip(cols, (u, int(RELEASES[taken.get(u, 0)]), 4.0, t + 1)):
                c.append(v)
            taken[u] = taken.get(u, 0) + 1
    order = np.argsort(np.array(cols[3]), kind="stable")
    return Ratings(*(np.asarray(c, dt)[order] for c, dt in zip(cols, (np.int64, np.int64, np.float32, np.int64))))


def serving(version: str):
    return lambda m: m.get(f'streamrec_model_info{{model="sasrec",version="{version}"}}') == 1


def test_retrain_promote_hot_swap_reject_corrupt_and_rollback(settings, tmp_path, capsys):
    ratings = load_ratings(DATA / "ratings.csv")
    part1, part2, part3 = ratings.slice(0, 30_000), with_releases(ratings.slice(30_000, 60_000)), \
        ratings.slice(60_000, 70_000)
    registry = Registry(tmp_path / "registry")
    # (the hot swap's mechanics, not the model's quality: a 2-epoch tiny v1 would lose to popularity)
    v1 = retrain(registry, part1, RetrainConfig(cold=True, model=TINY, popularity_gate=False,
                                                cold_train=TrainConfig(epochs=2)))
    assert v1.version == "v1" and v1.promoted and registry.champion() == "v1"
    v1_items = set(json.loads((registry.path("v1") / "card.json").read_text())["items"])

    export = tmp_path / "export"
    topic = f"model-updates-{settings.group_id}"
    worker = start_worker(settings, tmp_path / "worker.log", registry=str(registry.root), export_dir=str(export),
                          export_every=1.0, model_updates_topic=topic)
    common = ["--registry", str(registry.root), "--bootstrap-servers", settings.bootstrap_servers,
              "--model-updates-topic", topic]
    try:
        worker.wait_ready()
        assert serving("v1")(worker.metrics())
        replay(part1, settings.bootstrap_servers, settings.interactions_topic, progress=False)
        replay(part2, settings.bootstrap_servers, settings.interactions_topic, progress=False)
        n = len(part1) + len(part2)
        wait_metrics(worker, lambda m: m.get("streamrec_events_exported_total", 0) >= n, "export of every event")

        # v2: warm-started from v1 on the exported log, gated, promoted, announced.
        assert streamrec(["retrain", "--export-dir", str(export), "--epochs", "3", *common]) == 0
        assert registry.champion() == "v2" and registry.get("v2").parent == "v1"
        v2_items = set(json.loads((registry.path("v2") / "card.json").read_text())["items"])
        new_items = v2_items - v1_items
        assert set(RELEASES.tolist()) <= new_items and v1_items <= v2_items
        m = wait_metrics(worker, serving("v2"), "worker did not switch to v2")
        assert m['streamrec_model_info{model="sasrec",version="v1"}'] == 0
        assert m['streamrec_model_loads_total{outcome="ok"}'] == 1

        # A corrupt version never replaces the champion: promote refuses it, and a worker told
        # to load it anyway keeps serving v2 and counts the failure.
        v3 = registry.register(checkpoint_dir=registry.path("v2"), parent="v2", cutoff=0, metrics={},
                               training_seconds=0.0)
        weights = registry.path(v3) / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        with pytest.raises(CorruptCheckpointError):  # the registry refuses it ...
            registry.promote(v3)
        capsys.readouterr()
        assert streamrec(["promote", v3, *common]) == 1  # ... and the CLI says so in one line
        err = capsys.readouterr().err.strip().splitlines()
        assert "changed since registration" in err[-1], err
        assert registry.champion() == "v2"
        announce(settings.bootstrap_servers, topic, v3, str(registry.path(v3)))
        broken = tmp_path / "gone"
        announce(settings.bootstrap_servers, topic, "v99", str(broken))
        m = wait_metrics(worker, lambda m: m['streamrec_model_loads_total{outcome="failed"}'] == 2,
                         "failed loads counted")
        assert serving("v2")(m)

        # Lists after the swap come from v2 and can recommend items v1 never saw.
        replay(part3, settings.bootstrap_servers, settings.interactions_topic, progress=False)
        total = n + len(part3)
        wait_metrics(worker, lambda m: m.get("streamrec_store_events", 0) >= total, "all events stored")
        time.sleep(1.0)
        lists = read_topic(settings.bootstrap_servers, settings.recommendations_topic, min_count=1)
        recs = [msgspec.json.decode(x.value(), type=Recommendation) for x in lists]
        after = [r for r in recs if r.event_time >= int(part3.timestamp[0]) * 1000 and r.model == "sasrec"]
        assert after and {r.model_version for r in after} == {"v2"}
        assert any(set(r.items) & set(RELEASES.tolist()) for r in after if r.user_id % 2 == 1)

        # Rollback restores v1 in the running worker.
        assert streamrec(["rollback", *common]) == 0
        assert registry.champion() == "v1"
        wait_metrics(worker, serving("v1"), "worker did not roll back to v1")
    finally:
        worker.stop()

    con = duckdb.connect(settings.db, read_only=True)
    count, distinct = con.execute("SELECT count(*), count(DISTINCT key) FROM events").fetchone()
    con.close()
    assert count == distinct == total
