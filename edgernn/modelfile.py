"""One model file, resolved once: :class:`ModelFile`.

Every command and both Python runtimes open an ONNX (or ORT-format) file through ``ModelFile``:
``StreamingSession``, ``StreamBatcher``, ``quantize``, ``pack``, ``triton_repository``, ``bench``,
``info`` and ``run`` take one (or a path, bytes or ``onnx.ModelProto`` they turn into one). It
answers, once and the same way for all of them:

- **the contract and where it came from** (:attr:`ModelFile.contract_from`):

  ``given``     a whole contract passed in (``contract=``)
  ``inferred``  state pairs passed in (``state_pairs=``: graph input -> graph output), or a file
                without edgernn metadata, read by the naming rule of :mod:`edgernn.foreign`
  ``metadata``  the file's ``edgernn.*`` ``metadata_props`` (:mod:`edgernn.contract` parses them)
  ``sidecar``   an ``.ort`` file from another exporter: the ``<name>.edgernn.json`` that
                ``edgernn pack`` wrote next to it

  in that order of precedence. A contract that is not the file's own metadata must name the
  graph's inputs and outputs (checked here, with one sentence naming the missing one).
- **start values** of states that start from a stored value (``init: {"initializer": NAME}``):
  from the graph's initializers, or from the ``<name>.state_init.npz`` next to an ``.ort`` file
  (onnxruntime drops initializers no node reads when it converts).
- **the graph**, parsed once and lazily: :attr:`proto` (``onnx.ModelProto``, weights in external
  files not read), :meth:`with_weights` (with them) and :attr:`ir` (``onnx_ir.Model``).
- **writing**: :meth:`save` stamps the contract into the metadata and writes the file atomically
  (a temporary file renamed into place); :meth:`sidecars` gives the files an ``.ort`` copy needs.

Only :mod:`edgernn.contract` reads and writes the metadata's text; this module decides which
contract applies to a file.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Mapping

from edgernn.contract import BATCH, TIME, Contract, ContractError, read_contract_json, shown
from edgernn.errors import EdgernnError

if TYPE_CHECKING:  # numpy loads with the start values (opening a file does not need it)
    import numpy as np

ORT_IDENTIFIER = b"ORTM"  # flatbuffers file identifier of an ORT-format model (bytes 4..8)
CONTRACT_SUFFIX = ".edgernn.json"
STATE_INIT_SUFFIX = ".state_init.npz"

ContractFrom = Literal["given", "inferred", "metadata", "sidecar"]
MAX_STATE_BYTES = 1 << 30  # the largest state of one stream a file may declare (1 GiB), unless raised


class ModelFileError(EdgernnError):
    """A model file cannot be opened or its start values cannot be read."""


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a graph: initializers and tensor attributes, in subgraphs too (onnx
    walks them the same way only in a private helper)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def is_ort_format(model: str | os.PathLike | bytes) -> bool:
    """Whether ``model`` (a path or the file's bytes) is an ORT-format model."""
    if isinstance(model, (bytes, bytearray)):
        return bytes(model[4:8]) == ORT_IDENTIFIER
    try:
        with open(model, "rb") as f:
            return f.read(8)[4:8] == ORT_IDENTIFIER
    except OSError:
        return False


def sidecar_path(path: str | os.PathLike, suffix: str) -> Path:
    """``<name><suffix>`` next to ``<name>.ort`` (or ``<name>.onnx``)."""
    p = Path(path)
    for ext in (".ort", ".onnx"):
        if p.name.lower().endswith(ext):
            return p.with_name(p.name[: -len(ext)] + suffix)
    return p.with_name(p.name + suffix)


class ModelFile:
    """An ONNX or ORT-format model file and its resolved state contract (see the module docstring).

    Open one with :meth:`open`; the graph is parsed on first use and kept.
    """

    def __init__(self, *, path: Path | None, data: bytes | None, proto: Any, source: str,
                 state_pairs: Mapping[str, str] | None, contract: Contract | None,
                 max_state_bytes: int = MAX_STATE_BYTES) -> None:
        self.path = path
        self.source = source
        self._data = data
        self._proto = proto
        self.is_ort = is_ort_format(data if data is not None else path) if proto is None else False
        self.state_pairs = dict(state_pairs) if state_pairs is not None else None
        self._given = contract
        self.max_state_bytes = max_state_bytes
        self._resolved: tuple[Contract, ContractFrom] | None = None
        self.inferred: dict | None = None  # how the naming rule found each part (contract_from "inferred")

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, model: str | os.PathLike | bytes | Any, *, state_pairs: Mapping[str, str] | None = None,
             contract: Contract | None = None, source: str | None = None,
             max_state_bytes: int = MAX_STATE_BYTES) -> ModelFile:
        """Open ``model``: a path, the file's bytes, an ``onnx.ModelProto``, or a ``ModelFile``
        (returned as it is unless ``state_pairs`` or ``contract`` are given).

        Raises :class:`ModelFileError` when the file is missing (bytes and ModelProtos are parsed
        here; a file's graph on first use). The contract is resolved on first use of
        :attr:`contract`, and checked against the graph: names, dtypes, ranks and fixed sizes, and
        no state of one stream over ``max_state_bytes``.
        """
        if isinstance(model, ModelFile):
            if state_pairs is None and contract is None:
                return model
            path, data, proto, source = model.path, model._data, model._proto, model.source
        elif isinstance(model, (bytes, bytearray)):
            path, data, source = None, bytes(model), source or "the model"
            proto = None if is_ort_format(data) else _parse(data, source)
        elif isinstance(model, (str, os.PathLike)):
            path, data, proto = Path(model), None, None
            if not path.is_file():
                raise ModelFileError(f"{path} does not exist or is not a file")
            source = source or str(path)
        elif type(model).__name__ == "ModelProto":
            path, data, proto, source = None, None, model, source or "the model"
        else:
            raise ModelFileError(f"expected an ONNX file path, its bytes or an onnx.ModelProto, got "
                                 f"{type(model).__name__}")
        return cls(path=path, data=data, proto=proto, source=source, state_pairs=state_pairs, contract=contract,
                   max_state_bytes=max_state_bytes)

    # ------------------------------------------------------------------ the graph

    @property
    def data(self) -> bytes:
        """The file's bytes (weights in external files not included)."""
        if self._data is None:
            self._data = self.path.read_bytes() if self._proto is None else self._proto.SerializeToString()
        return self._data

    @property
    def proto(self) -> Any:
        """The ``onnx.ModelProto`` (parsed once; weights in external files are not read: see
        :meth:`with_weights`). An ``.ort`` file has none: :class:`ModelFileError` says so."""
        if self._proto is None:
            if self.is_ort:
                raise ModelFileError(f"{self.source} is an ORT-format model; its graph cannot be read as ONNX (use "
                                     "the .onnx file it was made from)")
            if self.path is not None:
                try:
                    import onnx

                    self._proto = onnx.load(str(self.path), load_external_data=False)
                except Exception:
                    raise ModelFileError(f"{self.source} is not an ONNX model (onnx.load could not parse it)") from None
            else:
                self._proto = _parse(self.data, self.source)
            if self.path is not None:
                self._check_external_data(self._proto)
        return self._proto

    def _check_external_data(self, proto: Any) -> None:
        """Weights in external files must lie in the model's folder or below it: a file from a
        stranger could otherwise make any reader (onnxruntime too) open any file on the machine."""
        from onnx.external_data_helper import ExternalDataInfo, uses_external_data

        folder = self.path.parent.resolve()
        for tensor in _tensors(proto.graph):
            if not uses_external_data(tensor):
                continue
            location = ExternalDataInfo(tensor).location or ""
            target = (folder / location).resolve()
            if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
                raise ModelFileError(f"{self.source} keeps the weights of {tensor.name!r} in external data file "
                                     f"{location!r}, outside the model's folder; refused (put the data file in "
                                     "the model's folder and name it by a relative path)")

    def with_weights(self) -> Any:
        """The ``onnx.ModelProto`` with weights kept in external files read in (the same object
        as :attr:`proto` when there are none)."""
        from onnx.external_data_helper import load_external_data_for_model, uses_external_data

        proto = self.proto
        if self.path is not None and any(uses_external_data(t) for t in proto.graph.initializer):
            try:
                load_external_data_for_model(proto, str(self.path.parent))
            except Exception as e:
                raise ModelFileError(f"{self.source} keeps weights in external files that cannot be read "
                                     f"({str(e).splitlines()[0][:200]})") from None
        return proto

    @property
    def uses_external_data(self) -> bool:
        from onnx.external_data_helper import uses_external_data

        return not self.is_ort and any(uses_external_data(t) for t in self.proto.graph.initializer)

    @cached_property
    def ir(self) -> Any:
        """The graph as an ``onnx_ir.Model`` (built once from :attr:`proto`)."""
        import onnx_ir as ir

        return ir.from_proto(self.proto)

    @cached_property
    def metadata(self) -> dict[str, str]:
        """The file's ``metadata_props`` (of an ``.ort`` file too)."""
        if self.is_ort:
            return _ort_metadata(self.data, self.source)
        return {p.key: p.value for p in self.proto.metadata_props}

    def graph_io(self) -> tuple[list[str], list[str]]:
        """Names of the graph's inputs (initializers excluded) and outputs."""
        if self.is_ort:
            return _ort_io(self.data, self.source)
        g = self.proto.graph
        bad = next((v.name for v in [*g.input, *g.output] if not isinstance(v.name, str)), None)
        if bad is not None:  # protobuf hands over a string field that is not UTF-8 as bytes
            raise ModelFileError(f"{self.source} has a graph input or output {bad!r} whose name is not UTF-8 text")
        inits = {t.name for t in g.initializer}
        return [i.name for i in g.input if i.name not in inits], [o.name for o in g.output]

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size if self.path is not None else len(self.data)

    # ------------------------------------------------------------------ the contract

    @property
    def contract(self) -> Contract:
        """The file's contract, resolved on first use (see the module docstring); raises
        :class:`~edgernn.contract.ContractError` when it cannot be."""
        return self._resolve()[0]

    @property
    def contract_from(self) -> ContractFrom:
        """Where :attr:`contract` came from: ``given``, ``inferred``, ``metadata`` or ``sidecar``."""
        return self._resolve()[1]

    def _resolve(self) -> tuple[Contract, ContractFrom]:
        if self._resolved is None:
            contract, origin = self._find_contract(self._given)
            self._check_sizes(contract)
            self._check_io(contract, *self.graph_io())
            self._check_types(contract)
            self._resolved = contract, origin
        return self._resolved

    def _find_contract(self, given: Contract | None) -> tuple[Contract, ContractFrom]:
        if given is not None:
            return given, "given"
        if self.state_pairs is None and "edgernn.format" in self.metadata:
            return Contract.from_metadata(self.metadata, self.source), "metadata"
        if self.is_ort:
            sidecar = sidecar_path(self.path, CONTRACT_SUFFIX) if self.path is not None else None
            if self.state_pairs is None and sidecar is not None and sidecar.is_file():
                return read_contract_json(sidecar), "sidecar"  # written by `edgernn pack` for a foreign file
            raise ContractError(f"{self.source} is an ORT-format model without edgernn metadata, so its contract "
                                f"cannot be read from a graph; keep the <name>{CONTRACT_SUFFIX} that `edgernn pack` "
                                "wrote next to it, or pass contract=")
        from edgernn.foreign import infer_contract, inferred_record

        contract = infer_contract(self.proto, self.state_pairs, source=self.source)
        self.inferred = inferred_record(contract)
        return contract, "inferred"

    def _check_io(self, c: Contract, inputs: list[str], outputs: list[str]) -> None:
        """The contract (the file's own metadata too: files from strangers are untrusted) must name
        graph inputs and outputs that exist."""
        ins, outs = set(inputs), set(outputs)
        for name in [t.name for t in c.inputs] + [s.input for s in c.states]:
            if name not in ins:
                raise ContractError(f"{self.source} has no graph input {name!r}; its inputs are "
                                    f"{', '.join(map(shown, sorted(ins)))}")
        for name in [t.name for t in c.outputs] + [s.output for s in c.states]:
            if name not in outs:
                raise ContractError(f"{self.source} has no graph output {name!r}; its outputs are "
                                    f"{', '.join(map(shown, sorted(outs)))}")

    def _check_types(self, c: Contract) -> None:
        """Each tensor the contract names has the graph's dtype and rank, and the graph's size on
        every axis where both give a size (a symbol in the graph takes any size the contract says; a
        size in the graph fits any symbol of the contract but its batch and time axes, which vary)."""
        if self.is_ort:  # the ORT format's value types are not read here; onnxruntime checks feeds
            return
        from edgernn.contract import dtype_of

        g = self.proto.graph
        values = {v.name: v for v in [*g.input, *g.output]}
        named = [(t.name, t.shape, t.dtype, "") for t in (*c.inputs, *c.outputs)]
        named += [(n, s.shape, s.dtype, f" (state {s.name!r})") for s in c.states for n in (s.input, s.output)]
        for name, shape, dtype, what in named:
            t = values[name].type.tensor_type
            if not values[name].type.HasField("tensor_type"):
                continue
            graph_dtype = dtype_of(t.elem_type)
            if graph_dtype is not None and graph_dtype != dtype:
                raise ContractError(f"{self.source} declares {name!r}{what} as {dtype}, but the graph has it as "
                                    f"{graph_dtype}")
            if not t.HasField("shape"):
                continue
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in t.shape.dim]
            if len(dims) != len(shape):
                raise ContractError(f"{self.source} declares {name!r}{what} with shape {_shown(shape)}, but the graph "
                                    f"has {_shown(dims)} ({len(dims)} axes)")
            for axis, (want, got) in enumerate(zip(shape, dims)):
                if isinstance(got, int) and (want != got if isinstance(want, int) else want in (BATCH, TIME)):
                    raise ContractError(f"{self.source} declares {name!r}{what} with shape {_shown(shape)}, but the "
                                        f"graph has {_shown(dims)} (axis {axis} is {got})")

    def _check_sizes(self, c: Contract) -> None:
        """A state of one stream is at most :data:`MAX_STATE_BYTES` (a file could claim any size)."""
        import numpy as np

        for s in c.states:
            elements = 1
            for d in s.concrete_shape(1):
                elements *= d
            size = elements * np.dtype(s.dtype).itemsize if s.dtype != "bfloat16" else elements * 2
            if size > self.max_state_bytes:
                raise ContractError(f"{self.source} declares state {s.name!r} of shape {_shown(s.shape)}: "
                                    f"{_gib(size)} GiB per stream, over the limit of "
                                    f"{_gib(self.max_state_bytes)} GiB (ModelFile.open(..., max_state_bytes=N) "
                                    "raises it)")

    @property
    def foreign_note(self) -> str | None:
        """A sentence for reports on a file whose contract is not its own metadata (else ``None``)."""
        pairs = ", ".join(f"{s.input} -> {s.output}" for s in self.contract.states)
        if self.contract_from == "inferred":
            how = "given by the user" if self.state_pairs else "found by the naming rule (docs/state-contract.md)"
            return f"{self.source} has no edgernn metadata; state pairs {how}: {pairs}"
        if self.contract_from == "sidecar":
            return f"{self.source}: contract read from {sidecar_path(self.path, CONTRACT_SUFFIX).name}"
        return None

    def stamped(self) -> Any:
        """The ``onnx.ModelProto`` that declares this contract in its metadata: the file's own
        graph when the contract is its metadata, else a copy with the state I/O renamed
        ``state_in.<name>`` / ``state_out.<name>`` (see :func:`edgernn.stamp.with_contract`)."""
        if self.contract_from == "metadata":
            return self.with_weights()
        from edgernn.stamp import with_contract

        return with_contract(self.with_weights(), self.contract, self.source)

    # ------------------------------------------------------------------ start values

    def stored_initializers(self) -> dict[str, np.ndarray]:
        """Initializer name -> value of each state's stored start value (``init: {"initializer":
        NAME}``), from the graph, or from ``<name>.state_init.npz`` next to an ``.ort`` file."""
        bad = [s for s in self.contract.states
               if s.init != "zeros" and not (isinstance(s.init, dict) and "initializer" in s.init)]
        if bad:
            raise ContractError(f"state {bad[0].name!r} of {self.source} has init {bad[0].init!r}; expected "
                                "\"zeros\" or {\"initializer\": NAME}")
        wanted = [s.init["initializer"] for s in self.contract.states if isinstance(s.init, dict)]
        if not wanted:
            return {}
        if self.is_ort:
            found = self._npz_values()
        else:
            from onnx import numpy_helper

            found = {t.name: numpy_helper.to_array(t) for t in self.with_weights().graph.initializer
                     if t.name in wanted}
        missing = [n for n in wanted if n not in found]
        if missing:
            raise ContractError(f"{self.source} names initializer {missing[0]!r} as a state's start value, but has "
                                 "no such initializer")
        return {n: found[n] for n in wanted}

    def start_values(self) -> dict[str, np.ndarray]:
        """State name -> stored start value (size 1 on the batch axis) of states that do not start
        from zeros; checked against the state's shape and cast to its dtype."""
        import numpy as np

        stored = self.stored_initializers()
        out: dict[str, np.ndarray] = {}
        for s in self.contract.states:
            if not isinstance(s.init, dict):
                continue
            name = s.init["initializer"]
            value = np.asarray(stored[name]).astype(np.dtype(s.dtype))
            want = s.concrete_shape(1)
            if value.shape != want:
                raise ContractError(f"start value {name!r} of state {s.name!r} has shape {list(value.shape)}; "
                                     f"expected {list(want)} (the state's shape with size 1 on the batch axis)")
            out[s.name] = value
        return out

    def _npz_values(self) -> dict[str, np.ndarray]:
        if self.path is None:
            raise ModelFileError(f"{self.source} is an ORT-format model whose states start from stored values; "
                                 f"open it by path, so that the <name>{STATE_INIT_SUFFIX} file next to it is read")
        import numpy as np

        p = sidecar_path(self.path, STATE_INIT_SUFFIX)
        if not p.is_file():
            raise ModelFileError(f"{self.source} is an ORT-format model whose states start from stored values, but "
                                 f"{p.name} is not next to it; copy it from the folder `edgernn pack` wrote")
        try:
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception:
            raise ModelFileError(f"{p} (start values of {self.source}) is not a numpy .npz file") from None

    def zero_starts(self) -> Contract:
        """The contract with every state starting from zeros (for parity checks from a known state)."""
        return replace(self.contract, states=tuple(replace(s, init="zeros") for s in self.contract.states))

    # ------------------------------------------------------------------ writing

    def sidecars(self, name: str, stored: Mapping[str, np.ndarray] | None = None) -> dict[str, bytes]:
        """File name -> bytes of what an ``.ort`` copy called ``<name>.ort`` needs next to it: the
        contract when it is not in the metadata, the stored start values when there are any."""
        import numpy as np

        from edgernn.contract import contract_json_text

        files: dict[str, bytes] = {}
        if self.contract_from != "metadata":
            files[name + CONTRACT_SUFFIX] = contract_json_text(self.contract).encode()
        stored = self.stored_initializers() if stored is None else stored
        if stored:
            buf = io.BytesIO()
            np.savez(buf, **stored)
            files[name + STATE_INIT_SUFFIX] = buf.getvalue()
        return files

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model with its contract stamped into the metadata, atomically (weights inline)."""
        target = Path(path)
        write_atomic(target, self.stamped().SerializeToString())
        return target


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_checked(report: Any, target: Path | None, data: bytes, failure: EdgernnError | None) -> Any:
    """The end of every command that writes a model after checking it (export's parity, quantize's
    accuracy): with a ``failure``, raise it with ``report`` attached (``failure.report``, for the
    CLI to print) and write nothing; else write ``data`` to ``target`` atomically (when given) and
    set ``report.path``."""
    if failure is not None:
        failure.report = report  # type: ignore[attr-defined]
        raise failure
    if target is not None:
        write_atomic(target, data)
        report.path = str(target)
    return report


def _shown(shape: Any) -> str:
    return "[" + ", ".join(shown(d) if isinstance(d, str) else str(d) for d in shape) + "]"


def _gib(size: int | float) -> str:
    """``size`` bytes in GiB, 3 digits."""
    try:
        return f"{size / 2**30:.3g}"
    except OverflowError:  # a declared shape can hold more bytes than a float
        from decimal import Decimal

        return f"{Decimal(size) / 2**30:.3g}"


def _parse(data: bytes, source: str) -> Any:
    import onnx

    try:
        return onnx.load_from_string(data)
    except Exception:
        raise ModelFileError(f"{source} is not an ONNX model (onnx.load could not parse it)") from None


def _ort_session(data: bytes) -> Any:
    # the ORT format's own flatbuffers reader (shipped with onnxruntime): metadata and I/O names
    # without building a session
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.InferenceSession import InferenceSession

    return InferenceSession.GetRootAsInferenceSession(data, 0).Model()


def _ort_metadata(data: bytes, source: str) -> dict[str, str]:
    try:
        model = _ort_session(data)
        return {model.MetadataProps(j).Key().decode(): model.MetadataProps(j).Value().decode()
                for j in range(model.MetadataPropsLength())}
    except Exception:
        raise ModelFileError(f"{source} is not a readable ORT-format model") from None


def _ort_io(data: bytes, source: str) -> tuple[list[str], list[str]]:
    try:
        graph = _ort_session(data).Graph()
        return ([graph.Inputs(j).decode() for j in range(graph.InputsLength())],
                [graph.Outputs(j).decode() for j in range(graph.OutputsLength())])
    except Exception:
        raise ModelFileError(f"{source} is not a readable ORT-format model") from None


__all__ = ["ModelFile", "ModelFileError", "is_ort_format", "sidecar_path", "CONTRACT_SUFFIX", "STATE_INIT_SUFFIX",
           "write_atomic", "write_checked"]
