"""The transformer inside the worker: users scored per second by the worker vs the model alone.

In one run on one embedded broker:

1. an ML-20M-shaped stream (``gen_ml20m.py``, ``--events``) is produced to a topic first;
2. a SASRec checkpoint of the stream's catalogue is written (untrained: speed does not depend on
   the weights; ``--d-model``, ``--max-len`` as served);
3. ``streamrec worker --checkpoint`` ingests the topic as fast as it can; the worker's rate is the
   users it scored with the transformer per wall second, from its first stored event to its last;
4. standalone: the same ``TransformerRecommender`` (this process, same torch threads) scores the
   stream's histories in calls of the batch sizes the worker used
   (users per model call, from its metrics).

    python benchmarks/bench_worker_model.py --events 300000

At scale (issue 14): ``--db`` a worker database that already holds ``--ratings`` (e.g. the 20M
events ``bench_scale.py`` stored; it is copied, not changed), and the worker serves the last
``--tail`` events of that file again as new events (timed now), so every user it scores has
the history the 20M log gave them:

    python benchmarks/bench_worker_model.py --ratings RATINGS.csv --db SCALE.duckdb --tail 200000
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_ml20m import write_ratings  # noqa: E402

from streamrec.model.checkpoint import Checkpoint, save_checkpoint  # noqa: E402
from streamrec.model.config import ModelConfig  # noqa: E402
from streamrec.model.inference import TransformerRecommender  # noqa: E402
from streamrec.model.transformer import build_model  # noqa: E402
from streamrec.model.vocab import ItemVocab  # noqa: E402
from streamrec.storage.movielens import load_ratings  # noqa: E402
from streamrec.streams.broker import EmbeddedBroker  # noqa: E402
from streamrec.streams.config import Settings  # noqa: E402
from streamrec.streams.events import Event, encode  # noqa: E402
from streamrec.streams.processes import WorkerProcess, metric_sum  # noqa: E402
from streamrec.streams.replay import make_producer  # noqa: E402
from streamrec.streams.topics import ensure_topics  # noqa: E402


def produce(bootstrap: str, topic: str, users: list[int], items: list[int]) -> None:
    p = make_producer(bootstrap)
    now = int(time.time() * 1000) - len(users)
    for k, (u, i) in enumerate(zip(users, items)):
        p.produce(topic, value=encode(Event(u, i, now + k, "rating", 4.0)), key=str(u).encode())
        if k % 10000 == 0:
            p.poll(0)
    p.flush(60)


def in_worker(bootstrap: str, n: int, tmp: Path, checkpoint: Path, extra: dict,
              stored_before: int = 0) -> tuple[float, float, dict]:
    """(seconds from the first stored event to the last, events in that time, final metrics);
    ``stored_before``: events the database holds already."""
    w = WorkerProcess(bootstrap, tmp / "w.duckdb", tmp / "worker.log", group_id="bench-model",
                      checkpoint=str(checkpoint), **extra).start()
    n += stored_before
    try:
        w.wait_ready(timeout=600)
        t_first = None
        while True:
            m = w.metrics()
            stored, now = m.get("streamrec_store_events", 0), time.perf_counter()
            if stored > stored_before and t_first is None:
                t_first, n_first = now, stored
            if stored >= n:
                break
            if not w.alive():
                raise RuntimeError(w.failure())
            time.sleep(0.05)
        time.sleep(1.5)  # the last batch's lists
        return now - t_first, n - n_first, w.metrics()
    finally:
        w.stop()


def standalone(rec: TransformerRecommender, user: np.ndarray, item: np.ndarray, batch: int, users: int,
               max_len: int, k: int) -> float:
    """Users/s of ``rec`` on the stream's histories (users picked as events are, so active users more
    often; each with their last ``max_len`` items), ``batch`` users per call."""
    rng = np.random.default_rng(1)
    order = np.argsort(user, kind="stable")
    starts = np.searchsorted(user[order], np.unique(user))
    by_user = dict(zip(np.unique(user).tolist(), np.split(item[order], starts[1:])))
    seqs = [by_user[u][-max_len:] for u in user[rng.integers(0, len(user), users)].tolist()]
    rec.recommend(seqs[:batch], seqs[:batch], k)  # warm-up
    t0 = time.perf_counter()
    for a in range(0, len(seqs), batch):
        rec.recommend(seqs[a:a + batch], seqs[a:a + batch], k)
    return len(seqs) / (time.perf_counter() - t0)


def stage_ms(m: dict) -> str:
    """Each pipeline stage's mean wall time and its thread's CPU a micro-batch, from the metrics."""
    out = []
    for st in ("decode", "store", "score", "publish"):
        label = '{stage="' + st + '"}'
        n = max(m.get("streamrec_stage_duration_seconds_count" + label, 0), 1)
        wall, cpu = (m.get(name + label, 0) for name in ("streamrec_stage_duration_seconds_sum",
                                                          "streamrec_stage_cpu_seconds_total"))
        out.append(f"{st} {1000 * wall / n:.1f}/{1000 * cpu / n:.1f}")
    return ", ".join(out)


def copy_store(src: Path, dst: Path) -> int:
    """Copy a worker database (and its WAL); returns the events it owns."""
    import shutil

    import duckdb
    shutil.copy(src, dst)
    if Path(f"{src}.wal").exists():
        shutil.copy(f"{src}.wal", f"{dst}.wal")
    con = duckdb.connect(str(dst), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM events WHERE owned").fetchone()[0]
    finally:
        con.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the standalone run")
    ap.add_argument("--worker-omp", default="", help="OMP_NUM_THREADS for the worker (default: unset, as deployed)")
    ap.add_argument("--worker", nargs="*", default=[], metavar="SETTING=VALUE", help="worker settings")
    ap.add_argument("--ratings", type=Path, help="a ratings file instead of a generated stream")
    ap.add_argument("--db", type=Path, help="a worker database holding --ratings already (copied)")
    ap.add_argument("--tail", type=int, default=200_000, help="with --db: the last events served again")
    ap.add_argument("--device", default="auto",
                    help="the standalone run's device: auto (CUDA if available, as the worker picks), cpu, cuda")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():  # (before the worker's run, not after)
        sys.exit(f"bench_worker_model: --device {args.device}, but torch sees no CUDA device here")
    torch.set_num_threads(args.threads)
    os.environ.pop("OMP_NUM_THREADS", None)
    if args.worker_omp:
        os.environ["OMP_NUM_THREADS"] = args.worker_omp
    tmp = Path(tempfile.mkdtemp(prefix="bench-model-"))
    if args.ratings is None:
        write_ratings(tmp / "ratings.csv", events=args.events, seed=0)
    r = load_ratings(args.ratings or tmp / "ratings.csv")
    stored_before, serve = 0, slice(None)
    if args.db:
        stored_before, serve = copy_store(args.db, tmp / "w.duckdb"), slice(len(r) - args.tail, None)
        print(f"database {args.db}: {stored_before:,} events; serving the last {args.tail:,} again as new events",
              flush=True)
    vocab = ItemVocab.from_ids(r.item)
    cfg = ModelConfig(kind="sasrec", n_items=len(vocab), max_len=args.max_len, d_model=args.d_model)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ck_dir = save_checkpoint(tmp / "sasrec", model, vocab)
    extra = dict(kv.split("=", 1) for kv in args.worker)
    with EmbeddedBroker(log_file=tmp / "tansu.log") as broker:
        s = Settings(bootstrap_servers=broker.bootstrap)
        ensure_topics(s)
        produce(broker.bootstrap, s.interactions_topic, r.user[serve].tolist(), r.item[serve].tolist())
        seconds, events, m = in_worker(broker.bootstrap, len(r.user[serve]), tmp, ck_dir, extra, stored_before)
    scored = m.get('streamrec_lists_published_total{model="sasrec"}', 0)
    calls = m.get("streamrec_inference_seconds_count", 0)
    model_s = m.get("streamrec_inference_seconds_sum", 0)
    batch = max(1, round(metric_sum(m, "streamrec_users_scored_total") / max(calls, 1)))
    rec = TransformerRecommender(Checkpoint(model, vocab, {"version": "bench"}), device=args.device)
    alone = standalone(rec, r.user, r.item, batch, max(3000, 8 * batch), args.max_len, 20)
    worker_rate = scored / seconds
    served = f" stored, {args.tail:,} served" if args.db else ""
    print(f"{len(r):,} events{served}, {len(vocab):,} items, SASRec d={args.d_model} L={args.max_len}; worker settings "
          f"{extra or 'defaults'}")
    print(f"worker: {events / seconds:,.0f} events/s, {scored:,.0f} users scored by SASRec in {seconds:.1f}s = "
          f"{worker_rate:,.0f} users/s; {calls:.0f} model calls of {batch} users on average, "
          f"model time {model_s:.1f}s ({scored / max(model_s, 1e-9):,.0f} users/s of model time)")
    print(f"worker stages, ms a batch (wall/CPU of the stage's thread): {stage_ms(m)}")
    print(f"standalone on {rec.device}, same model, batches of {batch}: {alone:,.0f} users/s; worker/standalone = "
          f"{worker_rate / alone:.2f}")
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; load "
          f"{os.getloadavg()[0]:.1f}; standalone torch threads {args.threads}, worker OMP_NUM_THREADS "
          f"{args.worker_omp or 'unset'}; date {time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    main()
