"""The table of recurrent kinds (edgernn/recurrent_kinds.py) agrees with PyTorch and ONNX, and the
mark lowered layers carry reads back what was written."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper
from torch import nn

from edgernn.recurrent_kinds import KINDS, MARK_KEY, ONNX_OPS, LayerMark, kind_of_mode, kind_of_onnx, kinds_of


@pytest.mark.parametrize("name", list(KINDS))
def test_each_kind_matches_pytorch(name):
    kind = KINDS[name]
    extra = {"nonlinearity": kind.nonlinearity} if kind.nonlinearity else {}
    layer = kind.torch_class(3, 5, **extra)
    assert isinstance(layer, nn.RNNBase) and kind_of_mode(layer.mode) is kind
    assert layer.weight_hh_l0.shape == (kind.gates * 5, 5)  # gate blocks of PyTorch's weights
    assert issubclass(kind.torch_cell_class, nn.RNNCellBase)
    assert kind.architecture in {"rnn", "lstm", "gru"} and kind in kinds_of(architecture=kind.architecture)
    assert kind.state_parts == (("h", "c") if isinstance(layer, nn.LSTM) else ("h",))


@pytest.mark.parametrize("name", list(KINDS))
def test_each_kind_matches_onnx(name):
    kind = KINDS[name]
    schema = onnx.defs.get_schema(kind.onnx_op)
    assert {a for a, _ in kind.onnx_attributes} <= set(schema.attributes)
    assert len(kind.onnx_gates) == kind.gates and sorted(kind.onnx_of_torch) == list(range(kind.gates))
    assert kind_of_onnx(kind.onnx_op, kind.activations) is kind
    assert len(schema.outputs) == 1 + len(kind.state_parts)  # Y, Y_h (, Y_c)


def test_gate_permutations_are_the_documented_ones():
    assert KINDS["gru"].onnx_of_torch == (1, 0, 2)  # r,z,n -> z,r,h
    assert KINDS["lstm"].onnx_of_torch == (0, 3, 1, 2)  # i,f,g,o -> i,o,f,c
    assert KINDS["lstm"].torch_of_onnx == (0, 2, 3, 1)
    for kind in KINDS.values():
        a = np.arange(kind.gates * 2 * 3).reshape(kind.gates * 2, 3)
        np.testing.assert_array_equal(kind.to_torch_gates(kind.to_onnx_gates(a, 2), 2), a)
    assert ONNX_OPS == ("RNN", "LSTM", "GRU")
    assert kind_of_onnx("RNN") is KINDS["rnn_tanh"] and kind_of_onnx("RNN", ("Relu",)) is KINDS["rnn_relu"]
    with pytest.raises(ValueError, match="activations"):
        kind_of_onnx("RNN", ("Sigmoid",))


def test_a_mark_reads_back_from_a_node_proto_and_an_ir_node():
    mark = LayerMark("gru", "encoder.rnn", 1, "state_in", "h")
    node = helper.make_node("Gather", ["s", "i"], ["h"], name="g")
    assert LayerMark.of(node) is None
    mark.stamp(node)
    mark.stamp(node)  # a second stamp replaces the first
    assert [p.key for p in node.metadata_props] == [MARK_KEY]
    assert LayerMark.of(node) == mark and LayerMark.of(ir.from_proto(node)) == mark
    assert '"index":1' in node.metadata_props[0].value
    node.metadata_props[0].value = '{"kind": "gru"'  # malformed: no mark rather than an error
    assert LayerMark.of(node) is None
    node.metadata_props[0].value = '{"kind": "elman", "layer": "x", "role": "cell"}'  # unknown kind
    assert LayerMark.of(node) is None
