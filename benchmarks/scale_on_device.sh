#!/usr/bin/env bash
# Issue 14 on a bigger machine (a lent GPU host: 16 cores): the 20M scale run, then the SASRec worker
# on the 20M database with the model on the GPU beside the model alone on the same device.
#
#   bash benchmarks/scale_on_device.sh OUTDIR [EVENTS]     # EVENTS default 20000263 (ML-20M's count)
#
# OUTDIR receives scale.csv, scale.png and the logs. Needs the project importable by python3.
set -uo pipefail
case "${1:-}" in -h|--help|"") sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0;; esac
OUT=$1
EVENTS=${2:-20000263}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$OUT" /tmp/scale-dev || exit 2
echo "$(nproc) cores; $(free -g | awk '/Mem/ {print $2}') GB; $(date -u +%FT%TZ)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PY" benchmarks/gen_ml20m.py --events "$EVENTS" --out /tmp/scale-dev/ratings.csv || exit 2
timeout "${SCALE_TIMEOUT:-420}" "$PY" benchmarks/bench_scale.py --ratings /tmp/scale-dev/ratings.csv \
  --out /tmp/scale-dev/run 2>&1 | tee "$OUT/scale.log"
cp /tmp/scale-dev/run/scale.csv /tmp/scale-dev/run/scale.png "$OUT/" 2>/dev/null
db=$(ls /tmp/scale-dev/run/scale-*/scale.duckdb 2>/dev/null | head -1)
[ -n "$db" ] || { echo "scale_on_device.sh: no worker database from the scale run" >&2; exit 1; }
timeout "${MODEL_TIMEOUT:-240}" "$PY" benchmarks/bench_worker_model.py --ratings /tmp/scale-dev/ratings.csv \
  --db "$db" --tail "${TAIL:-200000}" 2>&1 | tee "$OUT/worker-model.log"
