"""The optimize pass: onnxscript's optimizer (constant folding, rewrites, dead code) on the lowered graph.

It runs on an onnx-ir model, with three fixes after it: the stored start values
(``state_init.<name>``, read by runtimes, not by nodes) are put back, weights that only one
subgraph reads go back into that subgraph, and a ``Scan`` body output that the body itself reads
gets its own ``Identity`` again (:func:`scan_outputs_apart`).
"""

from __future__ import annotations

import contextlib
import logging
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
        with exact_no_op_rules(), quiet_folding():
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


FOLD_LIMIT = 1 << 22
"""Elements of the largest tensor the constant folder reads or writes (onnxscript's defaults, 8,192
in and 262,144 out, leave an LSTM's gate weights and a chunked weight matrix unfolded)."""


@contextlib.contextmanager
def quiet_folding() -> Iterator[None]:
    """onnxscript's constant folder warns "Skipping constant folding for op Split with multiple
    outputs" for every such Split (in its own runs and in the exporter's); :func:`fold_splits`
    folds them, so the warning is noise to the user."""
    quiet = logging.getLogger("onnxscript.optimizer")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quiet.setLevel(level)


def fold_constants(model: ir.Model, *, iterations: int = 2, limit: int = FOLD_LIMIT) -> None:
    """onnxscript's optimizer on ``model`` (in place) with size limits raised to ``limit``, so that
    static weight paths (Split, Slice, Transpose, Reshape, Concat, Gather of initializers or
    ``Constant`` nodes, in If / Loop / Scan bodies too) become initializers; the epsilons kept
    (:func:`exact_no_op_rules`), stored start values (``state_init.*``) put back, weights that only
    a subgraph reads moved back into it. ``iterations``: optimizer rounds (each folds one more level
    of nested ``If`` on a constant). The caller checks parity."""

    starts = [v for name, v in model.graph.initializers.items() if name.startswith(STATE_INIT)]
    with quiet_folding():
        _fold_rounds(model, iterations, limit)
    for v in starts:  # stored start values: read by runtimes, not by nodes, so the optimizer drops them
        if v.name not in model.graph.initializers:
            model.graph.initializers.add(v)
    initializers_into_subgraphs(model.graph)


def _fold_rounds(model: ir.Model, iterations: int, limit: int) -> None:
    import onnxscript.optimizer

    for _ in range(4):  # a Split folded here may feed a Transpose the next round folds
        with exact_no_op_rules():
            onnxscript.optimizer.optimize(model, num_iterations=iterations, input_size_limit=limit,
                                          output_size_limit=limit)
        if not fold_splits(model.graph, limit):
            break


def fold_splits(graph: ir.Graph, limit: int = FOLD_LIMIT) -> int:
    """Replace each ``Split`` of a constant (``w.chunk(3)`` in forward), in ``graph`` and its
    subgraphs, by initializers holding its parts: onnxscript's folder skips ops with several
    outputs. Returns how many were folded."""
    done = 0
    for node in list(ir.traversal.RecursiveGraphIterator(graph)):
        if node.op_type != "Split" or node.domain not in ("", "ai.onnx") or node.graph is None:
            continue
        data = ir.convenience.get_const_tensor(node.inputs[0]) if node.inputs and node.inputs[0] else None
        if data is None or data.size > limit:
            continue
        array = data.numpy()
        axis = node.attributes.get_int("axis", 0) % max(array.ndim, 1)
        sizes = node.attributes.get_ints("split")
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            given = ir.convenience.get_const_tensor(node.inputs[1])
            if given is None:
                continue
            sizes = [int(k) for k in given.numpy().reshape(-1)]
        if not sizes:  # equal parts (the last one smaller, as num_outputs allows)
            parts = len(node.outputs)
            step = -(-array.shape[axis] // parts)
            sizes = [min(step, array.shape[axis] - k * step) for k in range(parts)]
        if len(sizes) != len(node.outputs) or sum(sizes) != array.shape[axis]:
            continue
        if any(out.is_graph_output() for out in node.outputs):
            continue
        pieces = np.split(array, np.cumsum(sizes)[:-1], axis=axis)
        owner, made = node.graph, []
        for out, piece in zip(node.outputs, pieces):
            name, out.name = out.name, None
            value = ir.Value(name=name, shape=ir.Shape(piece.shape), type=out.type,
                             const_value=ir.tensor(np.ascontiguousarray(piece), name=name))
            ir.convenience.replace_all_uses_with(out, value)
            made.append(value)
        owner.remove(node, safe=True)
        for value in made:
            owner.register_initializer(value)
        done += 1
    return done


_DEBUG_KEY_PREFIXES = ("pkg.torch.", "namespace", "pkg.onnxscript.")  # written per node by torch.onnx's exporter


def strip_debug_info(model) -> int:
    """Drop per-node debug metadata (``torch.onnx``'s stack traces, module names and class
    hierarchies in ``metadata_props``, and ``doc_string``) from every node of an
    ``onnx.ModelProto``, subgraphs included, in place. Node and value names stay, and so does the
    model's own metadata (the state contract). Returns the bytes dropped."""
    import onnx

    before = model.ByteSize()

    def graphs(g):
        yield g
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from graphs(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sub in a.graphs:
                        yield from graphs(sub)

    for g in graphs(model.graph):
        for node in g.node:
            node.doc_string = ""
            kept = [p for p in node.metadata_props if not p.key.startswith(_DEBUG_KEY_PREFIXES)]
            if len(kept) != len(node.metadata_props):
                del node.metadata_props[:]
                node.metadata_props.extend(kept)
        for t in g.initializer:
            kept = [p for p in t.metadata_props if not p.key.startswith(_DEBUG_KEY_PREFIXES)]
            if len(kept) != len(t.metadata_props):
                del t.metadata_props[:]
                t.metadata_props.extend(kept)
        for v in (*g.input, *g.output, *g.value_info):
            v.doc_string = ""
            kept = [p for p in v.metadata_props if not p.key.startswith(_DEBUG_KEY_PREFIXES)]
            if len(kept) != len(v.metadata_props):
                del v.metadata_props[:]
                v.metadata_props.extend(kept)
    return before - model.ByteSize()


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


__all__ = ["Optimize", "initializers_into_subgraphs", "exact_no_op_rules", "scan_outputs_apart", "fold_constants",
           "strip_debug_info", "FOLD_LIMIT"]
