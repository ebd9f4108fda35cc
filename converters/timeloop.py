"""Models whose forward loops over the time axis in Python (``for t in range(x.size(1))``).

A trace of such a forward unrolls the loop at the traced length, so a chunk or sequence capture
is only right for that one length. edgernn finds the loop before capturing (:class:`DetectTimeLoop`),
captures the model for one frame instead (the step capture, the size-1 time axis kept) and
:func:`scan_over_time` runs that step graph in an ONNX ``Scan`` over the data inputs' own time
axis: the chunk and sequence files keep the model's layout (``[B, T, F]`` or ``[T, B, F]``) and
its states are the Scan's state variables.

Detection runs the model eagerly at three lengths (5, 6 and 7 frames) and counts

- the calls of each submodule (forward hooks): a submodule called ``k * T`` times per forward is
  called in a loop over frames (``nn.GRU`` over a whole sequence, or a ``Linear`` over
  ``[B, T, F]``, is called once, whatever ``T``);
- the torch functions the forward calls (a ``TorchFunctionMode``; ``nn.GRU`` is one call of
  ``torch.gru`` at any length): a count that grows by the same number for each extra frame is a
  loop too, one that calls no submodule in it (an SRU's elementwise recurrence, say).

If the loop goes unnoticed, :func:`static_time_inputs` (called by the capture pass) sees the
time axis of the captured graph fixed to the traced length and the export is routed the same way.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Sequence

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn
from torch.overrides import TorchFunctionMode

from edgernn.errors import ExportError

LENGTHS = (5, 6, 7)  # probe lengths; the batch is 2
_IGNORED = {"__get__", "__set__", "size", "dim"}  # attribute reads and shape queries are not operations


class _CountCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") not in _IGNORED:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _run_counted(ctx, time: int) -> tuple[Counter, int]:
    """Calls per submodule path and torch function calls of one forward at ``time`` frames."""
    gen = torch.Generator().manual_seed(3)
    data = ctx.example_data(2, time, gen)
    explicit = [e.make(2) for e in ctx.explicit]  # may run the model itself: outside the counters
    calls: Counter = Counter()
    handles = []
    for path, module in ctx.model.named_modules():
        if path:
            handles.append(module.register_forward_pre_hook(
                lambda m, a, path=path: calls.update([path])))
    try:
        with torch.no_grad(), _CountCalls() as counter:
            ctx.model(*data, *explicit)
    finally:
        for h in handles:
            h.remove()
    return calls, counter.count


def find_time_loop(ctx) -> str:
    """Why ``ctx``'s model loops over time in Python ("GatedCell.lin called 5 times for 5 frames"),
    or ``""`` when it does not (or cannot be run at the probe lengths)."""
    try:
        runs = [_run_counted(ctx, t) for t in LENGTHS]
    except ExportError:
        raise
    except Exception:
        return ""  # the model does not run at these lengths: leave the error to the lifting pass
    owner = type(ctx.original).__name__
    t0 = LENGTHS[0]
    calls0 = runs[0][0]
    for path in calls0:  # module order: the outermost looped module first
        n = [c[path] for c, _ in runs]
        if n[0] and n[0] % t0 == 0 and all(k * t0 == n[0] * t for k, t in zip(n, LENGTHS)):
            return f"{owner}.{path} called {n[0]} times for {t0} frames"
    ops = [k for _, k in runs]
    per_frame = ops[1] - ops[0]
    if per_frame > 0 and ops[2] - ops[1] == per_frame:
        return f"{owner}.forward runs {per_frame} more torch operations for each extra frame"
    return ""


def static_time_inputs(ctx, model: onnx.ModelProto) -> list[str]:
    """Data inputs whose time axis the captured graph fixed to a number (the trace unrolled a loop)."""
    fixed = []
    by_name = {i.name: i for i in model.graph.input}
    for spec in ctx.data:
        vi = by_name.get(spec.name)
        if vi is None or spec.time_axis is None:
            continue
        dims = vi.type.tensor_type.shape.dim
        if spec.time_axis < len(dims) and dims[spec.time_axis].HasField("dim_value"):
            fixed.append(spec.name)
    return fixed


def route_note(reason: str) -> str:
    return (f"forward loops over time in Python ({reason}): captured one frame, chunk and sequence "
            "files run it in a Scan over time")


def check_routable(ctx) -> None:
    for m in ctx.original.modules():
        if isinstance(m, nn.RNNBase) and m.bidirectional:
            raise ExportError("the forward loops over time in Python and has a bidirectional layer: a loop over "
                              "frames cannot run a bidirectional layer one frame at a time")


class DetectTimeLoop:
    """Chunk and sequence mode: find a forward that loops over time in Python; such a model is
    captured for one frame and its file runs that frame in a Scan over time (``ctx.time_loop``)."""

    name = "time-loop"

    def __call__(self, ctx) -> str:
        if ctx.mode == "step":
            return "not needed in step mode"
        if ctx.frame_model or not ctx.streams_time:
            return "not needed (one frame per forward)"
        reason = find_time_loop(ctx)
        if not reason:
            return f"no loop over time in forward (same operations at {', '.join(map(str, LENGTHS))} frames)"
        check_routable(ctx)
        ctx.time_loop = reason
        ctx.notes.append(route_note(reason))
        return f"{reason}: captured one frame, run in a Scan over the time axis"


def reroute(ctx, fixed: Sequence[str]) -> None:
    """The capture fixed the time axis of ``fixed``: start again from a fresh copy of the model,
    captured for one frame (the caller re-runs lifting and capture)."""
    check_routable(ctx)
    ctx.time_loop = (f"the captured graph fixed the time axis of {', '.join(fixed)} to the traced length")
    ctx.notes.append(route_note(ctx.time_loop))
    ctx.model = copy.deepcopy(ctx.original).eval()


# ------------------------------------------------------------------------------------- the Scan

def renamed_node(node: onnx.NodeProto, rename: dict[str, str]) -> onnx.NodeProto:
    """A copy of ``node`` with its inputs and outputs renamed by ``rename``."""
    n = onnx.NodeProto()
    n.CopyFrom(node)
    n.input[:] = [rename.get(i, i) for i in n.input]
    n.output[:] = [rename.get(o, o) for o in n.output]
    return n


def _vi(vi: onnx.ValueInfoProto, name: str, drop_axis: int | None = None) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(vi)
    out.name = name
    del out.metadata_props[:]
    if drop_axis is not None:
        dims = out.type.tensor_type.shape.dim
        kept = [d for k, d in enumerate(dims) if k != drop_axis]
        copies = []
        for d in kept:
            c = onnx.TensorShapeProto.Dimension()
            c.CopyFrom(d)
            copies.append(c)
        del dims[:]
        for c in copies:
            dims.add().CopyFrom(c)
    return out


def _fold_time_axis(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], added: dict[str, tuple[str, int]],
                    outputs: list[onnx.ValueInfoProto]) -> list[onnx.NodeProto]:
    """Drop the body's size-1 time axis where the step graph only takes it away again: the frame
    ``x[:, t]`` of a re-added axis (``Gather`` index 0, ``Squeeze``, ``Slice`` 0:1 + ``Squeeze``)
    is the Scan's frame itself, and ``Squeeze(Unsqueeze(z))`` of an output is ``z``. Each node
    less is a kernel less per frame. ``added``: ``x@step`` -> (``x@frame``, axis)."""
    def const(name: str):
        return inits.get(name)

    def is_axis(name: str, axis: int) -> bool:
        v = const(name)
        return v is not None and v.size == 1 and int(v.reshape(-1)[0]) == axis

    def consumers(name: str) -> list[onnx.NodeProto]:
        return [n for n in nodes if name in n.input]

    alias: dict[str, str] = {}
    dropped: set[int] = set()
    for step_name, (frame_name, axis) in added.items():
        users = consumers(step_name)
        folded = 0
        for n in users:
            if n.op_type == "Gather" and len(n.input) == 2 and (const(n.input[1]) is not None and
                                                                 const(n.input[1]).ndim == 0 and
                                                                 int(const(n.input[1])) == 0) \
                    and next((a.i for a in n.attribute if a.name == "axis"), 0) == axis:
                alias[n.output[0]] = frame_name
            elif n.op_type == "Squeeze" and len(n.input) == 2 and is_axis(n.input[1], axis):
                alias[n.output[0]] = frame_name
            elif (n.op_type == "Slice" and len(n.input) >= 4 and is_axis(n.input[3], axis) and is_axis(n.input[1], 0)
                  and const(n.input[2]) is not None and int(const(n.input[2]).reshape(-1)[0]) >= 1
                  and (len(n.input) < 5 or is_axis(n.input[4], 1))):
                after = consumers(n.output[0])
                if not after or not all(m.op_type == "Squeeze" and len(m.input) == 2 and is_axis(m.input[1], axis)
                                        for m in after):
                    continue
                for m in after:
                    alias[m.output[0]] = frame_name
                    dropped.add(id(m))
            else:
                continue
            dropped.add(id(n))
            folded += 1
        if folded == len(users):
            dropped.update(id(n) for n in nodes if step_name in n.output)
    kept = []
    for n in nodes:
        if id(n) in dropped:
            continue
        n.input[:] = [alias.get(i, i) for i in n.input]
        kept.append(n)
    # outputs: Squeeze(Unsqueeze(z)) -> z, when the Unsqueeze feeds only that Squeeze
    produced = {o: n for n in kept for o in n.output}
    out_names = [o.name for o in outputs]
    for vi in outputs:
        sq = produced.get(vi.name)
        if sq is None or sq.op_type != "Squeeze" or len(sq.input) != 2:
            continue
        un = produced.get(sq.input[0])
        if (un is None or un.op_type != "Unsqueeze" or len(un.input) != 2 or const(un.input[1]) is None
                or const(sq.input[1]) is None or not np.array_equal(const(un.input[1]), const(sq.input[1]))
                or len([m for m in kept if sq.input[0] in m.input]) != 1 or un.input[0] in out_names
                or un.input[0] in {v for p in added.values() for v in p[:1]}):
            continue
        z = un.input[0]
        if z not in produced:  # a body input or initializer: keep the Squeeze
            continue
        kept = [m for m in kept if m is not sq and m is not un]
        out_names[out_names.index(vi.name)] = z
        vi.name = z
    return kept


def _hoist_input_projections(nodes: list[onnx.NodeProto], weights: dict[str, onnx.TensorProto],
                             frames: dict[str, tuple[str, int, int]]):
    """Move each ``Gemm`` / ``MatMul`` of a scanned frame by constant weights (an input projection,
    ``W_ih x_t``) out of the loop: one ``MatMul`` over all frames before the Scan, whose result the
    Scan slices like the input. ``frames``: ``x@frame`` -> (outer input, time axis, its rank).
    Returns the body's nodes, the outer nodes and initializers, and the new scanned inputs as
    (outer name, body name, axis)."""
    kept, outer, inits, scanned = [], [], [], []
    # x@step = Unsqueeze(x@frame) (the time axis re-added): a MatMul of it is a MatMul of all frames too
    with_time = {n.output[0]: frames[n.input[0]] for n in nodes
                 if n.op_type == "Unsqueeze" and n.input and n.input[0] in frames and n.name.endswith("/add_time")}
    for n in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        frame = frames.get(n.input[0]) if n.input else None
        timed = frame is None and n.op_type == "MatMul" and bool(n.input) and n.input[0] in with_time
        if timed:
            frame = with_time[n.input[0]]
        w = weights.get(n.input[1]) if len(n.input) > 1 else None
        ok = (frame is not None and w is not None and len(w.dims) == 2 and frame[2] == 3 and frame[1] in (0, 1)
              and w.data_type == onnx.TensorProto.FLOAT)
        bias = None
        if ok and n.op_type == "Gemm":
            ok = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
            if len(n.input) > 2 and n.input[2]:
                bias = weights.get(n.input[2])
                ok = ok and bias is not None and len(bias.dims) == 1
        elif ok:
            ok = n.op_type == "MatMul" and len(n.input) == 2
        if not ok:
            kept.append(n)
            continue
        matrix = numpy_helper.to_array(w)
        if n.op_type == "Gemm" and attrs.get("transB", 0):
            matrix = matrix.T
        name, (source, axis, _) = n.output[0], frame
        inits.append(numpy_helper.from_array(np.ascontiguousarray(matrix), f"{name}@all_frames.weight"))
        product = f"{name}@all_frames" if bias is None else f"{name}@all_frames.matmul"
        outer.append(helper.make_node("MatMul", [source, f"{name}@all_frames.weight"], [product],
                                      name=f"{name}/all_frames"))
        if bias is not None:
            inits.append(numpy_helper.from_array(numpy_helper.to_array(bias), f"{name}@all_frames.bias"))
            outer.append(helper.make_node("Add", [product, f"{name}@all_frames.bias"], [f"{name}@all_frames"],
                                          name=f"{name}/all_frames_bias"))
        if timed:  # the body gets the product's frame and re-adds the time axis, as the step graph had it
            kept.append(helper.make_node("Unsqueeze", [f"{name}@frame", f"{name}@time_axis"], [name],
                                         name=f"{name}/add_time"))
            inits.append(numpy_helper.from_array(np.array([axis], np.int64), f"{name}@time_axis"))
            scanned.append((f"{name}@all_frames", f"{name}@frame", axis))
        else:
            scanned.append((f"{name}@all_frames", name, axis))
    return kept, outer, inits, scanned


def scan_over_time(ctx) -> str:
    """Wrap ``ctx.onnx_model`` (a one-frame step graph whose data inputs keep a size-1 time axis)
    in a ``Scan`` over each data input's time axis. Inputs without a time axis are read by the
    body from the outer graph; outputs with a time axis are stacked along it, outputs without one
    are taken from the last frame."""
    model = ctx.onnx_model
    g = model.graph
    n_data, n_out = len(ctx.data), len(ctx.output_names)
    data_in, state_in = list(g.input[:n_data]), list(g.input[n_data:])
    data_out, state_out = list(g.output[:n_out]), list(g.output[n_out:])
    step_nodes = len(g.node)
    scanned = [(v, s.time_axis) for v, s in zip(data_in, ctx.data) if s.time_axis is not None]
    rename = {v.name: f"{v.name}@frame" for v in [*state_in, *state_out]}
    rename.update({v.name: f"{v.name}@step" for v, _ in scanned})
    rename.update({v.name: f"{v.name}@step" for v in data_out})
    pre, post, inits = [], [], []
    for v, axis in scanned:
        axes = f"{v.name}@time_axis"
        inits.append(numpy_helper.from_array(np.array([axis], np.int64), axes))
        pre.append(helper.make_node("Unsqueeze", [f"{v.name}@frame", axes], [f"{v.name}@step"],
                                    name=f"{v.name}/add_time"))
    body_outs = []
    for v, (_, t) in zip(data_out, ctx.output_axes):
        if t is None:  # stacked along axis 0 by the Scan, the last frame taken outside
            post.append(helper.make_node("Identity", [f"{v.name}@step"], [f"{v.name}@frame"],
                                         name=f"{v.name}/frame"))
            body_outs.append(_vi(v, f"{v.name}@frame"))
        else:
            axes = f"{v.name}@time_axis"
            inits.append(numpy_helper.from_array(np.array([t], np.int64), axes))
            post.append(helper.make_node("Squeeze", [f"{v.name}@step", axes], [f"{v.name}@frame"],
                                         name=f"{v.name}/drop_time"))
            body_outs.append(_vi(v, f"{v.name}@frame", drop_axis=t))
    consts = {t.name: numpy_helper.to_array(t) for t in [*g.initializer, *inits]
              if int(np.prod(t.dims)) <= 8}
    nodes = _fold_time_axis([*pre, *(renamed_node(n, rename) for n in g.node), *post], consts,
                            {f"{v.name}@step": (f"{v.name}@frame", a) for v, a in scanned}, body_outs)
    weights = {t.name: t for t in g.initializer}
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v, _ in scanned}
    nodes, hoisted_nodes, outer_inits, hoisted = _hoist_input_projections(
        nodes, weights, {f"{v.name}@frame": (v.name, a, ranks[v.name]) for v, a in scanned})
    inits += [t for t in outer_inits if t.name.endswith("@time_axis")]  # read in the body
    outer_inits = [t for t in outer_inits if not t.name.endswith("@time_axis")]
    read = {i for n in nodes for i in n.input} | {o.name for o in body_outs}
    nodes = [n for n in nodes if not (n.name.endswith("/add_time") and n.output[0] not in read)]  # now unused
    used = {i for n in nodes for i in n.input} | {o.name for o in body_outs}
    frames = [(v.name, f"{v.name}@frame", a, _vi(v, f"{v.name}@frame", drop_axis=a)) for v, a in scanned
              if f"{v.name}@frame" in used or not hoisted]
    frames += [(outer_name, body_name, a, helper.make_tensor_value_info(body_name, onnx.TensorProto.FLOAT, None))
               for outer_name, body_name, a in hoisted]
    body = helper.make_graph(
        nodes, "frame_step",
        [*(_vi(v, rename[v.name]) for v in state_in), *(vi for *_, vi in frames)],
        [*(_vi(v, rename[v.name]) for v in state_out), *body_outs],
        initializer=[t for t in [*g.initializer, *inits] if t.name in used])
    final_names = {v.name: (f"{v.name}@frames" if t is None else v.name)
                   for v, (_, t) in zip(data_out, ctx.output_axes)}
    scan = helper.make_node(
        "Scan", [*(v.name for v in state_in), *(outer_name for outer_name, *_ in frames)],
        [*(v.name for v in state_out), *(final_names[v.name] for v in data_out)],
        name="scan_over_time", body=body, num_scan_inputs=len(frames),
        scan_input_axes=[a for _, _, a, _ in frames],
        scan_output_axes=[0 if t is None else t for _, t in ctx.output_axes])
    nodes = [*hoisted_nodes, scan]
    last = "scan_over_time@last"
    for v, (_, t) in zip(data_out, ctx.output_axes):
        if t is None:
            if not any(i.name == last for i in outer_inits):
                outer_inits.append(numpy_helper.from_array(np.array(-1, np.int64), last))
            nodes.append(helper.make_node("Gather", [final_names[v.name], last], [v.name], axis=0,
                                          name=f"{v.name}/last_frame"))
    graph = helper.make_graph(nodes, g.name, [_vi(v, v.name) for v in [*data_in, *state_in]],
                              [_vi(v, v.name) for v in [*data_out, *state_out]], initializer=outer_inits)
    model.graph.CopyFrom(graph)
    stacked = sum(1 for _, t in ctx.output_axes if t is not None)
    rest = f", {n_out - stacked} from the last frame" if stacked < n_out else ""
    return (f"loop over time in Python: step graph of {step_nodes} nodes ({len(body.node)} in the Scan body) in a Scan over time "
            f"({', '.join(f'{v.name} axis {a}' for v, a in scanned)}), {len(state_in)} state variables, "
            f"{stacked} of {n_out} outputs stacked over time{rest}"
            + (f"; {len(hoisted)} input projections computed for all frames before the Scan" if hoisted else ""))


__all__ = ["DetectTimeLoop", "find_time_loop", "scan_over_time", "static_time_inputs", "reroute"]
