"""int8 that pays (issue 19): weights chunked in forward fold to constants and quantize, files
drop the exporter's per-node debug metadata (``--keep-debug-info`` keeps it), small weights stay
float so an int8 file does not grow, and the accuracy check fits sequence-mode and silero-like
layouts without flags and refuses data whose axes contradict the contract.

Numbers are checked against the float model (the accuracy check streams both side by side).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import edgernn
from conftest import invoke
from edgernn.converters.quantize import quantize
from edgernn.runtimes import StreamingSession

FRAMES = 600  # frames of the synthetic accuracy streams here


class ChunkedCell(nn.Module):
    """A GRU-like cell that keeps one matrix per input and chunks (and transposes) it in forward,
    as cells of third-party libraries do: the MatMuls read Split / Transpose of initializers."""

    def __init__(self, n_in: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.hidden = hidden
        self.w = nn.Parameter(torch.randn(n_in, 3 * hidden) * 0.1)
        self.u = nn.Parameter(torch.randn(hidden, 3 * hidden) * 0.05)
        self.head = nn.Linear(hidden, 4)

    def forward(self, x, state=None):
        if state is None:
            state = x.new_zeros(x.shape[0], self.hidden)
        wz, wr, wn = self.w.chunk(3, dim=1)
        uz, ur, un = self.u.t().chunk(3, dim=0)
        z = torch.sigmoid(x @ wz + state @ uz.t())
        r = torch.sigmoid(x @ wr + state @ ur.t())
        n = torch.tanh(x @ wn + r * (state @ un.t()))
        h = (1 - z) * n + z * state
        return self.head(h), h


class SmallGru(nn.Module):  # a forecaster's GRU of 32 units over 3 features
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


class Stack(nn.Module):  # a sequence-mode stack: bidirectional LSTM, then a head
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(16, 32, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pays")
    torch.manual_seed(0)
    out = {"chunked": folder / "chunked.onnx", "chunked_debug": folder / "chunked_debug.onnx",
           "gru": folder / "gru.onnx", "stack": folder / "stack.onnx"}
    cell = ChunkedCell().eval()
    edgernn.export(cell, out["chunked"], mode="step", inputs=["x:float32:B,32"])
    edgernn.export(cell, out["chunked_debug"], mode="step", inputs=["x:float32:B,32"], keep_debug_info=True)
    edgernn.export(SmallGru().eval(), out["gru"], mode="chunk")
    edgernn.export(Stack().eval(), out["stack"], mode="sequence")
    return out


def _debug_props(model: onnx.ModelProto) -> int:
    return sum(p.key.startswith("pkg.torch.") for n in model.graph.node for p in n.metadata_props)


def test_a_cell_that_chunks_its_weight_in_forward_quantizes(files, tmp_path):
    report = quantize(files["chunked"], tmp_path / "q.onnx", steps=FRAMES)
    names = {d.name for d in report.quantized}
    assert sum(n.startswith("node_matmul") for n in names) == 6, names  # every chunk of both matrices
    assert any("constant folding made 6 of 6 computed weights constants" in n for n in report.notes), report.notes
    assert "same outputs on random inputs" in " ".join(report.notes)
    assert report.size_ratio <= 0.35, report.size_ratio  # weights dominate this file
    assert report.sizes.weights_after < 0.3 * report.sizes.weights_before
    acc = report.accuracy  # against the float file as it was (unfolded)
    assert acc.max_error < 0.05 and acc.min_agreement >= 0.97, acc.to_json()
    assert acc.float_call_us and acc.quantized_call_us and acc.latency_ratio is not None


def test_debug_metadata_is_dropped_by_default_and_kept_when_asked(files, tmp_path):
    lean, debug = onnx.load(files["chunked"]), onnx.load(files["chunked_debug"])
    assert _debug_props(lean) == 0 < _debug_props(debug)
    assert files["chunked"].stat().st_size < files["chunked_debug"].stat().st_size
    assert [n.name for n in lean.graph.node] == [n.name for n in debug.graph.node]
    assert lean.metadata_props == debug.metadata_props  # the contract stays
    x = np.random.default_rng(0).standard_normal((50, 2, 32)).astype(np.float32)
    np.testing.assert_array_equal(StreamingSession(files["chunked"]).stream(x)["y"],
                                  StreamingSession(files["chunked_debug"]).stream(x)["y"])

    kept = json.loads(invoke("quantize", files["chunked_debug"], "-o", tmp_path / "k.onnx", "--frames", FRAMES,
                             "--keep-debug-info", "--json").stdout)
    dropped = json.loads(invoke("quantize", files["chunked_debug"], "-o", tmp_path / "d.onnx", "--frames", FRAMES,
                                "--json").stdout)
    assert _debug_props(onnx.load(tmp_path / "k.onnx")) > 0 == _debug_props(onnx.load(tmp_path / "d.onnx"))
    assert dropped["size_after"] < kept["size_after"]
    assert dropped["sizes"]["graph_after"] < kept["sizes"]["graph_after"]
    assert dropped["sizes"]["weights_after"] == kept["sizes"]["weights_after"]


def test_a_small_gru_file_never_grows(files, tmp_path):
    report = quantize(files["gru"], tmp_path / "q.onnx", steps=FRAMES)
    small = [d for d in report.kept_float if "under --min-size 128" in d.why]
    assert small, [d.why for d in report.kept_float]  # the 32 x 1 head stays float
    assert report.size_after <= report.size_before
    assert report.accuracy.max_error < 0.05
    everything = quantize(files["gru"], tmp_path / "all.onnx", steps=FRAMES, min_size=0)
    assert not any("min-size" in d.why for d in everything.kept_float)
    slow = [n for n in report.notes if "slower per call than the float file" in n]
    if report.accuracy.latency_ratio >= 1.5:  # the int8 GRU runs as a Scan: the report says so and how to avoid it
        assert slow and "runs as a Scan loop of int8 MatMuls" in slow[0] and "--exclude rnn/" in slow[0], slow
    else:
        assert not slow


def test_a_gru_too_small_for_int8_is_refused_and_min_size_0_forces_it(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "gru8.onnx"
    edgernn.export(_Gru(8).eval(), path, mode="chunk")
    out = tmp_path / "q.onnx"
    result = invoke("quantize", path, "-o", out, "--frames", 200)
    assert result.exit_code == 1 and not out.exists()
    err = result.stderr.strip()
    assert err.startswith("error: int8 makes ") and "larger than its float file" in err and "\n" not in err, err
    forced = quantize(path, out, steps=200, min_size=0)
    assert forced.size_after > forced.size_before and any("larger than its float file" in n for n in forced.notes)
    assert forced.accuracy.max_error < 0.05


class _Gru(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


class _Vad(nn.Module):
    """A VAD of a window of samples with fixed-size states: [samples] or [1, window] in, h and c of [1, 64]."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv1d(1, 32, 64, stride=32)
        self.rnn = nn.LSTMCell(32, 64)
        self.out = nn.Linear(64, 1)

    def forward(self, x, h, c):
        f = torch.relu(self.enc(x.reshape(1, 1, -1))).mean(-1)
        h, c = self.rnn(f, (h, c))
        return torch.sigmoid(self.out(h)), h, c


@pytest.mark.parametrize("shape, axes, want", [((576,), {0: "samples"}, ("samples",)),
                                               ((1, 576), {1: "win"}, (1, "win"))])
def test_a_free_window_axis_of_a_foreign_file_is_not_its_batch(tmp_path, shape, axes, want):
    from conftest import torch_export
    from edgernn.modelfile import ModelFile

    torch.manual_seed(0)
    model, path = _Vad().eval(), tmp_path / "vad.onnx"
    torch_export(model, (torch.randn(*shape), torch.zeros(1, 64), torch.zeros(1, 64)), path, ["x", "h", "c"],
                 ["prob", "hn", "cn"], {"x": axes})
    x = ModelFile.open(path).contract.inputs[0]
    assert x.shape == want and x.batch_axis == (0 if len(shape) == 2 else None)  # one stream, the window axis free
    report = quantize(path, tmp_path / "q.onnx", steps=200)
    acc = report.accuracy
    assert acc.streams == 1 and acc.steps == 200, acc.to_json()
    assert any("made-up frames are 512 long" in n for n in report.notes), report.notes
    windows = np.random.default_rng(1).standard_normal((50, *shape[:-1], 512)).astype(np.float32)
    h = c = torch.zeros(1, 64)
    want_p = []
    with torch.no_grad():
        for w in windows:
            p, h, c = model(torch.from_numpy(w), h, c)
            want_p.append(p.numpy())
    session = StreamingSession(tmp_path / "q.onnx")  # one window per call (no batch or time axis to stream)
    got = np.stack([session.step(x=w)["prob"] for w in windows])
    assert np.abs(np.stack(want_p) - got).max() < 0.05


def test_the_accuracy_check_runs_without_flags_on_a_sequence_mode_stack(files, tmp_path):
    out = tmp_path / "q.onnx"
    result = invoke("quantize", files["stack"], "-o", out, "--frames", 1200, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    acc = report["accuracy"]
    assert acc["chunk"] == 500 and acc["steps"] == 1200  # bounded sequences, and the report says so
    assert any("consecutive sequences of at most 500 frames" in n for n in report["notes"])
    assert acc["max_error"] < 0.05 and out.exists()


def test_the_accuracy_check_runs_without_flags_on_a_silero_like_layout(tmp_path):
    from fixtures.silero_like import build

    paths = build(tmp_path)  # the sequence layout: input [batch, time, 576], state [2, batch, 128]
    result = invoke("quantize", paths["sequence"], "-o", tmp_path / "q.onnx", "--frames", 300, "--json")
    assert result.exit_code == 0, result.stderr
    acc = json.loads(result.stdout)["accuracy"]
    assert acc["streams"] == 1 and acc["steps"] == 300  # one stream, not one per sample of the window
    assert acc["outputs"][0]["agreement"] >= 0.95


@pytest.mark.parametrize("shape, message", [
    ((40, 3), "expected [batch, time, 3]"),  # the batch axis missing
    ((600, 20, 3), "holds 600 streams of 20 frame(s)"),  # batch and time swapped
])
def test_data_contradicting_the_contract_is_refused(files, tmp_path, shape, message):
    np.save(tmp_path / "d.npy", np.zeros(shape, np.float32))
    out = tmp_path / "q.onnx"
    result = invoke("quantize", files["gru"], "-d", tmp_path / "d.npy", "-o", out)
    assert result.exit_code == 1, result.stdout
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not out.exists()
