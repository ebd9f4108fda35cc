"""The accuracy check: synthetic and loaded streams, and float vs quantized compared side by side.

Most cases use small hand-built graphs whose errors are known exactly: ``y = x + bias`` (argmax
over 4 classes), ``p = sigmoid(x[..., :1])`` (a probability), ``z = x[..., 1:2]`` (a logit) and a
state that accumulates the frames, ``acc' = acc + sum_t x + drift``. A "quantized" copy moves the
bias or the drift, so the error, the decision agreement and the state error are known in advance.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import edgernn
from edgernn.contract import Contract, StateSpec, TensorSpec, read_metadata, write_metadata
from edgernn.converters.quantize.accuracy import compare, load_streams, synthetic_streams
from edgernn.errors import EdgernnError

FEATURES = 4


def toy(mode: str = "chunk", bias=(0.0, 0.0, 0.0, 0.0), drift: float = 0.0) -> onnx.ModelProto:
    """The hand-built streaming model described in the module docstring, batch-first."""
    time = 1 if mode == "step" else "time"
    x_shape = ["batch", time, FEATURES]
    nodes = [
        helper.make_node("Add", ["x", "bias"], ["y"]),
        helper.make_node("Slice", ["x", "zero", "one", "last"], ["first"]),
        helper.make_node("Sigmoid", ["first"], ["p"]),
        helper.make_node("Slice", ["x", "one", "two", "last"], ["z"]),
        helper.make_node("ReduceSum", ["x", "time_axis"], ["total"], keepdims=0),
        helper.make_node("Add", ["total", "drift"], ["moved"]),
        helper.make_node("Add", ["state_in.acc", "moved"], ["state_out.acc"]),
    ]
    consts = {"bias": np.asarray(bias, np.float32), "drift": np.float32(drift), "zero": np.array([0]),
              "one": np.array([1]), "two": np.array([2]), "last": np.array([-1]), "time_axis": np.array([1])}
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "toy",
        [helper.make_tensor_value_info("x", f, x_shape),
         helper.make_tensor_value_info("state_in.acc", f, ["batch", FEATURES])],
        [helper.make_tensor_value_info("y", f, x_shape), helper.make_tensor_value_info("p", f, ["batch", time, 1]),
         helper.make_tensor_value_info("z", f, ["batch", time, 1]),
         helper.make_tensor_value_info("state_out.acc", f, ["batch", 4])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    spec = lambda name, last: TensorSpec(name, ("batch", time, last), "float32", 0, 1)  # noqa: E731
    write_metadata(model, Contract(mode, (spec("x", FEATURES),), (spec("y", FEATURES), spec("p", 1), spec("z", 1)),
                                   (StateSpec("acc", ("batch", FEATURES), "float32", 0),)))
    return model


def _data(frames: int, batch: int = 2, seed: int = 0) -> list[dict[str, np.ndarray]]:
    x = np.random.default_rng(seed).standard_normal((batch, frames, FEATURES)).astype(np.float32)
    return [{"x": x}]


def _by_name(report):
    return {o.name: o for o in report.outputs}


# ---------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["chunk", "step"])
def test_identical_models_give_zero_error_and_full_agreement(mode, tmp_path):
    path = tmp_path / "toy.onnx"
    onnx.save(toy(mode), path)
    report = compare(path, toy(mode).SerializeToString(), _data(250), data_source="test data")
    assert report.max_error == 0.0 and report.min_agreement == 1.0
    assert all(o.mean_abs == 0.0 and o.agreement == 1.0 for o in report.outputs)
    assert report.state_errors == {"acc": 0.0}
    assert (report.steps, report.streams, report.data_source) == (250, 2, "test data")
    assert report.chunk == (1 if mode == "step" else 100)  # the defaults per mode


def test_decisions_are_argmax_over_classes_and_thresholds_for_probabilities_and_logits():
    outputs = _by_name(compare(toy(), toy(), _data(50), data_source="d"))
    assert outputs["y"].decision == "argmax"
    assert outputs["p"].decision == "threshold 0.5"  # sigmoid: within [0, 1]
    assert outputs["z"].decision == "threshold 0"  # a logit: negative values too
    assert outputs["p"].scale <= 1.0 and outputs["z"].scale > 1.0


def test_a_perturbed_copy_gives_the_expected_errors_and_agreement():
    shift = np.array([0.3, 0.0, 0.0, 0.0], np.float32)
    data = _data(250)
    report = compare(toy(), toy(bias=shift, drift=0.01), data, chunk=100, data_source="d")
    outputs = _by_name(report)
    assert outputs["y"].max_abs == pytest.approx(0.3, abs=1e-6)
    assert outputs["y"].mean_abs == pytest.approx(0.3 / 4, abs=1e-6)  # one class of four moved
    x = data[0]["x"]
    want = np.mean(x.argmax(-1) == (x + shift).argmax(-1))
    assert 0.5 < want < 1.0
    assert outputs["y"].agreement == pytest.approx(want)
    assert outputs["p"].max_abs == 0.0 and outputs["p"].agreement == 1.0
    # the drift is added once per call, carried in the state: 250 frames in calls of 100 is 3 calls
    assert report.state_errors["acc"] == pytest.approx(0.03, abs=1e-5)
    assert report.chunk == 100


def test_chunk_sets_the_frames_per_call_and_streams_carry_state_across_calls():
    drifted = toy(drift=0.01)
    for chunk, calls in ((1, 30), (7, 5), (30, 1)):
        report = compare(toy(), drifted, _data(30), chunk=chunk, data_source="d")
        assert report.state_errors["acc"] == pytest.approx(0.01 * calls, abs=1e-5), chunk
    with pytest.raises(EdgernnError, match="step mode and takes one frame per call"):
        compare(toy("step"), toy("step"), _data(5), chunk=4, data_source="d")


def test_each_stream_batch_starts_from_the_init_state():
    streams = _data(20, seed=1) + _data(20, seed=2)
    report = compare(toy(), toy(drift=0.01), streams, chunk=10, data_source="d")
    assert report.state_errors["acc"] == pytest.approx(0.02, abs=1e-5)  # not 0.04
    assert report.streams == 4


def test_nan_in_the_candidate_is_an_infinite_error():
    report = compare(toy(), toy(bias=[np.nan, 0, 0, 0]), _data(10), data_source="d")
    assert _by_name(report)["y"].max_abs == float("inf")
    assert report.max_error == float("inf")


def test_models_of_different_contracts_are_refused():
    other = toy()
    other.graph.output[0].name = "y2"
    other.graph.node[0].output[0] = "y2"
    c = read_metadata(other)
    write_metadata(other, Contract(c.mode, c.inputs, (TensorSpec("y2", ("batch", "time", 4), "float32", 0, 1),
                                                      *c.outputs[1:]), c.states))
    with pytest.raises(EdgernnError, match="quantized model's outputs are"):
        compare(toy(), other, _data(5), data_source="d")


def test_compare_an_exported_gru_with_itself():
    torch.manual_seed(0)
    model = edgernn.export(nn.GRU(3, 5, batch_first=True).eval(), None, mode="step").model
    streams = synthetic_streams(read_metadata(model), 300, streams=2, model=model)
    report = compare(model, model, streams, data_source="synthetic")
    assert report.max_error == 0.0 and report.state_errors == {"gru.h": 0.0}
    assert report.outputs[0].decision == "argmax" and report.outputs[0].scale > 0
    assert (report.steps, report.streams, report.chunk) == (300, 2, 1)


# ---------------------------------------------------------------------------------------------
# synthetic streams
# ---------------------------------------------------------------------------------------------

def test_synthetic_float_streams_are_smooth_unit_variance_noise():
    contract = read_metadata(toy())
    (data,) = synthetic_streams(contract, 5000, streams=3, seed=1)
    x = data["x"]
    assert x.shape == (3, 5000, FEATURES) and x.dtype == np.float32
    assert abs(x.std() - 1.0) < 0.1 and abs(x.mean()) < 0.1
    neighbours = np.mean(x[:, 1:] * x[:, :-1]) / x.var()
    assert 0.8 < neighbours < 0.95  # AR(1) with 0.9, not white noise
    (same,) = synthetic_streams(contract, 5000, streams=3, seed=1)
    np.testing.assert_array_equal(same["x"], x)


def test_synthetic_ids_come_from_the_embedding_table_size():
    table = numpy_helper.from_array(np.zeros((37, 3), np.float32), "table")
    nodes = [helper.make_node("Cast", ["ids"], ["ids64"], to=TensorProto.INT64),
             helper.make_node("Gather", ["table", "ids64"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT32, ["time", "batch"]),
                                           helper.make_tensor_value_info("flag", TensorProto.INT64, ["time", "batch"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["time", "batch", 3])], [table])
    model = helper.make_model(graph)
    contract = Contract("chunk", (TensorSpec("ids", ("time", "batch"), "int32", 1, 0),
                                  TensorSpec("flag", ("time", "batch"), "int64", 1, 0)), (), ())
    (data,) = synthetic_streams(contract, 4000, streams=2, model=model)
    assert data["ids"].shape == (4000, 2) and data["ids"].dtype == np.int32
    assert data["ids"].min() == 0 and data["ids"].max() == 36
    assert set(np.unique(data["flag"])) == {0, 1}  # no table: ids in [0, 2)


def test_synthetic_streams_of_a_per_frame_input_take_a_leading_time_axis():
    contract = Contract("step", (TensorSpec("x", ("batch", 6), "float32", 0, None),), (), ())
    (data,) = synthetic_streams(contract, 10, streams=2)
    assert data["x"].shape == (10, 2, 6)


# ---------------------------------------------------------------------------------------------
# load_streams
# ---------------------------------------------------------------------------------------------

def test_load_streams_reads_npy_and_npz_of_any_length(tmp_path):
    contract = read_metadata(toy("step"))  # step mode: one frame per call, streams of any length
    x = np.zeros((3, 77, FEATURES), np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x)
    for name in ("x.npy", "x.npz"):
        (data,) = load_streams(tmp_path / name, contract)
        assert data["x"].shape == (3, 77, FEATURES)


@pytest.mark.parametrize("array, message", [
    (np.zeros((1, 50, 3), np.float32),
     "calibration array 'x' has shape [1, 50, 3]; expected [batch, time, 4] (axis 2 must be 4)"),
    (np.zeros((50, 4), np.float32), "calibration array 'x' has shape [50, 4]; expected [batch, time, 4]"),
    (np.zeros((1, 50, 4)), "calibration array 'x' has dtype float64; expected float32"),
    (np.zeros((1, 0, 4), np.float32), "calibration array 'x' has no frames"),
])
def test_load_streams_names_the_array_and_the_expected_and_actual_shape(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(EdgernnError) as e:
        load_streams(tmp_path / "bad.npy", read_metadata(toy()))
    assert str(e.value).startswith(message)


def test_load_streams_refuses_missing_and_non_array_files(tmp_path):
    contract = read_metadata(toy())
    with pytest.raises(EdgernnError, match=r"data file .*nope.npy does not exist"):
        load_streams(tmp_path / "nope.npy", contract, what="data")
    (tmp_path / "text.npy").write_text("not an array\n")
    with pytest.raises(EdgernnError, match=r"calibration file .*text.npy is not a .npy or .npz array file"):
        load_streams(tmp_path / "text.npy", contract)
    np.savez(tmp_path / "objects.npz", x=np.array([{"pickled": True}], dtype=object))
    with pytest.raises(EdgernnError, match=r"objects.npz is not a .npy or .npz array file"):
        load_streams(tmp_path / "objects.npz", contract)


def test_load_streams_checks_npz_names_against_the_inputs(tmp_path):
    contract = Contract("chunk", (TensorSpec("x", ("batch", "time", 4), "float32", 0, 1),
                                  TensorSpec("ids", ("batch", "time"), "int64", 0, 1)), (), ())
    x, ids = np.zeros((2, 9, 4), np.float32), np.zeros((2, 9), np.int64)
    np.savez(tmp_path / "missing.npz", x=x)
    with pytest.raises(EdgernnError, match="has no array 'ids'; give one array per input"):
        load_streams(tmp_path / "missing.npz", contract)
    np.savez(tmp_path / "extra.npz", x=x, ids=ids, mask=ids)
    with pytest.raises(EdgernnError, match="has an array 'mask' that is not an input of the model"):
        load_streams(tmp_path / "extra.npz", contract)
    np.savez(tmp_path / "short.npz", x=x, ids=ids[:, :5])
    with pytest.raises(EdgernnError, match="streams of different lengths"):
        load_streams(tmp_path / "short.npz", contract)
    np.save(tmp_path / "one.npy", x)
    with pytest.raises(EdgernnError, match="holds one array but the model takes 2 inputs"):
        load_streams(tmp_path / "one.npy", contract)
    np.savez(tmp_path / "good.npz", x=x, ids=ids)
    (data,) = load_streams(tmp_path / "good.npz", contract)
    assert set(data) == {"x", "ids"}
