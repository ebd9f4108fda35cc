"""Export tree-structured recursive networks (TreeRNN, Child-Sum Tree-LSTM) as one ONNX graph
that takes the tree as input, so that any tree shape runs through the same file.

A trace unrolls one tree shape; these graphs are written by hand from the model's weights
instead. The forest (a batch of trees) is flattened: node features ``x [nodes, F]`` (or token ids
``tokens [nodes]``), ``children [nodes, K]`` (child indices, -1 padded, every child before its
parent; K = 2 for a TreeRNN: column 0 is the left child) and ``roots [trees]``. Nothing else goes
in: the graph schedules the forest itself.

**The schedule** (nodes before the loop, O(nodes log nodes)). Every node gets a level counted down
from the top: the roots of all trees share the top level and every child sits exactly one level
below its parent (``level = depth - 1 - edges from the node up to its root``; the distances come
from pointer jumping, log2(depth) rounds of a small Loop). The nodes are sorted by level
(``TopK``), so each level is one contiguous block and the children of a level are all in the block
just below it. PyTorch's forward computes a node as soon as its children are done; computing it as
late as its parent allows does the same work in the same number of levels.

**The loop** over levels carries only the previous level's states ``[width, hidden]`` (and cells):
each iteration gathers its nodes' children from that block (row 0 is a zero row for missing
children), applies the cell and hands its own block on; the last block holds the roots. So a level
costs what its nodes cost, and nothing grows with the forest (the loop this replaces scattered
into a table of all nodes, which onnxruntime copied every iteration: nodes x depth). Two
strategies, chosen by ``strategy``:

``levels``  (default) all nodes of a level at once: one MatMul per level.
``nodes``   one node per iteration, in a Loop over the level's nodes inside the level loop; the
            node states leave it as scan outputs, so nothing is copied per node either and the
            cost per node stays flat, but every node pays the per-iteration cost of a dozen small
            ops: about 10-30 µs a node, 4-9x ``levels`` on forests and 1.5-3x on chains
            (``benchmarks/tree_scaling.py``, docs/performance.md). It is never the faster one;
            it stays for comparison and as the form closest to a hand-written recursion.

Input projections of all nodes (``U x + b``, ``W_iou x + b``, ``W_f x + b``) run once, before the
loop, as one MatMul each, on the nodes in level order. With ``all_nodes`` each level's block also
leaves the loop as a scan output padded to the widest level, from which ``node.h`` (and
``node.c``) are gathered back into node order. That costs depth x widest level x hidden floats:
about the forest itself for chains and for forests of similar trees, but far more for a batch
that mixes one very deep tree with many others (a chain of 2,001 nodes with 500 single leaves:
1,001 levels x 501 rows for 2,501 nodes). ``y`` and ``root.h`` need none of it.

What the graph assumes (and :func:`edgernn.runtimes.tree.validate_forest` checks before running
from Python): indices in range, children before parents, one parent per node, roots that are
nobody's child, every parentless node a root.
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
_END = 2 ** 62  # Slice end: to the end of the axis
_MAX_JUMPS = 64  # pointer-jumping rounds: enough for any depth below 2**64


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


def _cell(g: GraphBuilder, w: TreeWeights, hk: str, ck: str | None, px: list[str]) -> tuple[str, str | None]:
    """The cell for ``n`` nodes from their children's states ``hk`` (and cells ``ck``), each
    [n, K, hidden] (zeros for missing children), and their input projections ``px`` (rows of the
    ``_projections``): their h (and c), each [n, hidden]."""
    n_h = w.hidden
    a = w.arrays
    if w.kind == "tree_rnn":
        flat = g.op1("Reshape", [hk, g.ints("n_2h", [0, 2 * n_h])])  # [n, 2H]: h_left; h_right (K must be 2)
        return g.op1("Tanh", [g.op1("Add", [g.op1("MatMul", [flat, g.const("W.T", a["W"].T.copy())]), px[0]])]), None
    h_sum = g.op1("ReduceSum", [hk, g.ints("axis1", [1])], keepdims=0)  # [n, hidden]
    iou = g.op1("Add", [px[0], g.op1("MatMul", [h_sum, g.const("U_iou.T", a["U_iou.weight"].T.copy())])])
    i, o, u = g.op("Split", [iou, g.ints("split_iou", [n_h] * 3)], 3, axis=-1)
    i, o, u = g.op1("Sigmoid", [i]), g.op1("Sigmoid", [o]), g.op1("Tanh", [u])
    wf_x = g.op1("Unsqueeze", [px[1], g.ints("axis1", [1])])  # [n, 1, hidden]
    f = g.op1("Sigmoid", [g.op1("Add", [wf_x, g.op1("MatMul", [hk, g.const("U_f.T", a["U_f.weight"].T.copy())])])])
    fc = g.op1("ReduceSum", [g.op1("Mul", [f, ck]), g.ints("axis1", [1])], keepdims=0)
    c = g.op1("Add", [g.op1("Mul", [i, u]), fc])
    return g.op1("Mul", [o, g.op1("Tanh", [c])]), c


def _projections(g: GraphBuilder, w: TreeWeights, x: str) -> list[str]:
    """Input projections of the nodes ``x [nodes, F]``: ``[U x + b]`` or ``[W_iou x + b, W_f x + b]``."""
    a = w.arrays
    pairs = ([("U", a["U"], a["U_b"])] if w.kind == "tree_rnn" else
             [("W_iou", a["W_iou.weight"], a["W_iou.bias"]), ("W_f", a["W_f.weight"], a["W_f.bias"])])
    return [g.op1("Add", [g.op1("MatMul", [x, g.const(f"{name}.T", m.T.copy())]), g.const(f"{name}.b", bias)])
            for name, m, bias in pairs]


def _schedule(g: GraphBuilder, all_nodes: bool) -> dict[str, str]:
    """Graph nodes that order the forest by level (the module docstring). Returns the names of
    ``order [nodes]`` (the node at each position), ``bounds [depth + 1]`` (each level's first
    position, then ``nodes``), ``depth`` (a scalar), ``reads [nodes, K]`` (per position, each
    child's row in the block of the level below plus one; 0, the zero row, for no child) and
    ``root_pos [trees]`` (each root's row in the top block); with ``all_nodes`` also ``width [1]``
    (the widest level) and ``slot [nodes]`` (each node's row in the padded per-level output)."""
    zero, one = g.scalar("zero", 0), g.scalar("one", 1)
    shape = g.op1("Shape", ["children"])
    n1 = g.op1("Slice", [shape, g.ints("start", [0]), g.ints("stop", [1])])  # [1]
    n = g.op1("Squeeze", [n1, g.ints("axis0", [0])])
    # each node's parent, n for none: padded entries write (and later read) the sink row n
    flat = g.op1("Reshape", ["children", g.ints("flat", [-1])])
    ids = g.op1("Reshape", [g.op1("Expand", [g.op1("Unsqueeze", [g.op1("Range", [zero, n, one]), g.ints("axis1", [1])]),
                                             shape]), g.ints("flat", [-1])])
    pad = g.op1("Less", [flat, zero])
    none = g.op1("Expand", [n, g.op1("Add", [n1, g.ints("one", [1])])])  # [nodes + 1], all n
    parent = g.op1("ScatterElements", [none, g.op1("Where", [pad, n, flat]), g.op1("Where", [pad, n, ids])],
                   reduction="min")
    # pointer jumping: dist[i] counts the edges from i to up[i]; each round doubles the jump
    jump = GraphBuilder("tree/jump")
    jump.op("Add", ["dist_in", jump.op1("Gather", ["dist_in", "up_in"], axis=0)], outputs=["dist_out"])
    jump.op("Gather", ["up_in", "up_in"], outputs=["up_out"], axis=0)
    jump.op("Less", [jump.op1("ReduceMin", ["up_out"], keepdims=0), n], outputs=["jump_cond_out"])
    ivec = lambda name: helper.make_tensor_value_info(name, TensorProto.INT64, ["nodes_1"])  # noqa: E731
    body = helper.make_graph(jump.nodes, "tree_jump", [
        helper.make_tensor_value_info("round", TensorProto.INT64, []),
        helper.make_tensor_value_info("jump_cond_in", TensorProto.BOOL, []), ivec("dist_in"), ivec("up_in")],
        [helper.make_tensor_value_info("jump_cond_out", TensorProto.BOOL, []), ivec("dist_out"), ivec("up_out")],
        initializer=jump.initializers)
    dist0 = g.op1("Cast", [g.op1("Less", [parent, n])], to=TensorProto.INT64)
    more = g.op1("Less", [g.op1("ReduceMin", [parent], keepdims=0), n])
    dist_all, _ = g.op("Loop", [g.scalar("max_jumps", _MAX_JUMPS), more, dist0, parent], 2, body=body)
    dist = g.op1("Slice", [dist_all, g.ints("start", [0]), n1])
    top = g.op1("ReduceMax", [dist], keepdims=0)
    levels, order = g.op("TopK", [g.op1("Sub", [top, dist]), n1], 2, largest=0, sorted=1)  # ties: lower index first
    # every level from 0 to top has nodes, so the levels start where the sorted levels change
    changed = g.op1("Not", [g.op1("Equal", [g.op1("Slice", [levels, g.ints("start", [1]), g.ints("end", [_END])]),
                                            g.op1("Slice", [levels, g.ints("start", [0]), g.ints("end", [-1])])])])
    starts = g.op1("Add", [g.op1("Reshape", [g.op1("NonZero", [changed]), g.ints("flat", [-1])]), one])
    bounds = g.op1("Concat", [g.ints("start", [0]), starts, n1], axis=0)
    pos = g.op1("ScatterElements", [order, order, g.op1("Range", [zero, n, one])])  # pos[order[p]] = p
    below = g.op1("Gather", [bounds, g.op1("Max", [g.op1("Sub", [levels, one]), zero])], axis=0)
    kids = g.op1("Gather", ["children", order], axis=0)  # [nodes, K] in level order
    real = g.op1("Not", [g.op1("Less", [kids, zero])])
    rows = g.op1("Sub", [g.op1("Gather", [pos, g.op1("Where", [real, kids, zero])], axis=0),
                         g.op1("Unsqueeze", [below, g.ints("axis1", [1])])])
    out = {"order": order, "bounds": bounds, "depth": g.op1("Add", [top, one]),
           "reads": g.op1("Where", [real, g.op1("Add", [rows, one]), zero]),
           "root_pos": g.op1("Sub", [g.op1("Gather", [pos, "roots"], axis=0),
                                     g.op1("Gather", [bounds, top], axis=0)])}
    if all_nodes:
        widths = g.op1("Sub", [g.op1("Slice", [bounds, g.ints("start", [1]), g.ints("end", [_END])]),
                               g.op1("Slice", [bounds, g.ints("start", [0]), g.ints("end", [-1])])])
        out["width"] = g.op1("ReduceMax", [widths], keepdims=1)
        rank = g.op1("Sub", [g.op1("Range", [zero, n, one]), g.op1("Gather", [bounds, levels], axis=0)])
        out["slot"] = g.op1("Gather", [g.op1("Add", [g.op1("Mul", [levels, out["width"]]), rank]), pos], axis=0)
    return out


def _level_body(w: TreeWeights, strategy: str, sched: dict[str, str], proj: list[str], all_nodes: bool
                ) -> onnx.GraphProto:
    """One iteration of the level loop: the states of level ``level`` from those of the level
    below (``h_below``, ``c_below``), all at once (``levels``) or node by node (``nodes``)."""
    lstm = w.kind == "child_sum_tree_lstm"
    b = GraphBuilder("tree/level")
    at = b.op1("Unsqueeze", ["level", b.ints("axis0", [0])])
    s = b.op1("Gather", [sched["bounds"], at], axis=0)  # [1]: the level's first position
    e = b.op1("Gather", [sched["bounds"], b.op1("Add", [at, b.ints("one", [1])])], axis=0)
    zero_row = b.const("zero_row", np.zeros((1, w.hidden), np.float32))
    h_below = b.op1("Concat", [zero_row, "h_below"], axis=0)  # row 0 reads as a missing child
    c_below = b.op1("Concat", [zero_row, "c_below"], axis=0) if lstm else None
    if strategy == "levels":
        axis0 = b.ints("axis0", [0])
        rd = b.op1("Slice", [sched["reads"], s, e, axis0])  # [width, K]
        h, c = _cell(b, w, b.op1("Gather", [h_below, rd], axis=0),
                     b.op1("Gather", [c_below, rd], axis=0) if lstm else None,
                     [b.op1("Slice", [p, s, e, axis0]) for p in proj])
    else:
        nb = GraphBuilder("tree/node")
        at_node = nb.op1("Add", [s, nb.op1("Unsqueeze", ["node", nb.ints("axis0", [0])])])  # [1]
        rd = nb.op1("Gather", [sched["reads"], at_node], axis=0)  # [1, K]
        hn, cn = _cell(nb, w, nb.op1("Gather", [h_below, rd], axis=0),
                       nb.op1("Gather", [c_below, rd], axis=0) if lstm else None,
                       [nb.op1("Gather", [p, at_node], axis=0) for p in proj])
        nb.op("Identity", ["node_cond_in"], outputs=["node_cond_out"])
        nb.op("Identity", [hn], outputs=["h_node"])
        if lstm:
            nb.op("Identity", [cn], outputs=["c_node"])
        node_body = helper.make_graph(
            nb.nodes, "tree_node",
            [helper.make_tensor_value_info("node", TensorProto.INT64, []),
             helper.make_tensor_value_info("node_cond_in", TensorProto.BOOL, [])],
            [helper.make_tensor_value_info("node_cond_out", TensorProto.BOOL, []),
             *(helper.make_tensor_value_info(v, TensorProto.FLOAT, [1, w.hidden])
               for v in ["h_node", *(["c_node"] if lstm else [])])],
            initializer=nb.initializers)
        width = b.op1("Squeeze", [b.op1("Sub", [e, s]), b.ints("axis0", [0])])
        stacked = b.op("Loop", [width, b.const("true", np.asarray(True))], 2 if lstm else 1, body=node_body)
        h, c = ([b.op1("Reshape", [t, b.ints("rows", [-1, w.hidden])]) for t in stacked] + [None])[:2]  # [width, H]
    b.op("Identity", ["level_cond_in"], outputs=["level_cond_out"])
    b.op("Identity", [h], outputs=["h_level"])
    if lstm:
        b.op("Identity", [c], outputs=["c_level"])
    records = []
    if all_nodes:  # the block, padded to the widest level, as a scan output
        pads = b.op1("Concat", [b.ints("pads", [0, 0]), b.op1("Sub", [sched["width"], b.op1("Sub", [e, s])]),
                                b.ints("pads", [0])], axis=0)
        for name, t in (("h_record", h), ("c_record", c)):
            if t is not None:
                b.op("Pad", [t, pads], outputs=[name])
                records.append(name)
    vi = lambda n, t=TensorProto.FLOAT, shape=("rows", w.hidden): helper.make_tensor_value_info(n, t, shape)  # noqa: E731
    states = ["h", *(["c"] if lstm else [])]
    return helper.make_graph(
        b.nodes, "tree_level",
        [vi("level", TensorProto.INT64, []), vi("level_cond_in", TensorProto.BOOL, []), *(vi(f"{v}_below") for v in states)],
        [vi("level_cond_out", TensorProto.BOOL, []), *(vi(f"{v}_level") for v in states),
         *(vi(r, shape=("width", w.hidden)) for r in records)],
        initializer=b.initializers)


def build_graph(w: TreeWeights, strategy: str = "levels", all_nodes: bool = False, opset: int = 18
                ) -> onnx.ModelProto:
    """The ONNX model for ``w`` (see the module docstring for inputs and strategies)."""
    if strategy not in STRATEGIES:
        raise ExportError(f"tree strategy {strategy!r} is unknown; expected one of {', '.join(STRATEGIES)}")
    # GraphBuilder (recurrent.py), not onnx_ir's tape: the one builder of edgernn's hand-written NodeProto graphs
    g = GraphBuilder("tree")
    lstm = w.kind == "child_sum_tree_lstm"
    inputs = [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["nodes"]) if w.embed is not None else
              helper.make_tensor_value_info("x", TensorProto.FLOAT, ["nodes", w.features]),
              helper.make_tensor_value_info("children", TensorProto.INT64, ["nodes", "max_children"]),
              helper.make_tensor_value_info("roots", TensorProto.INT64, ["trees"])]
    sched = _schedule(g, all_nodes)
    if w.embed is not None:  # the nodes' inputs in level order
        x = g.op1("Gather", [g.const("embed", w.embed), g.op1("Gather", ["tokens", sched["order"]], axis=0)], axis=0)
    else:
        x = g.op1("Gather", ["x", sched["order"]], axis=0)
    proj = _projections(g, w, x)
    body = _level_body(w, strategy, sched, proj, all_nodes)
    empty = g.const("empty", np.zeros((0, w.hidden), np.float32))  # the level below the leaves
    loop_out = g.op("Loop", [sched["depth"], g.const("true", np.asarray(True)), empty, *([empty] if lstm else [])],
                    len(body.output) - 1, body=body)
    root_h = g.op1("Gather", [loop_out[0], sched["root_pos"]], axis=0)
    outputs = []
    if w.head_w is not None:
        y = g.op1("Add", [g.op1("MatMul", [root_h, g.const("head.T", w.head_w.T.copy())]), g.const("head.b", w.head_b)])
        g.op("Identity", [y], outputs=["y"])
        outputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["trees", int(w.head_w.shape[0])]))
    g.op("Identity", [root_h], outputs=["root.h"])
    outputs.append(helper.make_tensor_value_info("root.h", TensorProto.FLOAT, ["trees", w.hidden]))
    if all_nodes:
        records = loop_out[2 if lstm else 1:]  # [depth, width, hidden] each
        for name, rec in zip(("node.h", "node.c"), records):
            rows = g.op1("Reshape", [rec, g.ints("rows", [-1, w.hidden])])
            g.op("Gather", [rows, sched["slot"]], outputs=[name], axis=0)
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["nodes", w.hidden]))
    graph = helper.make_graph(g.nodes, f"edgernn_{w.kind}", inputs, outputs, initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgernn")
    model.ir_version = min(model.ir_version, 10)
    contract = Contract("sequence", tuple(_spec(v) for v in inputs), tuple(_spec(v) for v in outputs), (), {
        "edgernn.tree": json.dumps({
            "kind": w.kind, "strategy": strategy, "hidden_size": w.hidden,
            "node_states": [o.name for o in outputs if o.name.startswith("node.")],
            "assumes": "children[i] lists node i's children (-1 padded"
                       + (", 2 columns: left, right" if w.kind == "tree_rnn" else "")
                       + ") and every child index is smaller than its parent's; each node has at most one parent; "
                         "roots are nobody's child and every node without a parent is a root",
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
