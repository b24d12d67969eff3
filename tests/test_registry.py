"""Model registry: round trip, atomic index, promote / reject / rollback, corrupt versions."""

import json
import os

import numpy as np
import pytest
import torch

from streamrec.model.checkpoint import CARD, WEIGHTS, load_checkpoint, save_checkpoint
from streamrec.model.config import ModelConfig
from streamrec.model.inference import TransformerRecommender
from streamrec.model.registry import CorruptCheckpointError, Registry, RegistryError
from streamrec.model.transformer import build_model
from streamrec.model.vocab import ItemVocab

torch.set_num_threads(1)


def tiny(seed: int = 0, n_items: int = 5):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(kind="sasrec", n_items=n_items, max_len=6, d_model=8, n_heads=1, n_layers=1))
    return model, ItemVocab.from_ids(np.arange(1, n_items + 1) * 10)


def register(reg: Registry, seed: int = 0, **kw) -> str:
    model, vocab = tiny(seed)
    return reg.register(model=model, vocab=vocab, **kw)


def test_round_trip(tmp_path):
    reg = Registry(tmp_path / "reg")
    assert reg.list() == [] and reg.champion() is None
    model, vocab = tiny()
    v1 = reg.register(model=model, vocab=vocab, cutoff=1234, metrics={"gate": {"NDCG@10": 0.5}},
                      training_seconds=2.5, data={"n_events": 7})
    # From an existing checkpoint directory too.
    save_checkpoint(tmp_path / "ck", *tiny(seed=1))
    v2 = reg.register(tmp_path / "ck", parent=v1, cutoff=2000)
    assert (v1, v2) == ("v1", "v2")
    assert [v.version for v in reg.list()] == ["v1", "v2"]

    info = reg.get("v1")
    assert info.status == "candidate" and info.parent is None and info.cutoff_time == 1234
    assert info.metrics == {"gate": {"NDCG@10": 0.5}} and info.training_seconds == 2.5
    assert info.n_items == 5 and info.kind == "sasrec" and info.created.endswith("Z") and len(info.sha256) == 64
    assert reg.get(2).parent == "v1" and reg.get("2").version == "v2"

    ck = load_checkpoint(reg.path(v1))
    for k, t in model.state_dict().items():
        assert torch.equal(ck.model.state_dict()[k], t), k
    assert ck.vocab.to_list() == vocab.to_list()
    card = json.loads((reg.path(v1) / CARD).read_text())
    assert card["version"] == "v1" and card["cutoff_time"] == 1234 and card["parent"] is None
    assert card["data"] == {"n_events": 7} and card["training_seconds"] == 2.5
    assert TransformerRecommender(reg.path(v2), device="cpu").version == "v2"  # lists carry "v2"

    with pytest.raises(RegistryError, match="no version v9"):
        reg.get("v9")
    with pytest.raises(RegistryError, match="not a registry version"):
        reg.path("latest")
    with pytest.raises(ValueError):
        reg.register(tmp_path / "ck", model=model, vocab=vocab)


def test_index_write_is_atomic(tmp_path, monkeypatch):
    reg = Registry(tmp_path)
    v1 = register(reg)
    before = (tmp_path / "index.json").read_text()

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("streamrec.model.registry.os.replace", crash)  # the index write dies before its rename
    with pytest.raises(OSError, match="disk full"):
        reg.promote(v1)
    monkeypatch.undo()
    assert (tmp_path / "index.json").read_text() == before  # the old index, whole
    assert reg.champion() is None and reg.get(v1).status == "candidate"
    # A fresh Registry on the same root still works, and a later write succeeds.
    assert Registry(tmp_path).promote(v1) == "v1" and Registry(tmp_path).champion() == "v1"
    json.loads((tmp_path / "index.json").read_text())


def test_version_dir_orphaned_by_a_crash_is_skipped(tmp_path):
    reg = Registry(tmp_path)
    register(reg)
    (tmp_path / "v2").mkdir()  # written, but the crash came before the index named it
    assert register(reg) == "v3"
    assert [v.version for v in reg.list()] == ["v1", "v3"]


def test_promote_reject_rollback(tmp_path):
    reg = Registry(tmp_path)
    v1, v2, v3 = (register(reg, seed=i) for i in range(3))
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()
    reg.promote(v1)
    reg.promote(v2)
    status = {v.version: v.status for v in reg.list()}
    assert status == {"v1": "retired", "v2": "champion", "v3": "candidate"}
    assert reg.champion() == "v2" and reg.history() == ["v1", "v2"]

    reg.reject(v3, "NDCG@10 candidate 0.1 < champion 0.2 - margin 0.01")
    assert reg.get(v3).status == "rejected" and "0.1 < champion 0.2" in reg.get(v3).reason
    with pytest.raises(RegistryError, match="is the champion"):
        reg.reject(v2, "no")
    assert reg.promote(v2) == "v2" and reg.history() == ["v1", "v2"]  # already champion: no-op

    assert reg.rollback() == "v1"
    assert reg.champion() == "v1" and reg.get(v2).status == "retired" and reg.history() == ["v1"]
    assert sum(v.status == "champion" for v in reg.list()) == 1

    reg.promote(3)  # a rejected version may be promoted by hand (it verifies)
    assert reg.champion() == "v3" and reg.get(v3).reason is None and reg.get(v1).status == "retired"
    assert reg.rollback() == "v1" and reg.champion() == "v1"


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble(path):  # same size, flipped bytes in the tensor data (the header still parses)
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 64, len(data) - 32):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _garble, os.remove])
def test_corrupt_version_fails_verify_and_is_never_promoted(tmp_path, damage):
    reg = Registry(tmp_path)
    v1, v2 = register(reg, seed=0), register(reg, seed=1)
    reg.promote(v1)
    reg.verify(v2)  # fine before the damage
    damage(reg.path(v2) / WEIGHTS)
    with pytest.raises(CorruptCheckpointError, match="v2"):
        reg.verify(v2)
    with pytest.raises(CorruptCheckpointError):
        reg.promote(v2)
    assert reg.champion() == "v1" and reg.get(v2).status == "candidate" and reg.get(v1).status == "champion"
    with pytest.raises(CorruptCheckpointError):
        reg.load(v2)


def test_truncated_weights_are_caught_by_load_even_without_the_hash(tmp_path):
    """A truncated safetensors file does not load: verify reports it even for a version whose
    registration hash is unknown (index edited by hand)."""
    reg = Registry(tmp_path)
    v1 = register(reg)
    index = json.loads((tmp_path / "index.json").read_text())
    index["versions"][v1]["sha256"] = ""
    (tmp_path / "index.json").write_text(json.dumps(index))
    _truncate(reg.path(v1) / WEIGHTS)
    with pytest.raises(CorruptCheckpointError, match="does not load"):
        reg.verify(v1)


def test_rollback_to_a_corrupt_version_is_refused(tmp_path):
    reg = Registry(tmp_path)
    v1, v2 = register(reg, seed=0), register(reg, seed=1)
    reg.promote(v1)
    reg.promote(v2)
    _truncate(reg.path(v1) / WEIGHTS)
    with pytest.raises(CorruptCheckpointError):
        reg.rollback()
    assert reg.champion() == "v2" and reg.history() == ["v1", "v2"]


def test_non_finite_weights_fail_verify(tmp_path):
    reg = Registry(tmp_path)
    model, vocab = tiny()
    with torch.no_grad():
        model.item_emb.weight[2, 0] = float("nan")
    v1 = reg.register(model=model, vocab=vocab)
    with pytest.raises(CorruptCheckpointError, match="non-finite"):
        reg.promote(v1)
    assert reg.champion() is None


def test_promote_compare_and_swap_and_listing(tmp_path):
    from streamrec.model.registry import ChampionChangedError, format_versions

    reg = Registry(tmp_path)
    v1, v2, v3 = (register(reg, seed=i, cutoff=1_000_000 * (i + 1)) for i in range(3))
    reg.promote(v1, expect_champion=None)
    reg.promote(v3)  # by hand, while a job gated v2 against v1
    with pytest.raises(ChampionChangedError, match="champion is v3, not v1"):
        reg.promote(v2, expect_champion="v1")
    assert reg.champion() == "v3" and reg.get(v2).status == "candidate"
    reg.reject(v2, "gated against v1")
    table = format_versions(reg.list()).splitlines()
    assert len(table) == 4 and table[3].startswith("* v3") and "champion" in table[3]
    assert "rejected" in table[2] and "gated against v1" in table[2] and "1970-01-24" in table[2]
