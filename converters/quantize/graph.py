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


_NOT_FOLDABLE = {"If", "Loop", "Scan", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                 "Multinomial", "Bernoulli"}


def _static(value: ir.Value | None, memo: dict) -> bool:
    """Whether ``value`` is computed from constants alone (initializers, ``Constant`` nodes, and
    deterministic ops of them), in any graph."""
    if value is None:
        return True
    if value in memo:
        return memo[value]
    memo[value] = False  # a cycle (none in a valid graph) is not static
    producer = value.producer()
    if value.is_initializer() or value.const_value is not None:
        memo[value] = True
    elif producer is not None and producer.op_type not in _NOT_FOLDABLE and producer.domain in ("", "ai.onnx"):
        memo[value] = all(_static(v, memo) for v in producer.inputs)
    return memo[value]


def foldable_weights(model: onnx.ModelProto | ir.Model) -> list[ir.Node]:
    """Work nodes (:func:`work_nodes`) whose weight is not a constant yet but is computed from
    constants alone: a Split, Slice, Transpose, Reshape, Concat, Gather... of initializers or
    ``Constant`` nodes (a cell that chunks or indexes its weight in forward), in subgraphs too.
    Constant folding makes those weights constants a quantizer can read."""
    memo: dict = {}
    return [n for n, const in work_nodes(model) if not const and len(n.inputs) > 1 and n.inputs[1] is not None
            and n.inputs[1].producer() is not None and _static(n.inputs[1], memo)]


def fold_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Fold the static weight paths of :func:`foldable_weights` into initializers
    (:func:`edgernn.converters.optimize.fold_constants`) and check that the folded graph gives the
    same outputs on random inputs. Returns the model (``model`` itself when nothing is to fold, or
    when the folded graph differs or loses an input) and a sentence for the report (None when
    nothing was to fold)."""
    import onnx_ir as ir

    from edgernn.converters.optimize import fold_constants

    m = ir.from_proto(model)
    targets = foldable_weights(m)
    if not targets:
        return model, None
    fold_constants(m)
    folded = ir.to_proto(m)
    left = {n.name for n in foldable_weights(folded)}
    done = [n.name for n in targets if n.name not in left]
    if [i.name for i in folded.graph.input] != [i.name for i in model.graph.input] or \
            [o.name for o in folded.graph.output] != [o.name for o in model.graph.output]:
        return model, f"constant folding of {len(targets)} weight path(s) declined: it changed the graph's I/O"
    parity = compare_on_random(model, folded)
    if parity is False:
        return model, f"constant folding of {len(targets)} weight path(s) declined: the folded graph's outputs differ"
    checked = ("same outputs on random inputs" if parity else
               "not run on made-up inputs (the accuracy check compares with the unfolded float file)")
    return folded, (f"constant folding made {len(done)} of {len(targets)} computed weights constants "
                    f"(Split / Slice / Transpose / ... of initializers; {', '.join(done[:3])}"
                    f"{', ...' if len(done) > 3 else ''}); {checked}")


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


def compare_on_random(a: onnx.ModelProto, b: onnx.ModelProto, tolerance: float = TOLERANCE) -> bool | None:
    """Whether ``b`` gives ``a``'s outputs on random inputs (batch 1 and 2); None when ``a`` does
    not run on made-up inputs (it needs real data, e.g. a window of a given size)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        sa = ort.InferenceSession(a.SerializeToString(), options, providers=["CPUExecutionProvider"])
        runs = [(feeds, sa.run(None, feeds)) for feeds in (random_feeds(a, 1, 0), random_feeds(a, 2, 1))]
    except Exception:
        return None
    try:
        sb = ort.InferenceSession(b.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for feeds, want in runs:
            for x, y in zip(want, sb.run(None, feeds)):
                if x.shape != y.shape or not np.allclose(x, y, atol=tolerance, rtol=tolerance, equal_nan=True):
                    return False
    except Exception:
        return False
    return True


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


def weight_bytes(model: onnx.ModelProto) -> int:
    """Serialized bytes of the model's tensors: initializers and ``Constant`` node values, in the
    main graph and every subgraph (the rest of a file is its graph: nodes, names, metadata)."""

    def of(graph: onnx.GraphProto) -> int:
        total = sum(t.ByteSize() for t in graph.initializer)
        for node in graph.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    total += a.t.ByteSize()
                elif a.type == onnx.AttributeProto.GRAPH:
                    total += of(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    total += sum(of(g) for g in a.graphs)
        return total

    return of(model.graph)


def weight_elements(node: ir.Node) -> int:
    """Elements of a work node's constant weights (a MatMul / Gemm / Conv's second input; a
    recurrent op's W and R); 0 when they are not constants of known shape."""
    inputs = node.inputs[1:3] if node.op_type in ONNX_OPS else node.inputs[1:2]
    total = 0
    for v in inputs:
        if v is None:
            continue
        tensor = v.const_value
        producer = v.producer()
        if tensor is None and producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
            tensor = producer.attributes["value"].as_tensor()
        if tensor is None:
            return 0
        total += int(np.prod(tensor.shape.numpy()))
    return total


def small_weights(model: onnx.ModelProto, min_size: int) -> dict[str, int]:
    """Name -> weight elements of the work nodes whose constant weights have fewer than
    ``min_size`` elements: int8 would cost them more than it saves (their quantize/dequantize nodes
    and scales take some 600 bytes and a microsecond per call on one CPU thread, a 32 x 32 matrix
    saves 3 KB)."""
    return {name: n for name, n in node_weights(model).items() if n < min_size}


def node_weights(model: onnx.ModelProto) -> dict[str, int]:
    """Name -> weight elements of every named work node whose weights are constants."""
    out = {}
    for node, const in work_nodes(model):
        n = weight_elements(node) if const else 0
        if n > 0 and node.name:
            out[node.name] = n
    return out
