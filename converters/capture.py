"""Capture a PyTorch model into ONNX with every recurrent state as an explicit graph input/output.

How it works (checked on torch 2.13 / onnxscript 0.7):

1. Each ``nn.RNN``/``nn.LSTM``/``nn.GRU`` in the model becomes a :class:`StatefulRecurrent` (its class
   is swapped for a subclass, so user code still sees the layer).
   A probe run records which layers are called without an initial state: those get *lifted*, i.e.
   their initial state comes from a graph input and their final state goes to a graph output.
2. :class:`StateLifter` is the module that is exported: ``forward(*data, *states)`` returns
   ``(*outputs, *new_states)``. States the model already takes explicitly (``forward(x, state)``)
   pass straight through it.
3. During ``torch.onnx.export(dynamo=True)`` the wrapped layers call placeholder custom operators
   (``edgernn::recurrent``, ``edgernn::recurrent_lstm``) that the custom translation table turns
   into one ``edgernn.Recurrent`` node each. The exporter handles everything else (frontends,
   heads); ``recurrent.py`` lowers the placeholders to real ONNX afterwards.
4. A TorchScript model (``torch.jit.script``) is compiled: nothing in it is wrapped or lifted, its
   forward takes and returns its states, and the lifter around it is traced and exported with
   ``torch.onnx.export(dynamo=False)`` instead (``torchscript.py``).

:class:`Capture` is the pipeline's capture pass: it runs :func:`export_graph` on the lifter.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import onnx
import torch
from torch import nn
from torch.utils import _pytree as pytree

from edgernn.contract import state_input_name, state_output_name
from edgernn.converters import timeloop, torchscript
from edgernn.converters.io import BoundForward, fresh
from edgernn.converters.pass_api import PassResult
from edgernn.converters.probe import TRACE_BATCH, TRACE_TIME, time_dimension, trace_time
from edgernn.converters.recurrent import RecurrentLayerSpec
from edgernn.errors import ExportError

if TYPE_CHECKING:  # pragma: no cover
    from edgernn.converters.passes import ExportContext

DOMAIN = "edgernn"
_ACTIVE: dict[int, RecurrentLayerSpec] = {}  # layer id -> spec, only while capturing


def _register_onnx_schemas() -> None:
    from onnx.defs import OpSchema

    for name, n_state in (("Recurrent", 1), ("RecurrentLSTM", 2)):
        if onnx.defs.has(name, DOMAIN):
            continue
        states = ["initial_h", "initial_c"][:n_state]
        outs = ["Y_h", "Y_c"][:n_state]
        onnx.defs.register_schema(OpSchema(
            name, DOMAIN, 1,
            doc="edgernn placeholder for one PyTorch recurrent layer; lowered before the file is written",
            inputs=[OpSchema.FormalParameter(n, "T") for n in ["X", *states]],
            outputs=[OpSchema.FormalParameter(n, "T") for n in ["Y", *outs]],
            type_constraints=[("T", ["tensor(float)"], "float tensors")],
            attributes=[OpSchema.Attribute("layer", OpSchema.AttrType.INT, "index into the layer table")],
        ))


_register_onnx_schemas()


def _fake_outputs(x: torch.Tensor, states: Sequence[torch.Tensor], layer: int):
    spec = _ACTIVE[layer]
    y = x.new_empty(x.shape[0], x.shape[1], spec.directions * spec.output_size)
    return (y, *(torch.empty_like(s) for s in states))


@torch.library.custom_op("edgernn::recurrent", mutates_args=())
def recurrent_op(x: torch.Tensor, h0: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Placeholder for an RNN/GRU layer (time-major ``x``); only its fake version runs in capture."""
    raise RuntimeError("edgernn::recurrent is a capture placeholder and has no eager kernel")


@recurrent_op.register_fake
def _(x, h0, layer):
    return _fake_outputs(x, [h0], layer)


@torch.library.custom_op("edgernn::recurrent_lstm", mutates_args=())
def recurrent_lstm_op(x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, layer: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Placeholder for an LSTM layer (time-major ``x``)."""
    raise RuntimeError("edgernn::recurrent_lstm is a capture placeholder and has no eager kernel")


@recurrent_lstm_op.register_fake
def _(x, h0, c0, layer):
    return _fake_outputs(x, [h0, c0], layer)


def _translation_table() -> dict:
    from onnxscript.values import Opset

    E = Opset(DOMAIN, 1)

    def recurrent(x, h0, layer: int):
        return E.Recurrent(x, h0, layer=layer)

    def recurrent_lstm(x, h0, c0, layer: int):
        return E.RecurrentLSTM(x, h0, c0, layer=layer)

    from edgernn.converters.gating import translations

    return {torch.ops.edgernn.recurrent.default: recurrent,
            torch.ops.edgernn.recurrent_lstm.default: recurrent_lstm, **translations()}


class StatefulRecurrent:
    """Mixed into a recurrent layer's own class, so that its state can be lifted and its body
    replaced in capture while user code keeps seeing the layer it wrote.

    :func:`wrap_recurrent_layers` does not put the layer inside another module: it swaps the
    layer's class for ``Stateful<Class>`` (this mixin, then the layer's class), so
    ``flatten_parameters()``, ``hidden_size``, ``weight_ih_l0``, ``named_parameters()`` and
    ``state_dict()`` are the layer's own. The eager path calls the original class's forward.
    """

    # set by :func:`make_stateful`; read by the passes
    path: str
    layer_id: int
    spec: RecurrentLayerSpec
    lifted: tuple[torch.Tensor, ...] | None  # set by StateLifter before each call
    final: tuple[torch.Tensor, ...] | None
    calls_without_state: int
    calls: int
    capturing: bool
    batches: list[int]  # the batch size of each call without a state (since reset_counters)

    @property
    def layer(self) -> nn.RNNBase:
        """The recurrent layer itself (the same object: the wrapper is the layer)."""
        return self  # type: ignore[return-value]

    @property
    def original_class(self) -> type:
        return type(self).__mro__[2]

    def forward(self, x, hx=None):
        if isinstance(x, nn.utils.rnn.PackedSequence):
            raise ExportError(f"layer {self.path!r} received a PackedSequence; streaming export needs padded tensors")
        self.calls += 1
        use_lifted = hx is None and self.lifted is not None
        if x.dim() == 2:
            raise ExportError(f"layer {self.path!r} received an unbatched 2-D input; feed [batch, time, features] "
                              "or [time, batch, features]")
        if hx is None:
            self.calls_without_state += 1
            if not self.capturing:
                self.batches.append(int(x.shape[0 if self.spec.batch_first else 1]))
        factor = self.__dict__.get("batch_factor", 1)
        if use_lifted:
            lifted = self.lifted
            if factor > 1:  # the model runs this layer on batch x factor rows: [L, B, K, H] -> [L, B*K, H]
                lifted = tuple(t.reshape(t.shape[0], -1, t.shape[-1]) for t in lifted)
            hx = lifted if "c" in self.spec.state_parts else lifted[0]  # (h, c), or h alone
        gate = self.__dict__.get("gate")
        if gate is not None:  # frames a lookahead before the layer emits early leave its state (context.py)
            from edgernn.converters.gating import run_gated

            out, hn = run_gated(self, x, hx, gate)
        elif self.capturing:
            out, hn = self._placeholder(x, hx)
        else:
            out, hn = super().forward(x, hx)  # type: ignore[misc]  # the layer class's own forward
        if use_lifted:
            self.final = tuple(hn) if isinstance(hn, tuple) else (hn,)
            if factor > 1:
                self.final = tuple(t.reshape(t.shape[0], -1, factor, t.shape[-1]) for t in self.final)
        return out, hn

    def _placeholder(self, x, hx):
        spec = self.spec
        if spec.batch_first:
            x = x.transpose(0, 1)
        if hx is None:
            batch = x.shape[1]
            hx = tuple(x.new_zeros(spec.num_layers * spec.directions, batch, spec.state_size(p))
                       for p in spec.state_parts)
            if "c" not in spec.state_parts:
                hx = hx[0]
        if "c" in spec.state_parts:  # a cell state too: the placeholder op of (h, c)
            y, h, c = torch.ops.edgernn.recurrent_lstm(x, hx[0], hx[1], self.layer_id)
            hn = (h, c)
        else:
            y, hn = torch.ops.edgernn.recurrent(x, hx, self.layer_id)
        if spec.batch_first:
            y = y.transpose(0, 1)
        return y, hn


_STATEFUL_CLASSES: dict[type, type] = {}


def stateful_class(cls: type) -> type:
    """``Stateful<cls>``: :class:`StatefulRecurrent` first, then ``cls`` (made once per class)."""
    made = _STATEFUL_CLASSES.get(cls)
    if made is None:
        made = type(f"Stateful{cls.__name__}", (StatefulRecurrent, cls), {"__module__": __name__})
        _STATEFUL_CLASSES[cls] = made
    return made


def make_stateful(layer: nn.RNNBase, path: str, layer_id: int) -> StatefulRecurrent:
    """Turn ``layer`` (in place: the same object, parameters and all) into a :class:`StatefulRecurrent`."""
    spec = RecurrentLayerSpec.from_module(path, layer)
    layer.__class__ = stateful_class(type(layer))
    for name, value in (("path", path), ("layer_id", layer_id), ("spec", spec), ("lifted", None), ("final", None),
                        ("calls_without_state", 0), ("calls", 0), ("capturing", False), ("batches", [])):
        object.__setattr__(layer, name, value)
    return layer  # type: ignore[return-value]


def wrap_recurrent_layers(model: nn.Module) -> list[StatefulRecurrent]:
    """Make every ``nn.RNN``/``nn.LSTM``/``nn.GRU`` in ``model`` (in place) a :class:`StatefulRecurrent`.
    A layer reached by two paths (shared) is wrapped once, under its first path."""
    wrappers: list[StatefulRecurrent] = []
    if isinstance(model, nn.RNNBase):
        raise TypeError("wrap the bare layer in a parent module first")
    for path, module in list(model.named_modules()):
        if isinstance(module, nn.RNNBase) and not isinstance(module, StatefulRecurrent):
            wrappers.append(make_stateful(module, path, len(wrappers)))
    return wrappers


@dataclass
class LiftedState:
    """One lifted state: ``name`` (module path + part), the wrapper and which part it is."""

    name: str
    wrapper: Any  # a StatefulRecurrent, or another holder of lifted state (``context.TemporalState``)
    part: int

    @property
    def batch_axis(self) -> int:
        """Where the batch is: axis 1 for recurrent layers (PyTorch's ``[layers, batch, H]``)."""
        axis = getattr(self.wrapper, "state_batch_axis", None)
        return 1 if axis is None else axis(self.part)

    def example(self, batch: int) -> torch.Tensor:
        if hasattr(self.wrapper, "state_example"):  # not a recurrent layer: the holder knows its shapes
            return self.wrapper.state_example(self.part, batch)
        s = self.wrapper.spec
        p = s.state_parts[self.part]
        factor = self.wrapper.__dict__.get("batch_factor", 1)  # a layer on a reshaped batch: [L, B, K, H]
        return torch.zeros(s.num_layers * s.directions, batch, *([factor] if factor > 1 else []), s.state_size(p))


class StateLifter(nn.Module):
    """``forward(*data, *explicit_states, *lifted_states) -> (*outputs, *new_explicit, *new_lifted)``.

    ``explicit`` describes the state arguments the model already takes: their forward-argument
    names and the pytree structure of each (a tensor, or a tuple of tensors). With
    ``returns_state``, the model's forward returns its new states alone (``nn.GRUCell``'s ``h'``,
    ``nn.LSTMCell``'s ``(h', c')``): they are its outputs and its new explicit states both.

    Run eagerly, the lifter copies what it is given before the model sees it (``io.fresh``), so
    that a forward that updates its state arguments in place cannot change the caller's tensors,
    and returns outputs that share no memory with the new states (``copies``; off only where a
    benchmark copies outside its clock, :func:`uncopied`). Traced or exported, it copies nothing.
    """

    def __init__(self, model: nn.Module, n_data: int, explicit: Sequence[tuple[str, Any]],
                 lifted: Sequence[LiftedState], returns_state: bool = False) -> None:
        super().__init__()
        self.model = model
        self.n_data = n_data
        self.explicit = list(explicit)  # (arg name, treespec)
        self.lifted = list(lifted)
        self.returns_state = returns_state
        self.copies = True
        self.output_spec: Any = None

    @property
    def n_explicit_leaves(self) -> int:
        return sum(spec.num_leaves for _, spec in self.explicit)

    def forward(self, *flat: torch.Tensor):
        if self.copies:
            flat = fresh(flat)
        data = list(flat[: self.n_data])
        rest = list(flat[self.n_data:])
        state_args = []
        for _, spec in self.explicit:
            n = spec.num_leaves
            state_args.append(pytree.tree_unflatten(rest[:n], spec))
            rest = rest[n:]
        parts: dict[int, dict[int, torch.Tensor]] = {}
        for st, value in zip(self.lifted, rest):
            parts.setdefault(id(st.wrapper), {})[st.part] = value
        for st in self.lifted:
            by_part = parts[id(st.wrapper)]
            st.wrapper.lifted = tuple(by_part[k] for k in sorted(by_part))
            st.wrapper.final = None
        try:
            out = self.model(*data, *state_args)
        finally:
            finals = [st.wrapper.final for st in self.lifted]
            for st in self.lifted:
                st.wrapper.lifted = None
        leaves, self.output_spec = pytree.tree_flatten(out)
        if self.returns_state:  # the new state alone: the data outputs, then the new explicit states
            leaves = [*leaves, *(fresh(leaves) if self.copies else leaves)]
        new_lifted = []
        for st, final in zip(self.lifted, finals):
            if final is None:
                raise ExportError(f"recurrent layer {st.wrapper.path!r} was not called in forward; cannot lift its state")
            new_lifted.append(final[st.part])
        return (*leaves, *new_lifted)


@contextlib.contextmanager
def uncopied(lifter: StateLifter) -> Iterator[StateLifter]:
    """``lifter`` and the model's bound forward (``io.BoundForward``) copying nothing, for a timing
    loop that copies each call's tensors outside its clock."""
    bound = lifter.model.__dict__.get("forward")
    before = lifter.copies, getattr(bound, "copies", None)
    lifter.copies = False
    if isinstance(bound, BoundForward):
        bound.copies = False
    try:
        yield lifter
    finally:
        lifter.copies = before[0]
        if isinstance(bound, BoundForward):
            bound.copies = before[1]


@contextlib.contextmanager
def capturing(wrappers: Sequence[StatefulRecurrent]) -> Iterator[dict[int, RecurrentLayerSpec]]:
    """Switch wrappers to placeholder ops and publish their specs to the fake kernels."""
    _ACTIVE.clear()
    for w in wrappers:
        w.capturing = True
        _ACTIVE[w.layer_id] = w.spec
    try:
        yield dict(_ACTIVE)
    finally:
        for w in wrappers:
            w.capturing = False
        _ACTIVE.clear()


def reset_counters(wrappers: Sequence[StatefulRecurrent]) -> None:
    for w in wrappers:
        w.calls = w.calls_without_state = 0
        w.batches = []


def export_graph(lifter: StateLifter, wrappers: Sequence[StatefulRecurrent], example: Sequence[torch.Tensor],
                 input_names: Sequence[str], output_names: Sequence[str],
                 dynamic_shapes: Sequence[dict[int, Any]], opset: int) -> onnx.ModelProto:
    """Run ``torch.onnx.export(dynamo=True)`` with the placeholders; return the raw ModelProto."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed"
    from edgernn.converters.optimize import exact_no_op_rules, quiet_folding

    # exact_no_op_rules: the exporter's own onnxscript optimizer keeps small constants (epsilons)
    with capturing(wrappers), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()), \
            exact_no_op_rules(), quiet_folding(), _quiet_tracers():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                lifter, tuple(example), dynamo=True, opset_version=opset,
                input_names=list(input_names), output_names=list(output_names),
                dynamic_shapes=(tuple(dynamic_shapes),), custom_translation_table=_translation_table(),
                optimize=True, verify=False, report=False,
            )
        except ExportError:
            raise
        except Exception as e:  # the exporter's errors are long; keep the first meaningful line
            line = _first_line(e)
            if "data-dependent" in line:
                raise ExportError("forward branches or loops on the values of a tensor (e.g. `if x.sum() > 0:`), "
                                  "which one ONNX graph cannot hold: write it with torch.where (or torch.cond), or "
                                  f"move it out of the model (torch.onnx.export: {line[:200]})") from e
            raise ExportError(f"torch.onnx.export could not capture the model: {line}") from e
    return program.model_proto


@contextlib.contextmanager
def _quiet_tracers():
    """torch.export's tracers log (and print to stderr) graph dumps when they give up on a model (a
    branch on data); the failure reaches the user as one ExportError sentence, so the dumps are held
    back."""
    loggers = [logging.getLogger(n) for n in ("torch._dynamo", "torch.fx.experimental.symbolic_shapes",
                                               "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _first_line(e: BaseException) -> str:
    while e.__cause__ is not None and not str(e).strip():
        e = e.__cause__
    root = e
    while root.__cause__ is not None:
        root = root.__cause__
    text = str(root).strip() or str(e).strip() or type(e).__name__
    return text.splitlines()[0][:400]


class Capture:
    """``torch.onnx.export(dynamo=True)`` of the state lifter, recurrent layers as placeholders."""

    name = "capture"

    def __call__(self, ctx: ExportContext) -> PassResult:
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
        input_names = [s.name for s in ctx.data] + [state_input_name(n) for n in ctx.state_names]
        output_names = list(ctx.output_names) + [state_output_name(n) for n in ctx.state_names]
        if torchscript.is_scripted(ctx.model):
            return self._scripted(ctx, example, input_names, output_names, dyn, batch)
        ctx.onnx_model = export_graph(ctx.lifter, ctx.wrappers, example, input_names, output_names, dyn,
                                      ctx.options.opset)
        fixed = timeloop.static_time_inputs(ctx, ctx.onnx_model) if ctx.capture_mode != "step" else []
        if fixed:  # the trace unrolled a Python loop over time that the time-loop pass did not see
            from edgernn.converters.lift import LiftState  # lift.py imports this module

            timeloop.reroute(ctx, fixed)
            LiftState()(ctx)
            return PassResult.done(f"{ctx.time_loop}: captured again for one frame, {self(ctx).detail}")
        ctx.layer_specs = {w.layer_id: w.spec for w in ctx.wrappers}
        nodes = ctx.onnx_model.graph.node
        return PassResult.done(f"{len(nodes)} nodes, {sum(1 for x in nodes if x.domain == DOMAIN)} placeholders")

    @staticmethod
    def _scripted(ctx: ExportContext, example: Sequence[torch.Tensor], input_names: Sequence[str],
                  output_names: Sequence[str], dyn: Sequence[dict[int, Any]], batch: Any) -> PassResult:
        """A TorchScript model: torch.onnx's TorchScript exporter on the traced lifter. Its forward
        carries every state itself (nothing is lifted) and its loops stay loops (ONNX ``Loop``)."""
        if ctx.streams_time:
            torchscript.check_traced_length(ctx.model, ctx.output_axes, ctx.capture_mode)
        def axes(spec: dict[int, Any]) -> dict[int, str]:
            return {a: "batch" if d is batch else "time" for a, d in spec.items()}
        dynamic = {n: axes(d) for n, d in zip(input_names, dyn) if d}
        for name, (b, t) in zip(ctx.output_names, ctx.output_axes):
            named = {**({b: "batch"} if b is not None else {}),
                     **({t: "time"} if t is not None and ctx.capture_mode != "step" else {})}
            if named:
                dynamic[name] = named
        for n_in, n_out in zip(input_names[len(ctx.data):], output_names[len(ctx.output_names):]):
            if n_in in dynamic:
                dynamic[n_out] = dynamic[n_in]
        ctx.onnx_model = torchscript.export_scripted(ctx.lifter, example, input_names, output_names, dynamic,
                                                     ctx.options.opset)
        gen = torch.Generator().manual_seed(3)
        n_data = len(ctx.data)
        other_len = 1 if ctx.capture_mode == "step" else trace_time(ctx, TRACE_TIME + 2)
        runs = [ctx.run_lifter(example[:n_data], example[n_data:]),
                ctx.run_lifter(ctx.example_data(TRACE_BATCH + 1, other_len, gen), ctx.initial_states(TRACE_BATCH + 1))]
        torchscript.pin_output_shapes(ctx.onnx_model, output_names, runs, dynamic)
        ctx.layer_specs = {}
        return PassResult.done(f"TorchScript exporter: {len(ctx.onnx_model.graph.node)} nodes")
