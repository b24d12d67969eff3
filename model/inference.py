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

Per call: external ids are mapped to indices (unknown items dropped) for all users' items at once,
not user by user (on a GPU the per-user NumPy calls cost more than the model), users are grouped into
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
from streamrec.model.data import length_sorted_batches
from streamrec.model.recommender import Recommendations, Recommender
from streamrec.model.train import resolve_device
from streamrec.storage.seen_items import SeenItems


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
        if self.device.type == "cuda" and len(self.vocab):  # the first CUDA call sets up cuBLAS and
            # loads kernels (seconds): paid here, where the model loads, not by the first micro-batch
            self.recommend([self.vocab.ids[:1]], [self.vocab.ids[:0]], 1)

    def can_score(self, sequence: np.ndarray) -> bool:
        """True when at least ``min_known`` items of the sequence are in the model's vocabulary."""
        return bool(self.can_score_all([sequence])[0])

    def can_score_all(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        """``can_score`` of each sequence, in one pass over all their items."""
        idx, row = self._encoded(sequences)
        return np.bincount(row[idx > 0], minlength=len(sequences)) >= self.min_known

    def _encoded(self, arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(model index of every item, 0 if unknown; which array it came from), all arrays at once:
        per-user NumPy calls cost more than the model on a GPU (about 30 us a user)."""
        if isinstance(arrays, SeenItems):  # the store's seen items are one flat array already
            flat, lengths = arrays.flat()
        else:
            lengths = np.fromiter((len(a) for a in arrays), np.int64, len(arrays))
            flat = np.concatenate(arrays) if lengths.sum() else np.zeros(0, np.int64)
        return self.vocab.encode(flat), np.repeat(np.arange(len(arrays)), lengths)

    def _histories(self, sequences: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The last ``history_len`` known items of each sequence as (index, row, place from the end
        (0 = newest), length of each row's history)."""
        idx, row = self._encoded(sequences)
        idx, row = idx[idx > 0], row[idx > 0]
        counts = np.bincount(row, minlength=len(sequences))
        ends = np.cumsum(counts)
        from_end = ends[row] - 1 - np.arange(len(row))  # rows are contiguous and in order
        keep = from_end < self.model.history_len
        return idx[keep], row[keep], from_end[keep], np.minimum(counts, self.model.history_len)

    @torch.inference_mode()
    def recommend(self, sequences: Sequence[np.ndarray], seen: Sequence[np.ndarray], k: int) -> Recommendations:
        n = len(sequences)
        items = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        h_idx, h_row, h_from_end, lengths = self._histories(sequences)
        s_idx, s_row = self._encoded(seen)
        s_idx, s_row = s_idx[s_idx > 0] - 1, s_row[s_idx > 0]
        kk = min(k, self.model.cfg.n_items)
        batches = length_sorted_batches(lengths, self.batch_size)
        batch_of, place = np.zeros(n, np.int64), np.zeros(n, np.int64)  # each user's batch, and row in it
        for j, b in enumerate(batches):
            batch_of[b], place[b] = j, np.arange(len(b))
        h_parts, s_parts = _split_by(batch_of[h_row], len(batches)), _split_by(batch_of[s_row], len(batches))
        for b, h, sn in zip(batches, h_parts, s_parts):
            width = max(1, int(lengths[b].max()))
            x = np.zeros((len(b), width), np.int64)  # left-padded histories
            x[place[h_row[h]], width - 1 - h_from_end[h]] = h_idx[h]
            s = self.model.score(torch.from_numpy(x).to(self.device))
            r, c = torch.from_numpy(place[s_row[sn]]), torch.from_numpy(s_idx[sn])
            s[r.to(self.device), c.to(self.device)] = float("-inf")  # seen items are never recommended
            top_s, top_i = torch.topk(s, kk, dim=1)
            top_s, top_i = top_s.cpu().numpy(), top_i.cpu().numpy()
            ext = self.vocab.decode(top_i + 1)
            ext[~np.isfinite(top_s)] = -1  # only seen items were left: no recommendation
            items[b, :kk], scores[b, :kk] = ext, top_s
        return Recommendations(items, scores, [self.name] * n, [self.version] * n)


def _split_by(group: np.ndarray, n_groups: int) -> list[np.ndarray]:
    """Positions of ``group``'s entries, split by group 0..n_groups-1 (one sort, not a pass per group)."""
    order = np.argsort(group, kind="stable")
    return np.split(order, np.searchsorted(group[order], np.arange(1, n_groups)))
