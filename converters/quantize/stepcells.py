"""Step-mode files: each recurrent layer rewritten into the graph shape that runs fastest as dynamic int8.

Written by hand because onnxruntime does not do it: its quantizer (``quantize_dynamic``, used in
``dynamic.py``) makes each MatMul int8 where it stands, and its optimizer fuses the resulting
MatMulInteger chain with the bias Add into one DynamicQuantizeMatMul, but neither merges a layer's
two MatMuls nor drops the per-layer Gather/Squeeze/Unsqueeze. At one frame per call those nodes are
most of the cost: on onnxruntime 1.32 CPU (1 thread, batch 1, x86 with AVX512-VNNI) a call costs
~7 us of session overhead for two inputs and two outputs, each node 0.3-0.7 us, and each
DynamicQuantizeMatMul ~0.9 us plus its int8 weight reads from L2. So each layer becomes, in the
``[1, batch, features]`` layout of the ONNX recurrent ops (layers chain without Squeeze/Unsqueeze;
onnxruntime fuses the per-layer state Slices into one Split):

* GRU, Elman RNN: one MatMul over ``Concat(x, h)``, then the gates in float32; the quantizer makes
  it int8 and onnxruntime runs one DynamicQuantizeMatMul (bias fused) per layer. GRU's weight maps
  ``[x; h]`` to ``[r, z, n_x, n_h]``: the n gate needs ``W_in x`` and ``W_hn h`` apart (r multiplies
  the latter), so two of its blocks are zero; after quantization :func:`compact_zero_blocks` stores
  only the nonzero blocks and rebuilds the matrix with ConstantOfShape + Concat, which onnxruntime
  folds into a constant at load, so the file holds no zeros. x and h then share one activation
  scale: measured output error x1.2-1.5 of separate scales for inputs of unit scale, up to x2-3
  for inputs of scale 30-100 (above the first layer both are hidden states in (-1, 1)).
* LSTM (the kinds with an onnxruntime int8 op, ``RecurrentKind.int8_op``): a one-frame ONNX ``LSTM``
  op, which the quantizer turns into onnxruntime's fused int8 kernel DynamicQuantizeLSTM (as fast as
  the MatMul cell, x and h quantized apart).

Measured (2-layer GRU-256 and LSTM-256, 3-layer Elman RNN-256, 64 inputs; bare ``session.run``,
median us per step; PyTorch eager fp32 in the same process 157 / 605 (mkldnn LSTM) / 94 us):
GRU 35.2 -> 32.0, LSTM 43.5 (MatMul cells) or 37.0 (LSTM ops) -> 35.6-36.2, RNN 25.9 -> 20.2.
Slower shapes tried: MatMul and DynamicQuantizeMatMul per x and h (GRU 33.5, RNN 22.6),
MatMulNBits with bits=8 and accuracy_level=4 (GRU 37.5-40.6, RNN 22.3-25.4; accuracy_level 0
dequantizes each call: 50-700 us per MatMul), per-channel weights (GRU 39.3, RNN 22.7).

Two forms are found in the main graph:

* ONNX ``GRU`` / ``RNN`` ops whose input has a static time axis of 1 (edgernn's ``cells="auto"``
  step export, foreign step files). ``LSTM`` ops are already in the fast form and stay; a Squeeze
  of their ``Y`` on the time axis reads ``Y_h`` instead (one node fewer per layer).
* the MatMul cells of edgernn's step export (``converters.recurrent``), by the marks the export puts
  on their nodes (``edgernn.layer``: layer, role; see ``edgernn/recurrent_kinds.py``). Files written
  before edgernn marked its layers get the marks from ``recognize.py`` first.

The rewritten float model is then run against the input on random frames and states (batch 1 and
2); if an output differs by more than ``graph.TOLERANCE``, the rewrite is dropped and the file
quantizes as before. The graph surgery is onnx-ir's (values rewired with ``replace_all_uses_with``,
new nodes from ``onnx_ir.tape.Tape``, ``graph.remove_dead_code``, ``TopologicalSortPass``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper
from onnx_ir.convenience import get_const_tensor
from onnx_ir.passes.common import TopologicalSortPass
from onnx_ir.tape import Tape

from edgernn.converters.quantize.graph import remove_dead_code, same_outputs, unread_initializers
from edgernn.converters.quantize.lowering import spec_from_node
from edgernn.converters.quantize.recognize import mark_recognized_cells
from edgernn.converters.recurrent import RecurrentLayerSpec
from edgernn.recurrent_kinds import KINDS, ONNX_OPS, LayerMark, RecurrentKind, kind_of_onnx

CELL_ROLES = frozenset({"input_projection", "recurrence", "cell", "h_out", "c_out"})  # what a cell computes


@dataclass
class FusedLayer:
    """One recurrent layer rewritten: the input file's nodes it replaced and the node made of them."""

    kind: str  # gru, lstm, rnn_tanh, rnn_relu
    replaced: list[tuple[str, str]]  # (name, op_type) of the input file's nodes, as reported
    node: tuple[str, str]  # (name, op_type) of the MatMul (GRU, RNN) or LSTM op carrying the weights
    weight: str | None = None  # GRU: the [x; h] -> 4H weight, whose zero blocks are compacted after quantization
    input_size: int = 0
    hidden_size: int = 0

    def why(self, name: str) -> str:
        """The report's sentence for ``name``, one of the input file's nodes this layer replaced."""
        kind = KINDS[self.kind]
        cell = "Elman RNN" if kind.nonlinearity else kind.torch_module
        others = [n for n, _ in self.replaced if n != name]
        merged = f", merged with {', '.join(others)}" if others else ""
        if kind.int8_op:
            return (f"one-frame {cell} op{merged}, quantized to {kind.int8_op} (int8 weights, activations "
                    "quantized at run time)")
        return (f"one-frame {cell} cell{merged}: x and h concatenated into one dynamic int8 MatMul (int8 weights, "
                "activations quantized at run time; DynamicQuantizeMatMul with its bias once onnxruntime loads it), "
                "gates in float32")


def fuse_step_cells(model: onnx.ModelProto, exclude=()) -> tuple[onnx.ModelProto, list[FusedLayer]]:
    """Rewrite the recurrent layers of a step-mode model (see the module docstring). Returns a new
    model and one :class:`FusedLayer` per layer rewritten (none: the model is returned unchanged)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:  # Split/Squeeze/Unsqueeze take their sizes and axes as inputs from opset 13
        return model, []
    marked = mark_recognized_cells(model)  # files without marks (the fallback; a copy, or model itself)
    try:  # the time axis of each op's input: only a static 1 is known to be one frame
        work, shapes_known = ir.from_proto(onnx.shape_inference.infer_shapes(marked)), True
    except Exception:  # a model shape inference cannot read: no op is known to run one frame
        work, shapes_known = ir.from_proto(marked), False
    keep = unread_initializers(work)
    rewriter = _Rewriter(work.graph, opset, set(exclude))
    fused = (rewriter.op_layers() if shapes_known else []) + rewriter.cell_layers()
    if not fused and not rewriter.changed:
        return model, []
    remove_dead_code(work, keep)
    TopologicalSortPass()(work)
    rewritten = ir.to_proto(work)
    if not same_outputs(model, rewritten):
        return model, []
    return rewritten, fused


# ---------------------------------------------------------------------------------------------
# emitting the cells
# ---------------------------------------------------------------------------------------------

class _Builder:
    """New nodes (on an onnx-ir Tape) and initializers, named uniquely in the graph."""

    def __init__(self, graph: ir.Graph, opset: int) -> None:
        self.graph, self.opset, self.tape = graph, opset, Tape()
        self.taken = {n.name for n in graph} | {v.name for n in graph for v in n.outputs} | set(graph.initializers)
        self.taken |= {v.name for v in (*graph.inputs, *graph.outputs)}
        self._placed = 0

    def name(self, hint: str) -> str:
        name, k = hint, 0
        while name in self.taken:
            k += 1
            name = f"{hint}_{k}"
        self.taken.add(name)
        return name

    def const(self, hint: str, value: np.ndarray) -> ir.Value:
        v = self.tape.initializer(ir.tensor(np.ascontiguousarray(value)), name=self.name(hint))
        self.graph.register_initializer(v)
        return v

    def ints(self, hint: str, values: list[int]) -> ir.Value:
        return self.const(hint, np.asarray(values, dtype=np.int64))

    def op(self, op_type: str, inputs: list[ir.Value | None], prefix: str, n_out: int = 1, **attrs) -> list[ir.Value]:
        outs = self.tape.op_multi_out(op_type, inputs, attrs, num_outputs=n_out, name=self.name(f"{prefix}/{op_type}"))
        for o in outs:
            o.name = self.name(f"{prefix}/{op_type.lower()}")
        return list(outs)

    def op1(self, op_type: str, inputs: list[ir.Value | None], prefix: str, **attrs) -> ir.Value:
        return self.op(op_type, inputs, prefix, **attrs)[0]

    def place(self, anchor: ir.Node) -> None:
        """Put the nodes made since the last call before ``anchor``."""
        nodes = self.tape.nodes[self._placed:]
        self._placed = len(self.tape.nodes)
        self.graph.insert_before(anchor, nodes)


@dataclass
class _Cell:
    h: ir.Value  # h' [1, B, H]
    c: ir.Value | None
    node: ir.Node  # the MatMul or LSTM op carrying the weights
    weight: str | None  # GRU: the name of its [x; h] weight


def _weights(spec: RecurrentLayerSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """W_ih [G*H, I], W_hh [G*H, H], b_ih, b_hh of layer 0 in PyTorch's layout (zero biases if none)."""
    w_ih, w_hh = spec.w("weight_ih", 0, False), spec.w("weight_hh", 0, False)
    b_ih, b_hh = spec.w("bias_ih", 0, False), spec.w("bias_hh", 0, False)
    zeros = np.zeros(w_ih.shape[0], np.float32)
    return (w_ih.astype(np.float32), w_hh.astype(np.float32),
            zeros if b_ih is None else b_ih.astype(np.float32), zeros if b_hh is None else b_hh.astype(np.float32))


def emit_cell(b: _Builder, prefix: str, spec: RecurrentLayerSpec, x: ir.Value, h: ir.Value,
              c: ir.Value | None) -> _Cell:
    """One frame of a single-layer ``spec`` on x [1, B, I], h (and c) [1, B, H]: h' (and c')
    [1, B, H] and the node that carries the weights."""
    H, I, kind = spec.hidden_size, spec.input_size, spec.kind_spec
    w_ih, w_hh, b_ih, b_hh = _weights(spec)
    if kind.int8_op:  # onnxruntime has a fused int8 kernel for the op itself (LSTM)
        bias = None
        if b_ih.any() or b_hh.any():
            bias = b.const(f"{prefix}/B", np.concatenate([kind.to_onnx_gates(v, H) for v in (b_ih, b_hh)])[None])
        W, R = (b.const(f"{prefix}/{k}", kind.to_onnx_gates(w, H)[None]) for k, w in (("W", w_ih), ("R", w_hh)))
        _, h_new, c_new = b.op(kind.onnx_op, [x, W, R, bias, None, h, c], prefix, n_out=3, hidden_size=H)
        return _Cell(h_new, c_new, h_new.producer(), None)
    xh = b.op1("Concat", [x, h], prefix, axis=-1)
    if kind.name == "gru":  # [x; h] -> [r, z, n_x, n_h]
        weight = np.zeros((I + H, 4 * H), np.float32)
        weight[:I, :3 * H] = w_ih.T
        weight[I:, :2 * H] = w_hh[:2 * H].T
        weight[I:, 3 * H:] = w_hh[2 * H:].T
        bias = np.concatenate([b_ih[:2 * H] + b_hh[:2 * H], b_ih[2 * H:], b_hh[2 * H:]])
    else:
        weight = np.concatenate([w_ih.T, w_hh.T], axis=0)
        bias = b_ih + b_hh
    w = b.const(f"{prefix}/W_xh", weight)
    pre = b.op1("MatMul", [xh, w], prefix)
    matmul = pre.producer()
    if bias.any():
        pre = b.op1("Add", [pre, b.const(f"{prefix}/bias", bias)], prefix)
    if kind.name != "gru":
        return _Cell(b.op1(kind.activations[0], [pre], prefix), None, matmul, None)
    if b.opset >= 18:
        r, z, nx, nh = b.op("Split", [pre], prefix, n_out=4, axis=-1, num_outputs=4)
    else:
        r, z, nx, nh = b.op("Split", [pre, b.ints(f"{prefix}/split", [H] * 4)], prefix, n_out=4, axis=-1)
    r = b.op1("Sigmoid", [r], prefix)
    n = b.op1("Tanh", [b.op1("Add", [nx, b.op1("Mul", [r, nh], prefix)], prefix)], prefix)
    d = b.op1("Sub", [h, n], prefix)
    z = b.op1("Sigmoid", [z], prefix)
    return _Cell(b.op1("Add", [n, b.op1("Mul", [z, d], prefix)], prefix), None, matmul, w.name)


# ---------------------------------------------------------------------------------------------
# finding the layers and rewriting them
# ---------------------------------------------------------------------------------------------

def _const(value: ir.Value | None) -> np.ndarray | None:
    tensor = get_const_tensor(value) if value is not None else None
    return None if tensor is None else tensor.numpy()


def _axes(node: ir.Node) -> list[int] | None:
    """Axes of a Squeeze/Unsqueeze (attribute before opset 13, input after)."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        value = _const(node.inputs[1])
        return None if value is None else [int(v) for v in np.ravel(value)]
    attr = node.attributes.get("axes")
    return None if attr is None else list(attr.as_ints())


def _is(node: ir.Node | None, op_type: str, axes: list[int]) -> bool:
    return node is not None and node.op_type == op_type and _axes(node) == axes


@dataclass
class _CellLayer:
    spec: RecurrentLayerSpec  # one layer; its path names the new nodes
    matmuls: tuple[ir.Node, ir.Node]  # input projection, recurrence
    x: ir.Value  # the layer input [B, I]
    state_h: tuple[ir.Value, int]  # (state tensor [L, B, H], layer index) that h = Gather(state, index) reads
    state_c: tuple[ir.Value, int] | None
    h_new: ir.Value  # h' [B, H]
    c_new: ir.Value | None
    cone: set[ir.Node]  # the nodes computing h', c' from x, h, c

    @property
    def replaced(self) -> list[tuple[str, str]]:
        return [(n.name, n.op_type) for n in self.matmuls]


class _Rewriter:
    def __init__(self, graph: ir.Graph, opset: int, exclude: set[str]) -> None:
        self.graph, self.exclude = graph, exclude
        self.b = _Builder(graph, opset)
        self.slices: dict[tuple[ir.Value, int], ir.Value] = {}
        self.changed = False  # set by rewrites that replace no layer

    def _take_over(self, old: ir.Value, new: ir.Value, prefix: str) -> None:
        """Every reader of ``old`` reads ``new``; a graph output keeps its name (through an
        Identity of ``new`` when ``new`` cannot take it)."""
        if not old.is_graph_output():
            old.replace_all_uses_with(new)
            return
        if new.is_graph_output() or new.is_graph_input() or new.is_initializer():
            new = self.b.op1("Identity", [new], prefix)
        name, shape, type_ = old.name, old.shape, old.type
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        old.name = self.b.name(f"{name}@replaced")
        new.name, new.shape, new.type = name, shape, type_

    def _slice(self, state: tuple[ir.Value, int], prefix: str) -> ir.Value:
        """state[index:index+1] along axis 0 (onnxruntime fuses the Slices of one state into a Split)."""
        if state not in self.slices:
            b, (value, index) = self.b, state
            self.slices[state] = b.op1("Slice", [value, b.ints(f"{prefix}/start", [index]),
                                                 b.ints(f"{prefix}/end", [index + 1]), b.ints(f"{prefix}/axis", [0])],
                                       prefix)
        return self.slices[state]

    # -- ONNX GRU / RNN ops -------------------------------------------------------------------

    def op_layers(self) -> list[FusedLayer]:
        fused = []
        for node in [n for n in self.graph if self._one_frame_op(n)]:  # (shapes read before any rewrite)
            if kind_of_onnx(node.op_type).int8_op:
                self._read_y_h(node)  # stays (DynamicQuantizeLSTM); its Y needs no Squeeze to chain
                continue
            inits = {v.name: _const(v) for v in node.inputs[1:4] if v is not None and v.is_initializer()}
            try:
                spec = spec_from_node(ir.serde.serialize_node(node), inits)
            except ValueError:
                continue
            fused.append(self._rewrite_op(node, spec))
        return fused

    def _one_frame_op(self, node: ir.Node) -> bool:
        """Whether ``node`` is a forward ONNX recurrent op on an input of time axis 1."""
        if node.op_type not in ONNX_OPS or node.domain not in ("", "ai.onnx") or node.name in self.exclude:
            return False
        direction = node.attributes.get("direction")
        shape = node.inputs[0].shape if node.inputs[0] is not None else None
        # only a static time axis of 1 is known to be one frame
        return (direction is None or direction.as_string() != "bidirectional") and bool(shape) and shape[0] == 1

    def _read_y_h(self, node: ir.Node) -> None:
        """A one-frame recurrent op's Y [1, 1, B, H] squeezed on axis 1 is its Y_h [1, B, H]: the
        Squeeze's readers read Y_h (and onnxruntime drops the Identity a graph output gets)."""
        y, y_h = node.outputs[0], node.outputs[1] if len(node.outputs) > 1 else None
        if y_h is None or not y_h.name:
            return
        for use in list(y.uses()):
            if _is(use.node, "Squeeze", [1]):
                self._take_over(use.node.outputs[0], y_h, f"{node.name}.cell")
                self.b.place(use.node)
                self.changed = True

    def _rewrite_op(self, node: ir.Node, spec: RecurrentLayerSpec) -> FusedLayer:
        b, prefix = self.b, f"{node.name or node.outputs[0].name}.cell"
        x, h = node.inputs[0], node.inputs[5] if len(node.inputs) > 5 else None
        cell = emit_cell(b, prefix, spec, x, h if h is not None else self._zeros(x, spec.hidden_size, prefix), None)
        y, y_h = node.outputs[0], node.outputs[1] if len(node.outputs) > 1 else None
        for use in list(y.uses()):  # Y [1, 1, B, H]: a Squeeze of axis 1 reads h' itself, anything else gets Y
            if _is(use.node, "Squeeze", [1]):
                self._take_over(use.node.outputs[0], cell.h, prefix)
        if y.uses() or y.is_graph_output():
            self._take_over(y, b.op1("Unsqueeze", [cell.h, b.ints(f"{prefix}/axis1", [1])], prefix), prefix)
        if y_h is not None:
            self._take_over(y_h, cell.h, prefix)
        b.place(node)
        return FusedLayer(spec.kind, [(node.name, node.op_type)], (cell.node.name, cell.node.op_type), cell.weight,
                          spec.input_size, spec.hidden_size)

    def _zeros(self, x: ir.Value, H: int, prefix: str) -> ir.Value:
        """[1, B, H] zeros, B read from x [1, B, I]."""
        b = self.b
        shape = b.op1("Shape", [x], prefix)
        batch = b.op1("Slice", [shape, b.ints(f"{prefix}/one", [1]), b.ints(f"{prefix}/two", [2])], prefix)
        shape = b.op1("Concat", [b.ints(f"{prefix}/D", [1]), batch, b.ints(f"{prefix}/H", [H])], prefix, axis=0)
        return b.op1("ConstantOfShape", [shape], prefix, value=ir.tensor(np.zeros(1, np.float32)))

    # -- edgernn MatMul cells, by their marks ---------------------------------------------------

    def cell_layers(self) -> list[FusedLayer]:
        parts: dict[tuple[str, int], dict[str, list[ir.Node]]] = defaultdict(lambda: defaultdict(list))
        kinds: dict[tuple[str, int], RecurrentKind] = {}  # (module path, layer of the stack) -> kind
        for node in self.graph:
            mark = LayerMark.of(node)
            if mark is not None and mark.index is not None:
                role = f"state_in.{mark.part}" if mark.role == "state_in" else mark.role
                parts[mark.layer, mark.index][role].append(node)
                kinds[mark.layer, mark.index] = KINDS[mark.kind]
        layers = [layer for (path, index), roles in parts.items()
                  if (layer := self._cell(kinds[path, index], f"{path}/l{index}", roles)) is not None]
        order = {node: k for k, node in enumerate(self.graph)}
        layers.sort(key=lambda l: max(order[n] for n in l.cone))  # a layer's input is an earlier layer's output
        cones = set().union(*(l.cone for l in layers)) if layers else set()
        new_h: dict[ir.Value, ir.Value] = {}
        return [self._rewrite_cell(layer, cones, new_h) for layer in layers]

    def _cell(self, kind: RecurrentKind, label: str, roles: dict[str, list[ir.Node]]) -> _CellLayer | None:
        """The marked MatMul cell of one layer, or None when its marks describe another form (an
        op, a Scan, an LSTM projection), are incomplete, or the user excluded one of its MatMuls."""
        one = {r: ns[0] for r, ns in roles.items() if len(ns) == 1}
        mm_x, mm_h = (next((n for n in roles.get(r, []) if n.op_type == "MatMul"), None)
                      for r in ("input_projection", "recurrence"))
        with_c = len(kind.state_parts) > 1
        if (mm_x is None or mm_h is None or {"op", "scan", "gated", "projection"} & set(roles) or "h_out" not in one
                or (with_c and "c_out" not in one) or {mm_x.name, mm_h.name} & self.exclude):
            return None
        w_ih_t, w_hh_t = _const(mm_x.inputs[1]), _const(mm_h.inputs[1])  # W_ih.T [I, G*H], W_hh.T [H, G*H]
        if w_ih_t is None or w_hh_t is None or w_ih_t.ndim != 2 or w_hh_t.ndim != 2:
            return None
        H, N = w_hh_t.shape
        if N != kind.gates * H or w_ih_t.shape[1] != N:
            return None
        states = [self._gather(one.get(f"state_in.{p}")) for p in kind.state_parts]
        if None in states or states[0][2] is not mm_h.inputs[0]:
            return None
        cone = {n for r in CELL_ROLES for n in roles.get(r, [])}
        h_new, c_new = one["h_out"].outputs[0], one["c_out"].outputs[0] if with_c else None
        if any(v is not None and v not in (h_new, c_new) and (v.is_graph_output() or any(
                u.node not in cone for u in v.uses())) for n in cone for v in n.outputs):
            return None  # a tensor inside the cell is read outside it
        weights = {"weight_ih_l0": w_ih_t.T.copy(), "weight_hh_l0": w_hh_t.T.copy()}
        b_x, b_h = (self._bias(mm, N) for mm in (mm_x, mm_h))
        if kind.name == "gru" and (b_x is None) != (b_h is None):
            return None
        if b_x is not None:  # RNN and LSTM fold b_ih + b_hh into the input projection
            weights.update(bias_ih_l0=b_x, bias_hh_l0=b_h if b_h is not None else np.zeros_like(b_x))
        spec = RecurrentLayerSpec(path=label, kind=kind.name, input_size=w_ih_t.shape[0], hidden_size=H,
                                  num_layers=1, bias=b_x is not None, batch_first=False, bidirectional=False,
                                  proj_size=0, weights=weights)
        return _CellLayer(spec, (mm_x, mm_h), mm_x.inputs[0], states[0][:2], states[1][:2] if with_c else None,
                          h_new, c_new, cone)

    @staticmethod
    def _gather(node: ir.Node | None) -> tuple[ir.Value, int, ir.Value] | None:
        """(state, index, output) of a ``Gather(state, index)`` on axis 0 with a constant scalar index."""
        if node is None or node.op_type != "Gather" or len(node.inputs) != 2:
            return None
        axis = node.attributes.get("axis")
        index = _const(node.inputs[1])
        if (axis is not None and axis.as_int() != 0) or index is None or index.ndim or index.dtype.kind != "i":
            return None
        return node.inputs[0], int(index), node.outputs[0]

    @staticmethod
    def _bias(mm: ir.Node, N: int) -> np.ndarray | None:
        """The bias of ``mm``: the constant [N] of an Add(mm, bias) that is its only reader."""
        uses = mm.outputs[0].uses()
        if len(uses) == 1 and uses[0].node.op_type == "Add" and uses[0].idx == 0:
            bias = _const(uses[0].node.inputs[1])
            if bias is not None and bias.shape == (N,) and bias.dtype == np.float32:
                return bias
        return None

    def _rewrite_cell(self, layer: _CellLayer, cones: set[ir.Node], new_h: dict[ir.Value, ir.Value]) -> FusedLayer:
        b, spec = self.b, layer.spec
        prefix = f"{spec.path}.cell"
        anchor = next(n for n in self.graph if n in layer.cone)
        x, producer = layer.x, layer.x.producer()
        if x in new_h:  # the layer below, rewritten: [1, B, H] already
            x3 = new_h[x]
        elif _is(producer, "Squeeze", [0]):
            x3 = producer.inputs[0]
        else:
            x3 = b.op1("Unsqueeze", [x, b.ints(f"{prefix}/axis0", [0])], prefix)
        h3 = self._slice(layer.state_h, prefix)
        c3 = self._slice(layer.state_c, prefix) if layer.state_c else None
        cell = emit_cell(b, prefix, spec, x3, h3, c3)
        new_h[layer.h_new] = cell.h
        for old, new in ((layer.h_new, cell.h), (layer.c_new, cell.c)):
            if old is None:
                continue
            squeezed = None  # h' [B, H] for readers outside the old cells, other than Unsqueeze(axis 0)
            for use in list(old.uses()):
                if use.node in cones:
                    continue
                if _is(use.node, "Unsqueeze", [0]):
                    self._take_over(use.node.outputs[0], new, prefix)
                else:
                    squeezed = squeezed or b.op1("Squeeze", [new, b.ints(f"{prefix}/axis0", [0])], prefix)
                    use.node.replace_input_with(use.idx, squeezed)
            if old.is_graph_output():
                self._take_over(old, squeezed or b.op1("Squeeze", [new, b.ints(f"{prefix}/axis0", [0])], prefix),
                                prefix)
        b.place(anchor)
        return FusedLayer(spec.kind, layer.replaced, (cell.node.name, cell.node.op_type), cell.weight,
                          spec.input_size, spec.hidden_size)


# ---------------------------------------------------------------------------------------------
# after quantization
# ---------------------------------------------------------------------------------------------

def compact_zero_blocks(model: onnx.ModelProto, layer: FusedLayer) -> bool:
    """Store the int8 [x; h] -> [r, z, n_x, n_h] weight of a fused GRU layer without its two zero
    blocks (x -> n_h, h -> n_x): the nonzero blocks stay initializers and ConstantOfShape + Concat
    rebuild the matrix, which onnxruntime folds into a constant (and prepacks) at load. Returns
    whether the weight was found (as ``<weight>_quantized``, onnxruntime's name) and compacted.
    On protos: the model is onnxruntime's quantizer output, written once and not walked."""
    g = model.graph
    name = f"{layer.weight}_quantized"
    init = next((t for t in g.initializer if t.name == name), None)
    if init is None:
        return False
    w = numpy_helper.to_array(init)
    I, H = layer.input_size, layer.hidden_size
    if w.shape != (I + H, 4 * H) or w[:I, 3 * H:].any() or w[I:, 2 * H:3 * H].any():
        return False
    blocks = {"x_rzn": w[:I, :3 * H], "h_rz": w[I:, :2 * H], "h_n": w[I:, 3 * H:]}
    new_inits = [numpy_helper.from_array(np.ascontiguousarray(v), f"{name}.{k}") for k, v in blocks.items()]
    new_inits += [numpy_helper.from_array(np.asarray(s, np.int64), f"{name}.{k}") for k, s in
                  (("zeros_x_shape", [I, H]), ("zeros_h_shape", [H, H]))]
    zero = numpy_helper.from_array(np.zeros(1, w.dtype))
    make = helper.make_node
    nodes = [make("ConstantOfShape", [f"{name}.zeros_x_shape"], [f"{name}.zeros_x"], name=f"{name}.zeros_x",
                  value=zero),
             make("ConstantOfShape", [f"{name}.zeros_h_shape"], [f"{name}.zeros_h"], name=f"{name}.zeros_h",
                  value=zero),
             make("Concat", [f"{name}.x_rzn", f"{name}.zeros_x"], [f"{name}.x_rows"], name=f"{name}.x_rows", axis=1),
             make("Concat", [f"{name}.h_rz", f"{name}.zeros_h", f"{name}.h_n"], [f"{name}.h_rows"],
                  name=f"{name}.h_rows", axis=1),
             make("Concat", [f"{name}.x_rows", f"{name}.h_rows"], [name], name=f"{name}.rows", axis=0)]
    g.initializer.remove(init)
    g.initializer.extend(new_inits)
    old = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old)
    return True
