#!/usr/bin/env bash
# Every figure of RESULTS.md sections R0-R5 (this round), in order, from scratch. Hours on a 2-core CPU: each
# training step is resumable (run it again to continue) and each step is skipped when its output exists.
# Timing steps (profile, benches, baselines, measure) need a quiet machine: run nothing else meanwhile.
#
#   bash experiments/fashion_mosaic/reproduce.sh [STEP ...]     (default: every step)
#
# Steps: diagnose speed dense width supernet ship supernet672 main main672 validate window efficiency ranking baselines fork samplers
#        dimap quick full (and, not by default, continue: task_dense.toml on to its last epoch). `width` (the
#        narrower model) runs before `baselines`, which puts it beside the front when its output exists.
set -euo pipefail
cd "$(dirname "$0")/../.."
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
py=.venv/bin/python
ss=.venv/bin/sparsesearch
dev=${SPARSESEARCH_TRAIN_DEVICE:+--device $SPARSESEARCH_TRAIN_DEVICE}  # e.g. SPARSESEARCH_TRAIN_DEVICE=cuda
R=experiments/fashion_mosaic/results
all=(diagnose speed dense width supernet ship supernet672 main main672 validate window efficiency ranking baselines fork samplers dimap quick full)
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=("${all[@]}")
for s in "${steps[@]}"; do
  case " ${all[*]} continue " in
    *" $s "*) ;;
    *) echo "sparsesearch: error: reproduce.sh: unknown step '$s'; fix: name steps among: ${all[*]} continue" >&2; exit 2 ;;
  esac
done
want() { local s; for s in "${steps[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

if want diagnose; then  # section R0: controlled probes, one lever each, 3072 canvases, seeds 0-2
  $py experiments/fashion_mosaic/diagnose.py base aux itemw lr2 lr05 c112 small_items dense_items w16 stagenorm bg025 \
      fast fast_itemw itemaux --canvases 3072 --threads 1 --val 128 --save runs/diag
  $py experiments/fashion_mosaic/diagnose.py base itemw --canvases 3072 --threads 1 --val 128 --seed 1
  $py experiments/fashion_mosaic/diagnose.py base itemw --canvases 3072 --threads 1 --val 128 --seed 2
  $py experiments/fashion_mosaic/diagnose.py --linear-probe runs/diag/base_s0.pt runs/diag/itemw_s0.pt
fi
want speed && $py bench/train_speed.py && $py bench/train_parallel.py --rounds 4 --canvases 512
W=experiments/fashion_mosaic/weights
if want dense; then  # the shipped dense model: epoch 187 of task_dense.toml's 220, exported (float16), then a second
  # cosine cycle from it (task_dense_cycle2.toml, 48 epochs), exported, then a third (task_dense_cycle3.toml, 96
  # epochs): hours; each run resumable. A copy of the shipped model in runs/task/dense_c3 (what the supernet step
  # makes when this step has not run) stands in: delete it to train.
  if ! cmp -s runs/task/dense_c3.safetensors $W/dense.safetensors; then
    $ss supernet train $dev experiments/fashion_mosaic/task_dense.toml --resume --stop-after 187
    [ -f runs/task/dense187.safetensors ] || $ss supernet export runs/task/dense.safetensors runs/task/dense187.safetensors
    $ss supernet train $dev experiments/fashion_mosaic/task_dense_cycle2.toml --resume
    [ -f runs/task/dense_c2_f16.safetensors ] ||
      $ss supernet export runs/task/dense_c2.safetensors runs/task/dense_c2_f16.safetensors
    $ss supernet train $dev experiments/fashion_mosaic/task_dense_cycle3.toml --resume
    $py experiments/fashion_mosaic/plot_training.py runs/task/dense.safetensors --out $R/task_dense_curve.png  # first run
  fi
fi
if want width; then  # the width baseline (0.75x), by the dense step's chain and steps: hours; each run resumable
  $ss supernet train $dev experiments/fashion_mosaic/task_dense_w24.toml --resume --stop-after 187
  [ -f runs/task/dense_w24_187.safetensors ] ||
    $ss supernet export runs/task/dense_w24.safetensors runs/task/dense_w24_187.safetensors
  $ss supernet train $dev experiments/fashion_mosaic/task_dense_w24_cycle2.toml --resume
  [ -f runs/task/dense_w24_c2_f16.safetensors ] ||
    $ss supernet export runs/task/dense_w24_c2.safetensors runs/task/dense_w24_c2_f16.safetensors
  $ss supernet train $dev experiments/fashion_mosaic/task_dense_w24_cycle3.toml --resume
fi
if want continue; then  # not a default step: task_dense.toml on from epoch 187 to its 220 (R1's epoch-220 row),
  # after exporting epoch 187 for the cycle-2 run
  $ss supernet train $dev experiments/fashion_mosaic/task_dense.toml --resume --stop-after 187
  [ -f runs/task/dense187.safetensors ] || $ss supernet export runs/task/dense.safetensors runs/task/dense187.safetensors
  $ss supernet train $dev experiments/fashion_mosaic/task_dense.toml --resume
fi
# runs/task/dense_c3: what the dense step trained, else a copy of the shipped dense model
dense_or_shipped() { [ -f runs/task/dense_c3.safetensors ] || { mkdir -p runs/task && cp $W/dense.safetensors runs/task/dense_c3.safetensors && cp $W/dense.json runs/task/dense_c3.json; }; }
if want supernet; then  # SparseViT adaptation of runs/task/dense_c3: 24 epochs, then 24 more (task_supernet_long.toml)
  dense_or_shipped
  $ss supernet train $dev experiments/fashion_mosaic/task_supernet.toml --resume
  [ -f runs/task/supernet24.safetensors ] || { cp runs/task/supernet.safetensors runs/task/supernet24.safetensors
                                               cp runs/task/supernet.json runs/task/supernet24.json; }
  $ss supernet train $dev experiments/fashion_mosaic/task_supernet_long.toml --resume
fi
if want ship; then  # the shipped dense model stays as it is when runs/task/dense_c3 is its unchanged copy
  d=runs/task/dense_c3.safetensors
  if cmp -s $d $W/dense.safetensors; then
    $py experiments/fashion_mosaic/ship_weights.py --dense $W/dense.safetensors --supernet runs/task/supernet48.safetensors
  else
    $py experiments/fashion_mosaic/ship_weights.py --dense $d --supernet runs/task/supernet48.safetensors \
        --dense-recipe experiments/fashion_mosaic/task_dense_cycle3.toml
  fi
fi
if want supernet672; then  # the shipped supernet adapted further on 672 px scenes (6 epochs, 27 min here), then shipped
  $ss supernet train $dev experiments/fashion_mosaic/task_supernet_672.toml --resume
  $py experiments/fashion_mosaic/ship_weights.py --supernet672 runs/task/supernet672.safetensors
fi
want main && bash scripts/main.sh
want main672 && SPARSESEARCH_MAIN_RES=672 bash scripts/main.sh  # R2: the main job at 672 px (runs/main/search672)
if want validate; then  # section R2: the predictor at 672 px (the 448 px files are the fourteenth session's)
  # validated straight after a fresh profile
  P=runs/main/latency_cpu_672_validate.json
  # (the main job's profile settings; 60 held-out configs x 7 repeats per sample: ~5 min each at 672 px)
  $ss latency profile --checkpoint runs/main/supernet_672.safetensors --img-size 672 --threads 1 --repeats 7 --out $P --overwrite
  $ss latency validate --predictor $P --checkpoint runs/main/supernet_672.safetensors \
      --n 60 --repeats 7 --plot $R/latency_validation_672.png --json > $R/latency_validation_672.json
  $ss latency validate --predictor $P --checkpoint runs/main/supernet_672.safetensors --spread \
      --n 60 --repeats 7 --plot $R/latency_validation_672_spread.png --json > $R/latency_validation_672_spread.json
fi
if want window; then  # R2: at the search resolution, with denormals flushed, and at 672 px
  $py bench/window_pruning.py --checkpoint runs/main/supernet.safetensors --img-size 448 --threads 1 \
      --out bench/results/window_pruning_448.json
  $py bench/window_pruning.py --checkpoint runs/main/supernet.safetensors --img-size 448 --threads 1 --flush-denormal \
      --out bench/results/window_pruning_448_flush_denormal.json
  $py bench/window_pruning.py --checkpoint runs/main/supernet_672.safetensors --img-size 672 --threads 1 \
      --out bench/results/window_pruning_672_supernet.json
fi
want efficiency && $py bench/search_efficiency.py --spec experiments/fashion_mosaic/search_main.toml
if want ranking; then  # R1 / R2: window ranking against the oracle (all ratios; then uniform 0.6 / 0.65, the 0.60 budget)
  $py experiments/fashion_mosaic/oracle_windows.py --checkpoint runs/main/supernet.safetensors --length 256 --json \
      > $R/window_ranking.json
  $py experiments/fashion_mosaic/oracle_windows.py --checkpoint runs/main/supernet.safetensors --length 256 \
      --ratios 0.6 0.65 --rankings centred oracle --json > $R/window_ranking_060.json
fi
width=()  # the narrower model beside the front, once the width step has trained it
narrow=runs/task/dense_w24_c3.safetensors
[ -f $narrow ] && width=(--baseline "width 0.75x=$narrow")
if want baselines; then
  $py experiments/fashion_mosaic/baselines.py --checkpoint runs/main/supernet.safetensors \
      --exp runs/main/search --out $R "${width[@]}"
  # the 672 px main job's (results/baselines_672/): scored and fine-tuned with 2 threads, timed with 1 like the
  # predictor; the 0.875x input (~0.8 of dense) left out
  $py experiments/fashion_mosaic/baselines.py --checkpoint runs/main/supernet_672.safetensors \
      --exp runs/main/search672 --out $R/baselines_672 --score-threads 2 --scales 0.5 0.625 0.75 --max-front 8 "${width[@]}"
  # R2: the front's best member under the 50 % line against the 416 px input (as is, fine-tuned) on four more sets
  # (the config is the eighteenth session's trial 46: take the 50 % row of baselines_672/baselines.md)
  $py experiments/fashion_mosaic/retention_noise.py --exp runs/main/search672 --checkpoint runs/main/supernet_672.safetensors \
      --config '[[0.8,0.8],[0.6,0.6],[0.6,0.6,0.6,0.6,0.6,0.6],[0.7,0.7]]' --against-scale 0.625 --finetune-steps 150 \
      --threads 2 --out $R/reduced_res_noise_672.json
  [ ${#width[@]} -eq 0 ] ||  # R2: margin over the narrower model on five canvas sets
  $py experiments/fashion_mosaic/retention_noise.py --exp runs/main/search --checkpoint runs/main/supernet.safetensors \
      --config '[[.4,.4],[.4,.4],[.4,.4,.4,.4,.4,.4],[0,0]]' --config '[[.7,.7],[.7,.7],[.1,.1,.6,.6,.6,.6],[.3,.3]]' \
      --seeds 12345 1001 2002 3003 4004 --against $narrow --out $R/narrow_margin.json
fi
want fork && $py bench/fork_efficiency.py --parent runs/main/search --fraction 0.5
if want samplers; then  # recorded at 448 px (RESULTS.md R3)
  [ -f runs/main/latency_cpu_448.json ] || $ss latency profile --checkpoint runs/main/supernet.safetensors --img-size 448 \
      --threads 1 --out runs/main/latency_cpu_448.json
  $py experiments/fashion_mosaic/compare_samplers.py --checkpoint runs/main/supernet.safetensors --predictor runs/main/latency_cpu_448.json
fi
want dimap && $py experiments/fashion_mosaic/dimap_vs_magnitude.py --checkpoint runs/main/supernet.safetensors
if want quick; then  # R1: the quick recipe and its progressive-resizing variant (seed 0; RESULTS.md also has seed 1)
  $ss supernet train $dev experiments/fashion_mosaic/task_quick.toml --resume
  $ss supernet train $dev experiments/fashion_mosaic/task_quick_lowres.toml --resume
fi
want full && $ss supernet train $dev experiments/fashion_mosaic/task_full.toml --resume
echo "done: ${steps[*]}"
