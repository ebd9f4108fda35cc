"""Lowering ONNX GRU / RNN / LSTM ops to MatMul cells with a Scan (converters/quantize/lowering.py):
the lowered graph computes what the original computes (checked through onnxruntime, random state),
and a node the cells cannot express is left alone with the reason recorded."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import edgernn
from edgernn.converters.quantize.lowering import RECURRENT_OPS, lower_recurrent_ops
from edgernn.recurrent_kinds import KINDS, LayerMark

ATOL = 1e-5  # fp32 tolerance of the project (VISION.md); measured: at most 2.1e-7 on these graphs


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _feeds(model: onnx.ModelProto, time: int, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Random data and random (non-zero) state for every graph input; symbolic dims resolved."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for v in model.graph.input:
        if v.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else {"time": time}.get(d.dim_param, batch)
                for d in v.type.tensor_type.shape.dim]
        feeds[v.name] = (0.8 * rng.standard_normal(dims)).astype(np.float32)
    return feeds


def _op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def _assert_same_outputs(original: onnx.ModelProto, lowered: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    want, got = _run(original, feeds), _run(lowered, feeds)
    assert [o.name for o in lowered.graph.output] == [o.name for o in original.graph.output]
    for name, a, b in zip([o.name for o in original.graph.output], want, got):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(b, a, atol=ATOL, rtol=0, err_msg=name)
        assert np.abs(a).max() > 1e-2, f"{name} is ~0: the comparison would prove nothing"


# ---------------------------------------------------------------- edgernn exports

EXPORTS = {
    "gru-2layer": (lambda: nn.GRU(8, 12, num_layers=2), "chunk", "GRU", 2),
    "lstm": (lambda: nn.LSTM(8, 12), "chunk", "LSTM", 1),
    "rnn-tanh": (lambda: nn.RNN(8, 12), "chunk", "RNN", 1),
    "rnn-relu": (lambda: nn.RNN(8, 12, nonlinearity="relu"), "chunk", "RNN", 1),
    "gru-no-bias": (lambda: nn.GRU(8, 12, bias=False), "chunk", "GRU", 1),
    "lstm-no-bias": (lambda: nn.LSTM(8, 12, bias=False), "chunk", "LSTM", 1),
    "gru-bidirectional": (lambda: nn.GRU(8, 12, bidirectional=True), "sequence", "GRU", 1),
    "lstm-bidirectional-2layer": (lambda: nn.LSTM(8, 12, num_layers=2, bidirectional=True), "sequence", "LSTM", 2),
    "rnn-relu-bidirectional": (lambda: nn.RNN(8, 12, nonlinearity="relu", bidirectional=True), "sequence", "RNN", 1),
}


@pytest.mark.parametrize("case", list(EXPORTS))
def test_lowered_export_matches_the_original_graph(case):
    make, mode, op, count = EXPORTS[case]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = edgernn.export(make().eval(), None, mode=mode, verify=False).model
    assert _op_counts(model)[op] == count
    before = model.SerializeToString()
    lowered, record = lower_recurrent_ops(model)
    assert model.SerializeToString() == before, "lower_recurrent_ops must not modify its input"
    counts = _op_counts(lowered)
    assert not any(counts[o] for o in RECURRENT_OPS), counts
    directions = 2 if mode == "sequence" else 1
    assert counts["Scan"] == count * directions
    assert [(r.op_type, r.done) for r in record] == [(op, True)] * count
    assert all("MatMul cells" in r.why for r in record)
    # the Scan bodies hold the recurrence MatMul, with a constant weight
    for node in lowered.graph.node:
        if node.op_type == "Scan":
            body = next(a.g for a in node.attribute if a.name == "body")
            weights = {t.name for t in body.initializer}
            assert [n.input[1] in weights for n in body.node if n.op_type == "MatMul"] == [True]
    onnx.checker.check_model(lowered, full_check=True)
    for time, batch, seed in ((7, 3, 0), (1, 1, 1)):
        _assert_same_outputs(model, lowered, _feeds(model, time, batch, seed))


def test_excluded_node_is_kept_with_the_reason():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = edgernn.export(nn.GRU(8, 12, num_layers=2).eval(), None, verify=False).model
    names = [n.name for n in model.graph.node if n.op_type == "GRU"]
    lowered, record = lower_recurrent_ops(model, exclude=[names[1]])
    assert [(r.name, r.done) for r in record] == [(names[0], True), (names[1], False)]
    assert record[1].why == "excluded by the user"
    assert [n.name for n in lowered.graph.node if n.op_type == "GRU"] == [names[1]]
    _assert_same_outputs(model, lowered, _feeds(model, 5, 2, 3))


# ---------------------------------------------------------------- hand-built ONNX ops

T, B, I, H = 6, 2, 5, 7
GATES = {k.onnx_op: k.gates for k in KINDS.values()}


def _hand_built(op: str, *, attrs: dict | None = None, initial: bool = True, seq_lens: bool = False,
                weights_as_input: bool = False, peephole: bool = False, outputs=("Y", "Y_h")) -> onnx.ModelProto:
    """One ONNX recurrent op on X [T, B, I] with random W, R, B initializers (ONNX gate order)."""
    rng = np.random.default_rng(7)
    g = GATES[op]
    f32 = TensorProto.FLOAT
    arrays = {"W": rng.normal(0, 0.4, (1, g * H, I)), "R": rng.normal(0, 0.4, (1, g * H, H)),
              "B": rng.normal(0, 0.3, (1, 2 * g * H))}
    if peephole:
        arrays["P"] = rng.normal(0, 0.3, (1, 3 * H))
    inits = [numpy_helper.from_array(a.astype(np.float32), k) for k, a in arrays.items()
             if not (weights_as_input and k == "W")]
    graph_inputs = [helper.make_tensor_value_info("X", f32, [T, B, I])]
    if weights_as_input:
        graph_inputs.append(helper.make_tensor_value_info("W", f32, [1, g * H, I]))
    ins = ["X", "W", "R", "B", "", "", ""]
    if seq_lens:
        inits.append(numpy_helper.from_array(np.full(B, T, np.int32), "lens"))
        ins[4] = "lens"
    if initial:
        ins[5] = "h0"
        graph_inputs.append(helper.make_tensor_value_info("h0", f32, [1, B, H]))
        if op == "LSTM":
            ins[6] = "c0"
            graph_inputs.append(helper.make_tensor_value_info("c0", f32, [1, B, H]))
    if peephole:
        ins.append("P")
    while ins and not ins[-1]:
        ins.pop()
    node_outputs = [o if o in outputs else "" for o in ("Y", "Y_h", "Y_c")[: 3 if op == "LSTM" else 2]]
    while node_outputs and not node_outputs[-1]:
        node_outputs.pop()
    shapes = {"Y": [T, 1, B, H], "Y_h": [1, B, H], "Y_c": [1, B, H]}
    node = helper.make_node(op, ins, node_outputs, name=f"my_{op.lower()}", hidden_size=H, **(attrs or {}))
    graph = helper.make_graph([node], "g", graph_inputs, [helper.make_tensor_value_info(o, f32, shapes[o])
                                                           for o in node_outputs if o], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


LOWERABLE = {
    "gru-lbr1": ("GRU", dict(attrs={"linear_before_reset": 1})),
    "gru-lbr1-no-initial-state": ("GRU", dict(attrs={"linear_before_reset": 1}, initial=False)),
    "gru-lbr1-only-Y_h": ("GRU", dict(attrs={"linear_before_reset": 1}, outputs=("Y_h",))),
    "lstm-all-outputs": ("LSTM", dict(outputs=("Y", "Y_h", "Y_c"))),
    "lstm-no-initial-state": ("LSTM", dict(initial=False, outputs=("Y", "Y_c"))),
    "rnn-default-tanh": ("RNN", {}),
    "rnn-relu": ("RNN", dict(attrs={"activations": ["Relu"]})),
}


@pytest.mark.parametrize("case", list(LOWERABLE))
def test_hand_built_op_is_lowered_with_onnx_gate_order(case):
    """Weights in ONNX's gate order (z,r,n / i,o,f,c) must come out right in the cells."""
    op, kw = LOWERABLE[case]
    model = _hand_built(op, **kw)
    lowered, record = lower_recurrent_ops(model)
    assert [(r.name, r.op_type, r.done) for r in record] == [(f"my_{op.lower()}", op, True)]
    assert _op_counts(lowered)[op] == 0 and _op_counts(lowered)["Scan"] == 1
    _assert_same_outputs(model, lowered, _feeds(model, T, B, 5))


NOT_LOWERABLE = {
    "gru-linear_before_reset=0": ("GRU", {}, "linear_before_reset=0"),
    "sequence_lens": ("GRU", dict(attrs={"linear_before_reset": 1}, seq_lens=True), "sequence_lens"),
    "clip": ("RNN", dict(attrs={"clip": 2.0}), "clip"),
    "weights-not-constant": ("RNN", dict(weights_as_input=True), "W weights are not constant initializers"),
    "lstm-peephole": ("LSTM", dict(peephole=True), "peephole"),
    "lstm-input_forget": ("LSTM", dict(attrs={"input_forget": 1}), "input_forget"),
    "rnn-sigmoid": ("RNN", dict(attrs={"activations": ["Sigmoid"]}), "activations ['Sigmoid']"),
}


def test_lowered_cells_carry_the_mark_of_the_op_they_replace():
    lowered, _ = lower_recurrent_ops(_hand_built("LSTM"))
    scan = next(n for n in lowered.graph.node if n.op_type == "Scan")
    assert LayerMark.of(scan) == LayerMark("lstm", "my_lstm", 0, "scan")
    body = next(a.g for a in scan.attribute if a.name == "body")
    assert {LayerMark.of(n).role for n in body.node if n.op_type == "MatMul"} == {"recurrence"}


@pytest.mark.parametrize("case", list(NOT_LOWERABLE))
def test_node_that_cannot_be_lowered_is_left_alone_with_the_reason(case):
    op, kw, reason = NOT_LOWERABLE[case]
    model = _hand_built(op, **kw)
    lowered, record = lower_recurrent_ops(model)
    assert len(record) == 1 and not record[0].done and record[0].op_type == op
    assert record[0].why.startswith("not lowered: ") and reason in record[0].why, record[0].why
    assert [n.SerializeToString() for n in lowered.graph.node] == [n.SerializeToString() for n in model.graph.node]
    assert {t.name for t in lowered.graph.initializer} == {t.name for t in model.graph.initializer}
    _assert_same_outputs(model, lowered, _feeds(model, T, B, 6))
