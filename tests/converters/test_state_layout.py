"""``export(..., state_layout="batch-major")``: every state with a batch axis has it first in the
file, the graph transposes at its state inputs and outputs, and the contract says so
(``batch_axis`` 0, shape ``[batch, ...]``). Each case is exported twice (native, batch-major);
both files, and PyTorch, stream the same calls from the same nonzero start state, and
``StreamingSession`` and ``StreamBatcher`` run the batch-major file from its metadata alone."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jsonschema
import numpy as np
import onnx
import pytest
import torch
from torch import nn

import edgernn
from edgernn.api import export_file
from edgernn.contract import SCHEMA_PATH, decoded_metadata, read_metadata
from edgernn.errors import ExportError
from edgernn.runtimes import StreamBatcher, StreamingSession

TOLERANCE = 1e-5  # max |a - b| / max(1, max |b|), the export's own bar
BATCH = 3  # differs from every layers * directions below, so a state in the wrong layout cannot be fed
NTM_CHECKPOINT = Path(__file__).resolve().parents[2] / "examples" / "ntm_copy" / "ntm_copy.pt"

States = dict[str, torch.Tensor]


class LearnedStart(nn.Module):
    """An explicit state ``h`` [layers, batch, hidden] (batch on axis 1) with a learned start
    value, which the file stores as ``state_init.h``."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(5, 6, num_layers=2)  # time-major: x [time, batch, 5]
        self.h0 = nn.Parameter(torch.randn(2, 1, 6))

    def initial_state(self, batch_size: int) -> torch.Tensor:
        return self.h0.expand(2, batch_size, 6)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, h = self.rnn(x, h)
        return y, h


class BatchLast(nn.Module):
    """An explicit state ``memory`` [layers, hidden, batch]: batch on its last axis, so moving it
    first is a permutation other than its own inverse."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(5, 6, num_layers=2, batch_first=True)

    def initial_state(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(2, 6, batch_size)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, h = self.rnn(x, memory.permute(0, 2, 1).contiguous())
        return y, h.permute(0, 2, 1)


def _gru(model, x, s: States):
    y, h = model(x, s["gru.h"])
    return y, {"gru.h": h}


def _lstm(model, x, s: States):
    y, (h, c) = model(x, (s["lstm.h"], s["lstm.c"]))
    return y, {"lstm.h": h, "lstm.c": c}


def _learned(model, x, s: States):
    y, h = model(x, s["h"])
    return y, {"h": h}


def _memory(model, x, s: States):
    y, memory = model(x, s["memory"])
    return y, {"memory": memory}


def _ntm(model, x, s: States):
    y, new = model(x, {k.removeprefix("state."): v for k, v in s.items()})
    return y, {f"state.{k}": v for k, v in new.items()}


@dataclass
class Case:
    make: Callable[[], nn.Module]
    mode: str
    call: Callable  # PyTorch: (model, x, states by contract name, PyTorch layout) -> (y, new states)
    chunks: list[int]  # frames per call
    features: int


CASES = {
    "gru-chunk": Case(lambda: nn.GRU(8, 16, num_layers=2, batch_first=True), "chunk", _gru, [2, 1, 4], 8),
    "gru-step": Case(lambda: nn.GRU(8, 16, num_layers=2, batch_first=True), "step", _gru, [1] * 4, 8),
    "lstm-chunk": Case(lambda: nn.LSTM(8, 12, num_layers=2), "chunk", _lstm, [3, 1, 2], 8),
    "lstm-step": Case(lambda: nn.LSTM(8, 12, num_layers=2), "step", _lstm, [1] * 4, 8),
    "bigru-sequence": Case(lambda: nn.GRU(8, 10, num_layers=2, bidirectional=True, batch_first=True), "sequence",
                           _gru, [6, 3], 8),
    "learned-start-chunk": Case(LearnedStart, "chunk", _learned, [2, 3], 5),
    "batch-last-chunk": Case(BatchLast, "chunk", _memory, [1, 4], 5),
    "ntm-step": Case(lambda: edgernn.load(NTM_CHECKPOINT).module, "step", _ntm, [1] * 4, 9),
}


@dataclass
class Exported:
    model: nn.Module
    native: Path
    batch_major: Path
    report: edgernn.ExportReport  # of the batch-major file


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Callable[[str], Exported]:
    folder = tmp_path_factory.mktemp("state_layout")
    done: dict[str, Exported] = {}

    def get(name: str) -> Exported:
        if name not in done:
            case = CASES[name]
            torch.manual_seed(0)
            model = case.make().eval()
            native, bm = folder / f"{name}.onnx", folder / f"{name}.bm.onnx"
            edgernn.export(model, native, mode=case.mode)
            report = edgernn.export(model, bm, mode=case.mode, state_layout="batch-major")
            done[name] = Exported(model, native, bm, report)
        return done[name]
    return get


pytestmark = pytest.mark.usefixtures("one_thread")


def _close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err = float(np.max(np.abs(got.astype(np.float64) - want))) / max(1.0, float(np.max(np.abs(want))))
    assert err <= TOLERANCE, f"{what}: error {err:.2e} relative to scale"


def _to_file(value: np.ndarray, axis: int | None) -> np.ndarray:
    return value if axis is None else np.moveaxis(value, axis, 0)


def _from_file(value: np.ndarray, axis: int | None) -> np.ndarray:
    return value if axis is None else np.moveaxis(value, 0, axis)


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name", list(CASES))
def test_contract_and_graph_io_are_batch_major(name, exports) -> None:
    e = exports(name)
    native, bm = read_metadata(onnx.load(str(e.native))), read_metadata(onnx.load(str(e.batch_major)))
    assert e.report.contract == bm
    assert (bm.mode, bm.inputs, bm.outputs) == (native.mode, native.inputs, native.outputs)  # data I/O as before
    assert [s.name for s in bm.states] == [s.name for s in native.states] and bm.states
    for n, b in zip(native.states, bm.states):
        assert b.batch_axis == 0 and b.shape[0] == "batch", b
        assert b.shape == ("batch", *(d for k, d in enumerate(n.shape) if k != n.batch_axis))
        assert (b.dtype, b.input, b.output) == (n.dtype, n.input, n.output)
        assert (b.init == "zeros") == (n.init == "zeros")
    model = onnx.load(str(e.batch_major))
    jsonschema.validate(decoded_metadata({p.key: p.value for p in model.metadata_props}),
                        json.loads(SCHEMA_PATH.read_text()))
    ins = {i.name: i for i in model.graph.input}
    outs = {o.name: o for o in model.graph.output}
    for s in bm.states:
        assert _dims(ins[s.input]) == list(s.shape) == _dims(outs[s.output])
    for t in bm.inputs:
        assert _dims(ins[t.name]) == list(t.shape)
    for t in bm.outputs:
        assert _dims(outs[t.name]) == list(t.shape)
    describe = next(p for p in e.report.passes if p.name == "describe-state-io")
    moved = sum(n.batch_axis not in (None, 0) for n in native.states)
    assert f"batch-major ({moved} transposed)" in describe.detail
    assert e.report.parity.passed, e.report.parity.summary()


@pytest.mark.parametrize("name", list(CASES))
def test_streams_match_native_file_and_pytorch(name, exports, ntm_example) -> None:
    case, e = CASES[name], exports(name)
    native, bm = StreamingSession(e.native), StreamingSession(e.batch_major)
    axes = {s.name: s.batch_axis for s in native.states}
    (spec,) = native.inputs
    gen = np.random.default_rng(1)
    total = sum(case.chunks)
    if name.startswith("ntm"):  # copy-task frames: [time, batch, 9], one [batch, 9] frame per call
        x, _, _ = ntm_example("copy_data").make_batch(BATCH, 4, gen)
        warm, x = x[:3], x[3:3 + total]
        calls = [x[k] for k in range(total)]
        warm_calls = [warm[k] for k in range(len(warm))]
    else:
        shape = list(spec.concrete_shape(BATCH))
        shape[spec.time_axis] = total + 3  # (1 in step mode's shape)
        x = gen.standard_normal(shape).astype(np.float32)
        warm = np.take(x, range(3), axis=spec.time_axis)
        x = np.take(x, range(3, total + 3), axis=spec.time_axis)
        starts = np.cumsum([0, *case.chunks])
        calls = [np.take(x, range(a, b), axis=spec.time_axis) for a, b in zip(starts, starts[1:])]
        warm_calls = [warm] if case.mode != "step" else [np.take(warm, [k], axis=spec.time_axis) for k in range(3)]

    # the file's own start values: the batch-major file's are the native file's, batch first
    init = native.initial_state(BATCH)
    for name_, value in bm.initial_state(BATCH).items():
        np.testing.assert_array_equal(value, _to_file(init[name_], axes[name_]))

    # a nonzero start: the state PyTorch reaches from the init state on a few frames
    def torch_run(chunks, state: dict[str, np.ndarray]):
        s = {k: torch.from_numpy(v.copy()) for k, v in state.items()}
        ys = []
        with torch.no_grad():
            for chunk in chunks:
                y, s = case.call(e.model, torch.from_numpy(chunk), s)
                ys.append(y.numpy())
        return ys, {k: v.numpy() for k, v in s.items()}

    _, start = torch_run(warm_calls, init)
    assert all(np.any(v != 0) for v in start.values())

    native.reset(state=start)
    bm.reset(state={k: _to_file(v, axes[k]) for k, v in start.items()})
    want_y, want_state = torch_run(calls, start)
    for k, chunk in enumerate(calls):
        y_native, y_bm = native.step(chunk)["y"], bm.step(chunk)["y"]
        _close(y_bm, y_native, f"call {k}: batch-major output vs native file's")
        _close(y_bm, want_y[k], f"call {k}: batch-major output vs PyTorch's")
    got_native, got_bm = native.state, bm.state
    for k, want in want_state.items():
        assert got_bm[k].shape == _to_file(want, axes[k]).shape
        _close(_from_file(got_bm[k], axes[k]), got_native[k], f"final state {k} vs native file's")
        _close(_from_file(got_bm[k], axes[k]), want, f"final state {k} vs PyTorch's")

    # the batcher: one stream per batch entry, states set and read batch-first (size 1 on axis 0)
    batcher = StreamBatcher(e.batch_major, capacity=4)
    assert all(s.batch_axis == 0 for s in batcher.states)
    sids = [batcher.open() for _ in range(BATCH)]
    for b, sid in enumerate(sids):
        batcher.set_state(sid, {k: _to_file(v, axes[k])[b:b + 1] for k, v in start.items()})
    out_spec = bm.outputs[0]
    for k, chunk in enumerate(calls):
        out = batcher.step({sid: np.take(chunk, [b], axis=spec.batch_axis) for b, sid in enumerate(sids)})
        for b, sid in enumerate(sids):
            _close(out[sid]["y"], np.take(want_y[k], [b], axis=out_spec.batch_axis), f"batcher call {k}, stream {b}")
    for b, sid in enumerate(sids):
        for k, value in batcher.state(sid).items():
            _close(value, _to_file(want_state[k], axes[k])[b:b + 1], f"batcher final state {k}, stream {b}")


@pytest.mark.parametrize("name", ["learned-start-chunk", "ntm-step"])
def test_stored_start_values_are_batch_first(name, exports) -> None:
    e = exports(name)
    native_model, bm_model = onnx.load(str(e.native)), onnx.load(str(e.batch_major))
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in native_model.graph.initializer}
    stored_bm = {t.name: onnx.numpy_helper.to_array(t) for t in bm_model.graph.initializer}
    native = read_metadata(native_model)
    with_init = [s for s in native.states if isinstance(s.init, dict)]
    assert with_init
    for s in with_init:
        key = s.init["initializer"]
        np.testing.assert_array_equal(stored_bm[key], _to_file(stored[key], s.batch_axis))
        assert stored_bm[key].shape[0] == 1
    # streams from the file's own init (no state given) agree too
    a, b = StreamingSession(e.native), StreamingSession(e.batch_major)
    (spec,) = a.inputs
    x = np.random.default_rng(2).standard_normal(spec.concrete_shape(2, 3)).astype(np.float32)
    _close(b.step(x)["y"], a.step(x)["y"], "output from the stored start")


def test_the_explicit_states_really_move(exports) -> None:
    """The learned start has the batch on axis 1 (a stored start value to permute), the batch-last
    state on axis 2; the NTM's states have it first already and keep their shapes."""
    (h,) = read_metadata(onnx.load(str(exports("learned-start-chunk").native))).states
    assert (h.shape, h.batch_axis, h.init) == ((2, "batch", 6), 1, {"initializer": "state_init.h"})
    (memory,) = read_metadata(onnx.load(str(exports("batch-last-chunk").native))).states
    assert (memory.shape, memory.batch_axis) == ((2, 6, "batch"), 2)
    (memory,) = read_metadata(onnx.load(str(exports("batch-last-chunk").batch_major))).states
    assert (memory.shape, memory.batch_axis) == (("batch", 2, 6), 0)
    ntm = exports("ntm-step")
    assert read_metadata(onnx.load(str(ntm.native))).states == ntm.report.contract.states


def test_native_is_the_default_and_bad_values_are_refused(tmp_path) -> None:
    torch.manual_seed(0)
    gru = nn.GRU(4, 5)
    report = edgernn.export(gru, None, mode="step", verify=False)
    assert [(s.shape, s.batch_axis) for s in report.contract.states] == [((1, "batch", 5), 1)]
    for bad in ("batch_major", "time-major", ""):
        with pytest.raises(ExportError, match=r"^state layout .* is unknown; expected native or batch-major$"):
            edgernn.export(gru, None, state_layout=bad)
    (tmp_path / "model.pt").write_bytes(b"PK\x03\x04 not read")  # refused before the file is loaded
    with pytest.raises(ExportError, match="expected native or batch-major"):
        export_file(tmp_path / "model.pt", state_layout="columns")


def test_tree_export_has_no_states_to_move() -> None:
    from edgernn.architectures.tree import TreeRNN

    torch.manual_seed(0)
    report = edgernn.export(TreeRNN(4, 6, 3), None, state_layout="batch-major", verify=False)
    assert report.contract.states == ()
    assert any("changes nothing" in n for n in report.notes)
