#!/usr/bin/env bash
# All set-up, then the whole test suite (unit tests and the slow end-to-end checks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/python -m pytest -q "$@"
