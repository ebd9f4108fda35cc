"""edgernn-web's non-finite policy (``nonFinite: "raise" | "reset" | "ignore"``) under Node.

The checks are in runtimes/web/test/nonfinite-node.mjs; this test writes the files they stream, made
with onnx.helper (no torch): an ONNX GRU step file and a batch-first ONNX LSTM chunk file with
edgernn metadata, and the shared fixture stored_init.onnx with a NaN in its stored start value.
tests/runtimes/test_nonfinite.py checks the Python runtime's policy.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgernn.contract import Contract, StateSpec, TensorSpec, write_metadata
from edgernn.runtimes.webserve import WEB_ROOT

ROOT = Path(__file__).resolve().parents[2]
STORED_INIT = ROOT / "tests" / "fixtures" / "metadata" / "files" / "stored_init.onnx"
HIDDEN, FEATURES = 16, 8


def _weights(rng, gates: int) -> list[onnx.TensorProto]:
    """W, R and B of a one-direction ONNX GRU (3 gates) or LSTM (4 gates), scaled to keep it lively."""
    h, f = HIDDEN, FEATURES
    return [numpy_helper.from_array((0.4 * rng.standard_normal(shape)).astype(np.float32), name)
            for name, shape in (("W", (1, gates * h, f)), ("R", (1, gates * h, h)), ("B", (1, 2 * gates * h)))]


def _model(nodes, inputs, outputs, initializers, contract: Contract) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "nonfinite", inputs, outputs, initializers),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    write_metadata(model, contract)
    return model


def gru_step() -> onnx.ModelProto:
    """x [1, batch, 8] -> y [1, batch, 16], state gru.h [1, batch, 16]: ONNX's GRU op, as `edgernn export` writes it."""
    f32 = TensorProto.FLOAT
    return _model(
        [helper.make_node("GRU", ["x", "W", "R", "B", "", "state_in.gru.h"], ["Y", "state_out.gru.h"],
                          hidden_size=HIDDEN, linear_before_reset=1),
         helper.make_node("Squeeze", ["Y", "axis1"], ["y"])],
        [helper.make_tensor_value_info("x", f32, [1, "batch", FEATURES]),
         helper.make_tensor_value_info("state_in.gru.h", f32, [1, "batch", HIDDEN])],
        [helper.make_tensor_value_info("y", f32, [1, "batch", HIDDEN]),
         helper.make_tensor_value_info("state_out.gru.h", f32, [1, "batch", HIDDEN])],
        [*_weights(np.random.default_rng(0), 3), numpy_helper.from_array(np.array([1], np.int64), "axis1")],
        Contract("step", (TensorSpec("x", (1, "batch", FEATURES), "float32", 1, 0),),
                 (TensorSpec("y", (1, "batch", HIDDEN), "float32", 1, 0),),
                 (StateSpec("gru.h", (1, "batch", HIDDEN), "float32", 1),)),
    )


def lstm_chunk() -> onnx.ModelProto:
    """x [batch, time, 8] -> y [batch, time, 16], states lstm.h and lstm.c [1, batch, 16]."""
    f32 = TensorProto.FLOAT
    state = [1, "batch", HIDDEN]
    return _model(
        [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
         helper.make_node("LSTM", ["xt", "W", "R", "B", "", "state_in.lstm.h", "state_in.lstm.c"],
                          ["Y", "state_out.lstm.h", "state_out.lstm.c"], hidden_size=HIDDEN),
         helper.make_node("Squeeze", ["Y", "axis1"], ["yt"]),
         helper.make_node("Transpose", ["yt"], ["y"], perm=[1, 0, 2])],
        [helper.make_tensor_value_info("x", f32, ["batch", "time", FEATURES]),
         helper.make_tensor_value_info("state_in.lstm.h", f32, state),
         helper.make_tensor_value_info("state_in.lstm.c", f32, state)],
        [helper.make_tensor_value_info("y", f32, ["batch", "time", HIDDEN]),
         helper.make_tensor_value_info("state_out.lstm.h", f32, state),
         helper.make_tensor_value_info("state_out.lstm.c", f32, state)],
        [*_weights(np.random.default_rng(1), 4), numpy_helper.from_array(np.array([1], np.int64), "axis1")],
        Contract("chunk", (TensorSpec("x", ("batch", "time", FEATURES), "float32", 0, 1),),
                 (TensorSpec("y", ("batch", "time", HIDDEN), "float32", 0, 1),),
                 (StateSpec("lstm.h", tuple(state), "float32", 1), StateSpec("lstm.c", tuple(state), "float32", 1))),
    )


def nan_start() -> onnx.ModelProto:
    """stored_init.onnx with value 1 of its stored start value made NaN."""
    model = onnx.load(STORED_INIT)
    init = next(t for t in model.graph.initializer if t.name == "state_init.h")
    value = numpy_helper.to_array(init).copy()
    value.reshape(-1)[1] = np.nan
    init.CopyFrom(numpy_helper.from_array(value, "state_init.h"))
    return model


def test_node_follows_the_nonfinite_policy(tmp_path, web_tools):
    for name, make in (("gru_step", gru_step), ("lstm_chunk", lstm_chunk), ("nan_start", nan_start)):
        onnx.save(make(), tmp_path / f"{name}.onnx")
    done = subprocess.run(["node", str(WEB_ROOT / "test" / "nonfinite-node.mjs"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"non-finite checks failed under Node:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "11 passed, 0 failed" in done.stdout


def test_the_cost_script_runs(tmp_path, web_tools):
    """runtimes/web/test/nonfinite-cost.mjs (the README's cost figure) still runs; a few rounds, timings not judged."""
    onnx.save(gru_step(), tmp_path / "gru_step.onnx")
    script = WEB_ROOT / "test" / "nonfinite-cost.mjs"
    done = subprocess.run(["node", str(script), str(tmp_path / "gru_step.onnx"), "2", "20"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"nonfinite-cost.mjs failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "checked / unchecked:" in done.stdout and "24 float values checked per step" in done.stdout
