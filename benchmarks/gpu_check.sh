#!/usr/bin/env bash
# The GPU path proved and measured in one prepared command (benchmarks/gpu_check.py says what it does).
#
# On the device machine, from the repository root, after `python -m benchmarks.gpu_check --prepare
# .gpu_check/golden` here (the golden files it needs, in an ignored folder that travels):
#     bash benchmarks/gpu_check.sh                     # writes gpu_check.json and gpu_check.md to $OUT
# Here and in CI (every section, small, on the CPU):
#     bash benchmarks/gpu_check.sh --device cpu --quick
# The exact device call (command, carry list, timeout) is in docs/performance.md ("GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" -m benchmarks.gpu_check --out "${OUT:-.gpu_check/out}" "$@"
