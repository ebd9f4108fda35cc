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

Mode = Literal["chunk", "step", "sequence"]
Dim = int | str


def state_input_name(name: str) -> str:
    """Graph input name of the state called ``name``."""
    return STATE_IN + name


def state_output_name(name: str) -> str:
    """Graph output name of the state called ``name``."""
    return STATE_OUT + name


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
        multiple, delay = d.get("frame_multiple", 1), d.get("delay", 0)
        if not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1:
            raise ValueError(f"frame_multiple {multiple!r} of {d['name']!r} is not a positive integer")
        if not isinstance(delay, int) or isinstance(delay, bool) or delay < 0:
            raise ValueError(f"delay {delay!r} of {d['name']!r} is not a non-negative integer")
        return cls(d["name"], tuple(d["shape"]), d["dtype"], d.get("batch_axis"), d.get("time_axis"),
                   multiple, delay)

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
        return cls(
            name=d["name"],
            shape=tuple(d["shape"]),
            dtype=d["dtype"],
            batch_axis=d.get("batch_axis"),
            init=d.get("init", "zeros"),
            input=d["input"],
            output=d["output"],
        )

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
        d = decoded_metadata(props, source)
        if d["mode"] not in MODES:
            raise ContractError(f"{source} has edgernn.mode {d['mode']!r}; expected one of {', '.join(MODES)}")
        inputs = _parse_entries(source, "inputs", d["inputs"], TensorSpec.from_json)
        outputs = _parse_entries(source, "outputs", d["outputs"], TensorSpec.from_json)
        states = _parse_entries(source, "states", d["states"], StateSpec.from_json)
        for s in states:
            want = (state_input_name(s.name), state_output_name(s.name))
            if (s.input, s.output) != want:
                raise ContractError(f"{source} names the graph I/O of state {s.name!r} {s.input!r} -> {s.output!r}; "
                                    f"the contract expects {want[0]!r} -> {want[1]!r}")
        extra = {k: v for k, v in props.items() if k.startswith("edgernn.") and k not in _CORE_KEYS}
        return cls(d["mode"], inputs, outputs, states, extra)


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
    ``state_in.<name>`` / ``state_out.<name>`` (see :func:`edgernn.foreign.with_contract`)."""
    from edgernn.foreign import with_contract as stamp

    return stamp(model, contract, source)
