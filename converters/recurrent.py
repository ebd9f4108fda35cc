"""Lowering of PyTorch recurrent layers (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``) to ONNX.

During capture each recurrent layer becomes one placeholder node (see ``capture.py``); the
:class:`LowerRecurrentLayers` pass replaces it with what this module emits:

* ``chunk`` / ``sequence`` mode: ONNX's own ``RNN`` / ``LSTM`` / ``GRU`` operators, one per layer
  (onnxruntime has fused kernels for them). Gate order and biases are converted from PyTorch's
  layout (GRU: r,z,n -> z,r,h with ``linear_before_reset=1``; LSTM: i,f,g,o -> i,o,f,c). An LSTM
  with ``proj_size`` has no ONNX operator, so it becomes a ``Scan`` over the step cell below.
* ``step`` mode: one frame per call. With ``cells="auto"`` (the default) each layer takes the
  form measured fastest in onnxruntime's CPU kernels for one frame (:data:`FUSED_STEP`): the
  ONNX ``GRU`` / ``LSTM`` op for GRU and LSTM, MatMul cells for Elman RNN (the ``RNN`` kernel
  is slower than its cells at one frame). ``cells="matmul"`` decomposes every cell into
  ``MatMul``, ``Add`` and elementwise ops, for runtimes without the recurrent ops (onnxruntime's
  prebuilt mobile package, small edge runtimes).
* :func:`scan_layer`: the same cells over any number of frames (input projection hoisted out of
  a ``Scan`` that does only the recurrence); the quantizers lower ONNX ops to it.

Written by hand because no exporter emits these with the state wiring we need: the dynamo
exporter has frozen the time axis or mis-set GRU attributes in several releases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Kind = Literal["rnn_tanh", "rnn_relu", "lstm", "gru"]
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
CELLS = ("auto", "matmul")
# Kinds whose ONNX op beats MatMul cells at one frame per call on onnxruntime CPU (1 thread,
# 2-layer, 256 units, IOBinding: GRU op 92 us vs cells 101 us; LSTM op 146 vs 157; Elman RNN op
# 46 vs cells 34): see docs/performance.md and benchmarks/runtime_table.py.
FUSED_STEP = ("gru", "lstm")


@dataclass
class RecurrentLayerSpec:
    """Everything the lowering needs to know about one ``nn.RNN``/``nn.LSTM``/``nn.GRU``."""

    path: str
    kind: Kind
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    batch_first: bool
    bidirectional: bool
    proj_size: int
    weights: dict[str, np.ndarray] = field(repr=False)

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Size of ``h`` (``proj_size`` when the LSTM projects)."""
        return self.proj_size or self.hidden_size

    @property
    def state_parts(self) -> tuple[str, ...]:
        return ("h", "c") if self.kind == "lstm" else ("h",)

    def state_size(self, part: str) -> int:
        return self.hidden_size if part == "c" else self.output_size

    @classmethod
    def from_module(cls, path: str, module) -> RecurrentLayerSpec:
        """Read a spec from an ``nn.RNNBase`` module (weights copied to float32 numpy)."""
        mode = module.mode.lower()
        kind = {"rnn_tanh": "rnn_tanh", "rnn_relu": "rnn_relu", "lstm": "lstm", "gru": "gru"}[mode]
        weights = {k: v.detach().to("cpu").float().numpy().copy() for k, v in module.state_dict().items()}
        return cls(
            path=path,
            kind=kind,  # type: ignore[arg-type]
            input_size=module.input_size,
            hidden_size=module.hidden_size,
            num_layers=module.num_layers,
            bias=module.bias,
            batch_first=module.batch_first,
            bidirectional=module.bidirectional,
            proj_size=getattr(module, "proj_size", 0),
            weights=weights,
        )

    def w(self, name: str, layer: int, reverse: bool) -> np.ndarray | None:
        return self.weights.get(f"{name}_l{layer}{'_reverse' if reverse else ''}")


class GraphBuilder:
    """Collects nodes and initializers with unique names under a prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}/{hint}_{self._count}"

    def const(self, hint: str, value: np.ndarray, unique: bool = False) -> str:
        """An initializer named ``prefix/hint`` (``unique``: with a counter appended)."""
        name = self.name(hint) if unique else f"{self.prefix}/{hint}"
        self.initializers.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def ints(self, hint: str, values: list[int]) -> str:
        return self.const(hint, np.asarray(values, dtype=np.int64), unique=True)

    def scalar(self, hint: str, value: int) -> str:
        return self.const(hint, np.asarray(value, dtype=np.int64), unique=True)

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, outputs: list[str] | None = None,
           **attrs) -> list[str]:
        outs = outputs or [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(op_type), **attrs))
        return outs

    def op1(self, op_type: str, inputs: list[str], **attrs) -> str:
        return self.op(op_type, inputs, **attrs)[0]


# ---------------------------------------------------------------------------------------------
# cells, in two halves: the input projection (any leading axes: one frame, or all T frames at
# once outside a Scan) and the recurrence (one frame: h [B, H_out], c [B, H]).
# ---------------------------------------------------------------------------------------------

def _linear(g: GraphBuilder, x: str, weight: np.ndarray, hint: str, bias: np.ndarray | None = None) -> str:
    """x @ weight.T (+ bias) as MatMul (+ Add): the form onnxruntime's quantizers handle."""
    y = g.op1("MatMul", [x, g.const(hint + ".T", weight.T.copy())])
    if bias is not None:
        y = g.op1("Add", [y, g.const(hint + ".bias", bias)])
    return y


def _cell_inputs(spec: RecurrentLayerSpec, layer: int, reverse: bool):
    sfx = f"l{layer}{'_reverse' if reverse else ''}"
    b_ih, b_hh = spec.w("bias_ih", layer, reverse), spec.w("bias_hh", layer, reverse)
    return sfx, spec.w("weight_ih", layer, reverse), spec.w("weight_hh", layer, reverse), b_ih, b_hh


def input_projection(g: GraphBuilder, spec: RecurrentLayerSpec, layer: int, x: str, reverse: bool = False) -> str:
    """W_ih x + bias for every gate. GRU keeps b_hh for the recurrence (it sits inside r * (..));
    RNN and LSTM fold both biases in here."""
    sfx, w_ih, _, b_ih, b_hh = _cell_inputs(spec, layer, reverse)
    if b_ih is None:
        bias = None
    else:
        bias = b_ih if spec.kind == "gru" else b_ih + b_hh
    return _linear(g, x, w_ih, f"weight_ih_{sfx}", bias)


def rnn_recurrence(g: GraphBuilder, spec: RecurrentLayerSpec, layer: int, gi: str, h: str,
                   reverse: bool = False) -> str:
    """Elman cell: h' = act(W_ih x + b_ih + W_hh h + b_hh)."""
    sfx, _, w_hh, _, _ = _cell_inputs(spec, layer, reverse)
    pre = g.op1("Add", [gi, _linear(g, h, w_hh, f"weight_hh_{sfx}")])
    return g.op1("Tanh" if spec.kind == "rnn_tanh" else "Relu", [pre])


def gru_recurrence(g: GraphBuilder, spec: RecurrentLayerSpec, layer: int, gi: str, h: str,
                   reverse: bool = False) -> str:
    """GRU cell as in PyTorch: r,z = sigmoid(..); n = tanh(W_in x + b_in + r*(W_hn h + b_hn));
    h' = (1 - z) * n + z * h, computed as n + z * (h - n)."""
    sfx, _, w_hh, _, b_hh = _cell_inputs(spec, layer, reverse)
    H = spec.hidden_size
    gh = _linear(g, h, w_hh, f"weight_hh_{sfx}", b_hh)
    split = g.ints("split_2h_h", [2 * H, H])
    gi_rz, gi_n = g.op("Split", [gi, split], 2, axis=-1)
    gh_rz, gh_n = g.op("Split", [gh, split], 2, axis=-1)
    rz = g.op1("Sigmoid", [g.op1("Add", [gi_rz, gh_rz])])
    r, z = g.op("Split", [rz, g.ints("split_h_h", [H, H])], 2, axis=-1)
    n = g.op1("Tanh", [g.op1("Add", [gi_n, g.op1("Mul", [r, gh_n])])])
    return g.op1("Add", [n, g.op1("Mul", [z, g.op1("Sub", [h, n])])])


def lstm_recurrence(g: GraphBuilder, spec: RecurrentLayerSpec, layer: int, gi: str, h: str, c: str,
                    reverse: bool = False) -> tuple[str, str]:
    """LSTM cell as in PyTorch (gates i,f,g,o; optional projection h' = W_hr (o * tanh(c')))."""
    sfx, _, w_hh, _, _ = _cell_inputs(spec, layer, reverse)
    gates = g.op1("Add", [gi, _linear(g, h, w_hh, f"weight_hh_{sfx}")])
    H = spec.hidden_size
    i, f, gg, o = g.op("Split", [gates, g.ints("split_4h", [H] * 4)], 4, axis=-1)
    i, f, o = (g.op1("Sigmoid", [t]) for t in (i, f, o))
    c_new = g.op1("Add", [g.op1("Mul", [f, c]), g.op1("Mul", [i, g.op1("Tanh", [gg])])])
    h_new = g.op1("Mul", [o, g.op1("Tanh", [c_new])])
    w_hr = spec.w("weight_hr", layer, reverse)
    if w_hr is not None:
        h_new = _linear(g, h_new, w_hr, f"weight_hr_{sfx}")
    return h_new, c_new


def recurrence(g: GraphBuilder, spec: RecurrentLayerSpec, layer: int, gi: str, h: str, c: str | None,
               reverse: bool = False) -> tuple[str, str | None]:
    """One step of the layer's cell from its projected input ``gi``: (h', c' or None)."""
    if spec.kind == "lstm":
        return lstm_recurrence(g, spec, layer, gi, h, c, reverse)
    cell = gru_recurrence if spec.kind == "gru" else rnn_recurrence
    return cell(g, spec, layer, gi, h, reverse), None


def _step_cell(g, spec, layer, x, h, c, reverse=False):
    return recurrence(g, spec, layer, input_projection(g, spec, layer, x, reverse), h, c, reverse)


# ---------------------------------------------------------------------------------------------
# whole layers
# ---------------------------------------------------------------------------------------------

def lower_step(g: GraphBuilder, spec: RecurrentLayerSpec, x: str, h0: str, c0: str | None,
               y: str, hn: str, cn: str | None, cells: str = "auto") -> None:
    """One frame: x [1, B, I] -> y [1, B, H_out], stacked states [L, B, .] in and out.
    ``cells``: ``auto`` (the ONNX op for :data:`FUSED_STEP` kinds) or ``matmul`` (cells only)."""
    if spec.bidirectional:
        raise ValueError("bidirectional layers cannot run one frame at a time")
    if cells == "auto" and spec.kind in FUSED_STEP and not spec.proj_size:
        lower_sequence(g, spec, x, h0, c0, y, hn, cn)
        return
    axis0 = g.ints("axis0", [0])
    inp = g.op1("Squeeze", [x, axis0])
    hs, cs = [], []
    for layer in range(spec.num_layers):
        idx = g.scalar(f"layer{layer}", layer)
        h = g.op1("Gather", [h0, idx], axis=0)
        c = g.op1("Gather", [c0, idx], axis=0) if c0 else None
        inp, c_new = _step_cell(g, spec, layer, inp, h, c)
        hs.append(g.op1("Unsqueeze", [inp, axis0]))
        if c_new is not None:
            cs.append(g.op1("Unsqueeze", [c_new, axis0]))
    g.op("Unsqueeze", [inp, axis0], outputs=[y])
    _stack(g, hs, hn)
    if cn:
        _stack(g, cs, cn)


def _stack(g: GraphBuilder, parts: list[str], out: str) -> None:
    if len(parts) == 1:
        g.op("Identity", parts, outputs=[out])
    else:
        g.op("Concat", parts, outputs=[out], axis=0)


def lower_sequence(g: GraphBuilder, spec: RecurrentLayerSpec, x: str, h0: str, c0: str | None,
                   y: str, hn: str, cn: str | None) -> None:
    """Any number of frames: x [T, B, I] -> y [T, B, D*H_out]; one ONNX op (or Scan) per layer."""
    D = spec.directions
    inp = x
    hs, cs = [], []
    for layer in range(spec.num_layers):
        sl = (g.ints("start", [layer * D]), g.ints("end", [(layer + 1) * D]), g.ints("axes", [0]))
        h = g.op1("Slice", [h0, *sl])
        c = g.op1("Slice", [c0, *sl]) if c0 else None
        if spec.proj_size:
            Y, Yh, Yc = scan_layer(g, spec, layer, inp, h, c)
        else:
            Y, Yh, Yc = _onnx_rnn_op(g, spec, layer, inp, h, c)
        hs.append(Yh)
        if Yc:
            cs.append(Yc)
        # Y is [T, D, B, H]: merge directions into features -> [T, B, D*H]
        if D == 1:
            inp = g.op1("Squeeze", [Y, g.ints("axis1", [1])])
        else:
            t = g.op1("Transpose", [Y], perm=[0, 2, 1, 3])
            inp = g.op1("Reshape", [t, g.ints("shape_TB_", [0, 0, -1])])
    g.op("Identity", [inp], outputs=[y])
    _stack(g, hs, hn)
    if cn:
        _stack(g, cs, cn)


def _onnx_rnn_op(g: GraphBuilder, spec: RecurrentLayerSpec, layer: int, x: str, h: str, c: str | None):
    """ONNX RNN/GRU/LSTM op for one layer (both directions), weights converted from PyTorch."""
    H = spec.hidden_size
    order = {"gru": [1, 0, 2], "lstm": [0, 3, 1, 2]}.get(spec.kind, [0])  # PyTorch -> ONNX gates

    def reorder(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a[k * H:(k + 1) * H] for k in order], axis=0)

    Ws, Rs, Bs = [], [], []
    for reverse in range(spec.directions):
        _, w_ih, w_hh, b_ih, b_hh = _cell_inputs(spec, layer, bool(reverse))
        Ws.append(reorder(w_ih))
        Rs.append(reorder(w_hh))
        if b_ih is not None:
            Bs.append(np.concatenate([reorder(b_ih), reorder(b_hh)]))
    sfx = f"l{layer}"
    inputs = [x, g.const(f"W_{sfx}", np.stack(Ws)), g.const(f"R_{sfx}", np.stack(Rs)),
              g.const(f"B_{sfx}", np.stack(Bs)) if Bs else "", "", h]
    direction = "bidirectional" if spec.bidirectional else "forward"
    if spec.kind == "lstm":
        Y, Yh, Yc = g.op("LSTM", inputs + [c], 3, hidden_size=H, direction=direction)
        return Y, Yh, Yc
    if spec.kind == "gru":
        Y, Yh = g.op("GRU", inputs, 2, hidden_size=H, direction=direction, linear_before_reset=1)
    else:
        act = "Tanh" if spec.kind == "rnn_tanh" else "Relu"
        Y, Yh = g.op("RNN", inputs, 2, hidden_size=H, direction=direction, activations=[act] * spec.directions)
    return Y, Yh, None


def lower_gated(g: GraphBuilder, spec: RecurrentLayerSpec, x: str, h0: str, c0: str | None, valid: str,
                y: str, hn: str, cn: str | None) -> None:
    """Like :func:`lower_sequence`, but frames where ``valid`` [T, B, 1] is 0 leave the states as
    they are (the warm-up frames a lookahead before the layer emits; see ``context.py``): each
    layer is a :func:`scan_layer` with the mask as a second scan input."""
    if spec.bidirectional:
        raise ValueError("bidirectional layers cannot skip warm-up frames")
    # Only a stream's first frames are skipped: a call whose frames are all valid (every call
    # after the warm-up) takes the fused op of lower_sequence, the others the masked Scan.
    outs = [y, hn] + ([cn] if cn else [])
    branches = {}
    for key, lower in (("all_valid", lower_sequence), ("warmup", _lower_masked)):
        sub = GraphBuilder(f"{g.prefix}/{key}")
        names = [f"{o}@{key}" for o in outs]
        if lower is lower_sequence:
            lower_sequence(sub, spec, x, h0, c0, names[0], names[1], names[2] if cn else None)
        else:
            _lower_masked(sub, spec, x, h0, c0, valid, names[0], names[1], names[2] if cn else None)
        # each branch holds its own weights (onnxruntime's quantizer looks for an op's weights in its graph)
        branches[key] = helper.make_graph(sub.nodes, f"{g.prefix}/{key}", [], [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names], initializer=sub.initializers)
    lowest = g.op1("ReduceMin", [valid], keepdims=0)
    all_valid = g.op1("Greater", [lowest, g.const("half", np.asarray(0.5, np.float32), unique=True)])
    g.op("If", [all_valid], outputs=outs, then_branch=branches["all_valid"], else_branch=branches["warmup"])


def _lower_masked(g: GraphBuilder, spec: RecurrentLayerSpec, x: str, h0: str, c0: str | None, valid: str,
                  y: str, hn: str, cn: str | None) -> None:
    mask = g.op1("Cast", [valid], to=TensorProto.BOOL)
    inp, hs, cs = x, [], []
    for layer in range(spec.num_layers):
        sl = (g.ints("start", [layer]), g.ints("end", [layer + 1]), g.ints("axes", [0]))
        h = g.op1("Slice", [h0, *sl])
        c = g.op1("Slice", [c0, *sl]) if c0 else None
        Y, Yh, Yc = scan_layer(g, spec, layer, inp, h, c, valid=mask)
        hs.append(Yh)
        if Yc:
            cs.append(Yc)
        inp = g.op1("Squeeze", [Y, g.ints("axis1", [1])])
    g.op("Identity", [inp], outputs=[y])
    _stack(g, hs, hn)
    if cn:
        _stack(g, cs, cn)


def scan_layer(g: GraphBuilder, spec: RecurrentLayerSpec, layer: int, x: str, h: str, c: str | None,
               valid: str | None = None):
    """One layer as MatMul cells: the input projection of all T frames at once (one big MatMul),
    then a Scan over time doing only the recurrence, per direction. h, c are [D, B, .]; returns
    Y [T, D, B, H_out], Y_h [D, B, H_out], Y_c [D, B, H] (or None) like the ONNX ops. ``valid``
    (bool [T, B, 1], forward only): frames where it is false keep the states unchanged."""
    ys, yhs, ycs = [], [], []
    axis0, axis1 = g.ints("axis0", [0]), g.ints("axis1", [1])
    for reverse in range(spec.directions):
        gi = input_projection(g, spec, layer, x, bool(reverse))
        idx = g.scalar("dir", reverse)
        states = [g.op1("Gather", [h, idx], axis=0)]
        if c is not None:
            states.append(g.op1("Gather", [c, idx], axis=0))
        body = GraphBuilder(f"{g.prefix}/scan_l{layer}{'_reverse' if reverse else ''}")
        h_new, c_new = recurrence(body, spec, layer, "gi_t", "h_prev", "c_prev" if c is not None else None,
                                  bool(reverse))
        body_in, body_out = ["h_prev"], ["h_next"]
        keep = (lambda new, old: body.op1("Where", ["valid_t", new, old])) if valid else (lambda new, old: new)
        body.op("Identity", [keep(h_new, "h_prev")], outputs=["h_next"])
        if c_new is not None:
            body.op("Identity", [keep(c_new, "c_prev")], outputs=["c_next"])
            body_in.append("c_prev")
            body_out.append("c_next")
        body.op("Identity", [h_new], outputs=["y_t"])
        vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)  # noqa: E731
        scanned = ["gi_t"] + (["valid_t"] if valid else [])
        graph = helper.make_graph(body.nodes, f"{spec.kind}_l{layer}_{reverse}",
                                  [vi(n) for n in body_in] + [vi("gi_t")] + (
                                      [helper.make_tensor_value_info("valid_t", TensorProto.BOOL, None)]
                                      if valid else []),
                                  [vi(n) for n in [*body_out, "y_t"]], initializer=body.initializers)
        outs = g.op("Scan", [*states, gi, *([valid] if valid else [])], len(states) + 1, body=graph,
                    num_scan_inputs=len(scanned), scan_input_directions=[reverse] * len(scanned),
                    scan_output_directions=[reverse])
        ys.append(g.op1("Unsqueeze", [outs[-1], axis1]))
        yhs.append(g.op1("Unsqueeze", [outs[0], axis0]))
        if c is not None:
            ycs.append(g.op1("Unsqueeze", [outs[1], axis0]))
    if spec.directions == 1:
        return ys[0], yhs[0], (ycs[0] if ycs else None)
    return (g.op1("Concat", ys, axis=1), g.op1("Concat", yhs, axis=0),
            g.op1("Concat", ycs, axis=0) if ycs else None)
