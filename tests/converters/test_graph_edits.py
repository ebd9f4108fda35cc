"""The graph edits the passes make with onnx-ir, on tiny graphs written in ONNX text: a state
moved batch-first at the graph's edge (describe-state-io) while a ``Scan`` body reads it, and
weights put back into the one subgraph that reads them (optimize). Op types first, then numbers
through onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort

from edgernn.converters.describe import transpose_state_io
from edgernn.converters.optimize import initializers_into_subgraphs

# state [L=2, batch, H=3]: the body of a one-frame Scan adds it to each frame; the new state is its double
STATEFUL = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[T, B, 3] x, float[2, B, 3] "state_in.s") => (float[T, B, 3] y, float[2, B, 3] "state_out.s")
  <int64[1] axis0 = {0}> {
    s0 = ReduceSum <keepdims = 0> ("state_in.s", axis0)
    y = Scan <num_scan_inputs = 1, body = body (float[B, 3] frame) => (float[B, 3] out) {
        out = Add (frame, s0)
    }> (x)
    "state_out.s" = Add ("state_in.s", "state_in.s")
}
"""


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_transpose_state_io_keeps_every_reader_on_the_native_layout() -> None:
    proto = onnx.parser.parse_model(STATEFUL)
    rng = np.random.default_rng(0)
    x, s = rng.standard_normal((4, 5, 3)).astype(np.float32), rng.standard_normal((2, 5, 3)).astype(np.float32)
    want_y, want_s = run(proto, {"x": x, "state_in.s": s})

    model = ir.serde.deserialize_model(proto)
    transpose_state_io(model.graph, "s", (1, 0, 2))
    out = ir.serde.serialize_model(model)
    onnx.checker.check_model(out, full_check=True)
    ops = [n.op_type for n in out.graph.node]
    assert ops[0] == ops[-1] == "Transpose" and ops.count("Transpose") == 2
    assert [i.name for i in out.graph.input] == ["x", "state_in.s"]
    assert [o.name for o in out.graph.output] == ["y", "state_out.s"]
    readers = [n for n in out.graph.node if "state_in.s" in n.input]
    assert [n.op_type for n in readers] == ["Transpose"]  # every other reader reads the native layout
    got_y, got_s = run(out, {"x": x, "state_in.s": np.ascontiguousarray(s.transpose(1, 0, 2))})
    np.testing.assert_array_equal(got_y, want_y)
    np.testing.assert_array_equal(got_s, want_s.transpose(1, 0, 2))


# "w" is read only by the first Scan body, "v" by both bodies, "b" by the main graph too
TWO_BODIES = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[T, 3] x) => (float[T, 3] y, float[T, 3] z)
  <float[3] w = {1.0, 2.0, 3.0}, float[3] v = {0.5, 0.5, 0.5}, float[3] b = {1.0, 1.0, 1.0}> {
    y = Scan <num_scan_inputs = 1, body = first (float[3] f) => (float[3] o) {
        a = Mul (f, w)
        o = Add (a, v)
    }> (x)
    z0 = Scan <num_scan_inputs = 1, body = second (float[3] f) => (float[3] o) {
        o = Sub (f, v)
    }> (x)
    z = Add (z0, b)
}
"""


def test_initializers_read_by_one_subgraph_move_into_it() -> None:
    proto = onnx.parser.parse_model(TWO_BODIES)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    want = run(proto, {"x": x})

    model = ir.serde.deserialize_model(proto)
    assert initializers_into_subgraphs(model.graph) == 1
    out = ir.serde.serialize_model(model)
    onnx.checker.check_model(out, full_check=True)
    assert sorted(t.name for t in out.graph.initializer) == ["b", "v"]
    first = next(a.g for a in out.graph.node[0].attribute if a.name == "body")
    assert [t.name for t in first.initializer] == ["w"]
    for g, w in zip(run(out, {"x": x}), want):
        np.testing.assert_array_equal(g, w)
