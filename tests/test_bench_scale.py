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


def test_cpu_use_counts_the_machine_a_process_and_its_children(monkeypatch):
    """bench_scale's cores-in-use columns: a busy child shows as the parent's child and as itself
    (the broker's column), and the machine's busy time grows with it."""
    monkeypatch.syspath_prepend(str(BENCH))
    import os
    import subprocess
    import time

    import bench_scale

    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 5: pass"])
    try:
        assert child.pid in bench_scale.children(os.getpid())
        before = bench_scale.cpu_use(os.getpid(), child.pid)
        time.sleep(1.5)
        busy, _, kids, alone = bench_scale.cpu_use(os.getpid(), child.pid) - before
        assert kids > 0.1 and alone > 0.1 and busy >= alone - 0.05
    finally:
        child.kill()
        child.wait()
    assert bench_scale.stat_cpu(f"/proc/{child.pid}/stat") == 0.0  # gone: nothing, not an error
    sys.modules.pop("bench_scale", None)
