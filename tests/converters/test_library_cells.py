"""Recurrent cells and layers written as third-party libraries write them, exported with no wrapper
and streamed against PyTorch with the model's own state carried between calls, as its author
would call it. Small copies of common shapes: an IndRNN cell, an SRU cell of bare parameters fed
``[time, batch, features]``, xLSTM's sLSTM (one stacked ``[4, batch, hidden]`` state) and mLSTM
(a matrix memory), minGRU (a log-space scan, a ``return_next_prev_hidden`` switch beside its
state), a QRNN layer (a tuple state declared part by part), RWKV's time mixing (a 4-tuple state),
a mamba step updating its buffers in place, a forecasting model that hands ``hx=None`` to its
``nn.GRU``, ``h0`` and ``c0`` handed to an ``nn.LSTM`` with ``proj_size``, a list and a dict
state, and a cell whose state size only its Linear layer tells.

Then the verdicts verification must get right: no false "does not match" for in-place updates, and
a refusal in one sentence for a model that keeps its state on ``self`` or branches on data.
"""

from __future__ import annotations

import functools
import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree

import edgernn
from edgernn.errors import ExportError
from edgernn.runtimes import StreamingSession

from streams import assert_close, assert_verified


class IndRNNCell(nn.Module):  # h = relu(W x + u * h + b): the state is the output
    def __init__(self, input_size: int = 6, hidden_size: int = 8) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih = nn.Parameter(torch.randn(hidden_size, input_size) * 0.3)
        self.weight_hh = nn.Parameter(torch.rand(hidden_size))
        self.bias_ih = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, input, hx):
        return F.relu(F.linear(input, self.weight_ih, self.bias_ih) + self.weight_hh * hx)


class SRUCell(nn.Module):  # sru: weights chunked in forward, input [time, batch, features], c0=None
    def __init__(self, input_size: int = 6, hidden_size: int = 6) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight = nn.Parameter(torch.randn(input_size, 3 * hidden_size) * 0.3)
        self.weight_c = nn.Parameter(torch.randn(2 * hidden_size) * 0.3)
        self.bias = nn.Parameter(torch.zeros(2 * hidden_size))

    def forward(self, input, c0=None):
        length, batch, _ = input.shape
        c = input.new_zeros(batch, self.hidden_size) if c0 is None else c0
        u = (input.reshape(-1, input.shape[-1]) @ self.weight).view(length, batch, 3, self.hidden_size)
        vf, vr = self.weight_c.chunk(2)
        bf, br = self.bias.chunk(2)
        hs = []
        for t in range(length):
            f = torch.sigmoid(u[t, :, 1] + vf * c + bf)
            c = f * c + (1 - f) * u[t, :, 0]
            r = torch.sigmoid(u[t, :, 2] + vr * c + br)
            hs.append(r * torch.tanh(c) + (1 - r) * input[t])
        return torch.stack(hs), c


class SLSTMCell(nn.Module):  # xLSTM's sLSTM: exponential gates, state stacked [4, batch, hidden]
    def __init__(self, input_size: int = 6, hidden_size: int = 6) -> None:
        super().__init__()
        self.W = nn.Linear(input_size, 4 * hidden_size)
        self.R = nn.Linear(hidden_size, 4 * hidden_size, bias=False)

    def forward(self, x, state):
        h, c, n, m = state.unbind(0)
        i, f, z, o = (self.W(x) + self.R(h)).chunk(4, dim=-1)
        logf = F.logsigmoid(f)
        m_new = torch.maximum(logf + m, i)
        i_g, f_g = torch.exp(i - m_new), torch.exp(logf + m - m_new)
        c = f_g * c + i_g * torch.tanh(z)
        n = f_g * n + i_g
        h = torch.sigmoid(o) * c / (n + 1e-6)
        return h, torch.stack([h, c, n, m_new])


class MLSTMCell(nn.Module):  # xLSTM's mLSTM step: matrix memory C [batch, heads, d, d], built when None
    def __init__(self, input_size: int = 8, heads: int = 2, head_dim: int = 4) -> None:
        super().__init__()
        self.nh, self.dh = heads, head_dim
        self.qkv = nn.Linear(input_size, 3 * heads * head_dim)
        self.gates = nn.Linear(input_size, 2 * heads)
        self.out = nn.Linear(heads * head_dim, input_size)

    def forward(self, x, mlstm_state=None):
        b = x.shape[0]
        if mlstm_state is None:
            mlstm_state = (x.new_zeros(b, self.nh, self.dh, self.dh), x.new_zeros(b, self.nh, self.dh),
                           x.new_zeros(b, self.nh, 1))
        C, n, m = mlstm_state
        q, k, v = self.qkv(x).view(b, 3, self.nh, self.dh).unbind(1)
        k = k / math.sqrt(self.dh)
        ig, fg = self.gates(x).view(b, 2, self.nh, 1).unbind(1)
        logf = F.logsigmoid(fg)
        m_new = torch.maximum(logf + m, ig)
        fa, ia = torch.exp(logf + m - m_new), torch.exp(ig - m_new)
        C = fa[..., None] * C + ia[..., None] * (v[..., :, None] * k[..., None, :])
        n = fa * n + ia * k
        den = torch.maximum((n * q).sum(-1, keepdim=True).abs(), torch.exp(-m_new)) + 1e-6
        return self.out(((C @ q[..., None]).squeeze(-1) / den).reshape(b, -1)), (C, n, m_new)


class MinGRU(nn.Module):  # minGRU: one frame sequentially, more as a log-space parallel scan
    def __init__(self, dim: int = 6, expansion: float = 1.5) -> None:
        super().__init__()
        inner = int(dim * expansion)
        self.to_hidden_and_gate = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    @staticmethod
    def log_g(x):
        return torch.where(x >= 0, (F.relu(x) + 0.5).log(), -F.softplus(-x))

    def forward(self, x, prev_hidden=None, return_next_prev_hidden=True):
        seq_len = x.shape[1]
        hidden, gate = self.to_hidden_and_gate(x).chunk(2, dim=-1)
        if seq_len == 1:
            hidden = torch.where(hidden >= 0, hidden + 0.5, hidden.sigmoid())
            out = torch.lerp(prev_hidden, hidden, gate.sigmoid()) if prev_hidden is not None else hidden * gate.sigmoid()
        else:
            log_coeffs, log_values = -F.softplus(gate), -F.softplus(-gate) + self.log_g(hidden)
            if prev_hidden is not None:
                log_values = torch.cat((prev_hidden.log(), log_values), dim=1)
                log_coeffs = F.pad(log_coeffs, (0, 0, 1, 0))
            a_star = log_coeffs.cumsum(dim=1)
            out = (a_star + (log_values - a_star).logcumsumexp(dim=1)).exp()[:, -seq_len:]
        out, next_prev_hidden = self.to_out(out), out[:, -1:]
        return (out, next_prev_hidden) if return_next_prev_hidden else out


class QRNNLayer(nn.Module):  # QRNN, window 2: carries (previous input, c); input [time, batch, features]
    def __init__(self, input_size: int = 5, hidden_size: int = 6) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.linear = nn.Linear(2 * input_size, 3 * hidden_size)

    def forward(self, x, hidden=None):
        if hidden is None:
            hidden = (x.new_zeros(x.shape[1], x.shape[2]), x.new_zeros(x.shape[1], self.hidden_size))
        prev_x, c = hidden
        z, f, o = self.linear(torch.cat([torch.cat([prev_x[None], x[:-1]], 0), x], -1)).chunk(3, -1)
        hs = []
        for t in range(x.shape[0]):
            c = torch.sigmoid(f[t]) * c + (1 - torch.sigmoid(f[t])) * torch.tanh(z[t])
            hs.append(torch.sigmoid(o[t]) * c)
        return torch.stack(hs), (x[-1], c)


class RWKVTimeMix(nn.Module):  # RWKV-4 time mixing: state (last x, numerator, denominator, max exponent)
    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.mix = nn.Parameter(torch.rand(3, dim))
        self.time_decay, self.time_first = nn.Parameter(-torch.rand(dim)), nn.Parameter(torch.rand(dim))
        self.key, self.value = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.receptance, self.output = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)

    def forward(self, x, state):
        last_x, num, den, pp = state
        k, v, r = (layer(x * mix + last_x * (1 - mix)) for layer, mix in
                   zip((self.key, self.value, self.receptance), self.mix))
        ww = self.time_first + k
        p = torch.maximum(pp, ww)
        e1, e2 = torch.exp(pp - p), torch.exp(ww - p)
        wkv = (e1 * num + e2 * v) / (e1 * den + e2)
        ww = pp - torch.exp(self.time_decay)
        p = torch.maximum(ww, k)
        e1, e2 = torch.exp(ww - p), torch.exp(k - p)
        return self.output(torch.sigmoid(r) * wkv), (x, e1 * num + e2 * v, e1 * den + e2, p)


class MambaStep(nn.Module):  # a mamba step: flat (y, conv_state, ssm_state), both updated in place
    def __init__(self, d_model: int = 6, d_inner: int = 8, d_state: int = 4, d_conv: int = 4) -> None:
        super().__init__()
        self.d_state = d_state
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, 1 + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(1, d_inner)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1).float()).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, hidden_states, conv_state, ssm_state):
        x, z = self.in_proj(hidden_states.squeeze(1)).chunk(2, dim=-1)
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = x
        x = F.silu(torch.sum(conv_state * self.conv1d.weight.squeeze(1), dim=-1) + self.conv1d.bias)
        dt, B, C = torch.split(self.x_proj(x), [1, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))
        ssm_state.copy_(ssm_state * torch.exp(dt[..., None] * -torch.exp(self.A_log)) + x[..., None] * dt[..., None]
                        * B[:, None])
        y = ((ssm_state @ C[..., None]).squeeze(-1) + self.D * x) * F.silu(z)
        return self.out_proj(y)[:, None], conv_state, ssm_state


class ForecastGRU(nn.Module):  # a forecasting library's model: hx=None handed on to its nn.GRU
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(4, 16, num_layers=2, batch_first=True)
        self.head = nn.Linear(16, 1)

    def forward(self, x, hx=None):
        out, hx = self.rnn(x, hx)
        return self.head(out), hx


class DictStateCell(nn.Module):  # a state as a dict of tensors
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(5, 6)

    def forward(self, x, state):
        h, c = self.cell(x, (state["h"], state["c"]))
        return h, {"h": h, "c": c}


class InPlaceDecay(nn.Module):  # h decays in place; only its Linear layer tells the state's size
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 6)

    def forward(self, x, h):
        h.mul_(0.9).add_(torch.tanh(self.lin(x)))
        return h


class TwoArgsLSTM(nn.Module):  # h0 and c0 as two arguments without defaults, handed to nn.LSTM
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(5, 6, proj_size=3)

    def forward(self, x, h0, c0):
        y, (h, c) = self.lstm(x, (h0, c0))
        return y, h, c


class StackedCells(nn.Module):  # a list of per-layer states, built when None
    def __init__(self) -> None:
        super().__init__()
        self.cells = nn.ModuleList([nn.GRUCell(5, 6), nn.GRUCell(6, 6)])

    def forward(self, x, hidden=None):
        if hidden is None:
            hidden = [x.new_zeros(x.shape[0], 6) for _ in self.cells]
        new = []
        for cell, h in zip(self.cells, hidden):
            x = cell(x, h)
            new.append(x)
        return x, new


LIBRARY = {  # name: (class, mode, --input declarations the model's code cannot tell)
    "indrnn": (IndRNNCell, "step", ()),
    "sru": (SRUCell, "chunk", ("input:float32:T,B,6",)),
    "slstm": (SLSTMCell, "step", ("state:float32:4,B,6",)),
    "mlstm": (MLSTMCell, "step", ()),
    "mingru": (MinGRU, "chunk", ()),
    "qrnn": (QRNNLayer, "chunk", ("x:float32:T,B,5", "hidden.0:float32:B,5", "hidden.1:float32:B,6")),
    "rwkv": (RWKVTimeMix, "step", tuple(f"state.{i}:float32:B,6" for i in range(4))),
    "mamba": (MambaStep, "step", ("hidden_states:float32:B,1,6", "conv_state:float32:B,8,4",
                                  "ssm_state:float32:B,8,4")),
    "forecast_gru": (ForecastGRU, "chunk", ()),
    "dict_state": (DictStateCell, "step", ("state.h:float32:B,6", "state.c:float32:B,6")),
    "inplace_decay": (InPlaceDecay, "step", ()),
    "two_args_lstm": (TwoArgsLSTM, "chunk", ()),
    "stacked_cells": (StackedCells, "step", ()),
}


@functools.lru_cache(maxsize=None)
def exported(name: str):
    cls, mode, inputs = LIBRARY[name]
    torch.manual_seed(3)
    model = cls().eval()
    return model, edgernn.export(model, mode=mode, inputs=list(inputs))


def as_argument(arg: str, state: dict[str, torch.Tensor]) -> object:
    """The contract's leaves of state argument ``arg`` (``arg``, ``arg.0``..., ``arg.KEY``) as the
    tensor, tuple or dict forward takes."""
    if list(state) == [arg]:
        return state[arg]
    keys = [n[len(arg) + 1:] for n in state]
    return tuple(state[f"{arg}.{i}"] for i in range(len(keys))) if all(k.isdigit() for k in keys) else \
        {k: state[f"{arg}.{k}"] for k in keys}


@pytest.mark.parametrize("name", list(LIBRARY))
def test_library_cell_streams_like_pytorch(name: str) -> None:
    """Five calls (three frames each in chunk mode) of two streams from a nonzero start state: every
    output and the final state equal PyTorch's, the model called by keyword with its own state."""
    model, report = exported(name)
    assert_verified(report)
    c = report.contract
    rng = np.random.default_rng(11)
    start = {s.name: (0.2 * rng.random([2 if d == "batch" else d for d in s.shape])).astype(np.float32)
             for s in c.states}  # positive: minGRU's scan takes the log of its state
    session = StreamingSession(report.model.SerializeToString())
    session.reset(state=start)
    args = list(dict.fromkeys(s.name.split(".")[0] for s in c.states))
    assert set(args) <= set(inspect.signature(type(model).forward).parameters), c.states  # the user's own states
    state = {n: torch.from_numpy(v.copy()) for n, v in start.items()}
    for call in range(5):
        feed = {t.name: rng.standard_normal([2 if d == "batch" else 3 if d == "time" else d for d in t.shape])
                .astype(np.float32) for t in c.inputs}
        got = session.step(**feed)
        kwargs = {n: torch.from_numpy(v.copy()) for n, v in feed.items()}
        kwargs.update({a: as_argument(a, {n: t for n, t in state.items() if n.split(".")[0] == a}) for a in args})
        with torch.no_grad():
            leaves = pytree.tree_leaves(model(**kwargs))
        new = leaves[-len(c.states):]
        outs = leaves[: len(leaves) - len(c.states)] or new  # a cell returning its state alone
        for o, want in zip(c.outputs, outs):
            assert_close(got[o.name], want.numpy(), f"{name} call {call}: {o.name}")
        state = {s.name: t.clone() for s, t in zip(c.states, new)}
    for s in c.states:
        assert_close(session.state[s.name], state[s.name].numpy(), f"{name}: final {s.name}")


def test_switch_named_like_a_state_is_not_a_state() -> None:
    """minGRU's ``return_next_prev_hidden=True`` holds "hidden" in its name: a bool default makes
    it a switch, left at its default, and ``prev_hidden`` the one state."""
    _, report = exported("mingru")
    assert [s.name for s in report.contract.states] == ["prev_hidden"]
    assert [t.name for t in report.contract.inputs] == ["x"]


def test_state_declared_part_by_part_and_sizes_from_a_linear_layer() -> None:
    assert [(s.name, s.shape) for s in exported("qrnn")[1].contract.states] == [
        ("hidden.0", ("batch", 5)), ("hidden.1", ("batch", 6))]
    assert [s.name for s in exported("dict_state")[1].contract.states] == ["state.h", "state.c"]
    assert [(s.name, s.shape) for s in exported("two_args_lstm")[1].contract.states] == [
        ("h0", (1, "batch", 3)), ("c0", (1, "batch", 6))]  # proj_size for h
    report = exported("inplace_decay")[1]
    assert [(s.name, s.shape) for s in report.contract.states] == [("h", ("batch", 6))]
    assert any("output size of a Linear layer" in n for n in report.notes), report.notes


def test_tuple_state_declared_with_a_gap_is_refused() -> None:
    with pytest.raises(ExportError, match="without a gap"):
        edgernn.export(QRNNLayer(), inputs=["x:float32:T,B,5", "hidden.0:float32:B,5", "hidden.2:float32:B,6"])


class AttributeCache(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(5, 6)
        self.h = None

    def forward(self, x):
        self.h = self.cell(x, self.h)
        return self.h


class SignBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(5, 6)

    def forward(self, x, h):
        if x.sum() > 0:
            x = x * 2
        return self.cell(x, h)


class LazyMask(nn.Module):  # writes a tensor on self once (a cache), not a state: exports
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(5, 6)
        self.scale = None

    def forward(self, x, h):
        if self.scale is None:
            self.scale = torch.full((5,), 0.5)
        return self.cell(x * self.scale, h)


def test_state_kept_on_self_is_refused_in_one_sentence() -> None:
    with pytest.raises(ExportError, match=r"keeps its state in module attributes \(forward writes self.h\)"):
        edgernn.export(AttributeCache(), mode="step")


def test_tensor_written_once_on_self_is_a_cache_not_a_state() -> None:
    torch.manual_seed(0)
    model = LazyMask().eval()
    report = edgernn.export(model, mode="step")
    assert_verified(report)
    x, h = torch.randn(3, 5), torch.randn(3, 6)
    got = StreamingSession(report.model.SerializeToString())
    got.reset(state={"h": h.numpy()})
    with torch.no_grad():
        assert_close(got.step(x=x.numpy())["y"], model(x, h).numpy(), "lazy mask")


def test_branch_on_tensor_values_is_refused_in_one_sentence(capfd) -> None:
    with pytest.raises(ExportError, match=r"branches or loops on the values of a tensor.*torch.where"):
        edgernn.export(SignBranch(), mode="step")
    assert "def forward" not in capfd.readouterr().err  # torch.export's graph dump is held back
