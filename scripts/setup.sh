#!/usr/bin/env bash
# All set-up for sparsesearch on a fresh machine: a virtual environment with the PyPI packages
# (PyPI's torch + torchvision, timm, ray[tune], optuna, ...) and the real Fashion-MNIST data.
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.sparsesearch-setup
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  free_kb=$(df -Pk .venv 2>/dev/null | awk 'NR == 2 {print $4}') || true
  # a first install (no torch in .venv yet) writes about 6.5 GB and needs some room beyond it
  if [ -n "$free_kb" ] && [ "$free_kb" -lt $((7 * 1024 * 1024)) ] && ! compgen -G ".venv/lib/python*/site-packages/torch" >/dev/null; then
    echo "[setup] error: $((free_kb / 1024)) MB free on the disk of $PWD/.venv, and a first install needs about 7 GB; fix: free disk space (old clones, /tmp), then rerun" >&2
    exit 2
  fi
  echo "[setup] installing sparsesearch and its dependencies into .venv (first time: a few minutes, ~6.5 GB)"
  # PyPI's torch build (not a local CPU wheel: timm's torchvision needs PyPI's torch)
  .venv/bin/pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored: it is neither" || true
  .venv/bin/pip install --quiet -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
  .venv/bin/python -c "import torch, torchvision, timm, ray, optuna, pyarrow" \
    || { echo "[setup] error: the Python packages did not install; see the pip output above" >&2; exit 2; }
  echo "$want" > "$stamp"
fi
data=${SPARSESEARCH_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
if [ ! -f "$data/train-images-idx3-ubyte.gz" ] && [ ! -f "$data/train-images-idx3-ubyte" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian's dataset-fashion-mnist (real images, MIT)"
    apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq >/dev/null && sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "[setup] error: Fashion-MNIST not found in $data; run 'sudo apt-get install dataset-fashion-mnist' or put the four IDX files (train/t10k images/labels .gz) in a folder and export SPARSESEARCH_FASHION_MNIST=that-folder" >&2
    exit 2
  fi
fi
# Debian's Chromium: the headless check of the live optuna-dashboard (tests/test_dashboard.py; it skips
# with a printed reason when Chromium is absent). Optional: a failure here does not stop the set-up.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian's chromium (headless dashboard check)"
    (apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null)) \
      || echo "[setup] note: chromium did not install; the dashboard check will skip"
  fi
fi
echo "[setup] ready: .venv/bin/sparsesearch, data in $data"
