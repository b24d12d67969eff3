"""The seed report's example, on ml-latest-small: a SASRec trained from the CLI defaults (one
session-wide training run, capped at SEED_EPOCHS epochs to keep CI short) continues Harry Potter 1,
The Lord of the Rings 1 with The Two Towers; partial and ambiguous titles on the command line."""

import argparse
from pathlib import Path

import pytest
import torch

from streamrec.model.commands import COMMANDS

DATA = Path(__file__).parent / "data"
SEED_EPOCHS = 8  # the defaults run up to 100 epochs in 10 minutes; 8 already learn the sequels


def run(name, argv):
    configure, fn, _ = COMMANDS[name]
    p = argparse.ArgumentParser()
    configure(p)
    return fn(p.parse_args([str(a) for a in argv]))


@pytest.fixture(scope="session")
def seed_model(tmp_path_factory):
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("seed") / "sasrec"
    assert run("train", ["--ratings", DATA / "ratings.csv", "--out", out, "--epochs", SEED_EPOCHS,
                         "--no-progress", "--no-test"]) == 0
    return out


def recommend(checkpoint, titles, capsys):
    code = run("recommend", ["--checkpoint", checkpoint, "--movies", DATA / "movies.csv", "-k", 10, "--titles", *titles])
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()[1:]
    return code, [line.split(". ", 1)[1].rsplit("  (", 1)[0] for line in lines], out.err


def test_two_towers_follows_harry_potter_and_the_fellowship(seed_model, capsys):
    code, top, _ = recommend(seed_model, ["harry potter and the sorcerer's stone", "fellowship of the ring"], capsys)
    assert code == 0 and len(top) == 10
    assert "Lord of the Rings: The Two Towers, The (2002)" in top, top


def test_ambiguous_partial_titles_list_the_candidates(seed_model, capsys):
    code, _, err = recommend(seed_model, ["harry potter", "lord of the rings"], capsys)
    assert code == 2
    assert "'harry potter' fits 8 films" in err and "Harry Potter and the Chamber of Secrets (2002)" in err
    code, _, err = recommend(seed_model, ["hary poter and the chamber of secrets"], capsys)
    assert code == 2 and "is unknown; did you mean" in err and "Chamber of Secrets" in err
