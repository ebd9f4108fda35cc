"""Before capture: a model that cannot stream in chunk or step mode is refused naming the module."""

from __future__ import annotations

import torch

from edgernn.converters import torchscript
from edgernn.converters.pass_api import PassResult
from edgernn.converters.probe import PROBE_BATCH, close, record
from edgernn.errors import ExportError


class CheckStreamable:
    """Before capture: the model, states carried, gives in two calls what it gives in one (in
    PyTorch). A model that looks across time outside what streams (global pooling, attention, a
    reversal, a cumulative sum over the call) is refused with a sentence naming the first module
    whose output differs, instead of a parity failure after the export."""

    name = "check-streamable"

    def __call__(self, ctx) -> PassResult:
        if ctx.mode == "sequence" or not ctx.streams_time or ctx.frame_model:
            return PassResult.unchanged("not needed" if ctx.mode != "sequence" else "not needed (whole sequences)")
        multiple = ctx.frame_multiple
        sizes = [1, 1, 1] if ctx.capture_mode == "step" else [5 * multiple, 11 * multiple]
        gen = torch.Generator().manual_seed(9)
        total = sum(sizes)
        data = ctx.example_data(PROBE_BATCH, total, gen)
        n_out = len(ctx.output_names)
        scripted = torchscript.is_scripted(ctx.model)  # compiled: no hooks, the outputs alone are compared
        leaves = {} if scripted else {p: m for p, m in ctx.model.named_modules() if p and not list(m.children())}
        init = ctx.initial_states(PROBE_BATCH)
        try:
            whole, order, res = record(ctx.model, leaves, lambda: ctx.run_lifter(data, init), outputs=True)
        except ExportError:
            raise
        except Exception:
            return PassResult.unchanged("skipped: the model takes one frame per call")
        parts, start, states, outs = [], 0, init, []
        for size in sizes:
            frame = [t.narrow(s.time_axis, start, size) if s.time_axis is not None else t
                     for s, t in zip(ctx.data, data)]
            rec, _, out = record(ctx.model, leaves, lambda: ctx.run_lifter(frame, states), outputs=True)
            parts.append(rec)
            outs.append(out[:n_out])
            states = out[n_out:]
            start += size
        bad = [k for k, (_, t_axis) in enumerate(ctx.output_axes) if t_axis is not None and not close(
            res[k], torch.cat([o[k] for o in outs], t_axis))]
        if not bad:
            return PassResult.unchanged(f"{len(sizes)} calls of {'+'.join(map(str, sizes))} frames give what one call "
                                        "gives")
        for p in order:
            a = (whole.get(p) or [None])[0]
            pieces = [(r.get(p) or [None])[0] for r in parts]
            if a is None or any(b is None for b in pieces):
                continue
            axis = next((k for k in range(a.dim()) if a.shape[k] == sum(b.shape[k] for b in pieces)
                         and all(b.shape[k] < a.shape[k] for b in pieces)), None)
            if axis is None:
                continue
            if not close(a, torch.cat(pieces, axis)):
                m = leaves[p]
                state = getattr(m, "_edgernn_state", None)  # a layer given a context cache (context.py)
                if state is not None and state.layer.own_forward:
                    raise ExportError(f"{p}: {state.layer.kind} overrides forward and pads time in a way a context "
                                      "cache cannot take over (only padding on the left streams: a causal "
                                      f"convolution); export with --mode sequence")
                raise ExportError(f"{p}: {type(m).__name__} gives other values when the sequence streams in calls "
                                  f"than on the whole sequence: something before it looks across all frames "
                                  f"(global pooling, attention, a reversal) and cannot stream in {ctx.mode} mode; "
                                  "export with --mode sequence")
        if scripted:
            raise ExportError(f"output {ctx.output_names[bad[0]]!r} differs when the sequence streams in calls: the "
                              "TorchScript forward carries something between frames outside its state arguments (a "
                              "layer called without its state, a convolution over time without its context, a mean "
                              f"over time) and cannot stream in {ctx.mode} mode; take and return that state "
                              "explicitly, or export with --mode sequence")
        raise ExportError(f"output {ctx.output_names[bad[0]]!r} differs when the sequence streams in calls: forward "
                          "looks across all frames outside a module (a mean or sum over time, a reversal) and "
                          f"cannot stream in {ctx.mode} mode; export with --mode sequence")

