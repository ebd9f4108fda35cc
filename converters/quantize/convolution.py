"""Dynamic int8 for convolutions: int8 weights, one scale per output channel, dequantized once.

Measured on onnxruntime 1.32's CPU provider (docs/quantization.md, ``benchmarks/conv_int8.py``:
a conv-frontend + GRU export and silero-vad's look-alike, each route against the same int8 file
with float convolutions), three ways to make a ``Conv`` int8 in a file that must stay fast on a CPU:

* onnxruntime's ``ConvInteger`` (``quantize_dynamic`` with ``Conv`` among its op types): the
  activations are quantized every call (``DynamicQuantizeLinear``, which ONNX defines for uint8
  only) and the integer convolution is slower than the float one: 1.3x-1.5x the per-frame time;
* the weights as int8 behind a ``DequantizeLinear`` (per output channel): onnxruntime keeps that
  node (for its QDQ fusions) and dequantizes every call: 1.06x-1.24x;
* the weights as int8 behind ``Cast`` and a ``Mul`` by the per-channel scales (this module):
  constant inputs only, so onnxruntime folds them into a float weight when the session loads and
  the convolution runs as with float weights (1.0x), from a file whose convolution weights take a
  quarter of the bytes. Activations stay float, so the only error is the weights' rounding.

The last is what ``quantize --method dynamic`` does to every ``Conv`` with a constant float32 weight
(main graph and subgraphs), except the excluded ones. The graph is edited with onnx-ir.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Collection

import numpy as np
import onnx

if TYPE_CHECKING:  # pragma: no cover
    import onnx_ir as ir

HOW = "int8 weights, one scale per output channel, dequantized once when the session loads; float activations"


def int8_conv_weights(model: onnx.ModelProto, exclude: Collection[str] = ()) -> tuple[onnx.ModelProto, set[str]]:
    """Return ``model`` with the weight of every ``Conv`` whose weight is a constant float32 tensor
    stored as int8 (symmetric, one scale per output channel) and read through ``Cast`` and ``Mul``,
    and the names of the ``Conv`` nodes so changed. A weight several convolutions share is stored
    once; the float initializer goes when nothing else reads it."""
    import onnx_ir as ir

    m = ir.from_proto(model)
    done: set[str] = set()
    made: dict[tuple[int, int], ir.Value] = {}  # (id(float weight), id(graph)) -> its dequantized value
    for node in list(ir.traversal.RecursiveGraphIterator(m.graph)):
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or (node.name or "") in exclude:
            continue
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        value = _constant(weight)
        if value is None or value.dtype != np.float32 or value.ndim < 3 or not value.size:
            continue
        key = (id(weight), id(node.graph))
        if key not in made:
            made[key] = _dequantized(node.graph, node, weight, value)
        node.replace_input_with(1, made[key])
        done.add(node.name or "")
        owner = weight.graph
        if weight.is_initializer() and not weight.uses() and owner is not None:
            del owner.initializers[weight.name]
        elif weight.producer() is not None and not weight.uses():
            weight.producer().graph.remove(weight.producer(), safe=True)
    return (ir.to_proto(m) if done else model), done


def _constant(value: ir.Value | None) -> np.ndarray | None:
    """The array of an initializer or of a ``Constant`` node's ``value``, else None."""
    if value is None:
        return None
    if value.is_initializer() and value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].as_tensor().numpy()
    return None


def _dequantized(graph: ir.Graph, before: ir.Node, weight: ir.Value, w: np.ndarray) -> ir.Value:
    """Initializers ``<weight>.int8`` and ``<weight>.scale`` in ``graph`` and the ``Cast`` and
    ``Mul`` (inserted before ``before``) that give the weight back in float32."""
    import onnx_ir as ir

    amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32).reshape(-1, *[1] * (w.ndim - 1))
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    base = weight.name or f"{before.name}.weight"
    q_value = ir.Value(name=f"{base}.int8", const_value=ir.tensor(q, name=f"{base}.int8"))
    s_value = ir.Value(name=f"{base}.scale", const_value=ir.tensor(scale, name=f"{base}.scale"))
    graph.register_initializer(q_value)
    graph.register_initializer(s_value)
    cast = ir.node("Cast", [q_value], {"to": ir.DataType.FLOAT}, name=f"{base}/int8_to_float")
    mul = ir.node("Mul", [cast.outputs[0], s_value], name=f"{base}/dequantize")
    cast.outputs[0].name = f"{base}.int8_as_float"
    mul.outputs[0].name = f"{base}.dequantized"
    mul.outputs[0].dtype = ir.DataType.FLOAT
    mul.outputs[0].shape = ir.Shape(list(w.shape))
    graph.insert_before(before, [cast, mul])
    return mul.outputs[0]


__all__ = ["HOW", "int8_conv_weights"]
