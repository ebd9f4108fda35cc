"""A Triton Inference Server model repository for an edgernn file.

:func:`triton_repository` writes ``REPO/NAME/config.pbtxt`` and ``REPO/NAME/VERSION/model.onnx``
for Triton's ONNX Runtime backend (platform ``onnxruntime_onnx``). The config's
``sequence_batching`` keeps each stream's recurrent state inside Triton (*implicit state*): every
state pair of the contract becomes a ``state`` entry (graph input name, graph output name, data
type, dims without the batch axis) that starts from its init value (``initial_state``: zeros, or
the stored start value written to ``NAME/initial_state/``). The client sends only the data inputs
of one stream per request, with a sequence id and the start / end flags; Triton carries the state
between the requests of a sequence and batches the requests of different sequences.

Triton stacks the state of the sequences it batches along axis 0, so with ``max_batch_size > 0``
every state and every data input and output must have its batch axis first (export with
``--state-layout batch-major`` and batch-first inputs); ``max_batch_size=0`` serves any layout,
one sequence per model execution.

With ``controls=True`` (the default) the repository's model takes the sequence batcher's control
inputs ``START``, ``END``, ``READY`` (int32, 0 or 1) and ``CORRID`` (uint64), each ``[batch, 1]``:
the ONNX Runtime backend loads a model only when each control input the config declares is a
graph input of that shape. ``START`` is used: where it is 1, each state input is replaced by its
init value inside the graph, so a new sequence starts afresh whatever state tensor Triton hands
in. ``END``, ``READY`` and ``CORRID`` are accepted and not read (the state lives in Triton, which
frees it at the end of a sequence). With ``controls=False`` the model file is the input file
unchanged and the config declares no control inputs (the backend does not require them);
``initial_state`` alone then starts each sequence.

A chunk-mode file whose input strides over time (``frame_multiple`` > 1) takes a multiple of that
many frames per request, and an output with lookahead (``delay``) is that many frames behind: the
model file keeps both in its metadata, the report's entries and notes say them, and the config
says them in comment lines (Triton itself has no field for them; the client must send such
requests). A step-mode file with ``frame_multiple`` > 1 is refused.

``backend="python"`` writes a model for Triton's Python backend instead
(:mod:`edgernn.runtimes.triton_python`): the model keeps each sequence's state itself, by CORRID.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from edgernn.contract import BATCH, Contract, TensorSpec, write_metadata
from edgernn.errors import EdgernnError
from edgernn.modelfile import ModelFile
from edgernn.runtimes.triton_config import (INSTANCE_KINDS, TRITON_TYPES, config_text, raw_bytes, state_entry,
                                            tensor_entry, timing_notes)

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
INITIAL_STATE_DIR = "initial_state"
STRATEGIES = ("oldest", "direct")
#: ``onnxruntime``: Triton's ONNX Runtime backend, implicit state; ``python``: Triton's Python
#: backend running StreamBatcher, the state kept in the model by CORRID (runtimes/triton_python.py)
BACKENDS = ("onnxruntime", "python")
#: the control inputs (name, kind, numpy dtype) with ``controls=True``
CONTROLS = (
    ("START", "CONTROL_SEQUENCE_START", "int32"),
    ("END", "CONTROL_SEQUENCE_END", "int32"),
    ("READY", "CONTROL_SEQUENCE_READY", "int32"),
    ("CORRID", "CONTROL_SEQUENCE_CORRID", "uint64"),
)
TRITON_KEY = "edgernn.triton"
LAYOUT_FIX = 'export it with --state-layout batch-major (state_layout="batch-major" in Python)'
_NAME_OK = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class TritonError(EdgernnError):
    """The file cannot be served by Triton as asked, or the repository cannot be written."""


@dataclass
class TritonReport:
    """What :func:`triton_repository` wrote: paths, the config text, and how each state, control
    and data tensor is declared (``dims`` without the batch axis when ``max_batch_size > 0``)."""

    name: str
    version: int
    repository: str
    model_dir: str
    model_path: str
    config_path: str
    config_text: str
    max_batch_size: int
    strategy: str
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    controls: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    backend: str = "onnxruntime"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "backend": self.backend, "repository": self.repository,
                "model_dir": self.model_dir, "model_path": self.model_path, "config_path": self.config_path,
                "max_batch_size": self.max_batch_size, "strategy": self.strategy, "inputs": self.inputs,
                "outputs": self.outputs, "states": self.states, "controls": self.controls, "files": self.files,
                "notes": self.notes, "config": self.config_text}


def triton_repository(model: str | os.PathLike | Any, repo_dir: str | os.PathLike, *, name: str | None = None,
                      version: int = 1, max_batch_size: int = 64, strategy: str = "oldest",
                      max_sequence_idle_microseconds: int = 5_000_000, max_queue_delay_microseconds: int = 0,
                      max_candidate_sequences: int | None = None, instance_count: int = 1,
                      instance_kind: str = "cpu", controls: bool = True, overwrite: bool = False,
                      state_pairs: Mapping[str, str] | None = None, backend: str = "onnxruntime",
                      batch_streams: bool | None = None,
                      progress: Callable[[str], None] | None = None) -> TritonReport:
    """Write a Triton model repository entry that streams ``model`` with implicit state.

    Args:
        model: an edgernn ONNX file (path), ``onnx.ModelProto`` or :class:`~edgernn.modelfile.ModelFile`.
            A stateful file from another exporter (no edgernn metadata) is read with the inferred
            contract (``state_pairs``: graph input -> output names of its states, where the naming
            rule misses them) and written with its states renamed ``state_in.<name>`` /
            ``state_out.<name>`` (see docs/state-contract.md).
        repo_dir: the model repository (created if missing); the model goes to ``repo_dir/NAME``.
        name: the model's name (its folder); default: the file's stem.
        version: the version folder (an integer >= 1).
        max_batch_size: the most sequences Triton runs in one model execution (> 0 needs the
            batch axis first in every state, data input and output); 0 runs one sequence at a time
            and serves any layout.
        strategy: the sequence batcher's strategy, ``oldest`` (batches the oldest pending requests
            of up to ``max_candidate_sequences`` sequences) or ``direct`` (one batch slot per sequence).
        max_sequence_idle_microseconds: a sequence that sends nothing for this long is ended and
            its state dropped.
        max_queue_delay_microseconds: how long the batcher may wait for more requests to fill a batch.
        max_candidate_sequences: ``oldest`` only: the most sequences one instance streams at once
            (default ``max_batch_size``); more wait in a backlog until a sequence ends.
        instance_count, instance_kind: model instances and where they run: ``cpu``, ``gpu`` or
            ``auto`` (Triton's choice).
        controls: declare the control inputs START, END, READY, CORRID and give the model those
            inputs (START resets the state); ``False``: the model file unchanged, no control inputs.
        overwrite: replace an existing ``repo_dir/NAME`` folder (all its versions).
        backend: ``onnxruntime`` (this module: Triton holds the state) or ``python`` (Triton's
            Python backend runs StreamBatcher and the model holds each sequence's state:
            :func:`edgernn.runtimes.triton_python.python_repository`, any state layout).
        batch_streams: ``python`` only: run the requests of one execute call in one step (default:
            yes, except for a file that quantizes activations at run time).
        progress: called with the name of each stage.

    Raises :class:`TritonError` (one sentence: what does not fit and how to fix it).
    """
    say = progress or (lambda stage: None)
    say("read")
    mf = _load(model, state_pairs)
    source, stem = mf.source, mf.path.stem if mf.path is not None else None
    _check_options(version, max_batch_size, strategy, max_sequence_idle_microseconds, max_queue_delay_microseconds,
                   max_candidate_sequences, instance_count, instance_kind)
    if backend not in BACKENDS:
        raise TritonError(f"Triton backend {backend!r} is unknown; expected onnxruntime or python")
    if batch_streams is not None and backend != "python":
        raise TritonError("batch_streams applies to the python backend only; the ONNX Runtime backend runs what "
                          "Triton batches")
    model_name = _model_name(name, stem)
    repo = Path(repo_dir)
    if repo.exists() and not repo.is_dir():
        raise TritonError(f"model repository {repo} is a file; give a folder")
    target = repo / model_name
    if target.exists() and not overwrite:
        raise TritonError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it, or choose "
                          "another name")
    if backend == "python":
        from edgernn.runtimes.triton_python import python_repository

        return python_repository(mf, repo, target, model_name, version=version, max_batch_size=max_batch_size,
                                 strategy=strategy, max_sequence_idle_microseconds=max_sequence_idle_microseconds,
                                 max_queue_delay_microseconds=max_queue_delay_microseconds,
                                 max_candidate_sequences=max_candidate_sequences, instance_count=instance_count,
                                 instance_kind=instance_kind, controls=controls, overwrite=overwrite,
                                 batch_streams=batch_streams, say=say)

    say("check")
    notes: list[str] = []
    proto, contract = _contract(mf, notes)
    batched = max_batch_size > 0
    _check_contract(contract, source, batched)
    graph_inputs = {v.name: v for v in proto.graph.input}
    graph_outputs = {v.name: v for v in proto.graph.output}
    inputs = [tensor_entry(t, graph_inputs.get(t.name), batched, True) for t in contract.inputs]
    outputs = [tensor_entry(t, graph_outputs.get(t.name), batched, False) for t in contract.outputs]
    starts = _stored_starts(mf)
    states = [state_entry(s, batched, starts.get(s.name)) for s in contract.states]
    _check_pairing_order(contract, source)
    control_entries: list[dict[str, Any]] = []
    served = proto
    if controls:
        say("wrap")
        taken = {*graph_inputs, *graph_outputs}
        clash = sorted(n for n, _, _ in CONTROLS if n in taken)
        if clash:
            raise TritonError(f"{source} already has a graph input or output named {clash[0]!r}, the name of a "
                              "sequence control input; rename it, or pass controls=False (--no-controls)")
        control_entries = [{"name": n, "kind": k, "data_type": TRITON_TYPES[d], "dims": [1]} for n, k, d in CONTROLS]
        served = _with_controls(proto, contract, batched, starts)
        notes.append("the model takes the control inputs START, END, READY (int32 0/1) and CORRID (uint64); "
                      "START=1 resets every state to its start value in the graph, the others are not read")
    else:
        notes.append("no control inputs: each sequence starts from initial_state, which Triton feeds on its first "
                     "request")
    slots = (max_candidate_sequences or max(1, max_batch_size)) if strategy == "oldest" else max(1, max_batch_size)
    plural = "s" if instance_count > 1 else ""
    notes.append(f"{instance_count} instance{plural} of up to {slots} sequences each: {instance_count * slots} "
                 "streams at once; further sequences wait until one ends, or idles for "
                 f"max_sequence_idle_microseconds ({max_sequence_idle_microseconds} us)")
    if batched:
        notes.append("a request carries one stream: batch size 1 on axis 0 of every input and output; Triton "
                     f"batches up to {max_batch_size} sequences per execution")
    notes.extend(timing_notes(inputs, outputs))
    for s in states:
        if s["initial_state"].get("data_file"):
            notes.append(f"state {s['input_name']!r} starts from its stored start value "
                         f"({INITIAL_STATE_DIR}/{s['initial_state']['data_file']})")

    config = config_text(model_name, max_batch_size, inputs, outputs, states, control_entries, strategy,
                          max_sequence_idle_microseconds, max_queue_delay_microseconds, max_candidate_sequences,
                          instance_count, instance_kind, source)
    say("write")
    # the file as it is, byte for byte, when nothing in it changed
    unchanged = served is mf.proto and mf.path is not None and not mf.uses_external_data
    payload = mf.data if unchanged else served.SerializeToString()
    files = {CONFIG_FILE: config.encode(), f"{version}/{MODEL_FILE}": payload}
    for s in states:
        data_file = s["initial_state"].get("data_file")
        if data_file:
            files[f"{INITIAL_STATE_DIR}/{data_file}"] = raw_bytes(starts[s["state"]])
    _write_folder(repo, target, files, overwrite)
    return TritonReport(
        name=model_name, version=version, repository=str(repo), model_dir=str(target),
        model_path=str(target / str(version) / MODEL_FILE), config_path=str(target / CONFIG_FILE),
        config_text=config, max_batch_size=max_batch_size, strategy=strategy, inputs=inputs, outputs=outputs,
        states=[{k: v for k, v in s.items() if k != "state"} for s in states], controls=control_entries,
        files=[str(target / rel) for rel in files], notes=notes)


# ---------------------------------------------------------------- reading and checking

def _load(model: Any, state_pairs: Mapping[str, str] | None) -> ModelFile:
    try:
        return ModelFile.open(model, state_pairs=state_pairs)
    except EdgernnError as e:
        raise TritonError(str(e)) from None


def _check_options(version: Any, max_batch_size: Any, strategy: str, idle: Any, delay: Any, candidates: Any,
                   instance_count: Any, instance_kind: str) -> None:
    def whole(value: Any, what: str, least: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise TritonError(f"{what} must be an integer >= {least}, got {value!r}")

    whole(version, "version", 1)
    whole(max_batch_size, "max_batch_size", 0)
    whole(idle, "max_sequence_idle_microseconds", 1)
    whole(delay, "max_queue_delay_microseconds", 0)
    whole(instance_count, "instance_count", 1)
    if candidates is not None:
        whole(candidates, "max_candidate_sequences", 1)
    if strategy not in STRATEGIES:
        raise TritonError(f"sequence batching strategy {strategy!r} is unknown; expected oldest or direct")
    if candidates is not None and strategy != "oldest":
        raise TritonError("max_candidate_sequences applies to the oldest strategy only; with direct, each instance "
                          "streams max_batch_size sequences")
    if instance_kind not in INSTANCE_KINDS:
        raise TritonError(f"instance kind {instance_kind!r} is unknown; expected cpu, gpu or auto")


def _model_name(name: str | None, stem: str | None) -> str:
    if name is None:
        if stem is None:
            raise TritonError("give the model a name (name=...) when passing an onnx.ModelProto")
        name = re.sub(r"[^A-Za-z0-9_.\-]", "_", stem).lstrip(".") or "model"
    if not _NAME_OK.match(name) or name in (".", ".."):
        raise TritonError(f"model name {name!r} cannot be a Triton model folder; use letters, digits, '_', '-' "
                          "and '.' (not first)")
    return name


def _contract(mf: ModelFile, notes: list[str]) -> tuple[Any, Contract]:
    """The graph to serve and its contract: the file's own, or one stamped with the resolved contract."""
    if mf.contract_from == "metadata":
        return mf.with_weights(), mf.contract
    from edgernn.contract import read_metadata

    stamped = mf.stamped()
    notes.append(f"{mf.foreign_note}; the repository's model names its states state_in.<name> / state_out.<name>")
    return stamped, read_metadata(stamped, mf.source)


def _check_contract(contract: Contract, source: str, batched: bool) -> None:
    if contract.mode == "sequence":
        raise TritonError(f"{source} is a sequence-mode file (one call takes a whole sequence); export it in chunk or "
                          "step mode to stream it through Triton's sequence batcher")
    if not contract.states:
        raise TritonError(f"{source} has no recurrent state; Triton's sequence batcher is for stateful models (serve "
                          "it as a plain ONNX model)")
    for t in contract.inputs:
        if t.frame_multiple != 1 and (contract.mode == "step" or t.time_axis is None):
            raise TritonError(f"input {t.name!r} of {source} takes a multiple of {t.frame_multiple} frames per call "
                              "but has no time axis to carry them (a step-mode file takes one frame per request); "
                              "re-export it in chunk mode")
    for t in (*contract.inputs, *contract.outputs):
        if t.dtype not in TRITON_TYPES:
            raise TritonError(f"tensor {t.name!r} of {source} has dtype {t.dtype}, which Triton's ONNX Runtime "
                              f"backend does not take; expected one of {', '.join(TRITON_TYPES)}")
        if not t.shape:
            raise TritonError(f"tensor {t.name!r} of {source} is 0-d; edgernn declares only tensors with a batch or "
                              "feature axis to Triton")
        if batched and t.batch_axis != 0:
            where = "no batch axis" if t.batch_axis is None else f"its batch axis at {t.batch_axis}"
            raise TritonError(f"tensor {t.name!r} of {source} has {where} (shape {_show(t.shape)}); with "
                              "max_batch_size > 0 Triton batches every input and output along axis 0: export "
                              "with batch-first inputs (--batch-first, or --input NAME:DTYPE:B,T,...), or serve "
                              "it with max_batch_size=0")
    for s in contract.states:
        if s.dtype not in TRITON_TYPES:
            raise TritonError(f"state {s.name!r} of {source} has dtype {s.dtype}, which Triton's ONNX Runtime "
                              f"backend does not take; expected one of {', '.join(TRITON_TYPES)}")
        if batched and s.batch_axis != 0:
            where = "no batch axis" if s.batch_axis is None else f"its batch axis at {s.batch_axis}"
            raise TritonError(f"state {s.name!r} of {source} has {where} (shape {_show(s.shape)}), but Triton "
                              "stacks the states of the sequences it batches along axis 0: "
                              f"{LAYOUT_FIX}, or serve it with max_batch_size=0")
        rest = [d for k, d in enumerate(s.shape) if k != s.batch_axis]
        if any(not isinstance(d, (int, np.integer)) for d in rest):
            raise TritonError(f"state {s.name!r} of {source} has shape {_show(s.shape)}, with a dimension of "
                              "variable size besides the batch axis; Triton's initial_state needs fixed sizes")
        if batched and not rest:
            raise TritonError(f"state {s.name!r} of {source} has shape {_show(s.shape)}, nothing besides the batch "
                              "axis; Triton's implicit state needs at least one more dimension (triton#3901): "
                              "give the state a shape [batch, 1]")


def _check_pairing_order(contract: Contract, source: str) -> None:
    """Triton pairs a state's output with its input by rank in two sorted maps (triton#8586): the
    k-th state output name in sorted order updates the k-th state input in sorted order. With
    ``state_in.<name>`` / ``state_out.<name>`` the orders always agree; anything else is refused."""
    ins = sorted(s.input for s in contract.states)
    outs = sorted(s.output for s in contract.states)
    for s in contract.states:
        if ins.index(s.input) != outs.index(s.output):
            raise TritonError(f"state names of {source} sort differently as inputs and outputs ({s.input!r} -> "
                              f"{s.output!r}); Triton would swap the states (triton#8586): name the pairs "
                              "state_in.<name> / state_out.<name>")


def _show(shape: Any) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"




def _stored_starts(mf: ModelFile) -> dict[str, np.ndarray]:
    """Start values of states whose init names a graph initializer (size 1 on the batch axis)."""
    try:
        return mf.start_values()
    except EdgernnError as e:
        raise TritonError(str(e)) from None


# ---------------------------------------------------------------- the served model

def _with_controls(proto: Any, contract: Contract, batched: bool, starts: dict[str, np.ndarray]) -> Any:
    """A copy of ``proto`` with the control inputs (after the data inputs, before the states) and,
    for each state, ``Where(START, init, state_in)`` in front of every reader of the state input."""
    import onnx
    import onnx_ir as ir

    from edgernn.stamp import value_names

    model = ir.from_proto(proto)
    g = model.graph
    taken = value_names(proto) | {n.name for n in ir.traversal.RecursiveGraphIterator(g) if n.name}

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in taken:
            name, k = f"{base}.{k}", k + 1
        taken.add(name)
        return name

    def constant(value: np.ndarray, base: str) -> ir.Value:
        v = ir.Value(name=fresh(base), type=ir.TensorType(ir.DataType.from_numpy(value.dtype)),
                     shape=ir.Shape(value.shape), const_value=ir.tensor(value))
        g.register_initializer(v)
        return v

    lead: list[Any] = ["batch", 1] if batched else [1]
    controls = {n: ir.Value(name=n, type=ir.TensorType(ir.DataType.from_numpy(np.dtype(d))), shape=ir.Shape(lead))
                for n, _, d in CONTROLS}
    state_inputs = {s.input for s in contract.states}
    first_state = min((k for k, v in enumerate(g.inputs) if v.name in state_inputs), default=len(g.inputs))
    for k, v in enumerate(controls.values()):
        g.inputs.insert(first_state + k, v)

    new_nodes = [ir.node("Cast", [controls["START"]], {"to": ir.DataType.BOOL}, name=fresh("triton.start_cast"),
                         num_outputs=1)]
    new_nodes[0].outputs[0].name = fresh("triton.start_flag")
    conds: dict[int, ir.Value] = {}
    by_name = {v.name: v for v in g.inputs}
    for s in contract.states:
        rank = len(s.shape)
        if rank not in conds:
            shape = constant(np.array([-1] + [1] * (rank - 1) if batched else [1] * rank, np.int64),
                             f"triton.start_shape.{rank}")
            reshape = ir.node("Reshape", [new_nodes[0].outputs[0], shape], name=fresh(f"triton.start_reshape.{rank}"))
            reshape.outputs[0].name = fresh(f"triton.start_flag.{rank}")
            new_nodes.append(reshape)
            conds[rank] = reshape.outputs[0]
        if s.name in starts:
            init = g.initializers[s.init["initializer"]]  # type: ignore[index]
        else:
            init = constant(np.zeros((), np.dtype(s.dtype)), f"triton.zero.{s.name}")
        state_in = by_name[s.input]
        where = ir.node("Where", [conds[rank], init, state_in], name=fresh(f"triton.start_reset.{s.name}"))
        where.outputs[0].name = fresh(f"{s.input}.reset")
        # every reader of the state input (subgraphs too) reads the reset value instead
        state_in.replace_all_uses_with(where.outputs[0])
        where.replace_input_with(2, state_in)
        new_nodes.append(where)
    g.insert_before(g.node(0), new_nodes)
    out = ir.to_proto(model)

    control_specs = tuple(TensorSpec(n, (BATCH, 1) if batched else (1,), d, 0 if batched else None, None)
                          for n, _, d in CONTROLS)
    k = len(contract.inputs)
    served = Contract(contract.mode, contract.inputs[:k] + control_specs, contract.outputs, contract.states,
                      dict(contract.extra), contract.format)
    record = {"controls": {n: kind for n, kind, _ in CONTROLS},
              "note": "START=1 resets each state to its init value in the graph; END, READY, CORRID are not read"}
    write_metadata(out, Contract(served.mode, served.inputs, served.outputs, served.states,
                                 {**served.extra, TRITON_KEY: json.dumps(record)}, served.format))
    onnx.checker.check_model(out)
    return out




# ---------------------------------------------------------------- writing

def _write_folder(repo: Path, target: Path, files: dict[str, bytes], overwrite: bool) -> None:
    """Write ``files`` (relative path -> bytes) into a temporary folder next to ``target`` and
    rename it into place, so that Triton (polling the repository) never sees half a model."""
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TritonError(f"cannot create the model repository {repo} ({e.strerror or e})") from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=repo))
    old: Path | None = None
    try:
        umask = os.umask(0)
        os.umask(umask)
        for rel, data in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        for folder in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
            os.chmod(folder, 0o777 & ~umask)  # mkdtemp makes 0700; a server in a container may run as another user
        if target.exists() or target.is_symlink():
            if not overwrite:
                raise TritonError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it")
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=repo))
            old.rmdir()
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except OSError:
            if old is not None:
                os.replace(old, target)
                old = None
            raise
    except OSError as e:
        raise TritonError(f"cannot write {target} ({e.strerror or e})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


__all__ = ["triton_repository", "TritonReport", "TritonError", "CONTROLS", "TRITON_TYPES", "LAYOUT_FIX", "BACKENDS"]
