"""Tree networks exported as one ONNX graph for any tree: parity with PyTorch on trees of many
shapes (a single leaf, 500- and 3,000-node chains, a full balanced tree, mixed and wide batches),
both loop strategies, the cost structure of the level loop (read from the graph, not timed), the
structure checks of TreeSession, and dynamic int8 on a tree file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import edgernn
from edgernn.architectures.tree import ChildSumTreeLSTM, TreeRNN
from edgernn.runtimes import ForestError, TreeSession

ATOL = 1e-5


# PyTorch's references run level by level, thousands of tiny ops: on a busy machine waits in its
# thread pool cost far more than the ops (measured 5-14 s against 0.16 s on one thread for the
# 2,001-node Tree-LSTM chain)
pytestmark = pytest.mark.usefixtures("one_thread")


def chain(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A left-leaning chain: node i has children (i-1, a fresh leaf)... built as leaf, then pairs."""
    rows = [[-1] * k]
    top = 0
    while len(rows) < n:
        rows.append([-1] * k)  # a leaf
        leaf = len(rows) - 1
        rows.append([top, leaf] + [-1] * (k - 2))
        top = len(rows) - 1
    return np.asarray(rows, dtype=np.int64), np.asarray([top], dtype=np.int64)


def balanced(depth: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    rows: list[list[int]] = []
    level = []
    for _ in range(2 ** depth):
        rows.append([-1] * k)
        level.append(len(rows) - 1)
    while len(level) > 1:
        nxt = []
        for a, b in zip(level[::2], level[1::2]):
            rows.append([a, b] + [-1] * (k - 2))
            nxt.append(len(rows) - 1)
        level = nxt
    return np.asarray(rows, dtype=np.int64), np.asarray(level, dtype=np.int64)


def forests(k: int):
    yield "single leaf", np.full((1, k), -1, dtype=np.int64), np.asarray([0])
    yield "chain of 501", *chain(501, k)
    yield "balanced depth 6", *balanced(6, k)
    c1, r1 = balanced(3, k)
    c2, r2 = chain(9, k)
    c2 = np.where(c2 >= 0, c2 + len(c1), c2)
    yield "mixed batch", np.concatenate([c1, c2, np.full((1, k), -1)]), np.asarray([r1[0], r2[0] + len(c1),
                                                                                    len(c1) + len(c2)])


def batch(trees: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """One forest of several (children, roots) forests, numbered one after another."""
    rows, roots, offset = [], [], 0
    for children, r in trees:
        rows.append(np.where(children >= 0, children + offset, children))
        roots.append(r + offset)
        offset += len(children)
    return np.concatenate(rows), np.concatenate(roots)


def model_of(kind: str, tokens: bool):
    torch.manual_seed(7)
    cls = TreeRNN if kind == "tree_rnn" else ChildSumTreeLSTM
    if tokens:
        return cls(None, 24, 5, vocab_size=13, embed_size=10).eval()
    return cls(10, 24, 5).eval()


@pytest.mark.parametrize("strategy", ["nodes", "levels"])
@pytest.mark.parametrize("kind", ["tree_rnn", "child_sum_tree_lstm"])
@pytest.mark.parametrize("tokens", [False, True])
def test_tree_parity_on_degenerate_and_mixed_trees(kind, strategy, tokens, tmp_path):
    model = model_of(kind, tokens)
    report = edgernn.export(model, tmp_path / "tree.onnx", tree_strategy=strategy, all_nodes=True)
    assert report.parity.passed and report.parity.max_error < ATOL
    assert report.contract.states == ()
    session = TreeSession(tmp_path / "tree.onnx")
    assert session.info["kind"] == kind and session.info["strategy"] == strategy
    k = 2 if kind == "tree_rnn" else 3
    rng = np.random.default_rng(1)
    for label, children, roots in forests(k):
        n = len(children)
        data = rng.integers(0, 13, n) if tokens else rng.standard_normal((n, 10)).astype(np.float32)
        out = session.run(data, children, roots)
        with torch.no_grad():
            y, node_h = model(torch.from_numpy(data), torch.from_numpy(children), torch.from_numpy(roots))
        np.testing.assert_allclose(out["y"], y.numpy(), atol=ATOL, err_msg=label)
        np.testing.assert_allclose(out["node.h"], node_h.numpy(), atol=ATOL, err_msg=label)
        np.testing.assert_allclose(out["root.h"], node_h.numpy()[roots], atol=ATOL, err_msg=label)
        assert out["y"].shape == (len(roots), 5)


@pytest.mark.parametrize("kind", ["tree_rnn", "child_sum_tree_lstm"])
def test_parity_on_a_deep_chain_and_a_wide_forest(kind, tmp_path):
    """Both strategies, every node's state, on a chain of 2,001 nodes (1,001 levels) and on a
    forest whose levels are wide and whose trees have very different depths (a chain of 201 nodes,
    ten balanced trees of 63 and 500 single leaves: the shallow trees' roots share the chain's top
    level, their leaves sit far above level 0)."""
    model = model_of(kind, tokens=True)
    k = 2 if kind == "tree_rnn" else 3
    leaf = (np.full((1, k), -1), np.asarray([0]))
    shapes = {"chain of 2001": chain(2001, k), "wide forest": batch([chain(201, k), *[balanced(5, k)] * 10, *[leaf] * 500])}
    rng = np.random.default_rng(2)
    want = {}
    for label, (children, roots) in shapes.items():
        tokens = rng.integers(0, 13, len(children))
        with torch.no_grad():
            y, node_h = model(*(torch.from_numpy(a) for a in (tokens, children, roots)))
        want[label] = tokens, y.numpy(), node_h.numpy()
    for strategy in ("levels", "nodes"):
        edgernn.export(model, tmp_path / f"{strategy}.onnx", tree_strategy=strategy, all_nodes=True, verify=False)
        session = TreeSession(tmp_path / f"{strategy}.onnx")
        for label, (children, roots) in shapes.items():
            tokens, y, node_h = want[label]
            out = session.run(tokens, children, roots)
            np.testing.assert_allclose(out["y"], y, atol=ATOL, err_msg=f"{strategy}, {label}")
            np.testing.assert_allclose(out["node.h"], node_h, atol=ATOL, err_msg=f"{strategy}, {label}")


def _defined(graph: onnx.GraphProto) -> set[str]:
    """Names a graph defines, its subgraphs included."""
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        names |= set(node.output)
        names |= {n for a in node.attribute if a.type == onnx.AttributeProto.GRAPH for n in _defined(a.g)}
    return names


def _nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(a.g)


@pytest.mark.parametrize("strategy", ["nodes", "levels"])
@pytest.mark.parametrize("kind", ["tree_rnn", "child_sum_tree_lstm"])
def test_level_loop_touches_one_level_per_iteration(kind, strategy, tmp_path):
    """The cost structure, read from the graph: the file takes the forest alone (it orders the
    nodes by level itself); the level loop carries one level's states, which it only extends by a
    zero row, and reads the forest-sized tensors (projections, child rows, level bounds) only
    through Slice or Gather of its own rows; no loop writes into a table (ScatterND) or a
    sequence. So an iteration costs what its level costs, however large or deep the forest."""
    model = model_of(kind, tokens=True)
    edgernn.export(model, tmp_path / "tree.onnx", tree_strategy=strategy, verify=False)
    m = onnx.load(tmp_path / "tree.onnx")
    assert [i.name for i in m.graph.input] == ["tokens", "children", "roots"]
    loops = [n for n in m.graph.node if n.op_type == "Loop"]
    bodies = {n.name: next(a.g for a in n.attribute if a.name == "body") for n in loops}
    level = next(b for b in bodies.values() if "h_below" in [i.name for i in b.input])
    carried = [i.name for i in level.input][2:]
    assert carried == (["h_below", "c_below"] if kind == "child_sum_tree_lstm" else ["h_below"])
    for node in _nodes(level):
        for slot, name in enumerate(node.input):
            if name in carried:  # the level below, with the zero row that missing children read
                assert node.op_type == "Concat", node
                zero = next(t for t in level.initializer if t.name == node.input[0])
                assert list(zero.dims) == [1, 24] and not onnx.numpy_helper.to_array(zero).any()
            elif name and name not in _defined(level):  # from outside: rows of this level only
                assert node.op_type in ("Slice", "Gather") and slot == 0, (node.op_type, name)
    for body in bodies.values():
        assert not {n.op_type for n in _nodes(body)} & {"ScatterND", "ScatterElements", "SequenceInsert",
                                                       "ConcatFromSequence", "SequenceConstruct"}
    jump = next(b for b in bodies.values() if b is not level)  # the schedule's pointer jumping
    assert {n.op_type for n in jump.node} == {"Add", "Gather", "ReduceMin", "Less"}


def test_tree_rnn_session_pads_one_column_of_children(tmp_path):
    model = model_of("tree_rnn", False)
    edgernn.export(model, tmp_path / "tree.onnx", verify=False)
    x = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)
    children, roots = np.asarray([[-1], [0], [1]]), np.asarray([2])
    with torch.no_grad():
        y, _ = model(torch.from_numpy(x), torch.from_numpy(children), torch.from_numpy(roots))
    np.testing.assert_allclose(TreeSession(tmp_path / "tree.onnx").run(x, children, roots)["y"], y.numpy(), atol=ATOL)


BAD = [
    ("child after parent", [[-1, -1], [2, -1], [-1, -1]], [1], "which comes after it"),
    ("index out of range", [[-1, -1], [7, -1]], [1], "out of range"),
    ("two parents", [[-1, -1], [0, -1], [0, -1]], [1, 2], "has 2 parents"),
    ("root is a child", [[-1, -1], [0, -1]], [0], "a root has no parent"),
    ("unreachable node", [[-1, -1], [-1, -1], [0, -1]], [2], "no tree reaches it"),
    ("self loop", [[0, -1]], [0], "lists itself as its child"),
]


@pytest.mark.parametrize("label,children,roots,message", BAD, ids=[b[0] for b in BAD])
def test_tree_session_refuses_bad_structure(label, children, roots, message, tmp_path):
    model = model_of("tree_rnn", False)
    edgernn.export(model, tmp_path / "tree.onnx", verify=False)
    session = TreeSession(tmp_path / "tree.onnx")
    x = np.zeros((len(children), 10), np.float32)
    with pytest.raises(ForestError, match=message):
        session.run(x, np.asarray(children), np.asarray(roots))


def test_dynamic_int8_on_a_tree_file(tmp_path):
    torch.manual_seed(3)
    model = ChildSumTreeLSTM(None, 96, 4, vocab_size=20, embed_size=32).eval()
    edgernn.export(model, tmp_path / "tree.onnx")
    report = edgernn.quantize(tmp_path / "tree.onnx", method="dynamic")
    assert report.size_ratio < 0.5  # weights dominate at this size (measured 0.31x)
    assert {d.dtype for d in report.quantized} == {"int8"} and len(report.quantized) >= 4
    y = next(o for o in report.accuracy.outputs if o.name == "y")
    assert y.max_abs < 0.05 and y.agreement is not None and y.agreement >= 0.95  # measured 0.0035 / 98.8%
    assert "random forests" in report.accuracy.data_source
    with pytest.raises(edgernn.converters.quantize.QuantizeError, match="only --method dynamic"):
        edgernn.quantize(tmp_path / "tree.onnx", method="static")
