"""Recurrent cells written the way PyTorch and third-party libraries write them, exported with no
wrapper: cells whose forward returns the new state alone (``nn.GRUCell``'s ``h'``,
``nn.LSTMCell``'s ``(h', c')``), state arguments anywhere in the signature next to extra inputs (a
closed-form cell's time step ``ts``, a mask), and steps that update their state in place (a
convolution buffer shifted by ``copy_`` and slice assignment), which verification must still judge
right, both ways: no false "does not match", and a model that truly differs still fails.

The cells below are small copies of common third-party shapes (a CfC-like closed-form cell, an
LTC-like ODE cell of bare parameters, a minimal GRU cell returning ``h``, a mamba-like step whose
convolution buffer is updated in place). Every test streams its own frames through
``StreamingSession`` and compares with the PyTorch model called by keyword, as its author would.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import edgernn
from edgernn.converters.passes import PIPELINE, ExportContext, ExportOptions, run_pipeline
from edgernn.converters.verify import Verify
from edgernn.errors import ParityError
from edgernn.runtimes import StreamingSession

from streams import assert_close, assert_verified

FRAMES = 7


# ---------------------------------------------------------------------------------------------
# third-party style cells
# ---------------------------------------------------------------------------------------------

class MinimalGRUCell(nn.Module):
    """A GRU cell as cell libraries write it: ``forward(input, hx=None) -> h'`` (the state alone)."""

    def __init__(self, input_size: int = 5, hidden_size: int = 7) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.ih = nn.Linear(input_size, 3 * hidden_size)
        self.hh = nn.Linear(hidden_size, 3 * hidden_size)

    def forward(self, input, hx=None):
        if hx is None:
            hx = input.new_zeros(input.shape[0], self.hidden_size)
        xr, xz, xn = self.ih(input).chunk(3, 1)
        hr, hz, hn = self.hh(hx).chunk(3, 1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * hx


class CfCLikeCell(nn.Module):
    """A closed-form continuous-time cell (after ncps' ``CfCCell``): ``forward(input, hx, ts)``,
    the time step after the state, ``[input, hx]`` concatenated into the first Linear, no
    defaults and no init hook; returns ``(h', h')``."""

    def __init__(self, input_size: int = 5, hidden_size: int = 8, units: int = 12) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.backbone = nn.Sequential(nn.Linear(input_size + hidden_size, units), nn.Tanh())
        self.ff1, self.ff2 = nn.Linear(units, hidden_size), nn.Linear(units, hidden_size)
        self.time_a, self.time_b = nn.Linear(units, hidden_size), nn.Linear(units, hidden_size)

    def forward(self, input, hx, ts):
        x = self.backbone(torch.cat([input, hx], 1))
        ff1, ff2 = torch.tanh(self.ff1(x)), torch.tanh(self.ff2(x))
        t_interp = torch.sigmoid(self.time_a(x) * ts + self.time_b(x))
        new_hidden = ff1 * (1.0 - t_interp) + t_interp * ff2
        return new_hidden, new_hidden


class LTCLikeCell(nn.Module):
    """A liquid time-constant cell of bare parameters (after ncps' ``LTCCell``): no Linear layer to
    read sizes from, ``sensory_size`` and ``state_size`` attributes, an ODE unfolded 3 times,
    ``forward(inputs, states, elapsed_time=1.0) -> (outputs, new states)``."""

    def __init__(self, sensory_size: int = 4, state_size: int = 6, motor_size: int = 2, unfolds: int = 3) -> None:
        super().__init__()
        self.sensory_size, self.state_size, self.motor_size, self.unfolds = sensory_size, state_size, motor_size, unfolds
        g = torch.Generator().manual_seed(3)

        def p(*shape, lo=0.0, hi=1.0):
            return nn.Parameter(lo + (hi - lo) * torch.rand(*shape, generator=g))
        self.gleak, self.vleak, self.cm = p(state_size, lo=0.5, hi=1), p(state_size, lo=-0.2, hi=0.2), p(state_size, lo=0.4, hi=0.6)
        self.sigma, self.mu = p(state_size, state_size, lo=3, hi=8), p(state_size, state_size, lo=0.3, hi=0.8)
        self.w, self.erev = p(state_size, state_size, lo=0.1, hi=1), p(state_size, state_size, lo=-1, hi=1)
        self.s_sigma, self.s_mu = p(sensory_size, state_size, lo=3, hi=8), p(sensory_size, state_size, lo=0.3, hi=0.8)
        self.s_w, self.s_erev = p(sensory_size, state_size, lo=0.1, hi=1), p(sensory_size, state_size, lo=-1, hi=1)
        self.input_w, self.input_b = p(sensory_size, lo=0.5, hi=1.5), p(sensory_size, lo=-0.1, hi=0.1)
        self.output_w, self.output_b = p(motor_size, lo=0.5, hi=1.5), p(motor_size, lo=-0.1, hi=0.1)

    def forward(self, inputs, states, elapsed_time=1.0):
        inputs = inputs * self.input_w + self.input_b
        s_act = self.s_w * torch.sigmoid((inputs[:, :, None] - self.s_mu) * self.s_sigma)
        num_s, den_s = (s_act * self.s_erev).sum(1), s_act.sum(1)
        cm_t = self.cm / (elapsed_time / self.unfolds)
        v = states
        for _ in range(self.unfolds):
            act = self.w * torch.sigmoid((v[:, :, None] - self.mu) * self.sigma)
            num, den = (act * self.erev).sum(1) + num_s, act.sum(1) + den_s
            v = (cm_t * v + self.gleak * self.vleak + num) / (cm_t + self.gleak + den + 1e-8)
        return v[:, : self.motor_size] * self.output_w + self.output_b, v


class ConvBufferStep(nn.Module):
    """A mamba-like streaming step: the convolution buffer ``conv_state`` [batch, channels, kernel]
    is shifted in place (``copy_`` of a roll) and the new frame written by slice assignment; the
    mutated buffer is returned as the new state."""

    def __init__(self, channels: int = 6, kernel: int = 4, out: int = 5) -> None:
        super().__init__()
        self.channels, self.kernel = channels, kernel
        self.inp = nn.Linear(channels, channels)
        self.weight = nn.Parameter(0.5 * torch.randn(channels, kernel))
        self.bias = nn.Parameter(0.1 * torch.randn(channels))
        self.out = nn.Linear(channels, out)

    def forward(self, x, conv_state):
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = self.inp(x)
        y = (conv_state * self.weight).sum(-1) + self.bias
        return self.out(nn.functional.silu(y)), conv_state

    def initial_state(self, batch_size: int):
        return torch.zeros(batch_size, self.channels, self.kernel)


class ConvBufferChunk(nn.Module):
    """The chunked form: ``x`` [batch, time, channels], a causal depthwise convolution over the
    buffer and the chunk, the buffer's last ``kernel - 1`` frames written back in place."""

    def __init__(self, channels: int = 6, kernel: int = 3) -> None:
        super().__init__()
        self.channels, self.kernel = channels, kernel
        self.conv = nn.Conv1d(channels, channels, kernel, groups=channels)
        self.head = nn.Linear(channels, 4)

    def forward(self, x, buffer):
        full = torch.cat([buffer, x.transpose(1, 2)], dim=2)
        buffer.copy_(full[:, :, -(self.kernel - 1):])
        return self.head(torch.tanh(self.conv(full)).transpose(1, 2)), buffer

    def initial_state(self, batch_size: int):
        return torch.zeros(batch_size, self.channels, self.kernel - 1)


class InPlaceLeakyCell(nn.Module):
    """Returns its state alone and updates both its arguments in place: ``x.mul_`` and
    ``h.mul_(...).add_(...)``."""

    def __init__(self, size: int = 6) -> None:
        super().__init__()
        self.hidden_size = size
        self.lin = nn.Linear(size, size)

    def forward(self, x, h):
        x.mul_(0.5)
        return h.mul_(0.8).add_(torch.tanh(self.lin(x) + h))


# ---------------------------------------------------------------------------------------------
# signatures: state before, between and after data arguments, keyword-only, with defaults
# ---------------------------------------------------------------------------------------------

class StateFirst(nn.Module):
    """``forward(h, x)``: the state before the data."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(4, 6)

    def forward(self, h, x):
        h = self.cell(x, h)
        return torch.relu(h), h

    def initial_state(self, batch_size: int):
        return torch.zeros(batch_size, 6)


class KeywordOnlyState(nn.Module):
    """``forward(x, *, state=None)``: a keyword-only state with a default."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(4, 5)

    def forward(self, x, *, state=None):
        h, c = self.cell(x, state)
        return h.sum(1, keepdim=True), (h, c)


class OptionalBetween(nn.Module):
    """``forward(x, scale=None, hx=None)``: an optional data argument between the data and the
    state, fed only when declared."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.RNNCell(4, 6)

    def forward(self, x, scale=None, hx=None):
        if scale is not None:
            x = x * scale
        h = self.cell(x, hx)
        return h * 2, h


class MaskedCell(nn.Module):
    """``forward(x, mask, h)``: a mask between the data and the state; the state holds where the
    mask is 0."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(4, 6)

    def forward(self, x, mask, h):
        new = self.cell(x, h)
        return mask * new + (1 - mask) * h

    def initial_state(self, batch_size: int):
        return torch.zeros(batch_size, 6)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def exported(name: str, mode: str, inputs: tuple[str, ...] = ()):
    torch.manual_seed(7)
    model = MODELS[name]().eval()
    return model, edgernn.export(model, mode=mode, inputs=list(inputs or DECLARED.get(name, ())))


MODELS = {
    "GRUCell": lambda: nn.GRUCell(5, 7), "LSTMCell": lambda: nn.LSTMCell(5, 6),
    "RNNCell": lambda: nn.RNNCell(5, 4, nonlinearity="relu"), "minimal_gru": MinimalGRUCell,
    "cfc": CfCLikeCell, "ltc": LTCLikeCell, "conv_step": ConvBufferStep, "conv_chunk": ConvBufferChunk,
    "inplace_leaky": InPlaceLeakyCell, "state_first": StateFirst, "keyword_only": KeywordOnlyState,
    "optional_between": OptionalBetween, "masked": MaskedCell,
}


DECLARED = {"conv_chunk": ("x:float32:B,T,6",)}  # a Conv1d-first model without recurrent layer: no layout to infer


def frames_for(report, batch: int, frames: int, seed: int = 5) -> list[dict[str, np.ndarray]]:
    """Per-frame feeds for every data input, ``[batch, ...]`` (one frame's shape, time dropped)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(frames):
        feed = {}
        for spec in report.contract.inputs:
            shape = [batch if d == "batch" else d for d in spec.shape if d != "time"]
            feed[spec.name] = rng.standard_normal(shape).astype(np.float32)
        out.append(feed)
    return out


def stream_onnx(report, feeds: list[dict[str, np.ndarray]], state: dict[str, np.ndarray] | None = None):
    """Outputs per frame (each output's frame, time axis dropped) and the final state."""
    session = StreamingSession(report.model.SerializeToString())
    session.reset(state=state) if state else session.reset(next(iter(feeds[0].values())).shape[0])
    chunk = report.contract.mode != "step"
    outs = []
    for feed in feeds:
        res = session.step(**{k: v[None] if chunk else v for k, v in feed.items()})
        outs.append({k: v[0] if chunk else v for k, v in res.items()})
    return outs, session.state


def as_tensors(feed: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v.copy()) for k, v in feed.items()}


# ---------------------------------------------------------------------------------------------
# cells that return their new state alone
# ---------------------------------------------------------------------------------------------

CELLS = [("GRUCell", "step"), ("GRUCell", "chunk"), ("LSTMCell", "step"), ("LSTMCell", "chunk"), ("RNNCell", "step"),
         ("minimal_gru", "chunk")]


@pytest.mark.parametrize("name, mode", CELLS)
def test_cell_returning_its_state_exports_without_a_wrapper(name: str, mode: str) -> None:
    model, report = exported(name, mode)
    assert_verified(report)
    lstm = name == "LSTMCell"
    c = report.contract
    assert [s.name for s in c.states] == (["hx.0", "hx.1"] if lstm else ["hx"])
    assert [o.name for o in c.outputs] == (["y.0", "y.1"] if lstm else ["y"])
    assert any("returns its new state alone" in n for n in report.notes), report.notes
    hidden = model.hidden_size
    gen = torch.Generator().manual_seed(2)
    start = [0.5 * torch.randn(3, hidden, generator=gen) for _ in range(2 if lstm else 1)]
    feeds = frames_for(report, 3, FRAMES)
    outs, final = stream_onnx(report, feeds, {s.name: t.numpy() for s, t in zip(c.states, start)})
    h = tuple(start) if lstm else start[0]
    for t, feed in enumerate(feeds):
        with torch.no_grad():
            h = model(torch.from_numpy(feed[c.inputs[0].name]), h)
        for o, want in zip(c.outputs, h if lstm else (h,)):
            assert_close(outs[t][o.name], want.numpy(), f"{name} {mode} frame {t}: {o.name}")
    for s, want in zip(c.states, h if lstm else (h,)):
        assert_close(final[s.name], want.numpy(), f"{name} {mode}: final {s.name}")


# ---------------------------------------------------------------------------------------------
# state arguments anywhere, extra inputs declared or inferred
# ---------------------------------------------------------------------------------------------

def test_closed_form_cell_with_a_time_step_after_its_state() -> None:
    """``forward(input, hx, ts)``: input and the state's shape from the cell's sizes (its first
    Linear takes ``[input, hx]``), ``ts`` inferred as ``[batch, 1]``, each passed by name."""
    model, report = exported("cfc", "step")
    assert_verified(report)
    c = report.contract
    assert [(t.name, t.shape) for t in c.inputs] == [("input", ("batch", 5)), ("ts", ("batch", 1))]
    assert [(s.name, s.shape) for s in c.states] == [("hx", ("batch", 8))]
    feeds = frames_for(report, 2, FRAMES)
    h0 = 0.3 * torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    outs, final = stream_onnx(report, feeds, {"hx": h0.numpy()})
    h = h0
    for t, feed in enumerate(feeds):
        with torch.no_grad():
            y, h = model(input=torch.from_numpy(feed["input"]), hx=h, ts=torch.from_numpy(feed["ts"]))
        assert_close(outs[t]["y"], y.numpy(), f"cfc frame {t}")
    assert_close(final["hx"], h.numpy(), "cfc final state")


def test_cell_of_bare_parameters_takes_its_sizes_from_attributes() -> None:
    model, report = exported("ltc", "chunk")
    assert_verified(report)
    c = report.contract
    assert [(t.name, t.shape) for t in c.inputs] == [("inputs", ("time", "batch", 4))]
    assert [(s.name, s.shape) for s in c.states] == [("states", ("batch", 6))]
    feeds = frames_for(report, 2, FRAMES)
    outs, final = stream_onnx(report, feeds)
    v = torch.zeros(2, 6)
    for t, feed in enumerate(feeds):
        with torch.no_grad():
            y, v = model(torch.from_numpy(feed["inputs"]), v)
        assert_close(outs[t]["y"], y.numpy(), f"ltc frame {t}")
    assert_close(final["states"], v.numpy(), "ltc final state")


SIGNATURES = [  # (model, mode, --input declarations, keyword arguments of a PyTorch call)
    ("state_first", "step", (), lambda f, s: {"x": f["x"], "h": s}),
    ("keyword_only", "chunk", (), lambda f, s: {"x": f["x"], "state": s}),
    ("optional_between", "chunk", ("scale:float32:B,1",), lambda f, s: {"x": f["x"], "scale": f["scale"], "hx": s}),
    ("masked", "step", ("mask:float32:B,1",), lambda f, s: {"x": f["x"], "mask": f["mask"], "h": s}),
]


@pytest.mark.parametrize("name, mode, inputs, call", SIGNATURES, ids=[f"{s[0]}-{s[1]}" for s in SIGNATURES])
def test_state_arguments_anywhere_in_the_signature(name: str, mode: str, inputs, call) -> None:
    model, report = exported(name, mode, inputs)
    assert_verified(report)
    c = report.contract
    data_names = [t.name for t in c.inputs]
    assert data_names == (["x", *(i.split(":")[0] for i in inputs)])
    feeds = frames_for(report, 2, FRAMES)
    outs, final = stream_onnx(report, feeds)
    state = tuple(torch.zeros(2, 5) for _ in range(2)) if name == "keyword_only" else torch.zeros(2, 6)
    for t, feed in enumerate(feeds):
        with torch.no_grad():
            res = model(**call(as_tensors(feed), state))
        y, state = (res, res) if name == "masked" else res
        assert_close(outs[t][c.outputs[0].name], y.numpy(), f"{name} {mode} frame {t}")
    for s, want in zip(c.states, state if isinstance(state, tuple) else (state,)):
        assert_close(final[s.name], want.numpy(), f"{name} {mode}: final {s.name}")


def test_undeclared_extra_input_that_fits_no_guess_asks_for_input() -> None:
    class NeedsWideMask(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.GRUCell(4, 6)

        def forward(self, x, mask, h):
            return self.cell(x, h) * mask.view(-1, 3, 6).sum(1)

        def initial_state(self, batch_size: int):
            return torch.zeros(batch_size, 6)

    with pytest.raises(edgernn.errors.ExportError, match="--input"):
        edgernn.export(NeedsWideMask(), mode="step")


# ---------------------------------------------------------------------------------------------
# models that update their arguments in place are verified correctly
# ---------------------------------------------------------------------------------------------

class HandsOutItsBuffer(ConvBufferStep):
    """The mamba-like step whose start state is a view of a module buffer
    (``self.start.expand(batch, ...)``), which a step writing into its state would change (or, being
    a view with one element per row, refuse to write into) if it were handed over uncopied."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("start", torch.zeros(1, self.channels, self.kernel))

    def initial_state(self, batch_size: int):
        return self.start.expand(batch_size, -1, -1)


MODELS["conv_step"] = HandsOutItsBuffer


@functools.lru_cache(maxsize=None)
def before_verify(name: str, mode: str) -> ExportContext:
    """The pipeline up to (not including) verification, for tests that verify a file themselves."""
    torch.manual_seed(7)
    ctx = ExportContext(MODELS[name]().eval(), ExportOptions(mode=mode))
    return run_pipeline(ctx, [p for p in PIPELINE if not isinstance(p, Verify)])


def test_in_place_step_verifies_and_leaves_its_start_buffer_alone() -> None:
    """No false "does not match": the reference runs on copies, so the file matches PyTorch, as a
    stream of our own fed copies confirms; the buffer the start states view stays zeros."""
    ctx = before_verify("conv_step", "step")
    Verify()(ctx)
    assert ctx.parity.passed and ctx.parity.max_error <= 1e-5, ctx.parity.summary()
    assert not ctx.model.start.any()
    model = ctx.original
    rng = np.random.default_rng(4)
    session = StreamingSession(ctx.onnx_model.SerializeToString())
    session.reset(2)
    state = torch.zeros(2, model.channels, model.kernel)
    for t in range(FRAMES):
        x = rng.standard_normal((2, model.channels)).astype(np.float32)
        out = session.step(x)["y"]
        with torch.no_grad():
            y, state = model(torch.from_numpy(x), state.clone())
        assert_close(out, y.numpy(), f"conv step frame {t}")
    assert_close(session.state["conv_state"], state.numpy(), "conv step final buffer")


def test_in_place_model_whose_file_differs_still_fails() -> None:
    """No false "matches": a weight of the in-place model's file nudged after capture is caught."""
    base = before_verify("conv_step", "step")
    ctx = copy.copy(base)
    ctx.onnx_model = onnx.ModelProto.FromString(base.onnx_model.SerializeToString())
    init = next(t for t in ctx.onnx_model.graph.initializer if t.name.endswith("weight") and len(t.dims) == 2)
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] += 0.05
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    Verify()(ctx)
    assert not ctx.parity.passed and ctx.parity.max_error > 1e-3, ctx.parity.summary()


@pytest.mark.parametrize("name, mode", [("conv_chunk", "chunk"), ("inplace_leaky", "step")])
def test_in_place_updates_verify(name: str, mode: str) -> None:
    """A chunked convolution buffer written back with ``copy_``; a cell that returns its state
    alone after updating it (and its input) in place. Both verify, and match PyTorch fed copies."""
    model, report = exported(name, mode)
    assert_verified(report)
    c = report.contract
    rng = np.random.default_rng(4)
    session = StreamingSession(report.model.SerializeToString())
    session.reset(2)
    if name == "conv_chunk":
        x = rng.standard_normal((2, 12, 6)).astype(np.float32)
        got = np.concatenate([session.step(x[:, a:b])["y"] for a, b in ((0, 5), (5, 6), (6, 12))], axis=1)
        with torch.no_grad():
            want, new = model(torch.from_numpy(x.copy()), torch.zeros(2, 6, 2))
        assert_close(got, want.numpy(), "conv chunk outputs")
        assert_close(session.state["buffer"], new.numpy(), "conv chunk buffer")
        return
    h = torch.zeros(2, 6)
    for t in range(FRAMES):
        x = rng.standard_normal((2, 6)).astype(np.float32)
        out = session.step(x)["y"]
        with torch.no_grad():
            h = model(torch.from_numpy(x.copy()), h.clone())
        assert_close(out, h.numpy(), f"{name} frame {t}")
    assert_close(session.state[c.states[0].name], h.numpy(), f"{name}: final state")


def test_state_kept_in_a_module_buffer_does_not_match() -> None:
    """A step that keeps something in a module buffer (updated in place, never an argument) cannot
    stream from the file: it is reported as not matching, the copies of the arguments hide nothing."""
    class CountsCalls(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x, h):
            self.calls.add_(1.0)
            return torch.tanh(self.lin(x) + h) * self.calls

        def initial_state(self, batch_size: int):
            return torch.zeros(batch_size, 4)

    with pytest.raises(ParityError, match="does not match"):
        edgernn.export(CountsCalls(), mode="step")


def test_bench_against_pytorch_copies_what_an_in_place_model_is_fed(tmp_path) -> None:
    """``edgernn bench --against`` times and checks PyTorch on tensors of its own: the cell that
    writes into its input and its state deviates from the file by float rounding only."""
    from edgernn.runtimes.bench import bench
    from edgernn.runtimes.bench_runners import EAGER

    model, report = exported("inplace_leaky", "step")
    path, pt = tmp_path / "leaky.onnx", tmp_path / "leaky.pt"
    path.write_bytes(report.model.SerializeToString())
    torch.save(model, pt)
    r = bench(path, against=pt, allow_pickle=True, steps=10, warmup=1, rounds=1, batch=2)
    assert r.deviations[EAGER] < 1e-5, r.deviations
