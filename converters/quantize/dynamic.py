"""int8 dynamic quantization for every cell: weights int8, activations quantized per call.

LSTM ops go to onnxruntime's DynamicQuantizeLSTM (a fused int8 kernel); GRU and RNN ops, for
which onnxruntime has no int8 kernel, are first lowered to MatMul cells (``lowering.py``); then
onnxruntime's ``quantize_dynamic`` turns every MatMul with a constant weight, in the main graph
and in Scan bodies, into int8 (MatMulInteger / DynamicQuantizeMatMul).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Sequence

import onnx

from edgernn.converters.quantize.graph import decisions, node_keys, work_nodes
from edgernn.converters.quantize.lowering import lower_recurrent_ops
from edgernn.converters.quantize.report import NodeDecision


def quantize_dynamic_int8(model: onnx.ModelProto, *, per_channel: bool = False, exclude: Sequence[str] = (),
                          lower_lstm: bool = False) -> tuple[onnx.ModelProto, list[NodeDecision], list[NodeDecision]]:
    """Return (int8 model, nodes made int8, nodes left in float with the reason)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = ("GRU", "RNN", "LSTM") if lower_lstm else ("GRU", "RNN")
    lowered, record = lower_recurrent_ops(model, op_types=ops, exclude=exclude)
    # an LSTM op kept as the ONNX op is quantized by onnxruntime below (DynamicQuantizeLSTM)
    kept = [NodeDecision(r.name, r.op_type, "float32", r.why) for r in record
            if not r.done and not (r.op_type == "LSTM" and r.why == "kept as the ONNX op")]
    candidates = work_nodes(lowered)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "float.onnx"), Path(tmp, "int8.onnx")
        onnx.save(lowered, src)
        logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing": not for RNN graphs
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul", "Gemm", "LSTM"], per_channel=per_channel,
                         weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                         extra_options={"EnableSubgraph": True, "MatMulConstBOnly": True})
        quantized = onnx.load(dst)
    remaining = node_keys(quantized)

    def how(node: onnx.NodeProto) -> str | None:
        if (node.name, node.op_type) in remaining:
            return None
        kind = "DynamicQuantizeLSTM" if node.op_type == "LSTM" else "dynamic int8 MatMul"
        return f"{kind} (int8 weights, activations quantized at run time)"

    done, more = decisions(candidates, exclude, how, "onnxruntime's quantizer left it in float",
                           skip=("GRU", "RNN"))  # GRU/RNN: recorded by the lowering
    return quantized, done, kept + more
