"""Shared test helpers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def invoke(*args, env: dict | None = None):
    """Run ``edgernn ARGS...`` in-process (typer's CliRunner); an uncaught exception is raised,
    as it is a bug whatever the exit code."""
    from typer.testing import CliRunner

    from edgernn.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def torch_export(module, args, path: Path, inputs, outputs, axes=None) -> Path:
    """``module`` written as another exporter writes it: a plain ``torch.onnx.export`` (no edgernn metadata)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, dynamo=False,
                          dynamic_axes=axes)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """PyTorch on one thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    a step of these models is many tiny ops, where more threads only add waiting on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def listing(folder: Path) -> list[str]:
    """Every path under ``folder``, relative and sorted (what a command left behind)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
NTM_COPY = EXAMPLES / "ntm_copy"


def load_example(folder: str, name: str) -> ModuleType:
    """examples/FOLDER/NAME.py as a module named ``FOLDER_NAME`` (the folders are not packages)."""
    spec = importlib.util.spec_from_file_location(f"{folder}_{name}", EXAMPLES / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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


@pytest.fixture(scope="session")
def timed_files(tmp_path_factory) -> dict:
    """Files whose contract says a stride over time (``frame_multiple``) or lookahead (``delay``):

    - ``gru``: a batch-first GRU(8 -> 16) exported in chunk mode, as it is;
    - ``gru_m2_d1``: the same file with ``frame_multiple`` 2 on ``x`` and ``delay`` 1 on ``y``
      stamped into its metadata (for refusals and reports: the numbers are not the model's);
    - ``gru_step_m2``: a step-mode file stamped with ``frame_multiple`` 2 (export refuses these);
    - ``conv`` / ``conv_m2``: the streaming form of a 'same'-padded ``Conv1d(3, 4, 3)`` over
      ``[batch, time, 3]`` (a state ``ctx`` keeps the last 2 frames, zeros at start), so its
      output has 1 frame of lookahead (``delay`` 1), truly; ``conv_m2`` also says
      ``frame_multiple`` 2. ``conv_module`` is the ``Conv1d`` (padding 1) it streams.
    """
    import dataclasses
    import warnings

    import onnx
    import torch
    from torch import nn

    import edgernn
    from edgernn.contract import Contract, StateSpec, TensorSpec, read_metadata, write_metadata

    folder = tmp_path_factory.mktemp("timed")
    torch.manual_seed(3)
    files: dict = {}

    def stamp(src: Path, name: str, multiple: int = 1, delay: int = 0) -> Path:
        model = onnx.load(src)
        c = read_metadata(model)
        inputs = tuple(dataclasses.replace(t, frame_multiple=multiple) for t in c.inputs)
        outputs = tuple(dataclasses.replace(t, delay=delay) for t in c.outputs)
        write_metadata(model, Contract(c.mode, inputs, outputs, c.states, dict(c.extra), c.format))
        onnx.save(model, folder / name)
        return folder / name

    gru = nn.GRU(8, 16, batch_first=True).eval()
    files["gru"] = folder / "gru.onnx"
    assert edgernn.export(gru, files["gru"], mode="chunk").passed
    files["gru_m2_d1"] = stamp(files["gru"], "gru_m2_d1.onnx", 2, 1)
    step = folder / "gru_step.onnx"
    assert edgernn.export(gru, step, mode="step").passed
    files["gru_step_m2"] = stamp(step, "gru_step_m2.onnx", 2)

    conv = nn.Conv1d(3, 4, 3, padding=1).eval()

    class StreamingConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = conv

        def forward(self, x, ctx):  # x [batch, time, 3], ctx [batch, 2, 3]: the 2 frames before x
            full = torch.cat([ctx, x], dim=1)
            y = nn.functional.conv1d(full.transpose(1, 2), self.conv.weight, self.conv.bias)
            return y.transpose(1, 2), full[:, -2:]

    raw = folder / "conv_raw.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(StreamingConv().eval(), (torch.randn(1, 4, 3), torch.zeros(1, 2, 3)), str(raw),
                          input_names=["x", "state_in.ctx"], output_names=["y", "state_out.ctx"], dynamo=False,
                          dynamic_axes={"x": {0: "batch", 1: "time"}, "state_in.ctx": {0: "batch"},
                                        "y": {0: "batch", 1: "time"}, "state_out.ctx": {0: "batch"}})
    for name, multiple in (("conv", 1), ("conv_m2", 2)):
        model = onnx.load(raw)
        write_metadata(model, Contract(
            "chunk", (TensorSpec("x", ("batch", "time", 3), "float32", 0, 1, frame_multiple=multiple),),
            (TensorSpec("y", ("batch", "time", 4), "float32", 0, 1, delay=1),),
            (StateSpec("ctx", ("batch", 2, 3), "float32", 0),)))
        files[name] = folder / f"{name}.onnx"
        onnx.save(model, files[name])
    files["conv_module"] = conv
    return files
