"""Lower ONNX ``GRU`` / ``RNN`` / ``LSTM`` ops to MatMul cells, so that int8 quantizers reach them.

onnxruntime quantizes the ``LSTM`` op (DynamicQuantizeLSTM) but has no int8 kernel for ``GRU``
or ``RNN`` (onnxruntime#9796), and its static QDQ path skips all three. This pass rewrites each
such node as the input projection of all frames (one MatMul, outside any loop) plus a ``Scan``
whose body does the recurrence with one MatMul per step (``converters.recurrent.scan_layer``).
Weights are read back from the op's W/R/B initializers (ONNX gate order) into PyTorch's layout.

A node is left alone, with the reason recorded, when its weights are not initializers, it
takes ``sequence_lens``, or it uses attributes the cells do not implement (clip, custom
activations, GRU ``linear_before_reset=0``, ``layout=1``, LSTM peepholes or ``input_forget``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgernn.converters.recurrent import GraphBuilder, RecurrentLayerSpec, scan_layer

RECURRENT_OPS = ("GRU", "LSTM", "RNN")
# PyTorch gate k sits at ONNX gate ONNX_OF_TORCH[kind][k]
_ONNX_OF_TORCH = {"gru": [1, 0, 2], "lstm": [0, 2, 3, 1], "rnn_tanh": [0], "rnn_relu": [0]}


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
    if node.op_type == "GRU":
        kind = "gru"
        if a.get("linear_before_reset", 0) != 1:
            raise ValueError("it is a GRU with linear_before_reset=0 (PyTorch-style cells reset after the matmul)")
        if acts and any(x != d for x, d in zip(acts, ["Sigmoid", "Tanh"] * 2)):
            raise ValueError(f"it uses activations {acts}")
    elif node.op_type == "LSTM":
        kind = "lstm"
        if ins[7]:
            raise ValueError("it has peephole weights")
        if a.get("input_forget", 0):
            raise ValueError("it uses input_forget")
        if acts and any(x != d for x, d in zip(acts, ["Sigmoid", "Tanh", "Tanh"] * 2)):
            raise ValueError(f"it uses activations {acts}")
    else:
        acts = acts or ["Tanh"]
        if len(set(acts)) != 1 or acts[0] not in ("Tanh", "Relu"):
            raise ValueError(f"it uses activations {acts}")
        kind = "rnn_tanh" if acts[0] == "Tanh" else "rnn_relu"
    W, R = inits[ins[1]], inits[ins[2]]
    B = inits.get(ins[3]) if ins[3] else None
    D, GH, I = W.shape
    H = int(a["hidden_size"])
    order = _ONNX_OF_TORCH[kind]

    def to_torch(m: np.ndarray) -> np.ndarray:
        return np.concatenate([m[k * H:(k + 1) * H] for k in order], axis=0).astype(np.float32)

    weights = {}
    for d in range(D):
        sfx = "_reverse" if d else ""
        weights[f"weight_ih_l0{sfx}"] = to_torch(W[d])
        weights[f"weight_hh_l0{sfx}"] = to_torch(R[d])
        if B is not None:
            weights[f"bias_ih_l0{sfx}"] = to_torch(B[d, :GH])
            weights[f"bias_hh_l0{sfx}"] = to_torch(B[d, GH:])
    if B is None and kind == "gru":  # the recurrence adds b_hh; zeros keep the code path uniform
        for d in range(D):
            sfx = "_reverse" if d else ""
            weights[f"bias_ih_l0{sfx}"] = np.zeros(GH, np.float32)
            weights[f"bias_hh_l0{sfx}"] = np.zeros(GH, np.float32)
    return RecurrentLayerSpec(path=node.name or node.output[0], kind=kind, input_size=I, hidden_size=H,
                              num_layers=1, bias=B is not None or kind == "gru", batch_first=False,
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
    c0 = None
    if spec.kind == "lstm":
        c0 = ins[6] or _zeros_state(g, x, D, H)
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
    lowered and why (not)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    record: list[Lowered] = []
    _lower_graph(model.graph, {}, op_types, exclude, record)
    return model, record


def _lower_graph(graph: onnx.GraphProto, outer: dict[str, np.ndarray], op_types, exclude, record: list[Lowered]
                 ) -> None:
    inits = {**outer, **{t.name: numpy_helper.to_array(t) for t in graph.initializer}}
    new_nodes, new_inits = [], []
    used: set[str] = set()
    for node in graph.node:
        if node.op_type == "If":
            for attr in node.attribute:
                if attr.HasField("g"):
                    _lower_graph(attr.g, inits, op_types, exclude, record)
        if node.op_type not in RECURRENT_OPS:
            new_nodes.append(node)
            continue
        if node.op_type not in op_types or node.name in exclude:
            why = "excluded by the user" if node.name in exclude else "kept as the ONNX op"
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
        new_inits += g.initializers
        used.update(node.input[1:4])
        record.append(Lowered(node.name, node.op_type, True, "lowered to MatMul cells (input projection + Scan)"))
    del graph.node[:]
    graph.node.extend(new_nodes)
    still_used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output} | _subgraph_reads(graph)
    keep = [t for t in graph.initializer if t.name not in used or t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(keep + new_inits)


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Names the nodes of ``graph``'s subgraphs read (an outer initializer may be one)."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else list(attr.graphs)):
                names |= {i for n in sub.node for i in n.input} | _subgraph_reads(sub)
    return names
