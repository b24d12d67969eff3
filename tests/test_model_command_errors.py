"""User errors of `streamrec train / evaluate / recommend / report`, as a user meets them: one line on
stderr naming the problem and the fix, exit status 2 for an option out of range and 1 otherwise, never a
traceback nor the "unexpected ... please report it" of a bug, and nothing written by a command that failed.

Most cases run the real command line (``streams.cli.main``, its one-line parser and error handler) in
this process, to stay fast; a few run it in a subprocess as a user would."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import duckdb
import pytest
import torch

from streamrec.model.checkpoint import CARD, WEIGHTS, load_checkpoint
from streamrec.model.registry import CorruptCheckpointError
from streamrec.storage.movielens import FormatError, load_ratings, load_titles
from tests.test_cli_errors import one_line_error, streamrec

torch.set_num_threads(1)

MOVIES = Path(__file__).parent / "data" / "movies.csv"
TINY = ["--epochs", "1", "--d-model", "8", "--max-len", "8", "--no-progress", "--no-test"]


def cli(capsys, *args: str) -> subprocess.CompletedProcess:
    """``streamrec ARGS`` in this process: its exit status, stdout and stderr."""
    from streamrec.streams.cli import main

    capsys.readouterr()
    try:
        status = main([str(a) for a in args])
    except SystemExit as e:  # argparse's usage errors
        status = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), status, out.out, out.err)


def fails(r: subprocess.CompletedProcess, status: int, *words: str) -> str:
    line = one_line_error(r, status, *words)
    assert "unexpected" not in line and "please report" not in line, line
    return line


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny ratings.csv (40 users, 8 events each over 30 films) and a checkpoint trained on it."""
    d = tmp_path_factory.mktemp("data")
    ids = sorted(load_titles(MOVIES))[:30]
    rows = [f"{u},{ids[(u + s) % 30]},4.0,{1_000_000 + 8 * u + s}" for u in range(1, 41) for s in range(8)]
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    from streamrec.streams.cli import main

    assert main(["train", "--ratings", str(d / "ratings.csv"), "--out", str(d / "ck"), *TINY]) == 0
    return d


# --- options out of range: one usage line when the command line is parsed -----------------------------


@pytest.mark.parametrize("extra, words", [
    (["--epochs", "0"], ["--epochs", "1 or more", "not 0"]),
    (["--epochs", "-1"], ["--epochs", "1 or more"]),
    (["--epochs", "abc"], ["--epochs", "invalid whole number value"]),
    (["--batch-size", "0"], ["--batch-size", "1 or more"]),
    (["--batch-size", "-5"], ["--batch-size", "1 or more"]),
    (["--heads", "0"], ["--heads", "1 or more"]),
    (["--eval-every", "0"], ["--eval-every", "1 or more"]),
    (["--d-model", "0"], ["--d-model", "1 or more"]),
    (["--future", "0"], ["--future", "1 or more"]),
    (["--max-len", "0"], ["--max-len", "1 or more"]),
    (["--layers", "0"], ["--layers", "1 or more"]),
    (["--patience", "0"], ["--patience", "1 or more"]),
    (["--dropout", "1.5"], ["--dropout", "at least 0 and below 1"]),
    (["--dropout", "-1"], ["--dropout", "at least 0 and below 1"]),
    (["--lr", "-1"], ["--lr", "above 0"]),
    (["--lr", "0"], ["--lr", "above 0"]),
    (["--mask-prob", "2"], ["--mask-prob", "from 0 to 1"]),
    (["--label-smoothing", "2"], ["--label-smoothing", "at least 0 and below 1"]),
    (["--negatives", "-1"], ["--negatives", "0 or more"]),
    (["--knn-k", "-1"], ["--knn-k", "0 or more"]),
    (["--warmup-steps", "-1"], ["--warmup-steps", "0 or more"]),
    (["--weight-decay", "-1"], ["--weight-decay", "0 or more"]),
    (["--seed", "-1"], ["--seed", "from 0 to 4294967295"]),
    (["--min-user-events", "-3"], ["--min-user-events", "0 or more"]),
    (["--min-rating", "nan"], ["--min-rating", "finite number"]),
    (["--max-minutes", "-1"], ["--max-minutes", "above 0"]),
    (["--max-minutes", "0"], ["--max-minutes", "above 0"]),
    (["--device", "banana"], ["--device", "unknown device 'banana'", "auto, cpu, cuda"]),
    (["--device", "cpu:1"], ["--device", "unknown device"]),
])
def test_train_option_out_of_range_is_one_usage_line(extra, words, data, tmp_path, capsys):
    out = tmp_path / "ck"
    fails(cli(capsys, "train", "--ratings", data / "ratings.csv", "--out", out, *extra), 2, *words, "--help")
    assert not out.exists()


@pytest.mark.parametrize("command, extra, words", [
    ("evaluate", ["--batch-size", "0"], ["--batch-size", "1 or more"]),
    ("evaluate", ["--batch-size", "-1"], ["--batch-size", "1 or more"]),
    ("evaluate", ["--min-user-events", "-1"], ["--min-user-events", "0 or more"]),
    ("evaluate", ["--device", "banana"], ["--device", "unknown device"]),
    ("recommend", ["-k", "0"], ["-k", "1 or more"]),
    ("recommend", ["-k", "-3"], ["-k", "1 or more"]),
    ("recommend", ["--device", "banana"], ["--device", "unknown device"]),
])
def test_evaluate_and_recommend_options_out_of_range(command, extra, words, data, capsys):
    source = ["--ratings", data / "ratings.csv"] if command == "evaluate" else ["--movies", MOVIES, "--titles", "x"]
    r = cli(capsys, command, "--checkpoint", data / "ck", *source, *extra)
    fails(r, 2, *words)
    assert r.stdout == ""


def test_report_k_out_of_range(tmp_path, capsys):
    fails(cli(capsys, "report", "--db", tmp_path / "w.duckdb", "--k", "0", "--out", tmp_path / "r.png"), 2,
          "--k", "1 or more")
    assert not (tmp_path / "r.png").exists()


def test_zero_where_it_means_off_is_accepted():
    from tests.test_model_commands import parse

    args, _ = parse("train", ["--ratings", "r.csv", "--out", "o", "--negatives", "0", "--knn-k", "0",
                              "--warmup-steps", "0", "--mask-prob", "0", "--dropout", "0", "--min-user-events", "0",
                              "--label-smoothing", "0", "--weight-decay", "0", "--ema", "0", "--lr", "1e-4"])
    assert (args.negatives, args.knn_k, args.warmup_steps, args.mask_prob, args.lr) == (0, 0, 0, 0.0, 1e-4)


def test_bert4rec_max_len_below_2_is_refused_before_the_data(data, tmp_path, capsys):
    out = tmp_path / "ck"
    fails(cli(capsys, "train", "--ratings", data / "ratings.csv", "--out", out, "--model", "bert4rec",
              "--max-len", "1"), 2, "--max-len 1", "bert4rec", "2 or more")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["train", "evaluate", "recommend"])
def test_cuda_without_cuda_is_one_line(command, data, tmp_path, capsys):
    source = {"train": ["--ratings", data / "ratings.csv", "--out", tmp_path / "ck"],
              "evaluate": ["--checkpoint", data / "ck", "--ratings", data / "ratings.csv"],
              "recommend": ["--checkpoint", data / "ck", "--movies", MOVIES, "--titles", "toy story (1995)"]}[command]
    for device in ("cuda", "cuda:1"):
        fails(cli(capsys, command, *source, "--device", device), 2, f"--device: {device}: no CUDA device here",
              "--device cpu or auto")
    assert not (tmp_path / "ck").exists()


# --- train --out: checked before the data is read ----------------------------------------------------


def test_train_out_is_checked_before_the_data(data, tmp_path, capsys):
    ratings = data / "ratings.csv"
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    # one line: not even the data summary ("N events, M users") was printed, so nothing was read
    fails(cli(capsys, "train", "--ratings", ratings, "--out", afile, *TINY), 1,
          f"--out {afile} is a file, not a directory")
    assert afile.read_text() == "keep me"
    fails(cli(capsys, "train", "--ratings", ratings, "--out", afile / "sub", *TINY), 1, f"{afile} is a file")
    if Path("/proc/self").is_dir():  # Linux: nothing can be created in /proc, even by root
        fails(cli(capsys, "train", "--ratings", ratings, "--out", "/proc/streamrec-ck", *TINY), 1,
              "--out /proc/streamrec-ck", "cannot write in /proc")
    assert not list(tmp_path.glob(".streamrec-probe-*")) and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_train_no_users_writes_nothing(data, tmp_path, capsys):
    out = tmp_path / "new" / "ck"
    fails(cli(capsys, "train", "--ratings", data / "ratings.csv", "--out", out, "--min-rating", "99", *TINY), 2,
          "no user has enough events")
    assert not (tmp_path / "new").exists()


# --- evaluate without users ------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [["--min-rating", "99"], ["--min-user-events", "1000"]])
def test_evaluate_with_no_user_left_fails_like_train(extra, data, capsys):
    r = cli(capsys, "evaluate", "--checkpoint", data / "ck", "--ratings", data / "ratings.csv", *extra)
    fails(r, 2, "no user has enough events to evaluate on", "--min-rating", "--min-user-events")
    assert r.stdout == ""  # no table of zeros


# --- damaged checkpoints ---------------------------------------------------------------------------


@pytest.fixture
def damaged(data, tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    (d / WEIGHTS).write_bytes((data / "ck" / WEIGHTS).read_bytes())
    (d / CARD).write_text("{")
    return d


def test_corrupt_card_is_one_line(damaged, data, capsys):
    fails(cli(capsys, "evaluate", "--checkpoint", damaged, "--ratings", data / "ratings.csv"), 1,
          f"{damaged / CARD} is not valid JSON", "train it again")
    r = streamrec("recommend", "--checkpoint", str(damaged), "--movies", str(MOVIES), "--titles", "toy story (1995)")
    fails(r, 1, f"{damaged / CARD} is not valid JSON")
    assert r.stdout == ""


def test_load_checkpoint_raises_corrupt_checkpoint_error(damaged, data):
    with pytest.raises(CorruptCheckpointError, match=r"card\.json is not valid JSON \("):
        load_checkpoint(damaged)
    (damaged / CARD).write_text("[]")
    with pytest.raises(CorruptCheckpointError, match="not a card"):
        load_checkpoint(damaged)
    card = json.loads((data / "ck" / CARD).read_text())
    (damaged / CARD).write_text(json.dumps({**card, "format": "other/9"}))
    with pytest.raises(CorruptCheckpointError, match="unknown format 'other/9'"):
        load_checkpoint(damaged)
    (damaged / CARD).write_text(json.dumps(card))
    (damaged / WEIGHTS).write_bytes((damaged / WEIGHTS).read_bytes()[:100])  # truncated weights
    with pytest.raises(CorruptCheckpointError, match="model.safetensors does not load"):
        load_checkpoint(damaged)


def test_weights_that_load_as_nan_are_a_damaged_checkpoint(damaged, data):
    """Bytes flipped inside the tensor data still load (as NaN): such a model lists nothing, and
    recommend printed "top 0" with exit 0, the worker published empty lists."""
    from safetensors.torch import load_file, save_file

    (damaged / CARD).write_text((data / "ck" / CARD).read_text())
    weights = load_file(damaged / WEIGHTS)
    name = sorted(weights)[0]
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, damaged / WEIGHTS)
    with pytest.raises(CorruptCheckpointError, match=f"non-finite weights in {name}"):
        load_checkpoint(damaged)
    r = streamrec("recommend", "--checkpoint", str(damaged), "--movies", str(MOVIES), "--titles", "toy story (1995)")
    fails(r, 1, "non-finite weights", "train it again")
    assert r.stdout == ""


# --- malformed ratings files ----------------------------------------------------------------------

HEADER = "userId,movieId,rating,timestamp\n"


@pytest.mark.parametrize("name, text, words", [
    ("ratings.csv", HEADER + "1,2,3.0,4\n1,abc,3.0,5\n", ["ratings.csv: line 3: movieId 'abc' is not a whole number"]),
    ("ratings.csv", HEADER + "1,2,3.0,4\n1,3\n", ["ratings.csv: line 3 has 2 fields, not 4"]),
    ("ratings.csv", HEADER + "1,2,3.0,4\n1,,3.0,5\n", ["ratings.csv: line 3: movieId '' is not a whole number"]),
    ("ratings.dat", "1::10::5::100\n1::11\n", ["ratings.dat: line 2 has 2 fields, not 4"]),
    ("ratings.dat", "1::10::5::100\n1::x::4::7\n", ["ratings.dat: line 2: item 'x' is not a number"]),
])
def test_malformed_rows_name_file_and_line(name, text, words, tmp_path, capsys):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(FormatError):
        load_ratings(f)
    fails(cli(capsys, "train", "--ratings", f, "--out", tmp_path / "ck", *TINY), 1, *words, "expected")
    assert not (tmp_path / "ck").exists()


def test_malformed_csv_through_a_subprocess(tmp_path):
    f = tmp_path / "ratings.csv"
    f.write_text(HEADER + "1,2,3.0,4\n1,abc,3.0,5\n")
    r = streamrec("train", "--ratings", str(f), "--out", str(tmp_path / "ck"), *TINY)
    fails(r, 1, "line 3: movieId 'abc'", "userId,movieId,rating,timestamp")
    assert not (tmp_path / "ck").exists()


# --- DuckDB files ---------------------------------------------------------------------------------


@pytest.fixture
def dbs(tmp_path):
    (tmp_path / "zero.duckdb").write_bytes(b"")
    (tmp_path / "text.duckdb").write_text("hello\n")
    duckdb.connect(str(tmp_path / "empty.duckdb")).close()
    (tmp_path / "adir").mkdir()
    return tmp_path


@pytest.mark.parametrize("db, words", [
    ("zero.duckdb", ["zero.duckdb is not a DuckDB database file"]),
    ("text.duckdb", ["text.duckdb is not a DuckDB database file"]),
    ("empty.duckdb", ["empty.duckdb has no event log", "not a worker's database"]),
    ("nonexist.duckdb", ["database not found", "nonexist.duckdb"]),
    ("adir", ["adir is a directory, not a database"]),
])
def test_train_db_that_is_no_event_log(db, words, dbs, capsys):
    fails(cli(capsys, "train", "--db", dbs / db, "--out", dbs / "ck", *TINY), 1, *words)
    assert not (dbs / "ck").exists() and not (dbs / "nonexist.duckdb").exists()


def test_evaluate_db_without_events(dbs, data, capsys):
    fails(cli(capsys, "evaluate", "--checkpoint", data / "ck", "--db", dbs / "empty.duckdb"), 1,
          "has no event log", "--ratings FILE")


@pytest.mark.parametrize("db, words", [
    ("zero.duckdb", ["zero.duckdb is not a DuckDB database file"]),
    ("text.duckdb", ["text.duckdb is not a DuckDB database file"]),
    ("adir", ["adir is a directory, not a database"]),
    ("nonexist.duckdb", ["database not found"]),
])
def test_report_db_that_is_no_database(db, words, dbs, capsys):
    r = cli(capsys, "report", "--db", dbs / db, "--out", dbs / "r.png")
    fails(r, 1, *words)
    assert r.stdout == "" and not (dbs / "r.png").exists()


# --- a directory or the wrong file where a file is expected ----------------------------------------


def test_directory_given_as_a_file(tmp_path, data, capsys):
    fails(cli(capsys, "train", "--ratings", tmp_path, "--out", tmp_path / "ck", *TINY), 1,
          "is a directory, not a ratings file")
    fails(cli(capsys, "recommend", "--checkpoint", data / "ck", "--movies", tmp_path, "--titles", "x"), 1,
          "is a directory, not a movies file")
    assert not (tmp_path / "ck").exists()


def test_movies_file_with_other_columns(tmp_path, data, capsys):
    wrong = tmp_path / "movies.csv"
    wrong.write_text("id,name\n1,Toy Story (1995)\n")
    r = cli(capsys, "recommend", "--checkpoint", data / "ck", "--movies", wrong, "--titles", "toy story")
    fails(r, 1, "movies.csv", "lacks movieId,title")
    assert r.stdout == ""
    wrong.write_text("movieId,title\nabc,Toy Story (1995)\n")
    with pytest.raises(FormatError, match="line 2: movieId 'abc' is not a whole number"):
        load_titles(wrong)


# --- report --out: the file named is the file written ----------------------------------------------


@pytest.fixture
def export_dir(tmp_path):
    from streamrec.storage.evaluation_log import export_evaluation, write_snapshot

    con = duckdb.connect()
    for t in (1_000_000, 2_000_000):
        rows = [("sasrec", "v1", 10, "all", m, 0.1 * i, 5.0) for i, m in enumerate(("NDCG", "Recall"), 1)]
        write_snapshot(con, rows, event_time=t)
    export_evaluation(con, tmp_path / "export")
    con.close()
    return tmp_path / "export"


def test_report_out_names_the_file_written(export_dir, tmp_path, capsys):
    r = cli(capsys, "report", "--export-dir", export_dir, "--out", tmp_path / "myreport")
    assert r.returncode == 0 and r.stdout.strip() == f"wrote {tmp_path / 'myreport.png'}", (r.stdout, r.stderr)
    assert (tmp_path / "myreport.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "myreport").exists()
    adir = tmp_path / "adir"
    adir.mkdir()
    r = cli(capsys, "report", "--export-dir", export_dir, "--out", adir)
    assert r.returncode == 0 and r.stdout.strip() == f"wrote {adir / 'report.png'}", (r.stdout, r.stderr)
    assert (adir / "report.png").is_file() and not (tmp_path / "adir.png").exists()


def test_evaluate_and_recommend_still_work(data, capsys):
    """The checks pass good input: a table of 40 users, and top 3."""
    r = cli(capsys, "evaluate", "--checkpoint", data / "ck", "--ratings", data / "ratings.csv", "--device", "cpu",
            "--batch-size", "1")
    assert r.returncode == 0 and "40 users" in r.stdout, r.stderr
    r = cli(capsys, "recommend", "--checkpoint", data / "ck", "--movies", MOVIES, "--titles", "toy story (1995)",
            "-k", "3", "--device", "auto")
    assert r.returncode == 0 and "top 3 after" in r.stdout and len(r.stdout.strip().splitlines()) == 4, r.stderr


def test_no_traceback_in_a_subprocess_for_a_bad_option():
    fails(streamrec("evaluate", "--checkpoint", "ck", "--ratings", "r.csv", "--batch-size", "0"), 2, "--batch-size")
