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
    # A training seed is its own column, not a collision with the same data seed
    other_init = {**json.loads(files[0].read_text()), "seed": 0, "train_seed": 1}
    (tmp_path / "init1.json").write_text(json.dumps(other_init))
    assert accuracy_seeds.main([str(files[0]), str(tmp_path / "init1.json")]) == 0
    assert "| seed 0 | seed 0, train seed 1 |" in capsys.readouterr().out
    # An (a)+(b) file and a later (b)-only one of the same seed collide on (b) unless --protocols picks
    ab = json.loads(files[0].read_text())
    ab["runs"]["ml-100k"]["intervals"]["b/sasrec"] = {"vs": "itemknn", "diff": 0.002, "lo": -0.001, "hi": 0.005}
    (tmp_path / "ab.json").write_text(json.dumps(ab))
    b_only = {**ab, "runs": {"ml-100k": {"intervals": {"b/sasrec": {"vs": "itemknn", "diff": 0.006, "lo": 0.003,
                                                                   "hi": 0.009}}}}}
    (tmp_path / "b.json").write_text(json.dumps(b_only))
    assert accuracy_seeds.main([str(tmp_path / "ab.json"), str(tmp_path / "b.json")]) == 1
    capsys.readouterr()
    assert accuracy_seeds.main([str(tmp_path / "ab.json"), "--protocols", "a-masked"]) == 0
    assert accuracy_seeds.main([str(tmp_path / "b.json"), "--protocols", "b"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ml-100k")]
    assert rows == ["| ml-100k | a-masked | sasrec | **+0.0120 [+0.0010, +0.0220]** | 1 of 1 | +0.0120 |",
                    "| ml-100k | b | sasrec | **+0.0060 [+0.0030, +0.0090]** | 1 of 1 | +0.0060 |"]
    sys.modules.pop("accuracy_seeds", None)
