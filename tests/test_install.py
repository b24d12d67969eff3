"""A plain (non-editable) install runs from anywhere: ``python -m streamrec --version`` and a short
``streamrec demo`` on the bundled data, in a fresh virtual environment, outside the repository.

The fresh environment gets the project's dependencies by a ``.pth`` line naming this venv's
site-packages (installing torch and friends again would take minutes); the project itself comes
only from the wheel: the test checks that ``streamrec`` and its data are imported from there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(cmd, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMREC_", "PYTHON"))}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("install")
    build = run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
                 "-w", str(tmp / "dist"), str(REPO)], timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    assert not re.search(r"deprecat", build.stdout + build.stderr, re.I), "the build warns of a deprecation"
    (wheel,) = (tmp / "dist").glob("streamrec-*.whl")
    venv = tmp / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    assert run([base, "-m", "venv", "--without-pip", str(venv)], timeout=120).returncode == 0
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # dependencies only
    r = run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
            timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "deprecat" not in (r.stdout + r.stderr).lower()
    # One namespace: nothing with a generic name lands in site-packages.
    assert sorted(p.name for p in site.iterdir()) == ["_deps.pth", "streamrec",
                                                      wheel.name.split("-py3")[0] + ".dist-info"]
    return venv


def test_version_from_outside_the_repository(fresh, tmp_path):
    for cmd in ([str(fresh / "bin" / "python"), "-m", "streamrec", "--version"],
                [str(fresh / "bin" / "streamrec"), "--version"]):
        r = run(cmd, cwd=tmp_path, timeout=60)
        assert r.returncode == 0 and r.stdout.strip() == "streamrec 0.1.0", r
    where = run([str(fresh / "bin" / "python"), "-c", "import streamrec.streams.demo as d; print(d.__file__, d.DATA)"],
                cwd=tmp_path, timeout=60).stdout.split()
    assert all(p.startswith(str(fresh)) for p in where), where  # the wheel's code and data, not the checkout's


def test_short_demo_from_outside_the_repository(fresh, tmp_path):
    r = run([str(fresh / "bin" / "streamrec"), "demo", "--model", "popularity", "--limit", "2000", "--duration", "2",
             "--workdir", "run",
             "--metrics-port", "0", "--show-users", "1"], cwd=tmp_path, timeout=240)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert re.search(r"events stored\s+2,000 in DuckDB, rejected 0", r.stdout), r.stdout
    assert str(fresh) in r.stdout  # it replayed the bundled ratings.csv of the installed package
    assert (tmp_path / "run" / "worker-0.duckdb").is_file()
    # faust's data folder is beside the DuckDB file, not a "<group>-data" folder where it was started.
    assert (tmp_path / "run" / "worker-0.duckdb.faust").is_dir()
    assert not list(tmp_path.glob("*-data")), sorted(p.name for p in tmp_path.iterdir())


def test_setup_installs_once_then_only_checks():
    """The second ./scripts/demo.sh (or test.sh) must not reinstall: setup.sh keeps a stamp."""
    setup = REPO / "scripts" / "setup.sh"
    first = run(["bash", str(setup)], timeout=900)  # installs only if pyproject/constraints changed
    assert first.returncode == 0, first.stderr[-2000:]
    again = run(["bash", str(setup)], timeout=120)
    assert again.returncode == 0 and "installing" not in again.stdout + again.stderr, again
    assert (REPO / ".venv" / ".setup-stamp").is_file()
