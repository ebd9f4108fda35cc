#!/usr/bin/env bash
# Creates .venv (if missing) and installs edgernn with its test tools and the OpenVINO and tract
# runtimes (edgernn check); installs the JavaScript
# runtime's npm packages and (as root, with apt) Debian's Chromium for its browser tests.
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
.venv/bin/python -m pip install -q -e ".[test,openvino,tract]"  # the other runtimes edgernn check runs
[ -x .venv/tritonserver/pytriton/tritonserver/bin/tritonserver ] || .venv/bin/python -m pip install -q --no-deps --target .venv/tritonserver "nvidia-pytriton==0.7.0"  # tritonserver with the Python backend (55 MB, a few seconds), for the live Triton tests; --no-deps: the wheel pins numpy<2

# The JavaScript runtime (runtimes/web): its npm packages, and Debian's Chromium for its browser tests.
# onnxruntime-node's install script would fetch CUDA binaries from NuGet: skipped, the CPU binaries ship in the package.
if command -v npm >/dev/null 2>&1; then
    (cd runtimes/web && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error)
else
    echo "setup.sh: npm not found; the JavaScript runtime (runtimes/web) and its tests need Node.js 18+ and npm" >&2
fi
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    else
        echo "setup.sh: /usr/bin/chromium not found; install Debian's chromium for the browser tests (or set CHROMIUM)" >&2
    fi
fi
