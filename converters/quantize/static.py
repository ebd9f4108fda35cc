"""int8 static (QDQ) quantization with calibration that respects streaming.

Calibration data are streams. Each stream is fed through the float model call after call, and
the state inputs of every calibration call are the states the model itself produced on the
previous call (not zeros, not random), as they will be in use.

Only MatMul / Gemm / Conv inputs get QuantizeLinear/DequantizeLinear pairs; the cells'
elementwise ops, and with them the carried state and the graph's state inputs/outputs, stay
float32, so the state does not accumulate rounding from call to call.

Recurrent ops are lowered to MatMul cells first (``lowering.py``). onnxruntime's
``quantize_static`` does not enter Scan bodies, so the recurrence MatMul in each body gets its
QDQ here: the weight symmetric int8 (per output channel with ``per_channel``), the activation
(the previous h) asymmetric uint8 over the range h took during calibration.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgernn.converters.quantize.accuracy import whole_calls
from edgernn.converters.quantize.decisions import decide
from edgernn.converters.quantize.graph import work_nodes
from edgernn.converters.quantize.lowering import lower_recurrent_ops
from edgernn.converters.quantize.report import NodeDecision


def stream_feeds(model: bytes, streams: Sequence[Mapping[str, np.ndarray]], chunk: int,
                 max_calls: int) -> list[dict[str, np.ndarray]]:
    """The feeds of every call when ``streams`` are streamed through the float ``model``, state
    carried: data inputs of the call plus the state the model produced on the call before."""
    from edgernn.runtimes.session import StreamingSession

    session = StreamingSession(model)
    feeds: list[dict[str, np.ndarray]] = []
    for stream in streams:
        session.reset()
        calls = _calls(session, stream, chunk)
        for call in calls:
            if len(feeds) >= max_calls:
                return feeds
            before = session.state
            session.step(**call)
            if not before:  # first call: the init state the session created
                before = session.initial_state(session.batch_size or 1)
            feeds.append({**call, **{s.input: before[s.name] for s in session.states}})
    return feeds


def _calls(session, stream: Mapping[str, np.ndarray], chunk: int):
    specs = session.inputs
    axis = {s.name: (s.time_axis if s.time_axis is not None else 0) for s in specs}
    total = next(iter(stream.values())).shape[axis[specs[0].name]]
    chunk, total = whole_calls(chunk, total, session.frame_multiple)
    for start in range(0, total, chunk):
        call = {}
        for s in specs:
            part = np.take(stream[s.name], range(start, min(start + chunk, total)), axis=axis[s.name])
            call[s.name] = part[0] if s.time_axis is None else part
        yield call


class _Reader:
    """onnxruntime CalibrationDataReader over recorded feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def quantize_static_int8(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], *, per_channel: bool = False,
                         exclude: Sequence[str] = ()) -> tuple[onnx.ModelProto, list[NodeDecision], list[NodeDecision]]:
    """Return (QDQ model, nodes made int8, nodes left in float with the reason), each node decided
    by :func:`~edgernn.converters.quantize.decisions.decide`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    lowered, record = lower_recurrent_ops(model, exclude=exclude)
    _dedicate_matmul_inputs(lowered.graph)
    not_lowered = {r.name: r.why for r in record if not r.done}
    ranges = _scan_state_ranges(lowered, feeds)
    candidates = work_nodes(lowered)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "float.onnx"), Path(tmp, "qdq.onnx")
        onnx.save(lowered, src)
        logging.getLogger().setLevel(logging.ERROR)
        quantize_static(src, dst, _Reader(feeds), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul", "Gemm", "Conv"], per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=list(exclude), calibrate_method=CalibrationMethod.MinMax,
                        # no CalibMaxIntermediateOutputs: onnxruntime (1.32) drops, rather than merges, the
                        # ranges of each full batch of calls, and raises "No data is collected" when the
                        # number of calls is a multiple of it; MinMax keeps only per-call min/max scalars
                        extra_options={"MatMulConstBOnly": True,
                                       "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm", "Conv"]})
        quantized = onnx.load(dst)
    body_done = _qdq_scan_bodies(quantized, ranges, per_channel, set(exclude))
    main_graph = {(n.name, n.op_type) for n in quantized.graph.node}
    qdq_inputs = {n.output[0] for n in quantized.graph.node if n.op_type == "DequantizeLinear"}

    def int8(node) -> tuple[str, str] | None:
        key = (node.name, node.op_type)
        fed = key in main_graph and _fed_by_dq(quantized.graph, node.name, qdq_inputs)
        return ("int8", "static int8 QDQ (calibrated on streams)") if key in body_done or fed else None

    done, kept = decide(candidates, int8, lambda n: not_lowered.get(n.name, "the quantizer left it in float"), exclude)
    return quantized, done, kept


# The helpers below stay on protos, by hand: onnxruntime's quantize_static reads and writes files
# (protos), and they touch only the main graph and the Scan bodies right under it.
def _dedicate_matmul_inputs(graph: onnx.GraphProto) -> None:
    """Give each MatMul/Gemm/Conv activation input that other nodes also read its own Identity
    copy. onnxruntime's QDQ quantizer rewires *every* reader of a quantized tensor to the
    dequantized value; without this, the cells' elementwise ops would read the 8-bit-rounded
    state, and the carried state would accumulate rounding."""
    readers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    outputs = {o.name for o in graph.output}
    nodes = []
    for n in graph.node:
        if n.op_type in ("MatMul", "Gemm", "Conv") and n.input and (readers.get(n.input[0], 0) > 1
                                                                      or n.input[0] in outputs):
            copy = f"{n.input[0]}.to_{n.name or n.output[0]}"
            nodes.append(helper.make_node("Identity", [n.input[0]], [copy], name=f"{copy}.Identity"))
            n.input[0] = copy
        nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)


def _fed_by_dq(graph: onnx.GraphProto, name: str, dq_outputs: set[str]) -> bool:
    node = next((n for n in graph.node if n.name == name), None)
    return node is not None and all(i in dq_outputs for i in node.input[:2] if i)


def _scan_state_ranges(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """Per lowered Scan node: the (min, max) its carried h takes over the calibration calls (the
    initial h it receives and every h it emits)."""
    import onnxruntime as ort

    scans = [n for n in model.graph.node if n.op_type == "Scan"]
    if not scans or not feeds:
        return {}
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    watch = {}
    for n in scans:
        watch[n.name] = [n.input[0], n.output[-1]]  # initial h, all emitted h
        for t in watch[n.name]:
            probe.graph.output.append(helper.make_empty_tensor_value_info(t))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    for feed in feeds:
        values = dict(zip(names, session.run(None, feed)))
        for scan, tensors in watch.items():
            for t in tensors:
                v = values[t]
                lo[scan] = min(lo.get(scan, 0.0), float(v.min()))
                hi[scan] = max(hi.get(scan, 0.0), float(v.max()))
    return {k: (lo[k], hi[k]) for k in lo}


def _qdq_scan_bodies(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]], per_channel: bool,
                     exclude: set[str]) -> set[tuple[str, str]]:
    """Add QDQ to the MatMuls with constant weights inside each calibrated Scan body."""
    done = set()
    for scan in model.graph.node:
        if scan.op_type != "Scan" or scan.name not in ranges:
            continue
        body = next(a.g for a in scan.attribute if a.name == "body")
        inits = {t.name: t for t in body.initializer}
        h_in = body.input[0].name
        new_nodes = []
        for node in body.node:
            if node.op_type == "MatMul" and node.input[1] in inits and node.name not in exclude:
                lo, hi = ranges[scan.name] if node.input[0] == h_in else (-1.0, 1.0)  # o*tanh(c) is in (-1, 1)
                a_dq = _qdq_activation(body, new_nodes, node.input[0], lo, hi, node.name)
                w_dq = _dq_weight(body, new_nodes, inits[node.input[1]], per_channel, node.name)
                node.input[0], node.input[1] = a_dq, w_dq
                done.add((node.name, node.op_type))
            new_nodes.append(node)
        del body.node[:]
        body.node.extend(new_nodes)
    return done


def _qdq_activation(body: onnx.GraphProto, nodes: list, name: str, lo: float, hi: float, tag: str) -> str:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-8)
    zero = int(np.clip(round(-lo / scale), 0, 255))
    s = numpy_helper.from_array(np.asarray(scale, np.float32), f"{tag}.a_scale")
    z = numpy_helper.from_array(np.asarray(zero, np.uint8), f"{tag}.a_zero")
    body.initializer.extend([s, z])
    q, dq = f"{tag}.a_q", f"{tag}.a_dq"
    nodes.append(helper.make_node("QuantizeLinear", [name, s.name, z.name], [q], name=f"{tag}.Q"))
    nodes.append(helper.make_node("DequantizeLinear", [q, s.name, z.name], [dq], name=f"{tag}.DQ"))
    return dq


def _dq_weight(body: onnx.GraphProto, nodes: list, init: onnx.TensorProto, per_channel: bool, tag: str) -> str:
    w = numpy_helper.to_array(init).astype(np.float32)  # [K, N]: x @ w
    amax = np.abs(w).max(axis=0) if per_channel else np.asarray(np.abs(w).max())
    scale = np.maximum(amax / 127.0, 1e-12).astype(np.float32)
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    wq = numpy_helper.from_array(q, f"{tag}.w_int8")
    s = numpy_helper.from_array(scale, f"{tag}.w_scale")
    z = numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{tag}.w_zero")
    keep = [t for t in body.initializer if t.name != init.name]
    del body.initializer[:]
    body.initializer.extend(keep + [wq, s, z])
    out = f"{tag}.w_dq"
    attrs = {"axis": 1} if per_channel else {}
    nodes.append(helper.make_node("DequantizeLinear", [wq.name, s.name, z.name], [out], name=f"{tag}.DQw", **attrs))
    return out
