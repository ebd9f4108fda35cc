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
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgernn.contract import BATCH, Contract, StateSpec, TensorSpec, write_metadata
from edgernn.errors import EdgernnError

PLATFORM = "onnxruntime_onnx"
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
INITIAL_STATE_DIR = "initial_state"
STRATEGIES = ("oldest", "direct")
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU", "auto": "KIND_AUTO"}
#: numpy dtype name -> Triton model-config data type (those the ONNX Runtime backend accepts)
TRITON_TYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
}
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

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "repository": self.repository,
                "model_dir": self.model_dir, "model_path": self.model_path, "config_path": self.config_path,
                "max_batch_size": self.max_batch_size, "strategy": self.strategy, "inputs": self.inputs,
                "outputs": self.outputs, "states": self.states, "controls": self.controls, "files": self.files,
                "notes": self.notes, "config": self.config_text}


def triton_repository(model: str | os.PathLike | Any, repo_dir: str | os.PathLike, *, name: str | None = None,
                      version: int = 1, max_batch_size: int = 64, strategy: str = "oldest",
                      max_sequence_idle_microseconds: int = 5_000_000, max_queue_delay_microseconds: int = 0,
                      max_candidate_sequences: int | None = None, instance_count: int = 1,
                      instance_kind: str = "cpu", controls: bool = True, overwrite: bool = False,
                      progress: Callable[[str], None] | None = None) -> TritonReport:
    """Write a Triton model repository entry that streams ``model`` with implicit state.

    Args:
        model: an edgernn ONNX file (path) or ``onnx.ModelProto``. A stateful file from another
            exporter (no edgernn metadata) is read with the inferred contract and written with its
            states renamed ``state_in.<name>`` / ``state_out.<name>`` (see docs/state-contract.md).
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
        progress: called with the name of each stage.

    Raises :class:`TritonError` (one sentence: what does not fit and how to fix it).
    """
    say = progress or (lambda stage: None)
    say("read")
    loaded, source, stem = _load(model)
    _check_options(version, max_batch_size, strategy, max_sequence_idle_microseconds, max_queue_delay_microseconds,
                   max_candidate_sequences, instance_count, instance_kind)
    model_name = _model_name(name, stem)
    repo = Path(repo_dir)
    if repo.exists() and not repo.is_dir():
        raise TritonError(f"model repository {repo} is a file; give a folder")
    target = repo / model_name
    if target.exists() and not overwrite:
        raise TritonError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it, or choose "
                          "another name")

    say("check")
    notes: list[str] = []
    proto, contract = _contract(loaded, source, notes)
    batched = max_batch_size > 0
    _check_contract(contract, source, batched)
    graph_inputs = {v.name: v for v in proto.graph.input}
    graph_outputs = {v.name: v for v in proto.graph.output}
    inputs = [_tensor_entry(t, graph_inputs.get(t.name), batched, True) for t in contract.inputs]
    outputs = [_tensor_entry(t, graph_outputs.get(t.name), batched, False) for t in contract.outputs]
    starts = _stored_starts(proto, contract, source)
    states = [_state_entry(s, batched, starts.get(s.name)) for s in contract.states]
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
    notes.extend(_timing(inputs, outputs))
    for s in states:
        if s["initial_state"].get("data_file"):
            notes.append(f"state {s['input_name']!r} starts from its stored start value "
                         f"({INITIAL_STATE_DIR}/{s['initial_state']['data_file']})")

    config = _config_text(model_name, max_batch_size, inputs, outputs, states, control_entries, strategy,
                          max_sequence_idle_microseconds, max_queue_delay_microseconds, max_candidate_sequences,
                          instance_count, instance_kind, source)
    say("write")
    # the file as it is, byte for byte, when nothing in it changed
    unchanged = served is loaded and isinstance(model, (str, os.PathLike))
    payload = Path(model).read_bytes() if unchanged else served.SerializeToString()
    files = {CONFIG_FILE: config.encode(), f"{version}/{MODEL_FILE}": payload}
    for s in states:
        data_file = s["initial_state"].get("data_file")
        if data_file:
            files[f"{INITIAL_STATE_DIR}/{data_file}"] = _raw_bytes(starts[s["state"]])
    _write_folder(repo, target, files, overwrite)
    return TritonReport(
        name=model_name, version=version, repository=str(repo), model_dir=str(target),
        model_path=str(target / str(version) / MODEL_FILE), config_path=str(target / CONFIG_FILE),
        config_text=config, max_batch_size=max_batch_size, strategy=strategy, inputs=inputs, outputs=outputs,
        states=[{k: v for k, v in s.items() if k != "state"} for s in states], controls=control_entries,
        files=[str(target / rel) for rel in files], notes=notes)


# ---------------------------------------------------------------- reading and checking

def _load(model: Any) -> tuple[Any, str, str | None]:
    """(ModelProto, how to name it in messages, file stem or None)."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model, "the model", None
    if not isinstance(model, (str, os.PathLike)):
        raise TritonError(f"expected an ONNX file path or an onnx.ModelProto, got {type(model).__name__}")
    from edgernn.api import read_onnx

    return read_onnx(model), str(model), Path(model).stem


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


def _contract(proto: Any, source: str, notes: list[str]) -> tuple[Any, Contract]:
    from edgernn.contract import infer_contract, read_metadata, with_contract

    if any(p.key == "edgernn.format" for p in proto.metadata_props):
        return proto, read_metadata(proto, source)
    contract = infer_contract(proto, source=source)
    stamped = with_contract(proto, contract, source)
    pairs = ", ".join(f"{s.input} -> {s.output}" for s in contract.states)
    notes.append(f"{source} has no edgernn metadata: contract inferred from the graph ({pairs}); the repository's "
                 "model names its states state_in.<name> / state_out.<name>")
    return stamped, read_metadata(stamped, source)


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


# ---------------------------------------------------------------- config entries

def _graph_dims(value_info: Any, rank: int) -> list[int] | None:
    """The graph's declared dims (-1 where not fixed), or None when it declares no shape of ``rank``."""
    if value_info is None or not value_info.type.HasField("tensor_type"):
        return None
    tt = value_info.type.tensor_type
    if not tt.HasField("shape") or len(tt.shape.dim) != rank:
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tt.shape.dim]


def _tensor_entry(t: TensorSpec, value_info: Any, batched: bool, is_input: bool) -> dict[str, Any]:
    """A config ``input`` / ``output`` entry. Dims are the graph's (what the backend compares,
    exactly for outputs) with ``time`` and other symbols -1; the batch axis is left out when
    batching, else fixed at 1 for inputs (one sequence per execution) and -1 for outputs."""
    declared = _graph_dims(value_info, len(t.shape))
    dims = []
    for k, d in enumerate(t.shape):
        if k == t.batch_axis:
            if batched:
                continue
            dims.append(1 if is_input else -1)
        elif declared is not None:
            dims.append(declared[k])
        else:
            dims.append(int(d) if isinstance(d, (int, np.integer)) else -1)
    entry = {"name": t.name, "data_type": TRITON_TYPES[t.dtype], "dims": dims,
             "time_axis": t.time_axis, "batch_axis": t.batch_axis}
    if is_input and t.frame_multiple != 1:
        entry["frame_multiple"] = t.frame_multiple
    if not is_input and t.delay:
        entry["delay"] = t.delay
    return entry


def _timing(inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> list[str]:
    """What a client must know about strides and lookahead over time (config comments and notes)."""
    lines = [f"input {e['name']!r}: each request carries a multiple of {e['frame_multiple']} frames (the model "
             "strides over time)" for e in inputs if e.get("frame_multiple", 1) != 1]
    lines += [f"output {e['name']!r}: {e['delay']} frame{'s' if e['delay'] > 1 else ''} of lookahead (delay): frame t "
              f"of a sequence's output is the model's frame t - {e['delay']}" for e in outputs if e.get("delay")]
    return lines


def _state_entry(s: StateSpec, batched: bool, start: np.ndarray | None) -> dict[str, Any]:
    dims = [1 if k == s.batch_axis else int(d) for k, d in enumerate(s.shape) if not (batched and k == s.batch_axis)]
    initial: dict[str, Any] = {"name": s.name, "data_type": TRITON_TYPES[s.dtype], "dims": list(dims)}
    if start is None:
        initial["zero_data"] = True
    else:
        initial["data_file"] = _file_name(s.name)
    return {"state": s.name, "input_name": s.input, "output_name": s.output, "data_type": TRITON_TYPES[s.dtype],
            "dims": dims, "initial_state": initial}


def _file_name(state: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", state) + ".bin"


def _stored_starts(proto: Any, contract: Contract, source: str) -> dict[str, np.ndarray]:
    """Start values of states whose init names a graph initializer (size 1 on the batch axis)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    out: dict[str, np.ndarray] = {}
    for s in contract.states:
        if s.init == "zeros":
            continue
        ref = s.init.get("initializer") if isinstance(s.init, dict) else None
        if ref is None:
            raise TritonError(f"state {s.name!r} of {source} has init {s.init!r}; expected \"zeros\" or "
                              "{\"initializer\": NAME}")
        if ref not in inits:
            raise TritonError(f"{source} names initializer {ref!r} as the start value of state {s.name!r}, but has "
                              "no such initializer")
        value = numpy_helper.to_array(inits[ref]).astype(s.dtype)
        want = s.concrete_shape(1)
        if value.shape != want:
            raise TritonError(f"start value {ref!r} of state {s.name!r} has shape {list(value.shape)}; expected "
                              f"{list(want)} (the state's shape with size 1 on the batch axis)")
        out[s.name] = value
    return out


def _raw_bytes(value: np.ndarray) -> bytes:
    """Row-major little-endian bytes, as Triton reads an initial_state data_file."""
    return np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()


# ---------------------------------------------------------------- the served model

def _with_controls(proto: Any, contract: Contract, batched: bool, starts: dict[str, np.ndarray]) -> Any:
    """A copy of ``proto`` with the control inputs (after the data inputs, before the states) and,
    for each state, ``Where(START, init, state_in)`` in front of every reader of the state input."""
    import onnx
    from onnx import helper, numpy_helper

    from edgernn.foreign import _all_value_names, _rename_values

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    taken = _all_value_names(g) | {n.name for n in g.node}

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in taken:
            name, k = f"{base}.{k}", k + 1
        taken.add(name)
        return name

    lead: list[Any] = ["batch", 1] if batched else [1]
    controls = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(d)), lead)
                for n, _, d in CONTROLS]
    first_state = min((k for k, v in enumerate(g.input) if v.name in {s.input for s in contract.states}),
                      default=len(g.input))
    items = [type(v)() for v in g.input]
    for c, v in zip(items, g.input):
        c.CopyFrom(v)
    del g.input[:]
    g.input.extend(items[:first_state] + controls + items[first_state:])

    new_nodes = []
    flag = fresh("triton.start_flag")
    new_nodes.append(helper.make_node("Cast", ["START"], [flag], name=fresh("triton.start_cast"),
                                      to=onnx.TensorProto.BOOL))
    conds: dict[int, str] = {}
    for s in contract.states:
        rank = len(s.shape)
        if rank not in conds:
            shape_name = fresh(f"triton.start_shape.{rank}")
            target = [-1] + [1] * (rank - 1) if batched else [1] * rank
            g.initializer.append(numpy_helper.from_array(np.array(target, np.int64), shape_name))
            conds[rank] = fresh(f"triton.start_flag.{rank}")
            new_nodes.append(helper.make_node("Reshape", [flag, shape_name], [conds[rank]],
                                              name=fresh(f"triton.start_reshape.{rank}")))
        if s.name in starts:
            init_name = s.init["initializer"]  # type: ignore[index]
        else:
            init_name = fresh(f"triton.zero.{s.name}")
            g.initializer.append(numpy_helper.from_array(np.zeros((), np.dtype(s.dtype)), init_name))
        reset = fresh(f"{s.input}.reset")
        _rename_values(g, {s.input: reset})
        for v in g.input:  # the graph input keeps its name: Triton feeds it by name
            if v.name == reset:
                v.name = s.input
        new_nodes.append(helper.make_node("Where", [conds[rank], init_name, s.input], [reset],
                                          name=fresh(f"triton.start_reset.{s.name}")))
    nodes = [type(n)() for n in g.node]
    for c, n in zip(nodes, g.node):
        c.CopyFrom(n)
    del g.node[:]
    g.node.extend(new_nodes + nodes)

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


# ---------------------------------------------------------------- config.pbtxt

def _q(text: str) -> str:
    """A protobuf text-format string literal."""
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + out.replace("\t", "\\t") + '"'


def _dims(dims: list[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]" if dims else "[ ]"


def _config_text(name: str, max_batch_size: int, inputs: list[dict], outputs: list[dict], states: list[dict],
                 controls: list[dict], strategy: str, idle: int, delay: int, candidates: int | None,
                 instance_count: int, instance_kind: str, source: str) -> str:
    from edgernn import __version__

    lines = [f"# Triton model configuration written by edgernn {__version__} from {Path(source).name}.",
             "# Each sequence's recurrent state stays in Triton (sequence_batching.state: implicit state).",
             *(f"# {line}" for line in _timing(inputs, outputs)),
             f"name: {_q(name)}", f"platform: {_q(PLATFORM)}", f"max_batch_size: {max_batch_size}"]

    def tensors(key: str, entries: list[dict]) -> None:
        lines.append(f"{key} [")
        for k, e in enumerate(entries):
            lines.append("  {")
            lines.append(f"    name: {_q(e['name'])}")
            lines.append(f"    data_type: {e['data_type']}")
            lines.append(f"    dims: {_dims(e['dims'])}")
            lines.append("  }" + ("," if k < len(entries) - 1 else ""))
        lines.append("]")

    tensors("input", inputs)
    tensors("output", outputs)
    lines.append("sequence_batching {")
    lines.append(f"  max_sequence_idle_microseconds: {idle}")
    if strategy == "oldest":
        lines.append("  oldest {")
        lines.append(f"    max_candidate_sequences: {candidates or max(1, max_batch_size)}")
    else:
        lines.append("  direct {")
    lines.append(f"    max_queue_delay_microseconds: {delay}")
    lines.append("  }")
    if controls:
        lines.append("  control_input [")
        for k, c in enumerate(controls):
            lines.append("    {")
            lines.append(f"      name: {_q(c['name'])}")
            lines.append("      control [")
            lines.append("        {")
            lines.append(f"          kind: {c['kind']}")
            if c["kind"] == "CONTROL_SEQUENCE_CORRID":
                lines.append(f"          data_type: {c['data_type']}")
            else:
                lines.append("          int32_false_true: [ 0, 1 ]")
            lines.append("        }")
            lines.append("      ]")
            lines.append("    }" + ("," if k < len(controls) - 1 else ""))
        lines.append("  ]")
    lines.append("  state [")
    for k, s in enumerate(states):
        init = s["initial_state"]
        lines.append("    {")
        lines.append(f"      input_name: {_q(s['input_name'])}")
        lines.append(f"      output_name: {_q(s['output_name'])}")
        lines.append(f"      data_type: {s['data_type']}")
        lines.append(f"      dims: {_dims(s['dims'])}")
        lines.append("      initial_state: {")
        lines.append(f"        data_type: {init['data_type']}")
        lines.append(f"        dims: {_dims(init['dims'])}")
        if init.get("zero_data"):
            lines.append("        zero_data: true")
        else:
            lines.append(f"        data_file: {_q(init['data_file'])}")
        lines.append(f"        name: {_q(init['name'])}")
        lines.append("      }")
        lines.append("    }" + ("," if k < len(states) - 1 else ""))
    lines.append("  ]")
    lines.append("}")
    lines.append("instance_group [")
    lines.append("  {")
    lines.append(f"    count: {instance_count}")
    lines.append(f"    kind: {INSTANCE_KINDS[instance_kind]}")
    lines.append("  }")
    lines.append("]")
    return "\n".join(lines) + "\n"


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


__all__ = ["triton_repository", "TritonReport", "TritonError", "CONTROLS", "TRITON_TYPES", "LAYOUT_FIX"]
