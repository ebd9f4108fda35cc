"""Models whose forward loops over the time axis in Python (``for t in range(x.size(1))``).

A trace of such a forward unrolls the loop at the traced length, so a chunk or sequence capture
is only right for that one length. edgernn finds the loop before capturing (:class:`DetectTimeLoop`),
captures the model for one frame instead (the step capture, the size-1 time axis kept) and
the scan-over-time pass (``scan.py``) runs that step graph in an ONNX ``Scan`` over the data
inputs' own time axis: the chunk and sequence files keep the model's layout (``[B, T, F]`` or
``[T, B, F]``) and its states are the Scan's state variables.

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

import onnx
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from edgernn.converters import torchscript
from edgernn.converters.pass_api import PassResult
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

    def __call__(self, ctx) -> PassResult:
        if ctx.mode == "step":
            return PassResult.unchanged("not needed in step mode")
        if ctx.frame_model or not ctx.streams_time:
            return PassResult.unchanged("not needed (one frame per forward)")
        if torchscript.is_scripted(ctx.model):
            return PassResult.unchanged("not needed: a TorchScript forward's loops are exported as ONNX Loop")
        reason = find_time_loop(ctx)
        if not reason:
            return PassResult.unchanged(f"no loop over time in forward (same operations at "
                                        f"{', '.join(map(str, LENGTHS))} frames)")
        check_routable(ctx)
        ctx.time_loop = reason
        ctx.notes.append(route_note(reason))
        return PassResult.done(f"{reason}: captured one frame, run in a Scan over the time axis")


def reroute(ctx, fixed: Sequence[str]) -> None:
    """The capture fixed the time axis of ``fixed``: start again from a fresh copy of the model,
    captured for one frame (the caller re-runs lifting and capture)."""
    check_routable(ctx)
    ctx.time_loop = (f"the captured graph fixed the time axis of {', '.join(fixed)} to the traced length")
    ctx.notes.append(route_note(ctx.time_loop))
    ctx.model = copy.deepcopy(ctx.original).eval()


__all__ = ["DetectTimeLoop", "find_time_loop", "static_time_inputs", "reroute"]
