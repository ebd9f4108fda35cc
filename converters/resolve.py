"""The resolve-inputs pass: a model's data inputs, and which of its forward arguments are states.

A forward argument is a state when ``state_args`` names it, or else when its name looks like one
(:data:`STATE_ARG`; a first argument only by a state's own name, :data:`FIRST_STATE`), wherever it
sits in the signature: before, between or after the data inputs, keyword-only, with a default. The
passes then call the model as ``model(*data, *states)`` and it receives each argument by name, as
a copy (``io.bind_forward``). The other arguments without a default are data inputs: declared with
``--input``, or inferred: the first from the model's first layer (``io.py``; the layout picked by
running the model on the common ones), or from a cell's size attributes; further ones (a time step
``ts``, a mask) as one value per frame and stream, the first shape the model runs on. A state's
shape comes from the model's ``initial_state(batch)`` hook (:data:`INIT_HOOKS`), an ``--input``
declaration, the new state the model returns when the argument is left out, or the state of the
model's first recurrent cell (or of its ``hidden_size`` attribute). A forward may return
``(outputs..., new states...)`` or its new states alone (``nn.GRUCell``'s ``h'``, ``nn.LSTMCell``'s
``(h', c')``: :func:`new_states`); then the new state is the data output too (``lift.py``).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree

from edgernn.contract import BATCH, TIME
from edgernn.converters import torchscript
from edgernn.converters.io import (INPUT_SIZES, STATE_SIZES, InputSpec, bind_forward, describe_layer, first_layer,
                                   forward_parameters, fresh, infer_data_input, input_layouts, size_attribute)
from edgernn.converters.pass_api import PassResult
from edgernn.converters.probe import TRACE_BATCH, TRACE_TIME, at_some_length, changed_axis
from edgernn.errors import ExportError

if TYPE_CHECKING:  # pragma: no cover
    from edgernn.converters.passes import ExportContext

STATE_ARG = re.compile(r"(state|hidden|memory|carry|cache|buffer|past|^hx$|^cx$|^h0?$|^c0?$|^h_0$|^c_0$"
                       r"|^[hc]_?(prev|tm1|t_1)$)", re.IGNORECASE)
# a first argument is a state only by a state's own name (``hidden_states`` is a transformer's data)
FIRST_STATE = re.compile(r"(h|hx|h0|h_0|c|cx|c0|c_0|state|states|hidden|carry|memory)", re.IGNORECASE)
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
        declared: dict[str, Any] = {s.name: s for s in ctx.options.inputs}
        names = [p.name for p in params]
        trees = _declared_trees(declared, names)  # --input state.0:... --input state.1:...: a tuple state
        declared = {**{n: s for n, s in declared.items() if n.split(".")[0] not in trees}, **trees}
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
            state_args = state_arguments(params)
            state_args += [p.name for p in params if p.name in trees and p.name not in state_args]
        data_params = [p for p in params if p.name not in state_args]
        required = [p for p in data_params if p.default is p.empty or p.name in declared]
        if not required:
            raise ExportError(f"{type(ctx.original).__name__}.forward takes no data input")
        # the passes call the model as model(*data, *states); it gets each by name, as a copy
        bind_forward(ctx.model, [p.name for p in required] + state_args)
        if [p.name for p in params if p.name in state_args or p in required] != [p.name for p in required] + state_args:
            ctx.notes.append(f"{type(ctx.original).__name__}.forward takes ({', '.join(names)}): the file's data "
                             f"inputs are {', '.join(p.name for p in required)} and its states "
                             f"{', '.join(state_args)}, each passed to forward by name")
        hypotheses = self._data_hypotheses(ctx, required, declared, state_args)
        self._resolve(ctx, hypotheses, state_args, declared)
        # bidirectional layers that carry state are refused by lift-state (they need the future);
        # one that restarts in every chunk of the model's own (a dual-path intra-chunk layer) streams
        if not ctx.streams_time and ctx.mode != "step":
            ctx.frame_model = True  # the scan-over-time pass loops its step graph over frames
        desc = ", ".join(f"{s.name}:{s.dtype}{list(s.shape)}" for s in ctx.data)
        if ctx.explicit:
            desc += "; explicit states: " + ", ".join(n for e in ctx.explicit for n in e.leaf_names)
        return PassResult.done(desc)

    def _data_hypotheses(self, ctx: ExportContext, required: Sequence[Any], declared: dict[str, InputSpec],
                         state_args: list[str]) -> list[list[InputSpec]]:
        """The data inputs to try, most likely first: declared ones as declared; the first undeclared
        one inferred from the model's first layer (its layout picked by running the model), or from
        the cell's ``input_size`` attribute, or from the first Linear less the state's size (a cell
        that concatenates ``[x, h]`` first); further undeclared ones (a time step ``ts``, a mask)
        shaped like a per-frame scalar or like the first input (:func:`_extra_inputs`)."""
        undeclared = [p.name for p in required if p.name not in declared]
        if not undeclared:
            return [[declared[p.name] for p in required]]
        main_name, extras = undeclared[0], undeclared[1:]
        mains = [infer_data_input(ctx.model, main_name)]
        if mains[0].time_axis is None and not isinstance(first_layer(ctx.model), nn.Embedding):
            state_size = size_attribute(ctx.model, STATE_SIZES)
            for size in (size_attribute(ctx.model, INPUT_SIZES),
                         mains[0].shape[-1] - state_size if state_size else None):
                if isinstance(size, int) and size > 0 and all(m.shape != (BATCH, size) for m in mains):
                    mains.append(InputSpec(main_name, "float32", (BATCH, size)))
            # a cell looped over time in forward (no recurrent layer tells the layout): frames of any
            # length, batch-first or time-major, tried after one frame per call
            mains += [InputSpec(main_name, "float32", shape) for layout in ((BATCH, TIME), (TIME, BATCH))
                      for shape in [(*layout, m.shape[-1]) for m in list(mains)]]
        if len(required) == len(undeclared) == 1:
            mains[0] = self._pick_layout(ctx, mains[0], state_args, declared, [])
        elif mains[0].time_axis is not None:
            mains[0] = self._pick_layout(ctx, mains[0], state_args, declared, extras)
        out = []
        for main in mains:
            for combo in itertools.product(*[_extra_inputs(main, n) for n in extras]):
                specs = dict(zip(extras, combo), **{main_name: main}, **declared)
                out.append([specs[p.name] for p in required])
        return out

    def _resolve(self, ctx: ExportContext, hypotheses: list[list[InputSpec]], state_args: list[str],
                 declared: dict[str, InputSpec]) -> None:
        """Take the first data hypothesis on which the states resolve and, when there are several to
        choose from, the model runs at two batch sizes and returns its new states in a shape that
        fits. When none fits, the first is taken as it is (its failure is then the state resolution's
        or a later pass's own sentence), except that undeclared further inputs are asked for."""
        if len(hypotheses) > 1:
            failures: list[BaseException] = []
            notes = len(ctx.notes)
            for k, data in enumerate(hypotheses):
                ctx.data, ctx.explicit = list(data), []
                try:
                    self._explicit(ctx, state_args, declared)
                    self._check_runs(ctx)
                except Exception as e:  # noqa: BLE001 - any failure means "not these inputs"
                    failures.append(e)
                    del ctx.notes[notes:]  # what a rejected guess noted does not hold
                    continue
                guessed = [s for s in data if s.name not in declared]
                if k or len(guessed) > 1:
                    ctx.notes.append("inferred input" + ("s " if len(guessed) > 1 else " ") +
                                     ", ".join(f"{s.name} {s.dtype} {s.describe()}" for s in guessed) +
                                     f" (the model runs on {'them' if len(guessed) > 1 else 'it'}); declare with "
                                     "--input NAME:DTYPE:DIMS to change")
                return
            undeclared = [s for s in hypotheses[0] if s.name not in declared]
            if len(undeclared) > 1:
                first = failures[0]
                tried = "; ".join(" and ".join(f"{s.name} {s.describe()}" for s in h if s.name not in declared)
                                  for h in hypotheses[:4]) + ("..." if len(hypotheses) > 4 else "")
                raise ExportError(f"cannot infer the inputs of {type(ctx.original).__name__}.forward: it fails on "
                                  f"{tried} ({type(first).__name__}: {(str(first).splitlines() or [''])[0][:200]}); "
                                  "declare each with --input NAME:DTYPE:DIMS (B marks the batch axis, T the time "
                                  "axis), e.g. " + " ".join(f"--input {s.flag()}" for s in undeclared)) from None
        ctx.data, ctx.explicit = list(hypotheses[0]), []
        self._explicit(ctx, state_args, declared)

    @staticmethod
    def _check_runs(ctx: ExportContext) -> None:
        """Raise unless the model runs on ``ctx.data`` and the explicit states at two batch sizes and
        returns, for each state, a new one of the same shape (after its outputs, or alone)."""
        gen = torch.Generator().manual_seed(0)
        for batch in (TRACE_BATCH + 1, TRACE_BATCH):
            states = [e.make(batch) for e in ctx.explicit]

            def run(frames: int, batch: int = batch, states: list = states) -> Any:
                with torch.no_grad():
                    return ctx.model(*[s.random(batch, frames, gen) for s in ctx.data], *states)
            out = at_some_length(ctx, run, ctx.streams_time)
            if states and new_states(out, states) is None:
                raise ValueError(f"forward returned {_structure(out)} where it should return (outputs..., new "
                                 f"states...) or the new states alone ({_structure(tuple(states))})")

    def _explicit(self, ctx: ExportContext, state_args: list[str], declared: dict[str, InputSpec]) -> None:
        hook = next((getattr(ctx.model, h) for h in INIT_HOOKS if callable(getattr(ctx.model, h, None))), None)
        for i, arg in enumerate(state_args):
            if arg in declared:
                make = (lambda s: lambda b: _declared_state(s, b))(declared[arg])
            elif hook is not None:
                make = (lambda i: lambda b: _nth_state(hook(b), i, len(state_args), arg))(i)
            else:
                make = self._probe_state(ctx, i, len(state_args), arg)
            make = (lambda f: lambda b: fresh(f(b)))(make)  # each start state a tensor of its own (not a view)
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
                     declared: dict[str, InputSpec], extras: Sequence[str]) -> InputSpec:
        """The inferred input's layout: the guess if the model runs on it, else the first other
        common layout that runs (a Conv1d-first model may take [batch, time, channels] and
        transpose). The model runs once per layout, batch 2, a few frames, without grad; further
        undeclared inputs (``extras``) are fed in their first shape for that layout."""
        rnn = next((m for m in torchscript.layers(ctx.model) if isinstance(m, nn.RNNBase)), None)
        layouts = input_layouts(guess, time_major=rnn is not None and not rnn.batch_first)
        if len(layouts) == 1:
            return guess
        params = {p.name: p for p in forward_parameters(ctx.model)}
        hook = next((getattr(ctx.model, h) for h in INIT_HOOKS if callable(getattr(ctx.model, h, None))), None)
        states: list[Any] = []
        for i, arg in enumerate(state_args):
            if arg in declared:
                states.append(_declared_state(declared[arg], TRACE_BATCH))
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
                data = [spec.random(TRACE_BATCH, frames, gen)]
                data += [_extra_inputs(spec, n)[0].random(TRACE_BATCH, frames, gen) for n in extras]
                with torch.no_grad():
                    ctx.model(*data, *states)
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
        default) and take the state's structure from the new state it returns: after its outputs
        (``(y, h_new)``), or alone, where forward returns only its new state (``nn.GRUCell``'s
        ``h'``, ``nn.LSTMCell``'s ``(h', c')``). With one state argument and a tuple returned, both
        readings are tried on the model (at batch 3) and the first that fits is kept. Without a
        default, the state of the model's first recurrent cell, or of the sizes the cell keeps as
        attributes, is tried (see :meth:`_cell_state`)."""
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

        def returned(batch: int) -> Any:
            def run(frames: int):
                data = [s.random(batch, frames, gen) for s in specs]
                with torch.no_grad():
                    return ctx.model(*data)
            return at_some_length(ctx, run, ctx.streams_time)
        try:
            out = returned(TRACE_BATCH + 1)
        except ExportError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's forward failed: say on what, and what to declare
            shapes = ", ".join(f"{s.name} {s.describe()}" for s in specs)
            raise ExportError(f"{type(ctx.original).__name__}.forward fails when called on {shapes} with state "
                              f"argument {arg!r} left out ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
                              f"); declare the inputs with --input NAME:DTYPE:DIMS (B marks the batch axis, T the "
                              f"time axis), the state too: --input {arg}:float32:DIMS") from None
        readings = []  # (alone, how to pick this state from what forward returns)
        if isinstance(out, tuple) and len(out) > count:
            readings.append((False, lambda o: o[len(o) - count + index]))  # (outputs..., new states...)
        if count == 1 and _tensors(out):
            readings.append((True, lambda o: o))  # the new state alone (a tensor, or (h, c) as nn.LSTMCell's)
        elif isinstance(out, tuple) and len(out) == count:
            readings.append((True, lambda o: o[index]))  # the new states alone, one per state argument
        if not readings:
            raise ExportError(f"{type(ctx.original).__name__}.forward must return (outputs..., new states...) "
                              f"or its new states alone, one per state argument; it returned {_structure(out)}")
        alone, pick = readings[0]
        if len(readings) > 1:
            zeros = [pytree.tree_map(torch.zeros_like, r[1](out)) for r in readings]
            alone, pick = next((r for r, z in zip(readings, zeros) if self._fits(ctx, arg, z)), readings[0])
        if alone:
            n = len(pytree.tree_leaves(out))
            what = "a tensor" if isinstance(out, torch.Tensor) else f"a tuple of {n} tensors"
            ctx.notes.append(f"{type(ctx.original).__name__}.forward returns its new state alone ({what}, as "
                             f"nn.GRUCell and nn.LSTMCell do): it is both the data output and the state {arg!r}")

        shapes: dict[int, Any] = {}  # batch -> zeros of the returned state's structure

        def make(batch: int) -> Any:
            # the model runs only once per batch size: a run without the state would count as a call of
            # its recurrent layers without a state, and a later run (lift.py) would lift those layers too
            if batch not in shapes:
                counters = [(w, w.calls, w.calls_without_state, list(w.batches)) for w in ctx.wrappers]
                shapes[batch] = pytree.tree_map(torch.zeros_like, pick(returned(batch)))
                for w, calls, without, batches in counters:
                    w.calls, w.calls_without_state, w.batches = calls, without, batches
            return pytree.tree_map(torch.zeros_like, shapes[batch])
        return make

    @staticmethod
    def _fits(ctx: ExportContext, arg: str, value: Any) -> bool:
        """Whether the model runs with ``value`` as state argument ``arg`` (the others left out) and
        returns a new state like it (after its outputs, or alone)."""
        gen = torch.Generator().manual_seed(0)

        def run(frames: int) -> Any:
            data = [s.random(TRACE_BATCH + 1, frames, gen) for s in ctx.data]
            with torch.no_grad():
                return ctx.model(*data, **{arg: value})
        try:
            out = at_some_length(ctx, run, ctx.streams_time)
        except Exception:  # noqa: BLE001 - the reading does not fit this model
            return False
        return new_states(out, [value]) is not None

    def _cell_state(self, ctx: ExportContext, index: int, count: int, arg: str
                    ) -> tuple[Callable[[int], Any] | None, str | None]:
        """A state argument without a default or hook, in a model with an ``nn.GRUCell`` /
        ``nn.RNNCell`` (state ``[batch, hidden]``) or ``nn.LSTMCell`` (``(h, c)``, or ``h`` and
        ``c`` as two arguments), or without one but with its state size as an attribute
        (``hidden_size``, ``state_size``, ``units``: :data:`~edgernn.converters.io.STATE_SIZES`; then
        ``[batch, size]``, else ``(h, c)`` of that shape): the first of these the model runs on
        (zeros, batch 2) and returns a new state of the same shape for, after its outputs or alone.
        Returns ``(make or None, --input text or None)``."""
        cell = next((m for m in torchscript.layers(ctx.model) if isinstance(m, nn.RNNCellBase)), None)
        if cell is None:
            layer = next((m for m in torchscript.layers(ctx.model) if isinstance(m, nn.RNNBase)), None)
            if layer is not None:
                return self._layer_state(ctx, layer, index, count, arg)
            hidden = size_attribute(ctx.model, STATE_SIZES) if layer is None else None
            if hidden is None:
                return (self._linear_state(ctx, arg) if layer is None and count == 1 else None), None
            attr = next(n for n in STATE_SIZES if size_attribute(ctx.model, (n,)) == hidden)
            what = f"{type(ctx.original).__name__}.{attr}"
            shapes = [False, True] if count == 1 else [False]  # a tensor, else (h, c)
        else:
            hidden, what = cell.hidden_size, describe_layer(cell) + "'s state"
            lstm = isinstance(cell, nn.LSTMCell)
            if not (count == 1 or (lstm and count == 2)):
                return None, None
            shapes = [lstm and count == 1]
        flag = f"{arg}:float32:B,{hidden}"
        for pair in shapes:
            def make(batch: int, pair: bool = pair) -> Any:
                return (torch.zeros(batch, hidden), torch.zeros(batch, hidden)) if pair else torch.zeros(batch, hidden)

            if not self._runs_with(ctx, make, count):
                continue
            ctx.notes.append(f"state argument {arg!r} has the shape of {what} "
                             f"({'(h, c), each ' if pair else ''}[batch, {hidden}])")
            return make, None if pair else flag
        return None, None if any(shapes) and cell is not None else flag


    def _layer_state(self, ctx: ExportContext, layer: nn.RNNBase, index: int, count: int, arg: str
                     ) -> tuple[Callable[[int], Any] | None, str | None]:
        """A state argument handed to the model's first ``nn.GRU`` / ``nn.RNN`` (``h0``) or
        ``nn.LSTM`` (``(h0, c0)`` as one argument, or ``h0`` and ``c0`` as two): the layer's
        ``[layers * directions, batch, hidden]`` (``proj_size`` for an LSTM's h), if the model runs on it."""
        rows = layer.num_layers * (2 if layer.bidirectional else 1)
        h_size = layer.proj_size if isinstance(layer, nn.LSTM) and layer.proj_size else layer.hidden_size
        flag = f"{arg}:float32:{rows},B,{h_size}"
        parts = [(rows, h_size), (rows, layer.hidden_size)] if isinstance(layer, nn.LSTM) else [(rows, h_size)]

        def part(k: int) -> Callable[[int], torch.Tensor]:
            return lambda b: torch.zeros(parts[k][0], b, parts[k][1])
        if count == 1:
            makes = [(lambda b: tuple(part(k)(b) for k in range(2))) if len(parts) == 2 else part(0)]
        elif count == 2 and len(parts) == 2:
            makes = [part(0), part(1)]
        else:
            return None, flag
        if not self._runs_with(ctx, makes):
            return None, flag
        shapes = [f"[{t.shape[0]}, batch, {t.shape[2]}]" for t in pytree.tree_leaves(makes[index](1))]
        ctx.notes.append(f"state argument {arg!r} has the shape of {describe_layer(layer)}'s state "
                         f"({'(h, c): ' + ', '.join(shapes) if len(shapes) == 2 else shapes[0]})")
        return makes[index], None

    @staticmethod
    def _runs_with(ctx: ExportContext, make: Callable[[int], Any] | Sequence[Callable[[int], Any]],
                   count: int = 1) -> bool:
        """Whether the model runs on ``make``'s start value for each of its ``count`` state arguments
        (or on one start value per argument, ``make`` a list; zeros, batch 2) and returns a new state
        like it, after its outputs or alone."""
        gen = torch.Generator().manual_seed(0)
        makes = list(make) if isinstance(make, (list, tuple)) else [make] * count

        def run(frames: int) -> Any:
            data = [s.random(TRACE_BATCH, frames, gen) for s in ctx.data]
            with torch.no_grad():
                return ctx.model(*data, *(m(TRACE_BATCH) for m in makes))
        try:
            out = at_some_length(ctx, run, ctx.streams_time)
        except Exception:  # noqa: BLE001 - the guess does not fit this model
            return False
        return new_states(out, [m(TRACE_BATCH) for m in makes]) is not None

    def _linear_state(self, ctx: ExportContext, arg: str) -> Callable[[int], Any] | None:
        """A cell with no recurrent layer and no size attribute (``h = tanh(W x) + 0.9 h``): a
        ``[batch, N]`` state for N the output size of one of its Linear layers, the first the model
        runs on and returns a state like it for."""
        sizes = list(dict.fromkeys(m.out_features for m in ctx.model.modules() if isinstance(m, nn.Linear)))
        for size in sizes:
            def make(batch: int, size: int = size) -> torch.Tensor:
                return torch.zeros(batch, size)
            if self._runs_with(ctx, make, 1):
                ctx.notes.append(f"state argument {arg!r} is [batch, {size}], the output size of a Linear layer the "
                                 f"model runs with; declare --input {arg}:float32:DIMS to change")
                return make
        return None


def state_arguments(params: Sequence[Any]) -> list[str]:
    """The forward arguments that are states by their names (:data:`STATE_ARG`), wherever they sit:
    after the first argument (the data input), or first where the name is a state's own
    (:data:`FIRST_STATE`: ``forward(h, x)``) and another argument is not a state's."""
    found = [p.name for p in params[1:] if STATE_ARG.search(p.name) and not _flag(p)]
    if params and FIRST_STATE.fullmatch(params[0].name) and any(
            p.name not in found and p.default is p.empty for p in params[1:]):
        found.insert(0, params[0].name)
    return found


def _flag(param: Any) -> bool:
    """A switch, not a state, whatever its name (``use_cache=False``, ``return_next_hidden=True``,
    ``output_hidden_states: bool``): its default is a bool, number or string, or it is annotated so."""
    default = param.default
    if default is not param.empty and isinstance(default, (bool, int, float, str)):
        return True
    return param.annotation in (bool, int, float, str, "bool", "int", "float", "str")


def new_states(out: Any, states: Sequence[Any]) -> list[Any] | None:
    """The new states in what forward returned, for ``states`` (the state arguments' values, in
    order): its last values (``(outputs..., new states...)``), or everything it returned when that
    is the new states alone (``nn.GRUCell``'s ``h'``, ``nn.LSTMCell``'s ``(h', c')``, one value per
    state argument); each of their structure and shapes. None when neither reading fits."""
    n = len(states)
    if n and isinstance(out, tuple) and len(out) > n and all(_like(v, s) for v, s in zip(out[-n:], states)):
        return list(out[-n:])
    return state_only(out, states)


def returned_state_alone(out: Any, states: Sequence[Any]) -> bool:
    """Whether forward returned its new states alone (:func:`state_only`) and not ``(outputs...,
    new states...)``: then the new state is the data output too."""
    n = len(states)
    after_outputs = isinstance(out, tuple) and len(out) > n and all(_like(v, s) for v, s in zip(out[-n:], states))
    return bool(n) and not after_outputs and state_only(out, states) is not None


def state_only(out: Any, states: Sequence[Any]) -> list[Any] | None:
    """``out`` as the new states alone (one per state argument, each like it), or None."""
    if len(states) == 1 and _like(out, states[0]):
        return [out]
    if len(states) > 1 and isinstance(out, (tuple, list)) and len(out) == len(states) and all(
            _like(v, s) for v, s in zip(out, states)):
        return list(out)
    return None


def _like(value: Any, state: Any) -> bool:
    """Same pytree structure as ``state``, tensors of the same shapes."""
    a, spec_a = pytree.tree_flatten(value)
    b, spec_b = pytree.tree_flatten(state)
    return spec_a == spec_b and all(isinstance(x, torch.Tensor) and x.shape == y.shape for x, y in zip(a, b))


def _tensors(value: Any) -> bool:
    leaves = pytree.tree_leaves(value)
    return bool(leaves) and all(isinstance(t, torch.Tensor) for t in leaves)


def _structure(value: Any) -> str:
    """What forward returned, in words: ``Tensor[2, 6]``, ``(Tensor[2, 6], Tensor[2, 6])``."""
    if isinstance(value, torch.Tensor):
        return f"Tensor{list(value.shape)}"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_structure(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    return type(value).__name__


def _extra_inputs(main: InputSpec, name: str) -> list[InputSpec]:
    """Shapes to try for a further data input (a time step ``ts``, a mask), given the first input:
    one value per frame and stream (``[batch, 1]``, ``[batch]``; with a time axis ``[batch, time]``
    and ``[batch, time, 1]`` in the first input's order of the two), then the first input's shape."""
    if main.time_axis is None:
        shapes: list[tuple] = [(BATCH, 1), (BATCH,)]
    else:
        bt = (TIME, BATCH) if main.time_axis < main.batch_axis else (BATCH, TIME)
        shapes = [bt, (*bt, 1)]
    shapes.append(main.shape)
    return [InputSpec(name, "float32", shape) for shape in dict.fromkeys(shapes)]


def _declared_trees(declared: dict[str, InputSpec], names: Sequence[str]) -> dict[str, Any]:
    """Declarations of a tuple or dict state's leaves, named as the contract names them
    (``--input state.0:... --input state.1:...``, ``--input memory.h:...``): forward argument ->
    the nested tuple or dict of their specs. Positions must run 0, 1, ... without a gap."""
    leaves: dict[str, dict[tuple[str, ...], InputSpec]] = {}
    for name, spec in declared.items():
        root, *path = name.split(".")
        if path and name not in names and root in names:
            leaves.setdefault(root, {})[tuple(path)] = spec

    def build(root: str, items: dict[tuple[str, ...], InputSpec], prefix: tuple[str, ...]) -> Any:
        if () in items:
            if len(items) > 1:
                raise ExportError(f"--input declares {'.'.join((root, *prefix))!r} both as a tensor and as a tuple")
            return items[()]
        heads = list(dict.fromkeys(k[0] for k in items))
        groups = {h: build(root, {k[1:]: v for k, v in items.items() if k[0] == h}, (*prefix, h)) for h in heads}
        if all(h.isdigit() for h in heads):
            if sorted(int(h) for h in heads) != list(range(len(heads))):
                raise ExportError(f"--input declares the parts {', '.join(sorted(heads))} of state "
                                  f"{'.'.join((root, *prefix))!r}; tuple parts run 0, 1, ... without a gap")
            return tuple(groups[str(i)] for i in range(len(heads)))
        return groups
    return {root: build(root, items, ()) for root, items in leaves.items()}


def _declared_state(spec: Any, batch: int) -> Any:
    """Zeros of a declared state: one tensor, or the tuple / dict of :func:`_declared_trees`."""
    if isinstance(spec, InputSpec):
        return torch.zeros(spec.concrete(batch, TRACE_TIME), dtype=spec.torch_dtype)
    return pytree.tree_map(lambda s: _declared_state(s, batch), spec, is_leaf=lambda s: isinstance(s, InputSpec))


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


__all__ = ["FIRST_STATE", "INIT_HOOKS", "STATE_ARG", "ExplicitState", "ResolveInputs", "new_states", "returned_state_alone",
           "state_arguments", "state_only"]
