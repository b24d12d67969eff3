"""The transformer's part of ``streamrec demo``: train the first version, retrain it mid-stream,
and the seed's example (Harry Potter 1, then The Lord of the Rings 1) sent through the stream.

Training goes through the model package's public functions with their default configuration
(``model.train.train``, ``model.retrain.retrain``), so the demo shows whatever those defaults are;
only the wall-clock budget is the demo's.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import replace
from pathlib import Path

import msgspec
import numpy as np
from tqdm import tqdm

from streamrec.model.registry import Registry
from streamrec.storage.movielens import Ratings
from streamrec.streams.events import Event

#: The seed's example: a new user watches these two, in this order (titles as in movies.csv).
SEED_TITLES = ("Harry Potter and the Sorcerer's Stone", "Lord of the Rings: The Fellowship of the Ring, The")


def split_by_time(ratings: Ratings, fraction: float) -> int:
    """Index of the first event of the live part: ``fraction`` of the events, moved back to the
    first event of its second (no second is split between training and the live replay)."""
    n = int(len(ratings) * fraction)
    if n <= 0 or n >= len(ratings):
        return n
    return int(np.searchsorted(ratings.timestamp, ratings.timestamp[n], side="left"))


def train_first_version(history: Ratings, kind: str, registry: Registry, seconds: float) -> tuple[str, str]:
    """Train ``kind`` on ``history`` within ``seconds``, register and promote it.

    Returns (version, one line describing it)."""
    from streamrec.model.config import ModelConfig, TrainConfig
    from streamrec.model.data import build_sequences, leave_one_out
    from streamrec.model.train import train
    from streamrec.model.transformer import build_model

    tcfg = TrainConfig.defaults(kind, max_seconds=seconds)
    seqs, vocab = build_sequences(history, tcfg.min_rating, tcfg.min_user_events)
    split = leave_one_out(seqs)
    if len(split.users) == 0:
        raise ValueError("no user has enough events before the live part to train on; raise --train-fraction")
    mcfg = ModelConfig.defaults(kind, len(vocab))
    # A budget of a few epochs would end inside the default warm-up (100 steps, ~12 epochs here),
    # at a fraction of the learning rate: warm up over one epoch at most.
    steps = math.ceil(len(build_model(mcfg).training_windows(split.train)) / tcfg.batch_size)
    tcfg = replace(tcfg, warmup_steps=min(tcfg.warmup_steps, steps))
    print(f"training {kind} on {len(history):,} events ({len(split.users):,} users, {len(vocab):,} items) "
          f"for at most {seconds:.0f}s (an epoch starts only if it should end within that)", flush=True)
    res = train(split, mcfg, tcfg, progress=True)
    version = registry.register(
        model=res.model, vocab=vocab, cutoff=int(history.timestamp.max()), training_seconds=round(res.seconds, 2),
        metrics={"valid": res.valid, "best_epoch": res.best_epoch, "refit_epochs": res.refit_epochs}, mode="cold",
        train=tcfg.to_dict(),
        data={"n_events": len(history), "n_users": int(len(split.users)), "n_items": len(vocab)})
    registry.promote(version)
    ndcg = res.valid.get("NDCG@10", float("nan"))
    return version, (f"{kind} {version}: {res.seconds:.0f}s, best epoch {res.best_epoch} of {len(res.history)}, "
                     f"validation NDCG@10 {ndcg:.4f} (leave-one-out on the training period)")


class MidStreamRetrain(threading.Thread):
    """Once the worker has exported ``min_events`` events, warm-start the champion on them
    (``model.retrain.retrain``: fine-tune, offline gate), and announce a promotion so the
    workers hot-swap it between two micro-batches."""

    def __init__(self, registry: Registry, export_dirs: list[str], min_events: int, seconds: float,
                 bootstrap: str, updates_topic: str, timeout: float = 120.0):
        super().__init__(daemon=True, name="retrain")
        self.registry, self.export_dirs, self.min_events = registry, export_dirs, min_events
        self.seconds, self.bootstrap, self.updates_topic, self.timeout = seconds, bootstrap, updates_topic, timeout
        self.result = None
        self.error: str | None = None
        self.done_at: float | None = None

    def run(self) -> None:
        from streamrec.model.retrain import RetrainConfig, retrain
        from streamrec.storage.export import read_events
        from streamrec.streams.model_updates import announce

        try:
            deadline = time.time() + self.timeout
            events = read_events(*self.export_dirs)
            while len(events) < self.min_events:  # the workers export every few seconds
                if time.time() > deadline:
                    raise TimeoutError(f"only {len(events):,} of {self.min_events:,} events exported after "
                                       f"{self.timeout:.0f}s")
                time.sleep(1.0)
                events = read_events(*self.export_dirs)
            tqdm.write(f"*** retraining: warm start from {self.registry.champion()} on the {len(events):,} events "
                       f"the worker exported, at most {self.seconds:.0f}s of fine-tuning, then the offline gate")
            cfg = RetrainConfig(threads=1)  # the other core stays with the worker
            cfg.train = replace(cfg.train, max_seconds=self.seconds)
            r = self.result = retrain(self.registry, events, cfg)
            swapped = "promoted, announced: the worker swaps it in between two micro-batches"
            verdict = swapped if r.promoted else "rejected"
            champ = "-" if r.champion_ndcg is None else f"{r.champion_ndcg:.4f}"
            tqdm.write(f"*** retrained {r.version} ({r.mode} from {r.parent}, {r.training_seconds:.0f}s, "
                       f"{r.new_items} new items): gate NDCG@10 {r.candidate_ndcg:.4f} vs champion {champ} "
                       f"on {r.gate_users} users -> {verdict}")
            if r.promoted:
                announce(self.bootstrap, self.updates_topic, r.version, str(self.registry.path(r.version)), "promote")
        except Exception as e:  # reported in the summary; the demo goes on with the first version
            self.error = f"{type(e).__name__}: {e}"
            tqdm.write(f"*** retraining failed: {self.error}")
        finally:
            self.done_at = time.time()


def find_movie(titles: dict[int, str], prefix: str) -> int | None:
    """The movie whose title starts with ``prefix`` (the shortest such title), if any."""
    hits = [(len(t), mid) for mid, t in titles.items() if t.startswith(prefix)]
    return min(hits)[1] if hits else None


def send_seed_example(bootstrap: str, topic: str, user: int, items: list[int], after_ms: int) -> int:
    """Produce the seed's events for a new ``user``, one second apart after ``after_ms``;
    returns the event time (ms) of the last one."""
    from streamrec.streams.replay import make_producer

    producer, enc = make_producer(bootstrap), msgspec.json.Encoder().encode
    t = after_ms
    for item in items:
        t += 1000
        producer.produce(topic, value=enc(Event(user, item, t, "rating", 5.0)), key=str(user).encode())
    if producer.flush(30):
        raise RuntimeError("the seed's example events were not delivered")
    return t


def wait_for_list(follower, user: int, event_time: int, timeout: float = 60.0):
    """The first list of ``user`` that has seen the event at ``event_time``, or None."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with follower.lock:
            rec = follower.latest.get(user)
        if rec is not None and rec.event_time >= event_time:
            return rec
        time.sleep(0.2)
    return None


def describe_report(path: Path) -> str:
    return f"online report (NDCG@10 and Recall@10 over event time, per model version): {path}"
