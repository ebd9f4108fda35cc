"""Export tree-structured recursive networks (TreeRNN, Child-Sum Tree-LSTM) as one ONNX graph
that takes the tree as input, so that any tree shape runs through the same file.

A trace unrolls one tree shape; these graphs are written by hand from the model's weights
instead. The forest (a batch of trees) is flattened: node features ``x [nodes, F]`` (or token ids
``tokens [nodes]``), ``children [nodes, K]`` (child indices, -1 padded, every child before its
parent) and ``roots [trees]``. Two strategies, chosen by ``strategy``:

``levels``  (default) a ``Loop`` over depth levels, all nodes of a level at once; it takes one
            more input, ``levels [depth, width]`` (node indices per level, -1 padded), which
            :func:`~edgernn.runtimes.tree.forest_levels` computes.
``nodes``   an ONNX ``Loop`` over the nodes in order; each iteration gathers the node's children
            from the state table, applies the cell, and writes the node's row (``ScatterND``).
            onnxruntime copies the loop-carried table every iteration, so the time per node grows
            with the forest (measured: 4.6 us/node at 500 nodes, 311 us/node at 7,000 nodes,
            against 7.8 us/node for ``levels``): use it for small single trees only.

Input projections of all nodes (``U x + b``, ``W_iou x + b``, ``W_f x + b``) run once, before the
loop, as one MatMul each. Row ``nodes`` of the state table is a zero row that padded child
indices read; row ``nodes + 1`` is where padded level entries write.

What the graph assumes (and :func:`edgernn.architectures.tree.validate_forest` checks before
running from Python): indices in range, children before parents, one parent per node, roots
that are nobody's child.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgernn.contract import Contract, TensorSpec, write_metadata
from edgernn.converters.recurrent import GraphBuilder
from edgernn.errors import ExportError
from edgernn.runtimes.tree import forest_levels

STRATEGIES = ("nodes", "levels")


@dataclass
class TreeWeights:
    kind: str  # "tree_rnn" | "child_sum_tree_lstm"
    hidden: int
    features: int
    arrays: dict[str, np.ndarray]
    embed: np.ndarray | None
    head_w: np.ndarray | None
    head_b: np.ndarray | None


def read_weights(model) -> TreeWeights:
    """Weights of a TreeRNN / ChildSumTreeLSTM in the layout edgernn.architectures.tree defines."""
    sd = {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}
    kind = "child_sum_tree_lstm" if "W_iou.weight" in sd else "tree_rnn" if "W.weight" in sd else None
    if kind is None:
        raise ExportError(f"{type(model).__name__} is not a TreeRNN or ChildSumTreeLSTM (no W or W_iou weights)")
    embed = sd.get("embed.weight")
    if kind == "tree_rnn":
        hidden, features = sd["U.weight"].shape
        arrays = {"W": sd["W.weight"], "U": sd["U.weight"], "U_b": sd["U.bias"]}
    else:
        hidden, features = sd["W_f.weight"].shape
        arrays = {k: sd[k] for k in ("W_iou.weight", "W_iou.bias", "U_iou.weight", "W_f.weight", "W_f.bias",
                                     "U_f.weight")}
    return TreeWeights(kind, hidden, features, arrays, embed, sd.get("head.weight"), sd.get("head.bias"))


def _node_cell(g: GraphBuilder, w: TreeWeights, proj: list[str], idx: str, children: str, H: str,
               C: str | None, proj_idx: str | None = None) -> tuple[str, str | None]:
    """The cell for the nodes ``idx`` ([n] indices): returns their h (and c), each [n, hidden].
    ``proj_idx`` reads the input projections (defaults to ``idx``; padding must point at a real row)."""
    proj_idx = proj_idx or idx
    n_h = w.hidden
    ch = g.op1("Gather", [children, proj_idx], axis=0)  # [n, K]; padded child entries point at the zero row
    hk = g.op1("Gather", [H, ch], axis=0)  # [n, K, hidden]
    if w.kind == "tree_rnn":
        flat = g.op1("Reshape", [hk, g.ints("n_2h", [-1, 2 * n_h])])
        pre = g.op1("Add", [g.op1("MatMul", [flat, g.const("W.T", w.arrays["W"].T.copy())]),
                            g.op1("Gather", [proj[0], proj_idx], axis=0)])
        return g.op1("Tanh", [pre]), None
    a = w.arrays
    h_sum = g.op1("ReduceSum", [hk, g.ints("axis1", [1])], keepdims=0)  # [n, hidden]
    iou = g.op1("Add", [g.op1("Gather", [proj[0], proj_idx], axis=0),
                        g.op1("MatMul", [h_sum, g.const("U_iou.T", a["U_iou.weight"].T.copy())])])
    i, o, u = g.op("Split", [iou, g.ints("split_iou", [n_h] * 3)], 3, axis=-1)
    i, o, u = g.op1("Sigmoid", [i]), g.op1("Sigmoid", [o]), g.op1("Tanh", [u])
    wf_x = g.op1("Unsqueeze", [g.op1("Gather", [proj[1], proj_idx], axis=0), g.ints("axis1", [1])])  # [n, 1, hidden]
    f = g.op1("Sigmoid", [g.op1("Add", [wf_x, g.op1("MatMul", [hk, g.const("U_f.T", a["U_f.weight"].T.copy())])])])
    ck = g.op1("Gather", [C, ch], axis=0)
    fc = g.op1("ReduceSum", [g.op1("Mul", [f, ck]), g.ints("axis1", [1])], keepdims=0)
    c = g.op1("Add", [g.op1("Mul", [i, u]), fc])
    return g.op1("Mul", [o, g.op1("Tanh", [c])]), c


def build_graph(w: TreeWeights, strategy: str = "levels", all_nodes: bool = False, opset: int = 18
                ) -> onnx.ModelProto:
    """The ONNX model for ``w`` (see the module docstring for inputs and strategies)."""
    if strategy not in STRATEGIES:
        raise ExportError(f"tree strategy {strategy!r} is unknown; expected one of {', '.join(STRATEGIES)}")
    # GraphBuilder (recurrent.py), not onnx_ir's tape: the one builder of edgernn's hand-written NodeProto graphs
    g = GraphBuilder("tree")
    inputs = []
    if w.embed is not None:
        inputs.append(helper.make_tensor_value_info("tokens", TensorProto.INT64, ["nodes"]))
        x = g.op1("Gather", [g.const("embed", w.embed), "tokens"], axis=0)
    else:
        inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["nodes", w.features]))
        x = "x"
    inputs.append(helper.make_tensor_value_info("children", TensorProto.INT64, ["nodes", "max_children"]))
    inputs.append(helper.make_tensor_value_info("roots", TensorProto.INT64, ["trees"]))
    if strategy == "levels":
        inputs.append(helper.make_tensor_value_info("levels", TensorProto.INT64, ["depth", "width"]))
    # input projections of every node, once
    if w.kind == "tree_rnn":
        proj = [g.op1("Add", [g.op1("MatMul", [x, g.const("U.T", w.arrays["U"].T.copy())]), g.const("U.b", w.arrays["U_b"])])]
    else:
        a = w.arrays
        proj = [g.op1("Add", [g.op1("MatMul", [x, g.const("W_iou.T", a["W_iou.weight"].T.copy())]),
                              g.const("W_iou.b", a["W_iou.bias"])]),
                g.op1("Add", [g.op1("MatMul", [x, g.const("W_f.T", a["W_f.weight"].T.copy())]),
                              g.const("W_f.b", a["W_f.bias"])])]
    # state tables [nodes + 2, hidden]: row `nodes` reads as zeros (padding), row `nodes + 1` absorbs writes
    shape_x = g.op1("Shape", ["children"])
    n_nodes = g.op1("Slice", [shape_x, g.ints("zero", [0]), g.ints("one", [1])])  # [1]
    table_shape = g.op1("Concat", [g.op1("Add", [n_nodes, g.ints("two", [2])]), g.ints("hidden", [w.hidden])], axis=0)
    zeros = helper.make_tensor("zero_f", TensorProto.FLOAT, [1], [0.0])
    H0 = g.op1("ConstantOfShape", [table_shape], value=zeros)
    lstm = w.kind == "child_sum_tree_lstm"
    pad_child = g.op1("Where", [g.op1("Less", ["children", g.const("zero_i", np.asarray(0, np.int64))]),
                                g.op1("Squeeze", [n_nodes, g.ints("ax0", [0])]), "children"])
    body = GraphBuilder("tree/step")
    if strategy == "nodes":
        trip = g.op1("Squeeze", [n_nodes, g.ints("ax0b", [0])])
        idx = body.op1("Unsqueeze", ["i", body.ints("ax0", [0])])  # [1]
        write_at = proj_idx = idx
    else:
        shape_l = g.op1("Shape", ["levels"])
        trip = g.op1("Squeeze", [g.op1("Slice", [shape_l, g.ints("zero2", [0]), g.ints("one2", [1])]),
                                 g.ints("ax0c", [0])])
        lv = body.op1("Gather", ["levels", "i"], axis=0)  # [width]
        pad = body.op1("Less", [lv, body.const("zero_i", np.asarray(0, np.int64))])
        idx = body.op1("Where", [pad, body.op1("Squeeze", [n_nodes, body.ints("ax0", [0])]), lv])  # reads: zero row
        sink = body.op1("Add", [body.op1("Squeeze", [n_nodes, body.ints("ax0s", [0])]),
                                body.const("one_i", np.asarray(1, np.int64))])
        write_at = body.op1("Where", [pad, sink, lv])
        proj_idx = body.op1("Where", [pad, body.const("zero_j", np.asarray(0, np.int64)), lv])
    h, c = _node_cell(body, w, proj, idx, pad_child, "H_in", "C_in" if lstm else None, proj_idx)
    where = body.op1("Unsqueeze", [write_at, body.ints("ax1", [1])])  # [n, 1]
    body.op("ScatterND", ["H_in", where, h], outputs=["H_out"])
    if lstm:
        body.op("ScatterND", ["C_in", where, c], outputs=["C_out"])
    body.op("Identity", ["cond_in"], outputs=["cond_out"])
    vi = lambda n, t=TensorProto.FLOAT, shape=("rows", w.hidden): helper.make_tensor_value_info(n, t, shape)  # noqa: E731
    body_graph = helper.make_graph(
        body.nodes, "tree_step",
        [vi("i", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []), vi("H_in"),
         *([vi("C_in")] if lstm else [])],
        [vi("cond_out", TensorProto.BOOL, []), vi("H_out"), *([vi("C_out")] if lstm else [])],
        initializer=body.initializers)
    true = g.const("true", np.asarray(True))
    loop_out = g.op("Loop", [trip, true, H0, *([H0] if lstm else [])], 2 if lstm else 1, body=body_graph)
    H = loop_out[0]
    node_h = g.op1("Slice", [H, g.ints("z", [0]), n_nodes, g.ints("ax0d", [0])])  # drop the two extra rows
    root_h = g.op1("Gather", [H, "roots"], axis=0)
    outputs = []
    if w.head_w is not None:
        y = g.op1("Add", [g.op1("MatMul", [root_h, g.const("head.T", w.head_w.T.copy())]), g.const("head.b", w.head_b)])
        g.op("Identity", [y], outputs=["y"])
        outputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["trees", int(w.head_w.shape[0])]))
    g.op("Identity", [root_h], outputs=["root.h"])
    outputs.append(helper.make_tensor_value_info("root.h", TensorProto.FLOAT, ["trees", w.hidden]))
    if all_nodes:
        g.op("Identity", [node_h], outputs=["node.h"])
        outputs.append(helper.make_tensor_value_info("node.h", TensorProto.FLOAT, ["nodes", w.hidden]))
        if lstm:
            g.op("Identity", [g.op1("Slice", [loop_out[1], g.ints("z2", [0]), n_nodes, g.ints("ax0e", [0])])],
                 outputs=["node.c"])
            outputs.append(helper.make_tensor_value_info("node.c", TensorProto.FLOAT, ["nodes", w.hidden]))
    graph = helper.make_graph(g.nodes, f"edgernn_{w.kind}", inputs, outputs, initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgernn")
    model.ir_version = min(model.ir_version, 10)
    contract = Contract("sequence", tuple(_spec(v) for v in inputs), tuple(_spec(v) for v in outputs), (), {
        "edgernn.tree": json.dumps({
            "kind": w.kind, "strategy": strategy, "hidden_size": w.hidden,
            "node_states": [o.name for o in outputs if o.name.startswith("node.")],
            "assumes": "children[i] lists node i's children (-1 padded) and every child index is smaller than "
                       "its parent's; each node has at most one parent; roots are nobody's child"
                       + ("; levels[d] lists the nodes of depth level d (leaves first), -1 padded"
                          if strategy == "levels" else ""),
        })})
    write_metadata(model, contract)
    return model


def _spec(vi: onnx.ValueInfoProto) -> TensorSpec:
    dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim)
    dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name
    return TensorSpec(vi.name, dims, dtype, None, None)


def run_forest(session, x_or_tokens: np.ndarray, children: np.ndarray, roots: np.ndarray) -> dict[str, np.ndarray]:
    """Run an onnxruntime session of a tree file on one flattened forest (adds ``levels`` if needed)."""
    names = [i.name for i in session.get_inputs()]
    feeds = {names[0]: x_or_tokens, "children": children.astype(np.int64), "roots": roots.astype(np.int64)}
    if "levels" in names:
        feeds["levels"] = forest_levels(children)
    outs = session.run(None, feeds)
    return {o.name: v for o, v in zip(session.get_outputs(), outs)}


def random_forest(rng: np.random.Generator, sizes: Sequence[int], k: int, features: int | None,
                  vocab: int | None, binary: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random flattened forest of trees with the given node counts (for verification)."""
    children_rows, roots, offset = [], [], 0
    for size in sizes:
        rows = [[-1] * k for _ in range(size)]
        free = []  # nodes still without a parent, in index order
        for i in range(size):
            avail = [j for j in free]
            if binary:
                take = 2 if len(avail) >= 2 and (i == size - 1 or rng.random() < 0.5) else 0
            else:
                take = min(len(avail), int(rng.integers(0, k + 1)))
            if i == size - 1:  # the root takes every remaining node (up to k) so that all are reached
                take = min(len(avail), k) if not binary else (2 if len(avail) >= 2 else 0)
            chosen = sorted(rng.choice(len(avail), size=take, replace=False).tolist()) if take else []
            for slot, c in enumerate(chosen):
                rows[i][slot] = avail[c] + offset
            free = [j for n, j in enumerate(avail) if n not in chosen] + [i]
        # remaining orphans hang under new parents until one root is left
        children_rows += rows
        while len(free) > 1:
            a, b = free[0], free[1]
            children_rows.append([a + offset, b + offset] + [-1] * (k - 2))
            free = free[2:] + [len(children_rows) - 1 - offset]
            size += 1
        roots.append(offset + free[0])
        offset += size
    children = np.asarray(children_rows, dtype=np.int64).reshape(-1, k)
    n = children.shape[0]
    data = rng.integers(0, vocab, size=n) if vocab else rng.standard_normal((n, features)).astype(np.float32)
    return data, children, np.asarray(roots, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# export + verification
# ---------------------------------------------------------------------------------------------

# forests the verification runs: node counts per tree (sizes differ from any trace: nothing is traced)
VERIFY_FORESTS = ([1], [2], [3, 1, 7], [40], [200], [5, 60, 1, 17, 33])


def verify_tree(model, onnx_model: onnx.ModelProto, w: TreeWeights, tolerance: float = 1e-5, seed: int = 0):
    """Parity of the tree file with ``model(x_or_tokens, children, roots)`` on random forests of
    many shapes and sizes (a single leaf, chains, wide and deep trees, mixed batches)."""
    import onnxruntime as ort
    import torch

    from edgernn.converters.verify import ParityReport
    from edgernn.runtimes.session import session_options

    session = ort.InferenceSession(onnx_model.SerializeToString(), session_options(1),
                                   providers=["CPUExecutionProvider"])
    report = ParityReport(tolerance)
    rng = np.random.default_rng(seed)
    k = 2 if w.kind == "tree_rnn" else 4
    vocab = None if w.embed is None else int(w.embed.shape[0])
    for sizes in VERIFY_FORESTS:
        data, children, roots = random_forest(rng, sizes, k, w.features, vocab, w.kind == "tree_rnn")
        got = run_forest(session, data, children, roots)
        with torch.no_grad():
            y, node_h = model(torch.from_numpy(data), torch.from_numpy(children), torch.from_numpy(roots))
        want = {"y": y.numpy(), "root.h": node_h[torch.from_numpy(roots)].numpy(), "node.h": node_h.numpy()}
        for name, value in got.items():
            if name in want:
                report._add(name, "output", value, want[name])
        report.cases.append(f"{len(sizes)} tree(s) of {'+'.join(map(str, sizes))} nodes ({children.shape[0]} in all)")
    return report


def export_tree(model, output=None, *, strategy: str = "levels", all_nodes: bool = False, opset: int = 18,
                verify: bool = True, tolerance: float = 1e-5):
    """Export a TreeRNN / ChildSumTreeLSTM to one ONNX graph that takes any tree (see module doc)."""
    import time
    from pathlib import Path

    from edgernn.converters.export import ExportReport, write_if_passed
    from edgernn.converters.passes import PassRecord

    records = []
    t0 = time.perf_counter()
    w = read_weights(model)
    onnx_model = build_graph(w, strategy, all_nodes, opset)
    onnx.checker.check_model(onnx_model, full_check=True)
    records.append(PassRecord("build-tree-graph", True, f"{w.kind}, {strategy} loop, hidden {w.hidden}",
                              time.perf_counter() - t0))
    parity = None
    if verify:
        t0 = time.perf_counter()
        parity = verify_tree(model, onnx_model, w, tolerance)
        records.append(PassRecord("verify", False, parity.summary(), time.perf_counter() - t0))
    data = onnx_model.SerializeToString()
    from edgernn.contract import read_metadata

    report = ExportReport(read_metadata(onnx_model), parity, None, len(data), records, [], onnx_model)
    return write_if_passed(report, None if output is None else Path(output), data, "the tree export")


def compare_tree_files(reference: bytes, candidate: bytes, forests: int = 20, seed: int = 0):
    """Float vs quantized tree file on random forests: the accuracy check of ``edgernn quantize``
    for tree files (they take structure arrays, not streams)."""
    import onnxruntime as ort

    from edgernn.converters.quantize.report import AccuracyReport, OutputAccuracy
    from edgernn.modelfile import ModelFile
    from edgernn.runtimes.session import session_options

    ref = ort.InferenceSession(reference, session_options(1), providers=["CPUExecutionProvider"])
    cand = ort.InferenceSession(candidate, session_options(1), providers=["CPUExecutionProvider"])
    info = json.loads(ModelFile.open(reference).metadata["edgernn.tree"])
    first = ref.get_inputs()[0]
    k = 2 if info["kind"] == "tree_rnn" else 4
    vocab = _vocab(reference) if first.name == "tokens" else None
    features = None if vocab else int(first.shape[1])
    rng = np.random.default_rng(seed)
    stats: dict[str, list] = {}
    nodes = 0
    for _ in range(forests):
        sizes = rng.integers(1, 60, size=int(rng.integers(1, 8))).tolist()
        data, children, roots = random_forest(rng, sizes, k, features, vocab, k == 2)
        nodes += children.shape[0]
        a, b = run_forest(ref, data, children, roots), run_forest(cand, data, children, roots)
        for name in a:
            stats.setdefault(name, []).append((a[name], b[name]))
    outs = []
    for name, pairs in stats.items():
        ra = np.concatenate([p[0] for p in pairs])
        rb = np.concatenate([p[1] for p in pairs])
        err = np.abs(ra.astype(np.float64) - rb)
        agree = float(np.mean(ra.argmax(-1) == rb.argmax(-1))) if name == "y" and ra.shape[-1] > 1 else None
        outs.append(OutputAccuracy(name, float(err.max()), float(err.mean()), float(np.abs(ra).max()),
                                   "argmax" if agree is not None else None, agree))
    return AccuracyReport(f"synthetic random forests ({forests} forests, {nodes} nodes)", nodes, forests, 0, outs, {})


def _vocab(model_bytes: bytes) -> int:
    m = onnx.load_from_string(model_bytes)
    emb = next(t for t in m.graph.initializer if t.name.endswith("/embed"))
    return int(emb.dims[0])
