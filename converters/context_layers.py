"""A convolution or pooling over time in its streaming form: it runs on ``[context, chunk]``.

:class:`TemporalLayer` is what the cache-context pass (``context.py``) measured about one layer:
its time axis and geometry, the frames of context it carries and the frames it skips. Installing it
(:func:`install`) swaps the module's class for ``Streaming<Class>`` (the module keeps its weights,
attributes and ``state_dict`` keys), whose forward prepends the cached frames, drops the time
padding the cache replaces and hands back the new context; :class:`TemporalState` carries that
context (and a warm-up counter) as lifted state between calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgernn.converters import capture
from edgernn.converters.gating import skip_mask
from edgernn.errors import ExportError

CONV = (nn.Conv1d, nn.Conv2d)
POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
TEMPORAL = CONV + POOL


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


def geometry(path: str, m: nn.Module, si: int, nd: int) -> tuple[int, int, int, int, int]:
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


def own_forward(m: nn.Module) -> bool:
    """True when ``m``'s class (a user subclass) replaces the forward of the torch layer it extends."""
    base = next(c for c in type(m).__mro__ if c in TEMPORAL)
    forward = next(c.__dict__["forward"] for c in type(m).__mro__ if "forward" in c.__dict__)
    return forward is not base.__dict__["forward"]


def install(model: nn.Module, lay: TemporalLayer) -> TemporalState:
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
                _, _, _, pl, pr = geometry(lay.path, m, si, nd)
                pads.append((pl, pr))
        object.__setattr__(m, "_edgernn_pads", tuple(pads))
    lay.context_shape = tuple(lay.cache if k == lay.time_axis else n for k, n in enumerate(lay.context_shape))
    object.__setattr__(m, "_edgernn_state", st)
    return st


__all__ = ["CONV", "POOL", "TEMPORAL", "StreamingTemporal", "TemporalLayer", "TemporalState", "geometry", "install",
           "own_forward"]
