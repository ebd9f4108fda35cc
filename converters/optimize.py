"""The optimize pass: onnxscript's optimizer (constant folding, rewrites, dead code) on the lowered graph.

It runs on an onnx-ir model, with three fixes after it: the stored start values
(``state_init.<name>``, read by runtimes, not by nodes) are put back, weights that only one
subgraph reads go back into that subgraph, and a ``Scan`` body output that the body itself reads
gets its own ``Identity`` again (:func:`scan_outputs_apart`).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

import numpy as np
import onnx_ir as ir

from edgernn.converters.describe import STATE_INIT
from edgernn.converters.pass_api import PassResult

if TYPE_CHECKING:  # pragma: no cover
    from edgernn.converters.passes import ExportContext


class Optimize:
    """onnxscript's optimizer (constant folding, dead code) on the lowered graph."""

    name = "optimize"

    def __call__(self, ctx: ExportContext) -> PassResult:
        import onnxscript.optimizer

        assert ctx.onnx_model is not None
        model = ir.serde.deserialize_model(ctx.onnx_model)
        before, layout = len(model.graph), _layout(model.graph)
        starts = [v for name, v in model.graph.initializers.items() if name.startswith(STATE_INIT)]
        with exact_no_op_rules():
            onnxscript.optimizer.optimize(model)  # in place on an ir.Model
        for v in starts:  # the optimizer drops them: no node reads them
            if v.name not in model.graph.initializers:
                model.graph.initializers.add(v)
        # the optimizer keeps metadata_props; keep I/O order and names exactly as they were
        if [v.name for v in model.graph.inputs] != [i.name for i in ctx.onnx_model.graph.input]:
            return PassResult.unchanged("skipped: the optimizer changed graph inputs")
        moved = initializers_into_subgraphs(model.graph)
        apart = scan_outputs_apart(model.graph)
        changed = moved > 0 or apart > 0 or _layout(model.graph) != layout
        ctx.onnx_model = ir.serde.serialize_model(model)
        return PassResult(changed, f"{before} -> {len(model.graph)} nodes" + (
            f", {moved} weights kept in the subgraphs that read them" if moved else "") + (
            f", {apart} Scan output{'s' if apart != 1 else ''} given {'their' if apart != 1 else 'its'} own Identity"
            if apart else ""))


def _exactly(value: ir.Value | None, scalar: float) -> bool:
    tensor = None if value is None else ir.convenience.get_const_tensor(value)
    return tensor is not None and tensor.shape.rank() == 0 and bool(np.all(tensor.numpy() == scalar))


def _no_op_rules() -> list:
    """``x + 0``, ``0 + x``, ``x - 0``, ``x * 1``, ``1 * x``, ``x / 1`` -> ``x``, for a constant
    that is exactly 0 or 1 (a scalar, as onnxscript's own rules require)."""
    from onnxscript.rewriter import RewriteRule

    def identity(op, x, **_):
        return op.Identity(x)

    def when(scalar: float):
        return lambda context, x, c, **_: _exactly(c, scalar)

    def pattern(op_type: str, left: bool):  # the pattern builder names its variables after the arguments
        if left:
            return lambda op, x, c: getattr(op, op_type)(c, x)
        return lambda op, x, c: getattr(op, op_type)(x, c)

    rules = []
    for op_type, scalar, commutes in (("Add", 0.0, True), ("Sub", 0.0, False), ("Mul", 1.0, True),
                                      ("Div", 1.0, False)):
        for left in (False, True) if commutes else (False,):
            rules.append(RewriteRule(pattern(op_type, left), identity, when(scalar),
                                     name=f"exact_{op_type.lower()}_identity{'_left' if left else ''}"))
    return rules


@contextlib.contextmanager
def exact_no_op_rules() -> Iterator[None]:
    """Within this block onnxscript's optimizer (ours, and the one ``torch.onnx.export`` runs)
    drops ``x + c`` only for ``c`` exactly 0 (and ``x * c`` for exactly 1).

    Written by hand because onnxscript's no-op rules match constants with ``math.isclose``
    (``abs_tol=1e-8``, ``rel_tol=1e-5``): they take an epsilon such as ``1e-8`` or ``1e-12`` for
    zero and delete it, so ``x / (|x| + 1e-8)`` becomes ``x / |x|`` and an all-zero state gives
    NaN where PyTorch gives 0. The optimizer reads its rule list at call time, so it is swapped
    here for the duration of the call and restored after.
    """
    from onnxscript import rewriter
    from onnxscript.rewriter.rules.common import _no_op

    saved = rewriter._DEFAULT_REWRITE_RULES
    keep = (_no_op.dropout_zero_rule, _no_op.dropout_inference_rule)  # exact: attributes, not constants
    approximate = {id(r) for r in _no_op.rules.rules if not any(r is k for k in keep)}
    rewriter._DEFAULT_REWRITE_RULES = (*(r for r in saved if id(r) not in approximate), *_no_op_rules())
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = saved


def _layout(graph: ir.Graph) -> tuple:
    """What the optimizer may change: every node's op and value names, in order, and the initializers."""
    nodes = tuple((n.op_type, tuple(v.name if v is not None else "" for v in n.inputs),
                   tuple(v.name for v in n.outputs)) for n in ir.traversal.RecursiveGraphIterator(graph))
    return nodes, tuple(graph.initializers)


def initializers_into_subgraphs(graph: ir.Graph) -> int:
    """Put back into a subgraph the initializers only it reads. The optimizer hoists them to the
    main graph, where onnxruntime's LSTM quantizer does not find an op's weights and the float16
    converter converts them although the subgraph stays float32. Returns how many moved."""
    readers: dict[ir.Value, list[ir.Graph]] = {}  # value -> the subgraphs of main-graph nodes that read it
    for node in graph:
        for attr in node.attributes.values():
            if not isinstance(attr, ir.Attr) or attr.type not in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
                continue
            for sub in [attr.as_graph()] if attr.type == ir.AttributeType.GRAPH else attr.as_graphs():
                reads = {v for n in ir.traversal.RecursiveGraphIterator(sub) for v in n.inputs}
                reads.update(v for g in (sub, *sub.subgraphs()) for v in g.outputs)
                for v in reads:
                    readers.setdefault(v, []).append(sub)
    moved = 0
    for name, v in list(graph.initializers.items()):
        subs = readers.get(v, [])
        if (name.startswith(STATE_INIT) or len(subs) != 1 or v.is_graph_output()
                or any(user.graph is graph for user, _ in v.uses())):
            continue
        del graph.initializers[name]
        subs[0].register_initializer(v)
        moved += 1
    return moved


def scan_outputs_apart(graph: ir.Graph) -> int:
    """Give each per-frame output of a ``Scan`` body that the body also reads its own ``Identity``
    (``y_t = Identity(h)`` where the body computes ``h_next`` from ``h``), as the lowering wrote
    it before the optimizer folded the ``Identity`` away. Valid ONNX either way, but tract (0.23)
    adds the scan axis to such a value in place and then fails on the body's other reader
    ("Impossible to unify Sym(batch) with Val(1)"), e.g. the masked Scan of a recurrent layer after
    a 'same'-padded convolution. Returns how many outputs it gave one (onnxruntime drops them)."""
    done = 0
    for node in ir.traversal.RecursiveGraphIterator(graph):
        if node.op_type != "Scan" or node.domain not in ("", "ai.onnx"):
            continue
        body = node.attributes["body"].as_graph()
        scanned = node.attributes["num_scan_inputs"].as_int()
        states = len(node.inputs) - scanned
        for k in range(states, len(body.outputs)):
            v = body.outputs[k]
            if not any(user.graph is body for user, _ in v.uses()):
                continue
            out = ir.Value(name=f"{v.name}@out", type=v.type, shape=v.shape)
            body.append(ir.node("Identity", [v], outputs=[out], name=f"{v.name}/scan_output"))
            body.outputs[k] = out
            done += 1
    return done


__all__ = ["Optimize", "initializers_into_subgraphs", "exact_no_op_rules", "scan_outputs_apart"]
