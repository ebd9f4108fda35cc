"""The resolve-inputs pass: a model's data inputs, and which of its forward arguments are states.

Data inputs come from ``--input`` declarations or are inferred from the model's first layer
(``io.py``), trying the common layouts until the model runs on one. A forward argument is a state
when ``state_args`` names it, or else when its name looks like one (:data:`STATE_ARG`); its shape
comes from the model's ``initial_state(batch)`` hook (:data:`INIT_HOOKS`), an ``--input``
declaration, the new state the model returns when the argument is left out, or the state of the
model's first recurrent cell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree

from edgernn.contract import BATCH, TIME
from edgernn.converters import torchscript
from edgernn.converters.io import (InputSpec, describe_layer, first_layer, forward_parameters, infer_data_input,
                                   input_layouts)
from edgernn.converters.pass_api import PassResult
from edgernn.converters.probe import TRACE_BATCH, TRACE_TIME, at_some_length, changed_axis
from edgernn.errors import ExportError

if TYPE_CHECKING:  # pragma: no cover
    from edgernn.converters.passes import ExportContext

STATE_ARG = re.compile(r"(state|hidden|memory|carry|^hx$|^cx$|^h0?$|^c0?$|^h_0$|^c_0$)", re.IGNORECASE)
INIT_HOOKS = ("initial_state", "init_state", "init_hidden", "zero_state")


@dataclass
class ExplicitState:
    """A forward argument that already carries state (``forward(x, state)``)."""

    arg: str
    treespec: Any
    leaf_names: list[str]
    batch_axes: list[int | None]
    make: Callable[[int], Any]  # batch -> initial value (pytree of tensors)
    stored: dict[str, np.ndarray] = field(default_factory=dict)  # leaf name -> nonzero start, batch size 1


class ResolveInputs:
    """Decide the data inputs (from ``--input`` or the model) and which forward arguments are states."""

    name = "resolve-inputs"

    def __call__(self, ctx: ExportContext) -> PassResult:
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
        return PassResult.done(desc)

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
            axes = [changed_axis(a.shape, b.shape, 2, 3) for a, b in zip(leaves2, leaves3)]
            names = [arg] if isinstance(v2, torch.Tensor) else [f"{arg}.{_key_name(path)}"
                                                                for path, _ in pytree.tree_flatten_with_path(v2)[0]]
            stored = _stored_starts(names, axes, leaves2, pytree.tree_leaves(make(1)))
            ctx.explicit.append(ExplicitState(arg, treespec, names, axes, make, stored))

    def _pick_layout(self, ctx: ExportContext, guess: InputSpec, state_args: list[str],
                     declared: dict[str, InputSpec]) -> InputSpec:
        """The inferred input's layout: the guess if the model runs on it, else the first other
        common layout that runs (a Conv1d-first model may take [batch, time, channels] and
        transpose). The model runs once per layout, batch 2, a few frames, without grad."""
        rnn = next((m for m in torchscript.layers(ctx.model) if isinstance(m, nn.RNNBase)), None)
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
                at_some_length(ctx, run, streams=True)
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
            out = at_some_length(ctx, run, ctx.streams_time)
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
        cell = next((m for m in torchscript.layers(ctx.model) if isinstance(m, nn.RNNCellBase)), None)
        if cell is None:
            layer = next((m for m in torchscript.layers(ctx.model) if isinstance(m, nn.RNNBase)), None)
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
            out = at_some_length(ctx, run, ctx.streams_time)
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


__all__ = ["INIT_HOOKS", "STATE_ARG", "ExplicitState", "ResolveInputs"]
