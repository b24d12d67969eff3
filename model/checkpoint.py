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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from streamrec.model.config import ModelConfig
from streamrec.model.transformer import SequentialTransformer, build_model
from streamrec.model.vocab import ItemVocab

WEIGHTS, CARD = "model.safetensors", "card.json"
DAMAGED = "the checkpoint is damaged: train it again or give another"  # (the end of every such error)
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
    """The checkpoint in ``directory``: ``FileNotFoundError`` if it holds none, ``CorruptCheckpointError``
    (``model.registry``, one line) if its card or weights are damaged or do not belong together."""
    from streamrec.model.registry import CorruptCheckpointError  # (registry imports this module)

    directory = Path(directory)
    card = read_card(directory)
    try:
        model = build_model(ModelConfig.from_dict(card["config"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptCheckpointError(f"{directory / CARD} holds no valid model configuration ({e}); {DAMAGED}") from e
    try:
        model.load_state_dict(load_file(directory / WEIGHTS, device=str(device)), strict=True)
    except (OSError, RuntimeError, ValueError, SafetensorError) as e:
        why = " ".join(str(e).split())[:200]
        raise CorruptCheckpointError(f"{directory / WEIGHTS} does not load into the model its card describes "
                                     f"({why}); {DAMAGED}") from e
    # Bytes flipped inside the tensor data load fine as NaN or inf, and a model of them lists nothing.
    bad = [n for n, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CorruptCheckpointError(f"{directory / WEIGHTS}: non-finite weights in {', '.join(bad[:5])}; {DAMAGED}")
    return Checkpoint(model.to(device).eval(), ItemVocab(card["items"]), card)


def read_card(directory: str | Path) -> dict:
    """The card of the checkpoint in ``directory``, checked without reading the weights (the worker's
    start-up check): a dict with this format, items and a config. ``FileNotFoundError`` if the folder
    holds no checkpoint, ``CorruptCheckpointError`` if its card is damaged."""
    from streamrec.model.registry import CorruptCheckpointError

    directory = Path(directory)
    if not (directory / CARD).is_file() or not (directory / WEIGHTS).is_file():
        raise FileNotFoundError(f"{directory} is not a checkpoint: expected {WEIGHTS} and {CARD}")
    path = directory / CARD
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptCheckpointError(f"{path} is not valid JSON ({e}); {DAMAGED}") from e
    if not isinstance(card, dict):
        raise CorruptCheckpointError(f"{path} holds a JSON {type(card).__name__}, not a card (an object); {DAMAGED}")
    if card.get("format") != FORMAT:
        raise CorruptCheckpointError(f"{path}: unknown format {card.get('format')!r} (expected {FORMAT!r}); "
                                     "not a checkpoint written by `streamrec train`")
    if not isinstance(card.get("items"), list) or not isinstance(card.get("config"), dict):
        raise CorruptCheckpointError(f"{path} has no items or model configuration; {DAMAGED}")
    return card
