"""Checkpoints: ``model.safetensors`` (weights) + ``card.json`` (everything else).

The card holds the model config, the item id map (``items[j]`` is the external id of index
j + 1), the data cut-off time, metrics and training time. Loading reads JSON and safetensors
only: nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from streamrec.model.config import ModelConfig
from streamrec.model.transformer import SequentialTransformer, build_model
from streamrec.model.vocab import ItemVocab

WEIGHTS, CARD = "model.safetensors", "card.json"
FORMAT = "streamrec-transformer/1"


@dataclass
class Checkpoint:
    model: SequentialTransformer
    vocab: ItemVocab
    card: dict

    @property
    def version(self) -> str:
        return self.card.get("version", "0")


def save_checkpoint(directory: str | Path, model: SequentialTransformer, vocab: ItemVocab, **card) -> Path:
    """Write weights and card to ``directory``; ``card`` adds fields such as ``data``, ``metrics``,
    ``training_seconds``. The version is the creation time plus a hash of the weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if len(vocab) != model.cfg.n_items:
        raise ValueError(f"vocabulary has {len(vocab)} items, model {model.cfg.n_items}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, directory / WEIGHTS, metadata={"format": FORMAT, "kind": model.cfg.kind})
    digest = hashlib.sha256((directory / WEIGHTS).read_bytes()).hexdigest()[:10]
    created = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    full = {
        "format": FORMAT,
        "version": f"{created}-{digest}",
        "created": created,
        "config": model.cfg.to_dict(),
        **card,
        "items": vocab.to_list(),
    }
    (directory / CARD).write_text(json.dumps(full, indent=1))
    return directory


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    directory = Path(directory)
    if not (directory / CARD).is_file() or not (directory / WEIGHTS).is_file():
        raise FileNotFoundError(f"{directory} is not a checkpoint: expected {WEIGHTS} and {CARD}")
    card = json.loads((directory / CARD).read_text())
    if card.get("format") != FORMAT:
        raise ValueError(f"{directory / CARD}: unknown format {card.get('format')!r}")
    model = build_model(ModelConfig.from_dict(card["config"]))
    model.load_state_dict(load_file(directory / WEIGHTS, device=str(device)), strict=True)
    return Checkpoint(model.to(device).eval(), ItemVocab(card["items"]), card)
