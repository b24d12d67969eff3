"""Every docstring example in the installed ``streamrec`` package runs (and must pass).

Doctests are collected from the installed names (``streamrec.model.online``...) rather than by
pytest's ``--doctest-modules`` walking the folders, which would import each module a second time
under its folder name (``model.online``) beside the installed one.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest


def _modules() -> list[str]:
    names = ["streamrec"]
    for sub in ("streams", "model", "storage"):
        package = importlib.import_module(f"streamrec.{sub}")
        names += [m.name for m in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")]
    return sorted(names)


def _with_examples() -> list[str]:
    """The modules whose source has a ``>>>`` example (read, not imported, at collection)."""
    return [n for n in _modules() if ">>>" in Path(importlib.util.find_spec(n).origin).read_text()]


@pytest.mark.parametrize("name", _modules())
def test_every_module_imports(name):
    assert importlib.import_module(name).__name__ == name


@pytest.mark.parametrize("name", _with_examples())
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} has a >>> example that doctest did not find (not in a docstring?)"
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"
