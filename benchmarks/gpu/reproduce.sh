#!/usr/bin/env bash
# SSFT Table 1 on one GPU in one command (see benchmarks/gpu/reproduce.py for what it writes):
#
#   benchmarks/gpu/reproduce.sh                 # CIFAR-10, full-width ResNet-18, fast schedule; < 9 min on an H100
#   OUT=/somewhere benchmarks/gpu/reproduce.sh  # report.{md,csv,html}, results.json, results.db go there
#   benchmarks/gpu/reproduce.sh --tiny          # CPU smoke run (digits, width 4, 1 epoch); also BDK_TINY=1
#
# CIFAR-10 comes from $BACKDOORKIT_DATA (default: ../shared/datasets, the shared copy, when it exists).
# Cached and resumable: running it again finishes what is missing and rewrites the report.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
if [ -z "${BACKDOORKIT_DATA:-}" ] && [ -d "$ROOT/../shared/datasets" ]; then
  export BACKDOORKIT_DATA="$ROOT/../shared/datasets"
fi
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY="python3"; fi
fi
exec "$PY" "$ROOT/benchmarks/gpu/reproduce.py" "$@"
