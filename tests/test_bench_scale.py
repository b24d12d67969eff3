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


def test_bench_stages_prints_the_cpu_of_each_stage(capsys, monkeypatch):
    """benchmarks/bench_stages.py on the first 20,000 ml-latest-small events: a row per 10,000 with
    the three stages' CPU per batch (decode and store take time; every batch has users to list)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_stages

    ratings = Path(__file__).parent / "data" / "ratings.csv"
    bench_stages.main(["--ratings", str(ratings), "--events", "20000", "--every", "10000", "--batch-size", "2000"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [r[0] for r in rows] == ["10,000", "20,000"]
    for _, decode, store, publish, store_wall, lists in rows:
        assert float(decode) > 0 and float(store) > 0 and float(publish) > 0 and float(lists) >= 1
    sys.modules.pop("bench_stages", None)
