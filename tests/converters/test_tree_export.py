"""Tree networks exported as one ONNX graph for any tree: parity with PyTorch on trees of many
shapes (a single leaf, a 500-node chain, a full balanced tree, mixed batches), both loop
strategies, the structure checks of TreeSession, and dynamic int8 on a tree file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgernn
from edgernn.architectures.tree import ChildSumTreeLSTM, TreeRNN
from edgernn.runtimes import ForestError, TreeSession

ATOL = 1e-5


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
