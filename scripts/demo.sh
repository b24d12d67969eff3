#!/usr/bin/env bash
# Set up (if needed) and run the demo: broker, worker, MovieLens replay, lists and metrics on screen.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/streamrec demo "$@"
