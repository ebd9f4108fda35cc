"""Lowering of PyTorch recurrent layers (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``) to ONNX.

During capture each recurrent layer becomes one placeholder node (see ``capture.py``); the
:class:`LowerRecurrentLayers` pass replaces it with what this module emits:

* ``chunk`` / ``sequence`` mode: ONNX's own ``RNN`` / ``LSTM`` / ``GRU`` operators, one per layer
  (onnxruntime has fused kernels for them). Gate order and biases are converted from PyTorch's
  layout (GRU: r,z,n -> z,r,h with ``linear_before_reset=1``; LSTM: i,f,g,o -> i,o,f,c; the
  orders and attributes are the table's, ``edgernn/recurrent_kinds.py``). An LSTM
  with ``proj_size`` has no ONNX operator, so it becomes a ``Scan`` over the step cell below.
* ``step`` mode: one frame per call. With ``cells="auto"`` (the default) each layer takes the
  form measured fastest in onnxruntime's CPU kernels for one frame (the table's ``step_op``): the
  ONNX ``GRU`` / ``LSTM`` op for GRU and LSTM, MatMul cells for Elman RNN (the ``RNN`` kernel
  is slower than its cells at one frame). ``cells="matmul"`` decomposes every cell into
  ``MatMul``, ``Add`` and elementwise ops, for runtimes without the recurrent ops (onnxruntime's
  prebuilt mobile package, small edge runtimes).
* :func:`scan_layer`: the same cells over any number of frames (input projection hoisted out of
  a ``Scan`` that does only the recurrence); the quantizers lower ONNX ops to it.

Every node emitted for a layer carries its :class:`~edgernn.recurrent_kinds.LayerMark` (node
``metadata_props`` ``edgernn.layer``: kind, module path, layer of the stack, role), which
:class:`GraphBuilder` writes while a :meth:`GraphBuilder.marking` block is open; the quantizers
find the layers by it (``converters/quantize/stepcells.py``).

Written by hand because no exporter emits these with the state wiring we need: the dynamo
exporter has frozen the time axis or mis-set GRU attributes in several releases.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgernn.recurrent_kinds import KINDS, LayerMark, RecurrentKind, kind_of_mode

CELLS = ("auto", "matmul")


@dataclass
class RecurrentLayerSpec:
    """Everything the lowering needs to know about one ``nn.RNN``/``nn.LSTM``/``nn.GRU`` module: its
    sizes and weights (what holds for every layer of its kind is :attr:`kind_spec`)."""

    path: str
    kind: str  # a key of edgernn.recurrent_kinds.KINDS
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
    def kind_spec(self) -> RecurrentKind:
        """The kind's entry of the table (gate orders, state parts, ONNX op)."""
        return KINDS[self.kind]

    @property
    def state_parts(self) -> tuple[str, ...]:
        return self.kind_spec.state_parts

    def state_size(self, part: str) -> int:
        return self.hidden_size if part == "c" else self.output_size

    @classmethod
    def from_module(cls, path: str, module) -> RecurrentLayerSpec:
        """Read a spec from an ``nn.RNNBase`` module (weights copied to float32 numpy)."""
        kind = kind_of_mode(module.mode).name
        weights = {k: v.detach().to("cpu").float().numpy().copy() for k, v in module.state_dict().items()}
        return cls(
            path=path,
            kind=kind,
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
    """Collects nodes and initializers with unique names under a prefix; inside a :meth:`marking`
    block every node it makes carries that block's :class:`~edgernn.recurrent_kinds.LayerMark`.
    By hand, not ``onnx_ir.tape.Tape``: the export's lower-recurrent pass splices these NodeProtos
    into the captured ModelProto in place of each placeholder, and the quantizers into theirs."""

    def __init__(self, prefix: str, mark: LayerMark | None = None) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.mark = mark
        self._count = 0

    @contextlib.contextmanager
    def marking(self, mark: LayerMark | None = None, **changes) -> Iterator[None]:
        """Mark the nodes made in the block with ``mark``, or with the open mark changed by
        ``changes`` (``role=``, ``index=``, ``part=``; a new role drops the part). Without an open
        mark, ``changes`` alone mark nothing."""
        old = self.mark
        if mark is not None:
            self.mark = mark
        elif old is not None:
            self.mark = replace(old, **{**({"part": None} if "role" in changes else {}), **changes})
        try:
            yield
        finally:
            self.mark = old

    def remark(self, tensor: str, role: str) -> None:
        """Give the node that made ``tensor`` another role (the cell's new h is ``h_out``)."""
        node = next(n for n in reversed(self.nodes) if tensor in n.output)
        mark = LayerMark.of(node)
        if mark is not None:
            replace(mark, role=role).stamp(node)

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
        node = helper.make_node(op_type, inputs, outs, name=self.name(op_type), **attrs)
        if self.mark is not None:
            self.mark.stamp(node)
        self.nodes.append(node)
        return outs

    def op1(self, op_type: str, inputs: list[str], **attrs) -> str:
        return self.op(op_type, inputs, **attrs)[0]


def layer_mark(spec: RecurrentLayerSpec) -> LayerMark:
    """The mark of ``spec``'s nodes before a role is given: the whole stack's layout."""
    return LayerMark(spec.kind, spec.path, None, "glue")


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
    with g.marking(role="input_projection", index=layer):
        return _linear(g, x, w_ih, f"weight_ih_{sfx}", bias)


def rnn_recurrence(g: GraphBuilder, spec: RecurrentLayerSpec, layer: int, gi: str, h: str,
                   reverse: bool = False) -> str:
    """Elman cell: h' = act(W_ih x + b_ih + W_hh h + b_hh)."""
    sfx, _, w_hh, _, _ = _cell_inputs(spec, layer, reverse)
    with g.marking(role="recurrence", index=layer):
        gh = _linear(g, h, w_hh, f"weight_hh_{sfx}")
    with g.marking(role="cell", index=layer):
        h_new = g.op1(spec.kind_spec.activations[0], [g.op1("Add", [gi, gh])])
    g.remark(h_new, "h_out")
    return h_new


def gru_recurrence(g: GraphBuilder, spec: RecurrentLayerSpec, layer: int, gi: str, h: str,
                   reverse: bool = False) -> str:
    """GRU cell as in PyTorch: r,z = sigmoid(..); n = tanh(W_in x + b_in + r*(W_hn h + b_hn));
    h' = (1 - z) * n + z * h, computed as n + z * (h - n)."""
    sfx, _, w_hh, _, b_hh = _cell_inputs(spec, layer, reverse)
    H = spec.hidden_size
    with g.marking(role="recurrence", index=layer):
        gh = _linear(g, h, w_hh, f"weight_hh_{sfx}", b_hh)
    with g.marking(role="cell", index=layer):
        split = g.ints("split_2h_h", [2 * H, H])
        gi_rz, gi_n = g.op("Split", [gi, split], 2, axis=-1)
        gh_rz, gh_n = g.op("Split", [gh, split], 2, axis=-1)
        rz = g.op1("Sigmoid", [g.op1("Add", [gi_rz, gh_rz])])
        r, z = g.op("Split", [rz, g.ints("split_h_h", [H, H])], 2, axis=-1)
        n = g.op1("Tanh", [g.op1("Add", [gi_n, g.op1("Mul", [r, gh_n])])])
        h_new = g.op1("Add", [n, g.op1("Mul", [z, g.op1("Sub", [h, n])])])
    g.remark(h_new, "h_out")
    return h_new


def lstm_recurrence(g: GraphBuilder, spec: RecurrentLayerSpec, layer: int, gi: str, h: str, c: str,
                    reverse: bool = False) -> tuple[str, str]:
    """LSTM cell as in PyTorch (gates i,f,g,o; optional projection h' = W_hr (o * tanh(c')))."""
    sfx, _, w_hh, _, _ = _cell_inputs(spec, layer, reverse)
    with g.marking(role="recurrence", index=layer):
        gh = _linear(g, h, w_hh, f"weight_hh_{sfx}")
    H = spec.hidden_size
    with g.marking(role="cell", index=layer):
        gates = g.op1("Add", [gi, gh])
        i, f, gg, o = g.op("Split", [gates, g.ints("split_4h", [H] * 4)], 4, axis=-1)
        i, f, o = (g.op1("Sigmoid", [t]) for t in (i, f, o))
        c_new = g.op1("Add", [g.op1("Mul", [f, c]), g.op1("Mul", [i, g.op1("Tanh", [gg])])])
        h_new = g.op1("Mul", [o, g.op1("Tanh", [c_new])])
    g.remark(c_new, "c_out")
    g.remark(h_new, "h_out")
    w_hr = spec.w("weight_hr", layer, reverse)
    if w_hr is not None:
        with g.marking(role="projection", index=layer):
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
    ``cells``: ``auto`` (the ONNX op for kinds whose ``step_op`` says so) or ``matmul`` (cells only)."""
    if spec.bidirectional:
        raise ValueError("bidirectional layers cannot run one frame at a time")
    if cells == "auto" and spec.kind_spec.step_op and not spec.proj_size:
        lower_sequence(g, spec, x, h0, c0, y, hn, cn)
        return
    with g.marking(layer_mark(spec)):
        axis0 = g.ints("axis0", [0])
        inp = g.op1("Squeeze", [x, axis0])
        hs, cs = [], []
        for layer in range(spec.num_layers):
            idx = g.scalar(f"layer{layer}", layer)
            with g.marking(role="state_in", index=layer, part="h"):
                h = g.op1("Gather", [h0, idx], axis=0)
            with g.marking(role="state_in", index=layer, part="c"):
                c = g.op1("Gather", [c0, idx], axis=0) if c0 else None
            inp, c_new = _step_cell(g, spec, layer, inp, h, c)
            with g.marking(role="glue", index=layer):
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


def _layer_states(g: GraphBuilder, layer: int, D: int, h0: str, c0: str | None) -> tuple[str, str | None]:
    """Layer ``layer``'s slices [D, B, .] of the stacked states h0 (and c0) [L*D, B, .]."""
    sl = (g.ints("start", [layer * D]), g.ints("end", [(layer + 1) * D]), g.ints("axes", [0]))
    with g.marking(role="state_in", index=layer, part="h"):
        h = g.op1("Slice", [h0, *sl])
    with g.marking(role="state_in", index=layer, part="c"):
        c = g.op1("Slice", [c0, *sl]) if c0 else None
    return h, c


def lower_sequence(g: GraphBuilder, spec: RecurrentLayerSpec, x: str, h0: str, c0: str | None,
                   y: str, hn: str, cn: str | None) -> None:
    """Any number of frames: x [T, B, I] -> y [T, B, D*H_out]; one ONNX op (or Scan) per layer."""
    D = spec.directions
    inp = x
    hs, cs = [], []
    with g.marking(layer_mark(spec)):
        for layer in range(spec.num_layers):
            h, c = _layer_states(g, layer, D, h0, c0)
            if spec.proj_size:
                Y, Yh, Yc = scan_layer(g, spec, layer, inp, h, c)
            else:
                Y, Yh, Yc = _onnx_rnn_op(g, spec, layer, inp, h, c)
            hs.append(Yh)
            if Yc:
                cs.append(Yc)
            # Y is [T, D, B, H]: merge directions into features -> [T, B, D*H]
            with g.marking(role="glue", index=layer):
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
    H, kind = spec.hidden_size, spec.kind_spec
    Ws, Rs, Bs = [], [], []
    for reverse in range(spec.directions):
        _, w_ih, w_hh, b_ih, b_hh = _cell_inputs(spec, layer, bool(reverse))
        Ws.append(kind.to_onnx_gates(w_ih, H))
        Rs.append(kind.to_onnx_gates(w_hh, H))
        if b_ih is not None:
            Bs.append(np.concatenate([kind.to_onnx_gates(b_ih, H), kind.to_onnx_gates(b_hh, H)]))
    sfx = f"l{layer}"
    inputs = [x, g.const(f"W_{sfx}", np.stack(Ws)), g.const(f"R_{sfx}", np.stack(Rs)),
              g.const(f"B_{sfx}", np.stack(Bs)) if Bs else "", "", h] + ([c] if c else [])
    attrs = dict(kind.onnx_attributes)
    if kind.nonlinearity:  # an Elman RNN's activation is what tells tanh from relu
        attrs["activations"] = list(kind.activations) * spec.directions
    direction = "bidirectional" if spec.bidirectional else "forward"
    with g.marking(role="op", index=layer):
        outs = g.op(kind.onnx_op, inputs, 1 + len(kind.state_parts), hidden_size=H, direction=direction, **attrs)
    return outs[0], outs[1], (outs[2] if len(outs) > 2 else None)


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
    with g.marking(layer_mark(spec)):
        lowest = g.op1("ReduceMin", [valid], keepdims=0)
        all_valid = g.op1("Greater", [lowest, g.const("half", np.asarray(0.5, np.float32), unique=True)])
        with g.marking(role="gated"):
            g.op("If", [all_valid], outputs=outs, then_branch=branches["all_valid"], else_branch=branches["warmup"])


def _lower_masked(g: GraphBuilder, spec: RecurrentLayerSpec, x: str, h0: str, c0: str | None, valid: str,
                  y: str, hn: str, cn: str | None) -> None:
    with g.marking(layer_mark(spec)):
        mask = g.op1("Cast", [valid], to=TensorProto.BOOL)
        inp, hs, cs = x, [], []
        for layer in range(spec.num_layers):
            h, c = _layer_states(g, layer, 1, h0, c0)
            Y, Yh, Yc = scan_layer(g, spec, layer, inp, h, c, valid=mask)
            hs.append(Yh)
            if Yc:
                cs.append(Yc)
            with g.marking(role="glue", index=layer):
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
    with g.marking(layer_mark(spec)), g.marking(role="glue", index=layer):
        axis0, axis1 = g.ints("axis0", [0]), g.ints("axis1", [1])
        for reverse in range(spec.directions):
            gi = input_projection(g, spec, layer, x, bool(reverse))
            idx = g.scalar("dir", reverse)
            with g.marking(role="state_in", part="h"):
                states = [g.op1("Gather", [h, idx], axis=0)]
            if c is not None:
                with g.marking(role="state_in", part="c"):
                    states.append(g.op1("Gather", [c, idx], axis=0))
            graph = _scan_body(g, spec, layer, bool(reverse), c is not None, valid is not None)
            scanned = 1 + (valid is not None)
            with g.marking(role="scan"):
                outs = g.op("Scan", [*states, gi, *([valid] if valid else [])], len(states) + 1, body=graph,
                            num_scan_inputs=scanned, scan_input_directions=[reverse] * scanned,
                            scan_output_directions=[reverse])
            ys.append(g.op1("Unsqueeze", [outs[-1], axis1]))
            yhs.append(g.op1("Unsqueeze", [outs[0], axis0]))
            if c is not None:
                ycs.append(g.op1("Unsqueeze", [outs[1], axis0]))
        if spec.directions == 1:
            return ys[0], yhs[0], (ycs[0] if ycs else None)
        return (g.op1("Concat", ys, axis=1), g.op1("Concat", yhs, axis=0),
                g.op1("Concat", ycs, axis=0) if ycs else None)


def _scan_body(g: GraphBuilder, spec: RecurrentLayerSpec, layer: int, reverse: bool, with_c: bool,
               masked: bool) -> onnx.GraphProto:
    """The Scan body of :func:`scan_layer`: states h_prev (c_prev), scanned gi_t (valid_t) ->
    h_next (c_next), y_t; with ``masked``, frames where valid_t is false keep the states."""
    body = GraphBuilder(f"{g.prefix}/scan_l{layer}{'_reverse' if reverse else ''}", mark=g.mark)
    h_new, c_new = recurrence(body, spec, layer, "gi_t", "h_prev", "c_prev" if with_c else None, reverse)
    body_in, body_out = ["h_prev"], ["h_next"]
    with body.marking(role="glue", index=layer):
        keep = (lambda new, old: body.op1("Where", ["valid_t", new, old])) if masked else (lambda new, old: new)
        body.op("Identity", [keep(h_new, "h_prev")], outputs=["h_next"])
        if c_new is not None:
            body.op("Identity", [keep(c_new, "c_prev")], outputs=["c_next"])
            body_in.append("c_prev")
            body_out.append("c_next")
        body.op("Identity", [h_new], outputs=["y_t"])
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)  # noqa: E731
    scanned = [vi("gi_t")] + ([helper.make_tensor_value_info("valid_t", TensorProto.BOOL, None)] if masked else [])
    return helper.make_graph(body.nodes, f"{spec.kind}_l{layer}_{int(reverse)}", [vi(n) for n in body_in] + scanned,
                             [vi(n) for n in [*body_out, "y_t"]], initializer=body.initializers)
