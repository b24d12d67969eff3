"""Configuration of the sequential transformers (one dataclass for both models) and of training.

Item indices: 0 is padding, 1..n_items are real items, n_items + 1 is BERT4Rec's mask token and
SASRec's start token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


class _Dict:
    """JSON round trip for the config dataclasses; unknown keys (older or newer cards) are ignored."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class ModelConfig(_Dict):
    kind: str = "sasrec"  # "bert4rec" (bidirectional, cloze) or "sasrec" (causal, next item)
    n_items: int = 0  # number of real items in the vocabulary
    max_len: int = 200  # longest input sequence (BERT4Rec: including the appended mask token)
    d_model: int = 64
    n_heads: int = 2
    n_layers: int = 2
    dropout: float = 0.2
    pre_ln: bool = True  # pre-LN (GPT-2) trains stably without warm-up tricks; False = original post-LN
    mask_prob: float = 0.15  # BERT4Rec: fraction of positions to predict
    last_mask: float = 0.0  # BERT4Rec: share of training windows that predict only their newest item, masked
    negatives: int = 0  # SASRec: 0 = full softmax ("SASRec+"); N > 0 = sampled softmax with N negatives
    future: int = 1  # SASRec: each position learns the next `future` items (1 = the classic next item)
    label_smoothing: float = 0.1  # SASRec, full softmax: share of the target mass spread over all items
    knn_k: int = 0  # SASRec: > 0 adds an item-kNN prior (each item's knn_k strongest neighbours) to the logits
    mask_seen: bool = False  # SASRec, full softmax: a position's history items leave its training softmax
    knn_window: int = 10  # the prior: co-occurrence within this many events; the last this many items vote
    start_token: bool = False  # SASRec: a start token (id n_items + 1) before each user's first item
    item_dropout: float = 0.0  # training: share of input items whose embedding is zeroed (position and prior kept)
    emb_init: str = "normal"  # "knn": item embeddings start from the prior's co-occurrence (with knn_k 0: normal)
    repeat_bias: bool = False  # one learned score added to every item already in the history (repeat or move on)

    def __post_init__(self):
        if self.kind not in ("bert4rec", "sasrec"):
            raise ValueError(f"kind must be 'bert4rec' or 'sasrec', not {self.kind!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if not 0.0 <= self.last_mask <= 1.0:
            raise ValueError(f"last_mask is a share of training windows, from 0 to 1, not {self.last_mask!r}")
        if self.emb_init not in ("normal", "knn"):
            raise ValueError(f"emb_init must be 'normal' or 'knn', not {self.emb_init!r}")

    @classmethod
    def defaults(cls, kind: str, n_items: int = 0, **overrides) -> "ModelConfig":
        """The recipe of ``kind``: field defaults plus its ``RECIPES`` entry (what the CLI trains)."""
        return cls(kind=kind, n_items=n_items, **{**RECIPES[kind]["model"], **overrides})

    @property
    def vocab_size(self) -> int:  # pad + items + mask
        return self.n_items + 2

    @property
    def mask_id(self) -> int:
        return self.n_items + 1


@dataclass
class TrainConfig(_Dict):
    epochs: int = 100  # an upper bound: early stopping or max_seconds ends training first
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01  # AdamW; not applied to embeddings, norms and biases
    warmup_steps: int = 100  # linear warm-up, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.1
    patience: int = 8  # stop after this many evaluations without a better validation NDCG@10
    eval_every: int = 1  # epochs between validation runs
    grad_clip: float = 1.0
    seed: int = 0
    min_rating: float | None = None  # drop interactions rated below this
    min_user_events: int = 5  # drop users with fewer events (after the rating filter)
    device: str = "auto"  # "auto" = CUDA if available, else CPU
    max_seconds: float | None = 600.0  # wall-clock budget: an epoch starts only if it should end within it
    shuffle_ties: bool = True  # every epoch, same-second events of a user in a new random order
    ema: float = 0.0  # > 0: validate and return an exponential moving average of the weights (decay a step)
    refit: bool = False  # after early stopping, train anew for the best epochs on training + validation items

    def __post_init__(self):
        if not 0.0 <= self.ema < 1.0:  # 1 or more would freeze the average at the first weights
            raise ValueError(f"ema must be at least 0 and below 1, not {self.ema!r}")

    @classmethod
    def defaults(cls, kind: str, **overrides) -> "TrainConfig":
        return cls(**{**RECIPES[kind]["train"], **overrides})


# Per-model departures from the field defaults: the recipe behind docs/accuracy.md's numbers.
RECIPES: dict[str, dict[str, dict]] = {
    # SASRec with an item-kNN prior (docs/accuracy.md, "Levers tried"): item-kNN's scores, from the training
    # data, added to the logits with learned per-age weights; the transformer learns the residual.
    # The start token teaches how sequences begin (new users' first items); the refit then learns each
    # user's newest training item too (docs/accuracy.md, "Start token and refit").
    # Both learn one repeat score for the items already in the history and validate and serve a moving
    # average of their weights (docs/accuracy.md, "The repeat score and the weight average").
    # Both wait 20 epochs for a better validation score: the encoder first dips below the prior it adds to, and
    # patience 8 could end training in that dip (docs/accuracy.md, "Patience 20").
    "sasrec": {"model": {"knn_k": 200, "start_token": True, "repeat_bias": True},
               "train": {"refit": True, "ema": 0.99, "patience": 20}},
    # BERT4Rec with the same prior (its own pairs taken out at masked positions too) and the refit; a
    # lower lr lets the encoder learn a residual before it overfits (docs/accuracy.md, "BERT4Rec with the prior").
    # Its item embeddings start from the prior's co-occurrence (docs/accuracy.md, "Embeddings from the prior");
    # a quarter of its windows mask their newest item alone, as inference does (docs/accuracy.md, "Last-item windows").
    "bert4rec": {"model": {"dropout": 0.1, "mask_prob": 0.4, "label_smoothing": 0.0, "knn_k": 200, "emb_init": "knn",
                           "repeat_bias": True, "last_mask": 0.25},
                 "train": {"batch_size": 32, "lr": 5e-4, "refit": True, "ema": 0.99, "patience": 20}},
}
