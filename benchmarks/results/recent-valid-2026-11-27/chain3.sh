#!/bin/bash
cd /work/main
D=benchmarks/results/recent-valid-2026-11-27
run() { # train_seed dataset model
  local out=$D/$3-$2-b-seed0-train$1
  echo "$(date -u +%H:%M:%S) start $out" >> $D/chain.log
  .venv/bin/python benchmarks/bench_accuracy.py --seed 0 --train-seed $1 --datasets $2 --models $3 --protocols b --threads 2 --json-out $out.json > $out.log 2>&1
  echo "$(date -u +%H:%M:%S) end $out rc=$?" >> $D/chain.log
}
run 1 ml-100k bert4rec
run 1 ml-100k sasrec
run 2 ml-100k bert4rec
run 2 ml-100k sasrec
run 1 ml-latest-small bert4rec
run 1 ml-latest-small sasrec
echo "$(date -u +%H:%M:%S) done 3" >> $D/chain.log
