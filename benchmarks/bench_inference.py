"""Inference users/s of ``TransformerRecommender`` vs a plain ``nn.TransformerEncoder`` scorer, and
training throughput (sequences/s), in the same run on the same data.

    python benchmarks/bench_inference.py                    # CPU, d=64, L=200, ml-latest-small lengths
    python benchmarks/bench_inference.py --device cuda --d-model 256 --users 65536 --batch-size 4096

Workload: the worker's micro-batch of touched users, each with a history whose length is drawn
from the users of ml-latest-small (capped at max_len), random items from a catalogue of n_items.
Both scorers produce top-K lists with seen items masked; they differ only in how they score:

* baseline: every user padded to max_len, users batched in arrival order, ``nn.TransformerEncoder``
  (same d_model, heads, layers, pre-LN, GELU) under ``torch.no_grad``, all positions computed,
  output projection of the last position;
* ours: users sorted into batches of similar length, each batch trimmed to its longest history,
  the last block and the projection computed for the scored position only, ``inference_mode``,
  ``F.scaled_dot_product_attention``.

With ``--recipe`` (the default) "ours" is timed a second time as the CLI trains it
(``ModelConfig.defaults``: the item-kNN prior, fitted on the workload's sequences, added to the
logits, the repeat score, SASRec's start token), at the same size: what the worker serves.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamrec.model.checkpoint import Checkpoint  # noqa: E402
from streamrec.model.config import ModelConfig, TrainConfig  # noqa: E402
from streamrec.model.data import pad_left  # noqa: E402
from streamrec.model.inference import TransformerRecommender  # noqa: E402
from streamrec.model.train import configure_optimizer  # noqa: E402
from streamrec.model.transformer import build_model  # noqa: E402
from streamrec.model.vocab import ItemVocab  # noqa: E402
from streamrec.storage.movielens import load_ratings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class PlainScorer(nn.Module):
    """The straightforward implementation: embeddings + nn.TransformerEncoder + last-position logits."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, 4 * cfg.d_model, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        L = seq.shape[1]
        x = self.item_emb(seq) + self.pos_emb(torch.arange(L, device=seq.device))
        pad = seq == 0
        pad[:, -1] = False  # the scored position is never padding
        causal = None
        if self.cfg.kind == "sasrec":
            causal = nn.Transformer.generate_square_subsequent_mask(L, device=seq.device)
        h = self.ln_f(self.encoder(x, mask=causal, src_key_padding_mask=pad, is_causal=causal is not None))
        return h[:, -1] @ self.item_emb.weight[1 : self.cfg.n_items + 1].T


def plain_recommend(model: PlainScorer, vocab: ItemVocab, seqs, seen, k, batch_size, device):
    n = len(seqs)
    items = np.full((n, k), -1, np.int64)
    hist_len = model.cfg.max_len - (1 if model.cfg.kind == "bert4rec" else 0)
    with torch.no_grad():
        for i in range(0, n, batch_size):
            hs = [vocab.encode(s)[-hist_len:] for s in seqs[i : i + batch_size]]
            x = pad_left(hs, hist_len)
            if model.cfg.kind == "bert4rec":
                x = np.concatenate([x, np.full((len(x), 1), model.cfg.mask_id)], 1)
            s = model(torch.from_numpy(x).to(device))
            for j, sn in enumerate(seen[i : i + batch_size]):
                s[j, torch.from_numpy(vocab.encode(sn) - 1).to(device)] = float("-inf")
            items[i : i + len(hs)] = vocab.decode(torch.topk(s, k).indices.cpu().numpy() + 1)
    return items


def recipe_recommender(cfg: ModelConfig, vocab: ItemVocab, seqs, args) -> TransformerRecommender:
    """``cfg``'s size with the CLI's recipe for its kind, the prior's table fitted on ``seqs``."""
    rcfg = ModelConfig.defaults(cfg.kind, cfg.n_items, max_len=cfg.max_len, d_model=cfg.d_model,
                                n_heads=cfg.n_heads, n_layers=cfg.n_layers)
    model = build_model(rcfg)
    if rcfg.knn_k > 0:
        model.fit_knn([vocab.encode(s) for s in seqs])
    return TransformerRecommender(Checkpoint(model.eval(), vocab, {"version": "bench-recipe"}),
                                  device=args.device, batch_size=args.batch_size)


def timed(fn, repeats: int, device) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=["sasrec", "bert4rec"], default=["sasrec", "bert4rec"])
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--max-len", type=int, default=200)
    p.add_argument("--n-items", type=int, default=9066, help="catalogue size (default: ml-latest-small's)")
    p.add_argument("--users", type=int, default=2048, help="users scored per measurement")
    p.add_argument("--batch-size", type=int, default=256, help="users per forward pass")
    p.add_argument("--lengths", choices=["movielens", "full"], default="movielens",
                   help="history lengths: ml-latest-small's users (capped at max_len) or all max_len")
    p.add_argument("-k", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (the best is reported)")
    p.add_argument("--train-steps", type=int, default=5, help="training steps timed per model (0: skip)")
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--recipe", action=argparse.BooleanOptionalAction, default=True,
                   help="also time ours with the CLI's recipe (prior, repeat score, start token; default: yes)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)

    if args.lengths == "movielens":
        r = load_ratings(ROOT / "tests" / "data" / "ratings.csv")
        pool = np.minimum(np.unique(r.user, return_counts=True)[1], args.max_len)
        lengths = rng.choice(pool, size=args.users)
    else:
        lengths = np.full(args.users, args.max_len)
    vocab = ItemVocab(np.arange(1, args.n_items + 1) * 3)  # external ids 3, 6, 9, ...
    seqs = [rng.choice(vocab.ids, size=n) for n in lengths]
    seen = seqs  # the worker masks the user's history
    dev = torch.cuda.get_device_name() if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  device {dev}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"d={args.d_model} heads={args.heads} layers={args.layers} max_len={args.max_len} n_items={args.n_items} "
          f"users={args.users} batch={args.batch_size} mean history {lengths.mean():.0f} ({args.lengths}) k={args.k}")
    for kind in args.models:
        cfg = ModelConfig(kind=kind, n_items=args.n_items, max_len=args.max_len, d_model=args.d_model,
                          n_heads=args.heads, n_layers=args.layers, dropout=0.1)
        ours = TransformerRecommender(Checkpoint(build_model(cfg).eval(), vocab, {"version": "bench"}),
                                      device=args.device, batch_size=args.batch_size)
        plain = PlainScorer(cfg).to(device).eval()
        t_ours = timed(lambda: ours.recommend(seqs, seen, args.k), args.repeats, device)
        t_plain = timed(lambda: plain_recommend(plain, vocab, seqs, seen, args.k, args.batch_size, device),
                        args.repeats, device)
        print(f"{kind:9s} inference: ours {args.users / t_ours:10.0f} users/s   plain TransformerEncoder "
              f"{args.users / t_plain:10.0f} users/s   speed-up {t_plain / t_ours:.1f}x")
        if args.recipe:
            recipe = recipe_recommender(cfg, vocab, seqs, args)  # built (the prior fitted) outside the timing
            t_recipe = timed(lambda: recipe.recommend(seqs, seen, args.k), args.repeats, device)
            print(f"{kind:9s} inference, the recipe: {args.users / t_recipe:10.0f} users/s   "
                  f"({t_ours / t_recipe:.2f}x ours without it, {t_plain / t_recipe:.1f}x plain)")
        if args.train_steps:
            model = build_model(cfg).to(device).train()
            opt = configure_optimizer(model, TrainConfig())
            gen = torch.Generator().manual_seed(0)
            width = args.max_len + (1 if kind == "sasrec" else 0)
            windows = [rng.integers(1, args.n_items + 1, size=min(width, n + 1)) for n in lengths]

            def step(i):
                batch = [windows[(i * args.train_batch + j) % len(windows)] for j in range(args.train_batch)]
                inputs, labels = model.make_batch(batch, gen)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss = model(inputs.to(device), labels.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            step(0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(1, args.train_steps + 1):
                step(i)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            print(f"{kind:9s} training: {args.train_steps * args.train_batch / dt:8.0f} sequences/s "
                  f"(batch {args.train_batch}, {'full softmax' if kind == 'sasrec' else 'cloze 15%'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
