"""``streamrec report``: the online evaluation of a run, drawn from its ``evaluation`` table.

Two panels, online NDCG@K and Recall@K (K = 10 by default) over event time, one line per
(model, version) plus a dashed line for all models together.

Sources: ``--db``, a worker's DuckDB file, opened read-only, which DuckDB allows only once the
worker has stopped (a running worker holds the file; the command then says so in one line); or
``--export-dir``, the folder a worker run with ``--export-dir`` writes, where it keeps
``evaluation.parquet`` (a snapshot of its evaluation table, replaced every export): that one
can be drawn while the worker runs.

>>> import argparse
>>> p = argparse.ArgumentParser(prog="streamrec report")
>>> configure(p)
>>> a = p.parse_args(["--db", "run.duckdb"])
>>> str(a.out), a.k, a.window, a.export_dir
('report.png', 10, 'auto', None)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np

from streamrec.model.command_options import ranged

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


class DatabaseInUse(RuntimeError):
    """The worker's DuckDB file is held by a running process."""


def _open(db_path: Path | None, export_dir: Path | None):
    """A read-only connection with an ``evaluation`` table or view, and the source's name."""
    import duckdb

    if export_dir is not None:
        snap = Path(export_dir) / "evaluation.parquet"
        if not snap.is_file():
            raise FileNotFoundError(f"no {snap}: is a worker running with --export-dir {export_dir} (it writes the "
                                    "snapshot with every export)?")
        con = duckdb.connect()
        con.execute(f"CREATE VIEW evaluation AS SELECT * FROM read_parquet('{snap}')")
        return con, str(snap)
    if db_path.is_dir():
        raise IsADirectoryError(f"{db_path} is a directory, not a database: give the worker's DuckDB file with --db")
    if not db_path.is_file():
        raise FileNotFoundError(f"database not found: {db_path}")
    try:
        con = duckdb.connect(str(db_path), read_only=True)
    except duckdb.IOException as e:
        if "not a valid DuckDB database" in str(e):
            raise ValueError(f"{db_path} is not a DuckDB database file: give the file a worker wrote with --db, "
                             "or its --export-dir") from None
        if "lock" not in str(e).lower():
            raise
        holder = re.search(r"\(PID (\d+)\)", str(e))
        raise DatabaseInUse(f"{db_path} is held by a running worker{f' (pid {holder.group(1)})' if holder else ''}; "
                            "draw its report with --export-dir DIR (a worker run with --export-dir DIR keeps "
                            "evaluation.parquet there) or after it stops") from None
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "evaluation" not in tables:
        con.close()
        raise LookupError(f"{db_path} has no evaluation table: was the worker run with online evaluation?")
    return con, str(db_path)


def png_path(out: str | Path) -> Path:
    """The file ``--out`` names: inside an existing directory, ``report.png``; a name without ``.png``
    gets it added (what is written is always a PNG, and the message names it).

    >>> str(png_path("myreport")), str(png_path("run/r.PNG")), str(png_path("r.v2")), str(png_path("."))
    ('myreport.png', 'run/r.PNG', 'r.v2.png', 'report.png')
    """
    out = Path(out)
    if out.is_dir():
        return out / "report.png"
    return out if out.suffix.lower() == ".png" else out.with_name(out.name + ".png")


def plot_report(db_path: str | Path | None, out_png: str | Path, k: int = 10, window: str = "auto",
                export_dir: str | Path | None = None) -> Path:
    """Draw online NDCG@k and Recall@k over event time, one line per model version, to a PNG (at
    ``png_path(out_png)``, returned). From the DuckDB file ``db_path`` or, if given, a worker's ``export_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    from streamrec.storage.evaluation_log import read_evaluation

    out_png = png_path(out_png)
    con, source = _open(None if db_path is None else Path(db_path), export_dir)
    try:
        data = {m: read_evaluation(con, metric=m, k=k) for m in PANELS}
    finally:
        con.close()
    windows = sorted({str(w) for d in data.values() for w in d["window"].tolist()})
    if not windows:
        raise LookupError(f"{source}: no NDCG@{k} or Recall@{k} rows in the evaluation table yet")
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
    fig.savefig(out_png, dpi=110, format="png")
    plt.close(fig)
    return out_png


def _as_datetime(event_time: np.ndarray, time_scale: np.ndarray) -> np.ndarray:
    ms = (event_time.astype(np.float64) * (1000.0 / np.maximum(time_scale, 1))).astype(np.int64)
    return ms.astype("datetime64[ms]")


def configure(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--db", type=Path, default=Path(os.environ.get("STREAMREC_DB") or "streamrec.duckdb"),
                     help="the worker's DuckDB file holding the evaluation table, once the worker stopped "
                          "(default: STREAMREC_DB, as the worker's, else %(default)s)")
    src.add_argument("--export-dir", type=Path, default=None,
                     help="a worker's --export-dir instead: works while the worker runs")
    p.add_argument("--out", type=Path, default=Path("report.png"),
                   help="PNG to write; '.png' is added to a name without it, and an existing directory gets "
                        "report.png inside (default: %(default)s)")
    p.add_argument("--k", type=ranged(int, 1), default=10, help="cut-off of the metrics drawn (default: %(default)s)")
    p.add_argument("--window", default="auto",
                   help="evaluation window to draw: 'all', 'last_<N>' events, 'last_<T>s' of event time, or "
                        "'auto' for the last-N-events window (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    try:
        out = plot_report(args.db, args.out, k=args.k, window=args.window, export_dir=args.export_dir)
    except (FileNotFoundError, IsADirectoryError, LookupError, ValueError, DatabaseInUse) as e:
        print(f"streamrec report: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


COMMANDS = {
    "report": (configure, run, "draw online NDCG@10 and Recall@10 over event time, per model version, to a PNG"),
}
