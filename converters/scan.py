"""The scan-over-time pass: a one-frame step graph runs in an ONNX ``Scan`` over frames.

Two kinds of model are captured for one frame and get one:

* a model that takes one frame per forward (cells with explicit state, an NTM): its chunk and
  sequence files take a new leading time axis (:func:`scan_frames`);
* a model whose forward loops over time in Python (``timeloop.py`` finds it): its files keep the
  model's own layout (``[B, T, F]`` or ``[T, B, F]``) and the Scan runs over each data input's own
  time axis (:func:`scan_time_loop`). The size-1 time axis the step graph keeps is folded away
  where the graph only takes it off again, and input projections (``W_ih x_t``) are computed for
  all frames before the Scan.

In both the states are the Scan's state variables. The graphs are edited with onnx-ir: the step
graph's own values become the Scan body's, renamed in place (``x`` becomes ``x@frame``), and the
outer graph gets new values under the old names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from edgernn.contract import TIME
from edgernn.converters.io import InputSpec
from edgernn.converters.pass_api import PassResult

if TYPE_CHECKING:  # pragma: no cover
    from edgernn.converters.passes import ExportContext

SMALL = 8  # elements: initializers read as constants (axes, indices) when folding the time axis


class ScanOverTime:
    """For a model that takes one frame per forward (cells with explicit state, an NTM) in chunk
    or sequence mode: wrap its one-step graph in a ``Scan`` over a new leading time axis, the
    states as Scan state variables. Data inputs and outputs gain axis 0 ``time``. A forward that
    loops over time in Python gets a Scan over its inputs' own time axis instead."""

    name = "scan-over-time"

    def __call__(self, ctx: ExportContext) -> PassResult:
        if ctx.time_loop and ctx.mode != "step":
            return PassResult.done(scan_time_loop(ctx))
        if not ctx.frame_model:
            return PassResult.unchanged("not needed (the model takes a time axis)")
        return PassResult.done(scan_frames(ctx))


class _StepGraph:
    """``ctx.onnx_model`` taken apart: its graph emptied (to become the outer graph) and its nodes
    and initializers moved into ``body`` (to become the Scan body); the I/O split into data and states."""

    def __init__(self, ctx: ExportContext) -> None:
        self.model = ir.serde.deserialize_model(ctx.onnx_model)
        g = self.model.graph
        n_data, n_out = len(ctx.data), len(ctx.output_names)
        self.data_in, self.state_in = list(g.inputs[:n_data]), list(g.inputs[n_data:])
        self.data_out, self.state_out = list(g.outputs[:n_out]), list(g.outputs[n_out:])
        nodes, inits = list(g), list(g.initializers.values())
        g.remove(nodes)
        g.initializers.clear()
        g.inputs.clear()
        g.outputs.clear()
        self.body = ir.Graph([], [], nodes=nodes, initializers=inits, name="frame_step")

    def outer(self, v: ir.Value, shape: Any, metadata: bool = False) -> ir.Value:
        """A value of the outer graph named as ``v`` is now (the step graph's I/O names stay outside)."""
        return ir.Value(name=v.name, type=v.type, shape=None if shape is None else ir.Shape(shape),
                        metadata_props=dict(v.metadata_props) if metadata else None)

    def finish(self, inputs: list[ir.Value], outputs: list[ir.Value]) -> Any:
        g = self.model.graph
        g.inputs.extend(inputs)
        g.outputs.extend(outputs)
        return ir.serde.serialize_model(self.model)


def scan_frames(ctx: ExportContext) -> str:
    """Wrap the one-frame graph of a model that takes one frame per forward in a ``Scan`` over a
    new leading time axis (see :class:`ScanOverTime`)."""
    step = _StepGraph(ctx)
    body, data_in, state_in, data_out, state_out = (step.body, step.data_in, step.state_in, step.data_out,
                                                    step.state_out)
    timed = {id(v) for v in [*data_in, *data_out]}
    outer = {id(v): step.outer(v, [TIME, *v.shape] if id(v) in timed else list(v.shape), metadata=True)
             for v in [*data_in, *state_in, *data_out, *state_out]}
    for v in [*data_in, *state_in, *data_out, *state_out]:
        v.name = f"{v.name}@frame"  # renames it wherever the step graph reads or writes it
    body.inputs.extend([*state_in, *data_in])
    body.outputs.extend([*state_out, *data_out])
    step.model.graph.append(ir.node(
        "Scan", [outer[id(v)] for v in [*state_in, *data_in]], {"body": body, "num_scan_inputs": len(data_in)},
        outputs=[outer[id(v)] for v in [*state_out, *data_out]], name="scan_over_time"))
    ctx.onnx_model = step.finish([outer[id(v)] for v in [*data_in, *state_in]],
                                 [outer[id(v)] for v in [*data_out, *state_out]])
    ctx.data = [InputSpec(s.name, s.dtype, (TIME, *s.shape), s.high) for s in ctx.data]
    ctx.output_axes = [(None if b is None else b + 1, 0) for b, _ in ctx.output_axes]
    return f"step graph of {len(body)} nodes in a Scan over axis 0, {len(state_in)} state variables"


def scan_time_loop(ctx: ExportContext) -> str:
    """Wrap ``ctx.onnx_model`` (a one-frame step graph whose data inputs keep a size-1 time axis)
    in a ``Scan`` over each data input's time axis. Inputs without a time axis are read by the
    body from the outer graph; outputs with a time axis are stacked along it, outputs without one
    are taken from the last frame."""
    step = _StepGraph(ctx)
    body, data_in, state_in, data_out, state_out = (step.body, step.data_in, step.state_in, step.data_out,
                                                    step.state_out)
    g = step.model.graph
    step_nodes = len(body)
    outer = {id(v): step.outer(v, v.shape) for v in [*data_in, *state_in, *data_out, *state_out]}
    for v in [*state_in, *state_out]:
        v.name = f"{v.name}@frame"
    for v, s in zip(data_in, ctx.data):
        if s.time_axis is None:  # read by the body from the outer graph
            v.replace_all_uses_with(outer[id(v)])
    # a scanned input's frame comes in without its time axis, re-added for the step graph
    scanned = [(v, s.time_axis) for v, s in zip(data_in, ctx.data) if s.time_axis is not None]
    frames, added = [], []
    for v, axis in scanned:
        name = v.name
        frame = ir.Value(name=f"{name}@frame", type=v.type, shape=_without(v.shape, axis))
        with_time = ir.Value(name=f"{name}@step")
        v.replace_all_uses_with(with_time)
        added.append(ir.node("Unsqueeze", [frame, _axes(body, f"{name}@time_axis", axis)], outputs=[with_time],
                             name=f"{name}/add_time"))
        frames.append((outer[id(v)], frame, axis))
    if added:
        body.insert_before(body[0], added)
    # a data output leaves the body without its time axis (stacked along it by the Scan) or as it is
    body_outs = []
    for v, (_, t) in zip(data_out, ctx.output_axes):
        name = v.name
        v.name = f"{name}@step"
        out = ir.Value(name=f"{name}@frame", type=v.type, shape=v.shape if t is None else _without(v.shape, t))
        if t is None:  # stacked along axis 0 by the Scan, the last frame taken outside
            body.append(ir.node("Identity", [v], outputs=[out], name=f"{name}/frame"))
        else:
            body.append(ir.node("Squeeze", [v, _axes(body, f"{name}@time_axis", t)], outputs=[out],
                                name=f"{name}/drop_time"))
        body_outs.append(out)
    body.outputs.extend([*state_out, *body_outs])
    _fold_time_axis(body, [(n.outputs[0], n.inputs[0], axis) for n, (_, _, axis) in zip(added, frames)],
                    len(state_out))
    hoisted = _hoist_input_projections(body, ir.tape.Tape(g), {id(f): (src, axis, len(src.shape))
                                                               for src, f, axis in frames})
    # the body on its own: the nodes folding and hoisting left unread, and the weights they read
    RemoveUnusedNodesPass()(ir.Model(body, ir_version=step.model.ir_version))
    kept = [(src, f, axis) for src, f, axis in frames if f.uses() or f.is_graph_output() or not hoisted]
    body.inputs.extend([*state_in, *(f for _, f, _ in kept), *(f for _, f, _ in hoisted)])
    scan_in = [*kept, *hoisted]
    finals = [outer[id(v)] if t is not None else ir.Value(name=f"{outer[id(v)].name}@frames")
              for v, (_, t) in zip(data_out, ctx.output_axes)]
    g.append(ir.node("Scan", [*(outer[id(v)] for v in state_in), *(src for src, _, _ in scan_in)],
                     {"body": body, "num_scan_inputs": len(scan_in), "scan_input_axes": [a for _, _, a in scan_in],
                      "scan_output_axes": [0 if t is None else t for _, t in ctx.output_axes]},
                     outputs=[*(outer[id(v)] for v in state_out), *finals], name="scan_over_time"))
    last = None
    for v, final, (_, t) in zip(data_out, finals, ctx.output_axes):
        if t is None:
            if last is None:
                last = ir.val("scan_over_time@last", const_value=ir.tensor(np.array(-1, np.int64),
                                                                         name="scan_over_time@last"))
                g.register_initializer(last)
            g.append(ir.node("Gather", [final, last], {"axis": 0}, outputs=[outer[id(v)]],
                             name=f"{outer[id(v)].name}/last_frame"))
    ctx.onnx_model = step.finish([outer[id(v)] for v in [*data_in, *state_in]],
                                 [outer[id(v)] for v in [*data_out, *state_out]])
    n_out = len(data_out)
    stacked = sum(1 for _, t in ctx.output_axes if t is not None)
    rest = f", {n_out - stacked} from the last frame" if stacked < n_out else ""
    return (f"loop over time in Python: step graph of {step_nodes} nodes ({len(body)} in the Scan body) in a Scan "
            f"over time ({', '.join(f'{src.name} axis {a}' for src, _, a in frames)}), {len(state_in)} state "
            f"variables, {stacked} of {n_out} outputs stacked over time{rest}"
            + (f"; {len(hoisted)} input projections computed for all frames before the Scan" if hoisted else ""))


def _fold_time_axis(body: ir.Graph, added: list[tuple[ir.Value, ir.Value, int]], first_output: int) -> None:
    """Drop the body's size-1 time axis where the step graph only takes it away again: the frame
    ``x[:, t]`` of a re-added axis (``Gather`` index 0, ``Squeeze``, ``Slice`` 0:1 + ``Squeeze``)
    is the Scan's frame itself, and ``Squeeze(Unsqueeze(z))`` of an output is ``z``. Each node
    less is a kernel less per frame. ``added``: (``x@step``, ``x@frame``, axis) per scanned input;
    the body's data outputs start at ``first_output``. The rules are written here (they know which
    value is the Scan's frame, which no generic rewrite does); the edits are onnx-ir's."""
    for with_time, frame, axis in added:
        for n in with_time.consumers():
            if n.op_type == "Gather" and len(n.inputs) == 2 and _scalar(n.inputs[1]) == 0 \
                    and _attr(n, "axis", 0) == axis:
                frames_of = gone = [n]
            elif n.op_type == "Squeeze" and len(n.inputs) == 2 and _is_axis(n.inputs[1], axis):
                frames_of = gone = [n]
            elif (n.op_type == "Slice" and len(n.inputs) >= 4 and _is_axis(n.inputs[3], axis)
                  and _is_axis(n.inputs[1], 0) and _first(n.inputs[2]) is not None and _first(n.inputs[2]) >= 1
                  and (len(n.inputs) < 5 or _is_axis(n.inputs[4], 1))):
                after = n.outputs[0].consumers()
                if not after or not all(m.op_type == "Squeeze" and len(m.inputs) == 2 and _is_axis(m.inputs[1], axis)
                                        for m in after):
                    continue
                frames_of, gone = after, [*after, n]
            else:
                continue
            for m in frames_of:  # what these nodes compute is the frame itself
                m.outputs[0].replace_all_uses_with(frame, replace_graph_outputs=True)
            body.remove(gone, safe=True)
    # data outputs: Squeeze(Unsqueeze(z)) -> z, when the Unsqueeze feeds only that Squeeze
    for k in range(first_output, len(body.outputs)):
        out = body.outputs[k]
        sq = out.producer()
        if sq is None or sq.op_type != "Squeeze" or len(sq.inputs) != 2:
            continue
        un = sq.inputs[0].producer()
        if (un is None or un.op_type != "Unsqueeze" or len(un.inputs) != 2 or _small(un.inputs[1]) is None
                or _small(sq.inputs[1]) is None or not np.array_equal(_small(un.inputs[1]), _small(sq.inputs[1]))
                or len(sq.inputs[0].uses()) != 1):
            continue
        z = un.inputs[0]
        if z.is_graph_output() or z.producer() is None:  # a body input or initializer: keep the Squeeze
            continue
        z.type, z.shape = out.type, out.shape
        body.outputs[k] = z
        body.remove([sq, un], safe=True)


def _hoist_input_projections(body: ir.Graph, outer: ir.tape.Tape, frames: dict[int, tuple[ir.Value, int, int]]
                             ) -> list[tuple[ir.Value, ir.Value, int]]:
    """Move each ``Gemm`` / ``MatMul`` of a scanned frame by constant weights (an input projection,
    ``W_ih x_t``) out of the loop: one ``MatMul`` over all frames before the Scan (recorded on
    ``outer``), whose result the Scan slices like the input. ``frames``: id of ``x@frame`` ->
    (outer input, time axis, its rank). Returns the new scanned inputs as (outer value, body value, axis)."""
    scanned = []
    # x@step = Unsqueeze(x@frame) (the time axis re-added): a MatMul of it is a MatMul of all frames too
    with_time = {id(n.outputs[0]): frames[id(n.inputs[0])] for n in body if n.op_type == "Unsqueeze"
                 and n.inputs and id(n.inputs[0]) in frames and n.name.endswith("/add_time")}
    for n in list(body):
        frame = frames.get(id(n.inputs[0])) if n.inputs and n.inputs[0] is not None else None
        timed = frame is None and n.op_type == "MatMul" and bool(n.inputs) and id(n.inputs[0]) in with_time
        if timed:
            frame = with_time[id(n.inputs[0])]
        w = _weight(n.inputs[1]) if len(n.inputs) > 1 else None
        ok = (frame is not None and w is not None and len(w.shape) == 2 and frame[2] == 3 and frame[1] in (0, 1)
              and w.dtype == ir.DataType.FLOAT)
        bias = None
        if ok and n.op_type == "Gemm":
            ok = _attr(n, "alpha", 1.0) == 1.0 and _attr(n, "beta", 1.0) == 1.0 and not _attr(n, "transA", 0)
            if len(n.inputs) > 2 and n.inputs[2] is not None:
                bias = _weight(n.inputs[2])
                ok = ok and bias is not None and len(bias.shape) == 1
        elif ok:
            ok = n.op_type == "MatMul" and len(n.inputs) == 2
        if not ok:
            continue
        matrix = w.numpy()
        if n.op_type == "Gemm" and _attr(n, "transB", 0):
            matrix = matrix.T
        result, (source, axis, _) = n.outputs[0], frame
        name = result.name
        weight = outer.initializer(ir.tensor(np.ascontiguousarray(matrix), name=f"{name}@all_frames.weight"))
        product = ir.Value(name=f"{name}@all_frames" if bias is None else f"{name}@all_frames.matmul")
        outer.op("MatMul", [source, weight], output=product, name=f"{name}/all_frames")
        if bias is not None:
            b = outer.initializer(ir.tensor(bias.numpy(), name=f"{name}@all_frames.bias"))
            product = outer.op("Add", [product, b], output=ir.Value(name=f"{name}@all_frames"),
                               name=f"{name}/all_frames_bias")
        float_type = ir.TensorType(ir.DataType.FLOAT)
        if timed:  # the body gets the product's frame and re-adds the time axis, as the step graph had it
            frame_value = ir.Value(name=f"{name}@frame", type=float_type)
            readd = ir.node("Unsqueeze", [frame_value, _axes(body, f"{name}@time_axis", axis)],
                            outputs=[ir.Value(name=name)], name=f"{name}/add_time")
            body.insert_before(n, readd)
            result.replace_all_uses_with(readd.outputs[0], replace_graph_outputs=True)
        else:
            frame_value = ir.Value(name=name, type=float_type)
            result.replace_all_uses_with(frame_value, replace_graph_outputs=True)
        body.remove(n, safe=True)
        scanned.append((product, frame_value, axis))
    return scanned


def _axes(graph: ir.Graph, name: str, axis: int) -> ir.Value:
    """A new initializer of ``graph``: ``[axis]`` (int64), the axes input of a Squeeze / Unsqueeze."""
    value = ir.val(name, const_value=ir.tensor(np.array([axis], np.int64), name=name))
    graph.register_initializer(value)
    return value


def _weight(v: ir.Value | None) -> ir.TensorProtocol | None:
    """The tensor of an initializer (``None`` for any other value)."""
    return v.const_value if v is not None and v.is_initializer() else None


def _small(v: ir.Value | None) -> np.ndarray | None:
    """The array of a small initializer (at most :data:`SMALL` elements), else ``None``."""
    t = _weight(v)
    return t.numpy() if t is not None and t.size <= SMALL else None


def _first(v: ir.Value | None) -> int | None:
    a = _small(v)
    return None if a is None or a.size == 0 else int(a.reshape(-1)[0])


def _scalar(v: ir.Value | None) -> int | None:
    a = _small(v)
    return int(a) if a is not None and a.ndim == 0 else None


def _is_axis(v: ir.Value | None, axis: int) -> bool:
    a = _small(v)
    return a is not None and a.size == 1 and int(a.reshape(-1)[0]) == axis


def _attr(node: ir.Node, name: str, default: Any) -> Any:
    a = node.attributes.get(name)
    return default if a is None else a.value


def _without(shape: ir.Shape | None, axis: int) -> ir.Shape | None:
    return None if shape is None else ir.Shape([d for k, d in enumerate(shape) if k != axis])


__all__ = ["ScanOverTime", "scan_frames", "scan_time_loop"]
