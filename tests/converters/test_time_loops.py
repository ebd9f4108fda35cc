"""Models whose forward loops over the time axis in Python, written the way users and recurrent
libraries write them (a gated cell with ``hx=None``, ``nn.GRUCell`` / ``nn.LSTMCell`` loops, an
SRU-like layer, a CfC-like cell, an mLSTM-like cell with matrix memory). In chunk and sequence
mode edgernn captures one frame and runs it in a ``Scan`` over the input's own time axis
(``converters/timeloop.py``); the files are streamed here in calls of 1, 3, 7 and 16 frames
carrying state and compared with PyTorch on the whole sequence.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

import edgernn
from edgernn.converters import timeloop
from edgernn.converters.io import forward_parameters, parse_input
from edgernn.converters.passes import PIPELINE, ExportContext, ExportOptions, run_pipeline
from edgernn.runtimes import StreamingSession

TOLERANCE = 1e-5


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape} != PyTorch {want.shape}"
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE * scale, err_msg=what)


# ------------------------------------------------------------------------------------- models

class GatedCell(nn.Module):
    """batch_first, ``hx=None``: the example of issue 13."""

    def __init__(s, i=8, h=16):
        super().__init__(); s.h = h; s.lin = nn.Linear(i + h, 2 * h); s.out = nn.Linear(h, 3)

    def forward(s, x, hx=None):  # x [B, T, 8]
        if hx is None: hx = x.new_zeros(x.size(0), s.h)
        ys = []
        for t in range(x.size(1)):
            g, c = s.lin(torch.cat([x[:, t], hx], -1)).chunk(2, -1)
            hx = torch.sigmoid(g) * hx + (1 - torch.sigmoid(g)) * torch.tanh(c)
            ys.append(s.out(hx))
        return torch.stack(ys, 1), hx


class TimeMajorGRUCell(nn.Module):
    """[T, B, F], ``nn.GRUCell`` over ``x.unbind(0)``."""

    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(6, 12)
        self.head = nn.Linear(12, 4)

    def forward(self, x, h=None):
        if h is None:
            h = x.new_zeros(x.shape[1], 12)
        ys = []
        for frame in x.unbind(0):
            h = self.cell(frame, h)
            ys.append(self.head(h))
        return torch.stack(ys), h


class SRULike(nn.Module):
    """A simple recurrent unit: one matmul over all frames, then a Python loop of elementwise
    recurrences that calls no submodule ([T, B, F], as the SRU papers write it)."""

    def __init__(self, i=8, h=12):
        super().__init__()
        self.h = h
        self.weight = nn.Parameter(torch.randn(i, 4 * h) / i ** 0.5)
        self.v = nn.Parameter(0.5 * torch.randn(2, h))
        self.bias = nn.Parameter(0.1 * torch.randn(2, h))

    def forward(self, x, c=None):
        u = (x @ self.weight).view(x.size(0), x.size(1), 4, self.h)  # [T, B, 4, H]
        if c is None:
            c = x.new_zeros(x.size(1), self.h)
        hs = []
        for t in range(x.size(0)):
            f = torch.sigmoid(u[t, :, 1] + self.v[0] * c + self.bias[0])
            r = torch.sigmoid(u[t, :, 2] + self.v[1] * c + self.bias[1])
            c = f * c + (1 - f) * u[t, :, 0]
            hs.append(r * torch.tanh(c) + (1 - r) * u[t, :, 3])
        return torch.stack(hs, 0), c


class CfCLike(nn.Module):
    """Closed-form continuous-time cell (as in ncps' CfC, default mode) looped over a batch-first
    sequence with a constant elapsed time per frame."""

    def __init__(self, i=5, h=10, backbone=16, timespan=1.0):
        super().__init__()
        self.h, self.timespan = h, timespan
        self.backbone = nn.Linear(i + h, backbone)
        self.ff1, self.ff2 = nn.Linear(backbone, h), nn.Linear(backbone, h)
        self.time_a, self.time_b = nn.Linear(backbone, h), nn.Linear(backbone, h)
        self.fc = nn.Linear(h, 2)

    def cell(self, x, hx, ts):
        z = 1.7159 * torch.tanh(0.666 * self.backbone(torch.cat([x, hx], 1)))  # LeCun tanh
        ff1, ff2 = torch.tanh(self.ff1(z)), torch.tanh(self.ff2(z))
        t_interp = torch.sigmoid(self.time_a(z) * ts + self.time_b(z))
        return ff1 * (1.0 - t_interp) + t_interp * ff2

    def forward(self, x, hx=None):
        if hx is None:
            hx = torch.zeros(x.size(0), self.h)
        outs = []
        for t in range(x.size(1)):
            hx = self.cell(x[:, t], hx, self.timespan)
            outs.append(self.fc(hx))
        return torch.stack(outs, dim=1), hx


class CfCWithTimespans(CfCLike):
    """The same cell with the elapsed time of each frame as a second input ``ts`` [B, T]."""

    def forward(self, x, ts, hx=None):
        if hx is None:
            hx = torch.zeros(x.size(0), self.h)
        outs = []
        for t in range(x.size(1)):
            hx = self.cell(x[:, t], hx, ts[:, t].unsqueeze(-1))
            outs.append(self.fc(hx))
        return torch.stack(outs, dim=1), hx


class LSTMCellLoop(nn.Module):
    """``nn.LSTMCell`` loop returning ``(y, (h, c))``."""

    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(7, 11)
        self.proj = nn.Linear(11, 3)

    def forward(self, x, state=None):
        if state is None:
            z = x.new_zeros(x.size(0), 11)
            state = (z, z)
        h, c = state
        ys = []
        for t in range(x.size(1)):
            h, c = self.cell(x[:, t], (h, c))
            ys.append(self.proj(h))
        return torch.stack(ys, 1), (h, c)


class MLSTMLike(nn.Module):
    """An xLSTM-style mLSTM: matrix memory C [B, D, D], normalizer n [B, D] and stabilizer m [B, 1]
    with exponential gating, looped over a batch-first sequence."""

    def __init__(self, i=6, d=8):
        super().__init__()
        self.d = d
        self.qkv = nn.Linear(i, 3 * d)
        self.gates = nn.Linear(i, 2 + d)  # input gate, forget gate (pre-activations), output gate
        self.out = nn.Linear(d, 4)

    def forward(self, x, state=None):
        b = x.size(0)
        if state is None:
            state = (x.new_zeros(b, self.d, self.d), x.new_zeros(b, self.d), x.new_zeros(b, 1))
        C, n, m = state
        ys = []
        for t in range(x.size(1)):
            q, k, v = self.qkv(x[:, t]).chunk(3, -1)
            g = self.gates(x[:, t])
            i_pre, f_pre, o = g[:, :1], g[:, 1:2], torch.sigmoid(g[:, 2:])
            log_f = torch.nn.functional.logsigmoid(f_pre)
            m_new = torch.maximum(log_f + m, i_pre)
            i_g, f_g = torch.exp(i_pre - m_new), torch.exp(log_f + m - m_new)
            k = k / self.d ** 0.5
            C = f_g.unsqueeze(-1) * C + i_g.unsqueeze(-1) * v.unsqueeze(-1) * k.unsqueeze(1)
            n = f_g * n + i_g * k
            h = (C @ q.unsqueeze(-1)).squeeze(-1) / torch.clamp((n * q).sum(-1, keepdim=True).abs(), min=1.0)
            m = m_new
            ys.append(self.out(o * h))
        return torch.stack(ys, 1), (C, n, m)


class GatedSummary(GatedCell):
    """Also returns a summary of the last frame (an output without a time axis)."""

    def forward(s, x, hx=None):
        y, hx = super().forward(x, hx)
        return y, 2 * s.out(hx), hx


# (factory, --input declarations, time axis of x, state argument names in forward order)
MODELS = {
    "gated": (GatedCell, ["x:float32:B,T,8"], 1),
    "grucell_time_major": (TimeMajorGRUCell, ["x:float32:T,B,6"], 0),
    "sru": (SRULike, ["x:float32:T,B,8"], 0),
    "cfc": (CfCLike, ["x:float32:B,T,5"], 1),
    "cfc_timespans": (CfCWithTimespans, ["x:float32:B,T,5", "ts:float32:B,T"], 1),
    "lstmcell": (LSTMCellLoop, ["x:float32:B,T,7"], 1),
    "mlstm": (MLSTMLike, ["x:float32:B,T,6"], 1),
}


@functools.lru_cache(maxsize=None)
def exported(name: str, mode: str):
    factory, inputs, _ = MODELS[name]
    torch.manual_seed(7)
    model = factory().eval()
    return model, edgernn.export(model, mode=mode, inputs=inputs)


def example(name: str, batch: int, time: int, gen: torch.Generator) -> list[torch.Tensor]:
    _, inputs, _ = MODELS[name]
    specs = [parse_input(s) for s in inputs]
    out = []
    for s in specs:
        t = torch.randn(s.concrete(batch, time), generator=gen)
        out.append(t.abs() + 0.1 if s.name == "ts" else t)  # elapsed times are positive
    return out


def reached_state(model, name: str, batch: int, gen: torch.Generator):
    """A nonzero start: PyTorch's state after 4 frames, as the forward returns it."""
    with torch.no_grad():
        out = model(*example(name, batch, 4, gen))
    return out[-1]


def state_feed(report, value) -> dict[str, np.ndarray]:
    leaves = list(value) if isinstance(value, tuple) else [value]
    names = [s.name for s in report.contract.states]
    assert len(names) == len(leaves)
    return {n: t.numpy() for n, t in zip(names, leaves)}


def passes_until(name: str) -> list:
    names = [p.name for p in PIPELINE]
    return list(PIPELINE[: names.index(name) + 1])


def flat(value) -> list[torch.Tensor]:
    return list(value) if isinstance(value, tuple) else [value]


# -------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("name", list(MODELS))
def test_chunk_file_runs_a_scan_over_the_models_time_axis(name: str) -> None:
    model, report = exported(name, "chunk")
    assert report.parity.passed, report.parity.summary()
    _, inputs, axis = MODELS[name]
    ops = [n.op_type for n in report.model.graph.node]  # input projections hoisted before the Scan: MatMul + Add
    assert ops.count("Scan") == 1 and set(ops) <= {"Scan", "MatMul", "Add"}
    assert [t.shape for t in report.contract.inputs] == [parse_input(s).shape for s in inputs]
    assert report.contract.outputs[0].time_axis == axis and report.contract.outputs[0].shape[axis] == "time"
    records = {p.name: p.detail for p in report.passes}
    assert "called" in records["time-loop"] or "operations" in records["time-loop"]
    assert "Scan over time" in records["scan-over-time"]
    assert any("forward loops over time in Python" in n and "Scan over time" in n for n in report.notes)
    assert all("on the whole sequence" in c for c in report.parity.cases)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("chunk", [1, 3, 7, 16])
def test_chunk_streaming_matches_pytorch_on_the_whole_sequence(name: str, chunk: int) -> None:
    model, report = exported(name, "chunk")
    _, _, axis = MODELS[name]
    session = StreamingSession(report.model.SerializeToString())
    gen = torch.Generator().manual_seed(chunk)
    start = reached_state(model, name, 2, gen)
    data = example(name, 2, 32, gen)
    with torch.no_grad():
        y_ref, final_ref = model(*data, start)
    session.reset(state=state_feed(report, start))
    out = session.stream(*[t.numpy() for t in data], chunk=chunk)
    assert_close(out["y"], y_ref.numpy(), f"{name}: y in calls of {chunk}")
    for spec, want in zip(report.contract.states, flat(final_ref)):
        assert_close(session.state[spec.name], want.numpy(), f"{name}: final {spec.name} in calls of {chunk}")


# three of the seven in sequence mode (the same Scan route as chunk mode; the suite's time is bounded)
@pytest.mark.parametrize("name", ["gated", "sru", "mlstm"])
def test_sequence_mode_at_two_lengths(name: str) -> None:
    model, report = exported(name, "sequence")
    assert report.parity.passed, report.parity.summary()
    session = StreamingSession(report.model.SerializeToString())
    gen = torch.Generator().manual_seed(5)
    for time in (5, 23):
        data = example(name, 3, time, gen)
        with torch.no_grad():
            y_ref, final_ref = model(*data)
        session.reset()
        out = session.step(*[t.numpy() for t in data])
        assert_close(out["y"], y_ref.numpy(), f"{name}: y over {time} frames")
        for spec, want in zip(report.contract.states, flat(final_ref)):
            assert_close(session.state[spec.name], want.numpy(), f"{name}: final {spec.name} after {time} frames")


def test_input_projections_are_computed_for_all_frames_before_the_scan() -> None:
    _, report = exported("lstmcell", "chunk")  # LSTMCell's W_ih x_t: one MatMul over the whole call
    assert [n.op_type for n in report.model.graph.node] == ["MatMul", "Add", "Scan"]
    scan = report.model.graph.node[-1]
    body = next(a.g for a in scan.attribute if a.name == "body")
    assert "x@frame" not in [i.name for i in body.input]  # the body reads only the projected frames
    assert "1 input projections computed for all frames" in next(p.detail for p in report.passes
                                                                  if p.name == "scan-over-time")


def test_the_report_names_the_looped_module() -> None:
    _, report = exported("gated", "chunk")
    assert ("forward loops over time in Python (GatedCell.lin called 5 times for 5 frames): captured one frame, "
            "chunk and sequence files run it in a Scan over time") in report.notes
    _, sru = exported("sru", "chunk")
    assert "SRULike.forward runs" in next(p.detail for p in sru.passes if p.name == "time-loop")


def test_an_output_without_a_time_axis_comes_from_the_last_frame() -> None:
    torch.manual_seed(3)
    model = GatedSummary().eval()
    report = edgernn.export(model, mode="chunk", inputs=["x:float32:B,T,8"])
    assert report.parity.passed
    outs = {t.name: t for t in report.contract.outputs}
    assert outs["y.0"].time_axis == 1 and outs["y.1"].time_axis is None and outs["y.1"].shape == ("batch", 3)
    x = torch.randn(2, 20, 8)
    with torch.no_grad():
        y, summary, h = model(x)
    session = StreamingSession(report.model.SerializeToString())
    out = session.stream(x.numpy(), chunk=7)
    assert_close(out["y.0"], y.numpy(), "y.0")
    assert out["y.1"].shape == (3, 2, 3)  # no time axis: one row per call (3 calls of 7 frames), stacked
    assert_close(out["y.1"][-1], summary.numpy(), "y.1 (the last call's, from its last frame)")
    assert_close(session.state["hx"], h.numpy(), "hx")


def test_step_mode_is_unchanged() -> None:
    model, report = exported("gated", "step")
    assert report.parity.passed
    assert "Scan" not in {n.op_type for n in report.model.graph.node}
    assert next(p.detail for p in report.passes if p.name == "time-loop") == "not needed in step mode"
    assert report.notes == []


class _GRUModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.gru = nn.GRU(8, 8, num_layers=2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.gru(torch.relu(self.inp(x)))[0])


class _LSTMCellPerFrame(nn.Module):
    """One frame per forward (no time axis): the frame-model Scan, not a Python loop."""

    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(4, 6)

    def initial_state(self, batch):
        z = torch.zeros(batch, 6)
        return (z, z)

    def forward(self, x, state):
        h, c = self.cell(x, state)
        return h, (h, c)


@pytest.mark.parametrize("factory", [_GRUModel, lambda: nn.Sequential(nn.Linear(6, 5), nn.Tanh())])
def test_no_misfire_on_layers_that_run_once_per_forward(factory) -> None:
    model = factory()
    name = next(iter(forward_parameters(model))).name  # nn.Sequential's forward takes ``input``
    ctx = ExportContext(model, ExportOptions(mode="chunk", inputs=[parse_input(f"{name}:float32:B,T,6")]))
    run_pipeline(ctx, passes_until("time-loop"))
    assert ctx.time_loop == "" and ctx.capture_mode == "chunk"
    assert ctx.records[-1].detail.startswith("no loop over time")


def test_one_frame_models_keep_the_frame_scan() -> None:
    torch.manual_seed(0)
    report = edgernn.export(_LSTMCellPerFrame().eval(), mode="chunk", state_args=["state"])
    assert report.parity.passed
    assert next(p.detail for p in report.passes if p.name == "time-loop").startswith("not needed")
    assert report.contract.inputs[0].shape == ("time", "batch", 4)


def test_a_loop_the_detection_missed_is_routed_when_the_capture_fixes_time() -> None:
    """Without the time-loop pass, the chunk capture unrolls the loop and fixes the time axis at
    the traced length: the capture pass sees that and captures one frame instead."""
    torch.manual_seed(7)
    model = GatedCell().eval()
    ctx = ExportContext(model, ExportOptions(mode="chunk", inputs=[parse_input("x:float32:B,T,8")]))
    run_pipeline(ctx, [p for p in PIPELINE if p.name != "time-loop"])
    assert ctx.parity.passed, ctx.parity.summary()
    assert "fixed the time axis of x" in ctx.time_loop
    assert [n.op_type for n in ctx.onnx_model.graph.node] == ["Scan"]  # Concat([x, h]): nothing to hoist
    assert any("forward loops over time in Python" in n for n in ctx.notes)


def test_find_time_loop_counts_calls_per_frame() -> None:
    ctx = ExportContext(TimeMajorGRUCell(), ExportOptions(mode="chunk", inputs=[parse_input("x:float32:T,B,6")]))
    run_pipeline(ctx, passes_until("resolve-inputs"))
    assert timeloop.find_time_loop(ctx) == "TimeMajorGRUCell.cell called 5 times for 5 frames"


@pytest.mark.parametrize("method", ["dynamic", "fp16"])
def test_a_scan_routed_file_quantizes(method: str, tmp_path) -> None:
    """The int8 quantizer reaches the MatMuls inside the Scan body; fp16 stores the weights in
    float16 (the body computes in float32)."""
    from edgernn.converters.quantize import quantize

    _, report = exported("lstmcell", "chunk")
    path = tmp_path / "lstmcell.onnx"
    path.write_bytes(report.model.SerializeToString())
    q = quantize(path, method=method, steps=300, min_size=0)  # small layers: every one, to check each
    assert q.accuracy.max_error < (0.05 if method == "dynamic" else 1e-3), q.accuracy.max_error
    # a tiny cell: the weights shrink; where the int8 graph's extra nodes outweigh that, the report says so
    assert q.sizes.weights_after < q.sizes.weights_before
    assert q.size_after < q.size_before or any("larger than" in n for n in q.notes), q.notes
    if method == "dynamic":
        # the hoisted input projection (MatMul before the Scan) and the two Gemms inside its body
        assert sorted(d.op_type for d in q.quantized) == ["Gemm", "Gemm", "MatMul"]
    session = StreamingSession(q.path)
    y = session.stream(np.random.default_rng(0).standard_normal((1, 20, 7)).astype(np.float32), chunk=7)["y"]
    assert y.shape == (1, 20, 3) and np.isfinite(y).all()
