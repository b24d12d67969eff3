"""Continuous retraining: warm start from the champion, fine-tune on recent events plus replay,
gate on the newest held-out events, register (and promote or reject) the candidate.

Use (``streamrec retrain`` does this; ``tests/test_retrain.py`` runs it on small data)::

    res = retrain(Registry("models"), read_events("export"), RetrainConfig())
    res.version, res.status, res.reason   # ("v4", "champion", "NDCG@10 candidate 0.0912 >= ...")

**Vocabulary growth.** The new vocabulary is the champion's items plus every item seen in the
events that it does not know. ``ItemVocab`` keeps ids in ascending order (its lookups are a
``searchsorted``, and ``load_checkpoint`` insists on it), so an old item keeps its *weights* but its
*index* moves when a new item with a smaller id arrives: rows are copied by item id, bit for bit
(``grow_model``). New items' embedding rows start near the mean old row (``N(mean, new_row_noise *
std)`` per dimension) and their output bias at the mean old bias; padding, positions, every block
and the BERT4Rec mask token row (index n + 1, which moves with n) are copied exactly.

**Data.** ``events`` are all logged events in event-time order (``storage.export.read_events``),
filtered as in training (``min_rating``, ``min_user_events``). The *gate set* is every user with
an event after the champion's data cut-off and at least 3 events: their newest event is the
held-out test target (never trained on), the one before it the early-stopping target. Warm
fine-tuning trains on the *recent window* (events after the champion's cut-off, or the last
``window_events`` events / ``window_seconds``) of each user active in it, with up to ``max_len``
older items as context, plus a replay sample: the newest ``max_len + 1`` items of a random
``replay_fraction`` of the other users. ``cold=True`` trains a fresh model on every user's whole
sequence (the gate users' last two items still held out). Early stopping keeps the best
fine-tuned epoch; the untuned warm start only competes with ``keep_start=True`` (on a small,
noisy validation set it tends to win, and then the new items never get learned; the gate is
what protects the champion).

**Threads.** On a box whose cores are shared, set ``threads`` (e.g. 1): an oversubscribed
OpenMP pool made fine-tuning 7x slower in our measurements.

**Gate.** Candidate and champion are scored on the same held-out events with full ranking, seen
items excluded (``model.evaluate.full_ranks``, ``model.metrics.summarize``); each model reads the
histories through its own vocabulary, and a target the champion does not know is a miss for it.
The candidate is promoted iff ``NDCG@10(candidate) >= NDCG@10(champion) - margin`` (absolute) and
its registered files pass ``Registry.verify``; otherwise it is registered as ``rejected`` with the
reason and both numbers. The very first candidate (no champion, or none usable) is gated against
popularity on the same events (item counts of the training sequences, seen items excluded: what a
worker serves without a model): promoted iff ``NDCG@10(candidate) >= NDCG@10(popularity) - margin``.
Popularity's number is recorded with every candidate (``metrics["gate"]["popularity_NDCG@10"]``).
With ``promote=False`` (``streamrec retrain --shadow``) a candidate that passes the gate stays a
``candidate`` (its files verified): the paired comparison on live traffic decides (``model.shadow``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from streamrec.model.config import ModelConfig, TrainConfig
from streamrec.model.data import Sequences, build_sequences, length_sorted_batches
from streamrec.model.evaluate import evaluate_histories, full_ranks, item_counts, model_scorer, popularity_scorer
from streamrec.model.registry import ChampionChangedError, CorruptCheckpointError, Registry, RegistryError
from streamrec.model.transformer import SequentialTransformer, build_model
from streamrec.model.vocab import ItemVocab
from streamrec.model.warm_start import fit, grow_model, grow_vocab
from streamrec.storage.movielens import Ratings

log = logging.getLogger(__name__)


class RetrainError(RuntimeError):
    """Retraining cannot run (no usable events, champion not loadable for a warm start ...)."""


def _fine_tune_defaults() -> TrainConfig:
    return TrainConfig(epochs=5, lr=1e-3, warmup_steps=5, patience=2)


def _cold_defaults() -> TrainConfig:
    return TrainConfig(epochs=30, lr=1e-3, warmup_steps=100, patience=3)


@dataclass
class RetrainConfig:
    cold: bool = False  # train from scratch on all events (also used when there is no champion)
    model: ModelConfig = field(default_factory=ModelConfig)  # architecture of a cold model (n_items: from data)
    train: TrainConfig = field(default_factory=_fine_tune_defaults)  # warm fine-tuning
    cold_train: TrainConfig = field(default_factory=_cold_defaults)  # cold training
    min_rating: float | None = None  # data filters (TrainConfig's own filter fields are ignored)
    min_user_events: int = 3
    window_events: int | None = None  # recent window = last N events ...
    window_seconds: float | None = None  # ... and/or the last T seconds; default: since the champion's cut-off
    replay_fraction: float = 0.2  # share of the other users whose newest items are replayed
    keep_start: bool = False  # warm: the untuned warm start may win early stopping (never learns new items then)
    new_row_noise: float = 0.1  # new embedding rows ~ N(mean, new_row_noise * std) of the old rows
    margin: float = 0.005  # promote iff candidate NDCG@10 >= champion NDCG@10 - margin (absolute)
    max_gate_users: int | None = None  # evaluate the gate on at most this many users (random sample)
    seed: int = 0
    threads: int | None = None  # torch.set_num_threads for the job (process-wide); None: leave as is
    promote: bool = True  # False: a candidate that passes the gate stays "candidate" (shadow mode decides)
    popularity_gate: bool = True  # a first model must not lose to popularity (False: promoted ungated)
    progress: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RetrainResult:
    version: str
    promoted: bool
    candidate_ndcg: float
    champion_ndcg: float | None  # None when there was no champion to compare with
    reason: str
    seconds: float  # whole job: data, training, gate, registry
    new_items: int
    mode: str = "warm"  # "warm" or "cold"
    parent: str | None = None  # warm-start source (None when trained cold)
    training_seconds: float = 0.0
    gate_users: int = 0
    train_sequences: int = 0
    status: str = ""  # in the registry after the run: champion, rejected, or candidate (passed, not promoted)


# --- gate -------------------------------------------------------------------------------------


def holdout_metrics(
    model: SequentialTransformer, vocab: ItemVocab, histories: list[np.ndarray], targets: np.ndarray,
    batch_size: int = 256,
) -> dict[str, float]:
    """Full-ranking metrics of ``model`` on held-out ``targets`` (external ids) given ``histories``
    (external ids), read through the model's own vocabulary: unknown history items are dropped,
    an unknown target is a miss. Seen items are excluded from the ranking."""
    from streamrec.model.metrics import summarize

    model.eval()
    hist = [h[h > 0] for h in (vocab.encode(h) for h in histories)]
    t = vocab.encode(np.asarray(targets, np.int64))
    ranks = np.full(len(t), -1, dtype=np.int64)  # -1 = miss
    known = np.flatnonzero(t > 0)
    scorer = model_scorer(model)
    with torch.inference_mode():
        for b in length_sorted_batches(np.array([len(hist[i]) for i in known], dtype=np.int64), batch_size):
            rows = known[b]
            hs = [hist[i] for i in rows]
            ranks[rows] = full_ranks(scorer(hs), hs, t[rows]).cpu().numpy()
    out = {k: float(v) for k, v in summarize(ranks, ks=(10, 20)).items()}
    out["users"] = len(t)
    out["known_targets"] = int(len(known))
    return out


# --- the job ----------------------------------------------------------------------------------


def _filter(events: Ratings, min_rating: float | None, min_user_events: int) -> Ratings:
    if min_rating is not None:
        events = events.filter(events.rating >= min_rating)
    users, counts = np.unique(events.user, return_counts=True)
    return events.filter(np.isin(events.user, users[counts >= min_user_events]))


def _suffix_counts(users: np.ndarray, events: Ratings, mask: np.ndarray) -> np.ndarray:
    """Per user of ``users`` (sorted), how many of their events ``mask`` selects."""
    u, c = np.unique(events.user[mask], return_counts=True)
    out = np.zeros(len(users), dtype=np.int64)
    out[np.searchsorted(users, u)] = c
    return out


def _vocabulary(ev: Ratings, champ, warm: bool) -> tuple[ItemVocab, np.ndarray]:
    """The candidate's vocabulary and the item ids new to it (all of them without a champion)."""
    if warm:  # old items keep their rows even when the events no longer mention them
        return grow_vocab(champ.vocab, ev.item)
    vocab = ItemVocab.from_ids(ev.item)
    return vocab, vocab.ids if champ is None else np.setdiff1d(vocab.ids, champ.vocab.ids)


def gate_metrics(model: SequentialTransformer, vocab: ItemVocab, champ, full: list[np.ndarray],
                 gate_idx: np.ndarray) -> tuple[dict, dict | None]:
    """Candidate's and champion's metrics on the gate users' newest held-out events (the same
    users and targets for both; ``full``: sequences as candidate indices)."""
    test_hist = [vocab.decode(full[i][:-1]) for i in gate_idx]
    test_targets = vocab.decode(np.array([full[i][-1] for i in gate_idx], dtype=np.int64))
    cand_m = holdout_metrics(model, vocab, test_hist, test_targets)
    champ_m = None if champ is None else holdout_metrics(champ.model.cpu(), champ.vocab, test_hist, test_targets)
    return cand_m, champ_m


def _champion(registry: Registry, cfg: RetrainConfig):
    """(version, loaded checkpoint or None, its data cut-off) of the champion, if any."""
    parent = registry.champion()
    if parent is None:
        return None, None, None
    champ = None
    try:
        champ = registry.load(parent)
    except (CorruptCheckpointError, RegistryError) as e:
        if not cfg.cold:
            raise RetrainError(f"champion {parent} cannot be loaded for a warm start ({e}); "
                               "roll back (`streamrec rollback`) or retrain cold") from e
        log.warning("champion %s cannot be loaded (%s): cold candidate promoted without comparison", parent, e)
    return parent, champ, registry.get(parent).cutoff_time


def select_gate(ev: Ratings, seqs: Sequences, newer: np.ndarray, since: int | None, cfg: RetrainConfig,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The gate set: users (rows of ``seqs``) with 3+ events and one after the champion's cut-off
    (all users for a first model), at most ``max_gate_users`` of them. Returns (mask over users,
    the indices of the users gated on)."""
    gate = (_suffix_counts(seqs.users, ev, newer) > 0) & (seqs.lengths() >= 3)
    if since is not None and not gate.any():
        raise RetrainError(f"no user with 3+ events has an event after the champion's cut-off {since}: "
                           "nothing to gate on")
    gate_idx = np.flatnonzero(gate)
    if cfg.max_gate_users is not None and len(gate_idx) > cfg.max_gate_users:
        gate_idx = np.sort(rng.choice(gate_idx, cfg.max_gate_users, replace=False))
    return gate, gate_idx


def select_training(ev: Ratings, seqs: Sequences, full: list[np.ndarray], body: list[np.ndarray], newer: np.ndarray,
                    cutoff: int, warm: bool, max_len: int, cfg: RetrainConfig,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """The training sequences (``body``: every user's sequence, the gate users' last two items
    held out). Cold: all of them. Warm: each recent user's recent part with up to ``max_len``
    items of context, plus the newest items of a ``replay_fraction`` sample of the others.
    ``cutoff``: the newest event time of all events (``window_seconds`` counts back from it)."""
    if not warm:
        return [s for s in body if len(s)]
    recent = newer.copy()
    if cfg.window_events is not None or cfg.window_seconds is not None:
        recent = np.ones(len(ev), bool)
        if cfg.window_events is not None:
            recent[: max(0, len(ev) - cfg.window_events)] = False
        if cfg.window_seconds is not None:
            recent &= ev.timestamp > cutoff - cfg.window_seconds
    n_recent = _suffix_counts(seqs.users, ev, recent)
    train_seqs = []
    for s, b, nr in zip(full, body, n_recent):
        if nr > 0:  # the recent part (held-out items excluded) with up to max_len items of context
            nr_body = max(0, nr - (len(s) - len(b)))
            train_seqs.append(b[max(0, len(b) - nr_body - max_len) :])
        elif rng.random() < cfg.replay_fraction:
            train_seqs.append(b[-(max_len + 1) :])
    return [s for s in train_seqs if len(s)]


def popularity_metrics(body: list[np.ndarray], full: list[np.ndarray], gate_idx: np.ndarray, n_items: int) -> dict:
    """Popularity's metrics on the gate (same users, targets and seen-item masking as the models'):
    items ranked by their count in the training sequences ``body``, what a worker serves without a model."""
    if len(gate_idx) == 0:
        return {"NDCG@10": 0.0, "users": 0}
    hist = [full[i][:-1] for i in gate_idx]
    targets = np.array([full[i][-1] for i in gate_idx], dtype=np.int64)
    # (in batches: one [users, items] score matrix for every gate user would not fit at ML-20M scale)
    return {**evaluate_histories(popularity_scorer(item_counts(body, n_items)), hist, targets), "users": len(targets)}


def decide(registry: Registry, version: str, cand: float, ch: float | None, parent: str | None,
           cfg: RetrainConfig, pop: float | None = None) -> tuple[str, str]:
    """Apply the gate to the registered ``version``: (status in the registry afterwards, reason).

    Status ``champion`` (promoted), ``candidate`` (passed, ``promote=False``: the shadow
    comparison decides) or ``rejected``.
    """
    first = "first model" if parent is None else f"champion {parent} unusable"
    if ch is None and pop is not None and cand < pop - cfg.margin:  # worse than what a worker serves without it
        ok, reason = False, (f"{first}: NDCG@10 candidate {cand:.4f} < popularity {pop:.4f} - margin {cfg.margin} "
                             "(popularity keeps serving)")
    elif ch is None:
        ok, reason = True, f"{first}: NDCG@10 candidate {cand:.4f} >= popularity " + (
            f"{pop:.4f} - margin {cfg.margin}" if pop is not None else "(not measured)")
    elif cand >= ch - cfg.margin:
        ok, reason = True, f"NDCG@10 candidate {cand:.4f} >= champion {parent} {ch:.4f} - margin {cfg.margin}"
    else:
        ok, reason = False, f"NDCG@10 candidate {cand:.4f} < champion {parent} {ch:.4f} - margin {cfg.margin}"
    hold = ok and not cfg.promote and ch is not None  # passed: the shadow comparison decides
    if hold:
        try:
            registry.verify(version)
        except CorruptCheckpointError as e:
            ok, hold, reason = False, False, f"corrupt candidate: {e}"
    elif ok:
        try:  # verifies the files first; refuses if someone promoted another version meanwhile
            registry.promote(version, expect_champion=parent)
        except CorruptCheckpointError as e:
            ok, reason = False, f"corrupt candidate: {e}"
        except ChampionChangedError as e:
            ok, reason = False, f"gated against {parent}, but {e}"
    if not ok:
        registry.reject(version, reason)
    return ("candidate" if hold else "champion" if ok else "rejected"), reason


def retrain(registry: Registry, events: Ratings, cfg: RetrainConfig | None = None) -> RetrainResult:
    """Train the next version on ``events`` (every logged event, in event-time order), register
    it, and promote it or reject it through the offline gate. See the module docstring."""
    cfg = cfg or RetrainConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    if len(events) == 0:
        raise RetrainError("no events to train on")
    cutoff = int(events.timestamp.max())
    parent, champ, since = _champion(registry, cfg)  # the warm-start source and the gate's reference
    warm = champ is not None and not cfg.cold
    mode = "warm" if warm else "cold"

    ev = _filter(events, cfg.min_rating, cfg.min_user_events)
    if len(ev) == 0:
        raise RetrainError(f"no user has {cfg.min_user_events} events (after min_rating={cfg.min_rating})")
    vocab, new_ids = _vocabulary(ev, champ, warm)
    seqs, _ = build_sequences(ev, None, 1, vocab=vocab)
    full = seqs.as_list()
    newer = np.ones(len(ev), bool) if since is None else ev.timestamp > since
    gate, gate_idx = select_gate(ev, seqs, newer, since, cfg, rng)
    body = [s[:-2] if g else s for s, g in zip(full, gate)]
    max_len = (champ.model.cfg if champ is not None else cfg.model).max_len
    train_seqs = select_training(ev, seqs, full, body, newer, cutoff, warm, max_len, cfg, rng)
    tcfg = cfg.train if warm else cfg.cold_train
    valid_hist = [full[i][:-2] for i in gate_idx]
    valid_targets = np.array([full[i][-2] for i in gate_idx], dtype=np.int64)

    if warm:
        model = grow_model(champ.model, champ.vocab, vocab, noise=cfg.new_row_noise, seed=cfg.seed)
    else:
        torch.manual_seed(tcfg.seed)
        model = build_model(ModelConfig.from_dict({**cfg.model.to_dict(), "n_items": len(vocab)}))
    model, fit_info = fit(model, train_seqs, valid_hist, valid_targets, tcfg, evaluate_start=warm and cfg.keep_start,
                          progress=cfg.progress)
    model = model.cpu()

    cand_m, champ_m = gate_metrics(model, vocab, champ, full, gate_idx)
    cand, ch = cand_m["NDCG@10"], None if champ_m is None else champ_m["NDCG@10"]
    pop_m = popularity_metrics(body, full, gate_idx, len(vocab))

    version = _register(registry, model, vocab, parent, warm, cutoff, cand_m, champ_m, pop_m, fit_info, cfg, tcfg,
                        data={"n_events": int(len(ev)), "n_users": int(len(seqs)), "n_items": len(vocab),
                              "new_items": int(len(new_ids)), "since": since, "train_sequences": len(train_seqs),
                              "train_windows": fit_info["train_windows"], "gate_users": int(len(gate_idx))})
    pop = pop_m["NDCG@10"] if cfg.popularity_gate else None
    status, reason = decide(registry, version, cand, ch, parent, cfg, pop=pop)
    log.info("retrain %s -> %s: %s (%s)", mode, version, {"champion": "promoted"}.get(status, status), reason)
    return RetrainResult(
        version=version, promoted=status == "champion", candidate_ndcg=cand, champion_ndcg=ch, reason=reason,
        status=status, seconds=time.perf_counter() - t0, new_items=int(len(new_ids)), mode=mode,
        parent=parent if warm else None, training_seconds=fit_info["seconds"], gate_users=int(len(gate_idx)),
        train_sequences=len(train_seqs),
    )


def _register(registry: Registry, model, vocab, parent, warm: bool, cutoff: int, cand_m: dict,
              champ_m: dict | None, pop_m: dict, fit_info: dict, cfg: RetrainConfig, tcfg, data: dict) -> str:
    """The candidate into the registry with what the gate and the training saw; its version."""
    metrics = {
        "gate": {"NDCG@10": cand_m["NDCG@10"], "champion_NDCG@10": None if champ_m is None else champ_m["NDCG@10"],
                 "popularity_NDCG@10": pop_m["NDCG@10"],
                 "margin": cfg.margin, "candidate": cand_m, "champion": champ_m,
                 "champion_version": parent if champ_m is not None else None},
        "valid": fit_info["valid"],
        "best_epoch": fit_info["best_epoch"],
    }
    return registry.register(
        model=model, vocab=vocab, parent=parent if warm else None, cutoff=cutoff, metrics=metrics,
        training_seconds=round(fit_info["seconds"], 2), mode="warm" if warm else "cold", data=data,
        train=tcfg.to_dict(), retrain=cfg.to_dict(), history=fit_info["history"],
    )
