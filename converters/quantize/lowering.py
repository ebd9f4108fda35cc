"""Lower ONNX ``GRU`` / ``RNN`` / ``LSTM`` ops to MatMul cells, so that int8 quantizers reach them.

onnxruntime quantizes the ``LSTM`` op (DynamicQuantizeLSTM) but has no int8 kernel for ``GRU``
or ``RNN`` (onnxruntime#9796), and its static QDQ path skips all three. This pass rewrites each
such node as the input projection of all frames (one MatMul, outside any loop) plus a ``Scan``
whose body does the recurrence with one MatMul per step (``converters.recurrent.scan_layer``).
Weights are read back from the op's W/R/B initializers (ONNX gate order) into PyTorch's layout
with the table of ``edgernn/recurrent_kinds.py``; the new nodes carry the layer's mark
(``edgernn.layer``, the op's name as the layer), as the export's do.

A node is left alone, with the reason recorded, when its weights are not initializers, it
takes ``sequence_lens``, or it uses attributes the cells do not implement (clip, custom
activations, GRU ``linear_before_reset=0``, ``layout=1``, LSTM peepholes or ``input_forget``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from edgernn.converters.quantize.graph import remove_dead_code, unread_initializers
from edgernn.converters.recurrent import GraphBuilder, RecurrentLayerSpec, scan_layer
from edgernn.recurrent_kinds import ONNX_OPS, kind_of_onnx

RECURRENT_OPS = ONNX_OPS
KEPT = "kept as the ONNX op"


@dataclass
class Lowered:
    name: str
    op_type: str
    done: bool
    why: str


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def spec_from_node(node: onnx.NodeProto, inits: dict[str, np.ndarray]) -> RecurrentLayerSpec:
    """Read one ONNX RNN/GRU/LSTM node into a single-layer spec in PyTorch's layout; raise
    ValueError with the reason when it cannot be expressed as PyTorch-style cells."""
    a = _attrs(node)
    ins = list(node.input) + [""] * (8 - len(node.input))
    for k, what in ((1, "W"), (2, "R")):
        if ins[k] not in inits:
            raise ValueError(f"its {what} weights are not constant initializers")
    if ins[3] and ins[3] not in inits:
        raise ValueError("its bias is not a constant initializer")
    if ins[4]:
        raise ValueError("it takes sequence_lens (padded batches)")
    if a.get("clip") is not None:
        raise ValueError("it uses clip")
    if a.get("layout", 0) != 0:
        raise ValueError("it uses layout=1")
    acts = [x.decode() if isinstance(x, bytes) else x for x in a.get("activations", [])]
    kind = kind_of_onnx(node.op_type, acts)
    for attr, want in kind.onnx_attributes:
        if a.get(attr, 0) != want:
            raise ValueError(f"it is a {node.op_type} with {attr}={a.get(attr, 0)} (PyTorch-style cells need "
                             f"{attr}={want})")
    if ins[7]:
        raise ValueError("it has peephole weights")
    if a.get("input_forget", 0):
        raise ValueError("it uses input_forget")
    W, R = inits[ins[1]], inits[ins[2]]
    B = inits.get(ins[3]) if ins[3] else None
    D, GH, I = W.shape
    H = int(a["hidden_size"])

    def to_torch(m: np.ndarray) -> np.ndarray:
        return kind.to_torch_gates(m, H).astype(np.float32)

    weights = {}
    for d in range(D):
        sfx = "_reverse" if d else ""
        weights[f"weight_ih_l0{sfx}"] = to_torch(W[d])
        weights[f"weight_hh_l0{sfx}"] = to_torch(R[d])
        if B is not None:
            weights[f"bias_ih_l0{sfx}"] = to_torch(B[d, :GH])
            weights[f"bias_hh_l0{sfx}"] = to_torch(B[d, GH:])
    if B is None and kind.name == "gru":  # the recurrence adds b_hh; zeros keep the code path uniform
        for d in range(D):
            sfx = "_reverse" if d else ""
            weights[f"bias_ih_l0{sfx}"] = np.zeros(GH, np.float32)
            weights[f"bias_hh_l0{sfx}"] = np.zeros(GH, np.float32)
    return RecurrentLayerSpec(path=node.name or node.output[0], kind=kind.name, input_size=I, hidden_size=H,
                              num_layers=1, bias=B is not None or kind.name == "gru", batch_first=False,
                              bidirectional=D == 2, proj_size=0, weights=weights)


def _zeros_state(g: GraphBuilder, x: str, D: int, H: int) -> str:
    """[D, batch, H] zeros, batch read from X [T, batch, I] at run time."""
    batch = g.op1("Slice", [g.op1("Shape", [x]), g.ints("one", [1]), g.ints("two", [2])])
    shape = g.op1("Concat", [g.ints("D", [D]), batch, g.ints("H", [H])], axis=0)
    return g.op1("ConstantOfShape", [shape], value=numpy_helper.from_array(np.zeros(1, np.float32)))


def lower_node(node: onnx.NodeProto, spec: RecurrentLayerSpec) -> GraphBuilder:
    """Nodes (and initializers) that compute ``node``'s outputs with MatMul cells."""
    g = GraphBuilder(f"{spec.path}.cells")
    ins = list(node.input) + [""] * (8 - len(node.input))
    x = ins[0]
    D, H = spec.directions, spec.hidden_size
    h0 = ins[5] or _zeros_state(g, x, D, H)
    c0 = (ins[6] or _zeros_state(g, x, D, H)) if "c" in spec.state_parts else None
    Y, Yh, Yc = scan_layer(g, spec, 0, x, h0, c0)
    outs = list(node.output) + [""] * (3 - len(node.output))
    for produced, wanted in ((Y, outs[0]), (Yh, outs[1]), (Yc, outs[2])):
        if wanted and produced:
            g.op("Identity", [produced], outputs=[wanted])
    return g


def lower_recurrent_ops(model: onnx.ModelProto, op_types=RECURRENT_OPS, exclude=()) -> tuple[onnx.ModelProto, list[Lowered]]:
    """Rewrite the ``op_types`` nodes (except names in ``exclude``) as MatMul cells, in the main
    graph and in ``If`` branches (a recurrent layer after a lookahead runs its fused op in one;
    see ``converters/context.py``). Returns a new model and, per recurrent node, whether it was
    lowered and why (not). The new nodes carry the layer's mark (``edgernn.layer``, role ``scan``...)."""
    keep = unread_initializers(ir.from_proto(model))
    model = onnx.ModelProto.FromString(model.SerializeToString())
    record: list[Lowered] = []
    _lower_graph(model.graph, {}, op_types, exclude, record)
    if not any(r.done for r in record):
        return model, record
    lowered = ir.from_proto(model)
    remove_dead_code(lowered, keep)  # the lowered ops' W, R, B
    return ir.to_proto(lowered), record


def _lower_graph(graph: onnx.GraphProto, outer: dict[str, np.ndarray], op_types, exclude, record: list[Lowered]
                 ) -> None:
    # by hand, on protos: it splices the NodeProtos of converters.recurrent (shared with the export) into
    # the graph each op lives in
    inits = {**outer, **{t.name: numpy_helper.to_array(t) for t in graph.initializer}}
    new_nodes = []
    for node in graph.node:
        if node.op_type == "If":
            for attr in node.attribute:
                if attr.HasField("g"):
                    _lower_graph(attr.g, inits, op_types, exclude, record)
        if node.op_type not in RECURRENT_OPS:
            new_nodes.append(node)
            continue
        if node.op_type not in op_types or node.name in exclude:
            why = "excluded by the user" if node.name in exclude else KEPT
            record.append(Lowered(node.name, node.op_type, False, why))
            new_nodes.append(node)
            continue
        try:
            spec = spec_from_node(node, inits)
        except ValueError as e:
            record.append(Lowered(node.name, node.op_type, False, f"not lowered: {e}"))
            new_nodes.append(node)
            continue
        g = lower_node(node, spec)
        new_nodes += g.nodes
        graph.initializer.extend(g.initializers)
        record.append(Lowered(node.name, node.op_type, True, "lowered to MatMul cells (input projection + Scan)"))
    del graph.node[:]
    graph.node.extend(new_nodes)
