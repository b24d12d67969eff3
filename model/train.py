"""Training loop: AdamW, linear warm-up then cosine decay, early stopping on validation NDCG@10.

The loop is the same for both models; each model class cuts its own training windows and makes
its own batches (BERT4Rec: cloze-masked windows; SASRec: windows shifted by one item, every
position predicting its successor).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from streamrec.model.config import ModelConfig, TrainConfig
from streamrec.model.data import Split
from streamrec.model.evaluate import evaluate_histories, model_scorer
from streamrec.model.transformer import SequentialTransformer, build_model


def resolve_device(name: str | None = "auto") -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class TrainResult:
    model: SequentialTransformer  # with the weights of the best validation epoch
    best_epoch: int
    valid: dict[str, float]  # validation metrics of the best epoch
    seconds: float
    history: list[dict] = field(default_factory=list)  # per evaluation: epoch, loss, metrics
    cpu_seconds: float = 0.0  # CPU time of the process while training (wall time lies on a shared machine)
    refit_epochs: int = 0  # epochs of the returned model's refit on training + validation items (0: none)


REPEAT_LR = 2e-3  # the repeat score's peak rate in every recipe (see configure_optimizer)


def configure_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    # nanoGPT: weight decay on matrices only; embeddings, norms and biases are left alone.
    params = [(n, p) for n, p in model.named_parameters() if n != "repeat"]
    decay = [p for n, p in params if p.dim() >= 2 and "emb" not in n]
    rest = [p for n, p in params if not (p.dim() >= 2 and "emb" not in n)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if getattr(model, "repeat", None) is not None:
        # One scalar that Adam moves ~lr a step: at BERT4Rec's lr (5e-4) it was still at -1 when
        # ml-latest-small's validation peaked (SASRec, at 2e-3: -1.5); its own rate lets it get there.
        groups.append({"params": [model.repeat], "weight_decay": 0.0, "lr": REPEAT_LR})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def room_for_another(deadline: float | None, epoch_start: float) -> bool:
    """Whether an epoch as long as the one begun at ``epoch_start`` (just ended) would end by ``deadline``.
    Training starts an epoch only then, so ``max_seconds`` bounds the run (the first epoch aside)
    instead of marking the point after which one more epoch runs.

    >>> room_for_another(None, 0.0)
    True
    >>> now = time.perf_counter(); room_for_another(now + 3600, now), room_for_another(now + 1e-3, now - 60)
    (True, False)
    """
    if deadline is None:
        return True
    now = time.perf_counter()
    return now + (now - epoch_start) <= deadline


class EarlyStopping:
    """Keeps the weights of the best validation score; ``update`` says when to stop (``patience``
    evaluations in a row without improvement). Shared by ``train`` and warm-start fine-tuning."""

    def __init__(self, patience: int):
        self.patience, self.best, self.best_epoch, self.bad = patience, -1.0, -1, 0
        self.best_state: dict | None = None

    def update(self, score: float, epoch: int, model: torch.nn.Module) -> bool:
        if score > self.best:
            self.best, self.best_epoch, self.bad = score, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.bad += 1
        return self.bad >= self.patience

    def restore(self, model: torch.nn.Module) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


class WeightAverage:
    """An exponential moving average of the parameters (``TrainConfig.ema``): validation scores it
    and training returns it. Its decay ramps up as (1 + t) / (10 + t), so an average taken after a
    few dozen steps (SASRec peaks early on ML-100K) is not still half the initial weights."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.steps = decay, 0
        self.avg = {k: p.detach().clone() for k, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for k, p in model.named_parameters():
            self.avg[k].lerp_(p.detach(), 1 - d)

    @contextmanager
    def applied(self, model: torch.nn.Module):
        """The model with the averaged weights inside the block, its live ones after it."""
        live = {k: p.detach().clone() for k, p in model.named_parameters()}
        model.load_state_dict(self.avg, strict=False)
        try:
            yield model
        finally:
            model.load_state_dict(live, strict=False)


def bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                     bucket: int = 16) -> list[np.ndarray]:
    """Random batches of similar lengths: shuffle, sort each run of ``bucket`` batches by length,
    cut, shuffle the batches. Batches are trimmed to their longest window, so this removes most
    padding (about half the compute on MovieLens, where a few users have 200+ events).

    >>> b = bucketed_batches(np.array([1, 9, 2, 8, 3, 7]), 2, np.random.default_rng(0))
    >>> sorted(sorted(x.tolist()) for x in b)
    [[0, 2], [1, 3], [4, 5]]
    """
    perm = rng.permutation(len(lengths))
    out = []
    for a in range(0, len(perm), batch_size * bucket):
        chunk = perm[a : a + batch_size * bucket]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        out += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [out[i] for i in rng.permutation(len(out))]


def train_epoch(model: SequentialTransformer, ws: list[np.ndarray], opt, sched, tcfg: TrainConfig,
                rng: np.random.Generator, gen: torch.Generator, device: torch.device, bar,
                postfix: dict | None = None, ema: WeightAverage | None = None) -> list[float]:
    """One pass over the training windows in random order; returns the step losses.
    The progress bar shows ``postfix`` and the running loss.

    Shared by ``train`` and the warm-start fine-tuning of ``model.retrain``. bf16 autocast on
    CUDA only, where it is fast; the CPU stays fp32.
    """
    model.train()
    losses: list[float] = []
    for batch in bucketed_batches(np.array([len(w) for w in ws]), tcfg.batch_size, rng):
        inputs, labels = model.make_batch([ws[j] for j in batch], gen)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(inputs.to(device), labels.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tcfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(model)
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix({**(postfix or {}), "loss": f"{losses[-1]:.3f}"}, refresh=False)
    return losses


def train(split: Split, mcfg: ModelConfig, tcfg: TrainConfig, progress: bool = True) -> TrainResult:
    """Train with early stopping on the validation targets; with ``tcfg.refit`` a fresh model then
    trains the best number of epochs on the training *and* validation items (each user's newest
    training event, which the validated model never learned from; the baselines count it too) and is
    the one returned. A refit that would not fit in the time budget is not started; one that the
    budget cuts short anyway is discarded."""
    device = resolve_device(tcfg.device)
    start, cpu_start = time.perf_counter(), time.process_time()
    deadline = None if tcfg.max_seconds is None else start + tcfg.max_seconds
    model = _fresh_model(mcfg, tcfg, split.train, device)
    stopper = EarlyStopping(tcfg.patience)
    history, _ = _run_epochs(model, split.train, tcfg, tcfg.epochs, device, deadline, progress,
                             valid=(_valid_histories(split), split.valid_targets), stopper=stopper)
    stopper.restore(model)
    refit_epochs = 0
    per_epoch = (time.perf_counter() - start) / max(1, history[-1]["epoch"] if history else 0)
    fits = deadline is None or time.perf_counter() + 1.2 * per_epoch * stopper.best_epoch < deadline
    if tcfg.refit and fits and stopper.best_epoch > 0 and split.refit is not None and len(split.refit):
        again = _fresh_model(mcfg, tcfg, split.refit, device)
        _, finished = _run_epochs(again, split.refit, tcfg, stopper.best_epoch, device, deadline, progress)
        if finished:
            model, refit_epochs = again, stopper.best_epoch
    model.eval()
    valid = next((h for h in history if h["epoch"] == stopper.best_epoch), {})
    return TrainResult(model, stopper.best_epoch, valid, time.perf_counter() - start, history,
                       time.process_time() - cpu_start, refit_epochs)


def _valid_histories(split: Split) -> list[np.ndarray]:
    """The inputs of the validation targets: each training sequence (its next item is the target) unless
    the split names its own (``protocols.temporal_holdout``: every later event, its strictly earlier ones)."""
    return split.train.as_list() if split.valid_histories is None else split.valid_histories


def _fresh_model(mcfg: ModelConfig, tcfg: TrainConfig, seqs, device: torch.device) -> SequentialTransformer:
    torch.manual_seed(tcfg.seed)
    model = build_model(mcfg).to(device)
    if mcfg.knn_k > 0:
        model.fit_knn(seqs.as_list())
        if mcfg.emb_init == "knn":
            model.init_emb_from_knn()
    return model


def _run_epochs(model: SequentialTransformer, seqs, tcfg: TrainConfig, epochs: int, device: torch.device,
                deadline: float | None, progress: bool, valid=None,
                stopper: EarlyStopping | None = None) -> tuple[list[dict], bool]:
    """Up to ``epochs`` epochs on ``seqs`` with the recipe's schedule (always planned over
    ``tcfg.epochs``, so a refit follows the validated run's learning rates); with ``valid``
    (histories, targets) and ``stopper``, early stopping. Returns the validation history and
    whether all ``epochs`` ran (False: stopped early or out of time)."""
    rng = np.random.default_rng(tcfg.seed)
    gen = torch.Generator().manual_seed(tcfg.seed)
    opt = configure_optimizer(model, tcfg)
    ws = model.training_windows(seqs)
    if not ws:
        raise ValueError("no training sequences: every user needs at least 3 events")
    steps = math.ceil(len(ws) / tcfg.batch_size)  # per epoch
    total = tcfg.epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, tcfg.warmup_steps, total, tcfg.min_lr_ratio))
    desc = model.cfg.kind if stopper else f"{model.cfg.kind} refit"
    bar = tqdm(total=epochs * steps, desc=desc, disable=not progress, unit="step", dynamic_ncols=True)
    history: list[dict] = []
    ema = WeightAverage(model, tcfg.ema) if tcfg.ema > 0 else None
    finished = stopper is None  # a validated run "finishes" only by running out of time on its last epoch

    def validate(epoch: int, losses: list[float]) -> bool:  # True: early stopping says stop
        model.eval()
        with ema.applied(model) if ema else nullcontext(model) as scored:
            m = evaluate_histories(model_scorer(scored), *valid, ks=(10, 20))
            history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), **m})
            bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses):.3f}", val_ndcg10=f"{m['NDCG@10']:.4f}")
            return stopper.update(m["NDCG@10"], epoch + 1, scored)

    for epoch in range(epochs):
        epoch_start = time.perf_counter()
        if tcfg.shuffle_ties and epoch > 0:
            ws = model.training_windows(seqs.shuffle_ties(rng))
        best = f"{max(stopper.best, 0):.4f}" if stopper else "-"
        losses = train_epoch(model, ws, opt, sched, tcfg, rng, gen, device, bar,
                             postfix={"epoch": epoch + 1, "best_ndcg10": best}, ema=ema)
        validated = stopper is not None and ((epoch + 1) % tcfg.eval_every == 0 or epoch == epochs - 1)
        if validated and validate(epoch, losses):
            finished = False
            break
        if epoch < epochs - 1 and not room_for_another(deadline, epoch_start):
            if stopper is not None and not validated:
                validate(epoch, losses)  # the last epoch is always scored
            finished = False
            break
    bar.close()
    if ema is not None and stopper is None:  # a refit returns its average (validation kept the best one)
        model.load_state_dict(ema.avg, strict=False)
    return history, finished
