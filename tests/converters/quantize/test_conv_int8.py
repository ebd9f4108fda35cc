"""Dynamic int8 for convolutions (``converters/quantize/convolution.py``): int8 weights, one scale
per output channel, read through Cast and Mul, which onnxruntime folds into a float weight when the
session loads; the activations stay float.

A conv-frontend + GRU export (two causal Conv1d with context caches, a GRU, a Linear head) is
quantized with ``--method dynamic``: every convolution is int8 in the report and in the file, the
file is smaller than with float convolutions, the accuracy check passes, and onnxruntime's
optimized graph reads a float weight again (no per-call dequantization). A small hand-made graph
checks the rewrite itself: per-channel scales, a weight two convolutions share stored once, a
weight from a ``Constant`` node, a convolution inside a ``Scan`` body, and one excluded by name.
(silero-vad's look-alike is quantized with its convolutions in tests/test_published_files.py.)
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import edgernn
from edgernn.converters.quantize import quantize
from edgernn.converters.quantize.convolution import HOW, int8_conv_weights

STEPS = 600


class ConvFrontendGRU(nn.Module):
    """x [batch, 16, time] -> causal Conv1d(16 -> 96, k5) -> causal Conv1d(96 -> 96, k5, d2) -> GRU(96 -> 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(16, 96, 5, padding=4)
        self.conv2 = nn.Conv1d(96, 96, 5, padding=8, dilation=2)
        self.gru = nn.GRU(96, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        t = x.shape[-1]
        h = torch.relu(self.conv1(x)[..., :t])
        h = torch.relu(self.conv2(h)[..., :t])
        y, _ = self.gru(h.transpose(1, 2))
        return self.head(y)


def test_conv_frontend_gru_gets_int8_convolutions(tmp_path) -> None:
    torch.manual_seed(0)
    fp32 = tmp_path / "conv_gru.onnx"
    edgernn.export(ConvFrontendGRU().eval(), fp32, mode="chunk")
    convs = [n.name for n in onnx.load(fp32).graph.node if n.op_type == "Conv"]
    report = quantize(fp32, tmp_path / "conv_gru.int8.onnx", steps=STEPS)
    floats = quantize(fp32, tmp_path / "conv_gru.convs_float.onnx", steps=STEPS, exclude=convs)
    assert len(convs) == 2
    made = {d.name: d for d in report.quantized}
    assert all(made[c].dtype == "int8" and made[c].why == HOW for c in convs), report.quantized
    assert {d.name for d in floats.kept_float if d.op_type == "Conv"} == set(convs)
    # the convolutions hold most of the weights: int8 takes the file far below float convolutions
    assert report.size_ratio < 0.35 and report.size_after < 0.4 * floats.size_after, (report.size_ratio,
                                                                                     floats.size_ratio)
    assert report.accuracy.max_error < 0.03, report.accuracy.max_error
    assert max(report.accuracy.state_errors.values()) < 0.05, report.accuracy.state_errors
    assert report.accuracy.min_agreement >= 0.97

    q = onnx.load(report.path)
    inits = {t.name: t for t in q.graph.initializer}
    producers = {o: n for n in q.graph.node for o in n.output}
    for node in (n for n in q.graph.node if n.op_type == "Conv"):
        mul = producers[node.input[1]]
        cast = producers[mul.input[0]]
        assert (mul.op_type, cast.op_type) == ("Mul", "Cast")
        w, scale = inits[cast.input[0]], numpy_helper.to_array(inits[mul.input[1]])
        assert w.data_type == TensorProto.INT8 and scale.shape == (w.dims[0], 1, 1)  # one scale per channel
    # onnxruntime folds Cast and Mul into a float weight at load: the convolutions run as in fp32
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(report.path, options, providers=["CPUExecutionProvider"])
    opt = onnx.load(options.optimized_model_filepath)
    opt_inits = {t.name: t for t in opt.graph.initializer}
    conv_weights = [opt_inits.get(n.input[1]) for n in opt.graph.node if n.op_type == "Conv"]
    assert len(conv_weights) == 2 and all(w is not None and w.data_type == TensorProto.FLOAT for w in conv_weights)


def _graph() -> onnx.ModelProto:
    """x [1, 4, 9] -> conv_a (weight W) -> conv_b (the same W) -> conv_c (a Constant node's weight)
    -> Scan over axis 0 of a [2, 1, 4, 9] input whose body holds conv_d (the body's own weight)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 4, 3)).astype(np.float32)
    w[1] *= 20.0  # a channel far larger than the others: a per-tensor scale would flatten the rest
    wc = rng.standard_normal((4, 4, 1)).astype(np.float32)
    wd = rng.standard_normal((4, 4, 3)).astype(np.float32)
    body = helper.make_graph(
        [helper.make_node("Conv", ["s_in", "Wd"], ["s_out"], pads=[1, 1], name="conv_d")], "body",
        [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [1, 4, 9])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [1, 4, 9])],
        [numpy_helper.from_array(wd, "Wd")])
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["a"], pads=[1, 1], name="conv_a"),
        helper.make_node("Conv", ["a", "W"], ["b"], pads=[1, 1], name="conv_b"),
        helper.make_node("Constant", [], ["Wc"], value=numpy_helper.from_array(wc, "Wc")),
        helper.make_node("Conv", ["b", "Wc"], ["c"], name="conv_c"),
        helper.make_node("Conv", ["c", "W"], ["y"], pads=[1, 1], name="conv_kept"),
        helper.make_node("Scan", ["frames"], ["z"], body=body, num_scan_inputs=1, name="scan"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9]),
                                           helper.make_tensor_value_info("frames", TensorProto.FLOAT, [2, 1, 4, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 9]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 1, 4, 9])],
                              [numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _rounded(w: np.ndarray) -> np.ndarray:
    """``w`` as the rewrite stores it: symmetric int8, one scale per output channel."""
    scale = np.abs(w.reshape(w.shape[0], -1)).max(1).reshape(-1, 1, 1) / 127
    return np.clip(np.rint(w / scale), -127, 127) * scale


def test_rewrite_per_channel_shared_constant_and_subgraph_weights() -> None:
    model = _graph()
    out, done = int8_conv_weights(model, exclude=["conv_kept"])
    onnx.checker.check_model(out)
    assert done == {"conv_a", "conv_b", "conv_c", "conv_d"}
    inits = {t.name: t for t in out.graph.initializer}
    assert "W" in inits and inits["W"].data_type == TensorProto.FLOAT  # conv_kept still reads it
    assert sum(t.data_type == TensorProto.INT8 for t in out.graph.initializer) == 2  # W once (a and b), Wc
    body = next(n for n in out.graph.node if n.op_type == "Scan").attribute[0].g
    assert [t.name for t in body.initializer if t.data_type == TensorProto.INT8] == ["Wd.int8"]
    assert not any(n.op_type == "Constant" for n in out.graph.node)  # Wc's Constant node is gone

    # numbers: the rewritten graph computes the float graph with its weights rounded per channel
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((1, 4, 9)).astype(np.float32),
             "frames": rng.standard_normal((2, 1, 4, 9)).astype(np.float32)}
    want = _graph()
    tensors = {t.name: t for t in want.graph.initializer}
    w = numpy_helper.to_array(tensors["W"])
    graph_w = want.graph
    # conv_a/b/c/d rounded, conv_kept float: rebuild that graph by hand
    graph_w.initializer.append(numpy_helper.from_array(_rounded(w).astype(np.float32), "W_r"))
    for n in graph_w.node:
        if n.name in ("conv_a", "conv_b"):
            n.input[1] = "W_r"
        if n.op_type == "Constant":
            t = numpy_helper.to_array(n.attribute[0].t)
            n.attribute[0].t.CopyFrom(numpy_helper.from_array(_rounded(t).astype(np.float32), "Wc"))
        if n.op_type == "Scan":
            b = n.attribute[0].g.initializer[0]
            b.CopyFrom(numpy_helper.from_array(_rounded(numpy_helper.to_array(b)).astype(np.float32), "Wd"))
    for got, ref in zip(_run(out, feeds), _run(want, feeds)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    # and per channel, not per tensor: the small channels keep their precision beside the large one
    err = np.abs(_rounded(w) - w).reshape(4, -1).max(1)
    assert err[0] < 0.02 and err[1] > 5 * err[0]


def test_a_graph_without_convolutions_is_returned_as_it_is() -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph)
    out, done = int8_conv_weights(model)
    assert out is model and done == set()
