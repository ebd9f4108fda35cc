"""int8 dynamic quantization for every cell: weights int8, activations quantized per call.

Step-mode files first get their recurrent layers rewritten into the one-frame shapes measured
fastest in onnxruntime (``stepcells.py``: GRU and Elman RNN as one MatMul over [x, h] per layer,
LSTM as a one-frame LSTM op). Then LSTM ops go to onnxruntime's DynamicQuantizeLSTM (a fused int8
kernel); GRU and RNN ops, for which onnxruntime has no int8 kernel, are lowered to MatMul cells
(``lowering.py``); and onnxruntime's ``quantize_dynamic`` turns every MatMul with a constant weight,
in the main graph and in Scan bodies, into int8 (MatMulInteger, which onnxruntime's optimizer fuses
with its scales and bias into DynamicQuantizeMatMul when the session loads). Convolutions get int8
weights, one scale per output channel, that onnxruntime dequantizes once when the session loads
(``convolution.py``: measured faster than its ConvInteger kernel, which quantizes activations to
uint8 every call).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Sequence

import onnx

from edgernn.converters.quantize.convolution import HOW as CONV_HOW
from edgernn.converters.quantize.convolution import int8_conv_weights
from edgernn.converters.quantize.decisions import decide
from edgernn.converters.quantize.graph import node_keys, work_nodes
from edgernn.converters.quantize.lowering import KEPT, RECURRENT_OPS, lower_recurrent_ops
from edgernn.converters.quantize.report import NodeDecision
from edgernn.converters.quantize.stepcells import compact_zero_blocks, fuse_step_cells
from edgernn.recurrent_kinds import KINDS

# onnxruntime's int8 kernel per ONNX op (DynamicQuantizeLSTM); GRU and RNN have none and are lowered
INT8_OPS = {k.onnx_op: k.int8_op for k in KINDS.values() if k.int8_op}


def quantize_dynamic_int8(model: onnx.ModelProto, *, per_channel: bool = False, exclude: Sequence[str] = (),
                          lower_lstm: bool = False, step: bool = False
                          ) -> tuple[onnx.ModelProto, list[NodeDecision], list[NodeDecision]]:
    """Return (int8 model, nodes made int8, nodes left in float with the reason). ``step``: the
    model runs one frame per call (its recurrent layers are rewritten for that first). Each node is
    decided by :func:`~edgernn.converters.quantize.decisions.decide`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fused = []
    if step:
        model, fused = fuse_step_cells(model, exclude=exclude)
    ops = tuple(op for op in RECURRENT_OPS if lower_lstm or op not in INT8_OPS)
    lowered, record = lower_recurrent_ops(model, op_types=ops, exclude=exclude)
    not_lowered = {r.name: r.why for r in record if not r.done and r.why != KEPT}
    made = {f.node for f in fused}  # reported as the input file's nodes they replaced
    candidates = [(n, c) for n, c in work_nodes(lowered) if (n.name, n.op_type) not in made]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "float.onnx"), Path(tmp, "int8.onnx")
        onnx.save(lowered, src)
        logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing": not for RNN graphs
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul", "Gemm", *INT8_OPS], per_channel=per_channel,
                         weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                         extra_options={"EnableSubgraph": True, "MatMulConstBOnly": True})
        quantized = onnx.load(dst)
    quantized, convs = int8_conv_weights(quantized, exclude)  # weight-only: faster than ConvInteger (convolution.py)
    remaining = node_keys(quantized)

    fused_done, fused_kept = [], []
    for f in fused:
        if f.node in remaining:
            fused_kept += [NodeDecision(n, t, "float32", "onnxruntime's quantizer left it in float")
                           for n, t in f.replaced]
            continue
        if f.weight:
            compact_zero_blocks(quantized, f)
        fused_done += [NodeDecision(n, t, "int8", f.why(n)) for n, t in f.replaced]

    def int8(node) -> tuple[str, str] | None:
        if node.op_type == "Conv" and (node.name or "") in convs:
            return "int8", CONV_HOW
        if (node.name, node.op_type) in remaining:
            return None
        kind = INT8_OPS.get(node.op_type, "dynamic int8 MatMul")
        return "int8", f"{kind} (int8 weights, activations quantized at run time)"

    def why_float(node) -> str:
        if node.op_type == "Conv":
            return "its weight is not a float32 tensor of 3 or more axes"
        return not_lowered.get(node.name, "onnxruntime's quantizer left it in float")

    done, kept = decide(candidates, int8, why_float, exclude)
    return quantized, fused_done + done, fused_kept + kept
