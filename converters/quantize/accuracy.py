"""The accuracy check of the quantizers: float and quantized model streamed side by side.

Data comes as *streams*: one dict per stream-batch, input name -> array in the model's input
layout with the time axis holding the whole stream (inputs that have no time axis take a leading
one) and the batch axis holding independent streams. :func:`load_streams` reads them from a
``.npy``/``.npz`` file, :func:`synthetic_streams` makes them up when the user has none, and
:func:`compare` runs both models over them, carrying state in each, and returns an
:class:`~edgernn.converters.quantize.report.AccuracyReport`.
"""

from __future__ import annotations


import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgernn.contract import BATCH, TIME, Contract, TensorSpec
from edgernn.converters.quantize.report import AccuracyReport, OutputAccuracy
from edgernn.errors import EdgernnError

Streams = list[dict[str, np.ndarray]]

# ops that pass integer ids through unchanged on their way to an embedding's Gather
_ID_PASSTHROUGH = {"Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Transpose"}
_AR_COEFFICIENT = 0.9  # correlation of neighbouring frames in synthetic float data
_DEFAULT_CHUNK = {"step": 1, "chunk": 100}
_MAX_STREAMS = 256  # more streams than this, and 8 times more than frames: the axes are swapped
SEQUENCE_FRAMES = 500
"""Sequence mode: the longest sequence fed in one call (a stream of 10,000 frames in one call
asked a stacked xLSTM-like model for 1.6 GB); longer streams go as consecutive sequences."""


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def is_setting(spec: TensorSpec) -> bool:
    """A rank-0 input (a sample rate, a threshold): in data, one value for every call (a 0-d
    array) or one per frame (along the stream's time axis), the value of a call's first frame."""
    return spec.time_axis is None and spec.batch_axis is None and len(spec.shape) == 0


def stream_shape(spec: TensorSpec) -> list:
    """The layout of a stream of ``spec``: the input's shape with ``time`` on its time axis (a
    leading ``time`` axis for inputs that have none)."""
    if spec.time_axis is None:
        return [TIME, *spec.shape]
    shape = list(spec.shape)
    shape[spec.time_axis] = TIME
    return shape


def _stream_time_axis(spec: TensorSpec) -> int:
    return 0 if spec.time_axis is None else spec.time_axis


def _stream_batch_axis(spec: TensorSpec) -> int | None:
    if spec.batch_axis is None:
        return None
    return spec.batch_axis + 1 if spec.time_axis is None else spec.batch_axis


def unsized_axis(contract: Contract) -> tuple[TensorSpec, int] | None:
    """The first data input, and its axis, whose size is neither fixed nor the batch or time axis
    (silero-vad's samples axis): no frame of it can be made up (:func:`synthetic_streams` would
    make it 1 long, which such a model rarely takes: a reflect pad fails on one sample)."""
    for spec in contract.inputs:
        for axis, d in enumerate(spec.shape):
            if not isinstance(d, int) and d not in (BATCH, TIME):
                return spec, axis
    return None


WINDOW_SIZES = (512, 256, 1024, 160, 320, 400, 480, 576, 640, 128, 64, 32, 16)
"""Sizes tried, in order, for an :func:`unsized_axis` when frames are made up: audio windows first
(512 samples is 32 ms at 16 kHz, silero-vad's window; 160/320/400/480/640 are 10-40 ms windows)."""


@dataclass
class FrameSizes:
    """Sizes for the free axes of made-up frames, found by :func:`frame_sizes`."""

    size: int | None = None  # every free axis takes it; None: the model has none
    note: str = ""


def frame_sizes(contract: Contract, model: Any, source: str) -> FrameSizes:
    """The size made-up frames take on each :func:`unsized_axis` (silero-vad's samples axis): the
    first of :data:`WINDOW_SIZES` that the float ``model`` (bytes or a ModelProto) takes in one call
    of made-up data. No axis of the kind: ``FrameSizes()``. None taken: :class:`EdgernnError` asking
    for real frames in one sentence."""
    found = unsized_axis(contract)
    if found is None:
        return FrameSizes()
    spec, axis = found
    session = _open(model, "float")
    proto = model if hasattr(model, "graph") else None
    multiple = max(session.frame_multiple, 1)
    for size in WINDOW_SIZES:
        feeds = synthetic_streams(contract, multiple, seed=0, model=proto, free_size=size)[0]
        try:
            session.reset()
            session.step(**_call(contract.inputs, feeds, 0, multiple, multiple))
        except Exception:  # onnxruntime raises several types for a shape the graph cannot take
            continue
        return FrameSizes(size, f"input {spec.name!r} has no fixed size on axis {axis} ({spec.shape[axis]!r}): made-up "
                                f"frames are {size} long there, the first of {', '.join(map(str, WINDOW_SIZES))} that "
                                "the float model takes; pass --data with real frames")
    shown = "[" + ", ".join(str(d) for d in stream_shape(spec)) + "]"
    raise EdgernnError(f"input {spec.name!r} of {source} has no fixed size on axis {axis} ({spec.shape[axis]!r}, "
                       "neither its batch nor its time axis), and the float model takes none of the sizes tried for "
                       f"made-up frames ({', '.join(map(str, WINDOW_SIZES))}); pass --data FILE (.npy, or .npz by "
                       f"input name) with real frames, shaped {shown}")


def synthetic_streams(contract: Contract, steps: int, streams: int = 1, seed: int = 0,
                      model: Any = None, free_size: int | None = None) -> Streams:
    """Made-up streams for the accuracy check when the user gives no data: ``streams`` independent
    streams of ``steps`` frames, in one stream-batch.

    Float inputs get AR(1) noise of unit variance (neighbouring frames correlate by 0.9, so the
    signal is smooth like features of audio or sensor data rather than white noise). Integer inputs
    get random ids in ``[0, vocab)``, where ``vocab`` is read from ``model`` (an
    ``onnx.ModelProto``) when the input feeds a ``Gather`` over an initializer (an embedding),
    else ``[0, 2)``. Bool inputs get random bits. An axis of no fixed size but batch and time takes
    ``free_size`` (see :func:`frame_sizes`), else 1.
    """
    if steps < 1:
        raise EdgernnError(f"synthetic streams need at least 1 step, got {steps}")
    if streams < 1:
        raise EdgernnError(f"synthetic streams need at least 1 stream, got {streams}")
    rng = np.random.default_rng(seed)
    vocab = _embedding_sizes(model) if model is not None else {}
    out: dict[str, np.ndarray] = {}
    for spec in contract.inputs:
        shape = [] if is_setting(spec) else stream_shape(spec)  # a setting: one value for the whole stream
        concrete = [steps if d == TIME else streams if d == BATCH else d if isinstance(d, int) else free_size or 1
                    for d in shape]
        dtype = _numpy_dtype(spec)
        if dtype.kind == "f" and is_setting(spec):
            out[spec.name] = np.ones((), dtype)
        elif dtype.kind == "f":
            out[spec.name] = _ar1(rng, concrete, _stream_time_axis(spec)).astype(dtype)
        elif dtype.kind == "b":
            out[spec.name] = rng.integers(0, 2, concrete).astype(dtype)
        else:
            out[spec.name] = rng.integers(0, vocab.get(spec.name, 2), concrete).astype(dtype)
    return [out]


def _ar1(rng: np.random.Generator, shape: Sequence[int], axis: int) -> np.ndarray:
    """Unit-variance AR(1) noise along ``axis``: x[t] = a x[t-1] + sqrt(1 - a^2) e[t]."""
    a = _AR_COEFFICIENT
    noise = rng.standard_normal(shape)
    noise = np.moveaxis(noise, axis, 0)
    x = np.empty_like(noise)
    x[0] = noise[0]
    scale = np.sqrt(1.0 - a * a)
    for t in range(1, x.shape[0]):
        x[t] = a * x[t - 1] + scale * noise[t]
    return np.moveaxis(x, 0, axis)


def _embedding_sizes(model: Any) -> dict[str, int]:
    """Graph input -> number of rows of the embedding table it indexes (a Gather whose data is an
    initializer, reached through ops that pass ids through unchanged)."""
    graph = model.graph
    tables = {t.name: list(t.dims) for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    sizes: dict[str, int] = {}
    for graph_input in graph.input:
        seen, todo = set(), [graph_input.name]
        while todo and graph_input.name not in sizes:
            tensor = todo.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            for node, index in consumers.get(tensor, []):
                if node.op_type == "Gather" and index == 1 and node.input[0] in tables:
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    dims = tables[node.input[0]]
                    sizes[graph_input.name] = int(dims[axis])
                    break
                if node.op_type in _ID_PASSTHROUGH and index == 0:
                    todo.extend(node.output)
    return sizes


def load_streams(path: str | os.PathLike, contract: Contract, what: str = "calibration") -> Streams:
    """Read streams from ``path``: a ``.npy`` array (models with one data input) or a ``.npz``
    with one array per input, named as the inputs, each in the model's input layout with the time
    axis holding the stream (any length) and the batch axis holding independent streams.

    ``what`` names the data in error messages (``calibration`` or ``data``). Every fixed dimension
    and the dtype are checked against the contract; a mismatch raises :class:`EdgernnError` naming
    the array, the expected and the actual shape or dtype.
    """
    p = Path(path)
    if not p.is_file():
        raise EdgernnError(f"{what} file {p} does not exist or is not a file")
    try:
        loaded = np.load(p, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            arrays = None
        else:
            with loaded:
                arrays = {k: loaded[k] for k in loaded.files}
    except Exception:  # numpy raises several types (and refuses pickled objects)
        raise EdgernnError(f"{what} file {p} is not a .npy or .npz array file (numpy cannot read it)") from None
    names = [spec.name for spec in contract.inputs]
    if arrays is None:
        if len(names) != 1:
            raise EdgernnError(f"{what} file {p} holds one array but the model takes {len(names)} inputs "
                               f"({', '.join(names)}); give a .npz with one array named as each input")
        arrays = {names[0]: loaded}
    else:
        unknown = sorted(set(arrays) - set(names))
        if unknown:
            raise EdgernnError(f"{what} file {p} has an array {unknown[0]!r} that is not an input of the model; "
                               f"its inputs are {', '.join(names)}")
        missing = [n for n in names if n not in arrays]
        if missing:
            raise EdgernnError(f"{what} file {p} has no array {missing[0]!r}; give one array per input "
                               f"({', '.join(names)})")
    lengths, batches = {}, {}
    for spec in contract.inputs:
        arr = arrays[spec.name]
        _check_stream(what, spec, arr)
        if arr.ndim == 0:  # a setting given once
            continue
        lengths[spec.name] = arr.shape[_stream_time_axis(spec)]
        b = _stream_batch_axis(spec)
        if b is not None:
            batches[spec.name] = arr.shape[b]
    if len(set(lengths.values())) > 1:
        raise EdgernnError(f"{what} arrays have streams of different lengths ({_pairs(lengths)}); "
                           "every input needs the same number of frames")
    if len(set(batches.values())) > 1:
        raise EdgernnError(f"{what} arrays hold different numbers of streams ({_pairs(batches)}); "
                           "every input needs the same batch size")
    frames, streams = next(iter(lengths.values()), 1), next(iter(batches.values()), 1)
    if streams > _MAX_STREAMS and streams > 8 * frames:
        name = next(iter(batches))
        spec = next(t for t in contract.inputs if t.name == name)
        raise EdgernnError(f"{what} array {name!r} holds {streams} streams of {frames} frame(s) (the contract's batch "
                           f"axis is axis {_stream_batch_axis(spec)} of the array, its time axis "
                           f"axis {_stream_time_axis(spec)}): the data's axes contradict the contract; "
                           f"give the array as {'[' + ', '.join(str(d) for d in stream_shape(spec)) + ']'}")
    if next(iter(lengths.values()), 1) == 0:
        raise EdgernnError(f"{what} array {names[0]!r} has no frames (its time axis has length 0)")
    return [arrays]


def _numpy_dtype(spec: TensorSpec) -> np.dtype:
    """The numpy dtype of a tensor of the contract (which names dtypes as numpy does); float32 for
    one numpy does not know (bfloat16)."""
    try:
        return np.dtype(spec.dtype)
    except TypeError:
        return np.dtype(np.float32)


def _check_stream(what: str, spec: TensorSpec, arr: np.ndarray) -> None:
    want = stream_shape(spec)
    shown = "[" + ", ".join(str(d) for d in want) + "]"
    if arr.dtype != _numpy_dtype(spec):
        raise EdgernnError(f"{what} array {spec.name!r} has dtype {arr.dtype}; expected {spec.dtype}")
    if is_setting(spec) and arr.ndim == 0:
        return
    if arr.ndim != len(want):
        raise EdgernnError(f"{what} array {spec.name!r} has shape {list(arr.shape)}; expected {shown} "
                           f"({len(want)} axes, time on axis {_stream_time_axis(spec)}"
                           + (", or a 0-d array: one value for every call)" if is_setting(spec) else ")"))
    for axis, (got, dim) in enumerate(zip(arr.shape, want)):
        if isinstance(dim, int) and got != dim:
            raise EdgernnError(f"{what} array {spec.name!r} has shape {list(arr.shape)}; expected {shown} "
                               f"(axis {axis} must be {dim})")
    from edgernn.runtimes.session import first_nonfinite, kind_of

    at = first_nonfinite(arr)
    if at is not None:
        # calibration ranges and accuracy figures from NaN or infinity mean nothing, and
        # onnxruntime's recurrent kernels do not propagate NaN as PyTorch does
        raise EdgernnError(f"{what} array {spec.name!r} holds {kind_of(arr, at)} at index {list(at)} (frame "
                           f"{at[_stream_time_axis(spec)]}); give finite data")


def _pairs(d: Mapping[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in d.items())


# ---------------------------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------------------------

@dataclass
class _OutputStats:
    """Running error statistics and decision agreement of one output."""

    spec: TensorSpec
    max_abs: float = 0.0
    sum_abs: float = 0.0
    count: int = 0
    scale: float = 0.0
    ref_min: float = np.inf
    ref_max: float = -np.inf
    is_float: bool = True
    class_axis: int | None = None  # argmax over this axis (the last one) when it has size > 1
    agree: dict[str, int] = field(default_factory=lambda: {"argmax": 0, "threshold 0.5": 0, "threshold 0": 0})
    decisions: int = 0

    def update(self, ref: np.ndarray, cand: np.ndarray) -> None:
        if ref.size == 0:
            return
        if ref.shape != cand.shape:
            raise EdgernnError(f"output {self.spec.name!r} has shape {list(cand.shape)} in the quantized model "
                               f"but {list(ref.shape)} in the float model")
        r = ref.astype(np.float64)
        err = np.abs(cand.astype(np.float64) - r)
        if not np.all(np.isfinite(err)):  # NaN or inf in either model: no bound holds
            err = np.where(np.isfinite(err), err, np.inf)
        self.max_abs = max(self.max_abs, float(err.max()))
        self.sum_abs += float(err.sum())
        self.count += err.size
        self.scale = max(self.scale, float(np.abs(r).max()))
        self.ref_min = min(self.ref_min, float(r.min()))
        self.ref_max = max(self.ref_max, float(r.max()))
        self.is_float = np.issubdtype(ref.dtype, np.floating)
        if not self.is_float:
            return
        last = len(self.spec.shape) - 1  # the same axis in a stacked array of per-call outputs
        if last >= 0 and last not in (self.spec.time_axis, self.spec.batch_axis) and ref.shape[-1] > 1:
            self.class_axis = last
            self.agree["argmax"] += int(np.sum(ref.argmax(axis=-1) == cand.argmax(axis=-1)))
            self.decisions += ref.size // ref.shape[-1]
        else:
            self.agree["threshold 0.5"] += int(np.sum((ref > 0.5) == (cand > 0.5)))
            self.agree["threshold 0"] += int(np.sum((ref > 0) == (cand > 0)))
            self.decisions += ref.size

    def result(self) -> OutputAccuracy:
        mean = self.sum_abs / self.count if self.count else 0.0
        decision = agreement = None
        if self.is_float and self.decisions:
            if self.class_axis is not None:
                decision = "argmax"
            elif self.ref_min >= 0.0 and self.ref_max <= 1.0:
                decision = "threshold 0.5"  # probabilities
            else:
                decision = "threshold 0"  # logits
            agreement = self.agree[decision] / self.decisions
        return OutputAccuracy(self.spec.name, self.max_abs, mean, self.scale, decision, agreement)


def _open(model: Any, role: str):
    from edgernn.runtimes.session import StreamingSession

    if hasattr(model, "SerializeToString"):  # an onnx.ModelProto
        model = model.SerializeToString()
    try:
        return StreamingSession(model, threads=1)
    except EdgernnError as e:
        raise EdgernnError(f"the {role} model cannot be streamed: {e}") from None


def compare(reference: Any, candidate: Any, streams: Sequence[Mapping[str, np.ndarray]], *,
            chunk: int | None = None, data_source: str) -> AccuracyReport:
    """Stream ``streams`` through ``reference`` (the float model) and ``candidate`` (the quantized
    one) side by side and measure how far the candidate's outputs and final state drift.

    Both models are paths, serialized bytes or ``onnx.ModelProto``s following the same contract.
    Each stream-batch starts from the init state in both; it is fed ``chunk`` frames per call
    (default: 1 in step mode, 100 in chunk mode, sequences of at most :data:`SEQUENCE_FRAMES` in
    sequence mode, the report's notes say so) and each model
    carries its own state. Per output the report holds the max and mean abs error, the scale
    (max |reference|) and, for float outputs, how often the per-frame decision agrees: argmax over
    the last axis when it has more than one entry, else a threshold of 0.5 when the reference lies
    within [0, 1] (probabilities) and 0 otherwise (logits). ``state_errors`` is the max abs error
    of each state at the end of the streams. ``data_source`` says where the data came from.
    """
    ref = _open(reference, "float")
    cand = _open(candidate, "quantized")
    _check_same_contract(ref.contract, cand.contract)
    if not streams:
        raise EdgernnError("no data to compare the models on (no streams given)")
    mode = ref.contract.mode
    if chunk is not None and chunk < 1:
        raise EdgernnError(f"chunk must be at least 1 frame, got {chunk}")
    if mode == "step" and chunk not in (None, 1):
        raise EdgernnError(f"the model was exported in step mode and takes one frame per call; "
                           f"use chunk 1, not {chunk}")
    per_frame = [spec.name for spec in ref.inputs if spec.time_axis is None and not is_setting(spec)]
    if per_frame and chunk not in (None, 1):
        raise EdgernnError(f"input {per_frame[0]!r} has no time axis, so the model takes one frame per call; "
                           f"use chunk 1, not {chunk}")
    stats = {spec.name: _OutputStats(spec) for spec in ref.outputs}
    state_errors = {s.name: 0.0 for s in ref.states}
    lengths, total_streams, chunks, notes = [], 0, [], []
    times: tuple[list, list] = ([], [])
    for data in streams:
        feeds = _stream_feeds(ref.contract, data)
        total = _length(ref.contract, feeds)
        size = chunk or (1 if per_frame else _DEFAULT_CHUNK.get(mode, min(total, SEQUENCE_FRAMES)))
        if mode == "sequence" and chunk is None and total > size and not notes:
            notes.append(f"sequence mode: each stream of {total:,} frames was fed as consecutive sequences of at most "
                         f"{size} frames, state carried (bounded memory; --chunk sets the length)")
        multiple = ref.frame_multiple
        if multiple > 1:
            if chunk is not None and chunk % multiple:
                raise EdgernnError(f"chunk {chunk} is not a multiple of {multiple}, the frames the model takes per "
                                   f"call; use a multiple of {multiple}")
            size, total = whole_calls(size, total, multiple)
            if total == 0:
                raise EdgernnError(f"the streams are shorter than {multiple} frames, the frames the model takes per "
                                   "call")
        lengths.append(total)
        chunks.append(min(size, total))
        total_streams += _batch(ref.contract, feeds)
        ref.reset()
        cand.reset()
        _run_side_by_side(ref, cand, feeds, total, size, stats, times)
        ref_state, cand_state = ref.state, cand.state
        for name in state_errors:
            diff = np.abs(cand_state[name].astype(np.float64) - ref_state[name])
            worst = float(diff.max()) if np.all(np.isfinite(diff)) else float("inf")
            state_errors[name] = max(state_errors[name], worst)
    p50 = [float(np.median(t)) * 1e6 if t else None for t in times]
    return AccuracyReport(data_source=data_source, steps=max(lengths), streams=total_streams, chunk=max(chunks),
                          outputs=[s.result() for s in stats.values()], state_errors=state_errors,
                          float_call_us=p50[0], quantized_call_us=p50[1], notes=notes)


def whole_calls(size: int, total: int, multiple: int) -> tuple[int, int]:
    """A model that strides over time (or works in blocks) takes whole multiples of ``multiple``
    frames per call: ``size`` rounded up to one, and ``total`` cut down to one."""
    return -(-size // multiple) * multiple, total - total % multiple


def _check_same_contract(ref: Contract, cand: Contract) -> None:
    for what, a, b in (("inputs", ref.inputs, cand.inputs), ("outputs", ref.outputs, cand.outputs),
                       ("states", ref.states, cand.states)):
        names_a, names_b = [t.name for t in a], [t.name for t in b]
        if names_a != names_b:
            raise EdgernnError(f"the quantized model's {what} are {names_b} but the float model's are {names_a}; "
                               "both must follow the same contract")
    if ref.mode != cand.mode:
        raise EdgernnError(f"the quantized model is in {cand.mode} mode but the float model in {ref.mode} mode")


def _stream_feeds(contract: Contract, data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [spec.name for spec in contract.inputs]
    missing = [n for n in names if n not in data]
    if missing:
        raise EdgernnError(f"the data has no array {missing[0]!r}; the model's inputs are {', '.join(names)}")
    return {n: np.asarray(data[n]) for n in names}


def _length(contract: Contract, feeds: Mapping[str, np.ndarray]) -> int:
    lengths = {spec.name: feeds[spec.name].shape[_stream_time_axis(spec)] for spec in contract.inputs
               if feeds[spec.name].ndim}  # a setting given once has no frames
    if len(set(lengths.values())) > 1:
        raise EdgernnError(f"the data's inputs have different stream lengths ({_pairs(lengths)})")
    if not lengths:
        raise EdgernnError("the data holds no stream: every input is a single value")
    total = next(iter(lengths.values()))
    if total == 0:
        raise EdgernnError(f"data array {next(iter(lengths))!r} has no frames (its time axis has length 0)")
    return total


def _batch(contract: Contract, feeds: Mapping[str, np.ndarray]) -> int:
    for spec in contract.inputs:
        axis = _stream_batch_axis(spec)
        if axis is not None:
            return int(feeds[spec.name].shape[axis])
    return 1


_FLUSH = 256  # calls whose outputs are gathered before the statistics are updated (numpy per call is slow)


def _run_side_by_side(ref, cand, feeds: Mapping[str, np.ndarray], total: int, size: int,
                      stats: Mapping[str, _OutputStats], times: tuple[list, list]) -> None:
    """Feed both models call by call; ``times`` gathers the seconds of each call of each (the two
    run alternately, so both see the same machine state)."""
    import time

    specs = ref.contract.inputs
    pending: dict[str, tuple[list, list]] = {name: ([], []) for name in stats}
    for n, start in enumerate(range(0, total, size)):
        call = _call(specs, feeds, start, size, total)
        t0 = time.perf_counter()
        out_ref = ref.step(**call)
        t1 = time.perf_counter()
        out_cand = cand.step(**call)
        times[0].append(t1 - t0)
        times[1].append(time.perf_counter() - t1)
        for name, (a, b) in pending.items():
            a.append(out_ref[name])
            b.append(out_cand[name])
        if (n + 1) % _FLUSH == 0:
            _flush(pending, stats)
    _flush(pending, stats)


def _call(specs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray], start: int, size: int,
          total: int) -> dict[str, np.ndarray]:
    """The inputs of the call that takes frames ``start`` to ``start + size`` of the streams."""
    call = {}
    for spec in specs:
        arr = feeds[spec.name]
        if arr.ndim == 0:  # a setting given once
            call[spec.name] = arr
        elif spec.time_axis is None:  # a per-frame model (or a setting per frame): the call's first frame
            call[spec.name] = arr[start]
        else:
            index = [slice(None)] * arr.ndim
            index[spec.time_axis] = slice(start, min(start + size, total))
            call[spec.name] = arr[tuple(index)]
    return call


def _flush(pending: Mapping[str, tuple[list, list]], stats: Mapping[str, _OutputStats]) -> None:
    for name, (a, b) in pending.items():
        if not a:
            continue
        spec = stats[name].spec
        if spec.time_axis is not None and all(x.ndim > spec.time_axis for x in a):
            ref, cand = np.concatenate(a, axis=spec.time_axis), np.concatenate(b, axis=spec.time_axis)
        else:  # an output without time: one value per call
            ref, cand = np.stack(a), np.stack(b)
        stats[name].update(ref, cand)
        a.clear()
        b.clear()
