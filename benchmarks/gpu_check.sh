#!/usr/bin/env bash
# The GPU check of issue 19, ready to run on a machine with one CUDA GPU (under 5 minutes):
#   1. the CUDA tests: every test whose name says cuda (tests/test_cuda.py: CHNS and the
#      evaluator against the CPU, no host synchronisation in a training step of lightgcn
#      and brmrs; the sampler's and BR-MRS's own cuda tests), none skipped;
#   2. the per-epoch and per-evaluation times of lightgcn and brmrs on Sports-size data
#      (synthetic_sports, generated on first use) against their floors, on the GPU.
# Everything goes to OUT (default gpu_check-<date>.txt) and to the terminal; the benchmark's
# rows also to OUT.json. Without CUDA it says so, writes that to OUT and exits 0: nothing
# in the project depends on a GPU.
#
#   benchmarks/gpu_check.sh [OUT]        (PYTHON=... to use another interpreter than .venv's)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-gpu_check-$(date -u +%Y%m%d-%H%M%S).txt}

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: skipped, no CUDA device (torch.cuda.is_available() is false in $PY)" \
        | tee "$OUT"
    exit 0
fi

check() {
    local status=0
    echo "gpu_check $(date -u +%FT%TZ) on $(hostname)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    echo
    echo "== CUDA tests"
    # -rs lists any skip: on a GPU none of these may be skipped
    timeout 100 "$PY" -m pytest tests -k cuda -p no:cacheprovider -rfEs || status=1
    echo
    echo "== lightgcn and brmrs on synthetic_sports (cuda, 3 epochs after a warm-up)"
    timeout 175 "$PY" benchmarks/benchmark.py --datasets synthetic_sports \
        --models lightgcn brmrs --epochs 3 --evals 2 --device cuda --out "$OUT.json" || status=1
    echo
    echo "gpu_check: exit status $status"
    return $status
}

check 2>&1 | tee "$OUT"
exit "${PIPESTATUS[0]}"
