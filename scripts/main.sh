#!/usr/bin/env bash
# The main job on a fresh machine: set-up, then a real search on real data with the embedded defaults.
#   1. the supernet: the shipped weights (experiments/fashion_mosaic/weights, sha256-checked), or with
#      SPARSESEARCH_FROM_SCRATCH=1 the project's own recipes from scratch (task_dense.toml, task_dense_cycle2.toml,
#      task_dense_cycle3.toml, then task_supernet.toml and task_supernet_long.toml: hours on this CPU; all resumable, and on a GPU with
#      SPARSESEARCH_TRAIN_DEVICE=cuda, which no session of this project has had to try)
#   2. profile its CPU latency at the search resolution (448 px) and fit the predictor
#   3. NSGA-II search, 2 Ray workers (embedded, 127.0.0.1), budget 60 % of dense latency, 448 px sparse scenes
#   4. print the Pareto table, write the plot, re-score the front's neighbourhood on 256 canvases (`confirm`: the
#      search's 64 cannot rank configs a few tenths of a point apart; the 24 nearest to reordering it), measure the
#      fronts' latency end to end (21 repeats)
# SPARSESEARCH_MAIN_RES=672: the same at 672 px (search_672.toml, runs/main/search672), where the window-pruning bench
# meets latency <= MACs, with the shipped 672 px supernet (supernet672: the supernet adapted further on 672 px scenes,
# task_supernet_672.toml); an evaluation there costs 3-4x, so 7 profile repeats, 96 trials, 10 confirmed and 7 measure
# repeats (RESULTS.md R2). From scratch at 672 px, the from-scratch supernet is searched as it is (adapted at 448 px):
# task_supernet_672.toml continues the shipped supernet file.
# Steps already done (predictor, finished search) are reused; a killed search resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
run=runs/main
res=${SPARSESEARCH_MAIN_RES:-448}
case "$res" in
  448) spec=experiments/fashion_mosaic/search_main.toml exp=$run/search prof=() ncand=24 mrep=21 ship=supernet ck=supernet ;;
  672) spec=experiments/fashion_mosaic/search_672.toml exp=$run/search672 prof=(--repeats 7) ncand=10 mrep=7
       ship=supernet672 ck=supernet_672 ;;
  *) echo "sparsesearch: error: scripts/main.sh: SPARSESEARCH_MAIN_RES=$res is not a search resolution; fix: 448 (the default) or 672" >&2; exit 2 ;;
esac
bash scripts/setup.sh
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
ss=.venv/bin/sparsesearch
weights=experiments/fashion_mosaic/weights
mkdir -p "$run"
if [ ! -f "$run/$ck.safetensors" ]; then
  if [ -n "${SPARSESEARCH_FROM_SCRATCH:-}" ]; then
    echo "== 1/4 training the task model and its supernet from scratch (task_dense.toml, task_dense_cycle2.toml, task_dense_cycle3.toml, task_supernet.toml, task_supernet_long.toml)"
    bash experiments/fashion_mosaic/reproduce.sh dense supernet
    src=runs/task/supernet48
  else
    echo "== 1/4 the shipped supernet ($weights/$ship.safetensors): checking the sha256 of the shipped files"
    (cd "$weights" && sha256sum -c --quiet SHA256SUMS) \
      || { echo "sparsesearch: error: $weights does not match its SHA256SUMS; fix: git checkout $weights (or train: SPARSESEARCH_FROM_SCRATCH=1 bash scripts/main.sh)" >&2; exit 2; }
    src=$weights/$ship
  fi
  cp "$src.json" "$run/$ck.json.tmp" && cp "$src.safetensors" "$run/$ck.safetensors.tmp"
  mv "$run/$ck.json.tmp" "$run/$ck.json" && mv "$run/$ck.safetensors.tmp" "$run/$ck.safetensors"
fi
if [ ! -f "$run/latency_cpu_$res.json" ]; then
  echo "== 2/4 profiling CPU latency at $res px -> $run/latency_cpu_$res.json"
  $ss latency profile --checkpoint "$run/$ck.safetensors" --img-size "$res" --threads 1 ${prof[@]+"${prof[@]}"} \
      --out "$run/latency_cpu_$res.json"
fi
if [ -f "$exp/experiment.json" ]; then
  echo "== 3/4 resuming the search in $exp"
  $ss resume "$exp"
else
  echo "== 3/4 NSGA-II search with 2 Ray workers at $res px ($spec)"
  $ss run "$spec"
fi
echo "== 4/4 the front confirmed on 256 canvases, the Pareto table + plot, and its latency measured end to end"
# (confirm again only when trials were added since the last confirmation)
if [ ! -f "$exp/confirmed.json" ] || [ -n "$(find "$exp/trials" -newer "$exp/confirmed.json" -print -quit)" ]; then
  $ss confirm "$exp" --canvases 256 --max-candidates "$ncand"
fi
$ss pareto "$exp" --plot "$exp/front.png" --history
$ss measure "$exp" --repeats "$mrep"
echo "experiment: $exp (plot $exp/front.png, table $exp/front.parquet); live view: .venv/bin/optuna-dashboard $exp/study.journal; query: .venv/bin/sparsesearch pareto $exp --json; resume or extend: .venv/bin/sparsesearch resume $exp --n-trials 400"
