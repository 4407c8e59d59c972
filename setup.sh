#!/usr/bin/env bash
# Creates .venv (if missing) and installs brmrs_pyg into it, editable, with the extras in EXTRAS
# (default: test; e.g. EXTRAS=test,text,images for text and image feature extraction).
#
# torch is installed first and only when the venv has none, so that pip never resolves an
# unpinned `torch` (which on Linux means a multi-GB CUDA build):
#   - a torch already in the venv is kept (bring your own CUDA build: see README);
#   - otherwise TORCH_SPEC (default torch==2.13.0) is installed, from TORCH_INDEX_URL when set
#     (e.g. PyTorch's CPU or CUDA wheel index).
# Environment: PYTHON (interpreter for the venv, default python3), VENV (default .venv),
# EXTRAS (default test).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-test}

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup.sh: creating $VENV with $($PYTHON --version 2>&1)" >&2
  "$PYTHON" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip install --quiet)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup.sh: installing $TORCH_SPEC" >&2
  if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    "${pip[@]}" "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
  else
    "${pip[@]}" "$TORCH_SPEC"
  fi
fi
"${pip[@]}" -e ".[$EXTRAS]"
"$VENV/bin/python" -c "import torch, torch_geometric; print(f'setup.sh: torch {torch.__version__}, torch_geometric {torch_geometric.__version__}, cuda={torch.cuda.is_available()}')" >&2
