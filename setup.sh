#!/usr/bin/env bash
# Creates .venv (if missing) and installs edgernn with its test tools.
# torch is installed first, pinned to the CPU build, so that pip does not resolve the
# project's torch range to a multi-GB CUDA build. Set EDGERNN_TORCH to choose another.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "${EDGERNN_TORCH:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e ".[test]"
