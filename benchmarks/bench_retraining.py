"""Periodic retraining vs a frozen model, on the live pipeline (run by hand; a few minutes).

Two workers read the same interactions topic in separate consumer groups, each with its own
DuckDB file: one serves v1 frozen, the other follows its registry's champion and exports its log.
ml-latest-small is replayed in chunks after v1 (trained cold on the first part); after each chunk
the retraining job warm-starts the next version from the exports, gates and promotes it, and the
worker hot-swaps it. Both workers' online NDCG@10 (all models, last 10,000 events) is plotted over
event time from their ``evaluation`` tables.

    python benchmarks/bench_retraining.py --out retraining.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from streamrec.model.config import ModelConfig, TrainConfig  # noqa: E402
from streamrec.model.registry import Registry  # noqa: E402
from streamrec.model.retrain import RetrainConfig, retrain  # noqa: E402
from streamrec.storage.evaluation_log import read_evaluation  # noqa: E402
from streamrec.storage.movielens import load_ratings  # noqa: E402
from streamrec.streams.broker import EmbeddedBroker  # noqa: E402
from streamrec.streams.cli import main as streamrec  # noqa: E402
from streamrec.streams.config import Settings  # noqa: E402
from streamrec.streams.processes import WorkerProcess  # noqa: E402
from streamrec.streams.replay import replay  # noqa: E402
from streamrec.streams.topics import ensure_topics  # noqa: E402


def wait_stored(w: WorkerProcess, n: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while w.metrics().get("streamrec_store_events", 0) < n:
        if time.time() > deadline:
            raise TimeoutError(f"{w.log}")
        time.sleep(0.3)


def ndcg_curve(db: str, window: str) -> tuple[np.ndarray, np.ndarray]:
    con = duckdb.connect(db, read_only=True)
    rows = read_evaluation(con, metric="NDCG", k=10, window=window)
    con.close()
    keep = (rows["model"] == "all") & (rows["version"] == "all")
    return rows["event_time"][keep], rows["value"][keep]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--first", type=float, default=0.3, help="share of events v1 is trained on")
    ap.add_argument("--chunks", type=int, default=4, help="retrainings over the rest of the stream")
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=8, help="cold epochs of v1")
    ap.add_argument("--out", default="retraining.png")
    args = ap.parse_args()
    ratings = load_ratings(Path(__file__).resolve().parent.parent / "tests" / "data" / "ratings.csv")
    tmp = Path(tempfile.mkdtemp(prefix="bench-retrain-"))
    registry = Registry(tmp / "registry")
    n1 = int(args.first * len(ratings))
    t = time.perf_counter()
    v1 = retrain(registry, ratings.slice(0, n1), RetrainConfig(
        cold=True, model=ModelConfig(kind="sasrec", d_model=args.d_model, n_heads=1, max_len=50),
        cold_train=TrainConfig(epochs=args.epochs), threads=1))
    print(f"v1 cold on {n1:,} events: {time.perf_counter() - t:.1f}s, gate NDCG@10 {v1.candidate_ndcg:.4f}")
    frozen = tmp / "frozen-v1"
    import shutil

    shutil.copytree(registry.path("v1"), frozen)

    with EmbeddedBroker(log_file=tmp / "tansu.log") as broker:
        base = Settings(bootstrap_servers=broker.bootstrap)
        ensure_topics(base)
        common = dict(eval_snapshot_seconds=0.5, interactions_topic=base.interactions_topic)
        live = WorkerProcess(broker.bootstrap, tmp / "retrained.duckdb", tmp / "retrained.log", group_id="retrained",
                             recommendations_topic="recs-retrained", registry=str(registry.root),
                             export_dir=str(tmp / "export"), export_every=1.0, **common).start()
        fixed = WorkerProcess(broker.bootstrap, tmp / "frozen.duckdb", tmp / "frozen.log", group_id="frozen",
                              recommendations_topic="recs-frozen", checkpoint=str(frozen), **common).start()
        try:
            live.wait_ready()
            fixed.wait_ready()
            replay(ratings.slice(0, n1), broker.bootstrap, base.interactions_topic, progress=False)
            bounds = np.linspace(n1, len(ratings), args.chunks + 1).astype(int)
            for a, b in zip(bounds[:-1], bounds[1:]):
                replay(ratings.slice(a, b), broker.bootstrap, base.interactions_topic, progress=False)
                for w in (live, fixed):
                    wait_stored(w, b)
                while live.metrics().get("streamrec_events_exported_total", 0) < b:
                    time.sleep(0.3)
                if b == len(ratings):
                    break
                t = time.perf_counter()
                streamrec(["retrain", "--registry", str(registry.root), "--export-dir", str(tmp / "export"),
                           "--bootstrap-servers", broker.bootstrap])
                champion = registry.champion()
                print(f"after {b:,} events: retrain {time.perf_counter() - t:.1f}s, champion {champion}")
                deadline = time.time() + 60
                while live.metrics().get(f'streamrec_model_info{{model="sasrec",version="{champion}"}}') != 1:
                    if time.time() > deadline:
                        raise TimeoutError("no swap")
                    time.sleep(0.3)
            time.sleep(1.5)  # last evaluation snapshots
        finally:
            live.stop()
            fixed.stop()

    window = "last_10000"
    fig, ax = plt.subplots(figsize=(10, 5))
    finals = {}
    for name, db in (("retrained", tmp / "retrained.duckdb"), ("frozen v1", tmp / "frozen.duckdb")):
        et, v = ndcg_curve(str(db), window)
        ax.plot(et.astype("datetime64[ms]"), v, label=name)
        finals[name] = (float(v[-1]) if len(v) else float("nan"), float(np.mean(v)) if len(v) else float("nan"))
    ax.set_title(f"Online NDCG@10 (all models, {window}) while replaying ml-latest-small")
    ax.set_ylabel("NDCG@10")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    for name, (last, mean) in finals.items():
        print(f"{name:10s}: online NDCG@10 last {last:.4f}, mean over the stream {mean:.4f}")
    print(f"plot: {args.out}; registry: {registry.root}")
    streamrec(["models", "--registry", str(registry.root)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
