"""`streamrec train / evaluate / recommend` through their argparse definitions, on tiny data."""

import argparse
import json

import numpy as np
import pytest
import torch

from streamrec.model.commands import COMMANDS
from streamrec.storage.movielens import load_titles

torch.set_num_threads(1)  # tiny models: threads only add contention on a shared CI box

MOVIES = "tests/data/movies.csv"


def parse(name, argv):
    configure, run, help_text = COMMANDS[name]
    p = argparse.ArgumentParser(prog=f"streamrec {name}", description=help_text)
    configure(p)
    return p.parse_args(argv), run


@pytest.fixture(scope="module")
def chain_csv(tmp_path_factory):
    """Users walk a fixed cycle of 30 movies from random starts (so the model has something to learn)."""
    rng = np.random.default_rng(0)
    movie_ids = sorted(load_titles(MOVIES))[:30]
    path = tmp_path_factory.mktemp("data") / "ratings.csv"
    rows, t = [], 1_000_000
    for user in range(1, 121):
        start = rng.integers(0, 30)
        for step in range(8):
            rows.append(f"{user},{movie_ids[(start + step) % 30]},4.0,{t}")
            t += 1
    path.write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    return path, movie_ids


def test_every_command_has_help(capsys):
    assert set(COMMANDS) == {"train", "evaluate", "recommend"}
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            parse(name, ["--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "--checkpoint" in out or "--out" in out


@pytest.mark.parametrize("kind", ["sasrec", "bert4rec"])
def test_train_evaluate_recommend(kind, chain_csv, tmp_path, capsys):
    csv, movie_ids = chain_csv
    out = tmp_path / kind
    args, run = parse("train", ["--ratings", str(csv), "--model", kind, "--out", str(out), "--epochs", "40",
                                "--dropout", "0.1",
                                "--d-model", "32", "--max-len", "10", "--batch-size", "32", "--lr", "0.005",
                                "--warmup-steps", "5", "--no-progress"])
    assert run(args) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["data"]["cutoff_time"] == 1_000_000 + 120 * 8 - 1
    assert card["data"]["n_users"] == 120 and card["training_seconds"] > 0
    assert card["metrics"]["test"][kind]["NDCG@10"] > card["metrics"]["test"]["popularity"]["NDCG@10"]
    capsys.readouterr()

    args, run = parse("evaluate", ["--checkpoint", str(out), "--ratings", str(csv), "--json"])
    assert run(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["users"] == 120
    assert res["metrics"][kind]["NDCG@10"] == pytest.approx(card["metrics"]["test"][kind]["NDCG@10"])
    assert "uniform100/NDCG@10" not in res["metrics"][kind]  # 30 items: too few for 100 negatives

    titles = load_titles(MOVIES)
    watched = [titles[m] for m in movie_ids[3:7]]
    args, run = parse("recommend", ["--checkpoint", str(out), "--movies", MOVIES, "--titles", *watched, "-k", "5"])
    assert run(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(kind) and len(lines) == 6
    recommended = [line.split(". ", 1)[1].rsplit("  (", 1)[0] for line in lines[1:]]
    assert not set(recommended) & set(watched)
    assert titles[movie_ids[7]] in recommended[:2]  # the chain continues with the next movie

    args, run = parse("recommend", ["--checkpoint", str(out), "--movies", MOVIES, "--titles", "No Such Movie (1800)"])
    assert run(args) == 2


def test_train_reads_the_event_log_of_a_worker_database(tmp_path):
    """``train --db``: the events a worker stored in DuckDB (a real store, closed as a stopped worker's)."""
    from streamrec.storage.batch import EventBatch
    from streamrec.storage.store import EventStore
    from streamrec.streams.events import event_keys

    users, items = np.repeat(np.arange(1, 21), 6), np.tile(np.arange(1, 7), 20)
    times = 1_000_000_000 + 1000 * np.arange(120)  # ms
    ids = [f"{u}:{i}:{t}:view" for u, i, t in zip(users.tolist(), items.tolist(), times.tolist())]
    db = tmp_path / "events.duckdb"
    store = EventStore(db)
    store.append(EventBatch.of(key=event_keys(ids), event_id=ids, user=users, item=items, event_time=times,
                               event_type=["view"] * 120, offset=np.arange(120)))
    store.close()
    args, run = parse("train", ["--db", str(db), "--out", str(tmp_path / "m"), "--epochs", "1", "--d-model", "8",
                                "--max-len", "8", "--no-progress", "--no-test"])
    assert run(args) == 0
    data = json.loads((tmp_path / "m" / "card.json").read_text())["data"]
    assert data["source"] == f"duckdb:{db}"
    assert (data["n_users"], data["n_items"], data["cutoff_time"]) == (20, 6, int(times.max()) // 1000)
    assert data["n_events"] == 120  # every stored event, none invented, none lost


@pytest.mark.parametrize("kind", ["sasrec", "bert4rec"])
def test_train_defaults_are_the_models_recipe(kind, chain_csv, tmp_path):
    from streamrec.model.config import ModelConfig, TrainConfig

    csv, _ = chain_csv
    args, run = parse("train", ["--ratings", str(csv), "--model", kind, "--out", str(tmp_path / "m"), "--epochs", "1",
                                "--no-progress", "--no-test"])
    assert run(args) == 0
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    want_m, want_t = ModelConfig.defaults(kind, n_items=30).to_dict(), TrainConfig.defaults(kind, epochs=1).to_dict()
    assert card["config"] == want_m and card["train"] == want_t
    if kind == "bert4rec":  # its own recipe, not SASRec's
        assert card["config"]["mask_prob"] == 0.4 and card["train"]["batch_size"] == 32
    assert card["config"]["repeat_bias"] is True and card["train"]["ema"] == 0.99


def test_train_options_turn_off_the_repeat_score_and_the_weight_average(chain_csv, tmp_path):
    csv, _ = chain_csv
    args, run = parse("train", ["--ratings", str(csv), "--out", str(tmp_path / "m"), "--epochs", "1", "--no-progress",
                                "--no-test", "--no-repeat-score", "--ema", "0"])
    assert run(args) == 0
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["config"]["repeat_bias"] is False and card["train"]["ema"] == 0.0


@pytest.mark.parametrize("value", ["1", "1.5", "-0.1", "abc"])
def test_ema_outside_zero_to_one_is_a_usage_error(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        parse("train", ["--ratings", "r.csv", "--out", str(tmp_path), "--ema", value])
    assert e.value.code == 2 and "--ema" in capsys.readouterr().err
    from streamrec.model.config import TrainConfig

    with pytest.raises(ValueError, match="ema must be"):
        TrainConfig(ema=1.0)


@pytest.mark.parametrize("value", ["1.5", "-0.1", "abc"])
def test_last_mask_outside_zero_to_one_is_a_usage_error(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        parse("train", ["--ratings", "r.csv", "--out", str(tmp_path), "--model", "bert4rec", "--last-mask", value])
    assert e.value.code == 2 and "--last-mask" in capsys.readouterr().err
    from streamrec.model.config import ModelConfig

    with pytest.raises(ValueError, match="last_mask is a share"):
        ModelConfig(kind="bert4rec", last_mask=1.5)
    assert ModelConfig.defaults("bert4rec").last_mask == 0.25 and ModelConfig.defaults("sasrec").last_mask == 0.0


def test_contradictory_model_options_are_one_line_errors_before_the_data_loads(tmp_path, capsys):
    # r.csv does not exist: the options are judged first (this was "unexpected ValueError ... please report it")
    args, run = parse("train", ["--ratings", str(tmp_path / "r.csv"), "--out", str(tmp_path / "m"), "--heads", "3"])
    assert run(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: d_model=64 is not divisible by n_heads=3"


def test_train_can_validate_on_the_newest_events_and_refit_on_all(chain_csv, tmp_path, capsys):
    """--valid recent: early stopping on every event of the newest 5% (scored with its user's earlier
    events), then a refit on everything; no test set, the card says which validation it used."""
    csv, movie_ids = chain_csv
    out = tmp_path / "recent"
    args, run = parse("train", ["--ratings", str(csv), "--model", "sasrec", "--out", str(out), "--epochs", "30",
                                "--dropout", "0.1", "--d-model", "32", "--max-len", "10", "--batch-size", "32",
                                "--lr", "0.005", "--warmup-steps", "5", "--no-progress", "--valid", "recent"])
    assert run(args) == 0
    err = capsys.readouterr().err
    times = 1_000_000 + np.arange(120 * 8)  # the fixture's: one event a second
    n_valid = int((times >= int(np.quantile(times, 0.95))).sum())
    assert f"the newest 5% of the events ({n_valid} scored); no test set" in err and 45 <= n_valid <= 50
    card = json.loads((out / "card.json").read_text())
    m = card["metrics"]
    assert m["validation"] == "recent" and "test" not in m and card["data"]["n_users"] == 120
    assert m["valid"]["NDCG@10"] > 0.5 and m["refit_epochs"] == m["best_epoch"] > 0  # the cycle is learnable
    titles = load_titles(MOVIES)
    watched = [titles[m_] for m_ in movie_ids[3:7]]
    args, run = parse("recommend", ["--checkpoint", str(out), "--movies", MOVIES, "--titles", *watched, "-k", "3"])
    assert run(args) == 0
    assert titles[movie_ids[7]] in capsys.readouterr().out  # the refit model continues the cycle


def test_recent_validation_with_nothing_before_it_is_a_clear_error(tmp_path, capsys):
    csv = tmp_path / "one-second.csv"
    csv.write_text("userId,movieId,rating,timestamp\n" + "".join(f"1,{m},4.0,100\n" for m in (1, 2, 3, 4, 5, 6)))
    args, run = parse("train", ["--ratings", str(csv), "--out", str(tmp_path / "m"), "--valid", "recent",
                                "--no-progress"])
    assert run(args) == 2
    assert "nothing happened before the newest 5% of the events to train on" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
