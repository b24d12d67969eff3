#!/bin/bash
cd /work/main
D=benchmarks/results/recent-valid-2026-11-27
run() { # seed dataset model
  local out=$D/$3-$2-b-seed$1
  echo "$(date -u +%H:%M:%S) start $out" >> $D/chain.log
  .venv/bin/python benchmarks/bench_accuracy.py --seed $1 --datasets $2 --models $3 --protocols b --threads 2 --json-out $out.json > $out.log 2>&1
  echo "$(date -u +%H:%M:%S) end $out rc=$?" >> $D/chain.log
}
run 0 ml-100k bert4rec
run 0 ml-100k sasrec
run 0 ml-latest-small bert4rec
run 0 ml-latest-small sasrec
run 1 ml-100k bert4rec
run 1 ml-100k sasrec
run 2 ml-100k bert4rec
run 2 ml-100k sasrec
echo "$(date -u +%H:%M:%S) done" >> $D/chain.log
