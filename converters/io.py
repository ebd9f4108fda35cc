"""Data inputs of a model: parsed from ``--input`` or inferred from the model's first layer.

``--input NAME:DTYPE:DIMS`` declares one forward argument, e.g. ``x:float32:B,T,40``. In DIMS,
``B`` (or ``batch``) marks the batch axis and ``T`` (or ``time``) the time axis; other entries
are fixed sizes. If no ``B`` is given, axis 0 is the batch axis (axis 1 when ``T`` is axis 0)
and the number written there is only the size used for tracing.

How the passes call the model's forward is here too (:func:`bind_forward`): data inputs and states
by name wherever they sit in the signature, every tensor a copy of the caller's.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils import _pytree as pytree

from edgernn.contract import BATCH, TIME, TensorSpec
from edgernn.converters import torchscript
from edgernn.errors import ExportError

# the dtypes --input accepts, by name; by hand: onnx-ir's DataType maps to numpy, not to torch
_DTYPES = {
    "float32": torch.float32, "float": torch.float32, "float16": torch.float16, "float64": torch.float64,
    "int64": torch.int64, "long": torch.int64, "int32": torch.int32, "bool": torch.bool,
}


@dataclass(frozen=True)
class InputSpec:
    """One data input (or explicitly given state): name, dtype, dims with ``batch``/``time``."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    high: int | None = None  # exclusive upper bound of integer inputs (vocabulary size)

    @property
    def batch_axis(self) -> int | None:
        return self.shape.index(BATCH) if BATCH in self.shape else None

    @property
    def time_axis(self) -> int | None:
        return self.shape.index(TIME) if TIME in self.shape else None

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def concrete(self, batch: int, time: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else time if d == TIME else int(d) for d in self.shape)

    def random(self, batch: int, time: int, generator: torch.Generator) -> torch.Tensor:
        shape = self.concrete(batch, time)
        if self.torch_dtype.is_floating_point:
            return torch.randn(shape, generator=generator).to(self.torch_dtype)
        if self.torch_dtype == torch.bool:
            return torch.randint(0, 2, shape, generator=generator).bool()
        return torch.randint(0, self.high or 2, shape, generator=generator, dtype=self.torch_dtype)

    def step_shape(self) -> tuple[int | str, ...]:
        """The shape in step mode: the time axis is fixed to 1."""
        return tuple(1 if d == TIME else d for d in self.shape)

    def to_tensor_spec(self, step: bool, frame_multiple: int = 1) -> TensorSpec:
        """The contract's spec; ``frame_multiple`` (frames per call must be a multiple of it) is
        kept only where calls have a time axis of any length (not in step mode)."""
        shape = self.step_shape() if step else self.shape
        multiple = frame_multiple if self.time_axis is not None and not step else 1
        return TensorSpec(self.name, tuple(shape), self.dtype, self.batch_axis, self.time_axis,
                          frame_multiple=multiple)

    def flag(self) -> str:
        """``--input`` text that declares this input, e.g. ``x:float32:B,T,40``."""
        dims = ",".join("B" if d == BATCH else "T" if d == TIME else str(d) for d in self.shape)
        return f"{self.name}:{self.dtype}:{dims}"

    def describe(self) -> str:
        """The shape in words, e.g. ``[batch, time, 40]``."""
        return "[" + ", ".join(str(d) for d in self.shape) + "]"


def parse_input(text: str) -> InputSpec:
    """Parse ``NAME:DTYPE:DIMS`` (see module docstring)."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise ExportError(f"--input {text!r} is not NAME:DTYPE:DIMS (for example x:float32:B,T,40)")
    name, dtype, dims = parts
    if dtype not in _DTYPES:
        raise ExportError(f"--input {text!r} has dtype {dtype!r}; expected one of {', '.join(_DTYPES)}")
    shape: list[int | str] = []
    for d in dims.split(","):
        d = d.strip()
        if d in ("B", "batch"):
            shape.append(BATCH)
        elif d in ("T", "time"):
            shape.append(TIME)
        elif re.fullmatch(r"\d+", d) and int(d) > 0:
            shape.append(int(d))
        else:
            raise ExportError(f"--input {text!r} has dimension {d!r}; expected B, T or a positive integer")
    if shape.count(BATCH) > 1 or shape.count(TIME) > 1:
        raise ExportError(f"--input {text!r} marks B or T more than once")
    if BATCH not in shape:
        axis = 1 if shape and shape[0] == TIME else 0
        if axis >= len(shape):
            raise ExportError(f"--input {text!r} has no batch axis")
        shape[axis] = BATCH
    canon = {"float": "float32", "long": "int64"}.get(dtype, dtype)
    return InputSpec(name, canon, tuple(shape))


def forward_parameters(model: nn.Module) -> list[inspect.Parameter]:
    """The parameters of ``model.forward`` a caller can fill, in signature order: positional and
    keyword-only ones, without ``self``, ``*args`` or ``**kwargs``; of a TorchScript model, its
    compiled forward's schema. Once :func:`bind_forward` has run, the order the passes call in."""
    if torchscript.is_scripted(model):
        return torchscript.forward_parameters(model)
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return []
    return [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def fresh(values: Any) -> Any:
    """``values`` (a tensor, or tuples, lists and dicts of them) with every tensor copied, so that a
    forward that updates its arguments in place (``state.copy_(new)``, ``buf[..., :-1] = ...``)
    cannot change the caller's tensors. Inside a trace or an export nothing is copied."""
    if tracing():
        return values
    return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, values)


def tracing() -> bool:
    """True while torch.export / dynamo or ``torch.jit.trace`` runs the model (no copies then: the
    graph is functional)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


class BoundForward:
    """``model.forward`` as the passes call it: the fed data inputs, then the state arguments, by
    position (``forward(*data, *states)``), passed on to the model's own forward by name, so that a
    state argument may sit anywhere in the signature (before, between or after the data inputs,
    keyword-only, with a default) and data arguments with defaults may sit between them. Each
    tensor is copied on the way in (:func:`fresh`), so that no caller shares a tensor with a forward
    that updates its arguments in place. Installed by :func:`bind_forward`, on the exporter's
    private copy of the model; ``inspect.signature`` of it gives the calling order."""

    def __init__(self, method: Any, order: Sequence[str], params: Sequence[inspect.Parameter]) -> None:
        self.method = method  # the model's own bound forward
        self.order = list(order)
        self.params = list(params)  # the model's own forward's, in its order
        self.copies = True
        self.written: list[str] = []  # tensor attributes an earlier call wrote on the model (``self.h = ...``)
        by_name = {p.name: p for p in params}
        self.__signature__ = inspect.Signature(
            [by_name[n].replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in order],
            __validate_parameters__=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) > len(self.order):
            raise TypeError(f"forward takes {len(self.order)} arguments ({', '.join(self.order)}), "
                            f"{len(args)} were given")
        if self.copies:
            args, kwargs = fresh(args), fresh(kwargs)
        named = dict(zip(self.order, args), **kwargs)
        # positionally up to the last positional parameter given (defaults filling the gaps), the
        # rest by keyword: a forward whose arguments come in its own order is called as before
        slots = [p for p in self.params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        last = max((k for k, p in enumerate(slots) if p.name in named), default=-1)
        positional = []
        for p in slots[: last + 1]:
            if p.name in named:
                positional.append(named.pop(p.name))
            elif p.default is not p.empty:
                positional.append(p.default)
            else:  # a required argument not given: let the model's forward say so
                break
        owner = getattr(self.method, "__self__", None)
        if not isinstance(owner, nn.Module) or _tracing():
            return self.method(*positional, **named)
        # a forward that writes a tensor onto the model in two calls keeps its state there (a lazy
        # cache is written once); one that fails after an earlier call wrote one most likely failed on it
        before = _tensor_attributes(owner)
        try:
            out = self.method(*positional, **named)
        except ExportError:
            raise
        except Exception as e:
            if self.written:
                raise ExportError(attribute_state_error(type(owner).__name__, f"forward writes {self.written[0]}")
                                  ) from e
            raise
        written = [k for k, v in _tensor_attributes(owner).items() if before.get(k) is not v]
        again = [k for k in written if k in self.written]
        if again:
            raise ExportError(attribute_state_error(type(owner).__name__, f"forward writes {again[0]}"))
        self.written += [k for k in written if k not in self.written]
        return out


def attribute_state_error(name: str, found: str) -> str:
    """The sentence for a model that keeps its state on itself (``self.h = ...`` in forward)."""
    return (f"{name} keeps its state in module attributes ({found}), which an ONNX file cannot carry between "
            "calls; take the state as a forward argument and return the new one (forward(x, h) -> (y, h_new))")


def _tracing() -> bool:
    """Whether torch.export, dynamo or the TorchScript tracer is running forward (the model is
    then called on fake or traced tensors; its attributes are checked on real calls)."""
    return bool(torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing())


def _tensor_attributes(model: nn.Module) -> dict[str, Any]:
    """``self.NAME`` -> value, for the plain attributes of ``model`` and its submodules that hold
    tensors (not parameters or buffers: nn.Module keeps those apart). edgernn's own wrappers, which
    hold the lifted states while the exporter runs, are left out."""
    found = {}
    for path, m in model.named_modules():
        if type(m).__module__.startswith("edgernn."):
            continue
        for k, v in vars(m).items():
            leaves = v if isinstance(v, (tuple, list)) else (v,)
            if leaves and all(isinstance(t, torch.Tensor) for t in leaves):
                found[f"self.{path + '.' if path else ''}{k}"] = v
    return found


def bind_forward(model: nn.Module, order: Sequence[str]) -> None:
    """Make ``model`` (the exporter's copy) callable as ``model(*args)`` with ``args`` in ``order``
    (data inputs, then states: names of its forward's parameters), and copy the tensors it is given
    (:class:`BoundForward`). Again on a bound model, it binds the model's own forward anew. A
    TorchScript model is called as compiled: its forward must take the data inputs first."""
    if torchscript.is_scripted(model):
        names = [p.name for p in torchscript.forward_parameters(model)]
        if names[: len(order)] != list(order):
            raise ExportError(f"the TorchScript forward of {torchscript.script_name(model)} takes "
                              f"({', '.join(names)}); edgernn calls a scripted forward with its data inputs first and "
                              f"its states after them ({', '.join(order)}): script a forward in that order")
        return
    current = model.__dict__.get("forward")
    method = current.method if isinstance(current, BoundForward) else model.forward
    params = [p for p in inspect.signature(method).parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    bound = BoundForward(method, order, params)
    if isinstance(current, BoundForward):
        bound.written = current.written
    model.__dict__["forward"] = bound


def infer_data_input(model: nn.Module, name: str) -> InputSpec:
    """Infer the one data input from the first layer that consumes it.

    Rules: the first ``Embedding`` / ``Linear`` / ``Conv1d`` / recurrent layer or cell in module
    order decides dtype and feature size; the first ``nn.RNN``/``nn.LSTM``/``nn.GRU`` decides the
    layout (``batch_first``). A model with recurrent cells but no recurrent layers takes one frame
    per call (no time axis). A TorchScript model's scripted layers are read the same way.
    """
    first = first_layer(model)
    layer = next((m for m in torchscript.layers(model) if isinstance(m, nn.RNNBase)), None)
    hint = f"pass --input {name}:DTYPE:DIMS (for example {name}:float32:B,T,40)"
    if first is None and layer is None and size_attribute(model, INPUT_SIZES):  # a cell of bare parameters
        return InputSpec(name, "float32", (BATCH, size_attribute(model, INPUT_SIZES)))
    if first is None:
        raise ExportError(f"cannot infer the input of {type(model).__name__}: it has no Embedding, Linear, Conv1d or "
                          f"recurrent layer to read sizes from; {hint}")
    if layer is None:  # cells only: one frame per call
        if isinstance(first, nn.Embedding):
            return InputSpec(name, "int64", (BATCH,), high=first.num_embeddings)
        if isinstance(first, nn.Linear):
            return InputSpec(name, "float32", (BATCH, first.in_features))
        if isinstance(first, nn.RNNCellBase):
            return InputSpec(name, "float32", (BATCH, first.input_size))
        raise ExportError(f"cannot infer the frame size of {type(model).__name__}'s input "
                          f"(its first layer is {type(first).__name__}); {hint}")
    bt = (BATCH, TIME) if layer.batch_first else (TIME, BATCH)
    if isinstance(first, nn.Embedding):
        return InputSpec(name, "int64", bt, high=first.num_embeddings)
    if isinstance(first, nn.Conv1d):
        return InputSpec(name, "float32", (BATCH, first.in_channels, TIME))
    size = first.in_features if isinstance(first, nn.Linear) else first.input_size
    return InputSpec(name, "float32", (*bt, size))


# the attributes third-party cells keep their sizes in (ncps' CfCCell: input_size and hidden_size;
# LTCCell: sensory_size and state_size), read where no layer tells the size
INPUT_SIZES = ("input_size", "in_features", "input_dim", "sensory_size", "n_inputs", "in_size")
STATE_SIZES = ("hidden_size", "state_size", "units", "hidden_dim", "num_units", "n_hidden", "hidden_features")


def size_attribute(model: nn.Module, names: Sequence[str]) -> int | None:
    """The first of ``names`` that ``model`` has as a positive int attribute (a property too)."""
    for n in names:
        try:
            v = getattr(model, n, None)
        except Exception:  # noqa: BLE001 - a property that fails: not a size
            continue
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def first_layer(model: nn.Module) -> nn.Module | None:
    """The layer whose sizes :func:`infer_data_input` reads (the first that consumes the input;
    of a TorchScript model, an eager stand-in of it)."""
    return next((m for m in torchscript.layers(model)
                 if isinstance(m, (nn.Embedding, nn.Linear, nn.Conv1d, nn.RNNBase, nn.RNNCellBase))), None)


def describe_layer(m: nn.Module) -> str:
    """``Conv1d(16 -> 20)``: a layer by its class and its input and output sizes."""
    sizes = {nn.Embedding: ("num_embeddings", "embedding_dim"), nn.Linear: ("in_features", "out_features"),
             nn.Conv1d: ("in_channels", "out_channels")}
    keys = next((v for k, v in sizes.items() if isinstance(m, k)), ("input_size", "hidden_size"))
    if not all(hasattr(m, k) for k in keys):
        return type(m).__name__
    return f"{type(m).__name__}({getattr(m, keys[0])} -> {getattr(m, keys[1])})"


def input_layouts(guess: InputSpec, time_major: bool = False) -> list[InputSpec]:
    """``guess`` first, then the other layouts of its axes a model commonly takes: batch-first
    ``[batch, time, features...]`` and, with ``time_major`` (the model's recurrent layer is
    time-major), ``[time, batch, features...]``."""
    if guess.time_axis is None or guess.batch_axis is None:
        return [guess]
    feat = tuple(d for d in guess.shape if d not in (BATCH, TIME))
    out: list[InputSpec] = []
    for shape in (guess.shape, (BATCH, TIME, *feat), *([(TIME, BATCH, *feat)] if time_major else [])):
        if all(o.shape != shape for o in out):
            out.append(InputSpec(guess.name, guess.dtype, tuple(shape), guess.high))
    return out
