"""Temporal context as state: convolutions and poolings over time stream exactly in chunks.

A convolution with kernel ``k`` and dilation ``d`` along time needs the ``(k - 1) * d`` frames
before each output's window; cut the stream into chunks and each chunk's convolution sees zeros
(its padding) where the previous chunk's frames should be. The :class:`CacheTemporalContext`
pass gives every such layer a **context cache**: a state pair ``<module>.context`` holding the
last input frames of the previous call, zeros at the start of a stream (so the first call sees
what the model's own zero padding gives). The layer then runs on ``[context, chunk]`` with no
padding along time.

* Left (causal) padding is what the cache replaces: causal models stream exactly.
* Right padding (``padding=1`` on a kernel of 3, ``'same'``, no padding at all) needs future
  frames: the streamed output comes later by that many frames, the **delay** the contract
  declares on each output (frame ``t`` of the stream is frame ``t - delay`` of the model on the
  whole sequence). The first frames a delayed layer emits belong to no frame of the model; every
  stateful layer after it (another cached layer, a recurrent layer) skips them with a per-stream
  counter ``<module>.warmup`` (frames seen so far, up to the frames to skip), so its state is what
  the model's own zero padding would give.
* A stride ``s`` along time fixes how many frames a call must have (``frame_multiple``).
* Stacks compose: each layer's time axis, frame rate and skipped frames are read off the data
  flow (the model run at two lengths, and the converted model run beside the original), not from
  names. The whole conversion is checked at the end: the converted model on a whole sequence
  equals the original shifted by the declared delay, or the export stops naming the first module
  that differs.

Sequence mode (whole sequences in one call) keeps the model's own padding: no caches.

Written by hand: no exporter caches convolution context (icefall and sherpa-onnx write their
cached convolutions by hand, tract "pulses" convolutions inside its own runtime only).
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn
from torch.utils import _pytree as pytree

from edgernn.converters import capture, torchscript
from edgernn.converters.context_layers import TEMPORAL, TemporalLayer, TemporalState, geometry, install, own_forward
from edgernn.converters.gating import RecurrentGate
from edgernn.converters.pass_api import PassResult
from edgernn.converters.probe import MIN_OVERLAP, PROBE_BATCH, close, find_shift, grown_axis, record
from edgernn.errors import ExportError

# modules that look at every frame of the sequence at once: they cannot stream
WHOLE_SEQUENCE = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
                  nn.TransformerEncoder, nn.Transformer, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d,
                  nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                  nn.Upsample)
PROBE_LENGTHS = (48, 80)  # multiples of 16: exact frame counts through strides of 2, 4, 8, 16
PROBE_SCALES = (1, 16, 128)  # the probe lengths times these, until the model runs (wide kernels over samples)


def _zero_edges(x: torch.Tensor, axis: int) -> tuple[int, int]:
    """Frames along ``axis`` at the start and end that are exactly zero (user padding)."""
    frames = x.abs().transpose(0, axis).reshape(x.shape[axis], -1).amax(dim=1)
    nz = torch.nonzero(frames).flatten()
    if nz.numel() == 0:
        return 0, 0
    return int(nz[0]), int(x.shape[axis] - 1 - nz[-1])


@dataclass
class TemporalPlan:
    """What the pass found: the streaming layers, recurrent layers that skip warm-up frames, the
    frame multiple of a call and each output's delay."""

    layers: list[TemporalLayer] = field(default_factory=list)
    recurrent_skip: dict[str, int] = field(default_factory=dict)  # layer path -> frames to skip
    frame_multiple: int = 1
    delays: list[int] = field(default_factory=list)  # per data output (frames of that output)
    states: list[TemporalState] = field(default_factory=list)


class CacheTemporalContext:
    """Give convolutions and poolings over time a context cache (see the module docstring)."""

    name = "cache-context"

    def __call__(self, ctx) -> PassResult:
        ctx.temporal = TemporalPlan()
        if ctx.mode == "sequence" or not ctx.streams_time:
            return PassResult.unchanged("not needed (whole sequences)" if ctx.mode == "sequence"
                                        else "not needed (one frame per call)")
        model = ctx.model
        if torchscript.is_scripted(model):
            return PassResult.unchanged("not available for TorchScript: a scripted convolution over time streams "
                                        "when forward takes and returns its context as a state")
        candidates = {p: m for p, m in model.named_modules() if isinstance(m, TEMPORAL + WHOLE_SEQUENCE)}
        recurrent = {p: m for p, m in model.named_modules() if isinstance(m, nn.RNNBase)}
        if not candidates:
            return PassResult.unchanged("no convolution or pooling")
        gen = torch.Generator().manual_seed(7)
        runs = {}
        failure = None
        for scale in PROBE_SCALES:  # longer probes for models whose kernels are wider than the short ones
            runs, failure = {}, None
            for T in PROBE_LENGTHS:
                data = ctx.example_data(PROBE_BATCH, T * scale, gen)
                states = [e.make(PROBE_BATCH) for e in ctx.explicit]
                try:
                    runs[T * scale] = record(model, candidates, lambda: model(*data, *states))
                except ExportError:
                    raise
                except Exception as e:
                    failure = ExportError(f"{type(ctx.original).__name__} failed on inputs of {T * scale} frames: "
                                          f"{str(e).splitlines()[0][:300]}")
                    break
            if failure is None:
                break
        if failure is not None:
            raise failure from None
        (t1, (in1, order, _)), (t2, (in2, _, _)) = runs.items()
        found: list[TemporalLayer] = []
        for path in order:
            m = candidates[path]
            a_list, b_list = in1.get(path, []), in2.get(path, [])
            if len(a_list) != 1:
                if any(_time_axis(a, b, t1, t2) is not None for a, b in zip(a_list, b_list) if a is not None):
                    raise ExportError(f"{path}: {type(m).__name__} is called {len(a_list)} times per forward over time; "
                                      "a context cache needs one call per forward")
                continue
            a, b = a_list[0], b_list[0]
            if a is None or b is None:
                continue
            found_axis = _time_axis(a, b, t1, t2)
            if found_axis is None:
                continue  # not over time (a convolution over features, say)
            axis, rate, extra = found_axis
            if isinstance(m, WHOLE_SEQUENCE):
                raise ExportError(f"{path}: {type(m).__name__} looks at every frame of the sequence and cannot "
                                  f"stream in {ctx.mode} mode; export with --mode sequence")
            if axis < 2:
                raise ExportError(f"{path}: {type(m).__name__} takes time on axis {axis} of its input; a streaming "
                                  "convolution needs [batch, channels, time(, ...)]")
            nd = a.dim() - 2
            k, d, s, pl, pr = geometry(path, m, axis - 2, nd)
            if k == 1 and s == 1:
                continue  # one frame at a time already
            drop_l = drop_r = 0
            if extra > 0:  # the model padded the input itself (F.pad before a padding-free conv)
                drop_l, drop_r = _zero_edges(a, axis)
                if drop_l + drop_r < extra:
                    raise ExportError(f"{path}: {type(m).__name__}'s input has {extra} frames more than the sequence "
                                      "and they are not zero padding at its ends; edgernn cannot tell which frames "
                                      "are real: export with --mode sequence")
                if drop_l + drop_r > extra:  # zeros in the data itself: take the extra frames from the left
                    drop_l, drop_r = min(drop_l, extra), extra - min(drop_l, extra)
            elif extra < 0:
                raise ExportError(f"{path}: {type(m).__name__}'s input is {-extra} frames shorter than the "
                                  "sequence (an earlier layer crops time); edgernn cannot stream it: "
                                  "export with --mode sequence")
            core = t1 // rate
            extra_out = (core + pl + pr + drop_l + drop_r - (k - 1) * d - 1) // s + 1 - core // s
            own = own_forward(m)
            if own:  # padding happens inside its forward: same length out as in means causal padding
                if s != 1 or extra or not self._keeps_length(ctx, model, path, m, t1, axis):
                    raise ExportError(f"{path}: {type(m).__name__} overrides forward and does not keep the length "
                                      "of time (it is not a causal convolution that pads its own input), so edgernn "
                                      "cannot cache its context; export with --mode sequence")
                pl, pr, extra_out = (k - 1) * d, 0, 0
            found.append(TemporalLayer(path, type(m).__name__, axis, rate, k, d, s, pl + drop_l, pr + drop_r,
                                       drop_l, drop_r, extra_out=extra_out, own_forward=own,
                                       context_shape=(1, *a.shape[1:])))
        if not found:
            return PassResult.unchanged("no convolution or pooling over time")
        plan = ctx.temporal
        plan.frame_multiple = math.lcm(*(lay.rate * lay.stride for lay in found))
        if ctx.mode == "step" and plan.frame_multiple > 1:
            strided = next(lay for lay in found if lay.stride > 1)
            raise ExportError(f"{strided.path}: {strided.kind} with stride {strided.stride} over time needs calls of "
                              f"{plan.frame_multiple} frames; export with --mode chunk and feed multiples of "
                              f"{plan.frame_multiple} frames per call")
        self._convert(ctx, found, recurrent, scale)
        plan.layers = found
        ctx.frame_multiple = math.lcm(ctx.frame_multiple, plan.frame_multiple)
        return PassResult.done("; ".join(lay.describe() for lay in found))

    @staticmethod
    def _keeps_length(ctx, model: nn.Module, path: str, m: nn.Module, frames: int, axis: int) -> bool:
        """Whether ``m``'s output has as many frames as its input (run on ``frames`` frames)."""
        data = ctx.example_data(PROBE_BATCH, frames, torch.Generator().manual_seed(12))
        states = [e.make(PROBE_BATCH) for e in ctx.explicit]
        ins, _, _ = record(model, {path: m}, lambda: model(*data, *states))
        outs, _, _ = record(model, {path: m}, lambda: model(*data, *states), outputs=True)
        a, b = ins[path][0], outs[path][0]
        return b is not None and b.dim() == a.dim() and b.shape[axis] == a.shape[axis]

    def _convert(self, ctx, found: list[TemporalLayer], recurrent: dict[str, nn.Module], scale: int) -> None:
        """Set each layer's skip, cache and shift in data-flow order, measuring the skip at its
        input (converted model vs original), then the recurrent layers' skips and the outputs' delays.
        ``scale``: the probe lengths' factor the model ran at."""
        original = copy.deepcopy(ctx.model)
        plan = ctx.temporal
        # long enough that every layer sees MIN_OVERLAP frames and more after its strides
        T = max(PROBE_LENGTHS[1] * scale, 4 * MIN_OVERLAP * plan.frame_multiple)
        T -= T % plan.frame_multiple
        gen = torch.Generator().manual_seed(8)
        data = ctx.example_data(PROBE_BATCH, T, gen)
        states = [e.make(PROBE_BATCH) for e in ctx.explicit]
        orig_mods = dict(original.named_modules())
        ref_in, _, ref_out = record(original, {lay.path: orig_mods[lay.path] for lay in found}
                                    | {p: orig_mods[p] for p in recurrent}, lambda: original(*data, *states))
        installed: list[TemporalLayer] = []
        for lay in found:
            if any(prev.out_shift for prev in installed):  # junk frames may reach this layer: measure
                got, _, _ = record(ctx.model, {lay.path: ctx.model.get_submodule(lay.path)},
                                   lambda: ctx.model(*data, *states))
                lay.skip = _measured_skip(lay.path, ref_in[lay.path][0], got[lay.path][0], lay.time_axis,
                                          lay.drop_left, lay.drop_right)
            s = lay.stride
            c = max(0, lay.window - s, lay.pad_left - lay.skip)
            c += (lay.pad_left - lay.skip - c) % s  # align windows with the model's (c + skip - pad_left) % s == 0
            lay.cache = c
            lay.out_shift = (c + lay.skip - lay.pad_left) // s
            plan.states.append(install(ctx.model, lay))
            installed.append(lay)
        if not any(lay.out_shift for lay in installed):
            plan.recurrent_skip = {}
        else:
            got, _, _ = record(ctx.model, {p: ctx.model.get_submodule(p) for p in recurrent},
                               lambda: ctx.model(*data, *states))
            for p, m in recurrent.items():
                if p not in ref_in or not ref_in[p] or ref_in[p][0] is None:
                    continue
                if len(ref_in[p]) > 1:
                    raise ExportError(f"{p}: recurrent layer is called {len(ref_in[p])} times per forward after a "
                                      "lookahead; export with --mode sequence")
                axis = 1 if m.batch_first else 0
                skip = _measured_skip(p, ref_in[p][0], got[p][0], axis, 0, 0)
                if skip:
                    if m.bidirectional:
                        continue  # refused later: bidirectional layers do not stream
                    plan.recurrent_skip[p] = skip
                    gate = RecurrentGate(p, skip)
                    object.__setattr__(m, "gate", gate)  # kept when LiftState makes the layer stateful
                    plan.states.append(gate)
        # the whole model: outputs shifted by their delays, or the first module that differs
        with _gates_active(ctx.model, plan.recurrent_skip), torch.no_grad():
            out = ctx.model(*data, *states)
        ref_leaves, got_leaves = pytree.tree_leaves(ref_out), pytree.tree_leaves(out)
        longer = ctx.example_data(PROBE_BATCH, T + 16 * plan.frame_multiple, gen)
        with torch.no_grad():
            out_axes = [grown_axis(a, b) for a, b in zip(ref_leaves, pytree.tree_leaves(original(*longer, *states)))]
        plan.delays = []
        for k, (want, have) in enumerate(zip(ref_leaves, got_leaves)):
            axis = out_axes[k] if want.dim() == have.dim() else None
            if axis is None:
                if close(want, have):
                    plan.delays.append(0)
                    continue
                lookahead = [lay for lay in found if lay.out_shift]
                if lookahead and want.shape == have.shape:
                    raise ExportError(f"output {k} of {type(ctx.original).__name__}.forward has no time axis (a final "
                                      f"state or a pooled value) and comes after a lookahead ({lookahead[0].describe()}):"
                                      " when the stream ends its last frames are still to come; return per-frame "
                                      "outputs, make the convolutions causal, or export with --mode sequence")
                self._blame(ctx, original, data, states, found)
            shift = find_shift(want, have, axis)
            if shift is None:
                self._blame(ctx, original, data, states, found)
            plan.delays.append(shift)

    def _blame(self, ctx, original, data, states, found) -> None:
        """Name the first module whose output differs from the original's (beyond a shift)."""
        leaves = {p: m for p, m in original.named_modules() if not list(m.children())}
        ref, order, _ = record(original, leaves, lambda: original(*data, *states), outputs=True)
        longer = ctx.example_data(PROBE_BATCH, data_length(ctx, data) + 16 * ctx.temporal.frame_multiple,
                                  torch.Generator().manual_seed(10))
        ref2, _, _ = record(original, leaves, lambda: original(*longer, *states), outputs=True)
        mods = dict(ctx.model.named_modules())
        with _gates_active(ctx.model, ctx.temporal.recurrent_skip):
            got, _, _ = record(ctx.model, {p: mods[p] for p in leaves if p in mods},
                               lambda: ctx.model(*data, *states), outputs=True)
        lookahead = [lay for lay in found if lay.out_shift]
        why = (f"; {lookahead[0].describe()}" if lookahead else "")
        for p in order:
            a, b = (ref.get(p) or [None])[0], (got.get(p) or [None])[0]
            if a is None or b is None:
                continue
            a2 = (ref2.get(p) or [None])[0]
            axis = grown_axis(a, a2) if a2 is not None and a.dim() == b.dim() else None
            same = find_shift(a, b, axis) is not None if axis is not None else close(a, b)
            if not same:
                m = leaves[p]
                raise ExportError(f"{p}: {type(m).__name__} gives other values when the sequence streams in chunks "
                                  f"than on the whole sequence (it looks across time in a way edgernn cannot cache, "
                                  f"or mixes frames delayed by different lookaheads){why}; export with --mode sequence")
        raise ExportError("the model gives other values when the sequence streams in chunks than on the whole "
                          f"sequence (something in forward looks across time outside a module){why}; "
                          "export with --mode sequence")


@contextlib.contextmanager
def _gates_active(model: nn.Module, paths: dict[str, int]):
    """Recurrent layers with a gate skip their warm-up frames while inside (they become
    stateful for the run, then get their own class back; LiftState makes them stateful later)."""
    layers = {p: model.get_submodule(p) for p in paths}
    classes = {p: type(m) for p, m in layers.items()}
    for k, (p, m) in enumerate(layers.items()):
        if not isinstance(m, capture.StatefulRecurrent):
            capture.make_stateful(m, p, -1 - k)
    try:
        yield
    finally:
        for p, m in layers.items():
            m.__class__ = classes[p]


def _time_axis(a: torch.Tensor, b: torch.Tensor, t1: int, t2: int) -> tuple[int, int, int] | None:
    """(axis, rate, extra): the one axis whose size follows the sequence's length, the model
    frames per frame there, and frames more than ``length / rate``."""
    if a.dim() != b.dim():
        return None
    axes = [k for k, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
    if len(axes) != 1:
        return None
    k = axes[0]
    grow = b.shape[k] - a.shape[k]
    if grow <= 0 or (t2 - t1) % grow:
        return None
    rate = (t2 - t1) // grow
    return k, rate, a.shape[k] - t1 // rate


def data_length(ctx, data: Sequence[torch.Tensor]) -> int:
    spec, t = next((s, t) for s, t in zip(ctx.data, data) if s.time_axis is not None)
    return t.shape[spec.time_axis]


def _measured_skip(path: str, orig: torch.Tensor, got: torch.Tensor, axis: int, drop_l: int, drop_r: int) -> int:
    if drop_l or drop_r:
        orig = orig.narrow(axis, drop_l, orig.shape[axis] - drop_l - drop_r)
        got = got.narrow(axis, drop_l, got.shape[axis] - drop_l - drop_r)
    shift = find_shift(orig, got, axis)
    if shift is None:
        raise ExportError(f"{path}: its input differs when the sequence streams in chunks and no delay explains it "
                          "(frames delayed by different lookaheads are mixed before it); export with --mode sequence")
    return shift


__all__ = ["CacheTemporalContext", "TemporalLayer", "TemporalPlan", "TemporalState", "find_shift", "record"]
