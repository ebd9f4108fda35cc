"""Lowered recurrent layers carry their mark (node metadata ``edgernn.layer``) into the written file,
in every form converters/recurrent.py emits: the fused op, MatMul step cells, a Scan (LSTM with a
projection), the If of a layer after a lookahead; the export's later passes (the optimizer, shape
inference) keep them."""

from __future__ import annotations

import warnings
from collections import Counter

import onnx
import pytest
import torch
from torch import nn

import edgernn
from edgernn.recurrent_kinds import LayerMark


class Net(nn.Module):
    """Linear -> recurrent core (module path ``core``) -> Linear; ``lookahead``: a 'same' Conv1d
    before the core, so the core skips warm-up frames (a gated layer)."""

    def __init__(self, kind: str, lookahead: bool = False, **kw) -> None:
        super().__init__()
        self.conv = nn.Conv1d(6, 6, 3, padding=1) if lookahead else None
        self.front = nn.Linear(6, 8)
        self.core = getattr(nn, kind)(8, 10, num_layers=2, batch_first=True, **kw)
        self.head = nn.Linear(10 if "proj_size" not in kw else kw["proj_size"], 3)

    def forward(self, x):
        if self.conv is not None:
            x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        y, _ = self.core(torch.relu(self.front(x)))
        return self.head(y)


def _written(tmp_path, kind: str, mode: str, cells: str = "auto", **kw) -> onnx.ModelProto:
    torch.manual_seed(0)
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert edgernn.export(Net(kind, **kw).eval(), path, mode=mode, cells=cells).passed
    return onnx.load(path)


def _marks(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, LayerMark]]:
    """(node, mark) of every marked node, subgraphs included."""
    out = []
    for node in graph.node:
        mark = LayerMark.of(node)
        if mark is not None:
            out.append((node, mark))
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                out += _marks(attr.g)
    return out


def _roles(marks, op_type: str | None = None) -> Counter:
    return Counter((m.index, m.role) for n, m in marks if op_type is None or n.op_type == op_type)


@pytest.mark.parametrize("kind, mode, cells, want", [
    ("GRU", "chunk", "auto", {"GRU": "op"}),
    ("LSTM", "step", "auto", {"LSTM": "op"}),
    ("GRU", "step", "matmul", {"MatMul": ("input_projection", "recurrence")}),
    ("LSTM", "step", "matmul", {"MatMul": ("input_projection", "recurrence")}),
    ("RNN", "step", "auto", {"MatMul": ("input_projection", "recurrence")}),
])
def test_every_layer_of_the_written_file_is_marked(tmp_path, kind, mode, cells, want):
    model = _written(tmp_path, kind, mode, cells)
    marks = _marks(model.graph)
    expected = {"GRU": "gru", "LSTM": "lstm", "RNN": "rnn_tanh"}[kind]
    assert marks and all(m.kind == expected and m.layer == "core" for _, m in marks)
    for op_type, roles in want.items():
        roles = (roles,) if isinstance(roles, str) else roles
        assert _roles(marks, op_type) == Counter((i, r) for i in (0, 1) for r in roles)
    # every recurrent op or MatMul of the core, and nothing of the frontend or head, is marked
    marked = {n.name for n, _ in marks}
    core = [n for n in model.graph.node if n.op_type in ("GRU", "LSTM", "RNN") or n.name.startswith("core/")]
    assert core and all(n.name in marked for n in core)
    assert not any(n.name in marked for n in model.graph.node if n.op_type == "Gemm" or "front" in n.name)
    if cells == "matmul" or kind == "RNN":  # the cell's outputs and the states it reads
        parts = ("h", "c") if kind == "LSTM" else ("h",)
        assert _roles(marks)[0, "h_out"] == 1 and _roles(marks)[1, "c_out"] == (kind == "LSTM")
        assert sorted(m.part for _, m in marks if m.role == "state_in" and m.index == 0) == sorted(parts)


def test_a_scan_layer_is_marked_inside_its_body(tmp_path):
    marks = _marks(_written(tmp_path, "LSTM", "chunk", proj_size=4).graph)
    assert _roles(marks, "Scan") == Counter({(0, "scan"): 1, (1, "scan"): 1})
    assert _roles(marks, "MatMul") == Counter((i, r) for i in (0, 1)
                                              for r in ("input_projection", "recurrence", "projection"))


def test_a_gated_layer_is_marked_in_both_branches(tmp_path):
    model = _written(tmp_path, "GRU", "chunk", lookahead=True)
    marks = _marks(model.graph)
    assert [m.role for n, m in marks if n.op_type == "If"] == ["gated"]
    assert _roles(marks, "GRU") == Counter({(0, "op"): 1, (1, "op"): 1})  # the branch of whole calls
    assert _roles(marks, "Scan") == Counter({(0, "scan"): 1, (1, "scan"): 1})  # the warm-up branch
