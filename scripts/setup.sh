#!/usr/bin/env bash
# Create .venv with the project (editable), its test extras and the CPU build of PyTorch (constraints.txt).
# Installs once: afterwards it only checks (a stamp keyed by a hash of what decides the install, and
# that .venv imports this checkout), so ./scripts/demo.sh and ./scripts/test.sh start within seconds.
# Delete .venv/.setup-stamp (or change pyproject.toml / constraints.txt) to install again.
set -euo pipefail
cd "$(dirname "$0")/.."
STAMP=.venv/.setup-stamp
KEY=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ] && [ -x .venv/bin/python ] &&
   [ "$(.venv/bin/python -c 'import streamrec.streams as s; print(s.__path__[0])' 2>/dev/null)" = "$PWD/streams" ]; then
    exit 0
fi
echo "setup: installing the project into .venv (once; later runs only check)"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e '.[test]'
# ML-100K for the accuracy benchmark ships inside RecBole's wheel; its licence forbids committing it.
.venv/bin/python -m pip install -q --no-deps recbole==1.2.1 || echo "recbole not installed: ML-100K benchmarks unavailable, and the ML-100K loader test fails"
echo "$KEY" > "$STAMP"
