#!/usr/bin/env bash
# Create .venv with the project, its test extras and the CPU build of PyTorch (constraints.txt).
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e '.[test]'
# ML-100K for the accuracy benchmark ships inside RecBole's wheel; its licence forbids committing it.
.venv/bin/python -m pip install -q --no-deps recbole==1.2.1 || echo "recbole not installed: ML-100K benchmarks unavailable"
