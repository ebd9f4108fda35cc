"""Running the model before capture: the sizes it is run and captured at, and what the runs show.

The passes learn a model's layout from its data flow, not from names: they run it at two batch
sizes and lengths and read which axes follow (:func:`changed_axis`), hook modules to record what
each one receives or gives (:func:`record`), and find how many frames a streamed run lags the
whole-sequence run (:func:`find_shift`). A model that fails on :data:`TRACE_TIME` frames is tried
at multiples of it (:data:`FRAME_MULTIPLES`); the first that runs sets ``ctx.frame_multiple``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from edgernn.errors import ExportError

if TYPE_CHECKING:  # pragma: no cover
    from edgernn.converters.passes import ExportContext

TRACE_BATCH, TRACE_TIME = 2, 5
# tried in turn when a model fails on TRACE_TIME frames: lengths TRACE_TIME * m (TRACE_TIME is odd,
# so a model that needs a multiple of 8 fails at 2 * 5 and 4 * 5 and runs at 8 * 5)
FRAME_MULTIPLES = (2, 4, 8, 16)
PROBE_BATCH = 2
MATCH_TOLERANCE = 1e-4  # relative: a shifted frame matches its original within this
MIN_OVERLAP = 8  # frames that must match for a shift to count


def trace_time(ctx: ExportContext, frames: int = TRACE_TIME) -> int:
    """A trace or probe length: ``frames`` blocks of the model's frame multiple."""
    return frames * ctx.frame_multiple


def time_dimension(ctx: ExportContext) -> Any:
    """torch.export's dynamic time dimension: any length, or any multiple of ``ctx.frame_multiple``."""
    m = ctx.frame_multiple
    if m == 1:
        return torch.export.Dim("time", min=1, max=1 << 24)
    return m * torch.export.Dim("time_blocks", min=1, max=(1 << 24) // m)


def at_some_length(ctx: ExportContext, run: Callable[[int], Any], streams: bool) -> Any:
    """``run(frames)`` at the trace length; for inputs with a time axis, if that fails, at
    lengths that are multiples of :data:`FRAME_MULTIPLES`. Returns the first result; re-raises
    the failure at the trace length if none runs."""
    if not streams:
        return run(trace_time(ctx))
    first: Exception | None = None
    tried = set()
    for m in (1, *FRAME_MULTIPLES):
        multiple = math.lcm(ctx.frame_multiple, m)
        if multiple in tried:
            continue
        tried.add(multiple)
        try:
            return run(TRACE_TIME * multiple)
        except ExportError:
            raise
        except Exception as e:  # noqa: BLE001
            first = first or e
    assert first is not None
    raise first


def changed_axis(a: Sequence[int], b: Sequence[int], va: int, vb: int) -> int | None:
    """The one axis that is ``va`` in shape ``a`` and ``vb`` in shape ``b`` (None: none or several)."""
    axes = [k for k, (x, y) in enumerate(zip(a, b)) if x == va and y == vb]
    return axes[0] if len(axes) == 1 else None


def grown_axis(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """The one axis along which ``b`` (the model run on more frames) is longer than ``a``."""
    if not isinstance(b, torch.Tensor) or a.dim() != b.dim():
        return None
    axes = [k for k, (x, y) in enumerate(zip(a.shape, b.shape)) if y > x]
    return axes[0] if len(axes) == 1 else None


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape and values within :data:`MATCH_TOLERANCE` of ``a``'s scale (floored at 1)."""
    if a.shape != b.shape:
        return False
    return float((a - b).abs().max()) <= MATCH_TOLERANCE * max(1.0, float(a.abs().max())) if a.numel() else True


def _first_tensor(args) -> torch.Tensor | None:
    x = args[0] if args else None
    if isinstance(x, nn.utils.rnn.PackedSequence):
        return None
    return x if isinstance(x, torch.Tensor) else None


def record(model: nn.Module, modules: dict[str, nn.Module], run: Callable[[], Any], outputs: bool = False
           ) -> tuple[dict[str, list[torch.Tensor]], list[str], Any]:
    """Run ``run()`` with hooks on ``modules``; return each module's inputs (or outputs) per call,
    the modules in the order they were first called, and what ``run`` returned."""
    seen: dict[str, list[torch.Tensor]] = {}
    order: list[str] = []
    handles = []
    for path, m in modules.items():
        def pre(mod, args, path=path):
            if path not in order:
                order.append(path)
            if not outputs:
                t = _first_tensor(args)
                seen.setdefault(path, []).append(t.detach().clone() if t is not None else None)

        def post(mod, args, out, path=path):
            t = out[0] if isinstance(out, (tuple, list)) else out
            seen.setdefault(path, []).append(t.detach().clone() if isinstance(t, torch.Tensor) else None)
        handles.append(m.register_forward_pre_hook(pre))
        if outputs:
            handles.append(m.register_forward_hook(post))
    try:
        with torch.no_grad():
            result = run()
    finally:
        for h in handles:
            h.remove()
    return seen, order, result


def find_shift(orig: torch.Tensor, stream: torch.Tensor, axis: int, max_shift: int | None = None) -> int | None:
    """The smallest ``D`` with ``stream[D + i] == orig[i]`` along ``axis`` over their overlap
    (at least :data:`MIN_OVERLAP` frames), or ``None`` when no shift makes them equal."""
    if orig.dim() != stream.dim() or [n for k, n in enumerate(orig.shape) if k != axis] != [
            n for k, n in enumerate(stream.shape) if k != axis]:
        return None
    lo, ls = orig.shape[axis], stream.shape[axis]
    scale = max(1.0, float(orig.abs().max())) if orig.numel() else 1.0
    top = ls - MIN_OVERLAP if max_shift is None else min(max_shift, ls - MIN_OVERLAP)
    for d in range(0, top + 1):
        n = min(lo, ls - d)
        if n < MIN_OVERLAP:
            break
        a, b = orig.narrow(axis, 0, n), stream.narrow(axis, d, n)
        if float((a - b).abs().max()) <= MATCH_TOLERANCE * scale:
            return d
    return None


__all__ = ["FRAME_MULTIPLES", "MATCH_TOLERANCE", "PROBE_BATCH", "TRACE_BATCH", "TRACE_TIME", "at_some_length",
           "changed_axis", "close", "find_shift", "grown_axis", "record", "time_dimension", "trace_time"]
