"""The transformer as a ``Recommender`` for the worker.

>>> import tempfile
>>> from streamrec.model.checkpoint import save_checkpoint
>>> from streamrec.model.config import ModelConfig
>>> from streamrec.model.recommender import FallbackRecommender, PopularityRecommender
>>> from streamrec.model.transformer import build_model
>>> from streamrec.model.vocab import ItemVocab
>>> model = build_model(ModelConfig(n_items=4, max_len=8, d_model=8))  # untrained: any order
>>> path = save_checkpoint(tempfile.mkdtemp(), model, ItemVocab.from_ids([10, 20, 30, 40]))
>>> rec = TransformerRecommender(path, device="cpu")  # a directory written by `streamrec train`
>>> sorted(rec.recommend([np.array([10, 20])], [np.array([10, 20])], k=3).items[0].tolist())  # never a seen item
[-1, 30, 40]
>>> popularity = PopularityRecommender(window=100); popularity.observe(np.array([50, 50, 60]))
>>> worker_rec = FallbackRecommender(rec, popularity)  # unknown / short users -> popularity
>>> lists = worker_rec.recommend([np.array([10, 20]), np.array([99])], [np.array([10, 20]), np.array([99])], k=2)
>>> lists.models, lists.items[1].tolist()
(['sasrec', 'popularity'], [50, 60])

Per call: external ids are mapped to indices (unknown items dropped), users are grouped into
batches of similar length, each batch is trimmed to its longest history, the last layer and the
output projection run for the scored position only, under ``torch.inference_mode``. Seen items are
set to -inf before ``torch.topk``, so they can never be returned; slots that only seen items could
fill come back as item -1 with score -inf.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from streamrec.model.checkpoint import Checkpoint, load_checkpoint
from streamrec.model.data import length_sorted_batches, pad_left
from streamrec.model.recommender import Recommendations, Recommender
from streamrec.model.train import resolve_device


class TransformerRecommender(Recommender):
    def __init__(
        self,
        checkpoint: str | Path | Checkpoint,
        device: str | None = "auto",
        min_known: int = 1,
        batch_size: int = 1024,
    ):
        """``checkpoint``: a checkpoint directory (or a loaded ``Checkpoint``). ``min_known``: how
        many of a user's items the model must know for ``can_score``. CUDA if present, else CPU."""
        self.device = resolve_device(device)
        ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, self.device)
        self.model, self.vocab, self.card = ck.model.to(self.device).eval(), ck.vocab, ck.card
        self.name, self.version = self.model.cfg.kind, ck.version
        self.min_known, self.batch_size = min_known, batch_size

    def can_score(self, sequence: np.ndarray) -> bool:
        """True when at least ``min_known`` items of the sequence are in the model's vocabulary."""
        return int((self.vocab.encode(sequence) > 0).sum()) >= self.min_known

    def _history(self, sequence: np.ndarray) -> np.ndarray:
        idx = self.vocab.encode(sequence)
        return idx[idx > 0][-self.model.history_len :]

    @torch.inference_mode()
    def recommend(self, sequences: Sequence[np.ndarray], seen: Sequence[np.ndarray], k: int) -> Recommendations:
        n = len(sequences)
        items = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        hists = [self._history(np.asarray(s)) for s in sequences]
        kk = min(k, self.model.cfg.n_items)
        for b in length_sorted_batches(np.array([len(h) for h in hists]), self.batch_size):
            x = pad_left([hists[i] for i in b], max(1, max(len(hists[i]) for i in b)))
            s = self.model.score(torch.from_numpy(x).to(self.device))
            seen_idx = [self.vocab.encode(seen[i]) for i in b]
            rows = np.repeat(np.arange(len(b)), [len(v) for v in seen_idx])
            cols = np.concatenate(seen_idx) if len(rows) else np.zeros(0, np.int64)
            known = cols > 0
            r, c = torch.from_numpy(rows[known]), torch.from_numpy(cols[known] - 1)
            s[r.to(self.device), c.to(self.device)] = float("-inf")
            top_s, top_i = torch.topk(s, kk, dim=1)
            top_s, top_i = top_s.cpu().numpy(), top_i.cpu().numpy()
            ext = self.vocab.decode(top_i + 1)
            ext[~np.isfinite(top_s)] = -1  # only seen items were left: no recommendation
            items[b, :kk], scores[b, :kk] = ext, top_s
        return Recommendations(items, scores, [self.name] * n, [self.version] * n)
