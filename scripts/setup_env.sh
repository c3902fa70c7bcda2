#!/usr/bin/env bash
# Create or reuse the project's virtual environment, install torch + triforce, fetch the assets.
#   VENV=.venv            where the environment lives
#   PYTHON=python3        interpreter used to create it (>= 3.10)
#   TORCH_SPEC=torch==2.13.0   torch to install when the venv has none (a CUDA build already
#                              installed in the venv is kept as it is)
#   EXTRAS=dev            extras of the project to install
#   TRITON_SPEC=triton==3.6.0  Triton for a CPU torch (its kernel tests run through Triton's
#                              interpreter, whose behaviour changes between releases; they pass on
#                              3.6 and 3.9, and 3.6 is the release the GPU path is measured with,
#                              torch 2.11's); a CUDA torch brings its own
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-dev}
TRITON_SPEC=${TRITON_SPEC:-triton==3.6.0}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -c 'import sys; assert sys.version_info >= (3, 10), "triforce needs Python >= 3.10"'

if ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC"
  "$PY" -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
fi

# Re-install the project only when its metadata changed (keeps repeated runs fast).
stamp="$VENV/.triforce-$( (cat pyproject.toml; echo "$TRITON_SPEC") | sha256sum | cut -c1-16)-$EXTRAS"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing triforce[$EXTRAS]"
  pins=()
  if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)'; then
    pins=("$TRITON_SPEC")
  fi
  "$PY" -m pip install --quiet --disable-pip-version-check -e ".[$EXTRAS]" "${pins[@]}"
  rm -f "$VENV"/.triforce-*
  touch "$stamp"
fi

echo "[setup] fetching offline assets into ${TRIFORCE_HOME:-~/.cache/triforce}"
"$PY" -m triforce.assets fetch
