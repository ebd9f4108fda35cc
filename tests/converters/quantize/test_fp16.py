"""float16 and mixed float16/float32 conversion: the contract survives, long streams stay close to
the float model, and mixed mode keeps the recurrent state path in float32 (checked on the graph).

Each architecture is a small classifier (Linear frontend, 2-layer RNN/LSTM/GRU, Linear head) so
that mixed mode has both a state path to keep and a frontend and head to convert.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import edgernn
from edgernn.contract import read_metadata
from edgernn.converters.quantize.accuracy import compare, synthetic_streams
from edgernn.converters.quantize.fp16 import state_path_nodes, to_fp16
from edgernn.errors import EdgernnError
from edgernn.runtimes import StreamingSession

KINDS = ("RNN", "LSTM", "GRU")
MODES = ("chunk", "step")
STEPS = 2000
# Measured on these models over 2,000 synthetic steps (onnxruntime 1.32, x86 CPU): largest output
# error 1.3e-4 (RNN chunk, fp16), largest final-state error 2.6e-4 (RNN chunk, fp16); every
# argmax decision agreed. The bounds leave about 8x margin for other CPUs' kernels.
MAX_OUTPUT_ERROR = 1e-3
MAX_STATE_ERROR = 2e-3
MIN_AGREEMENT = 0.99


class Classifier(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.front = nn.Linear(6, 8)
        self.rnn = getattr(nn, kind)(8, 16, num_layers=2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        y, _ = self.rnn(torch.relu(self.front(x)))
        return self.head(y)


_EXPORTS: dict[tuple[str, str], onnx.ModelProto] = {}


def exported(kind: str, mode: str) -> onnx.ModelProto:
    """The float model of ``kind`` in ``mode`` (exported once per test session)."""
    if (kind, mode) not in _EXPORTS:
        torch.manual_seed(0)
        report = edgernn.export(Classifier(kind).eval(), None, mode=mode)
        assert report.passed
        _EXPORTS[kind, mode] = report.model
    return _EXPORTS[kind, mode]


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    g = onnx.shape_inference.infer_shapes(model).graph
    types = {t.name: t.data_type for t in g.initializer}
    for v in (*g.input, *g.output, *g.value_info):
        types[v.name] = v.type.tensor_type.elem_type
    return types


@pytest.mark.parametrize("mixed", [False, True], ids=["fp16", "mixed"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_converted_file_keeps_the_contract_and_stays_close_over_a_long_stream(kind, mode, mixed):
    model = exported(kind, mode)
    before = model.SerializeToString()
    converted, in_fp16, kept = to_fp16(model, mixed=mixed)
    assert model.SerializeToString() == before, "to_fp16 must not modify its input"
    assert in_fp16 and kept
    onnx.checker.check_model(converted)  # a valid graph: typed, nodes in topological order
    # the contract and every other metadata entry are intact; the runtime streams the file
    assert {p.key: p.value for p in converted.metadata_props} == {p.key: p.value for p in model.metadata_props}
    assert read_metadata(converted) == read_metadata(model)
    session = StreamingSession(converted.SerializeToString())
    assert [s.dtype for s in session.states] == ["float32"] * len(session.states)
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT
               for v in (*converted.graph.input, *converted.graph.output))
    # outputs and carried state stay close to the float model over a long stream
    report = compare(model, converted, synthetic_streams(read_metadata(model), STEPS, model=model),
                     data_source="synthetic")
    assert report.steps == STEPS
    assert report.max_error <= MAX_OUTPUT_ERROR, report.to_json()
    assert max(report.state_errors.values()) <= MAX_STATE_ERROR, report.state_errors
    assert report.min_agreement >= MIN_AGREEMENT


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_mixed_keeps_every_node_on_the_state_path_in_float32(kind, mode):
    model = exported(kind, mode)
    path = state_path_nodes(model, read_metadata(model))
    assert path, "the state path is never empty for a recurrent model"
    converted, in_fp16, kept = to_fp16(model, mixed=True)
    types = _elem_types(converted)
    nodes = {n.name: n for n in converted.graph.node}
    for name in path:
        node = nodes[name]
        dtypes = {types.get(t) for t in (*node.input, *node.output) if t}
        assert TensorProto.FLOAT16 not in dtypes, f"{node.op_type} {name} on the state path touches float16"
        # its weights are float32 initializers themselves, not float16 ones cast up
        for t in node.input:
            weight = next((i for i in converted.graph.initializer if i.name == t), None)
            assert weight is None or weight.data_type != TensorProto.FLOAT16
    # and nothing inserted on the path of the converted graph (a cast round trip) touches float16
    for name in state_path_nodes(converted, read_metadata(model)):
        node = nodes[name]
        assert TensorProto.FLOAT16 not in {types.get(t) for t in (*node.input, *node.output) if t}, name
    kept_names = {d.name for d in kept}
    assert set(path) <= kept_names
    assert all(d.dtype == "float32" and d.why for d in kept)
    # the frontend and the head are not on the path: their weights went to float16
    assert {d.name for d in in_fp16}.isdisjoint(path)
    assert any(d.op_type == "MatMul" for d in in_fp16)


@pytest.mark.parametrize("mode", MODES)
def test_plain_fp16_stores_the_recurrent_weights_in_float16(mode):
    model = exported("GRU", mode)
    plain, in_fp16, kept = to_fp16(model, mixed=False)
    mixed, *_ = to_fp16(model, mixed=True)
    # GRU-16 weights are most of the file; names and the graph are the rest (0.72 measured)
    assert plain.ByteSize() < 0.8 * model.ByteSize()
    assert plain.ByteSize() < mixed.ByteSize() < model.ByteSize()
    recurrent = [d for d in in_fp16 if d.op_type in ("GRU", "MatMul")]
    assert recurrent and all("float16" in d.why for d in recurrent)


def test_no_float16_round_trips_between_float32_nodes():
    """The converter casts every tensor between two float32 nodes to float16 and back; those
    round trips would round the carried state at every step, so they must be gone."""
    for mode in MODES:
        for mixed in (False, True):
            converted, *_ = to_fp16(exported("LSTM", mode), mixed=mixed)
            producer = {o: n for n in converted.graph.node for o in n.output}
            for n in converted.graph.node:
                if n.op_type == "Cast" and n.input[0] in producer:
                    inner = producer[n.input[0]]
                    assert inner.op_type != "Cast", f"{inner.name} -> {n.name} is a cast round trip"


def test_exclude_keeps_named_nodes_and_op_types_in_float32():
    model = exported("GRU", "step")
    head = next(n.name for n in reversed(model.graph.node) if n.op_type == "MatMul")
    converted, in_fp16, kept = to_fp16(model, mixed=False, exclude=[head, "Relu"])
    why = {d.name: d.why for d in kept}
    assert why[head] == "excluded by the user"
    assert all(why[n.name] == "excluded by the user" for n in model.graph.node if n.op_type == "Relu")
    weight = next(n for n in converted.graph.node if n.name == head).input[1]
    assert next(i for i in converted.graph.initializer if i.name == weight).data_type == TensorProto.FLOAT
    with pytest.raises(EdgernnError, match="'no_such_node' matches no node name or op type"):
        to_fp16(model, mixed=False, exclude=["no_such_node"])


def test_mixed_needs_the_state_contract():
    model = exported("GRU", "chunk")
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.metadata_props[:]
    with pytest.raises(EdgernnError, match="no edgernn metadata"):
        to_fp16(bare, mixed=True)
    converted, *_ = to_fp16(bare, mixed=True, contract=read_metadata(model))
    assert not converted.metadata_props


def _layer_norm_then_matmul() -> onnx.ModelProto:
    """x -> LayerNormalization -> Transpose -> MatMul: LayerNormalization has a float16 CPU kernel,
    MatMul has none. A float16 Transpose cast up into MatMul crashes onnxruntime 1.32 (SIGSEGV in
    session creation), so the Transpose must stay float32."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], axis=-1, name="norm"),
             helper.make_node("Transpose", ["n"], ["t"], perm=[1, 0, 2], name="swap"),
             helper.make_node("MatMul", ["t", "w"], ["y"], name="proj")]
    weights = [numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "gamma"),
               numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "beta"),
               numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", "b", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", 4])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_float16_kernels_run_in_float16_and_data_moves_stay_off_float32_edges(tmp_path):
    converted, in_fp16, kept = to_fp16(_layer_norm_then_matmul(), mixed=False)
    decided = {d.name: d for d in in_fp16 + kept}
    assert decided["norm"].dtype == "float16" and decided["norm"].why == "runs in float16"
    assert decided["swap"].dtype == "float32" and "moves data only" in decided["swap"].why
    assert decided["proj"].why.startswith("weights stored as float16, computed in float32: onnxruntime's CPU")
    # load and run it in a child process: a regression would crash the interpreter, not fail
    path = tmp_path / "ln.onnx"
    onnx.save(converted, path)
    script = textwrap.dedent(f"""
        import numpy as np, onnxruntime as ort
        from edgernn.runtimes.session import session_options
        s = ort.InferenceSession({str(path)!r}, session_options(1), providers=["CPUExecutionProvider"])
        print(s.run(None, {{"x": np.ones((3, 2, 8), np.float32)}})[0].shape)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(2, 3, 4)"


def test_a_model_without_float_work_is_refused():
    node = helper.make_node("Identity", ["ids"], ["out"], name="same")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
                              [helper.make_tensor_value_info("out", TensorProto.INT64, ["n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(EdgernnError, match="no float32 nodes or weights"):
        to_fp16(model, mixed=False)
