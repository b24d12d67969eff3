#!/bin/bash
cd /work/main
D=benchmarks/results/recent-valid-2026-11-27
for t in 1 2; do
  out=$D/sasrec-ml-100k-a-seed0-train$t
  echo "$(date -u +%H:%M:%S) start $out" >> $D/chain.log
  .venv/bin/python benchmarks/bench_accuracy.py --seed 0 --train-seed $t --datasets ml-100k --models sasrec --protocols a --threads 2 --json-out $out.json > $out.log 2>&1
  echo "$(date -u +%H:%M:%S) end $out rc=$?" >> $D/chain.log
done
echo "$(date -u +%H:%M:%S) done 4" >> $D/chain.log
