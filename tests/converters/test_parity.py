"""Parity of exported recurrent layers and cells with PyTorch, checked twice.

``edgernn.export`` verifies every graph itself (batches 1, 3, 4; lengths 9-13 against the traced
batch 2 and 5 frames) and raises ``ParityError`` when it fails. These tests read its report, and
then check the numbers independently: they stream data through ``edgernn.runtimes.StreamingSession``
in calls of several sizes, from zero and from random initial states (``session.reset(state=...)``),
and compare with the PyTorch module's own output on the whole sequence (``module(x, h0)``).

The matrix is pairwise, not the full product: every kind (RNN tanh/relu, LSTM, LSTM with
``proj_size``, GRU) runs in chunk and step mode, bidirectional layers in sequence mode, and each of
1-3 layers, ``batch_first`` on/off and bias on/off appears in both chunk and step cases.
``COVERED`` lists what the cases cover; ``tests/test_coverage.py`` fails when a supported
architecture x mode is missing from it.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

import edgernn
from edgernn.converters.recurrent import RecurrentLayerSpec
from edgernn.errors import ExportError
from edgernn.runtimes import StreamingSession

# VISION.md "Tolerances": fp32 max abs error <= 1e-5 relative to max(1, output scale)
TOLERANCE = 1e-5
RECURRENT_OPS = {"GRU", "LSTM", "RNN", "Scan"}
# PyTorch's own notice when it runs an LSTM with proj_size without oneDNN; not ours to act on
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported:UserWarning")


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> float:
    """Assert ``got`` matches ``want`` within the contract's tolerance; return the relative error."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != PyTorch {want.shape}"
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE * scale, err_msg=what)
    return float(np.max(np.abs(got.astype(np.float64) - want))) / scale if want.size else 0.0


# ---------------------------------------------------------------------------------------------
# recurrent layers
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerCase:
    """One ``nn.RNN``/``nn.LSTM``/``nn.GRU`` exported as a bare layer in one mode."""

    cls: str  # "RNN", "LSTM", "GRU"
    mode: str
    input_size: int
    hidden: int
    layers: int
    batch_first: bool
    bias: bool
    nonlinearity: str = "tanh"  # nn.RNN only
    proj: int = 0  # nn.LSTM only
    bidirectional: bool = False
    cells: str = "auto"  # step mode: "auto" or "matmul"

    def build(self) -> nn.Module:
        torch.manual_seed(zlib.crc32(self.id.encode()))
        kw = dict(num_layers=self.layers, batch_first=self.batch_first, bias=self.bias,
                  bidirectional=self.bidirectional)
        if self.cls == "RNN":
            kw["nonlinearity"] = self.nonlinearity
        if self.proj:
            kw["proj_size"] = self.proj
        return getattr(nn, self.cls)(self.input_size, self.hidden, **kw).eval()

    @property
    def arch(self) -> str:
        """The kind as the converter sees it (read from the built module, not from the label)."""
        spec = RecurrentLayerSpec.from_module("", self.build())
        return spec.kind + ("+proj" if spec.proj_size else "")

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def out_size(self) -> int:
        return self.proj or self.hidden

    @property
    def state_names(self) -> list[str]:
        # bare layers export under their kind (edgernn.architectures.RecurrentLayer)
        return {"RNN": ["rnn.h"], "GRU": ["gru.h"], "LSTM": ["lstm.c", "lstm.h"]}[self.cls]

    def state_shape(self, name: str) -> tuple:
        size = self.hidden if name.endswith(".c") else self.out_size
        return (self.layers * self.directions, "batch", size)

    @property
    def id(self) -> str:
        act = f"-{self.nonlinearity}" if self.cls == "RNN" else ""
        proj = f"-proj{self.proj}" if self.proj else ""
        bi = "-bi" if self.bidirectional else ""
        cells = "-matmul" if self.cells == "matmul" else ""
        return (f"{self.mode}{cells}-{self.cls.lower()}{act}{proj}{bi}-L{self.layers}-H{self.hidden}"
                f"-{'bf' if self.batch_first else 'tf'}-{'bias' if self.bias else 'nobias'}")


C, S, Q = "chunk", "step", "sequence"
LAYER_CASES = [
    # chunk: any number of frames per call (ONNX RNN/LSTM/GRU ops, Scan for proj)
    LayerCase("RNN", C, 7, 13, 1, True, True, "tanh"),
    LayerCase("RNN", C, 6, 11, 3, False, False, "relu"),
    LayerCase("LSTM", C, 5, 19, 2, True, False),
    LayerCase("LSTM", C, 7, 21, 3, False, True, proj=6),
    LayerCase("GRU", C, 10, 13, 2, False, True),
    LayerCase("GRU", C, 6, 24, 1, True, False),
    # step: one frame per call (ONNX GRU/LSTM ops; MatMul cells for RNN and LSTM with proj)
    LayerCase("RNN", S, 5, 10, 2, False, False, "tanh"),
    LayerCase("RNN", S, 7, 14, 1, True, True, "relu"),
    LayerCase("LSTM", S, 6, 12, 3, False, True),
    LayerCase("LSTM", S, 9, 20, 2, True, False, proj=7),
    LayerCase("GRU", S, 8, 9, 3, True, True),
    LayerCase("GRU", S, 5, 17, 1, False, False),
    LayerCase("GRU", S, 6, 11, 2, True, True, cells="matmul"),  # --cells matmul: no recurrent ops
    LayerCase("LSTM", S, 7, 10, 2, False, True, cells="matmul"),
    # sequence: bidirectional layers need the whole sequence
    LayerCase("RNN", Q, 6, 10, 2, True, True, "tanh", bidirectional=True),
    LayerCase("RNN", Q, 5, 9, 1, False, False, "relu", bidirectional=True),
    LayerCase("LSTM", Q, 7, 11, 2, False, True, bidirectional=True),
    LayerCase("LSTM", Q, 6, 10, 2, True, False, proj=3, bidirectional=True),
    LayerCase("GRU", Q, 4, 15, 3, False, True, bidirectional=True),
]


@functools.lru_cache(maxsize=None)
def exported(case: LayerCase):
    """(PyTorch module, export report), once per case for all tests that need it."""
    module = case.build()
    return module, edgernn.export(module, mode=case.mode, cells=case.cells)


def _layer_state(case: LayerCase, batch: int, gen: torch.Generator, scale: float):
    """Initial state as PyTorch takes it (``h0`` or ``(h0, c0)``) and by state name for the session."""
    L = case.layers * case.directions
    h0 = scale * torch.randn(L, batch, case.out_size, generator=gen)
    if case.cls != "LSTM":
        return h0, {case.state_names[0]: h0.numpy()}
    c0 = scale * torch.randn(L, batch, case.hidden, generator=gen)
    return (h0, c0), {"lstm.h": h0.numpy(), "lstm.c": c0.numpy()}


def _final_by_name(case: LayerCase, hn) -> dict[str, np.ndarray]:
    if case.cls != "LSTM":
        return {case.state_names[0]: hn.numpy()}
    return {"lstm.h": hn[0].numpy(), "lstm.c": hn[1].numpy()}


def _calls(case: LayerCase, total: int) -> list[list[int]]:
    """How a stream of ``total`` frames is cut into calls, per mode."""
    if case.mode == "step":
        return [[1] * total]
    if case.mode == "sequence":
        return [[total]]
    return [[1, 4, total - 5], [1] * total, [total]]


def stream_layer(session: StreamingSession, case: LayerCase, x: torch.Tensor, sizes: list[int],
                 state: dict[str, np.ndarray]) -> np.ndarray:
    """Feed ``x`` in calls of ``sizes`` frames from ``state``; return outputs joined along time."""
    axis = 1 if case.batch_first else 0
    session.reset(state=state)
    pieces, start = [], 0
    for size in sizes:
        pieces.append(session.step(x.narrow(axis, start, size).numpy())["y"])
        start += size
    assert start == x.shape[axis]
    return np.concatenate(pieces, axis=axis)


@pytest.mark.parametrize("case", LAYER_CASES, ids=lambda c: c.id)
def test_export_report_passes(case: LayerCase) -> None:
    _, report = exported(case)
    parity = report.parity
    assert parity is not None and parity.passed, parity.summary()
    assert parity.tolerance == TOLERANCE
    # every output and every final state was compared, each within tolerance
    assert {(e.name, e.kind) for e in parity.errors} == {("y", "output")} | {(n, "state") for n in case.state_names}
    for e in parity.errors:
        assert np.isfinite(e.max_abs) and e.rel <= TOLERANCE, (e.name, e.max_abs, e.scale)
        assert e.scale > 0, f"{e.name}: PyTorch gave all zeros, the comparison proves nothing"
    assert len(parity.cases) >= 2


@pytest.mark.parametrize("case", LAYER_CASES, ids=lambda c: c.id)
def test_contract_and_graph_io(case: LayerCase) -> None:
    _, report = exported(case)
    contract = report.contract
    assert contract.mode == case.mode
    assert [s.name for s in contract.states] == case.state_names  # sorted by name
    for s in contract.states:
        assert s.shape == case.state_shape(s.name), s
        assert (s.input, s.output, s.batch_axis, s.dtype) == (f"state_in.{s.name}", f"state_out.{s.name}", 1,
                                                              "float32")
    graph = report.model.graph
    dims = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in [*graph.input, *graph.output]}
    time_len = 1 if case.mode == "step" else "time"
    bt = ["batch", time_len] if case.batch_first else [time_len, "batch"]
    assert dims["x"] == [*bt, case.input_size]
    assert dims["y"] == [*bt, case.directions * case.out_size]
    for s in contract.states:
        assert dims[s.input] == dims[s.output] == list(s.shape)
    assert [i.name for i in graph.input] == ["x", *(f"state_in.{n}" for n in case.state_names)]
    assert [o.name for o in graph.output] == ["y", *(f"state_out.{n}" for n in case.state_names)]


@pytest.mark.parametrize("case", LAYER_CASES, ids=lambda c: c.id)
def test_lowered_ops(case: LayerCase) -> None:
    _, report = exported(case)
    nodes = report.model.graph.node
    ops = {n.op_type for n in nodes}
    assert not any(n.domain == "edgernn" for n in nodes), "a capture placeholder was left in the graph"
    if case.mode == "step" and (case.cls == "RNN" or case.proj or case.cells == "matmul"):
        assert not ops & RECURRENT_OPS, f"step mode must be MatMul cells, found {sorted(ops & RECURRENT_OPS)}"
        assert "MatMul" in ops
    elif case.mode == "step":  # the ONNX GRU/LSTM op, one per layer (RecurrentKind.step_op)
        assert sum(n.op_type == case.cls for n in nodes) == case.layers, sorted(ops)
    else:
        want = "Scan" if case.proj else {"RNN": "RNN", "GRU": "GRU", "LSTM": "LSTM"}[case.cls]
        assert want in ops, sorted(ops)
        n_ops = sum(n.op_type == want for n in nodes)
        assert n_ops == case.layers * (case.directions if case.proj else 1)


@pytest.mark.parametrize("case", LAYER_CASES, ids=lambda c: c.id)
def test_streams_like_pytorch(case: LayerCase) -> None:
    """Independent check: our session, our data, PyTorch's own forward on the whole sequence."""
    module, report = exported(case)
    session = StreamingSession(report.model.SerializeToString())
    gen = torch.Generator().manual_seed(7)
    for batch, total, scale in ((1, 7, 0.0), (3, 11, 0.7)):
        shape = (batch, total, case.input_size) if case.batch_first else (total, batch, case.input_size)
        x = torch.randn(shape, generator=gen)
        h0, state = _layer_state(case, batch, gen, scale)
        with torch.no_grad():
            y_ref, hn = module(x, h0)
        for sizes in _calls(case, total):
            what = f"{case.id} batch {batch} calls {sizes}"
            y = stream_layer(session, case, x, sizes, state)
            assert_close(y, y_ref.numpy(), f"{what}: output")
            final = session.state
            for name, want in _final_by_name(case, hn).items():
                assert_close(final[name], want, f"{what}: final state {name}")


def test_written_file_streams(tmp_path) -> None:
    """The file on disk (not only the in-memory model) carries the contract and the numbers."""
    case = LAYER_CASES[4]  # GRU, 2 layers, time-major, chunk mode
    module = case.build()
    path = tmp_path / "gru.onnx"
    report = edgernn.export(module, path, mode="chunk")
    assert report.path == str(path) and path.stat().st_size == report.size_bytes
    session = StreamingSession(path)
    assert session.mode == "chunk" and [s.name for s in session.states] == ["gru.h"]
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(13, 2, case.input_size, generator=gen)
    h0 = torch.randn(2, 2, case.hidden, generator=gen)
    with torch.no_grad():
        y_ref, h_ref = module(x, h0)
    y = stream_layer(session, case, x, [5, 8], {"gru.h": h0.numpy()})
    assert_close(y, y_ref.numpy(), "output")
    assert_close(session.state["gru.h"], h_ref.numpy(), "final state")


@pytest.mark.parametrize("mode", ["chunk", "step"])
@pytest.mark.parametrize("cls", ["GRU", "LSTM", "RNN"])
def test_bidirectional_cannot_stream(cls: str, mode: str) -> None:
    layer = getattr(nn, cls)(4, 6, bidirectional=True)
    with pytest.raises(ExportError, match="--mode sequence"):
        edgernn.export(layer, mode=mode)


def test_bidirectional_inside_a_model_cannot_stream() -> None:
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.LSTM(4, 6, batch_first=True, bidirectional=True)
            self.head = nn.Linear(12, 3)

        def forward(self, x):
            return self.head(self.encoder(x)[0])

    with pytest.raises(ExportError, match="--mode sequence"):
        edgernn.export(Tagger(), mode="chunk")


# ---------------------------------------------------------------------------------------------
# cells: nn.LSTMCell / nn.GRUCell / nn.RNNCell, one frame per call, state taken explicitly
# ---------------------------------------------------------------------------------------------

class CellModel(nn.Module):
    """``forward(x, state) -> (h, new state)`` around one cell; ``initial_state`` gives zeros."""

    def __init__(self, cell: nn.RNNCellBase) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x, state):
        new = self.cell(x, state)
        return (new[0] if isinstance(new, tuple) else new), new

    def initial_state(self, batch_size: int):
        h = torch.zeros(batch_size, self.cell.hidden_size)
        return (h, h.clone()) if isinstance(self.cell, nn.LSTMCell) else h


CELL_CASES = {
    "LSTMCell": lambda: nn.LSTMCell(7, 13),
    "GRUCell": lambda: nn.GRUCell(6, 11, bias=False),
    "RNNCell": lambda: nn.RNNCell(5, 9, nonlinearity="relu"),
}


@functools.lru_cache(maxsize=None)
def exported_cell(name: str):
    torch.manual_seed(11)
    model = CellModel(CELL_CASES[name]()).eval()
    return model, edgernn.export(model, mode="step")


@pytest.mark.parametrize("name", list(CELL_CASES))
def test_cell_parity(name: str) -> None:
    model, report = exported_cell(name)
    assert report.parity.passed and report.parity.max_error <= TOLERANCE, report.parity.summary()
    hidden = model.cell.hidden_size
    lstm = name == "LSTMCell"
    names = ["state.0", "state.1"] if lstm else ["state"]
    assert [s.name for s in report.contract.states] == names
    assert all(s.shape == ("batch", hidden) and s.batch_axis == 0 for s in report.contract.states)
    assert report.contract.inputs[0].shape == ("batch", model.cell.input_size)
    assert not {n.op_type for n in report.model.graph.node} & RECURRENT_OPS

    session = StreamingSession(report.model.SerializeToString())
    gen = torch.Generator().manual_seed(5)
    batch, frames = 3, 9
    xs = torch.randn(frames, batch, model.cell.input_size, generator=gen)
    state = tuple(0.8 * torch.randn(batch, hidden, generator=gen) for _ in range(2 if lstm else 1))
    session.reset(state={n: t.numpy() for n, t in zip(names, state)})
    ref_state = state if lstm else state[0]
    for t in range(frames):
        with torch.no_grad():
            y_ref, ref_state = model(xs[t], ref_state)
        y = session.step(xs[t].numpy())["y"]
        assert_close(y, y_ref.numpy(), f"{name} frame {t}: output")
    ref_leaves = ref_state if lstm else (ref_state,)
    for n, want in zip(names, ref_leaves):
        assert_close(session.state[n], want.numpy(), f"{name}: final {n}")


# ---------------------------------------------------------------------------------------------
# the registry read by tests/test_coverage.py: (architecture, mode, bidirectional)
# ---------------------------------------------------------------------------------------------

COVERED: set[tuple[str, str, bool]] = (
    {(c.arch, c.mode, c.bidirectional) for c in LAYER_CASES}
    | {(name, "step", False) for name in CELL_CASES}
)
