"""TorchScript archives (``torch.jit.save``) of user models: a scripted forward that takes and returns its
state exports through torch.onnx's TorchScript exporter (converters/torchscript.py) and is checked here
by streaming the file against the ScriptModule loaded from the archive; one that keeps its state in
module attributes is refused with a sentence, and no file is written."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import Tensor, nn

import edgernn
from edgernn.errors import ExportError
from edgernn.runtimes import StreamingSession

from conftest import invoke
from streams import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")


class GRUCellLoop(nn.Module):
    """``nn.GRUCell`` looped over the frames of a [batch, time, 8] call, ``h`` taken and returned."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(8, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor, h: Tensor) -> Tuple[Tensor, Tensor]:
        ys = []
        for t in range(x.size(1)):
            h = self.cell(x[:, t], h)
            ys.append(self.head(h))
        return torch.stack(ys, 1), h


class LSTMTupleState(nn.Module):
    """A two-layer ``nn.LSTM`` with an optional ``(h, c)`` state and an output normalised with an epsilon."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 12, num_layers=2, batch_first=True)
        self.head = nn.Linear(12, 4)

    def forward(self, x: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None
                ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        y, (h, c) = self.lstm(x, hx)
        y = y / (y.abs().sum(-1, keepdim=True) + 1e-8)
        return self.head(y), (h, c)


class ConvFrontendGRU(nn.Module):
    """A kernel-3 ``Conv1d`` over time whose context (the last two frames) is a state, dropout, a GRU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(6, 10, kernel_size=3)
        self.drop = nn.Dropout(0.25)  # off in eval mode, in the file and in the reference
        self.gru = nn.GRU(10, 14, batch_first=True)
        self.out = nn.Linear(14, 2)

    @torch.jit.export
    def initial_state(self, batch: int) -> Tuple[Tensor, Tensor]:
        return torch.zeros(1, batch, 14), torch.zeros(batch, 6, 2)

    def forward(self, x: Tensor, h: Tensor, conv_state: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        frames = torch.cat([conv_state, x.transpose(1, 2)], 2)  # [batch, 6, 2 + time]
        f = self.drop(torch.relu(self.conv(frames))).transpose(1, 2)
        y, h = self.gru(f, h)
        return torch.sigmoid(self.out(y)), h, frames[:, :, -2:]


class FrameLSTMCell(nn.Module):
    """One frame per call ([batch, 5]): BatchNorm (whose training-only counter update is no state), an
    ``nn.LSTMCell`` with ``(h, c)`` as one tuple argument."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(5)
        self.cell = nn.LSTMCell(5, 7)
        self.head = nn.Linear(7, 2)
        self.norm.running_mean.uniform_(-1, 1)
        self.norm.running_var.uniform_(0.5, 2)

    def forward(self, x: Tensor, state: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        h, c = self.cell(self.norm(x), state)
        return self.head(h), (h, c)


class AttributeState(nn.Module):
    """silero-vad's way: the state lives in ``self.h``, assigned in forward, with ``reset_states()``."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(8, 16, batch_first=True)
        self.h = torch.zeros(1, 1, 16)

    @torch.jit.export
    def reset_states(self) -> None:
        self.h = torch.zeros(1, 1, 16)

    def forward(self, x: Tensor) -> Tensor:
        if self.h.size(1) != x.size(0):
            self.h = torch.zeros(1, x.size(0), 16)
        y, h = self.gru(x, self.h)
        self.h = h
        return y


class BufferState(nn.Module):
    """The state in a buffer written in place (``self.h.copy_``)."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(8, 16, batch_first=True)
        self.register_buffer("h", torch.zeros(1, 2, 16))

    def forward(self, x: Tensor) -> Tensor:
        y, h = self.gru(x, self.h)
        self.h.copy_(h)
        return y


class NoStateGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(8, 16, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.gru(x)[0]


class PaddedConvGRU(nn.Module):
    """A 'same'-padded convolution over time: it looks one frame ahead, so it cannot stream in chunks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(6, 10, kernel_size=3, padding=1)
        self.gru = nn.GRU(10, 14, batch_first=True)

    def forward(self, x: Tensor, h: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        return self.gru(torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2), h)


def _archive(cls: type[nn.Module], tmp_path: Path, seed: int = 0) -> tuple[Path, torch.jit.ScriptModule]:
    """A ``cls()`` scripted and saved as users do; returns the file and the ScriptModule loaded back from it."""
    torch.manual_seed(seed)
    model = cls()
    path = tmp_path / f"{cls.__name__}.pt"
    torch.jit.save(torch.jit.script(model.eval()), str(path))
    return path, torch.jit.load(str(path)).eval()


def _streamed(session: StreamingSession, x: np.ndarray, sizes: list[int], state: dict[str, np.ndarray],
              name: str = "y") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``x`` ([batch, time, ...]) fed in calls of ``sizes`` frames from ``state``: outputs joined, final state."""
    session.reset(state=state)
    pieces, start = [], 0
    for size in sizes:
        pieces.append(session.step(x[:, start:start + size])[name])
        start += size
    return np.concatenate(pieces, axis=1), session.state


def _random(*shape: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _constants(model: onnx.ModelProto) -> list[np.ndarray]:
    """Every initializer and Constant value of ``model``, in subgraphs too."""
    found = []

    def visit(graph: onnx.GraphProto) -> None:
        found.extend(numpy_helper.to_array(t) for t in graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    found.append(numpy_helper.to_array(attr.t))
                elif attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
    visit(model.graph)
    return found


# ---------------------------------------------------------------- exports that stream


def test_gru_cell_loop_streams_in_chunks_through_the_cli(tmp_path):
    path, scripted = _archive(GRUCellLoop, tmp_path)
    out = tmp_path / "cell.onnx"
    result = invoke("export", path, "--input", "x:float32:B,T,8", "-o", out)
    assert result.exit_code == 0, result.output
    assert "TorchScript archive of GRUCellLoop" in result.output
    session = StreamingSession(out)
    assert {s.name: s.shape for s in session.contract.states} == {"h": ("batch", 16)}
    x, h0 = _random(3, 13, 8, seed=1), 0.5 * _random(3, 16, seed=2)
    got, final = _streamed(session, x, [4, 1, 8], {"h": h0})
    with torch.no_grad():
        want, h = scripted(torch.from_numpy(x), torch.from_numpy(h0))
    assert_close(got, want.numpy(), "y")
    assert_close(final["h"], h.numpy(), "h")


def test_gru_cell_loop_in_step_mode(tmp_path):
    path, scripted = _archive(GRUCellLoop, tmp_path)
    report = edgernn.export(edgernn.load(path).module, tmp_path / "cell.onnx", mode="step",
                            inputs=["x:float32:B,T,8"])
    assert report.passed and report.parity.max_error < 1e-5
    assert [i.shape for i in report.contract.inputs] == [("batch", 1, 8)]
    session = StreamingSession(tmp_path / "cell.onnx")
    x = _random(2, 6, 8, seed=3)
    got, final = _streamed(session, x, [1] * 6, {"h": np.zeros((2, 16), np.float32)})
    with torch.no_grad():
        want, h = scripted(torch.from_numpy(x), torch.zeros(2, 16))
    assert_close(got, want.numpy(), "y")
    assert_close(final["h"], h.numpy(), "h")


def test_lstm_with_a_tuple_state_keeps_its_epsilon(tmp_path):
    path, scripted = _archive(LSTMTupleState, tmp_path, seed=4)
    loaded = edgernn.load(path)
    assert loaded.kind == "torchscript" and isinstance(loaded.module, torch.jit.ScriptModule)
    report = edgernn.export(loaded.module, tmp_path / "lstm.onnx")
    assert report.passed
    assert {s.name: s.shape for s in report.contract.states} == {"hx.0": (2, "batch", 12), "hx.1": (2, "batch", 12)}
    assert any(c.size == 1 and c.dtype == np.float32 and float(c) == np.float32(1e-8) for c in _constants(report.model))
    session = StreamingSession(tmp_path / "lstm.onnx")
    x = _random(2, 11, 8, seed=5)
    h0, c0 = 0.3 * _random(2, 2, 12, seed=6), 0.3 * _random(2, 2, 12, seed=7)
    got, final = _streamed(session, x, [5, 1, 5], {"hx.0": h0, "hx.1": c0})
    with torch.no_grad():
        want, (h, c) = scripted(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    assert_close(got, want.numpy(), "y")
    assert_close(final["hx.0"], h.numpy(), "h")
    assert_close(final["hx.1"], c.numpy(), "c")
    x[:, :3] = 0.0  # zero frames from a zero state: y is 0 / (0 + 1e-8) = 0, where 0 / 0 would be NaN
    got, _ = _streamed(session, x, [3, 8], {"hx.0": np.zeros_like(h0), "hx.1": np.zeros_like(c0)})
    with torch.no_grad():
        want, _ = scripted(torch.from_numpy(x), (torch.zeros(2, 2, 12), torch.zeros(2, 2, 12)))
    assert np.isfinite(got).all()
    assert_close(got, want.numpy(), "y from zeros")


@pytest.mark.parametrize("mode", ["chunk", "step"])
def test_conv_frontend_with_its_context_as_a_state(mode, tmp_path):
    path, scripted = _archive(ConvFrontendGRU, tmp_path, seed=8)
    out = tmp_path / f"conv.{mode}.onnx"
    result = invoke("export", path, "--mode", mode, "-o", out)
    assert result.exit_code == 0, result.output
    session = StreamingSession(out)
    assert {s.name: s.shape for s in session.contract.states} == {"h": (1, "batch", 14),
                                                                  "conv_state": ("batch", 6, 2)}
    x = _random(2, 10, 6, seed=9)
    h0, k0 = 0.5 * _random(1, 2, 14, seed=10), _random(2, 6, 2, seed=11)
    sizes = [3, 1, 6] if mode == "chunk" else [1] * 10
    got, final = _streamed(session, x, sizes, {"h": h0, "conv_state": k0})
    with torch.no_grad():
        want, h, k = scripted(torch.from_numpy(x), torch.from_numpy(h0), torch.from_numpy(k0))
    assert_close(got, want.numpy(), "y")
    assert_close(final["h"], h.numpy(), "h")
    assert_close(final["conv_state"], k.numpy(), "conv_state")


@pytest.mark.parametrize("mode", ["step", "chunk"])
def test_one_frame_per_call_cell(mode, tmp_path):
    """A forward over one frame: step mode is that frame; chunk mode runs it in a Scan over a time axis 0."""
    path, scripted = _archive(FrameLSTMCell, tmp_path, seed=12)
    report = edgernn.export(edgernn.load(path).module, tmp_path / "frame.onnx", mode=mode)
    assert report.passed
    session = StreamingSession(tmp_path / "frame.onnx")
    frames = _random(6, 3, 5, seed=13)  # [time, batch, 5]
    state = {"state.0": 0.5 * _random(3, 7, seed=14), "state.1": 0.5 * _random(3, 7, seed=15)}
    session.reset(state=state)
    if mode == "step":
        got = np.stack([session.step(f)["y"] for f in frames])
    else:
        got = np.concatenate([session.step(frames[:2])["y"], session.step(frames[2:])["y"]])
    h, c = torch.from_numpy(state["state.0"]), torch.from_numpy(state["state.1"])
    want = []
    with torch.no_grad():
        for f in frames:
            y, (h, c) = scripted(torch.from_numpy(f), (h, c))
            want.append(y.numpy())
    assert_close(got, np.stack(want), "y")
    assert_close(session.state["state.0"], h.numpy(), "h")
    assert_close(session.state["state.1"], c.numpy(), "c")


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("cls", [AttributeState, BufferState])
def test_state_kept_in_module_attributes_is_refused(cls, tmp_path):
    path, _ = _archive(cls, tmp_path)
    out = tmp_path / "state.onnx"
    result = invoke("export", path, "-o", out)
    assert result.exit_code == 1
    message = result.output.strip()
    assert message.startswith("error: the TorchScript model ") and "\n" not in message
    assert "keeps its state in module attributes (forward writes self.h)" in message
    assert "script a forward that takes the state and returns the new one (forward(x, h) -> (y, h_new))" in message
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_recurrent_layer_without_a_state_argument_is_refused_in_chunk_mode(tmp_path):
    path, _ = _archive(NoStateGRU, tmp_path)
    module = edgernn.load(path).module
    with pytest.raises(ExportError, match=r"NoStateGRU's forward takes no state argument, so its GRU 'gru' starts "
                                          r"from zeros in every call .* or export with --mode sequence"):
        edgernn.export(module, tmp_path / "gru.onnx")
    assert edgernn.export(module, tmp_path / "gru.onnx", mode="sequence").passed


def test_a_convolution_that_looks_ahead_is_refused_in_chunk_mode(tmp_path):
    path, scripted = _archive(PaddedConvGRU, tmp_path)
    module = edgernn.load(path).module
    with pytest.raises(ExportError, match=r"output 'y' differs when the sequence streams in calls: the TorchScript "
                                          r"forward carries something between frames outside its state arguments"):
        edgernn.export(module, tmp_path / "conv.onnx")
    assert not (tmp_path / "conv.onnx").exists()
    assert edgernn.export(module, tmp_path / "conv.onnx", mode="sequence").passed


def test_a_trace_that_unrolled_its_loop_over_time_is_refused(tmp_path):
    traced = torch.jit.trace(GRUCellLoop().eval(), (torch.randn(2, 5, 8), torch.zeros(2, 16)))
    torch.jit.save(traced, str(tmp_path / "traced.pt"))
    result = invoke("export", tmp_path / "traced.pt", "--input", "x:float32:B,T,8", "--input", "h:float32:B,16",
                    "-o", tmp_path / "traced.onnx")
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: the TorchScript model GRUCellLoop was made with torch.jit.trace and its outputs keep their length "
        "when the input's length changes: the trace unrolled a loop over time at the length it was traced at; "
        "save it with torch.jit.script instead")
    assert not (tmp_path / "traced.onnx").exists()


def test_opsets_past_the_torchscript_exporter_are_refused(tmp_path):
    path, _ = _archive(GRUCellLoop, tmp_path)
    with pytest.raises(ExportError, match="torch.onnx's TorchScript exporter writes opsets 18 to 20; pass --opset 20"):
        edgernn.export(edgernn.load(path).module, tmp_path / "cell.onnx", opset=21, inputs=["x:float32:B,T,8"])


def test_a_scripted_gru_layer_is_still_rebuilt_as_the_eager_layer(tmp_path):
    path = tmp_path / "gru.pt"
    torch.jit.save(torch.jit.script(nn.GRU(5, 7, batch_first=True)), str(path))
    loaded = edgernn.load(path)
    assert loaded.kind == "torchscript" and not isinstance(loaded.module, torch.jit.ScriptModule)
    assert isinstance(loaded.module.layer, nn.GRU)
