"""``streamrec report``: the online evaluation of a run, drawn from its ``evaluation`` table.

Two panels, online NDCG@K and Recall@K (K = 10 by default) over event time, one line per
(model, version) plus a dashed line for all models together. The DuckDB file is opened
read-only; DuckDB locks a file that a process has open for writing, so draw the report after
the worker stopped (or from a copy of its file).

>>> import argparse
>>> p = argparse.ArgumentParser(prog="streamrec report")
>>> configure(p)
>>> a = p.parse_args(["--db", "run.duckdb"])
>>> str(a.out), a.k, a.window
('report.png', 10, 'auto')
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

PANELS = ("NDCG", "Recall")


def _pick_window(windows: list[str], wanted: str) -> str:
    """``auto``: the rolling window over the last N events if there is one (it shows how
    quality moves; the cumulative ``all`` flattens out), else the time window, else ``all``."""
    if wanted != "auto":
        if wanted not in windows:
            raise ValueError(f"no window {wanted!r} in the evaluation table; have {sorted(windows)}")
        return wanted
    for pattern in (r"last_\d+$", r"last_\d+s$"):
        hits = sorted(w for w in windows if re.match(pattern, w))
        if hits:
            return hits[0]
    return "all"


def plot_report(db_path: str | Path, out_png: str | Path, k: int = 10, window: str = "auto") -> Path:
    """Draw online NDCG@k and Recall@k over event time, one line per model version, to a PNG."""
    import duckdb
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    from streamrec.storage.evaluation_log import read_evaluation

    db_path, out_png = Path(db_path), Path(out_png)
    if not db_path.is_file():
        raise FileNotFoundError(f"database not found: {db_path}")
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "evaluation" not in tables:
            raise LookupError(f"{db_path} has no evaluation table: was the worker run with online evaluation?")
        data = {m: read_evaluation(con, metric=m, k=k) for m in PANELS}
    finally:
        con.close()
    windows = sorted({str(w) for d in data.values() for w in d["window"].tolist()})
    if not windows:
        raise LookupError(f"{db_path}: no NDCG@{k} or Recall@{k} rows in the evaluation table yet")
    win = _pick_window(windows, window)

    fig, axes = plt.subplots(len(PANELS), 1, figsize=(10, 7), sharex=True)
    for ax, metric in zip(axes, PANELS):
        d = data[metric]
        sel = d["window"] == win
        when = _as_datetime(d["event_time"][sel], d["time_scale"][sel])
        model, version, value = d["model"][sel], d["version"][sel], d["value"][sel]
        pairs = sorted({(str(m), str(v)) for m, v in zip(model.tolist(), version.tolist())})
        for m, v in pairs:
            if v == "all" and m != "all":
                continue  # per-recommender aggregates: their versions are drawn instead
            line = (model == m) & (version == v)
            label, style = ("all models", "--") if m == "all" else (f"{m} {v}", "-")
            ax.plot(when[line], value[line], style, label=label, linewidth=1.2)
        ax.set_ylabel(f"{metric}@{k}")
        ax.grid(alpha=0.3)
        if pairs:
            ax.legend(fontsize=8, loc="best")
    axes[0].set_title(f"Online {' and '.join(f'{m}@{k}' for m in PANELS)} (window: {win})")
    axes[-1].set_xlabel("event time (UTC)")
    axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(axes[-1].xaxis.get_major_locator()))
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def _as_datetime(event_time: np.ndarray, time_scale: np.ndarray) -> np.ndarray:
    ms = (event_time.astype(np.float64) * (1000.0 / np.maximum(time_scale, 1))).astype(np.int64)
    return ms.astype("datetime64[ms]")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, default=Path("streamrec.duckdb"),
                   help="the worker's DuckDB file holding the evaluation table (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("report.png"), help="PNG to write (default: %(default)s)")
    p.add_argument("--k", type=int, default=10, help="cut-off of the metrics drawn (default: %(default)s)")
    p.add_argument("--window", default="auto",
                   help="evaluation window to draw: 'all', 'last_<N>' events, 'last_<T>s' of event time, or "
                        "'auto' for the last-N-events window (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    try:
        out = plot_report(args.db, args.out, k=args.k, window=args.window)
    except (FileNotFoundError, LookupError, ValueError) as e:
        print(f"streamrec report: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


COMMANDS = {
    "report": (configure, run, "draw online NDCG@10 and Recall@10 over event time, per model version, to a PNG"),
}
