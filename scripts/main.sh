#!/usr/bin/env bash
# The main job on a fresh machine: set-up, then a real search on real data with the embedded defaults.
#   1. train the quick sparsity-aware supernet on Fashion-MNIST mosaics (<= 10 min here)
#   2. profile its CPU latency and fit the predictor
#   3. NSGA-II search, 2 Ray workers (embedded, 127.0.0.1), budget 60 % of dense latency
#   4. print the Pareto table and write the plot
# Steps already done (checkpoint, predictor, finished search) are reused; a killed search resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
ss=.venv/bin/sparsesearch
run=runs/quick
mkdir -p "$run"
if [ ! -f "$run/supernet.json" ]; then
  echo "== 1/4 training the quick supernet (experiments/fashion_mosaic/supernet_quick.toml)"
  $ss supernet train experiments/fashion_mosaic/supernet_quick.toml --resume
fi
if [ ! -f "$run/latency_cpu.json" ]; then
  echo "== 2/4 profiling CPU latency -> $run/latency_cpu.json"
  $ss latency profile --checkpoint "$run/supernet.safetensors" --threads 1 --out "$run/latency_cpu.json"
fi
exp="$run/search"
if [ -f "$exp/experiment.json" ]; then
  echo "== 3/4 resuming the search in $exp"
  $ss resume "$exp"
else
  echo "== 3/4 NSGA-II search with 2 Ray workers (experiments/fashion_mosaic/search_quick.toml)"
  $ss run experiments/fashion_mosaic/search_quick.toml
fi
echo "== 4/4 Pareto front"
$ss pareto "$exp" --plot "$exp/front.png" --history
echo "experiment: $exp (plot $exp/front.png); query: .venv/bin/sparsesearch pareto $exp --json; resume or extend: .venv/bin/sparsesearch resume $exp --n-trials 400"
