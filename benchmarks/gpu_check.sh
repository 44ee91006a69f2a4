#!/usr/bin/env bash
# The GPU check (issue 15): CUDA tests, then speed and bf16 agreement on random full-size models.
# Installs nothing; run from anywhere in an environment where memprune and its test dependencies are installed.
#   benchmarks/gpu_check.sh                              # CUDA, full sizes, < 8 min on one H100/H200
#   benchmarks/gpu_check.sh --official-var ~/VAR         # plus our VAR forward vs the official code
#   benchmarks/gpu_check.sh --device cpu --quick         # tiny CPU smoke run (CI)
# Extra arguments go to benchmarks/gpu_check.py (see its --help); results in gpu_check.json.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "${GPU_CHECK_TIMEOUT:-900}" python "$here/gpu_check.py" "$@"
