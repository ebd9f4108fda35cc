"""Graph helpers the quantizers share: the nodes they could act on, dead-code removal, topological
order, and the numeric check that a float rewrite computes what its input computes.

Queries walk the graph with onnx-ir (``RecursiveGraphIterator``: Scan, Loop and If bodies too);
rewrites clean up with its passes (``RemoveUnusedNodesPass``, ``TopologicalSortPass``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import numpy as np
import onnx

from edgernn.recurrent_kinds import ONNX_OPS

if TYPE_CHECKING:  # pragma: no cover
    import onnx_ir as ir

QUANTIZABLE = ("MatMul", "Gemm", "Conv", *ONNX_OPS)
TOLERANCE = 1e-4  # float32 rewrite vs input: sums are only regrouped (measured: at most ~1e-6)


def _has_constant_weight(node: ir.Node) -> bool:
    """Whether the node's second input is a constant: an initializer (of its graph or an outer
    one) or a Constant node's output."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if weight is None:
        return False
    producer = weight.producer()
    return weight.is_initializer() or (producer is not None and producer.op_type == "Constant")


def all_nodes(model: onnx.ModelProto | ir.Model) -> Iterator[ir.Node]:
    """Every node of the main graph and of its subgraphs (Scan, Loop and If bodies), in order.
    (onnx-ir is imported here, not with the module: it takes half a second.)"""
    import onnx_ir as ir

    m = ir.from_proto(model) if isinstance(model, onnx.ModelProto) else model
    return ir.traversal.RecursiveGraphIterator(m.graph)


def work_nodes(model: onnx.ModelProto | ir.Model) -> list[tuple[ir.Node, bool]]:
    """Nodes a quantizer could act on (MatMul/Gemm/Conv/recurrent ops), in the main graph and every
    subgraph, and whether their weight input is a constant (a MatMul of two activations has no
    weight to quantize)."""
    return [(n, _has_constant_weight(n)) for n in all_nodes(model) if n.op_type in QUANTIZABLE]


def node_keys(model: onnx.ModelProto) -> set[tuple[str, str]]:
    """(name, op type) of every node, subgraphs included."""
    return {(n.name or "", n.op_type) for n in all_nodes(model)}


def unread_initializers(model: ir.Model) -> set[str]:
    """Names of the main graph's initializers no node reads (stored start values ``state_init.*``,
    which runtimes read)."""
    return {v.name for v in model.graph.initializers.values() if not v.uses()}


def remove_dead_code(model: ir.Model, keep: set[str] = frozenset()) -> None:
    """Drop the nodes and initializers nothing reads any more, subgraphs' own initializers too,
    except the initializers named in ``keep`` (see :func:`unread_initializers`)."""
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    kept = [v for v in model.graph.initializers.values() if v.name in keep]
    RemoveUnusedNodesPass()(model)
    for value in kept:
        if value.name not in model.graph.initializers:
            model.graph.register_initializer(value)
    for sub in model.graph.subgraphs():  # the pass leaves the subgraphs' own initializers
        for value in [v for v in sub.initializers.values() if not v.uses() and v.name not in keep]:
            del sub.initializers[value.name]


def sorted_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every producer before its consumers, otherwise in the given order."""
    import onnx_ir as ir
    from onnx_ir.passes.common import TopologicalSortPass

    m = ir.from_proto(model)
    TopologicalSortPass()(m)
    return ir.to_proto(m)


# ---------------------------------------------------------------------------------------------
# checking a float rewrite
# ---------------------------------------------------------------------------------------------

def random_feeds(model: onnx.ModelProto, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Random data for every graph input: symbolic dimensions ``batch``, float N(0, 0.5^2), integer
    and bool inputs zero (a valid index into any table)."""
    from onnx_ir import DataType

    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for v in model.graph.input:
        if v.name in inits:
            continue
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in t.shape.dim]
        dtype = np.dtype(DataType(t.elem_type).numpy())
        if dtype.kind == "f":
            feeds[v.name] = (0.5 * rng.standard_normal(dims)).astype(dtype)
        else:
            feeds[v.name] = np.zeros(dims, dtype)
    return feeds


def same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, tolerance: float = TOLERANCE) -> bool:
    """Whether ``a`` and ``b`` give the same outputs (within ``tolerance``) on random inputs, batch 1 and 2."""
    import onnxruntime as ort

    try:
        sa, sb = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (a, b))
        for batch, seed in ((1, 0), (2, 1)):
            feeds = random_feeds(a, batch, seed)
            for x, y in zip(sa.run(None, feeds), sb.run(None, feeds)):
                if x.shape != y.shape or not np.allclose(x, y, atol=tolerance, rtol=tolerance, equal_nan=True):
                    return False
    except Exception:  # the rewrite does not even run: drop it
        return False
    return True
