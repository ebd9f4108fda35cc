"""TorchScript models (``torch.jit.script``, ``torch.jit.save``): what export reads from them and
how they are captured.

A scripted forward is compiled: torch.export cannot capture it and edgernn cannot swap its
recurrent layers for placeholders, so its state is exported as the forward itself carries it:

- the forward must take its state and return the new one (``forward(x, h) -> (y, h_new)``,
  tuples such as ``(h, c)`` too); the state arguments are found by the same rules as for eager
  models (``resolve.STATE_ARG``, ``--state``, an ``initial_state`` method, the cell's state);
- a model that keeps its state in module attributes (forward writes ``self.h``, or it has a
  ``reset_states()`` and takes no state) is refused by :func:`check_scripted`, with what to do;
- the capture pass traces the state lifter around the ScriptModule (the scripted forward stays
  compiled, its loops and branches intact) and runs ``torch.onnx.export(dynamo=False)`` on it
  (:func:`export_scripted`), with symbolics for what that exporter lacks (:func:`symbolics`).

The other passes read the model through :func:`layers` (eager stand-ins of its scripted layers,
for their sizes) and :func:`forward_parameters` (the compiled forward's schema).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import logging
import warnings
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from edgernn.errors import ExportError

MAX_OPSET = 20  # the newest opset torch.onnx's TorchScript exporter writes (ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
RESET_METHODS = ("reset_states", "reset_state", "reset", "reset_hidden")
RECURRENT = ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")


def is_scripted(model: Any) -> bool:
    """True for a ``torch.jit.script``-ed (or ``torch.jit.load``-ed) module."""
    return isinstance(model, torch.jit.ScriptModule)


def script_name(model: nn.Module) -> str:
    """The class name a scripted module was compiled from (``original_name``)."""
    return getattr(model, "original_name", type(model).__name__)


def forward_parameters(model: torch.jit.ScriptModule) -> list[inspect.Parameter]:
    """The compiled forward's arguments (without ``self``) as :class:`inspect.Parameter` s, a
    default where the schema has one."""
    params = []
    for arg in model.forward.schema.arguments[1:]:
        default = arg.default_value if arg.has_default_value() else inspect.Parameter.empty
        params.append(inspect.Parameter(arg.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
    return params


def _stand_in(m: nn.Module) -> nn.Module | None:
    """An eager layer of the scripted layer's class and sizes, without weights (on ``meta``); None
    for other modules, and for layers whose sizes the archive does not keep (a traced module's)."""
    try:
        return _eager_layer(m)
    except AttributeError:
        return None


def _eager_layer(m: nn.Module) -> nn.Module | None:
    name = script_name(m)
    meta = {"device": "meta"}
    if name == "Embedding":
        return nn.Embedding(m.num_embeddings, m.embedding_dim, **meta)
    if name == "Linear":
        return nn.Linear(m.in_features, m.out_features, **meta)
    if name == "Conv1d":
        return nn.Conv1d(m.in_channels, m.out_channels, m.kernel_size[0], **meta)
    if name in ("RNN", "LSTM", "GRU"):
        kwargs: dict[str, Any] = dict(num_layers=m.num_layers, batch_first=m.batch_first,
                                      bidirectional=m.bidirectional, **meta)
        if name == "RNN":
            kwargs["nonlinearity"] = "relu" if m.mode == "RNN_RELU" else "tanh"
        if name == "LSTM" and m.proj_size:
            kwargs["proj_size"] = m.proj_size
        return getattr(nn, name)(m.input_size, m.hidden_size, **kwargs)
    if name in ("RNNCell", "LSTMCell", "GRUCell"):
        return getattr(nn, name)(m.input_size, m.hidden_size, **meta)
    return None


def layers(model: nn.Module) -> Iterator[nn.Module]:
    """``model.modules()``; for a scripted model, eager stand-ins of its scripted layers
    (Embedding, Linear, Conv1d, recurrent layers and cells) in module order, for their sizes."""
    if not is_scripted(model):
        yield from model.modules()
        return
    for m in model.modules():
        stand_in = _stand_in(m)
        if stand_in is not None:
            yield stand_in


def check_scripted(model: torch.jit.ScriptModule, mode: str, opset: int, state_args: Sequence[str] | None) -> None:
    """Refuse, with a sentence, a scripted model whose export cannot be what its forward does."""
    from edgernn.converters.resolve import STATE_ARG

    name = script_name(model)
    params = forward_parameters(model)
    names = [p.name for p in params]
    states = list(state_args) if state_args is not None else [n for n in names[1:] if STATE_ARG.search(n)]
    written = _attributes_written(model)
    reset = next((r for r in RESET_METHODS if _has_method(model, r)), None)
    if written or (reset and not states):
        found = f"forward writes self.{written[0]}" if written else f"it has {reset}() and forward takes no state"
        raise ExportError(f"the TorchScript model {name} keeps its state in module attributes ({found}), which an "
                          "ONNX file cannot carry between calls; script a forward that takes the state and returns "
                          "the new one (forward(x, h) -> (y, h_new)), save it again and export that")
    if opset > MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported for a TorchScript model: torch.onnx's TorchScript "
                          f"exporter writes opsets 18 to {MAX_OPSET}; pass --opset {MAX_OPSET} or lower")
    for arg in model.forward.schema.arguments[1:]:
        if not arg.has_default_value() and not _tensors_only(arg.type):
            raise ExportError(f"{name}.forward argument {arg.name!r} has type {arg.type}, and edgernn feeds tensors; "
                              f"give it a default in the scripted forward ({arg.name}: {arg.type} = ...)")
    if mode == "sequence":
        return
    for path, m in model.named_modules():
        kind = script_name(m)
        if kind in ("RNN", "LSTM", "GRU") and getattr(m, "bidirectional", False):
            raise ExportError(f"layer {path!r} of the TorchScript model {name} is bidirectional and cannot stream: "
                              "it needs the future of the sequence; export with --mode sequence")
        if kind in RECURRENT and not states:
            raise ExportError(f"the TorchScript model {name}'s forward takes no state argument, so its {kind} "
                              f"{path!r} starts from zeros in every call and cannot carry state between calls in "
                              f"{mode} mode; script a forward that takes the state and returns the new one "
                              "(forward(x, h) -> (y, h_new)), or export with --mode sequence")


def is_traced(model: torch.jit.ScriptModule) -> bool:
    """True for a ``torch.jit.trace``-d module (saved or not): its graph records the Python call
    stack of the run it was traced on (``_slow_forward``), where a scripted graph points at source."""
    graph = model.forward.graph.copy()
    torch._C._jit_pass_inline(graph)
    return any("_slow_forward" in node.sourceRange() for node in _all_nodes(graph.block()))


def check_traced_length(model: torch.jit.ScriptModule, output_axes: Sequence[tuple[int | None, int | None]],
                        mode: str) -> None:
    """A traced model whose input has a time axis but whose outputs keep their length at other lengths
    recorded a loop over time unrolled at the traced length: refused, since it streams nothing right."""
    if mode == "step" or any(t is not None for _, t in output_axes) or not is_traced(model):
        return
    raise ExportError(f"the TorchScript model {script_name(model)} was made with torch.jit.trace and its outputs "
                      "keep their length when the input's length changes: the trace unrolled a loop over time at "
                      "the length it was traced at; save it with torch.jit.script instead")


def _has_method(model: torch.jit.ScriptModule, name: str) -> bool:
    try:
        model._c._get_method(name)
    except RuntimeError:
        return False
    return True


def _tensors_only(t: torch._C.Type) -> bool:
    """A tensor, or a tuple or list of tensors (optional or not): what a state or data input can be."""
    kind = t.kind()
    if kind == "TensorType":
        return True
    if kind == "OptionalType":
        return _tensors_only(t.getElementType())
    if kind in ("TupleType", "ListType"):
        return all(_tensors_only(e) for e in t.containedTypes())
    return False


def _attributes_written(model: torch.jit.ScriptModule) -> list[str]:
    """Module attributes the forward (with the methods it calls) assigns or writes in place in eval
    mode. Read from the frozen forward, where ``self.training`` is folded: a BatchNorm's
    ``num_batches_tracked.add_(1)`` only runs in training and is gone there."""
    if model.training:
        model = copy.deepcopy(model).eval()
    frozen = torch._C._freeze_module(model._c, preserveParameters=True)  # a clone: the model is unchanged
    graph = frozen._get_method("forward").graph
    written: list[str] = []
    for node in _all_nodes(graph.block()):
        if node.kind() == "prim::SetAttr":
            written.append(node.s("name"))
            continue
        schema = node.schema()
        if schema == "(no schema)" or "!" not in schema:
            continue
        args = torch._C.parse_schema(schema).arguments
        for arg, value in zip(args, node.inputs()):
            if arg.alias_info is not None and arg.alias_info.is_write:
                attr = _attribute_of(value)
                if attr is not None:
                    written.append(attr)
    return list(dict.fromkeys(written))


def _all_nodes(block) -> Iterator[Any]:
    for node in block.nodes():
        yield node
        for sub in node.blocks():
            yield from _all_nodes(sub)


def _attribute_of(value) -> str | None:
    """The module attribute ``value`` is (or is a view of), followed back through views."""
    for _ in range(64):
        node = value.node()
        if node.kind() == "prim::GetAttr":
            return node.s("name")
        schema = node.schema()
        if schema == "(no schema)":
            return None
        parsed = torch._C.parse_schema(schema)
        outs = [r.alias_info.before_set for r in parsed.returns if r.alias_info is not None]
        view_of = next((v for a, v in zip(parsed.arguments, node.inputs())
                        if a.alias_info is not None and not a.alias_info.is_write and a.alias_info.before_set in outs),
                       None)
        if view_of is None:
            return None
        value = view_of
    return None


# ---------------------------------------------------------------- capture


def _contains(g, container, element):
    """``x in (1, 2)`` with constants (nn cells check ``input.dim() in (1, 2)``): a constant. The
    exporter's own version only reads lists it has not yet turned into a constant tensor."""
    from torch.onnx._internal.torchscript_exporter import symbolic_helper, symbolic_opset9

    if symbolic_helper._is_constant(container) and symbolic_helper._is_constant(element):
        try:
            values = symbolic_helper._maybe_get_const(container, "is")
            item = symbolic_helper._maybe_get_const(element, "i")
            return g.op("Constant", value_t=torch.tensor(item in list(values)))
        except Exception:  # noqa: BLE001 - not ints: the exporter's own rule says what it supports
            pass
    return symbolic_opset9.__contains_(g, container, element)


def _linear(g, x, weight, bias):
    from torch.onnx._internal.torchscript_exporter import symbolic_helper

    y = g.op("MatMul", x, g.op("Transpose", weight, perm_i=[1, 0]))
    return y if symbolic_helper._is_none(bias) else g.op("Add", y, bias)


def _gru_cell(g, x, h, w_ih, w_hh, b_ih, b_hh):
    """``aten::gru_cell`` (``nn.GRUCell``), as PyTorch computes it: gates r, z, n."""
    i_r, i_z, i_n = g.op("Split", _linear(g, x, w_ih, b_ih), axis_i=-1, num_outputs_i=3, outputs=3)
    h_r, h_z, h_n = g.op("Split", _linear(g, h, w_hh, b_hh), axis_i=-1, num_outputs_i=3, outputs=3)
    r = g.op("Sigmoid", g.op("Add", i_r, h_r))
    z = g.op("Sigmoid", g.op("Add", i_z, h_z))
    n = g.op("Tanh", g.op("Add", i_n, g.op("Mul", r, h_n)))
    return g.op("Add", n, g.op("Mul", z, g.op("Sub", h, n)))  # (1 - z) * n + z * h


def _rnn_cell(activation: str):
    """``aten::rnn_tanh_cell`` / ``aten::rnn_relu_cell`` (``nn.RNNCell``)."""
    def cell(g, x, h, w_ih, w_hh, b_ih, b_hh):
        return g.op(activation, g.op("Add", _linear(g, x, w_ih, b_ih), _linear(g, h, w_hh, b_hh)))
    return cell


# what torch.onnx's TorchScript exporter lacks for scripted nn layers (it has lstm_cell, gru, lstm, rnn)
_SYMBOLICS = {"aten::__contains_": _contains, "aten::gru_cell": _gru_cell,
              "aten::rnn_tanh_cell": _rnn_cell("Tanh"), "aten::rnn_relu_cell": _rnn_cell("Relu")}


@contextlib.contextmanager
def symbolics(opset: int) -> Iterator[None]:
    """Register :data:`_SYMBOLICS` with the TorchScript exporter for this block only."""
    for name, fn in _SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(name, fn, opset)
    try:
        yield
    finally:
        for name in _SYMBOLICS:
            torch.onnx.unregister_custom_op_symbolic(name, opset)


def export_scripted(lifter: nn.Module, example: Sequence[torch.Tensor], input_names: Sequence[str],
                    output_names: Sequence[str], dynamic_axes: dict[str, dict[int, str]], opset: int
                    ) -> Any:
    """Trace ``lifter`` (its scripted model stays compiled inside: loops, branches) and export the
    trace with ``torch.onnx.export(dynamo=False)``; return the raw ``onnx.ModelProto``."""
    import onnx

    from edgernn.converters.capture import _first_line

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    # the optimizer pass warns on what this exporter writes in a Loop body (sequence ops, a
    # constant body output); the file is right as it stands, so these two are quiet
    for name in ("onnxscript.optimizer._constant_folding", "onnx_ir.passes.common.initializer_deduplication"):
        logging.getLogger(name).setLevel(logging.ERROR)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), symbolics(opset):
        warnings.simplefilter("ignore")
        # in eval mode: the exporter puts the trace back in the mode it found it in, and the trace
        # shares its modules with the model that verification runs (dropout on would be a mismatch)
        lifter.eval()
        try:
            traced = torch.jit.trace(lifter, tuple(example), check_trace=False, strict=False)
            torch.onnx.export(traced, tuple(example), buf, dynamo=False, opset_version=opset,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=dynamic_axes, do_constant_folding=True)
        except ExportError:
            raise
        except Exception as e:  # the exporter's errors are long; keep the first meaningful line
            raise ExportError(f"torch.onnx's TorchScript exporter could not export the scripted forward: "
                              f"{_first_line(e)}") from e
        finally:
            lifter.eval()
    return onnx.load_from_string(buf.getvalue())


def pin_output_shapes(model: Any, output_names: Sequence[str], runs: Sequence[Sequence[torch.Tensor]],
                      dynamic_axes: dict[str, dict[int, str]]) -> None:
    """Give the graph outputs the sizes PyTorch gave them: the TorchScript exporter leaves what a
    ``Loop`` builds unsized (``ConcatFromSequence_dim_2``). A dim is fixed where ``runs`` (the
    outputs at two batch sizes and lengths) agree and named where ``dynamic_axes`` names it."""
    by_name = {o.name: o for o in model.graph.output}
    for k, name in enumerate(output_names):
        shapes = {tuple(run[k].shape) for run in runs}
        ranks = {len(sh) for sh in shapes}
        if len(ranks) != 1:
            continue
        tensor_type = by_name[name].type.tensor_type
        tensor_type.shape.Clear()
        named = dynamic_axes.get(name, {})
        for axis in range(ranks.pop()):
            dim = tensor_type.shape.dim.add()
            sizes = {sh[axis] for sh in shapes}
            if axis in named:
                dim.dim_param = named[axis]
            elif len(sizes) == 1:
                dim.dim_value = sizes.pop()


__all__ = ["MAX_OPSET", "check_scripted", "check_traced_length", "export_scripted", "forward_parameters",
           "is_scripted", "is_traced", "layers", "pin_output_shapes", "script_name", "symbolics"]
