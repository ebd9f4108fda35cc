"""The state I/O contract: the one place that defines names and metadata of exported graphs.

Every graph edgernn writes is self-describing. Each recurrent state is a pair of graph input
``state_in.<name>`` and graph output ``state_out.<name>`` with the same shape and dtype, and
the file's ``metadata_props`` hold:

``edgernn.format``   version of this contract (:data:`FORMAT_VERSION`)
``edgernn.mode``     ``step`` | ``chunk`` | ``sequence``
``edgernn.inputs``   JSON list of :class:`TensorSpec` (data inputs)
``edgernn.outputs``  JSON list of :class:`TensorSpec` (data outputs)
``edgernn.states``   JSON list of :class:`StateSpec`

The JSON schema of these entries ships as ``edgernn/schema/metadata.schema.json`` and is
documented in ``docs/state-contract.md``; :func:`decoded_metadata` gives the object it describes.
Exporters write the contract with :func:`write_metadata`; runtimes read it with :func:`read_metadata`.
For stateful files from other exporters (no edgernn metadata), :func:`infer_contract` finds the
state pairs by a documented rule (``edgernn/foreign.py``), and :func:`with_contract` stamps a
contract into a model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from edgernn.errors import EdgernnError

FORMAT_VERSION = "1"
STATE_IN = "state_in."
STATE_OUT = "state_out."
MODES = ("chunk", "step", "sequence")
BATCH = "batch"
TIME = "time"
SCHEMA_PATH = Path(__file__).parent / "schema" / "metadata.schema.json"

#: element types a contract names (numpy's names), the tensors edgernn streams
DTYPES = ("float32", "float16", "bfloat16", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
          "uint32", "uint64", "bool")

Mode = Literal["chunk", "step", "sequence"]
Dim = int | str


def dtype_of(elem_type: int) -> str | None:
    """The contract's dtype name of an ONNX tensor element type (``None``: one edgernn does not stream)."""
    import numpy as np
    import onnx_ir as ir

    try:
        name = np.dtype(ir.DataType(elem_type).numpy()).name
    except (TypeError, ValueError):
        return None
    return name if name in DTYPES else None


def state_input_name(name: str) -> str:
    """Graph input name of the state called ``name``."""
    return STATE_IN + name


def state_output_name(name: str) -> str:
    """Graph output name of the state called ``name``."""
    return STATE_OUT + name


def shown(name: object) -> str:
    """A name or symbol as a message shows it: as it is, or quoted with escapes when it holds a line
    break or another unprintable character (so that a message stays one line)."""
    return name if isinstance(name, str) and name.isprintable() else repr(name)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _require(d: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    missing = next((k for k in keys if k not in d), None)
    if missing is not None:
        raise KeyError(missing)  # _parse_entries: "... without the field 'NAME'"


def _name_shape_dtype(d: Mapping[str, Any]) -> tuple[str, tuple[Dim, ...], str]:
    name, shape, dtype = d["name"], d["shape"], d["dtype"]
    if not isinstance(name, str) or not name:
        raise ValueError(f"name {name!r} is not a non-empty string")
    if not isinstance(shape, list) or not all((_is_int(v) and v >= 1) or (isinstance(v, str) and v) for v in shape):
        raise ValueError(f"shape {shape!r} of {name!r} is not a list of sizes (integers >= 1) and symbols (strings)")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} of {name!r} is not one of {', '.join(DTYPES)}")
    return name, tuple(shape), dtype


def _axis(d: Mapping[str, Any], key: str) -> int | None:
    v = d[key]
    if v is not None and not (_is_int(v) and 0 <= v < len(d["shape"])):
        raise ValueError(f"{key} {v!r} of {d['name']!r} is not null nor an axis of its shape {d['shape']!r}")
    return v


@dataclass(frozen=True)
class TensorSpec:
    """A data input or output: name, shape (ints, ``"batch"``, ``"time"``), dtype and axes."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str
    batch_axis: int | None = None
    time_axis: int | None = None
    # inputs: a call's frames along the time axis must be a multiple of this (a stride over time)
    frame_multiple: int = 1
    # outputs: frames of lookahead; frame t of the stream is the model's frame t - delay of the
    # whole sequence (the first ``delay`` frames come before the model's first output)
    delay: int = 0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        for key, default in (("frame_multiple", 1), ("delay", 0)):  # written only where they say something
            if d[key] == default:
                del d[key]
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TensorSpec:
        _require(d, ("name", "shape", "dtype", "batch_axis", "time_axis"))
        name, shape, dtype = _name_shape_dtype(d)
        multiple, delay = d.get("frame_multiple", 1), d.get("delay", 0)
        if not _is_int(multiple) or multiple < 1:
            raise ValueError(f"frame_multiple {multiple!r} of {name!r} is not a positive integer")
        if not _is_int(delay) or delay < 0:
            raise ValueError(f"delay {delay!r} of {name!r} is not a non-negative integer")
        return cls(name, shape, dtype, _axis(d, "batch_axis"), _axis(d, "time_axis"), multiple, delay)

    def concrete_shape(self, batch: int, time: int = 1) -> tuple[int, ...]:
        """The shape with ``batch`` and ``time`` filled in (other symbols become 1)."""
        out = []
        for d in self.shape:
            out.append(batch if d == BATCH else time if d == TIME else d if isinstance(d, int) else 1)
        return tuple(out)


@dataclass(frozen=True)
class StateSpec:
    """One recurrent state pair. ``init`` is ``"zeros"`` or ``{"initializer": NAME}``."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str
    batch_axis: int | None
    init: str | dict[str, str] = "zeros"
    input: str = field(default="")
    output: str = field(default="")

    def __post_init__(self) -> None:
        if not self.input:
            object.__setattr__(self, "input", state_input_name(self.name))
        if not self.output:
            object.__setattr__(self, "output", state_output_name(self.name))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input": self.input,
            "output": self.output,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "batch_axis": self.batch_axis,
            "init": self.init,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> StateSpec:
        _require(d, ("name", "shape", "dtype", "input", "output", "batch_axis", "init"))
        name, shape, dtype = _name_shape_dtype(d)
        init = d["init"]
        stored = (isinstance(init, dict) and list(init) == ["initializer"] and isinstance(init["initializer"], str)
                  and init["initializer"] != "")
        if init != "zeros" and not stored:
            raise ValueError(f"init {init!r} of state {name!r}; expected \"zeros\" or {{\"initializer\": NAME}}")
        return cls(name=name, shape=shape, dtype=dtype, batch_axis=_axis(d, "batch_axis"), init=init,
                   input=d["input"], output=d["output"])

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else d if isinstance(d, int) else 1 for d in self.shape)


@dataclass(frozen=True)
class Contract:
    """What a runtime needs to stream a file: mode, data inputs/outputs and state pairs."""

    mode: Mode
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    states: tuple[StateSpec, ...]
    extra: Mapping[str, str] = field(default_factory=dict)
    format: str = FORMAT_VERSION

    def __post_init__(self) -> None:
        # tuples whatever the caller passed (lists too), so that equal contracts compare equal
        for name in ("inputs", "outputs", "states"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def to_metadata(self) -> dict[str, str]:
        """The ``metadata_props`` entries (string to string) that describe this contract."""
        props = {
            "edgernn.format": self.format,
            "edgernn.mode": self.mode,
            "edgernn.inputs": json.dumps([t.to_json() for t in self.inputs]),
            "edgernn.outputs": json.dumps([t.to_json() for t in self.outputs]),
            "edgernn.states": json.dumps([s.to_json() for s in self.states]),
        }
        props.update(self.extra)
        return props

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], source: str = "the model") -> Contract:
        """Parse ``metadata_props``; raise :class:`ContractError` naming what is missing or bad."""
        bad = next((k for k, v in props.items() if not (isinstance(k, str) and isinstance(v, str))), None)
        if bad is not None:  # protobuf hands over a string field that is not UTF-8 as bytes
            raise ContractError(f"{source} has a metadata_props entry {bad!r} whose key or value is not UTF-8 text")
        extra = {k: v for k, v in props.items() if k.startswith("edgernn.") and k not in _CORE_KEYS}
        return cls.from_json(decoded_metadata(props, source), source, extra)

    def to_json(self) -> dict[str, Any]:
        """The contract as one JSON object (``{"format", "mode", "inputs", "outputs", "states"}``,
        the object ``metadata.schema.json`` describes): the ``<name>.edgernn.json`` sidecar of an
        ``.ort`` file, whose format keeps no contract of its own."""
        return {"format": self.format, "mode": self.mode, "inputs": [t.to_json() for t in self.inputs],
                "outputs": [t.to_json() for t in self.outputs], "states": [s.to_json() for s in self.states]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], source: str = "the model",
                  extra: Mapping[str, str] | None = None) -> Contract:
        """The contract of a decoded object (:meth:`to_json`, :func:`decoded_metadata`), checked
        as the metadata is: the format version, the mode, every entry's fields and the state names."""
        if not isinstance(d, Mapping):
            raise ContractError(f"{source} holds a JSON {type(d).__name__}; expected an object with format, mode, "
                                "inputs, outputs and states")
        missing = [k for k in ("format", "mode", "inputs", "outputs", "states") if k not in d]
        if missing:
            raise ContractError(f"{source} has no {missing[0]!r}; expected format, mode, inputs, outputs and states")
        if d["format"] != FORMAT_VERSION:
            raise ContractError(f"{source} uses edgernn contract version {d['format']!r}; "
                                f"this edgernn reads version {FORMAT_VERSION!r}")
        if d["mode"] not in MODES:
            raise ContractError(f"{source} has edgernn.mode {d['mode']!r}; expected one of {', '.join(MODES)}")
        for key in ("inputs", "outputs", "states"):
            if not isinstance(d[key], list) or not all(isinstance(v, dict) for v in d[key]):
                raise ContractError(f"{source} has edgernn.{key} of type {type(d[key]).__name__}; "
                                    "expected a JSON list of objects")
        inputs = _parse_entries(source, "inputs", d["inputs"], TensorSpec.from_json)
        outputs = _parse_entries(source, "outputs", d["outputs"], TensorSpec.from_json)
        states = _parse_entries(source, "states", d["states"], StateSpec.from_json)
        for s in states:
            want = (state_input_name(s.name), state_output_name(s.name))
            if (s.input, s.output) != want:
                raise ContractError(f"{source} names the graph I/O of state {s.name!r} {s.input!r} -> {s.output!r}; "
                                    f"the contract expects {want[0]!r} -> {want[1]!r}")
        return cls(d["mode"], inputs, outputs, states, dict(extra or {}))


def decoded_metadata(props: Mapping[str, str], source: str = "the model") -> dict[str, Any]:
    """The contract's ``metadata_props`` entries with their JSON decoded: ``{"format", "mode",
    "inputs", "outputs", "states"}``, the object that ``metadata.schema.json`` describes.

    Raises :class:`ContractError` when an entry is missing, of another format version, or not a
    JSON list of objects; the fields of each object are checked by :meth:`Contract.from_metadata`.
    """
    if "edgernn.format" not in props:
        raise ContractError(
            f"{source} has no edgernn metadata (metadata_props 'edgernn.format' is missing); "
            "export it with `edgernn export` or name its state pairs yourself"
        )
    if props["edgernn.format"] != FORMAT_VERSION:
        raise ContractError(
            f"{source} uses edgernn contract version {props['edgernn.format']!r}; "
            f"this edgernn reads version {FORMAT_VERSION!r}"
        )
    missing = [k for k in _CORE_KEYS if k not in props]
    if missing:
        raise ContractError(f"{source} has edgernn metadata without {sorted(missing)[0]!r}; "
                            f"expected all of {', '.join(sorted(_CORE_KEYS))}")
    decoded: dict[str, Any] = {"format": props["edgernn.format"], "mode": props["edgernn.mode"]}
    for key in ("inputs", "outputs", "states"):
        try:
            value = json.loads(props[f"edgernn.{key}"])
        except ValueError as e:
            raise ContractError(f"{source} has edgernn.{key} that is not valid JSON ({e})") from None
        except RecursionError:
            raise ContractError(f"{source} has edgernn.{key} with JSON nested too deeply to read") from None
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ContractError(f"{source} has edgernn.{key} of type {type(value).__name__}; "
                                "expected a JSON list of objects")
        decoded[key] = value
    return decoded


def _parse_entries(source: str, key: str, entries: list[dict[str, Any]],
                   parse: Callable[[Mapping[str, Any]], Any]) -> tuple:
    out = []
    for k, entry in enumerate(entries):
        try:
            out.append(parse(entry))
        except KeyError as e:
            raise ContractError(f"{source} has an entry in edgernn.{key} (number {k}) without the field {e}") from None
        except (TypeError, ValueError) as e:
            raise ContractError(f"{source} has a malformed entry in edgernn.{key} (number {k}: {e})") from None
    return tuple(out)


_CORE_KEYS = {"edgernn.format", "edgernn.mode", "edgernn.inputs", "edgernn.outputs", "edgernn.states"}


class ContractError(EdgernnError):
    """A file does not follow the state I/O contract."""


def write_metadata(model: Any, contract: Contract) -> None:
    """Write ``contract`` into an ``onnx.ModelProto``'s ``metadata_props`` (replacing old entries)."""
    props = contract.to_metadata()
    keep = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def read_metadata(model: Any, source: str = "the model") -> Contract:
    """Read the contract from an ``onnx.ModelProto``."""
    return Contract.from_metadata({p.key: p.value for p in model.metadata_props}, source)


def infer_contract(model: Any, pairs: Mapping[str, str] | None = None, mode: str | None = None,
                   source: str = "the model", *, batch_axes: Mapping[str, int | None] | None = None,
                   time_axes: Mapping[str, int | None] | None = None) -> Contract:
    """The contract of a stateful ``onnx.ModelProto`` without edgernn metadata, from its graph:
    state pairs given (``pairs``: input name -> output name) or found by the documented rule, data
    inputs/outputs, batch and time axes, and mode. See :func:`edgernn.foreign.infer_contract`
    (``batch_axes=`` / ``time_axes=`` override axes) and docs/state-contract.md."""
    from edgernn.foreign import infer_contract as infer

    return infer(model, pairs, mode, source, batch_axes=batch_axes, time_axes=time_axes)


def with_contract(model: Any, contract: Contract, source: str = "the model") -> Any:
    """A copy of ``model`` that declares ``contract`` in its metadata, with the state I/O renamed
    ``state_in.<name>`` / ``state_out.<name>`` (see :func:`edgernn.stamp.with_contract`)."""
    from edgernn.stamp import with_contract as stamp

    return stamp(model, contract, source)


def read_contract_json(path: str | Path, source: str | None = None) -> Contract:
    """The contract in a JSON file (the ``<name>.edgernn.json`` sidecar of an ``.ort`` file)."""
    p = Path(path)
    name = source or str(p)
    try:
        d = json.loads(p.read_text())
    except OSError:
        raise ContractError(f"{p} does not exist or cannot be read") from None
    except ValueError as e:
        raise ContractError(f"{name} is not valid JSON ({e})") from None
    except RecursionError:
        raise ContractError(f"{name} holds JSON nested too deeply to read") from None
    return Contract.from_json(d, name)


def contract_json_text(contract: Contract) -> str:
    """The text of a contract's JSON file (see :func:`read_contract_json`)."""
    return json.dumps(contract.to_json(), indent=2) + "\n"
