#!/usr/bin/env bash
# The transformers at d=256, L=200 on one device: inference users/s (ours vs a plain
# nn.TransformerEncoder scorer, same run) and training time from the CLI defaults with d_model=256.
#
#   bash benchmarks/gpu_figures.sh cuda OUTDIR        # on a GPU machine
#   bash benchmarks/gpu_figures.sh cpu OUTDIR         # the CPU figures beside them (slow: 10-minute budgets)
#
# OUTDIR receives the accuracy runs' JSON. ML-100K is read from the installed recbole wheel.
set -uo pipefail
case "${1:-}" in -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0;; esac
DEV=${1:-cuda}
OUT=${2:-.}
PY=${PYTHON:-python3}
[ "$DEV" = cuda ] || [ "$DEV" = cpu ] || { echo "gpu_figures.sh: the device is cuda or cpu, not '$DEV'" >&2; exit 2; }
mkdir -p "$OUT" || exit 2
cd "$(dirname "$0")/.."
"$PY" -c "import sys, torch; sys.exit(0 if '$DEV' == 'cpu' or torch.cuda.is_available() else 3)" 2>/dev/null
case $? in
  0) ;;
  3) echo "gpu_figures.sh: torch sees no CUDA device here; run it on a GPU machine, or with cpu" >&2; exit 2;;
  *) echo "gpu_figures.sh: '$PY' cannot import torch (set PYTHON to the interpreter that has it)" >&2; exit 2;;
esac
if [ "$DEV" = cuda ]; then
  USERS=65536; BATCH=4096; STEPS=30; DATASETS="ml-100k ml-latest-small"; THREADS=8
  CAP="sasrec.max_seconds=60 bert4rec.max_seconds=60"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
else
  USERS=2048; BATCH=256; STEPS=5; DATASETS="ml-100k"; THREADS=2; CAP=""
fi
"$PY" -c "import torch; print('torch', torch.__version__)"
for lengths in movielens full; do
  timeout 300 "$PY" benchmarks/bench_inference.py --device "$DEV" --d-model 256 --max-len 200 --lengths $lengths \
    --users $USERS --batch-size $BATCH --train-steps $([ $lengths = movielens ] && echo $STEPS || echo 0) \
    --repeats 3 || echo "bench_inference ($lengths) failed or timed out: $?"
done
# Training time from the defaults at d=256 (the accuracy is printed too; it is not the recipe's).
# On the GPU each training run is capped at CAP seconds so that the whole script fits a short lease.
for ds in $DATASETS; do
  timeout 1500 "$PY" benchmarks/bench_accuracy.py --datasets $ds --models sasrec bert4rec --protocols a \
    --threads $THREADS --set sasrec.d_model=256 bert4rec.d_model=256 $CAP \
    --json-out "$OUT/accuracy-d256-$ds-$DEV.json" || echo "bench_accuracy d=256 $ds failed or timed out: $?"
  if [ "$DEV" = cuda ] && [ "$ds" = ml-100k ]; then  # the recipe itself (d=64) on the GPU, beside the CPU's 107 s on ML-100K
    timeout 300 "$PY" benchmarks/bench_accuracy.py --datasets ml-100k --models sasrec bert4rec --protocols a \
      --threads $THREADS --set $CAP --json-out "$OUT/accuracy-d64-ml-100k-$DEV.json" || echo "bench_accuracy d=64 failed or timed out: $?"
  fi
done
