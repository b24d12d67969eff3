"""benchmarks/bench_scale.py's store-only path end to end at a tiny size (the benchmark itself is run by hand)."""

import csv
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_store_only_writes_a_row_per_interval_and_the_plot(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_scale

    bench_scale.main(["--events", "12000", "--store-only", "--every", "5000", "--batch-size", "1000",
                      "--out", str(tmp_path)])
    rows = list(csv.DictReader(open(tmp_path / "scale.csv")))
    assert [int(r["events_stored"]) for r in rows] == [5000, 10000, 12000]
    assert all(float(r["store_ms_per_batch"]) > 0 and float(r["rss_mb"]) > 0 for r in rows)
    assert (tmp_path / "scale.png").stat().st_size > 1000
    sys.modules.pop("bench_scale", None)
