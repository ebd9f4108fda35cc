"""The export pipeline: named passes run in order over one :class:`ExportContext`.

``PIPELINE`` lists them; each pass has one job, checks its preconditions up front and raises an
:class:`~edgernn.errors.ExportError` with a sentence when it cannot apply. A test can run them one
by one (see ``tests/converters/test_passes.py``).
"""

from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import torch
from torch import nn
from torch.utils import _pytree as pytree

from edgernn.converters import capture, timeloop
from edgernn.converters.context import CacheTemporalContext
from edgernn.converters.streamable import CheckStreamable
from edgernn.converters.io import (InputSpec, describe_layer, first_layer, forward_parameters, infer_data_input,
                                   input_layouts)
from edgernn.converters.recurrent import GraphBuilder, RecurrentLayerSpec, lower_gated, lower_sequence, lower_step
from edgernn.contract import BATCH, FORMAT_VERSION, TIME, Contract, StateSpec, TensorSpec, write_metadata
from edgernn.errors import ExportError

TRACE_BATCH, TRACE_TIME = 2, 5
# tried in turn when a model fails on TRACE_TIME frames: lengths TRACE_TIME * m (TRACE_TIME is odd,
# so a model that needs a multiple of 8 fails at 2 * 5 and 4 * 5 and runs at 8 * 5)
FRAME_MULTIPLES = (2, 4, 8, 16)
STATE_LAYOUTS = ("native", "batch-major")  # how state tensors sit in the file (see DescribeStateIO)
STATE_ARG = re.compile(r"(state|hidden|memory|carry|^hx$|^cx$|^h0?$|^c0?$|^h_0$|^c_0$)", re.IGNORECASE)
INIT_HOOKS = ("initial_state", "init_state", "init_hidden", "zero_state")


@dataclass
class ExportOptions:
    """How to export. ``inputs`` declares data inputs (and, by name, explicit state arguments);
    ``state_args`` names the forward arguments that are states (else found by :data:`STATE_ARG`)."""

    mode: str = "chunk"
    opset: int = 18
    inputs: Sequence[InputSpec] = ()
    state_args: Sequence[str] | None = None
    output_names: Sequence[str] | None = None
    verify: bool = True
    tolerance: float = 1e-5
    cells: str = "auto"  # step mode: "auto" (fastest measured form per kind) or "matmul"
    # "native": states keep PyTorch's layout ([layers*dirs, batch, H]); "batch-major": every state
    # with a batch axis has it first in the file ([batch, layers*dirs, H]), for runtimes that need that
    state_layout: str = "native"


@dataclass
class ExplicitState:
    """A forward argument that already carries state (``forward(x, state)``)."""

    arg: str
    treespec: Any
    leaf_names: list[str]
    batch_axes: list[int | None]
    make: Callable[[int], Any]  # batch -> initial value (pytree of tensors)
    stored: dict[str, np.ndarray] = field(default_factory=dict)  # leaf name -> nonzero start, batch size 1


@dataclass
class PassRecord:
    name: str
    changed: bool
    detail: str
    seconds: float


@dataclass
class ExportContext:
    """Everything the passes share. ``original`` is the user's model (never modified);
    ``model`` is a private copy that the passes wrap and capture."""

    original: nn.Module
    options: ExportOptions
    model: nn.Module = field(init=False)
    data: list[InputSpec] = field(default_factory=list)
    explicit: list[ExplicitState] = field(default_factory=list)
    wrappers: list[capture.StatefulRecurrent] = field(default_factory=list)
    lifted: list[capture.LiftedState] = field(default_factory=list)
    lifter: capture.StateLifter | None = None
    output_names: list[str] = field(default_factory=list)
    output_axes: list[tuple[int | None, int | None]] = field(default_factory=list)  # (batch, time)
    layer_specs: dict[int, RecurrentLayerSpec] = field(default_factory=dict)
    onnx_model: onnx.ModelProto | None = None
    contract: Contract | None = None
    parity: Any = None
    notes: list[str] = field(default_factory=list)
    records: list[PassRecord] = field(default_factory=list)
    frame_model: bool = False  # one frame per forward, exported for chunk/sequence as a Scan over time
    # every call's frames must be a multiple of this (a model that reshapes time into blocks, a
    # stride over time); probes, capture and verification use lengths that are multiples of it.
    # Combine new constraints with math.lcm.
    frame_multiple: int = 1
    temporal: Any = None  # context.TemporalPlan: convolutions over time with context caches, delays
    # why the forward loops over time in Python ("" if it does not): captured for one frame, chunk and
    # sequence files run that frame in a Scan over the data's own time axis (converters/timeloop.py)
    time_loop: str = ""
    # state name -> axis order of the file's state in terms of PyTorch's (state_layout="batch-major"
    # moves the batch axis first); states absent here have PyTorch's layout in the file too
    state_perms: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model = copy.deepcopy(self.original).eval()

    @property
    def mode(self) -> str:
        return self.options.mode

    @property
    def capture_mode(self) -> str:
        """The mode the model is captured in: a one-frame model, or one whose forward loops over time
        in Python, is always captured one step at a time."""
        return "step" if self.frame_model or self.time_loop else self.mode

    @property
    def streams_time(self) -> bool:
        """True when data inputs have a time axis (not a one-frame-per-call model)."""
        return any(s.time_axis is not None for s in self.data)

    @property
    def state_names(self) -> list[str]:
        return [n for e in self.explicit for n in e.leaf_names] + [s.name for s in self.lifted]

    def initial_states(self, batch: int, generator: torch.Generator | None = None, scale: float = 0.0
                       ) -> list[torch.Tensor]:
        """Flat state tensors (explicit, then lifted) for ``batch``: init values, plus noise if asked."""
        leaves: list[torch.Tensor] = []
        for e in self.explicit:
            leaves += [t.detach() for t in pytree.tree_leaves(e.make(batch))]  # a learned init may need grad
        leaves += [s.example(batch) for s in self.lifted]
        if scale and generator is not None:
            leaves = [t + scale * torch.randn(t.shape, generator=generator).to(t.dtype)
                      if t.dtype.is_floating_point else t for t in leaves]
        return leaves

    def example_data(self, batch: int, time: int, generator: torch.Generator) -> list[torch.Tensor]:
        return [s.random(batch, time, generator) for s in self.data]

    def run_lifter(self, data: Sequence[torch.Tensor], states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        with torch.no_grad():
            return list(self.lifter(*data, *states))

    def to_file_layout(self, states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Flat states (explicit, then lifted) from PyTorch's layout to the file's (:attr:`state_perms`)."""
        return [t.permute(self.state_perms[n]).contiguous() if n in self.state_perms else t
                for n, t in zip(self.state_names, states)]

    def from_file_layout(self, states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Flat states from the file's layout back to PyTorch's (the inverse of :meth:`to_file_layout`)."""
        return [t.permute(_inverse(self.state_perms[n])).contiguous() if n in self.state_perms else t
                for n, t in zip(self.state_names, states)]


class _InFileLayout:
    """``ctx`` seen with states in the file's layout: ``initial_states`` gives them so and
    ``run_lifter`` takes and returns them so (PyTorch still runs in its own layout). The parity
    check runs on this view, so that start states handed to the file and final states compared
    with PyTorch's are laid out as the file's contract says."""

    def __init__(self, ctx: ExportContext) -> None:
        self._ctx = ctx

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def initial_states(self, batch: int, generator: torch.Generator | None = None, scale: float = 0.0
                       ) -> list[torch.Tensor]:
        return self._ctx.to_file_layout(self._ctx.initial_states(batch, generator, scale))

    def run_lifter(self, data: Sequence[torch.Tensor], states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = self._ctx.run_lifter(data, self._ctx.from_file_layout(states))
        n_out = len(out) - len(states)
        return out[:n_out] + self._ctx.to_file_layout(out[n_out:])


def _inverse(perm: Sequence[int]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for k, p in enumerate(perm):
        inv[p] = k
    return tuple(inv)


def trace_time(ctx: ExportContext, frames: int = TRACE_TIME) -> int:
    """A trace or probe length: ``frames`` blocks of the model's frame multiple."""
    return frames * ctx.frame_multiple


def time_dimension(ctx: ExportContext) -> Any:
    """torch.export's dynamic time dimension: any length, or any multiple of ``ctx.frame_multiple``."""
    m = ctx.frame_multiple
    if m == 1:
        return torch.export.Dim("time", min=1, max=1 << 24)
    return m * torch.export.Dim("time_blocks", min=1, max=(1 << 24) // m)


class ResolveInputs:
    """Decide the data inputs (from ``--input`` or the model) and which forward arguments are states."""

    name = "resolve-inputs"

    def __call__(self, ctx: ExportContext) -> str:
        if ctx.mode not in ("chunk", "step", "sequence"):
            raise ExportError(f"mode {ctx.mode!r} is unknown; expected chunk, step or sequence")
        params = forward_parameters(ctx.model)
        declared = {s.name: s for s in ctx.options.inputs}
        names = [p.name for p in params]
        for n in declared:
            if n not in names and names:
                raise ExportError(f"--input {n!r} is not an argument of {type(ctx.original).__name__}.forward "
                                  f"({', '.join(names)})")
        if ctx.options.state_args is not None:
            bad = [a for a in ctx.options.state_args if a not in names]
            if bad:
                raise ExportError(f"state argument {bad[0]!r} is not an argument of "
                                  f"{type(ctx.original).__name__}.forward ({', '.join(names)})")
            state_args = list(ctx.options.state_args)
        else:
            state_args = [p.name for p in params[1:] if STATE_ARG.search(p.name)]
        data_params = [p for p in params if p.name not in state_args]
        required = [p for p in data_params if p.default is p.empty or p.name in declared]
        if not required:
            raise ExportError(f"{type(ctx.original).__name__}.forward takes no data input")
        for p in required:
            ctx.data.append(declared[p.name] if p.name in declared
                            else _only_inferred(ctx.model, p.name, len(required)))
        if len(required) == 1 and required[0].name not in declared:
            ctx.data[0] = self._pick_layout(ctx, ctx.data[0], state_args, declared)
        self._explicit(ctx, state_args, declared)
        # bidirectional layers that carry state are refused by lift-state (they need the future);
        # one that restarts in every chunk of the model's own (a dual-path intra-chunk layer) streams
        if not ctx.streams_time and ctx.mode != "step":
            ctx.frame_model = True  # the scan-over-time pass loops its step graph over frames
        desc = ", ".join(f"{s.name}:{s.dtype}{list(s.shape)}" for s in ctx.data)
        if ctx.explicit:
            desc += "; explicit states: " + ", ".join(n for e in ctx.explicit for n in e.leaf_names)
        return desc

    def _explicit(self, ctx: ExportContext, state_args: list[str], declared: dict[str, InputSpec]) -> None:
        hook = next((getattr(ctx.model, h) for h in INIT_HOOKS if callable(getattr(ctx.model, h, None))), None)
        for i, arg in enumerate(state_args):
            if arg in declared:
                spec = declared[arg]
                make = (lambda s: lambda b: torch.zeros(s.concrete(b, TRACE_TIME), dtype=s.torch_dtype))(spec)
            elif hook is not None:
                make = (lambda i: lambda b: _nth_state(hook(b), i, len(state_args), arg))(i)
            else:
                make = self._probe_state(ctx, i, len(state_args), arg)
            v2, v3 = make(2), make(3)
            leaves2, treespec = pytree.tree_flatten(v2)
            leaves3 = pytree.tree_leaves(v3)
            if not leaves2 or not all(isinstance(t, torch.Tensor) for t in leaves2):
                raise ExportError(f"state argument {arg!r} must be a tensor or a tuple of tensors")
            axes = [_changed_axis(a.shape, b.shape, 2, 3) for a, b in zip(leaves2, leaves3)]
            names = [arg] if isinstance(v2, torch.Tensor) else [f"{arg}.{_key_name(path)}"
                                                                for path, _ in pytree.tree_flatten_with_path(v2)[0]]
            stored = _stored_starts(names, axes, leaves2, pytree.tree_leaves(make(1)))
            ctx.explicit.append(ExplicitState(arg, treespec, names, axes, make, stored))

    def _pick_layout(self, ctx: ExportContext, guess: InputSpec, state_args: list[str],
                     declared: dict[str, InputSpec]) -> InputSpec:
        """The inferred input's layout: the guess if the model runs on it, else the first other
        common layout that runs (a Conv1d-first model may take [batch, time, channels] and
        transpose). The model runs once per layout, batch 2, a few frames, without grad."""
        rnn = next((m for m in ctx.model.modules() if isinstance(m, nn.RNNBase)), None)
        layouts = input_layouts(guess, time_major=rnn is not None and not rnn.batch_first)
        if len(layouts) == 1:
            return guess
        params = {p.name: p for p in forward_parameters(ctx.model)}
        hook = next((getattr(ctx.model, h) for h in INIT_HOOKS if callable(getattr(ctx.model, h, None))), None)
        states: list[Any] = []
        for i, arg in enumerate(state_args):
            if arg in declared:
                spec = declared[arg]
                states.append(torch.zeros(spec.concrete(TRACE_BATCH, TRACE_TIME), dtype=spec.torch_dtype))
            elif hook is not None:
                states.append(_nth_state(hook(TRACE_BATCH), i, len(state_args), arg))
            elif params[arg].default is not params[arg].empty:
                states.append(params[arg].default)
            else:
                return guess  # the model cannot run before its state's shape is known: keep the guess
        failures = []
        for spec in layouts:
            gen = torch.Generator().manual_seed(0)

            def run(frames: int, spec: InputSpec = spec, gen: torch.Generator = gen) -> None:
                with torch.no_grad():
                    ctx.model(spec.random(TRACE_BATCH, frames, gen), *states)
            try:
                _at_some_length(ctx, run, streams=True)
            except Exception as e:  # noqa: BLE001 - any failure means "not this layout"
                failures.append(e)
                continue
            if spec.shape != guess.shape:
                ctx.notes.append(f"input {guess.name} is {spec.describe()}: the model fails on the guess "
                                 f"{guess.describe()} from its first layer")
            return spec
        first = first_layer(ctx.model)
        shapes = [s.describe() for s in layouts]
        feat = tuple(d for d in guess.shape if d not in (BATCH, TIME))
        main = InputSpec(guess.name, guess.dtype, (BATCH, TIME, *feat), guess.high)
        others = [s.flag().split(":", 2)[2] for s in layouts if s.shape != main.shape]
        err = failures[0]
        raise ExportError(f"cannot infer the input of {type(ctx.original).__name__}: its first layer "
                          f"{describe_layer(first) if first is not None else '?'} fails on "
                          f"{', '.join(shapes[:-1])} and {shapes[-1]} ({type(err).__name__}: "
                          f"{(str(err).splitlines() or [''])[0][:200]}); pass --input {main.flag()}"
                          + (f" (or {' or '.join(others)})" if others else ""))

    def _probe_state(self, ctx: ExportContext, index: int, count: int, arg: str) -> Callable[[int], Any]:
        """No init hook and no ``--input``: call the model with the state argument left out (its
        default) and take the state's structure from the new state it returns. Without a default,
        the state of the model's first recurrent cell is tried (see :meth:`_cell_state`)."""
        params = {p.name: p for p in forward_parameters(ctx.model)}
        if params[arg].default is params[arg].empty:
            make, flag = self._cell_state(ctx, index, count, arg)
            if make is not None:
                return make
            raise ExportError(f"cannot tell the shape of state argument {arg!r}: give the model an "
                              "initial_state(batch_size) method, or pass --input "
                              + (flag if flag else f"{arg}:float32:DIMS with B marking the batch axis"))
        gen = torch.Generator().manual_seed(0)
        specs = ctx.data  # the forward's own inputs (scan-over-time later gives ctx.data a time axis)

        def make(batch: int):
            def run(frames: int):
                data = [s.random(batch, frames, gen) for s in specs]
                with torch.no_grad():
                    return ctx.model(*data)
            out = _at_some_length(ctx, run, ctx.streams_time)
            if not isinstance(out, tuple) or len(out) <= count:
                raise ExportError(f"{type(ctx.original).__name__}.forward must return (outputs..., new states...) "
                                  f"with one new state per state argument; it returned {type(out).__name__}")
            return pytree.tree_map(torch.zeros_like, out[len(out) - count + index])
        return make


    def _cell_state(self, ctx: ExportContext, index: int, count: int, arg: str
                    ) -> tuple[Callable[[int], Any] | None, str | None]:
        """A state argument without a default or hook, in a model with an ``nn.GRUCell`` /
        ``nn.RNNCell`` (state ``[batch, hidden]``) or ``nn.LSTMCell`` (``(h, c)``, or ``h`` and
        ``c`` as two arguments): the first cell's state, if the model runs on zeros of that shape
        and returns a new state of the same shape. Returns ``(make or None, --input text or None)``."""
        cell = next((m for m in ctx.model.modules() if isinstance(m, nn.RNNCellBase)), None)
        if cell is None:
            layer = next((m for m in ctx.model.modules() if isinstance(m, nn.RNNBase)), None)
            if layer is not None and not isinstance(layer, nn.LSTM) and count == 1:
                dirs = 2 if layer.bidirectional else 1
                return None, f"{arg}:float32:{layer.num_layers * dirs},B,{layer.hidden_size}"
            return None, None
        hidden, lstm = cell.hidden_size, isinstance(cell, nn.LSTMCell)
        if lstm and count == 1:
            def make(batch: int) -> Any:
                return torch.zeros(batch, hidden), torch.zeros(batch, hidden)
            flag = None  # a tuple: --input declares one tensor
        elif count == 1 or (lstm and count == 2):
            def make(batch: int) -> Any:
                return torch.zeros(batch, hidden)
            flag = f"{arg}:float32:B,{hidden}"
        else:
            return None, None
        gen = torch.Generator().manual_seed(0)

        def run(frames: int) -> Any:
            data = [s.random(TRACE_BATCH, frames, gen) for s in ctx.data]
            with torch.no_grad():
                return ctx.model(*data, *(make(TRACE_BATCH) for _ in range(count)))
        try:
            out = _at_some_length(ctx, run, ctx.streams_time)
        except Exception:  # noqa: BLE001 - the guess does not fit this model
            return None, flag
        want = make(TRACE_BATCH)
        if not isinstance(out, tuple) or len(out) <= count:
            return None, flag
        new = out[len(out) - count + index]
        new_leaves, new_spec = pytree.tree_flatten(new)
        want_leaves, want_spec = pytree.tree_flatten(want)
        if new_spec != want_spec or [getattr(t, "shape", None) for t in new_leaves] != [t.shape for t in want_leaves]:
            return None, flag
        ctx.notes.append(f"state argument {arg!r} has the shape of {describe_layer(cell)}'s state "
                         f"({'(h, c), each ' if lstm and count == 1 else ''}[batch, {hidden}])")
        return make, flag


def _at_some_length(ctx: ExportContext, run: Callable[[int], Any], streams: bool) -> Any:
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


def _key_name(path) -> str:
    """``state["memory"][0]`` -> ``memory.0``: state names follow dict keys and tuple positions."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return ".".join(parts)


def _stored_starts(names: Sequence[str], axes: Sequence[int | None], at2: Sequence[torch.Tensor],
                   at1: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    """Nonzero start values (a learned initial memory, say) to store in the file. A start value
    must be the same for every stream: the batch-2 value must repeat the batch-1 value."""
    stored = {}
    for name, axis, t2, t1 in zip(names, axes, at2, at1):
        t2, t1 = t2.detach(), t1.detach()
        if not t2.is_floating_point() or not bool(t2.any()):
            continue
        same = t1.shape == t2.shape if axis is None else (
            t1.shape[axis] == 1 and torch.equal(t1.expand_as(t2), t2))
        if not same:
            raise ExportError(f"state {name!r} starts from values that differ between streams of one batch; a file "
                              "stores one start value per state (repeated for every stream), so make initial_state()"
                              " repeat one value along the batch axis")
        stored[name] = t1.cpu().numpy().copy()
    return stored


def _nth_state(value: Any, i: int, count: int, arg: str) -> Any:
    if count == 1:
        return value
    if not isinstance(value, (tuple, list)) or len(value) != count:
        raise ExportError(f"the model's initial_state() must return one value per state argument ({count})")
    return value[i]


def _only_inferred(model: nn.Module, name: str, n_required: int) -> InputSpec:
    if n_required > 1:
        raise ExportError(f"{type(model).__name__}.forward takes {n_required} data inputs; declare each with "
                          f"--input NAME:DTYPE:DIMS (missing: {name})")
    return infer_data_input(model, name)


def _changed_axis(a: Sequence[int], b: Sequence[int], va: int, vb: int) -> int | None:
    axes = [k for k, (x, y) in enumerate(zip(a, b)) if x == va and y == vb]
    return axes[0] if len(axes) == 1 else None


class LiftState:
    """Wrap recurrent layers, find those called without a state, and make their states I/O."""

    name = "lift-state"

    def __call__(self, ctx: ExportContext) -> str:
        model = ctx.model
        if isinstance(model, nn.RNNBase):
            raise ExportError("internal: bare layers are wrapped by edgernn.load before export")
        ctx.wrappers = capture.wrap_recurrent_layers(model)
        time_len, step_multiple = self._first_probe(ctx)
        own_batch = self._layers_off_batch(ctx, time_len)
        lifted = []
        for w in ctx.wrappers:
            if w.calls_without_state > 1:
                raise ExportError(f"recurrent layer {w.path!r} is called {w.calls_without_state} times per forward "
                                  "without a state; lifting its state needs exactly one call")
            if w.calls_without_state == 1 and id(w) in own_batch and ctx.mode == "chunk":
                how = self._reshaped_batch(ctx, w, time_len)
                if how == "per-call":
                    ctx.notes.append(f"layer {w.path!r} runs on a batch that grows with the frames of a call (the "
                                     "model folds time into its batch, a dual-path block's intra-chunk layer): it "
                                     "starts from zeros in every chunk of the model's own, so it has no state pair")
                    continue
                if how is not None and w.spec.bidirectional:
                    raise ExportError(f"layer {w.path!r} is bidirectional and carries state between chunks of the "
                                      "model's own; it needs the future: export with --mode sequence")
                if how is not None:  # a fixed multiple of the model's batch: carried as [L, batch, K, H]
                    object.__setattr__(w, "batch_factor", how)
                    base = w.path if w.path else w.spec.kind
                    lifted += [capture.LiftedState(f"{base}.{part}", w, k) for k, part in enumerate(w.spec.state_parts)]
                    ctx.notes.append(f"layer {w.path!r} runs on {how} rows per stream (the model reshapes its batch): "
                                     f"its state is carried as [layers, batch, {how}, hidden]")
                    continue
            if w.calls_without_state == 1 and id(w) in own_batch:
                b = own_batch[id(w)]
                if ctx.mode != "sequence":
                    raise ExportError(f"layer {w.path!r} runs on a batch of {b} where the model's batch is "
                                      f"{TRACE_BATCH} (the model reshapes its batch); its state cannot be carried "
                                      "between calls: export with --mode sequence")
                ctx.notes.append(f"layer {w.path!r} runs on a batch of {b} where the model's batch is {TRACE_BATCH} "
                                 "(the model reshapes its batch): it has no state pair and starts from zeros "
                                 "in every call")
            elif w.calls_without_state == 1:
                base = w.path if w.path else w.spec.kind
                lifted += [capture.LiftedState(f"{base}.{part}", w, k) for k, part in enumerate(w.spec.state_parts)]
            if w.spec.bidirectional and ctx.mode != "sequence":
                raise ExportError(f"layer {w.path!r} is bidirectional and cannot stream: it needs the future of the "
                                  "sequence; export with --mode sequence")
        if step_multiple:
            raise ExportError(f"{type(ctx.original).__name__} only runs on lengths that are a multiple of "
                              f"{step_multiple} frames (it fails on 1 frame); step mode feeds one frame per call: "
                              "export with --mode chunk or --mode sequence")
        if ctx.temporal is not None:  # context caches of convolutions over time (converters/context.py)
            lifted += [s for st in ctx.temporal.states for s in st.lifted_states()]
        ctx.lifted = sorted(lifted, key=lambda s: s.name)
        ctx.lifter = capture.StateLifter(model, len(ctx.data), [(e.arg, e.treespec) for e in ctx.explicit],
                                         ctx.lifted)
        self._describe_outputs(ctx)
        self._streams_apart(ctx)
        dup = {n for n in ctx.state_names if ctx.state_names.count(n) > 1}
        if dup:
            raise ExportError(f"two states are both named {sorted(dup)[0]!r}")
        return ", ".join(s.name for s in ctx.lifted) or "no layer called without a state"

    @staticmethod
    def _run(ctx: ExportContext, batch: int, time_len: int, seed: int = 0) -> list[torch.Tensor]:
        """The model once on random data of ``batch`` and ``time_len`` frames (counters reset first)."""
        gen = torch.Generator().manual_seed(seed)
        data = ctx.example_data(batch, time_len, gen)
        explicit = [e.make(batch) for e in ctx.explicit]
        capture.reset_counters(ctx.wrappers)
        with torch.no_grad():
            ctx.model(*data, *explicit)
        return data

    def _first_probe(self, ctx: ExportContext) -> tuple[int, int]:
        """Run the model at the trace length; if it fails there, at lengths that are multiples of
        2, 4, 8, 16 (the first that runs sets ``ctx.frame_multiple``). Returns the length that ran
        and, for a step-mode model that needs several frames per call, that multiple (else 0)."""
        name = type(ctx.original).__name__
        step = ctx.capture_mode == "step"
        time_len = 1 if step else trace_time(ctx)
        try:
            self._run(ctx, TRACE_BATCH, time_len)
            return time_len, 0
        except ExportError:
            raise
        except Exception as e:
            shapes = [list(t.shape) for t in ctx.example_data(TRACE_BATCH, time_len, torch.Generator())]
            failure = ExportError(f"{name} failed on example inputs {shapes}: {str(e).splitlines()[0][:300]}")
        if ctx.streams_time:
            tried = {1 if step else ctx.frame_multiple}
            for m in FRAME_MULTIPLES:
                multiple = math.lcm(ctx.frame_multiple, m)
                if multiple in tried:
                    continue
                tried.add(multiple)
                try:
                    for k in (TRACE_TIME + 2, TRACE_TIME):  # two lengths: the last that ran is the trace length
                        self._run(ctx, TRACE_BATCH, k * multiple)
                except ExportError:
                    raise
                except Exception:
                    continue
                if step and ctx.mode != "step":
                    break  # captured one frame at a time (a loop over time): it must run on one frame
                if step:
                    return TRACE_TIME * multiple, multiple
                ctx.notes.append(f"{name} fails on {time_len} frames and runs on multiples of {multiple}: every call "
                                 f"must feed a multiple of {multiple} frames")
                ctx.frame_multiple = multiple
                return TRACE_TIME * multiple, 0
        raise failure from None

    @staticmethod
    def _streams_apart(ctx: ExportContext) -> None:
        """A layer on ``batch * K`` rows is carried as ``[L, batch, K, H]``: true only if the model
        puts each stream's K rows together (row ``b * K + k``). Two streams run together must give
        what each gives alone, or the export is refused naming the layer."""
        folded = [w for w in ctx.wrappers if w.__dict__.get("batch_factor", 1) > 1]
        if not folded or ctx.explicit:
            return
        gen = torch.Generator().manual_seed(11)
        data = ctx.example_data(2, trace_time(ctx), gen)
        states = ctx.initial_states(2, gen, scale=0.5)
        both = ctx.run_lifter(data, states)
        for b in range(2):
            alone = ctx.run_lifter([t.narrow(s.batch_axis, b, 1) if s.batch_axis is not None else t
                                    for s, t in zip(ctx.data, data)],
                                   [t.narrow(st.batch_axis, b, 1) for st, t in zip(ctx.lifted, states)])
            for k, (name, (axis, _)) in enumerate(zip(ctx.output_names, ctx.output_axes)):
                if axis is None or not torch.allclose(both[k].narrow(axis, b, 1), alone[k], atol=1e-5, rtol=1e-4):
                    w = folded[0]
                    raise ExportError(f"layer {w.path!r} runs on {w.batch_factor} rows per stream, but the model does "
                                      "not keep each stream's rows together (row batch * K + k), so its state cannot "
                                      "be carried per stream: export with --mode sequence")

    def _reshaped_batch(self, ctx: ExportContext, w: capture.StatefulRecurrent, time_len: int) -> int | str | None:
        """How a layer off the model's batch sees it: ``"per-call"`` when its batch grows with the
        frames of a call (time folded into the batch: it restarts every chunk of the model's own), the
        factor ``K`` when it runs on ``batch * K`` rows at any length and batch, else ``None``."""
        def batch_at(batch: int, frames: int) -> int | None:
            saved = {id(v): (v.calls, v.calls_without_state, list(v.batches)) for v in ctx.wrappers}
            try:
                self._run(ctx, batch, frames, seed=5)
                return w.batches[0] if w.batches else None
            except ExportError:
                raise
            except Exception:
                return None
            finally:
                for v in ctx.wrappers:
                    v.calls, v.calls_without_state, v.batches = saved[id(v)]
        longer = time_len + 2 * ctx.frame_multiple
        b1, b2, b3 = batch_at(TRACE_BATCH, time_len), batch_at(TRACE_BATCH, longer), batch_at(TRACE_BATCH + 1, time_len)
        if None in (b1, b2, b3):
            return None
        if b1 != b2:
            return "per-call"
        if b1 % TRACE_BATCH == 0 and b3 == (TRACE_BATCH + 1) * (b1 // TRACE_BATCH):
            return b1 // TRACE_BATCH
        return None

    def _layers_off_batch(self, ctx: ExportContext, time_len: int) -> dict[int, int]:
        """Layers called without a state whose batch is not the model's (a model that reshapes its
        batch, e.g. a dual-path block running a GRU over chunks): wrapper id -> its batch at
        TRACE_BATCH. A second run at another batch tells a batch that follows the model's from one
        that only equals it by chance. Leaves the counters of the first run in place."""
        first = {id(w): (w.calls, w.calls_without_state, list(w.batches)) for w in ctx.wrappers}
        candidates = [w for w in ctx.wrappers if w.calls_without_state == 1]
        if not candidates:
            return {}
        off = {id(w): w.batches[0] for w in candidates if w.batches[0] != TRACE_BATCH}
        if len(off) < len(candidates):
            try:
                self._run(ctx, TRACE_BATCH + 1, time_len, seed=3)
                for w in candidates:
                    if w.batches and w.batches[0] != TRACE_BATCH + 1:
                        off[id(w)] = first[id(w)][2][0]
            except ExportError:
                raise
            except Exception:
                pass  # the output probe (_describe_outputs) reports a model that fails at another batch
            for w in ctx.wrappers:
                w.calls, w.calls_without_state, w.batches = first[id(w)]
        return off

    def _describe_outputs(self, ctx: ExportContext) -> None:
        """Run the lifter at two batch sizes and two lengths; axes that follow them are the outputs'
        batch and time axes. A step-mode model that only takes one frame is probed at length 1."""
        outs = self._probe(ctx, trace_time(ctx), trace_time(ctx, TRACE_TIME + 2)) if ctx.streams_time else None
        one_frame = outs is None
        if one_frame:
            outs = self._probe(ctx, 1, 1, must=True)
        (k1, o1), (k2, o2) = outs.items()
        n_out = len(o1) - len(ctx.state_names)
        if n_out < 1:
            raise ExportError(f"{type(ctx.original).__name__}.forward returns no data output")
        given = list(ctx.options.output_names or [])
        if given and len(given) != n_out:
            raise ExportError(f"--output-names gives {len(given)} names but the model returns {n_out} outputs")
        ctx.output_names = given or (["y"] if n_out == 1 else [f"y.{k}" for k in range(n_out)])
        ctx.output_axes = []
        for a, b in zip(o1[:n_out], o2[:n_out]):
            batch_axis = _changed_axis(a.shape, b.shape, k1[0], k2[0])
            time_axis = None if one_frame else _changed_axis(a.shape, b.shape, k1[1], k2[1])
            if time_axis is None and not one_frame:  # strided over time: the one other axis that grows
                grown = [k for k, (x, y) in enumerate(zip(a.shape, b.shape)) if x < y and k != batch_axis]
                time_axis = grown[0] if len(grown) == 1 else None
            if one_frame and ctx.streams_time:
                time_axis = self._step_time_axis(ctx, a.shape, batch_axis)
            ctx.output_axes.append((batch_axis, time_axis))
        for e, leaves2 in zip(ctx.explicit, _split_explicit(ctx, o1[n_out:])):
            for name, t, axis in zip(e.leaf_names, leaves2, e.batch_axes):
                if axis is not None and t.shape[axis] != k1[0]:
                    raise ExportError(f"the new value of state {name!r} has shape {list(t.shape)}, which does not "
                                      "match the state argument's batch; forward must return (outputs..., new states...)"
                                      " in argument order")

    @staticmethod
    def _probe(ctx: ExportContext, t1: int, t2: int, must: bool = False) -> dict | None:
        gen = torch.Generator().manual_seed(1)
        outs = {}
        for b, t in ((TRACE_BATCH, t1), (TRACE_BATCH + 1, t2)):
            try:
                outs[(b, t)] = ctx.run_lifter(ctx.example_data(b, t, gen), ctx.initial_states(b))
            except ExportError:
                raise
            except Exception as e:
                if not must and ctx.capture_mode == "step":
                    return None  # a one-frame model: probe it at length 1
                raise ExportError(f"{type(ctx.original).__name__} failed on example inputs of batch {b} and "
                                  f"{t} frames: {str(e).splitlines()[0][:300]}") from None
        return outs

    @staticmethod
    def _step_time_axis(ctx: ExportContext, shape: Sequence[int], batch_axis: int | None) -> int | None:
        # a one-frame output keeps a size-1 time axis on the same side of batch as the input's
        if batch_axis is None:
            return None
        data = ctx.data[0]
        k = batch_axis - 1 if data.time_axis < data.batch_axis else batch_axis + 1
        return k if 0 <= k < len(shape) and shape[k] == 1 else None


def _split_explicit(ctx: ExportContext, leaves: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    out = []
    for e in ctx.explicit:
        out.append(list(leaves[: len(e.leaf_names)]))
        leaves = leaves[len(e.leaf_names):]
    return out


class Capture:
    """``torch.onnx.export(dynamo=True)`` of the state lifter, recurrent layers as placeholders."""

    name = "capture"

    def __call__(self, ctx: ExportContext) -> str:
        assert ctx.lifter is not None
        gen = torch.Generator().manual_seed(2)
        time_len = 1 if ctx.capture_mode == "step" else trace_time(ctx)
        example = [*ctx.example_data(TRACE_BATCH, time_len, gen), *ctx.initial_states(TRACE_BATCH)]
        batch = torch.export.Dim("batch", min=1, max=1 << 20)
        time_dim = time_dimension(ctx)
        dyn: list[dict[int, Any]] = []
        for s in ctx.data:
            d = {}
            if s.batch_axis is not None:
                d[s.batch_axis] = batch
            if s.time_axis is not None and ctx.capture_mode != "step":
                d[s.time_axis] = time_dim
            dyn.append(d)
        for e in ctx.explicit:
            dyn += [{a: batch} if a is not None else {} for a in e.batch_axes]
        dyn += [{s.batch_axis: batch} for s in ctx.lifted]
        input_names = [s.name for s in ctx.data] + [f"state_in.{n}" for n in ctx.state_names]
        output_names = list(ctx.output_names) + [f"state_out.{n}" for n in ctx.state_names]
        ctx.onnx_model = capture.export_graph(ctx.lifter, ctx.wrappers, example, input_names, output_names,
                                              dyn, ctx.options.opset)
        fixed = timeloop.static_time_inputs(ctx, ctx.onnx_model) if ctx.capture_mode != "step" else []
        if fixed:  # the trace unrolled a Python loop over time that the time-loop pass did not see
            timeloop.reroute(ctx, fixed)
            LiftState()(ctx)
            return f"{ctx.time_loop}: captured again for one frame, {self(ctx)}"
        ctx.layer_specs = {w.layer_id: w.spec for w in ctx.wrappers}
        n = len(ctx.onnx_model.graph.node)
        return f"{n} nodes, {sum(1 for x in ctx.onnx_model.graph.node if x.domain == capture.DOMAIN)} placeholders"


class LowerRecurrentLayers:
    """Replace each placeholder by ONNX RNN/LSTM/GRU ops (chunk, sequence) or, in step mode, the
    form ``options.cells`` asks for (see ``converters.recurrent.lower_step``)."""

    name = "lower-recurrent"

    def __call__(self, ctx: ExportContext) -> str:
        assert ctx.onnx_model is not None
        graph = ctx.onnx_model.graph
        new_nodes, inits, lowered = [], [], []
        for node in graph.node:
            if node.domain != capture.DOMAIN:
                new_nodes.append(node)
                continue
            layer = next(a.i for a in node.attribute if a.name == "layer")
            spec = ctx.layer_specs[layer]
            g = GraphBuilder(spec.path or spec.kind)
            ins = list(node.input)
            valid = ins.pop() if node.op_type.endswith("Gated") else None  # skips warm-up frames (context.py)
            x, h0, *c0 = ins
            y, hn, *cn = node.output
            args = (g, spec, x, h0, c0[0] if c0 else None, y, hn, cn[0] if cn else None)
            if valid is not None:
                lower_gated(*args[:5], valid, *args[5:])
            elif ctx.capture_mode == "step":
                lower_step(*args, cells=ctx.options.cells)
            else:
                lower_sequence(*args)
            new_nodes += g.nodes
            inits += g.initializers
            kinds = sorted({n.op_type for n in g.nodes} & {"GRU", "LSTM", "RNN", "Scan", "MatMul"})
            lowered.append(f"{spec.path or spec.kind} ({spec.kind}) -> {'/'.join(kinds)}")
        del graph.node[:]
        graph.node.extend(new_nodes)
        graph.initializer.extend(inits)
        keep = [o for o in ctx.onnx_model.opset_import if o.domain != capture.DOMAIN]
        del ctx.onnx_model.opset_import[:]
        ctx.onnx_model.opset_import.extend(keep)
        return "; ".join(lowered) or "no recurrent layers"


class ScanOverTime:
    """For a model that takes one frame per forward (cells with explicit state, an NTM) in chunk
    or sequence mode: wrap its one-step graph in a ``Scan`` over a new leading time axis, the
    states as Scan state variables. Data inputs and outputs gain axis 0 ``time``."""

    name = "scan-over-time"

    def __call__(self, ctx: ExportContext) -> str:
        if ctx.time_loop and ctx.mode != "step":
            return timeloop.scan_over_time(ctx)
        if not ctx.frame_model:
            return "not needed (the model takes a time axis)"
        model = ctx.onnx_model
        g = model.graph
        n_data, n_out = len(ctx.data), len(ctx.output_names)
        data_in, state_in = list(g.input[:n_data]), list(g.input[n_data:])
        data_out, state_out = list(g.output[:n_out]), list(g.output[n_out:])
        rename = {v.name: f"{v.name}@frame" for v in [*data_in, *state_in, *data_out, *state_out]}
        body = onnx.helper.make_graph(
            [timeloop.renamed_node(n, rename) for n in g.node], "frame_step",
            [_renamed_vi(v, rename) for v in [*state_in, *data_in]],
            [_renamed_vi(v, rename) for v in [*state_out, *data_out]],
            initializer=list(g.initializer), value_info=list(g.value_info))
        scan = onnx.helper.make_node(
            "Scan", [v.name for v in [*state_in, *data_in]], [v.name for v in [*state_out, *data_out]],
            name="scan_over_time", body=body, num_scan_inputs=n_data)
        new_inputs = [_with_time(v) for v in data_in] + state_in
        new_outputs = [_with_time(v) for v in data_out] + state_out
        graph = onnx.helper.make_graph([scan], g.name, new_inputs, new_outputs)
        del model.graph.node[:]
        model.graph.CopyFrom(graph)
        ctx.data = [InputSpec(s.name, s.dtype, (TIME, *s.shape), s.high) for s in ctx.data]
        ctx.output_axes = [(None if b is None else b + 1, 0) for b, _ in ctx.output_axes]
        return f"step graph of {len(body.node)} nodes in a Scan over axis 0, {len(state_in)} state variables"


def _renamed_vi(vi: onnx.ValueInfoProto, rename: dict[str, str]) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(vi)
    out.name = rename.get(vi.name, vi.name)
    return out


def _with_time(vi: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(vi)
    dims = out.type.tensor_type.shape.dim
    old = [onnx.TensorShapeProto.Dimension() for _ in dims]
    for o, d in zip(old, dims):
        o.CopyFrom(d)
    del dims[:]
    dims.add().dim_param = TIME
    for o in old:
        dims.add().CopyFrom(o)
    return out


class DescribeStateIO:
    """Name dims (``batch``, ``time``) on graph I/O and write the contract into metadata_props.

    With ``options.state_layout == "batch-major"``, every state whose batch axis is not its first
    axis is moved to batch-first at the graph's edge: a ``Transpose`` after ``state_in.<name>``
    back to PyTorch's layout, and one before ``state_out.<name>`` to batch-first, so the graph
    inside computes as before. The contract then gives the state's shape batch-first with
    ``batch_axis`` 0, and a stored start value (``state_init.<name>``) is permuted the same way.
    States without a batch axis, or with it first already, are left as they are."""

    name = "describe-state-io"

    def __call__(self, ctx: ExportContext) -> str:
        assert ctx.onnx_model is not None
        layout = ctx.options.state_layout
        if layout not in STATE_LAYOUTS:
            raise ExportError(f"state layout {layout!r} is unknown; expected {' or '.join(STATE_LAYOUTS)}")
        step = ctx.mode == "step"
        inputs = tuple(s.to_tensor_spec(step, ctx.frame_multiple) for s in ctx.data)
        graph = ctx.onnx_model.graph
        outs_by_name = {o.name: o for o in graph.output}
        outputs = []
        delays = list(ctx.temporal.delays) if ctx.temporal is not None else []
        for k, (name, (b, t)) in enumerate(zip(ctx.output_names, ctx.output_axes)):
            vi = outs_by_name[name]
            shape = _graph_shape(vi)
            if b is not None:
                shape[b] = BATCH
            if t is not None:
                shape[t] = 1 if step else TIME
            delay = delays[k] if k < len(delays) and t is not None else 0
            outputs.append(TensorSpec(name, tuple(shape), _dtype_name(vi), b, t, delay=delay))
        states = []
        lifted_leaves = {s.name: s for s in ctx.lifted}
        explicit_axes = {n: a for e in ctx.explicit for n, a in zip(e.leaf_names, e.batch_axes)}
        stored = {n: v for e in ctx.explicit for n, v in e.stored.items()}
        ins_by_name = {i.name: i for i in graph.input}
        ctx.state_perms = {}
        for name in ctx.state_names:
            vi = ins_by_name[f"state_in.{name}"]
            shape = _graph_shape(vi)
            axis = lifted_leaves[name].batch_axis if name in lifted_leaves else explicit_axes[name]
            if axis is not None:
                shape[axis] = BATCH
            start = stored.get(name)
            if layout == "batch-major" and axis is not None and axis != 0:
                perm = (axis, *range(axis), *range(axis + 1, len(shape)))
                _transpose_state_io(graph, name, perm)
                ctx.state_perms[name] = perm
                shape, axis = [shape[k] for k in perm], 0
                if start is not None:
                    start = np.ascontiguousarray(start.transpose(perm))
            init: str | dict[str, str] = "zeros"
            if start is not None:
                init = {"initializer": f"state_init.{name}"}
                graph.initializer.append(onnx.numpy_helper.from_array(start, init["initializer"]))
            states.append(StateSpec(name, tuple(shape), _dtype_name(vi), axis, init))
        ctx.contract = Contract(ctx.mode, inputs, tuple(outputs), tuple(states))  # type: ignore[arg-type]
        for vi, spec in [*((ins_by_name[s.name], s) for s in inputs), *((outs_by_name[s.name], s) for s in outputs),
                         *((ins_by_name[s.input], s) for s in states), *((outs_by_name[s.output], s) for s in states)]:
            _set_dims(vi, spec.shape)
        write_metadata(ctx.onnx_model, ctx.contract)
        ctx.onnx_model.producer_name = "edgernn"
        detail = f"format {FORMAT_VERSION}, mode {ctx.mode}, {len(states)} state pairs"
        if layout == "batch-major":
            detail += f", batch-major ({len(ctx.state_perms)} transposed)"
        return detail


def _transpose_state_io(graph: onnx.GraphProto, name: str, perm: Sequence[int]) -> None:
    """Make the graph take and give state ``name`` with its axes in ``perm`` order (PyTorch's axes
    ``perm[0], perm[1], ...``), leaving every node that reads or writes it as it was."""
    state_in, state_out = f"state_in.{name}", f"state_out.{name}"
    native_in, native_out = f"{state_in}@native", f"{state_out}@native"
    producer = next((n for n in graph.node if state_out in n.output), None)
    if producer is None:
        raise ExportError(f"internal: no node computes {state_out!r}, so its layout cannot be changed")
    _rename_uses(graph, state_in, native_in)
    _rename_uses(graph, state_out, native_out)
    producer.output[:] = [native_out if o == state_out else o for o in producer.output]
    for vi in graph.value_info:
        if vi.name == state_out:
            vi.name = native_out
    to_native = onnx.helper.make_node("Transpose", [state_in], [native_in], name=f"{state_in}/to_native",
                                      perm=list(_inverse(perm)))
    to_file = onnx.helper.make_node("Transpose", [native_out], [state_out], name=f"{state_out}/batch_major",
                                    perm=list(perm))
    nodes = [to_native, *graph.node, to_file]
    del graph.node[:]
    graph.node.extend(nodes)


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every node input named ``old`` reads ``new`` instead, in subgraphs too (unless one defines
    its own ``old``)."""
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                defined = {v.name for v in sub.input} | {t.name for t in sub.initializer} | {
                    o for n in sub.node for o in n.output}
                if old not in defined:
                    _rename_uses(sub, old, new)


def _graph_shape(vi: onnx.ValueInfoProto) -> list[int | str]:
    dims = vi.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def _set_dims(vi: onnx.ValueInfoProto, shape: Sequence[int | str]) -> None:
    tt = vi.type.tensor_type
    del tt.shape.dim[:]
    for d in shape:
        dim = tt.shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        else:
            dim.dim_param = d


def _dtype_name(vi: onnx.ValueInfoProto) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name


class Optimize:
    """onnxscript's optimizer (constant folding, dead code) on the lowered graph."""

    name = "optimize"

    def __call__(self, ctx: ExportContext) -> str:
        import onnxscript.optimizer

        before = len(ctx.onnx_model.graph.node)
        starts = [t for t in ctx.onnx_model.graph.initializer if t.name.startswith("state_init.")]
        optimized = onnxscript.optimizer.optimize(ctx.onnx_model)
        kept = {t.name for t in optimized.graph.initializer}
        optimized.graph.initializer.extend(t for t in starts if t.name not in kept)  # read by runtimes, not nodes
        # the optimizer keeps metadata_props; keep I/O order and names exactly as they were
        if [i.name for i in optimized.graph.input] != [i.name for i in ctx.onnx_model.graph.input]:
            return "skipped: the optimizer changed graph inputs"
        moved = _initializers_into_subgraphs(optimized.graph)
        ctx.onnx_model = optimized
        return f"{before} -> {len(optimized.graph.node)} nodes" + (
            f", {moved} weights kept in the subgraphs that read them" if moved else "")


def _initializers_into_subgraphs(graph: onnx.GraphProto) -> int:
    """Put back into a subgraph the initializers only it reads. The optimizer hoists them to the
    main graph, where onnxruntime's LSTM quantizer does not find an op's weights and the float16
    converter converts them although the subgraph stays float32. Returns how many moved."""
    def reads(g: onnx.GraphProto) -> set[str]:
        names = {o.name for o in g.output}
        for n in g.node:
            names.update(n.input)
            for a in n.attribute:
                for sub in ([a.g] if a.HasField("g") else list(a.graphs)):
                    names |= reads(sub)
        return names
    top = {o.name for o in graph.output} | {i for n in graph.node for i in n.input}
    readers: dict[str, list[onnx.GraphProto]] = {}
    for n in graph.node:
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else list(a.graphs)):
                for name in reads(sub):
                    readers.setdefault(name, []).append(sub)
    keep, moved = [], 0
    for t in graph.initializer:
        subs = readers.get(t.name, [])
        if t.name in top or len(subs) != 1 or t.name.startswith("state_init."):
            keep.append(t)
            continue
        subs[0].initializer.append(t)
        moved += 1
    if moved:
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return moved


class CheckAndInferShapes:
    """onnx.checker (full) and shape inference; graph I/O must follow the contract's names."""

    name = "check"

    def __call__(self, ctx: ExportContext) -> str:
        model = onnx.shape_inference.infer_shapes(ctx.onnx_model, check_type=True, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
        names_in = [i.name for i in model.graph.input]
        names_out = [o.name for o in model.graph.output]
        want_in = [s.name for s in ctx.contract.inputs] + [s.input for s in ctx.contract.states]
        want_out = [s.name for s in ctx.contract.outputs] + [s.output for s in ctx.contract.states]
        if names_in != want_in or names_out != want_out:
            raise ExportError(f"graph I/O {names_in} -> {names_out} does not follow the contract "
                              f"{want_in} -> {want_out}")
        ctx.onnx_model = model
        return f"ir {model.ir_version}, opset {next(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx'))}"


class Verify:
    """Numerical parity with PyTorch through onnxruntime (see ``verify.py``)."""

    name = "verify"

    def __call__(self, ctx: ExportContext) -> str:
        from edgernn.converters.verify import verify_parity

        if not ctx.options.verify:
            ctx.notes.append("parity was not checked (--no-verify)")
            return "skipped"
        # states go in and come out in the file's layout (batch-major or not), PyTorch runs in its own
        ctx.parity = verify_parity(_InFileLayout(ctx) if ctx.state_perms else ctx)
        return ctx.parity.summary()


PIPELINE: tuple = (ResolveInputs(), CacheTemporalContext(), timeloop.DetectTimeLoop(), LiftState(), CheckStreamable(),
                   Capture(), LowerRecurrentLayers(), ScanOverTime(), DescribeStateIO(), Optimize(),
                   CheckAndInferShapes(), Verify())


def run_pipeline(ctx: ExportContext, passes: Sequence = PIPELINE, progress: Callable[[str], None] | None = None
                 ) -> ExportContext:
    """Run ``passes`` in order, recording what each did."""
    for p in passes:
        if progress:
            progress(p.name)
        t0 = time.perf_counter()
        detail = p(ctx)
        ctx.records.append(PassRecord(p.name, True, detail, time.perf_counter() - t0))
    return ctx


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
