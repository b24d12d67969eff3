"""Warm start: a champion grown to a larger vocabulary, and fine-tuned (``model.retrain`` uses both).

An old item keeps its weights bit for bit, though its *index* may move (``ItemVocab`` keeps ids
sorted); new items start near the mean old item. See ``model/retrain.py``'s docstring.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from streamrec.model.config import ModelConfig, TrainConfig
from streamrec.model.data import Sequences
from streamrec.model.evaluate import evaluate_histories, model_scorer
from streamrec.model.train import (
    EarlyStopping,
    configure_optimizer,
    lr_factor,
    resolve_device,
    room_for_another,
    train_epoch,
)
from streamrec.model.transformer import SequentialTransformer, build_model
from streamrec.model.vocab import ItemVocab


def grow_vocab(old: ItemVocab, items: np.ndarray) -> tuple[ItemVocab, np.ndarray]:
    """(old items + unseen ``items``, the new ids). Old items are never dropped."""
    new_ids = np.setdiff1d(np.unique(np.asarray(items, np.int64)), old.ids)
    return ItemVocab(np.union1d(old.ids, new_ids)), new_ids


def grow_model(
    model: SequentialTransformer, old: ItemVocab, new: ItemVocab, noise: float = 0.1, seed: int = 0
) -> SequentialTransformer:
    """A copy of ``model`` for vocabulary ``new`` (a superset of ``old``): every old item's
    embedding row and output bias copied bit-exactly to its new index, everything else copied,
    new items initialised near the average old item."""
    cfg = model.cfg
    if len(old) != cfg.n_items:
        raise ValueError(f"vocabulary has {len(old)} items, model {cfg.n_items}")
    pos = new.encode(old.ids)  # new index of each old item
    if (pos == 0).any():
        raise ValueError("the new vocabulary must contain every old item")
    new_cfg = ModelConfig.from_dict({**cfg.to_dict(), "n_items": len(new)})
    grown = build_model(new_cfg).to(next(model.parameters()).device)
    old_sd, sd = model.state_dict(), grown.state_dict()
    for k, v in old_sd.items():
        if k not in ("item_emb.weight", "out_bias", "knn_ids", "knn_vals"):  # the kNN table: fit() rebuilds it
            sd[k] = v.clone()
    w_old, b_old = old_sd["item_emb.weight"], old_sd["out_bias"]
    real = w_old[1 : cfg.n_items + 1]
    gen = torch.Generator().manual_seed(seed)
    w = torch.empty(new_cfg.vocab_size, cfg.d_model, dtype=w_old.dtype)
    if len(real):
        mean, std = real.mean(0).cpu(), real.std(0, unbiased=False).cpu()
    else:
        mean, std = torch.zeros(cfg.d_model), torch.full((cfg.d_model,), 0.02)
    w[:] = mean + noise * std * torch.randn(new_cfg.vocab_size, cfg.d_model, generator=gen, dtype=w_old.dtype)
    w = w.to(w_old.device)
    idx = torch.from_numpy(pos).to(w_old.device)
    w[0] = w_old[0]  # padding
    w[idx] = real
    w[new_cfg.mask_id] = w_old[cfg.mask_id]  # BERT4Rec's mask token moves from n_old + 1 to n_new + 1
    b = torch.full((len(new),), float(b_old.mean()) if len(b_old) else 0.0, dtype=b_old.dtype, device=b_old.device)
    b[idx - 1] = b_old
    sd["item_emb.weight"], sd["out_bias"] = w, b
    grown.load_state_dict(sd, strict=True)
    return grown.eval()


# --- training ---------------------------------------------------------------------------------


def fit(
    model: SequentialTransformer,
    train_seqs: list[np.ndarray],
    valid_hist: list[np.ndarray],
    valid_targets: np.ndarray,
    tcfg: TrainConfig,
    evaluate_start: bool = False,
    progress: bool = False,
) -> tuple[SequentialTransformer, dict]:
    """``model.train.train``'s loop on an existing model: AdamW, warm-up + cosine, early stopping
    on validation NDCG@10, best epoch kept. ``evaluate_start``: the untrained model competes too
    (epoch 0), so fine-tuning can never leave a warm start worse on validation."""
    torch.manual_seed(tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)
    gen = torch.Generator().manual_seed(tcfg.seed)
    device = resolve_device(tcfg.device)
    model = model.to(device)
    cfg = model.cfg
    s = Sequences.from_list(np.arange(len(train_seqs)), train_seqs)
    if cfg.knn_k > 0 and len(train_seqs):  # the item-kNN prior comes from this training data (a grown model's is empty)
        model.fit_knn(train_seqs)
    ws = model.training_windows(s)
    info = {"best_epoch": 0, "valid": {}, "history": [], "train_windows": len(ws), "seconds": 0.0}
    start = time.perf_counter()
    if not ws or tcfg.epochs <= 0:
        info["seconds"] = time.perf_counter() - start
        return model.eval(), info
    has_valid = len(valid_targets) > 0

    def validate() -> dict:
        model.eval()
        return evaluate_histories(model_scorer(model), valid_hist, valid_targets, ks=(10,))

    stopper = EarlyStopping(tcfg.patience)
    if evaluate_start and has_valid:
        m = validate()
        info["history"].append({"epoch": 0, **m})
        stopper.update(m["NDCG@10"], 0, model)
        info["valid"] = m
    opt = configure_optimizer(model, tcfg)
    total = tcfg.epochs * math.ceil(len(ws) / tcfg.batch_size)
    factor = lambda st: lr_factor(st, tcfg.warmup_steps, total, tcfg.min_lr_ratio)  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    bar = tqdm(total=total, desc=f"retrain {cfg.kind}", disable=not progress, unit="step", dynamic_ncols=True)
    deadline = None if tcfg.max_seconds is None else start + tcfg.max_seconds
    for epoch in range(tcfg.epochs):
        epoch_start = time.perf_counter()
        losses = train_epoch(model, ws, opt, sched, tcfg, rng, gen, device, bar, postfix={"epoch": epoch + 1})
        m = validate() if has_valid else None
        if _record_epoch(info, stopper, epoch + 1, float(np.mean(losses)), m, model, bar):
            break
        if not room_for_another(deadline, epoch_start):
            break
    bar.close()
    stopper.restore(model)
    info["seconds"] = time.perf_counter() - start
    return model.eval(), info


def _record_epoch(info: dict, stopper: EarlyStopping, epoch: int, loss: float, m: dict | None,
                  model: SequentialTransformer, bar) -> bool:
    """One epoch into ``info`` (history, best epoch); True when early stopping says stop. With no
    validation (``m`` None) there is nothing to select on: the last epoch is kept."""
    if m is None:
        info["history"].append({"epoch": epoch, "loss": loss})
        info["best_epoch"] = epoch
        return False
    info["history"].append({"epoch": epoch, "loss": loss, **m})
    bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}", val_ndcg10=f"{m['NDCG@10']:.4f}")
    improved = m["NDCG@10"] > stopper.best
    stop = stopper.update(m["NDCG@10"], epoch, model)
    if improved:
        info["best_epoch"], info["valid"] = epoch, m
    return stop
