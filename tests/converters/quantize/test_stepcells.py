"""Step-mode layers rewritten for dynamic int8 (converters/quantize/stepcells.py): every recurrent
layer of a step export, in either form (ONNX GRU/LSTM ops or MatMul cells), comes out as one MatMul
over [x, h] (GRU, Elman RNN) or one one-frame LSTM op, computing what the input computes; after
quantize() onnxruntime runs one DynamicQuantizeMatMul (or DynamicQuantizeLSTM) per layer and no
per-layer Gather/Squeeze/Unsqueeze; the report names the input file's nodes; anything the rewrite
does not recognize, or gets wrong, is left as it was. The layers are found by the marks the export
writes; files without marks (older edgernn) by recognition, which must find the same layers."""

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
from edgernn.converters.quantize import quantize, stepcells
from edgernn.converters.quantize.graph import same_outputs
from edgernn.converters.quantize.recognize import mark_recognized_cells
from edgernn.converters.quantize.stepcells import fuse_step_cells
from edgernn.recurrent_kinds import MARK_KEY, LayerMark

LAYERS = 2


def _export(kind: str, cells: str, *, bias: bool = True, layers: int = LAYERS, relu: bool = False) -> onnx.ModelProto:
    torch.manual_seed(0)
    extra = {"nonlinearity": "relu"} if relu else {}
    module = getattr(nn, kind)(8, 12, num_layers=layers, bias=bias, batch_first=True, **extra).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return edgernn.export(module, None, mode="step", cells=cells, verify=False).model


def _unmarked(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` as edgernn wrote it before it marked its layers."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    for node in out.graph.node:
        keep = [p for p in node.metadata_props if p.key != MARK_KEY]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    return out


def _stream(model: onnx.ModelProto, frames: int = 6, batch: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Outputs of ``frames`` calls, state carried, from a random (nonzero) start state."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    names = [i.name for i in session.get_inputs()]
    state = {i.name: (0.5 * rng.standard_normal([d if isinstance(d, int) else batch for d in i.shape]))
             .astype(np.float32) for i in session.get_inputs() if i.name.startswith("state_in.")}
    outs = []
    for _ in range(frames):
        feeds = {"x": rng.standard_normal((batch, 1, 8)).astype(np.float32), **state}
        result = dict(zip([o.name for o in session.get_outputs()], session.run(None, {n: feeds[n] for n in names})))
        outs.append(np.concatenate([v.ravel() for v in result.values()]))
        state = {n: result[n.replace("state_in.", "state_out.")] for n in state}
    return outs


def _optimized(path_or_model, tmp_path) -> Counter:
    """Op counts of the graph onnxruntime runs (ORT_ENABLE_ALL, as edgernn's sessions)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    model = path_or_model if isinstance(path_or_model, str) else path_or_model.SerializeToString()
    ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)


CASES = [("GRU", "auto", {}), ("GRU", "matmul", {}), ("LSTM", "matmul", {}), ("RNN", "auto", {}),
         ("GRU", "matmul", {"bias": False}), ("LSTM", "matmul", {"bias": False}), ("RNN", "matmul", {"relu": True}),
         ("GRU", "auto", {"layers": 1}), ("RNN", "matmul", {"layers": 3})]


@pytest.mark.parametrize("marks", ["marked", "unmarked"])
@pytest.mark.parametrize("kind, cells, kw", CASES, ids=[f"{k}-{c}-{'-'.join(f'{a}={b}' for a, b in kw.items())}"
                                                        for k, c, kw in CASES])
def test_every_layer_is_rewritten_and_computes_the_same(kind, cells, kw, marks):
    model = _export(kind, cells, **kw)
    if marks == "unmarked":
        model = _unmarked(model)
    before = model.SerializeToString()
    fused, layers = fuse_step_cells(model)
    assert model.SerializeToString() == before, "fuse_step_cells must not modify its input"
    n = kw.get("layers", LAYERS)
    assert len(layers) == n and {l.kind for l in layers} == {"gru" if kind == "GRU" else "lstm" if kind == "LSTM"
                                                              else "rnn_relu" if kw.get("relu") else "rnn_tanh"}
    ops = Counter(node.op_type for node in fused.graph.node)
    assert not ops["Gather"] and not ops["Squeeze"] and not ops["Unsqueeze"] and not ops["GRU"] and not ops["RNN"]
    if kind == "LSTM":
        assert ops["LSTM"] == n and not ops["MatMul"]
    else:  # one MatMul per layer, over Concat(x, h)
        made = {o: node for node in fused.graph.node for o in node.output}
        matmuls = [node for node in fused.graph.node if node.op_type == "MatMul"]
        assert len(matmuls) == n and all(made[m.input[0]].op_type == "Concat" for m in matmuls)
    # the contract's names and metadata are untouched
    assert [v.name for v in fused.graph.input] == [v.name for v in model.graph.input]
    assert [v.name for v in fused.graph.output] == [v.name for v in model.graph.output]
    assert fused.metadata_props == model.metadata_props
    onnx.checker.check_model(fused, full_check=True)
    for a, b in zip(_stream(model), _stream(fused)):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind, layers, nodes", [("GRU", 2, 26), ("LSTM", 2, 8), ("RNN", 3, 13)])
@pytest.mark.parametrize("cells", ["auto", "matmul"])
def test_quantized_step_file_runs_one_int8_kernel_per_layer(tmp_path, kind, layers, nodes, cells):
    """The graph onnxruntime runs for a bare layer stack: Transpose in and out, one Split and one Concat
    per state, and per layer one DynamicQuantizeMatMul (+ Concat and the gates) or one DynamicQuantizeLSTM.
    Measured (onnxruntime 1.32, 1 thread, batch 1, 64 inputs, 256 units, x86 AVX512-VNNI): 2-layer GRU
    32.0 us (was 35.2), 2-layer LSTM 35.6-36.2 us (was 43.5 from MatMul cells), 3-layer Elman RNN 20.2 us
    (was 25.9); see converters/quantize/stepcells.py."""
    torch.manual_seed(0)
    module = getattr(nn, kind)(16, 24, num_layers=layers, batch_first=True).eval()
    path = tmp_path / "step.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edgernn.export(module, path, mode="step", cells=cells, verify=False)
    report = quantize(path, steps=200)
    ops = _optimized(report.path, tmp_path)
    assert sum(ops.values()) == nodes, ops
    if kind == "LSTM":
        assert ops["DynamicQuantizeLSTM"] == layers
    else:
        assert ops["DynamicQuantizeMatMul"] == layers and not ops["MatMulInteger"]
    assert not ops["Gather"] and not ops["Squeeze"] and not ops["Unsqueeze"] and not ops["Scan"]
    # the report names the input file's nodes: two MatMuls per layer, or the recurrent op
    float_ops = {n.name: n.op_type for n in onnx.load(path).graph.node}
    assert report.quantized and not report.kept_float
    assert all(d.name in float_ops and d.op_type == float_ops[d.name] and "int8" in d.why for d in report.quantized)
    recurrent = [n for n, op in float_ops.items() if op == kind.upper()]
    if recurrent:  # cells="auto" exported the ONNX op
        assert sorted(d.name for d in report.quantized if d.op_type == kind.upper()) == sorted(recurrent)
    else:
        cell = [d for d in report.quantized if "one-frame" in d.why]
        assert len(cell) == 2 * layers and all("merged with" in d.why for d in cell)
    assert report.accuracy.max_error < 0.03


@pytest.mark.parametrize("kind", ["GRU", "LSTM", "RNN"])
def test_recognition_marks_a_file_without_marks_as_the_export_does(kind):
    """The fallback for files without marks writes the roles the export writes, on the same nodes;
    a marked file is left to its marks."""
    model = _export(kind, "matmul")
    assert mark_recognized_cells(model) is model

    def roles(m: onnx.ModelProto) -> dict[str, tuple[str, str | None]]:  # node -> (role, part), layout left out
        marks = {n.name: LayerMark.of(n) for n in m.graph.node}
        return {name: (mark.role, mark.part) for name, mark in marks.items() if mark and mark.role != "glue"}

    assert roles(model) and roles(mark_recognized_cells(_unmarked(model))) == roles(model)


@pytest.mark.parametrize("marks", ["marked", "unmarked"])
def test_gru_weight_is_stored_without_its_zero_blocks(tmp_path, marks):
    model = _export("GRU", "matmul")
    if marks == "unmarked":  # a file of an edgernn that did not mark its layers quantizes the same
        model = _unmarked(model)
    path = tmp_path / "gru.onnx"
    onnx.save(model, path)
    report = quantize(path, steps=100, min_size=0)  # a GRU of 12 units: int8 does not pay, every matrix anyway
    q = onnx.load(report.path)
    int8 = [t for t in q.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 2]  # (not zero points)
    assert sum(int(np.prod(t.dims)) for t in int8) == sum(int(np.prod(t.dims)) for t in model.graph.initializer
                                                          if len(t.dims) == 2)  # W_ih and W_hh, nothing more
    assert not any((numpy_helper.to_array(t) == 0).all(axis=0).any() for t in int8)
    ops = Counter(n.op_type for n in q.graph.node)
    assert ops["ConstantOfShape"] == 2 * LAYERS  # the zero blocks, rebuilt when the session loads
    assert _optimized(report.path, tmp_path)["DynamicQuantizeMatMul"] == LAYERS  # ...folded into a constant weight


def test_an_excluded_matmul_keeps_its_layer_as_it_was(tmp_path):
    model = _export("GRU", "matmul")
    path = tmp_path / "gru.onnx"
    onnx.save(model, path)
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"]  # x, h of layer 0, then of layer 1
    report = quantize(path, exclude=[matmuls[3]], steps=100, write=False)
    kept = {d.name: d.why for d in report.kept_float}
    assert kept == {matmuls[3]: "excluded by the user"}
    done = {d.name: d.why for d in report.quantized}
    assert set(done) == set(matmuls[:3])
    assert f"merged with {matmuls[1]}" in done[matmuls[0]] and f"merged with {matmuls[0]}" in done[matmuls[1]]
    assert done[matmuls[2]].startswith("dynamic int8 MatMul")
    names = {n.name for n in report.model.graph.node}
    assert matmuls[3] in names and matmuls[2] not in names  # layer 1 as before (its x MatMul made int8)


def _one_frame_op(op: str, time: int | str, direction: str = "forward") -> onnx.ModelProto:
    """One ONNX GRU (linear_before_reset=1) or RNN op on X [time, B, 5], state [1, B, 7]."""
    rng = np.random.default_rng(3)
    gates, H, I = (3 if op == "GRU" else 1), 7, 5
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, s).astype(np.float32), n)
             for n, s in (("W", (1, gates * H, I)), ("R", (1, gates * H, H)), ("B", (1, 2 * gates * H)))]
    attrs = {"linear_before_reset": 1} if op == "GRU" else {}
    node = helper.make_node(op, ["X", "W", "R", "B", "", "h0"], ["Y", "Y_h"], name=f"my_{op.lower()}", hidden_size=H,
                            direction=direction, **attrs)
    squeeze = helper.make_node("Squeeze", ["Y", "axis1"], ["y"], name="squeeze")
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    f32 = TensorProto.FLOAT
    graph = helper.make_graph([node, squeeze], "g", [helper.make_tensor_value_info("X", f32, [time, "B", I]),
                                                     helper.make_tensor_value_info("h0", f32, [1, "B", H])],
                              [helper.make_tensor_value_info("y", f32, None),
                               helper.make_tensor_value_info("Y_h", f32, None)],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("op", ["GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_an_onnx_op_on_one_frame_becomes_a_cell(op, direction):
    model = _one_frame_op(op, 1, direction)
    fused, layers = fuse_step_cells(model)
    assert [(l.replaced, l.kind) for l in layers] == [([(f"my_{op.lower()}", op)], op.lower() if op == "GRU"
                                                       else "rnn_tanh")]
    ops = Counter(n.op_type for n in fused.graph.node)
    assert not ops[op] and ops["MatMul"] == 1 and not ops["Squeeze"]  # y reads h' (an Identity onnxruntime drops)
    assert same_outputs(model, fused, tolerance=1e-5)


def test_an_op_over_more_than_one_frame_is_left_alone():
    model = _one_frame_op("GRU", "time")  # step mode or not, its time axis is not known to be 1
    fused, layers = fuse_step_cells(model)
    assert layers == [] and fused is model


def test_a_wrong_rewrite_is_dropped(monkeypatch):
    model = _export("GRU", "matmul")
    real = stepcells.emit_cell

    def wrong(b, prefix, spec, x, h, c):
        made = real(b, prefix, spec, x, h, c)
        for node in b.tape.nodes:
            if node.op_type == "Sigmoid":
                node.op_type = "Tanh"
        return made

    monkeypatch.setattr(stepcells, "emit_cell", wrong)
    fused, layers = fuse_step_cells(model)
    assert layers == [] and fused is model


def test_cells_that_are_not_edgernns_are_left_alone():
    """An LSTM with a projection (its cell ends in a MatMul the rebuilt cell does not have)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = edgernn.export(nn.LSTM(8, 12, proj_size=6, batch_first=True).eval(), None, mode="step",
                               verify=False).model
    fused, layers = fuse_step_cells(model)
    assert layers == [] and fused is model
