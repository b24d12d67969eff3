#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite against a real embedded broker.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .  # line length, import order, pyflakes: [tool.ruff] in pyproject.toml
exec .venv/bin/python -m pytest "$@"
