"""How quantization decides, node by node: :func:`decide`, the one place every method's
per-node decision is made and explained. The quantize report names it (``QuantizeReport.decided_by``)."""

from __future__ import annotations

from typing import Any, Callable, Collection, Iterable

from edgernn.converters.quantize.report import NodeDecision

EXCLUDED = "excluded by the user"
NO_WEIGHT = "its second input is not a constant weight"


def decide(candidates: Iterable[tuple[Any, bool]], made: Callable[[Any], tuple[str, str] | None],
           why_float: Callable[[Any], str], exclude: Collection[str] = ()
           ) -> tuple[list[NodeDecision], list[NodeDecision]]:
    """Sort a method's candidate nodes into the converted and the float ones, each with its reason.

    Candidates (``(node, has_constant_weight)``, in graph order, subgraphs included):

    * ``dynamic`` and ``static``: every MatMul, Gemm, Conv and ONNX RNN / GRU / LSTM op
      (``graph.work_nodes``), after the method's rewrites: GRU and RNN ops (and, for ``static``,
      LSTM ops) are lowered to MatMul cells first (``lowering.py``: onnxruntime has no int8 kernel
      for them), and in step-mode files each recurrent layer is first rewritten into one MatMul
      over ``[x, h]`` or one one-frame LSTM op (``stepcells.py``; those layers are reported by the
      input file's nodes they replaced, with ``FusedLayer.why``).
    * ``fp16`` and ``mixed``: every node of the main graph that computes on or stores a float32
      tensor (``fp16.py``).

    A candidate is converted when the method converted it: ``made(node)`` returns its new dtype
    and how (``dynamic``: onnxruntime made it int8 with weights quantized ahead and activations per
    call, a DynamicQuantizeMatMul or DynamicQuantizeLSTM, or, for a Conv, int8 weights per
    output channel that onnxruntime dequantizes once at load, ``convolution.py``; ``static``: it
    reads int8 QDQ pairs calibrated on streams; ``fp16``: it runs in float16, or computes in
    float32 on weights stored as float16). Otherwise it stays float32 for the first reason that holds:

    1. the user excluded it (``--exclude``; ``fp16`` takes op types too);
    2. its second input is not a constant weight (a MatMul of two activations has nothing to
       quantize ahead);
    3. the method's own reason, ``why_float(node)``: ``dynamic`` and ``static``: a recurrent op the
       cells cannot express (``lowering.spec_from_node`` says why, e.g. ``sequence_lens``), else
       onnxruntime's quantizer left it; ``fp16``: mixed mode keeps the recurrent state path (every
       node from a state input to a state output) and the recurrent ops in float32, onnxruntime's
       CPU provider has no float16 kernel for the op, control flow (its body stays float32), or a
       data-moving node off float16 paths (``fp16._fp32_reasons``).

    The recurrent state inputs and outputs stay float32 in every method.
    """
    done, kept = [], []
    for node, const_weight in candidates:
        name = node.name or ""
        how = made(node)
        if how:
            done.append(NodeDecision(name, node.op_type, *how))
        elif name in exclude:
            kept.append(NodeDecision(name, node.op_type, "float32", EXCLUDED))
        elif not const_weight:
            kept.append(NodeDecision(name, node.op_type, "float32", NO_WEIGHT))
        else:
            kept.append(NodeDecision(name, node.op_type, "float32", why_float(node)))
    return done, kept
