"""Shared test helpers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest

NTM_COPY = Path(__file__).resolve().parents[1] / "examples" / "ntm_copy"


def load_ntm_example(name: str) -> ModuleType:
    """examples/ntm_copy/NAME.py as a module (the folder is not a package). The scripts import
    their neighbours as ``copy_data`` and ``train``; those names are taken out of ``sys.modules``
    again afterwards, so that other examples' modules are not shadowed by these."""
    neighbours = ("copy_data", "train")
    saved = {k: sys.modules.pop(k) for k in neighbours if k in sys.modules}
    sys.path.insert(0, str(NTM_COPY))
    try:
        spec = importlib.util.spec_from_file_location(f"ntm_copy_{name}", NTM_COPY / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(NTM_COPY))
        for k in neighbours:
            sys.modules.pop(k, None)
        sys.modules.update(saved)
    return module


@pytest.fixture(scope="session")
def ntm_example() -> Callable[[str], ModuleType]:
    """Loader of the NTM copy-task example scripts (see :func:`load_ntm_example`)."""
    return load_ntm_example


@pytest.fixture
def web_tools() -> None:
    """Node.js and runtimes/web's npm packages, for the JavaScript runtime's tests (bash setup.sh
    installs the packages). Missing, the test fails and says what to install; EDGERNN_SKIP_WEB=1
    skips those tests instead, for machines that cannot have them."""
    import os
    import shutil

    from edgernn.runtimes.webserve import WEB_ROOT

    if os.environ.get("EDGERNN_SKIP_WEB") == "1":
        pytest.skip("EDGERNN_SKIP_WEB=1: the JavaScript runtime's tests were asked to be skipped")
    if shutil.which("node") is None:
        pytest.fail("node is not installed; the JavaScript runtime's tests need Node.js 18 or newer")
    if not (WEB_ROOT / "node_modules" / "onnxruntime-node").is_dir():
        pytest.fail(f"npm packages are missing; run `npm ci` in {WEB_ROOT} (bash setup.sh does)")


@pytest.fixture
def chromium(web_tools) -> str:
    """Debian's Chromium (or $CHROMIUM), for the browser tests; bash setup.sh installs it as root."""
    import os

    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not Path(path).is_file():
        pytest.fail(f"{path} is missing; install Debian's chromium (apt-get install chromium; bash setup.sh does "
                    "as root) or set CHROMIUM")
    return path


@pytest.fixture(scope="session")
def silero_like() -> type:
    """A model class with silero-vad's interface, for files from other exporters: input [batch, 16],
    state [2, batch, 8] (state -> stateN when exported with those names), a scalar int64 sr."""
    import torch
    from torch import nn

    class Silero(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj, self.rnn, self.head = nn.Linear(16, 8), nn.GRU(8, 8, num_layers=2), nn.Linear(8, 1)

        def forward(self, input, state, sr):
            x = self.proj(input) * (sr.float() / 16000.0)
            y, state_n = self.rnn(x.unsqueeze(0), state)
            return torch.sigmoid(self.head(y[0])), state_n

    return Silero
