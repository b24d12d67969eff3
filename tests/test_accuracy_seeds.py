"""benchmarks/accuracy_seeds.py: one row per cell across seeds, from bench_accuracy.py's JSON files."""

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _write(path: Path, seed_field, diff_lo):
    res = {"machine": "x", "date": "d", "ties": "hash", "overrides": {},
           "runs": {"ml-100k": {"intervals": {"a-masked/sasrec": {"vs": "itemknn", "diff": diff_lo[0],
                                                                  "lo": diff_lo[1], "hi": diff_lo[0] + 0.01}}}}}
    if seed_field is not None:
        res["seed"] = seed_field
    path.write_text(json.dumps(res))
    return path


def test_rows_count_the_seeds_whose_interval_is_above_zero(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    import accuracy_seeds

    files = [_write(tmp_path / "run.json", None, (0.012, 0.001)),  # no field, no name: seed 0
             _write(tmp_path / "run-seed1.json", None, (0.004, -0.002)),  # from the name
             _write(tmp_path / "other.json", 2, (0.008, 0.0005))]  # from the field
    assert accuracy_seeds.main([str(f) for f in files]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ml-100k")]
    assert row == ["| ml-100k | a-masked | sasrec | **+0.0120 [+0.0010, +0.0220]** | +0.0040 [−0.0020, +0.0140] "
                   "| **+0.0080 [+0.0005, +0.0180]** | 2 of 3 | +0.0080 |"]
    # The same seed and cell twice: which one counts would be chosen after the fact.
    assert accuracy_seeds.main([str(files[0]), str(_write(tmp_path / "again.json", 0, (0.02, 0.01)))]) == 1
    assert "seed 0 is in both" in capsys.readouterr().err
    sys.modules.pop("accuracy_seeds", None)
