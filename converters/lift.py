"""The lift-state pass: recurrent layers called without a state get their state as graph I/O.

Every ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` is wrapped (``capture.py``); a probe run counts the
calls each one gets without a state. Those states are *lifted*: ``state_in.<layer>.<part>`` feeds
the initial state and ``state_out.<layer>.<part>`` returns the final one. Probes at two batch sizes
and lengths then tell the outputs' batch and time axes. Layers on a batch the model reshaped (a
dual-path block) are carried as ``[layers, batch, K, hidden]`` or, when their batch grows with the
frames of a call, restart every call. A forward that returns its new explicit states alone
(``nn.GRUCell``'s ``h'``) gets a lifter that returns them twice: as the data outputs and as the
new states (``resolve.returned_state_alone``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn

from edgernn.converters import capture
from edgernn.converters.io import bind_forward
from edgernn.converters.pass_api import PassResult
from edgernn.converters.probe import FRAME_MULTIPLES, TRACE_BATCH, TRACE_TIME, changed_axis, trace_time
from edgernn.converters.resolve import returned_state_alone
from edgernn.errors import ExportError

if TYPE_CHECKING:  # pragma: no cover
    from edgernn.converters.passes import ExportContext


class LiftState:
    """Wrap recurrent layers, find those called without a state, and make their states I/O."""

    name = "lift-state"

    def __call__(self, ctx: ExportContext) -> PassResult:
        model = ctx.model
        if isinstance(model, nn.RNNBase):
            raise ExportError("internal: bare layers are wrapped by edgernn.load before export")
        # a fresh copy of the model (capture starts again for one frame) is called by name anew
        bind_forward(model, [s.name for s in ctx.data] + [e.arg for e in ctx.explicit])
        ctx.wrappers = capture.wrap_recurrent_layers(model)
        time_len, step_multiple, out = self._first_probe(ctx)
        returns_state = returned_state_alone(out, [e.make(TRACE_BATCH) for e in ctx.explicit])
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
                                         ctx.lifted, returns_state=returns_state)
        if returns_state and not any("returns its new state alone" in n for n in ctx.notes):
            ctx.notes.append(f"{type(ctx.original).__name__}.forward returns its new state alone (as nn.GRUCell and "
                             "nn.LSTMCell do): it is both the data output and the state")
        self._describe_outputs(ctx)
        self._streams_apart(ctx)
        dup = {n for n in ctx.state_names if ctx.state_names.count(n) > 1}
        if dup:
            raise ExportError(f"two states are both named {sorted(dup)[0]!r}")
        # the lifter and output names are set up even when no layer needs its state lifted
        return PassResult.done(", ".join(s.name for s in ctx.lifted) or "no layer called without a state")

    @staticmethod
    def _run(ctx: ExportContext, batch: int, time_len: int, seed: int = 0) -> Any:
        """The model once on random data of ``batch`` and ``time_len`` frames (counters reset
        first); returns what forward returned."""
        gen = torch.Generator().manual_seed(seed)
        data = ctx.example_data(batch, time_len, gen)
        explicit = [e.make(batch) for e in ctx.explicit]
        capture.reset_counters(ctx.wrappers)
        with torch.no_grad():
            return ctx.model(*data, *explicit)

    def _first_probe(self, ctx: ExportContext) -> tuple[int, int, Any]:
        """Run the model at the trace length; if it fails there, at lengths that are multiples of
        2, 4, 8, 16 (the first that runs sets ``ctx.frame_multiple``). Returns the length that ran,
        for a step-mode model that needs several frames per call that multiple (else 0), and what
        forward returned at batch ``TRACE_BATCH``."""
        name = type(ctx.original).__name__
        step = ctx.capture_mode == "step"
        time_len = 1 if step else trace_time(ctx)
        try:
            return time_len, 0, self._run(ctx, TRACE_BATCH, time_len)
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
                        out = self._run(ctx, TRACE_BATCH, k * multiple)
                except ExportError:
                    raise
                except Exception:
                    continue
                if step and ctx.mode != "step":
                    break  # captured one frame at a time (a loop over time): it must run on one frame
                if step:
                    return TRACE_TIME * multiple, multiple, out
                ctx.notes.append(f"{name} fails on {time_len} frames and runs on multiples of {multiple}: every call "
                                 f"must feed a multiple of {multiple} frames")
                ctx.frame_multiple = multiple
                return TRACE_TIME * multiple, 0, out
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
            batch_axis = changed_axis(a.shape, b.shape, k1[0], k2[0])
            time_axis = None if one_frame else changed_axis(a.shape, b.shape, k1[1], k2[1])
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


__all__ = ["LiftState"]
