"""``quantize()`` on RNN, LSTM and GRU exports in chunk and step modes: int8 dynamic reaches every
recurrent weight (GRU and RNN included), static QDQ keeps the carried state float and calibrates on
the model's own states, every quantized file keeps the state I/O contract, the accuracy check and
its thresholds, and foreign stateful files (silero-vad's interface).

The models are small classifiers (Linear frontend, 2-layer recurrent core of 48, Linear head of 4
logits), exported once per test module; only the size test uses a recurrent-dominated 2-layer 256.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper
from torch import nn

import edgernn
from edgernn.api import info, run
from edgernn.contract import read_metadata
from edgernn.converters.quantize import QuantizeError, quantize
from edgernn.converters.quantize.accuracy import compare, load_streams, synthetic_streams
from edgernn.converters.quantize.static import stream_feeds
from edgernn.errors import EdgernnError
from edgernn.runtimes import StreamingSession

KINDS = ("RNN", "LSTM", "GRU")
MODES = ("chunk", "step")
STEPS = 2000  # frames per synthetic stream in the accuracy checks here (the 10,000 default is tested once)

# Accuracy over 2,000 synthetic steps (onnxruntime 1.32, x86 CPU, these seeds), largest of RNN/LSTM/GRU
# in chunk and step mode:
#   dynamic: max output error 0.0077 (RNN chunk), final-state error 0.0051, argmax agreement >= 0.992
#   static:  max output error 0.038 (RNN), final-state error 0.0078, argmax agreement >= 0.9915
# The bounds below leave 3-4x margin for other CPUs' int8 kernels; agreement is below 1 because random
# heads have near-ties among the 4 logits.
MAX_ERROR = {"dynamic": 0.03, "static": 0.12}
MAX_STATE_ERROR = 0.03
MIN_AGREEMENT = 0.97
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)


class Classifier(nn.Module):
    def __init__(self, kind: str, features: int = 16, hidden: int = 48, layers: int = 2, classes: int = 4) -> None:
        super().__init__()
        self.front = nn.Linear(features, 24)
        self.rnn = getattr(nn, kind)(24, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        y, _ = self.rnn(torch.relu(self.front(x)))
        return self.head(y)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quantize")


_FLOAT: dict[tuple[str, str], Path] = {}
_QUANTIZED: dict[tuple[str, str, str], object] = {}


def float_file(folder: Path, kind: str, mode: str) -> Path:
    """The float export of the classifier (exported and verified against PyTorch once)."""
    if (kind, mode) not in _FLOAT:
        torch.manual_seed(0)
        path = folder / f"{kind.lower()}_{mode}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert edgernn.export(Classifier(kind).eval(), path, mode=mode).passed
        _FLOAT[kind, mode] = path
    return _FLOAT[kind, mode]


def quantized(folder: Path, kind: str, mode: str, method: str):
    """quantize() of the float file to ``<name>.<suffix>.onnx`` (run once; the report)."""
    if (kind, mode, method) not in _QUANTIZED:
        _QUANTIZED[kind, mode, method] = quantize(float_file(folder, kind, mode), method=method, steps=STEPS)
    return _QUANTIZED[kind, mode, method]


# ---------------------------------------------------------------- graph walking


def _graphs(graph: onnx.GraphProto, outer: frozenset = frozenset()):
    """(graph, names of the constants visible in it) for ``graph`` and every subgraph (Scan bodies)."""
    consts = outer | {t.name for t in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    yield graph, consts
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g, frozenset(consts))


def _float_constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    out = {}
    for graph, _ in _graphs(model.graph):
        out.update({t.name: t for t in graph.initializer if t.data_type in FLOAT_TYPES})
        for n in graph.node:
            if n.op_type == "Constant":
                value = next((a.t for a in n.attribute if a.name == "value"), None)
                if value is not None and value.data_type in FLOAT_TYPES:
                    out[n.output[0]] = value
    return out


def _initializers(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for graph, _ in _graphs(model.graph) for t in graph.initializer]


def _nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for graph, _ in _graphs(model.graph) for n in graph.node]


def _weight_elements(model: onnx.ModelProto) -> int:
    """Elements of the float model's weights: constant B of MatMul/Gemm, W and R of recurrent ops."""
    consts = {t.name: t for t in _initializers(model)}
    total = 0
    for n in _nodes(model):
        if n.op_type in ("MatMul", "Gemm") and n.input[1] in consts:
            total += int(np.prod(consts[n.input[1]].dims))
        elif n.op_type in ("GRU", "RNN", "LSTM"):
            total += sum(int(np.prod(consts[i].dims)) for i in n.input[1:3])
    return total


# ---------------------------------------------------------------- int8 dynamic


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_dynamic_makes_every_recurrent_weight_int8(folder, kind, mode):
    report = quantized(folder, kind, mode, "dynamic")
    q = onnx.load(report.path)
    float_model = onnx.load(float_file(folder, kind, mode))
    ops = [n.op_type for n in _nodes(q)]
    assert "GRU" not in ops and "RNN" not in ops
    if kind == "LSTM":  # onnxruntime's fused int8 LSTM (step mode: one-frame LSTM ops, stepcells.py)
        assert "LSTM" not in ops and ops.count("DynamicQuantizeLSTM") == 2
    else:
        assert "LSTM" not in ops and "DynamicQuantizeLSTM" not in ops
    int8 = {t.name: t for t in _initializers(q) if t.data_type in (TensorProto.INT8, TensorProto.UINT8)}
    floats = _float_constants(q)
    for graph, consts in _graphs(q.graph):
        for n in graph.node:
            if n.op_type in ("MatMul", "Gemm"):
                assert not (n.input[1] in consts and n.input[1] in floats), f"{n.name} kept a float weight"
            if n.op_type == "DynamicQuantizeLSTM":
                assert n.input[1] in int8 and n.input[2] in int8, "W and R of DynamicQuantizeLSTM must be int8"
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    weights = _weight_elements(float_model)
    int8_elements = sum(int(np.prod(t.dims)) for t in int8.values())
    float_elements = sum(int(np.prod(t.dims)) for t in floats.values())
    assert int8_elements >= weights  # every weight element has an int8 copy...
    assert float_elements < 0.1 * weights  # ...and what stays float is biases and scales
    assert report.quantized and not report.kept_float
    assert all(d.dtype == "int8" and "int8" in d.why for d in report.quantized)
    meta = json.loads({p.key: p.value for p in q.metadata_props}["edgernn.quantization"])
    assert meta["method"] == "dynamic" and meta["kept_float"] == []
    assert meta["quantized"] == sorted({d.name for d in report.quantized})


# measured (2-layer, 64 inputs, 256 hidden, bare layer): size ratio 0.254-0.264 for all three cells in
# both modes (GRU 0.260 chunk / 0.257 step, LSTM 0.255 / 0.254, RNN 0.264 / 0.259)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_dynamic_size_of_a_recurrent_dominated_model(tmp_path, kind, mode):
    torch.manual_seed(0)
    path = tmp_path / "big.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edgernn.export(getattr(nn, kind)(64, 256, num_layers=2).eval(), path, mode=mode, verify=False)
    report = quantize(path, steps=200)
    assert report.size_before == path.stat().st_size
    assert report.size_after == Path(report.path).stat().st_size
    assert report.size_ratio == pytest.approx(report.size_after / report.size_before)
    assert report.size_ratio <= 0.3, report.size_ratio
    assert report.accuracy.max_error < MAX_ERROR["dynamic"]


@pytest.mark.parametrize("method", ["dynamic", "static"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_accuracy_report_is_sensible(folder, kind, mode, method):
    acc = quantized(folder, kind, mode, method).accuracy
    assert acc.data_source.startswith("synthetic data") and acc.steps == STEPS and acc.streams == 1
    assert acc.chunk == (1 if mode == "step" else 100)
    [y] = acc.outputs
    assert y.name == "y" and y.decision == "argmax"
    assert 0 < y.mean_abs < y.max_abs == acc.max_error < MAX_ERROR[method], (y.mean_abs, y.max_abs)
    assert y.scale > 5 * y.max_abs  # small against the logits' own scale (measured: >= 8x, static RNN 0.31/0.038)
    assert MIN_AGREEMENT <= y.agreement <= 1.0 and acc.min_agreement == y.agreement
    states = {s.name for s in read_metadata(onnx.load(float_file(folder, kind, mode))).states}
    assert set(acc.state_errors) == states
    assert all(0 < e < MAX_STATE_ERROR for e in acc.state_errors.values()), acc.state_errors


def test_excluded_nodes_are_kept_float_with_the_reason(folder):
    path = float_file(folder, "GRU", "chunk")
    model = onnx.load(path)
    gru = [n.name for n in model.graph.node if n.op_type == "GRU"]
    head = [n.name for n in model.graph.node if n.op_type == "MatMul"][-1]
    report = quantize(path, method="dynamic", exclude=[gru[0], head], steps=300, write=False)
    kept = {d.name: d for d in report.kept_float}
    assert set(kept) == {gru[0], head}
    assert all(d.dtype == "float32" and d.why == "excluded by the user" for d in kept.values())
    assert {d.op_type for d in kept.values()} == {"GRU", "MatMul"}
    q = report.model
    assert [n.name for n in q.graph.node if n.op_type == "GRU"] == [gru[0]]  # the other one was lowered
    head_node = next(n for n in q.graph.node if n.name == head)
    assert head_node.op_type == "MatMul" and head_node.input[1] in _float_constants(q)
    quantized_names = {d.name for d in report.quantized}
    assert quantized_names and not quantized_names & set(kept)
    meta = json.loads({p.key: p.value for p in q.metadata_props}["edgernn.quantization"])
    assert meta["kept_float"] == sorted(kept)


# ---------------------------------------------------------------- int8 static


def _readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            out[i].append(n)
    return out


_NOT_FLOAT_PATH = {"QuantizeLinear", "DequantizeLinear", "MatMul", "Gemm", "Conv", "MatMulInteger",
                   "DynamicQuantizeLinear"}


def _float_path(graph: onnx.GraphProto, src: str, dst: str) -> bool:
    """Whether ``dst`` is reached from ``src`` through elementwise/shape ops only (no Q, DQ or MatMul),
    entering Scan bodies: a Scan passes its k-th state on when its body has such a path."""
    readers, seen, todo = _readers(graph), {src}, [src]
    while todo:
        tensor = todo.pop()
        if tensor == dst:
            return True
        for n in readers[tensor]:
            if n.op_type in _NOT_FLOAT_PATH:
                continue
            outs = list(n.output)
            if n.op_type == "Scan":  # inputs: N carried states, then scan inputs; outputs: N final states, ...
                body = next(a.g for a in n.attribute if a.name == "body")
                scanned = next(a.i for a in n.attribute if a.name == "num_scan_inputs")
                k = list(n.input).index(tensor)
                carried = k < len(n.input) - scanned
                outs = [n.output[k]] if carried and _float_path(body, body.input[k].name, body.output[k].name) else []
            for o in outs:
                if o not in seen:
                    seen.add(o)
                    todo.append(o)
    return False


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_static_keeps_state_io_float_and_the_carried_state_off_the_dequantized_values(folder, kind, mode):
    report = quantized(folder, kind, mode, "static")
    q = onnx.load(report.path)
    contract = read_metadata(q)
    for v in (*q.graph.input, *q.graph.output):
        assert v.type.tensor_type.elem_type == TensorProto.FLOAT, v.name
    producers = {o: n for n in q.graph.node for o in n.output}
    for s in contract.states:
        assert producers[s.output].op_type not in ("DequantizeLinear", "QuantizeLinear")
    ops = [n.op_type for n in _nodes(q)]
    assert ops.count("QuantizeLinear") >= 4 and ops.count("DequantizeLinear") >= 8
    assert ops.count("MatMul") == len(report.quantized) and not report.kept_float
    for graph, _ in _graphs(q.graph):
        made = {o: n for n in graph.node for o in n.output}
        readers = _readers(graph)
        for n in graph.node:
            if n.op_type == "MatMul":  # both inputs dequantized: the MatMul runs on int8 values
                assert all(made.get(i) is not None and made[i].op_type == "DequantizeLinear" for i in n.input), n.name
            if n.op_type == "DequantizeLinear" and n.input[0] in made:  # an activation's QDQ...
                assert {r.op_type for r in readers[n.output[0]]} <= {"MatMul", "Gemm", "Conv"}, \
                    f"{n.output[0]} (8-bit-rounded) is read by {[r.op_type for r in readers[n.output[0]]]}"
    # the recurrence proper (GRU h: n + z * (h - n); LSTM c: f * c + i * g) reads the float state
    carried = {"GRU": [s for s in contract.states], "LSTM": [s for s in contract.states if s.name.endswith(".c")],
               "RNN": []}[kind]
    for s in carried:
        assert _float_path(q.graph, s.input, s.output), f"{s.name} is carried through a QDQ pair"
    float_model = onnx.load(float_file(folder, kind, mode))
    for s in carried:  # the check itself is sound: the float graph has the path too
        assert _float_path(float_model.graph, s.input, s.output)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_stream_feeds_carry_the_models_own_state(folder, kind, mode):
    path = float_file(folder, kind, mode)
    contract = read_metadata(onnx.load(path))
    streams = synthetic_streams(contract, 12, seed=3, streams=2) + synthetic_streams(contract, 9, seed=4)
    chunk = 1 if mode == "step" else 4
    feeds = stream_feeds(path.read_bytes(), streams, chunk, max_calls=1000)
    [x_spec] = contract.inputs
    session, expected = StreamingSession(path), []
    for stream in streams:
        x = stream[x_spec.name]
        session.reset()
        state = None
        for start in range(0, x.shape[x_spec.time_axis], chunk):
            frames = np.take(x, range(start, min(start + chunk, x.shape[x_spec.time_axis])), axis=x_spec.time_axis)
            expected.append((frames, state))
            session.step(frames)
            state = session.state
    assert len(feeds) == len(expected) == -(-12 // chunk) - (-9 // chunk)
    for k, (feed, (frames, state)) in enumerate(zip(feeds, expected)):
        assert set(feed) == {x_spec.name, *(s.input for s in contract.states)}
        np.testing.assert_array_equal(feed[x_spec.name], frames)
        for s in contract.states:
            if state is None:  # the first call of a stream: the init state (zeros), at the stream's batch
                assert feed[s.input].shape[s.batch_axis] == frames.shape[x_spec.batch_axis]
                assert not feed[s.input].any()
            else:  # every later call: what the float model produced on the call before
                np.testing.assert_array_equal(feed[s.input], state[s.name])
                assert np.abs(feed[s.input]).max() > 1e-3, f"call {k}: state {s.name} is all zeros"
    assert sum(not f[contract.states[0].input].any() for f in feeds) == 2  # one fresh start per stream
    first = stream_feeds(path.read_bytes(), streams, chunk, max_calls=5)
    assert len(first) == 5
    for a, b in zip(first, feeds):
        assert all(np.array_equal(a[n], b[n]) for n in a)


def test_static_calibration_file_is_used_and_named(folder, tmp_path):
    path = float_file(folder, "GRU", "chunk")
    contract = read_metadata(onnx.load(path))
    calib = tmp_path / "calib.npy"
    np.save(calib, 3.0 * synthetic_streams(contract, 400, seed=5, streams=2)[0]["x"])  # a wider range than N(0, 1)
    report = quantize(path, tmp_path / "q.onnx", method="static", calibration=calib)
    assert report.accuracy.data_source == f"calibration file {calib}"
    assert report.accuracy.steps == 400 and report.accuracy.streams == 2
    meta = json.loads({p.key: p.value for p in report.model.metadata_props}["edgernn.quantization"])
    assert meta["calibration"] == f"calibration file {calib}"
    assert any(f"calibrated on 4 calls of calibration file {calib}" in n for n in report.notes), report.notes
    # the input's QDQ covers the calibration data's range, wider than the synthetic data's
    inits = {t.name: numpy_helper.to_array(t) for t in report.model.graph.initializer}
    [q_x] = [n for n in report.model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x"]
    x_range = float(inits[q_x.input[1]]) * 255
    x_calib = np.load(calib)
    assert x_range == pytest.approx(x_calib.max() - min(x_calib.min(), 0), rel=1e-3)
    synthetic = quantized(folder, "GRU", "chunk", "static").model
    [q_syn] = [n for n in synthetic.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x"]
    syn_inits = {t.name: numpy_helper.to_array(t) for t in synthetic.graph.initializer}
    assert float(syn_inits[q_syn.input[1]]) * 255 < 0.6 * x_range


# ---------------------------------------------------------------- the contract survives


def _stream(contract, frames: int, seed: int) -> np.ndarray:
    return synthetic_streams(contract, frames, seed=seed, streams=2)[0][contract.inputs[0].name]


@pytest.mark.parametrize("method", ["dynamic", "static", "fp16", "mixed"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_quantized_file_keeps_the_state_io_contract(folder, kind, mode, method):
    float_path = float_file(folder, kind, mode)
    report = quantized(folder, kind, mode, method)
    suffix = {"dynamic": "int8", "static": "qdq", "fp16": "fp16", "mixed": "mixed"}[method]
    assert report.path == str(float_path.with_name(f"{float_path.stem}.{suffix}.onnx"))
    f_info, q_info = info(float_path).to_json(), info(report.path).to_json()
    for key in ("format", "mode", "inputs", "outputs", "states"):
        assert q_info[key] == f_info[key], key
    assert q_info["contract_from"] == "metadata"
    meta = json.loads(q_info["metadata"]["edgernn.quantization"])
    assert meta["method"] == method and meta["per_channel"] is False
    assert meta["quantized"] == sorted({d.name for d in report.quantized}) and meta["quantized"]
    assert meta["calibration"] == ("synthetic data (no --calibration given)" if method == "static" else None)
    # StreamingSession carries the state of the quantized file like the float one's
    contract = read_metadata(onnx.load(float_path))
    x = _stream(contract, 40, seed=11)
    f_sess, q_sess = StreamingSession(float_path), StreamingSession(report.path)
    assert [s.name for s in q_sess.states] == [s.name for s in contract.states]
    y_f, y_q = f_sess.stream(x, chunk=1)["y"], q_sess.stream(x, chunk=1)["y"]
    bound = MAX_ERROR.get(method, 0.01)
    assert y_q.shape == y_f.shape == (2, 40, 4) and np.abs(y_q - y_f).max() < bound
    for name, value in q_sess.state.items():
        assert value.dtype == np.float32 and np.abs(value - f_sess.state[name]).max() < bound
    # and edgernn.api.run (default chunk) streams it too
    run_report, outputs = run(report.path, x)
    _, float_outputs = run(float_path, x)
    assert run_report.frames == 40 and run_report.calls == (40 if mode == "step" else 1)
    assert np.abs(outputs["y"] - float_outputs["y"]).max() < bound


# ---------------------------------------------------------------- thresholds and data


@pytest.mark.parametrize("threshold", [{"max_error": 1e-6}, {"min_agreement": 1.0}, {"max_error": 1e-6,
                                                                                        "min_agreement": 1.0}])
def test_a_missed_threshold_raises_and_writes_nothing(folder, tmp_path, threshold):
    path = float_file(folder, "GRU", "chunk")
    before = sorted(p.name for p in tmp_path.iterdir())
    target = tmp_path / "q.onnx"
    with pytest.raises(QuantizeError) as e:
        quantize(path, target, steps=STEPS, **threshold)
    text = str(e.value)
    assert text.startswith("the quantized model fails the accuracy check: ") and text.endswith("nothing was written")
    report = e.value.report
    assert report.failures and len(report.failures) == len(threshold)
    if "max_error" in threshold:
        assert f"by up to {report.accuracy.max_error:.3g}, more than --max-error 1e-06" in text
    if "min_agreement" in threshold:
        assert report.accuracy.min_agreement < 1.0
        assert f"agree with the float model on {report.accuracy.min_agreement:.2%} of frames" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not target.exists()


def test_thresholds_that_hold_write_the_file(folder, tmp_path):
    path = float_file(folder, "GRU", "chunk")
    target = tmp_path / "q.onnx"
    report = quantize(path, target, steps=STEPS, max_error=MAX_ERROR["dynamic"], min_agreement=MIN_AGREEMENT)
    assert report.passed and not report.failures and report.path == str(target) and target.is_file()
    assert target.stat().st_size == report.size_after
    assert report.accuracy.max_error < MAX_ERROR["dynamic"] and report.accuracy.min_agreement >= MIN_AGREEMENT


def test_accuracy_check_defaults_to_10000_synthetic_steps(folder):
    path = float_file(folder, "GRU", "chunk")
    report = quantize(path, write=False)
    acc = report.accuracy
    assert acc.steps == 10_000 and acc.streams == 1 and acc.chunk == 100
    assert acc.data_source == "synthetic data (10000 frames of AR(1) noise per stream; pass --data for real data)"
    assert report.path is None
    # the numbers are those of compare() on the documented synthetic streams (seed 0)
    float_model = onnx.load(path)
    contract = read_metadata(float_model)
    again = compare(path, report.model, synthetic_streams(contract, 10_000, seed=0, model=float_model),
                    data_source="same")
    assert again.max_error == acc.max_error and again.state_errors == acc.state_errors
    assert again.min_agreement == acc.min_agreement
    # measured: max error 0.0030, argmax agreement 0.9958
    assert acc.max_error < MAX_ERROR["dynamic"] and acc.min_agreement >= MIN_AGREEMENT


def test_data_file_is_used_for_the_accuracy_check(folder, tmp_path):
    path = float_file(folder, "LSTM", "step")
    contract = read_metadata(onnx.load(path))
    data = tmp_path / "held_back.npy"
    np.save(data, _stream(contract, 300, seed=21))
    report = quantize(path, method="dynamic", data=data, write=False)
    acc = report.accuracy
    assert acc.data_source == f"data file {data}" and acc.steps == 300 and acc.streams == 2 and acc.chunk == 1
    again = compare(path, report.model, load_streams(data, contract, what="data"), data_source="same")
    assert again.max_error == acc.max_error and again.outputs[0].mean_abs == acc.outputs[0].mean_abs
    synthetic = quantize(path, method="dynamic", steps=300, write=False).accuracy
    assert synthetic.max_error != acc.max_error and synthetic.streams == 1


@pytest.mark.parametrize("name, array, message", [
    ("shape", np.zeros((2, 50, 15), np.float32),
     "has shape [2, 50, 15]; expected [batch, time, 16] (axis 2 must be 16)"),
    ("dtype", np.zeros((2, 50, 16), np.float64), "has dtype float64; expected float32"),
])
def test_bad_data_is_one_sentence(folder, tmp_path, name, array, message):
    path = float_file(folder, "GRU", "chunk")
    bad = tmp_path / f"{name}.npy"
    np.save(bad, array)
    for kw, what in (({"data": bad}, "data"), ({"calibration": bad, "method": "static"}, "calibration")):
        with pytest.raises(EdgernnError) as e:
            quantize(path, tmp_path / "q.onnx", **kw)
        assert str(e.value) == f"{what} array 'x' {message}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [bad.name]


# ---------------------------------------------------------------- foreign stateful files


class Vad(nn.Module):
    """silero-vad's interface: one window per call, state [layers, batch, H] -> stateN."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.rnn, self.head = nn.Linear(16, 32), nn.GRU(32, 48), nn.Linear(48, 1)

    def forward(self, input, state):
        y, state_n = self.rnn(torch.relu(self.proj(input)).unsqueeze(0), state)
        return torch.sigmoid(self.head(y[0])), state_n


def _foreign(path: Path, names: tuple[list[str], list[str]]) -> Path:
    torch.manual_seed(0)
    (data_in, state_in), (data_out, state_out) = names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Vad().eval(), (torch.randn(1, 16), torch.zeros(1, 1, 48)), str(path), dynamo=False,
                          input_names=[data_in, state_in], output_names=[data_out, state_out],
                          dynamic_axes={data_in: {0: "batch"}, state_in: {1: "batch"}, data_out: {0: "batch"},
                                        state_out: {1: "batch"}})
    return path


def _float_rollout(path: Path, names, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The foreign float file run by hand with onnxruntime, state carried frame by frame."""
    import onnxruntime as ort

    (data_in, state_in), (data_out, state_out) = names
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    state, ys = np.zeros((1, x.shape[1], 48), np.float32), []
    for frame in x:
        y, state = session.run([data_out, state_out], {data_in: frame, state_in: state})
        ys.append(y)
    return np.stack(ys), state


SILERO_NAMES = (["input", "state"], ["output", "stateN"])
OTHER_NAMES = (["frames", "hidden"], ["prob", "hidden_next"])  # no naming rule pairs these


@pytest.mark.parametrize("method", ["dynamic", "static"])
@pytest.mark.parametrize("names, pairs", [(SILERO_NAMES, None), (SILERO_NAMES, {"state": "stateN"}),
                                          (OTHER_NAMES, {"hidden": "hidden_next"})],
                         ids=["silero-by-rule", "silero-given", "other-given"])
def test_foreign_stateful_file_quantizes_into_the_contract(tmp_path, names, pairs, method):
    path = _foreign(tmp_path / "vad.onnx", names)
    original = path.read_bytes()
    state_in, state_out = names[0][1], names[1][1]
    if pairs is None:
        report = quantize(path, method=method, steps=STEPS)
    else:
        if names is OTHER_NAMES:  # the rule finds nothing; the error says how to give the pair
            with pytest.raises(EdgernnError, match="--state-pair IN=OUT"):
                quantize(path, method=method, steps=STEPS)
        report = quantize(path, method=method, steps=STEPS, state_pairs=pairs)
    assert path.read_bytes() == original
    how = "found by the naming rule" if pairs is None else "given by the user"
    assert any(f"has no edgernn metadata; state pairs {how}" in n and
               f"{state_in} -> {state_out}; the quantized file names them state_in.{state_in} -> state_out.{state_in}"
               in n for n in report.notes), report.notes
    ops = [n.op_type for n in _nodes(report.model)]
    assert "GRU" not in ops and report.quantized
    assert all("under --min-size" in d.why for d in report.kept_float), report.kept_float  # (the 48-weight head)
    q_info = info(report.path).to_json()
    assert q_info["contract_from"] == "metadata" and q_info["mode"] == "step"
    assert [(s["name"], s["input"], s["output"], s["shape"], s["batch_axis"]) for s in q_info["states"]] == [
        (state_in, f"state_in.{state_in}", f"state_out.{state_in}", [1, "batch", 48], 1)]
    assert [t["name"] for t in q_info["inputs"]] == [names[0][0]]
    assert [t["name"] for t in q_info["outputs"]] == [names[1][0]]
    q = onnx.load(report.path)
    assert [v.name for v in q.graph.input] == [names[0][0], f"state_in.{state_in}"]
    assert [v.name for v in q.graph.output] == [names[1][0], f"state_out.{state_in}"]
    # the quantized file streams like the foreign float file run by hand (measured: <= 2.4e-3 static)
    x = np.random.default_rng(2).standard_normal((200, 3, 16)).astype(np.float32)
    y_float, state_float = _float_rollout(path, names, x)
    session = StreamingSession(report.path)
    y_q = session.stream(x)[names[1][0]]
    assert y_q.shape == y_float.shape == (200, 3, 1)
    assert np.abs(y_q - y_float).max() < 0.02
    assert np.abs(session.state[state_in] - state_float).max() < MAX_STATE_ERROR
    assert report.accuracy.max_error < 0.02 and report.accuracy.outputs[0].decision == "threshold 0.5"
