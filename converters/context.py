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
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree

from edgernn.converters import capture
from edgernn.converters.gating import RecurrentGate, skip_mask
from edgernn.errors import ExportError

CONV = (nn.Conv1d, nn.Conv2d)
POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
TEMPORAL = CONV + POOL
# modules that look at every frame of the sequence at once: they cannot stream
WHOLE_SEQUENCE = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
                  nn.TransformerEncoder, nn.Transformer, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d,
                  nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                  nn.Upsample)
PROBE_LENGTHS = (48, 80)  # multiples of 16: exact frame counts through strides of 2, 4, 8, 16
PROBE_SCALES = (1, 16, 128)  # the probe lengths times these, until the model runs (wide kernels over samples)
PROBE_BATCH = 2
MATCH_TOLERANCE = 1e-4  # relative: a shifted frame matches its original within this
MIN_OVERLAP = 8  # frames that must match for a shift to count


@dataclass
class TemporalLayer:
    """How one convolution or pooling streams: its time axis and geometry along it, in frames of
    its own input (after any frames the user's code padded in front of it are dropped)."""

    path: str
    kind: str  # the module's class name
    time_axis: int
    rate: int  # frames of the model's input per frame of this layer's input
    kernel: int
    dilation: int
    stride: int
    pad_left: int  # zero frames the model puts before the sequence (module padding + user F.pad)
    pad_right: int
    drop_left: int = 0  # frames of user padding (F.pad) in this layer's input, dropped per call
    drop_right: int = 0
    skip: int = 0  # leading frames of this layer's input that belong to no frame of the model
    cache: int = 0  # frames of context carried between calls
    out_shift: int = 0  # leading output frames that belong to no frame of the model
    # output frames per call beyond frames / stride: where the model's padding makes the output
    # longer than its input (padding (k-1)*d on both sides, then cropped: a TCN's "chomp"), zero
    # frames are appended so that the model's own crop keeps the right ones
    extra_out: int = 0
    # the module's class overrides forward (a CausalConv1d that pads its input itself): its own
    # forward runs on [context, call], taken to pad on the left only (checked by the end-to-end match)
    own_forward: bool = False
    context_shape: tuple[int, ...] = ()  # with batch 1 at axis 0

    @property
    def window(self) -> int:
        """Input frames one output frame reads: ``(kernel - 1) * dilation + 1``."""
        return (self.kernel - 1) * self.dilation + 1

    def describe(self) -> str:
        geo = f"kernel {self.kernel}" + (f", dilation {self.dilation}" if self.dilation > 1 else "") + (
            f", stride {self.stride}" if self.stride > 1 else "")
        parts = [f"{self.path}: {self.kind} with {geo} over time"]
        if self.cache:
            parts.append(f"{self.cache} frames of context")
        if self.out_shift:
            parts.append(f"{self.out_shift} frame{'s' if self.out_shift > 1 else ''} of lookahead")
        if self.skip:
            parts.append(f"skips {self.skip} warm-up frames")
        return ", ".join(parts)


class TemporalState:
    """The lifted state of one streaming layer: ``context`` (and ``warmup`` when it skips frames).
    It follows :class:`~edgernn.converters.capture.StatefulRecurrent`'s protocol with the
    :class:`~edgernn.converters.capture.StateLifter`: ``lifted`` is set before each call,
    ``final`` read after it."""

    def __init__(self, layer: TemporalLayer) -> None:
        self.layer = layer
        self.path = layer.path
        self.lifted: tuple[torch.Tensor, ...] | None = None
        self.final: tuple[torch.Tensor, ...] | None = None

    @property
    def parts(self) -> list[str]:
        return (["context"] if self.layer.cache else []) + (["warmup"] if self.layer.skip else [])

    def state_batch_axis(self, part: int) -> int:
        return 0

    def state_example(self, part: int, batch: int) -> torch.Tensor:
        if self.parts[part] == "context":
            return torch.zeros((batch, *self.layer.context_shape[1:]))
        return torch.zeros(batch, 1, dtype=torch.int64)  # [batch, 1]: Triton needs a dimension besides the batch

    def lifted_states(self) -> list[capture.LiftedState]:
        return [capture.LiftedState(f"{self.path}.{p}", self, k) for k, p in enumerate(self.parts)]


class StreamingTemporal:
    """Mixed into a convolution's or pooling's class (the module keeps its weights, attributes
    and ``state_dict`` keys): the forward runs on ``[context, chunk]`` without time padding."""

    _edgernn_state: TemporalState

    def forward(self, x):  # noqa: D401 - the module's forward
        st = self._edgernn_state
        lay = st.layer
        ta = lay.time_axis
        if x.dim() != len(lay.context_shape):
            raise ExportError(f"{lay.path} received a {x.dim()}-D input; it was probed with "
                              f"{len(lay.context_shape)}-D inputs")
        if lay.drop_left or lay.drop_right:  # the user's code padded this chunk: the cache does that now
            x = x.narrow(ta, lay.drop_left, x.shape[ta] - lay.drop_left - lay.drop_right)
        frames = x.shape[ta]
        lifted = st.lifted
        parts = st.parts
        values = dict(zip(parts, lifted)) if lifted is not None else {
            p: st.state_example(k, x.shape[0]).to(x.dtype if p == "context" else torch.int64)
            for k, p in enumerate(parts)}
        final = {}
        if lay.skip:
            valid, final["warmup"] = skip_mask(values["warmup"], frames, lay.skip, x, ta)
            x = torch.where(valid, x, torch.zeros((), dtype=x.dtype))
        full = torch.cat([values["context"], x], ta) if lay.cache else x
        if lay.cache:
            final["context"] = full.narrow(ta, full.shape[ta] - lay.cache, lay.cache)
        wanted = frames // lay.stride
        if lay.own_forward:  # the user's subclass pads inside its forward (a CausalConv1d): run it,
            y = super().forward(full)  # keep the frames that end in this call
            st.final = tuple(final[p] for p in parts)
            return y.narrow(ta, y.shape[ta] - wanted, wanted)
        y = self._edgernn_apply(full)
        if lay.cache > lay.window - lay.stride:  # a cache longer than the window needs: keep this call's frames
            y = y.narrow(ta, 0, wanted)
        if lay.extra_out > 0:
            shape = list(y.shape)
            shape[ta] = lay.extra_out
            y = torch.cat([y, y.new_zeros(shape)], ta)
        st.final = tuple(final[p] for p in parts)
        return y

    def _edgernn_apply(self, x):
        lay = self._edgernn_state.layer
        si = lay.time_axis - 2
        if isinstance(self, CONV):
            pads = list(self._edgernn_pads)  # (left, right) per spatial axis, time axis zero
            if any(l != r for l, r in pads):
                flat = [p for lr in reversed(pads) for p in lr]
                x = F.pad(x, flat)
                padding = tuple(0 for _ in pads)
            else:
                padding = tuple(l for l, _ in pads)
            conv = F.conv1d if isinstance(self, nn.Conv1d) else F.conv2d
            return conv(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)
        padding = list(_tuple(self.padding, x.dim() - 2))
        padding[si] = 0
        if isinstance(self, (nn.MaxPool1d, nn.MaxPool2d)):
            fn = F.max_pool1d if isinstance(self, nn.MaxPool1d) else F.max_pool2d
            return fn(x, self.kernel_size, self.stride, tuple(padding), self.dilation, self.ceil_mode)
        if isinstance(self, nn.AvgPool1d):
            return F.avg_pool1d(x, self.kernel_size, self.stride, tuple(padding), self.ceil_mode,
                                self.count_include_pad)
        return F.avg_pool2d(x, self.kernel_size, self.stride, tuple(padding), self.ceil_mode, self.count_include_pad,
                            self.divisor_override)


def _tuple(v, n: int) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _stream_class(cls: type) -> type:
    if issubclass(cls, StreamingTemporal):
        return cls
    return type(f"Streaming{cls.__name__}", (StreamingTemporal, cls), {"__module__": __name__})


# ---------------------------------------------------------------------------------------------
# geometry of a module along one spatial axis
# ---------------------------------------------------------------------------------------------

def _geometry(path: str, m: nn.Module, si: int, nd: int) -> tuple[int, int, int, int, int]:
    """(kernel, dilation, stride, pad_left, pad_right) of ``m`` along spatial axis ``si``."""
    name = type(m).__name__
    k = _tuple(m.kernel_size, nd)[si]
    if isinstance(m, CONV):
        d, s = _tuple(m.dilation, nd)[si], _tuple(m.stride, nd)[si]
        if isinstance(m.padding, str):
            if m.padding == "valid":
                pl = pr = 0
            else:  # 'same': PyTorch pads (k-1)*d in all, the odd frame on the right
                total = d * (k - 1)
                pl, pr = total // 2, total - total // 2
        else:
            pl = pr = _tuple(m.padding, nd)[si]
        if (pl or pr) and m.padding_mode != "zeros":
            raise ExportError(f"{path}: {name} pads time with padding_mode={m.padding_mode!r}; only zero padding "
                              "streams (the cache holds real past frames); export with --mode sequence")
        return k, d, s, pl, pr
    s = _tuple(m.stride if m.stride is not None else m.kernel_size, nd)[si]
    p = _tuple(m.padding, nd)[si]
    d = _tuple(getattr(m, "dilation", 1), nd)[si]
    if m.ceil_mode:
        raise ExportError(f"{path}: {name} has ceil_mode=True, so its last window depends on the sequence's "
                          "length; export with --mode sequence")
    if getattr(m, "return_indices", False):
        raise ExportError(f"{path}: {name} returns indices over the whole sequence; export with --mode sequence")
    if p and isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
        raise ExportError(f"{path}: {name} pads time with -inf ({p} frames); a context cache starts from zeros, so "
                          "only max pooling without time padding streams; export with --mode sequence")
    if p and not m.count_include_pad:
        raise ExportError(f"{path}: {name} pads time and excludes the padding from its average; "
                          "export with --mode sequence")
    return k, d, s, p, p


# ---------------------------------------------------------------------------------------------
# probing the data flow
# ---------------------------------------------------------------------------------------------

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

    def __call__(self, ctx) -> str:
        ctx.temporal = TemporalPlan()
        if ctx.mode == "sequence" or not ctx.streams_time:
            return "not needed (whole sequences)" if ctx.mode == "sequence" else "not needed (one frame per call)"
        model = ctx.model
        candidates = {p: m for p, m in model.named_modules() if isinstance(m, TEMPORAL + WHOLE_SEQUENCE)}
        recurrent = {p: m for p, m in model.named_modules() if isinstance(m, nn.RNNBase)}
        if not candidates:
            return "no convolution or pooling"
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
        self.scale = scale
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
            k, d, s, pl, pr = _geometry(path, m, axis - 2, nd)
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
            own = _own_forward(m)
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
            return "no convolution or pooling over time"
        plan = ctx.temporal
        plan.frame_multiple = math.lcm(*(lay.rate * lay.stride for lay in found))
        if ctx.mode == "step" and plan.frame_multiple > 1:
            strided = next(lay for lay in found if lay.stride > 1)
            raise ExportError(f"{strided.path}: {strided.kind} with stride {strided.stride} over time needs calls of "
                              f"{plan.frame_multiple} frames; export with --mode chunk and feed multiples of "
                              f"{plan.frame_multiple} frames per call")
        self._convert(ctx, found, recurrent)
        plan.layers = found
        ctx.frame_multiple = math.lcm(getattr(ctx, "frame_multiple", 1), plan.frame_multiple)
        return "; ".join(lay.describe() for lay in found)

    @staticmethod
    def _keeps_length(ctx, model: nn.Module, path: str, m: nn.Module, frames: int, axis: int) -> bool:
        """Whether ``m``'s output has as many frames as its input (run on ``frames`` frames)."""
        data = ctx.example_data(PROBE_BATCH, frames, torch.Generator().manual_seed(12))
        states = [e.make(PROBE_BATCH) for e in ctx.explicit]
        ins, _, _ = record(model, {path: m}, lambda: model(*data, *states))
        outs, _, _ = record(model, {path: m}, lambda: model(*data, *states), outputs=True)
        a, b = ins[path][0], outs[path][0]
        return b is not None and b.dim() == a.dim() and b.shape[axis] == a.shape[axis]

    def _convert(self, ctx, found: list[TemporalLayer], recurrent: dict[str, nn.Module]) -> None:
        """Set each layer's skip, cache and shift in data-flow order, measuring the skip at its
        input (converted model vs original), then the recurrent layers' skips and the outputs' delays."""
        original = copy.deepcopy(ctx.model)
        plan = ctx.temporal
        # long enough that every layer sees MIN_OVERLAP frames and more after its strides
        T = max(PROBE_LENGTHS[1] * self.scale, 4 * MIN_OVERLAP * plan.frame_multiple)
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
            plan.states.append(_install(ctx.model, lay))
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
            out_axes = [_grown_axis(a, b) for a, b in zip(ref_leaves, pytree.tree_leaves(original(*longer, *states)))]
        plan.delays = []
        for k, (want, have) in enumerate(zip(ref_leaves, got_leaves)):
            axis = out_axes[k] if want.dim() == have.dim() else None
            if axis is None:
                if want.shape == have.shape and float((want - have).abs().max()) <= MATCH_TOLERANCE * max(
                        1.0, float(want.abs().max())):
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
            axis = _grown_axis(a, a2) if a2 is not None and a.dim() == b.dim() else None
            same = (find_shift(a, b, axis) is not None) if axis is not None else (
                a.shape == b.shape and float((a - b).abs().max()) <= MATCH_TOLERANCE * max(1.0, float(a.abs().max())))
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


def _own_forward(m: nn.Module) -> bool:
    """True when ``m``'s class (a user subclass) replaces the forward of the torch layer it extends."""
    base = next(c for c in type(m).__mro__ if c in TEMPORAL)
    forward = next(c.__dict__["forward"] for c in type(m).__mro__ if "forward" in c.__dict__)
    return forward is not base.__dict__["forward"]


def _grown_axis(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """The one axis along which ``b`` (the model run on more frames) is longer than ``a``."""
    if not isinstance(b, torch.Tensor) or a.dim() != b.dim():
        return None
    axes = [k for k, (x, y) in enumerate(zip(a.shape, b.shape)) if y > x]
    return axes[0] if len(axes) == 1 else None


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


def _install(model: nn.Module, lay: TemporalLayer) -> TemporalState:
    """Turn the module at ``lay.path`` into its streaming form (in place; same object)."""
    m = model.get_submodule(lay.path)
    st = TemporalState(lay)
    if not isinstance(m, StreamingTemporal):
        m.__class__ = _stream_class(type(m))
    nd = len(lay.context_shape) - 2
    if isinstance(m, CONV):
        pads = []
        for si in range(nd):
            if si == lay.time_axis - 2:
                pads.append((0, 0))
            else:
                _, _, _, pl, pr = _geometry(lay.path, m, si, nd)
                pads.append((pl, pr))
        object.__setattr__(m, "_edgernn_pads", tuple(pads))
    lay.context_shape = tuple(lay.cache if k == lay.time_axis else n for k, n in enumerate(lay.context_shape))
    object.__setattr__(m, "_edgernn_state", st)
    return st


__all__ = ["CacheTemporalContext", "TemporalLayer", "TemporalPlan", "TemporalState", "find_shift", "record"]
