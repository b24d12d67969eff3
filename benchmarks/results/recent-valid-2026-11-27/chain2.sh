#!/bin/bash
cd /work/main
while kill -0 2207 2>/dev/null; do sleep 5; done
D=benchmarks/results/recent-valid-2026-11-27
run() { # seed dataset model protocol
  local out=$D/$3-$2-$4-seed$1
  echo "$(date -u +%H:%M:%S) start $out" >> $D/chain.log
  .venv/bin/python benchmarks/bench_accuracy.py --seed $1 --datasets $2 --models $3 --protocols $4 --threads 2 --json-out $out.json > $out.log 2>&1
  echo "$(date -u +%H:%M:%S) end $out rc=$?" >> $D/chain.log
}
run 1 ml-latest-small bert4rec b
run 1 ml-latest-small sasrec b
run 2 ml-latest-small bert4rec b
run 2 ml-latest-small sasrec b
run 2 ml-latest-small sasrec a
echo "$(date -u +%H:%M:%S) done 2" >> $D/chain.log
