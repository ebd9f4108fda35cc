"""Contracts for stateful ONNX files written by other exporters (no edgernn metadata).

silero-vad, icefall / sherpa-onnx, optimum and hand-written ``torch.onnx.export`` calls all carry
state through graph inputs and outputs, but name the pairs their own way and describe nothing in
``metadata_props``. :func:`infer_contract` finds the pairs by a documented rule (or takes them
from the user) and builds the same :class:`~edgernn.contract.Contract` that edgernn's own files
declare, so that :class:`~edgernn.runtimes.StreamingSession`, ``edgernn info`` / ``run`` and the
quantizer treat such files like exports. :func:`edgernn.stamp.with_contract` stamps a contract
into a model (renaming the state I/O to ``state_in.<name>`` / ``state_out.<name>``), so that a
file written from a foreign one is an edgernn file.

The rule, in full (docs/state-contract.md, "Files from other exporters", says the same):

State pairs. Each graph input (initializers excluded), in graph order, pairs with the first graph
output, not yet paired, of the same dtype and a compatible shape (same rank, equal fixed sizes)
whose name follows from the input's by the first of these rules that gives one:

a. ``X`` -> ``XN``, ``X_out``, ``X_new`` or ``Xn`` (silero-vad ``state`` -> ``stateN``; ``h`` -> ``hn``)
b. ``X`` -> ``new_X`` (icefall / sherpa-onnx ``state0`` -> ``new_state0``)
c. ``X_in`` -> ``X_out``, ``X_input`` -> ``X_output``
d. ``past_key_values.K`` -> ``present.K``, ``past_X`` -> ``present_X`` (optimum)
e. ``state_in.X`` -> ``state_out.X`` (edgernn's own names)
f. ``...h0`` / ``...c0`` / ``...hx`` / ``...cx`` (also ``h_0``, ``c_0``) -> the same prefix with
   ``hn`` / ``hy`` / ``h_n`` (``cn`` / ``cy`` / ``c_n``)

A state is named after its input: ``X`` for rules c and e, the input's name otherwise. Every other
graph input is a data input; every other graph output a data output.

Time axis. The time symbol is the first symbolic dimension of the data inputs whose name says time
(``t``, ``l``, or a name containing ``time``, ``seq``, ``frame``, ``len`` or ``step``); a tensor's
time axis is where that symbol is. Without one, a call takes one frame (or window): no time axis.

Batch axis. The batch symbol is the first symbolic dimension of the data inputs whose name says
batch (``n``, ``b``, ``bs``, or a name containing ``batch``); else the first one that a data input
shares with a state input; else the first non-fixed dimension of the data inputs that is not the
time symbol. A tensor's batch axis is where that symbol is, else its first non-fixed dimension that
is not its time axis, else none. In a file with only fixed sizes, data inputs and outputs take
axis 0, and a state takes the axis whose size equals the first data input's size on axis 0
(axis 1 first when several do, PyTorch's ``[layers, batch, hidden]``). Rank-0 tensors have none.

A data output whose declared dimensions do not carry the symbols is looked up again after ONNX
shape inference from the inputs. Mode: ``chunk`` when a data input has a time axis, else ``step``.
``batch_axes`` / ``time_axes`` (tensor name -> axis or ``None``) override any axis.

In the contract, the batch and time dimensions read ``batch`` and ``time`` (where they are not
fixed), other symbolic dimensions keep their name, and unknown ones read ``?``. A data input with
neither a batch nor a time axis (silero-vad's scalar ``sr``) is not streamed: it is fed whole on
every call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from edgernn.contract import (
    BATCH,
    DTYPES,
    MODES,
    STATE_IN,
    STATE_OUT,
    TIME,
    Contract,
    ContractError,
    Dim,
    StateSpec,
    TensorSpec,
    dtype_of,
    shown,
)

INFERRED_KEY = "edgernn.inferred"
"""``Contract.extra`` key of a contract built by :func:`infer_contract`: JSON ``{"pairs": [{"name",
"input", "output", "rule"}], "batch": ..., "time": ...}`` saying how each part was found. Kept in
the metadata that :func:`edgernn.stamp.with_contract` writes, as the record of the file's original names."""

UNKNOWN = "?"

_BATCH_NAMES = {"n", "b", "bs"}
_TIME_NAMES = {"t", "l"}
_TIME_WORDS = ("time", "seq", "frame", "len", "step")

Dims = tuple  # of int (fixed), str (symbol) or None (unknown)


def _suffixes(name: str) -> list[str]:
    return [name + s for s in ("N", "_out", "_new", "n")]


def _new_prefix(name: str) -> list[str]:
    return ["new_" + name]


def _in_out(name: str) -> list[str]:
    for a, b in (("_input", "_output"), ("_in", "_out")):
        if name.endswith(a) and len(name) > len(a):
            return [name[: -len(a)] + b]
    return []


def _past_present(name: str) -> list[str]:
    if name.startswith("past_key_values"):
        return ["present" + name[len("past_key_values"):]]
    if name.startswith("past_") and len(name) > 5:
        return ["present_" + name[5:]]
    return []


def _ours(name: str) -> list[str]:
    return [STATE_OUT + name[len(STATE_IN):]] if name.startswith(STATE_IN) and len(name) > len(STATE_IN) else []


def _h0(name: str) -> list[str]:
    for suffix in ("h_0", "c_0", "h0", "c0", "hx", "cx"):
        if name.endswith(suffix):
            stem = name[: -len(suffix)] + suffix[0]
            return [stem + "n", stem + "y", stem + "_n"]
    return []


@dataclass(frozen=True)
class _Rule:
    label: str
    text: str
    outputs: Callable[[str], list[str]]
    strip: Callable[[str], str] = lambda name: name


RULES: tuple[_Rule, ...] = (
    _Rule("a", "output = input + N / _out / _new / n", _suffixes),
    _Rule("b", "output = new_ + input", _new_prefix),
    _Rule("c", "X_in -> X_out, X_input -> X_output", _in_out,
          lambda n: n[: -len("_input")] if n.endswith("_input") else n[: -len("_in")]),
    _Rule("d", "past_key_values.K -> present.K, past_X -> present_X", _past_present),
    _Rule("e", "state_in.X -> state_out.X", _ours, lambda n: n[len(STATE_IN):]),
    _Rule("f", "h0/c0/hx/cx -> hn/cn, hy/cy", _h0),
)
"""The pairing rules, tried in this order for each graph input (see the module docstring)."""


@dataclass(frozen=True)
class _Value:
    name: str
    dtype: str
    dims: Dims | None  # None: rank unknown

    def describe(self) -> str:
        shape = "?" if self.dims is None else "[" + ", ".join(UNKNOWN if d is None else shown(d) for d in self.dims) + "]"
        return f"{self.dtype} {shape}"


def _value(v: Any, source: str, what: str) -> _Value:
    if not isinstance(v.name, str):  # protobuf hands over a string field that is not UTF-8 as bytes
        raise ContractError(f"{source} has {what} {v.name!r} whose name is not UTF-8 text")
    if not v.name:  # a contract names each tensor (and an unnamed state would take the name state_in.)
        raise ContractError(f"{source} has an {what} without a name; edgernn streams named tensors only")
    t = v.type.tensor_type
    if not v.type.HasField("tensor_type"):
        raise ContractError(f"{source} has {what} {v.name!r} that is not a tensor; edgernn streams tensors only")
    dtype = dtype_of(t.elem_type)
    if dtype is None:
        raise ContractError(f"{source} has {what} {v.name!r} of ONNX element type {t.elem_type}, "
                            f"which edgernn does not stream (it reads {', '.join(sorted(DTYPES))})")
    if not t.HasField("shape"):
        return _Value(v.name, dtype, None)
    dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in t.shape.dim)
    if any(isinstance(d, bytes) for d in dims):
        raise ContractError(f"{source} has {what} {v.name!r} with a dimension name that is not UTF-8 text")
    return _Value(v.name, dtype, dims)


def _compatible(a: _Value, b: _Value) -> bool:
    if a.dtype != b.dtype:
        return False
    if a.dims is None or b.dims is None:
        return True
    return len(a.dims) == len(b.dims) and all(
        not (isinstance(x, int) and isinstance(y, int)) or x == y for x, y in zip(a.dims, b.dims))


def _looks_batch(sym: str) -> bool:
    s = sym.lower()
    return s in _BATCH_NAMES or "batch" in s


def _looks_time(sym: str) -> bool:
    s = sym.lower()
    return not _looks_batch(sym) and (s in _TIME_NAMES or any(w in s for w in _TIME_WORDS))


def _fixed(d: Any) -> bool:
    return isinstance(d, int)


# ---------------------------------------------------------------- pairs


@dataclass(frozen=True)
class _Pair:
    name: str
    input: _Value
    output: _Value
    rule: str


def _pairs_by_rule(inputs: list[_Value], outputs: list[_Value]) -> list[_Pair]:
    by_name = {o.name: o for o in outputs}
    taken: set[str] = set()
    pairs = []
    for value in inputs:
        found = None
        for rule in RULES:
            for candidate in rule.outputs(value.name):
                out = by_name.get(candidate)
                if out is not None and candidate not in taken and _compatible(value, out):
                    found = _Pair(rule.strip(value.name), value, out, f"{rule.label}: {rule.text}")
                    break
            if found:
                break
        if found:
            taken.add(found.output.name)
            pairs.append(found)
    return pairs


def _given_pairs(pairs: Mapping[str, str], inputs: list[_Value], outputs: list[_Value], source: str) -> list[_Pair]:
    ins = {v.name: v for v in inputs}
    outs = {v.name: v for v in outputs}
    used: dict[str, str] = {}
    result = []
    for i, o in pairs.items():
        flag = f"--state-pair {shown(i)}={shown(o)}"
        if i not in ins:
            raise ContractError(f"{source} has no graph input {i!r} ({flag}); its inputs are {_names(inputs)}")
        if o not in outs:
            raise ContractError(f"{source} has no graph output {o!r} ({flag}); its outputs are {_names(outputs)}")
        if o in used:
            raise ContractError(f"{source} cannot pair {i!r} with {o!r}: that output already pairs with {used[o]!r}")
        a, b = ins[i], outs[o]
        if not _compatible(a, b):
            raise ContractError(f"{source} cannot pair {i!r} with {o!r}: the input is {a.describe()} but the output "
                                f"is {b.describe()}; a state pair needs the same dtype and shape")
        used[o] = i
        name = i[len(STATE_IN):] if i.startswith(STATE_IN) and len(i) > len(STATE_IN) else i
        result.append(_Pair(name, a, b, "given"))
    order = {v.name: k for k, v in enumerate(inputs)}
    return sorted(result, key=lambda p: order[p.input.name])


def _names(values: list[_Value]) -> str:
    return ", ".join(shown(v.name) for v in values) if values else "none"


# ---------------------------------------------------------------- axes


@dataclass
class _Axes:
    batch_symbol: str | None
    time_symbol: str | None
    fixed_batch: int | None  # the data batch size of a file with fixed sizes
    batch_note: str
    time_note: str
    sizes_fixed: bool = False  # the batch has a fixed size (``fixed_batch``, or none when it is None)


def _find_axes(data: list[_Value], states: list[_Value]) -> _Axes:
    data_syms = [d for v in data if v.dims for d in v.dims if isinstance(d, str)]
    time = next((s for s in data_syms if _looks_time(s)), None)
    time_note = (f"symbol {time!r} of the data inputs names time" if time else
                 "no data input has a symbolic dimension named like time: one call takes one frame (or window)")
    state_syms = {d for v in states if v.dims for d in v.dims if isinstance(d, str)}
    batch = next((s for s in data_syms if _looks_batch(s)), None)
    note = f"symbol {batch!r} of the data inputs names batch"
    if batch is None:
        batch = next((s for s in data_syms if s != time and s in state_syms), None)
        note = f"symbol {batch!r} is shared by a data input and a state input"
    non_fixed = [v for v in data if v.dims and any(not _fixed(d) and d != time for d in v.dims)]
    # a state per stream: when every state has fixed sizes, so has the batch, and a free axis of the
    # data is a window or sample axis (a VAD taking [samples] or [1, window]), not the batch
    states_fixed = bool(states) and all(v.dims is not None and all(_fixed(d) for d in v.dims) for v in states)
    if batch is None and non_fixed and not states_fixed:
        first = next(d for d in non_fixed[0].dims if not _fixed(d) and d != time)
        batch = first if isinstance(first, str) else None
        axis = list(non_fixed[0].dims).index(first)
        note = f"the first non-fixed dimension of the data inputs ({non_fixed[0].name!r} axis {axis})"
        if batch is None:  # an unknown dimension: no symbol to follow, each tensor takes its first non-fixed one
            return _Axes(None, time, None, note + "; elsewhere each tensor's first non-fixed dimension", time_note)
    if batch is not None:
        return _Axes(batch, time, None, note, time_note)
    first = next((v for v in data if v.dims), None)
    size = first.dims[0] if first is not None else None
    if size is not None and not _fixed(size):  # [samples]: one stream, no batch axis
        return _Axes(None, time, None, "the states have fixed sizes and the data input's axis 0 is free "
                     f"({first.name!r} {size!r}, a window or sample axis): one stream, no batch axis", time_note,
                     sizes_fixed=True)
    note = ("the file has fixed sizes: axis 0 of data tensors, and for states the axis of size "
            f"{size} (the first data input's axis 0)" if size is not None else "no data input has an axis")
    if non_fixed:
        note += "; the states have fixed sizes, so the data's free axes are window or sample axes, not the batch"
    return _Axes(None, time, size, note, time_note, sizes_fixed=True)


def _batch_axis(value: _Value, axes: _Axes, time_axis: int | None, state: bool,
                propagated: Dims | None = None) -> int | None:
    dims = value.dims
    if not dims:
        return None
    if axes.batch_symbol is not None:
        for candidate in (dims, propagated):
            if candidate and axes.batch_symbol in candidate:
                return list(candidate).index(axes.batch_symbol)
    if not axes.sizes_fixed:  # symbolic sizes: the first non-fixed axis that is not time
        free = [k for k, d in enumerate(dims) if not _fixed(d) and k != time_axis]
        return free[0] if free else None
    if axes.fixed_batch is None:
        return None
    if not state:  # fixed sizes: axis 0 (1 when time is axis 0), if its size is fixed
        k = 0 if time_axis != 0 else 1
        return k if k < len(dims) and _fixed(dims[k]) else None
    matches = [k for k, d in enumerate(dims) if d == axes.fixed_batch]
    if not matches:
        return None
    return 1 if 1 in matches else matches[0]


def _time_axis(value: _Value, axes: _Axes, propagated: Dims | None = None) -> int | None:
    if not value.dims:
        return None
    if axes.time_symbol is not None:
        for candidate in (value.dims, propagated):
            if candidate and axes.time_symbol in candidate:
                return list(candidate).index(axes.time_symbol)
        named = [k for k, d in enumerate(value.dims) if isinstance(d, str) and _looks_time(d)]
        if named:
            return named[0]
    return None


def _check_axis(name: str, axis: int | None, rank: int, what: str, source: str) -> int | None:
    if axis is not None and not 0 <= axis < rank:
        raise ContractError(f"{source}: {what} axis {axis} of {name!r} is outside its {rank} axes")
    return axis


def _shape(value: _Value, batch_axis: int | None, time_axis: int | None) -> tuple[Dim, ...]:
    out: list[Dim] = []
    for k, d in enumerate(value.dims or ()):
        if _fixed(d):
            out.append(d)
        elif k == batch_axis:
            out.append(BATCH)
        elif k == time_axis:
            out.append(TIME)
        else:
            out.append(d if d else UNKNOWN)
    return tuple(out)


def _propagated_output_dims(model: Any) -> dict[str, Dims]:
    """Output dims from ONNX shape inference with the declared output shapes cleared, so that the
    input symbols flow to the outputs (empty when inference fails, e.g. on a model over 2 GB)."""
    import onnx

    try:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        for o in copy.graph.output:
            o.type.tensor_type.ClearField("shape")
        del copy.graph.value_info[:]
        inferred = onnx.shape_inference.infer_shapes(copy)
    except Exception:
        return {}
    result = {}
    for o in inferred.graph.output:
        t = o.type.tensor_type
        if t.HasField("shape"):
            result[o.name] = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in t.shape.dim)
    return result


# ---------------------------------------------------------------- the contract


def infer_contract(model: Any, pairs: Mapping[str, str] | None = None, mode: str | None = None,
                   source: str = "the model", *, batch_axes: Mapping[str, int | None] | None = None,
                   time_axes: Mapping[str, int | None] | None = None) -> Contract:
    """Build the contract of a stateful ONNX file without edgernn metadata from its graph.

    ``pairs`` (graph input name -> graph output name) names the state pairs; without it they are
    found by :data:`RULES`. ``mode`` overrides the inferred mode; ``batch_axes`` / ``time_axes``
    (data input, data output or state input name -> axis, or ``None`` for none) override the
    inferred axes. The contract's ``extra`` holds :data:`INFERRED_KEY`, the record of how each part
    was found. Raises :class:`~edgernn.contract.ContractError` with one sentence when no pair is
    found, a given pair does not fit, or the file has no data input or output.
    """
    if mode is not None and mode not in MODES:
        raise ContractError(f"mode {mode!r} is unknown; expected one of {', '.join(MODES)}")
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [_value(v, source, "input") for v in graph.input if v.name not in initializers]
    outputs = [_value(v, source, "output") for v in graph.output]
    if pairs is not None:
        found = _given_pairs(pairs, inputs, outputs, source)
    else:
        found = _pairs_by_rule(inputs, outputs)
    if not found:
        has_meta = any(p.key == "edgernn.format" for p in model.metadata_props)
        why = ("has edgernn metadata but" if has_meta
               else "has no edgernn metadata (metadata_props 'edgernn.format' is missing) and")
        raise ContractError(
            f"{source} {why} no state pair was found by name among its inputs ({_names(inputs)}) and outputs "
            f"({_names(outputs)}); name each pair with --state-pair IN=OUT (state_pairs={{IN: OUT}} in Python)"
            if pairs is None else f"{source}: no state pairs were given; name each pair with --state-pair IN=OUT")
    state_in = {p.input.name for p in found}
    state_out = {p.output.name for p in found}
    data_in = [v for v in inputs if v.name not in state_in]
    data_out = [v for v in outputs if v.name not in state_out]
    if not data_in:
        raise ContractError(f"{source} has no data input besides its states ({_names(inputs)}); "
                            "edgernn streams data through a model")
    if not data_out:
        raise ContractError(f"{source} has no data output besides its states ({_names(outputs)})")
    axes = _find_axes(data_in, [p.input for p in found])
    batch_over = dict(batch_axes or {})
    time_over = dict(time_axes or {})
    known = {v.name for v in inputs + outputs} | {p.name for p in found}
    for name in [*batch_over, *time_over]:
        if name not in known:
            raise ContractError(f"{source} has no tensor {name!r} to set an axis of; its inputs are {_names(inputs)} "
                                f"and its outputs {_names(outputs)}")
    propagated = _propagated_output_dims(model) if any(
        not (v.dims and (axes.batch_symbol in v.dims or axes.time_symbol in v.dims)) for v in data_out) else {}

    def spec(value: _Value) -> TensorSpec:
        rank = len(value.dims or ())
        prop = propagated.get(value.name)
        t = time_over[value.name] if value.name in time_over else _time_axis(value, axes, prop)
        t = _check_axis(value.name, t, rank, "time", source)
        b = batch_over[value.name] if value.name in batch_over else _batch_axis(value, axes, t, False, prop)
        b = _check_axis(value.name, b, rank, "batch", source)
        return TensorSpec(value.name, _shape(value, b, t), value.dtype, b, t)

    in_specs = tuple(spec(v) for v in data_in)
    out_specs = tuple(spec(v) for v in data_out)
    states = []
    for p in found:
        key = p.input.name if p.input.name in batch_over else p.name
        b = batch_over[key] if key in batch_over else _batch_axis(p.input, axes, None, True)
        b = _check_axis(p.input.name, b, len(p.input.dims or ()), "batch", source)
        states.append(StateSpec(p.name, _shape(p.input, b, None), p.input.dtype, b, "zeros",
                                p.input.name, p.output.name))
    if mode is None:
        mode = "chunk" if any(s.time_axis is not None for s in in_specs) else "step"
    record = {"pairs": [{"name": p.name, "input": p.input.name, "output": p.output.name, "rule": p.rule}
                        for p in found],
              "batch": axes.batch_note + (" (overridden for " + ", ".join(batch_over) + ")" if batch_over else ""),
              "time": axes.time_note + (" (overridden for " + ", ".join(time_over) + ")" if time_over else "")}
    return Contract(mode, in_specs, out_specs, tuple(states), {INFERRED_KEY: json.dumps(record)})  # type: ignore[arg-type]


def inferred_record(contract: Contract) -> dict[str, Any] | None:
    """How :func:`infer_contract` found ``contract``'s parts (``None`` for a contract it did not build)."""
    text = contract.extra.get(INFERRED_KEY)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None




__all__ = ["infer_contract", "inferred_record", "INFERRED_KEY", "RULES"]
