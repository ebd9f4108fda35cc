"""One file, every runtime: :func:`check` streams the same frames through each runtime a user will
meet and reports, side by side, whether it ran, how far its numbers are from onnxruntime's (and
from PyTorch's, with ``against``) and how long a call takes.

The runtimes (:data:`RUNTIMES`, written as their users write a streaming loop: see
:mod:`edgernn.runtimes.check_runners`):

``ort``       onnxruntime on the CPU, the reference (always run)
``openvino``  OpenVINO's CPU plugin (``pip install openvino``, or ``edgernn[openvino]``)
``tract``     tract's Python bindings (``pip install tract``, or ``edgernn[tract]``)
``node``      edgernn-web with onnxruntime-node (Node.js 18+, ``npm ci`` in runtimes/web)
``web``       edgernn-web with onnxruntime-web (WASM) in headless Chromium (and Chromium)

A runtime that is not installed is listed with the command that installs it; one that cannot
load or run the file is listed with the reason, in one sentence, and, where an edgernn option
avoids the failure, the option to use (:attr:`RuntimeCheck.hint`).

How it runs:

1. **Frames**: ``data`` (a ``.npy``, or a ``.npz`` by input name, in the model's input layout with
   the stream along the time axis, as ``edgernn quantize --data`` takes them), else ``frames``
   frames of smooth random noise (AR(1), the accuracy check's synthetic streams; ids below the
   vocabulary size for an embedding's input), cut into calls of ``chunk`` frames.
2. **Parity**: every runtime streams all calls from the file's start states (zeros, or the values
   stored in the file), carrying its own state; every call's outputs and the final states are
   compared with onnxruntime's: the largest absolute difference, and the same relative to
   ``max(1, max |reference|)`` of each tensor, which must stay within ``tolerance`` for a float32
   file (a quantized or float16 file's differences are reported, not judged: its runtimes may
   round activations differently). With ``against``, each is compared with PyTorch too.
3. **Latency**: ``rounds`` interleaved rounds (every runtime once per round, in a rotating order,
   so that drift of the machine hits all alike); in each, a runtime makes a few untimed calls,
   then streams every call again from the start states, each call timed. p50 and p99 are over
   all timed calls (``calls x rounds`` per runtime).
"""

from __future__ import annotations

import gc
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edgernn.contract import Contract
from edgernn.errors import EdgernnError
from edgernn.modelfile import ModelFile
from edgernn.runtimes.check_runners import (NODE, OPENVINO, ORT, PYTORCH, TRACT, WEB, JsLoop, Loop, NotInstalled,
                                            OpenVinoLoop, OrtLoop, Streamed, TorchLoop, TractLoop, first_line)

RUNTIMES = (ORT, OPENVINO, TRACT, NODE, WEB)
DEFAULT_FRAMES = 200
TOLERANCE = 1e-4  # largest difference from onnxruntime, relative to max(1, |reference|), of a float32 file
SETTLE = 5  # untimed calls at the start of each runtime's turn in a round
LOAD_OPTIONS = ("class_path", "config", "allow_pickle", "nonlinearity", "batch_first")


class CheckError(EdgernnError):
    """The check cannot run as asked (bad settings, data that does not fit the file)."""


@dataclass
class RuntimeCheck:
    """One runtime's result. ``ran`` False: ``reason`` says why (and ``install`` how to install it
    when it is missing; ``hint`` what edgernn option avoids the failure, when one does).
    Deviations are the largest absolute difference over every call's outputs and the final
    states; ``relative_deviation`` divides each tensor's by ``max(1, max |reference|)``."""

    name: str
    ran: bool
    label: str = ""
    reason: str | None = None
    install: str | None = None
    hint: str | None = None
    max_deviation: float | None = None  # from onnxruntime CPU
    relative_deviation: float | None = None
    deviation_at: str | None = None  # the output or state where it is largest
    pytorch_deviation: float | None = None  # from PyTorch (``against``)
    within_tolerance: bool | None = None  # None: not judged (the reference itself, reduced precision, not run)
    p50_us: float | None = None
    p99_us: float | None = None
    mean_us: float | None = None
    timed_calls: int = 0
    notes: list[str] = field(default_factory=list)
    latencies_us: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    @property
    def status(self) -> str:
        """``reference``, ``ok``, ``differs``, ``reported`` (not judged), ``failed`` or ``not installed``."""
        if not self.ran:
            return "not installed" if self.install else "failed"
        if self.name == ORT:
            return "reference"
        if self.within_tolerance is None:
            return "reported"
        return "ok" if self.within_tolerance else "differs"

    def to_json(self, latencies: bool = False) -> dict:
        d = {"name": self.name, "ran": self.ran, "status": self.status, "label": self.label, "reason": self.reason,
             "install": self.install, "hint": self.hint, "max_deviation": self.max_deviation,
             "relative_deviation": self.relative_deviation, "deviation_at": self.deviation_at,
             "pytorch_deviation": self.pytorch_deviation, "within_tolerance": self.within_tolerance,
             "p50_us": self.p50_us, "p99_us": self.p99_us, "mean_us": self.mean_us, "timed_calls": self.timed_calls,
             "notes": list(self.notes)}
        if latencies:
            d["latencies_us"] = [float(v) for v in self.latencies_us]
        return d


@dataclass
class CheckReport:
    """What :func:`check` found: one :class:`RuntimeCheck` per runtime asked for (onnxruntime
    first; PyTorch last, with ``against``)."""

    model: str
    mode: str
    reduced_precision: bool
    frames: int
    chunk: int
    batch: int
    calls: int
    rounds: int
    threads: int
    tolerance: float
    data_source: str
    runtimes: list[RuntimeCheck]
    against: str | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def runtime(self, name: str) -> RuntimeCheck:
        for r in self.runtimes:
            if r.name == name:
                return r
        raise KeyError(f"no runtime {name!r} in this report; it has {', '.join(r.name for r in self.runtimes)}")

    @property
    def ran(self) -> list[str]:
        return [r.name for r in self.runtimes if r.ran]

    @property
    def differing(self) -> list[RuntimeCheck]:
        """Runtimes that ran but whose numbers are outside the tolerance (float32 files only)."""
        return [r for r in self.runtimes if r.within_tolerance is False]

    @property
    def passed(self) -> bool:
        return not self.differing

    def to_json(self, latencies: bool = False) -> dict:
        return {"model": self.model, "mode": self.mode, "reduced_precision": self.reduced_precision,
                "frames": self.frames, "chunk": self.chunk, "batch": self.batch, "calls": self.calls,
                "rounds": self.rounds, "threads": self.threads, "tolerance": self.tolerance,
                "data_source": self.data_source, "against": self.against, "passed": self.passed,
                "runtimes": [r.to_json(latencies) for r in self.runtimes], "environment": dict(self.environment),
                "notes": list(self.notes)}


def parse_runtimes(runtimes: str | Sequence[str] | None) -> list[str]:
    """``"ort,tract"`` or ``["ort", "tract"]`` -> the runtimes in :data:`RUNTIMES` order, ``ort``
    always among them (the reference); ``None``: all of them."""
    if runtimes is None:
        return list(RUNTIMES)
    names = _given(runtimes)
    if not names:
        raise CheckError(f"no runtime given; choose from {', '.join(RUNTIMES)}")
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown:
        raise CheckError(f"unknown runtime {unknown[0]!r}; choose from {', '.join(RUNTIMES)} (comma-separated)")
    return [n for n in RUNTIMES if n == ORT or n in names]


def check(model: str | os.PathLike | ModelFile, *, runtimes: str | Sequence[str] | None = None,
          frames: int | None = None, chunk: int | None = None, data: str | os.PathLike | None = None,
          against: str | os.PathLike | None = None, threads: int = 1, rounds: int = 3,
          tolerance: float = TOLERANCE, state_pairs: Mapping[str, str] | None = None,
          progress: Callable[[str], None] | None = None, **load_options: Any) -> CheckReport:
    """Stream the same frames through ``model`` in each of ``runtimes`` (see the module docstring)
    and report, per runtime, whether it ran, its deviation from onnxruntime (and from the PyTorch
    model file ``against``, read by :func:`edgernn.load` with ``load_options``: ``class_path``,
    ``config``, ``allow_pickle``, ``nonlinearity``, ``batch_first``), and its latency per call.

    Args:
        runtimes: names from :data:`RUNTIMES` (a list or a comma-separated string); default all.
            onnxruntime always runs: it is the reference.
        frames: frames streamed (default :data:`DEFAULT_FRAMES`, or the whole ``data`` stream).
        chunk: frames per call (default 1; the file's frame multiple for a file that strides over
            time; the whole stream for a sequence-mode file).
        data: a ``.npy``/``.npz`` file of streams (see the module docstring), instead of random frames.
        threads: intra-op threads of each runtime (and of PyTorch).
        rounds: interleaved timing rounds; each streams every call once per runtime.
        tolerance: the largest relative deviation from onnxruntime a float32 file may show.
        state_pairs: graph input -> output names of the states, for a file without edgernn metadata.
        progress: called with the stage (``"load tract"``, ``"stream tract"``, ``"round 1/3"``...).

    Raises:
        CheckError: bad settings, or data that does not fit the file.
        ModelFileError, ContractError: the file cannot be read or its contract resolved.
        MismatchError: ``against`` does not have the file's inputs and states.

    A runtime that is missing, or cannot load or run the file, does not raise: its
    :class:`RuntimeCheck` says why. Numbers outside the tolerance do not raise either:
    :attr:`CheckReport.passed` is False and :attr:`CheckReport.differing` names them.
    """
    names = parse_runtimes(runtimes)
    for what, value, low in (("frames", frames, 1), ("chunk", chunk, 1), ("threads", threads, 1),
                             ("rounds", rounds, 1)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            raise CheckError(f"{what} must be an integer of at least {low}, got {value!r}")
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0 and math.isfinite(tolerance)):
        raise CheckError(f"tolerance must be a number of at least 0, got {tolerance!r}")
    unknown = sorted(set(load_options) - set(LOAD_OPTIONS))
    if unknown:
        raise CheckError(f"unknown option {unknown[0]!r}; the model file options are {', '.join(LOAD_OPTIONS)}")
    load_options = {k: v for k, v in load_options.items() if v is not None}
    if load_options and against is None:
        verb = "applies" if len(load_options) == 1 else "apply"
        raise CheckError(f"{', '.join(sorted(load_options))} {verb} only to a PyTorch model file, and none was given "
                         "(against=)")
    mf = ModelFile.open(model, state_pairs=state_pairs)
    if mf.path is None:
        raise CheckError("check runs a model file in several runtimes; give its path (or a ModelFile opened from one)")
    if mf.is_ort:
        raise CheckError(f"{mf.source} is an ORT-format model, which only onnxruntime reads; check the .onnx file it "
                         "was made from")
    contract = mf.contract
    streams, source = _streams(mf, contract, data, frames)
    calls, chunk, total, batch = _calls(mf, contract, streams, chunk)
    init = _start_states(mf, contract, batch)
    notes: list[str] = []
    if mf.foreign_note:
        notes.append(mf.foreign_note)
    if runtimes is not None and ORT not in _given(runtimes):
        notes.append("onnxruntime runs too: it is the reference the others are compared with")
    from edgernn.runtimes.bench import _environment, _reduced_precision

    reduced = _reduced_precision(mf)
    shapes = {**{t.name: tuple(calls[0][t.name].shape) for t in contract.inputs},
              **{s.input: tuple(init[s.name].shape) for s in contract.states}}
    say = progress or (lambda stage: None)
    results: dict[str, RuntimeCheck] = {}
    loops: dict[str, Loop] = {}
    previous_threads = None
    try:
        for name in names:
            say(f"load {name}")
            try:
                loops[name] = _open(name, mf, contract, init, calls, batch, chunk, threads, shapes)
                results[name] = RuntimeCheck(name, True, loops[name].label, notes=list(loops[name].notes))
            except NotInstalled as e:
                if name == ORT:
                    raise
                results[name] = RuntimeCheck(name, False, reason=f"{e}", install=e.install)
            except Exception as e:
                if name == ORT:
                    raise
                results[name] = RuntimeCheck(name, False, reason=_sentence(e), hint=_hint(name, str(e), mf))
        if against is not None:
            import torch

            from edgernn.runtimes.bench_runners import eager_runner

            say("load pytorch")
            previous_threads = torch.get_num_threads()
            torch.set_num_threads(threads)
            torch_notes: list[str] = []
            runner, _ = eager_runner(Path(against), contract, str(mf.path), batch, init, load_options, torch_notes)
            loops[PYTORCH] = TorchLoop(runner, contract, torch_notes)
            results[PYTORCH] = RuntimeCheck(PYTORCH, True, loops[PYTORCH].label, notes=list(torch_notes))
        streamed: dict[str, Streamed] = {}
        for name, loop in list(loops.items()):
            say(f"stream {name}")
            try:
                streamed[name] = loop.stream(calls)
            except Exception as e:
                if name == ORT:
                    raise EdgernnError(f"onnxruntime cannot stream {mf.source}: {first_line(e)}") from None
                _failed(results[name], loops.pop(name), e, mf)
        reference = streamed[ORT]
        for name in list(loops):
            r = results[name]
            try:
                if name != ORT:
                    r.max_deviation, r.relative_deviation, r.deviation_at = _compare(reference, streamed[name],
                                                                                     contract, name)
                    if not reduced:
                        r.within_tolerance = r.relative_deviation <= tolerance
                if PYTORCH in streamed and name != PYTORCH:
                    r.pytorch_deviation = _compare(streamed[PYTORCH], streamed[name], contract, name)[0]
            except _ShapeDiffers as e:
                _failed(r, loops.pop(name), e, mf)
        if PYTORCH in results:
            results[PYTORCH].pytorch_deviation = 0.0
        _time(loops, results, calls, rounds, say, mf)
    finally:
        for loop in loops.values():
            loop.close()
        if previous_threads is not None:
            import torch

            torch.set_num_threads(previous_threads)
    if reduced:
        notes.append(f"{mf.path.name} is quantized or float16: its runtimes' deviations are reported, not judged "
                     "(they may round activations differently)")
    else:
        notes.append(f"tolerance: {tolerance:g} of max(1, |onnxruntime's value|), over every call's outputs and the "
                     "final states")
    ordered = [results[n] for n in [*names, PYTORCH] if n in results]
    env = _environment(against is not None)
    env.update({r.name: r.label for r in ordered if r.ran and r.name not in (ORT, PYTORCH)})
    return CheckReport(str(mf.path), contract.mode, reduced, total, chunk, batch, len(calls), rounds, threads,
                       float(tolerance), source, ordered, str(against) if against is not None else None, env, notes)


def _given(runtimes: str | Sequence[str]) -> list[str]:
    items = runtimes.split(",") if isinstance(runtimes, str) else list(runtimes)
    return [str(n).strip().lower() for n in items if str(n).strip()]


# ---------------------------------------------------------------- data


def _streams(mf: ModelFile, contract: Contract, data: str | os.PathLike | None,
             frames: int | None) -> tuple[dict[str, np.ndarray], str]:
    from edgernn.converters.quantize.accuracy import _stream_time_axis, frame_sizes, load_streams, synthetic_streams

    if not contract.inputs:
        raise CheckError(f"{mf.source} has no data inputs to stream")
    if data is not None:
        streams = load_streams(data, contract, "data")[0]
        total = next(iter(streams.values())).shape[_stream_time_axis(contract.inputs[0])]
        if frames is not None and frames < total:
            streams = {t.name: np.take(streams[t.name], range(frames), axis=_stream_time_axis(t))
                       for t in contract.inputs}
            return streams, f"{data} (its first {frames} of {total} frames)"
        return streams, str(data)
    free = frame_sizes(contract, mf.proto, mf.source)
    n = frames or DEFAULT_FRAMES
    made = synthetic_streams(contract, n, 1, seed=0, model=mf.proto, free_size=free.size)[0]
    return made, f"{n} frames of random data (seed 0)" + (f"; {free.note}" if free.note else "")


def _calls(mf: ModelFile, contract: Contract, streams: Mapping[str, np.ndarray],
           chunk: int | None) -> tuple[list[dict[str, np.ndarray]], int, int, int]:
    """The calls (data inputs by name), the frames per call, the frames streamed and the batch."""
    from edgernn.converters.quantize.accuracy import _stream_batch_axis, _stream_time_axis

    first = contract.inputs[0]
    total = streams[first.name].shape[_stream_time_axis(first)]
    batch_of = [streams[t.name].shape[_stream_batch_axis(t)] for t in contract.inputs
                if _stream_batch_axis(t) is not None]
    batch = batch_of[0] if batch_of else 1
    per_frame = [t.name for t in contract.inputs if t.time_axis is None]
    multiple = max([t.frame_multiple for t in contract.inputs], default=1)
    if chunk is None:
        chunk = total if contract.mode == "sequence" else 1 if (contract.mode == "step" or per_frame) else multiple
    if contract.mode == "step" and chunk != 1:
        raise CheckError(f"{mf.source} was exported in step mode and takes one frame per call, so chunk must be 1, "
                         f"not {chunk}")
    if per_frame and chunk != 1:
        raise CheckError(f"input {per_frame[0]!r} of {mf.source} has no time axis, so the model takes one frame per "
                         f"call; chunk must be 1, not {chunk}")
    if chunk % multiple:
        raise CheckError(f"chunk {chunk} is not a multiple of {multiple}, the frames {mf.source} takes per call (it "
                         "strides over time or works in blocks of frames)")
    usable = total - total % chunk
    if usable == 0:
        raise CheckError(f"the stream has {total} frame{'s' if total != 1 else ''}, fewer than one call of {chunk}; "
                         "stream more frames or use a smaller chunk")
    calls = []
    for start in range(0, usable, chunk):
        call = {}
        for t in contract.inputs:
            arr = streams[t.name]
            if t.time_axis is None:
                call[t.name] = np.ascontiguousarray(arr[start])
            else:
                index = [slice(None)] * arr.ndim
                index[t.time_axis] = slice(start, start + chunk)
                call[t.name] = np.ascontiguousarray(arr[tuple(index)])
        calls.append(call)
    return calls, chunk, usable, batch


def _start_states(mf: ModelFile, contract: Contract, batch: int) -> dict[str, np.ndarray]:
    """Each state's start value for ``batch`` streams (zeros, or the value stored in the file)."""
    stored = mf.start_values()
    out = {}
    for s in contract.states:
        if s.name in stored:
            value = stored[s.name]
            reps = [batch if k == s.batch_axis else 1 for k in range(value.ndim)]
            out[s.name] = np.tile(value, reps) if s.batch_axis is not None else value.copy()
        else:
            out[s.name] = np.zeros(s.concrete_shape(batch), dtype=np.dtype(s.dtype))
    return out


# ---------------------------------------------------------------- runtimes


def _open(name: str, mf: ModelFile, contract: Contract, init: Mapping[str, np.ndarray], calls, batch: int,
          chunk: int, threads: int, shapes: Mapping[str, tuple[int, ...]]) -> Loop:
    if name == ORT:
        return OrtLoop(mf, contract, init, threads)
    if name == OPENVINO:
        return OpenVinoLoop(mf, contract, init, threads, shapes)
    if name == TRACT:
        return TractLoop(mf, contract, init, batch, chunk)
    return JsLoop(name, mf, contract, calls, batch, threads)


RUNTIME_NAMES = {ORT: "onnxruntime", OPENVINO: "OpenVINO", TRACT: "tract", NODE: "the node runtime",
                 WEB: "the web runtime", PYTORCH: "PyTorch"}


def _sentence(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text if isinstance(e, EdgernnError) else first_line(e)


def _failed(result: RuntimeCheck, loop: Loop, e: BaseException, mf: ModelFile) -> None:
    loop.close()
    result.ran = False
    result.reason = (f"{RUNTIME_NAMES[result.name]} loaded {mf.path.name} but failed while streaming it: "
                     f"{_sentence(e)}" if not isinstance(e, _ShapeDiffers) else str(e))
    result.hint = _hint(result.name, str(e), mf)
    result.max_deviation = result.relative_deviation = result.pytorch_deviation = None
    result.within_tolerance = None


def _custom_ops(mf: ModelFile) -> list[str]:
    """``domain::Op`` of every node outside the ONNX standard domain (onnxruntime's contrib ops)."""
    found: set[str] = set()
    graphs = [mf.proto.graph]
    while graphs:
        g = graphs.pop()
        for node in g.node:
            if node.domain not in ("", "ai.onnx"):
                found.add(f"{node.domain}::{node.op_type}")
            for a in node.attribute:
                if a.HasField("g"):
                    graphs.append(a.g)
                graphs.extend(a.graphs)
    return sorted(found)


RECURRENT_OPS = ("GRU", "LSTM", "RNN")


def _hint(name: str, message: str, mf: ModelFile) -> str | None:
    """What edgernn offers that avoids this failure (``None`` when nothing does)."""
    custom = _custom_ops(mf)
    if custom and (any(op.split("::")[1] in message for op in custom) or "Unimplemented" in message):
        ops = ", ".join(op.split("::")[1] for op in custom)
        return (f"the file uses onnxruntime's contrib ops ({ops}), which {RUNTIME_NAMES[name]} may lack: quantize "
                "with `edgernn quantize --method static`, which writes standard QuantizeLinear/DequantizeLinear ops "
                "around MatMul cells")
    for op in RECURRENT_OPS:
        if f"({op})" in message or f" {op} " in message or f"'{op}'" in message:
            if mf.contract.mode == "step":
                return (f"{RUNTIME_NAMES[name]} fails on the ONNX {op} op: export with `--cells matmul` (MatMul "
                        "cells, standard ops only)")
    if name == TRACT and "Scan" in message and "unify" in message:
        return ("re-export the model with this version of edgernn: its export gives each Scan output that the body "
                "also reads its own Identity, which tract needs")
    return None


# ---------------------------------------------------------------- numbers


class _ShapeDiffers(EdgernnError):
    pass


def _compare(reference: Streamed, got: Streamed, contract: Contract, name: str) -> tuple[float, float, str]:
    """(largest |difference|, largest |difference| / max(1, max |reference|) of its tensor, where)."""
    worst = (0.0, 0.0, "")
    ref_calls, got_calls = reference[0], got[0]
    if len(ref_calls) != len(got_calls):
        raise _ShapeDiffers(f"{RUNTIME_NAMES[name]} returned {len(got_calls)} calls' outputs for {len(ref_calls)} calls")
    pairs = []
    for j, t in enumerate(contract.outputs):
        a = [c[j] for c in ref_calls]
        b = [c[j] for c in got_calls]
        for k, (x, y) in enumerate(zip(a, b)):
            if x.shape != y.shape:
                raise _ShapeDiffers(f"{RUNTIME_NAMES[name]} gives output {t.name!r} of call {k} the shape "
                                    f"{list(y.shape)}, onnxruntime {list(x.shape)}")
        pairs.append((f"output {t.name}", a, b))
    for s in contract.states:
        x, y = reference[1][s.name], got[1][s.name]
        if x.shape != y.shape:
            raise _ShapeDiffers(f"{RUNTIME_NAMES[name]} gives state {s.name!r} the shape {list(y.shape)}, onnxruntime "
                                f"{list(x.shape)}")
        pairs.append((f"state {s.name}", [x], [y]))
    for what, a, b in pairs:
        if not a or not a[0].size:
            continue
        try:
            x, y = np.stack(a).astype(np.float64), np.stack(b).astype(np.float64)
        except ValueError:  # calls of different shapes
            x = np.concatenate([v.astype(np.float64).ravel() for v in a])
            y = np.concatenate([v.astype(np.float64).ravel() for v in b])
        d = np.abs(x - y)
        dev = float(d.max()) if np.all(np.isfinite(d)) else float("inf")
        scale = float(np.max(np.abs(x[np.isfinite(x)]))) if np.isfinite(x).any() else 0.0
        rel = dev / max(1.0, scale)
        if (rel, dev) > (worst[1], worst[0]):
            worst = (dev, rel, what)
    return worst


def _time(loops: dict[str, Loop], results: dict[str, RuntimeCheck], calls, rounds: int,
          say: Callable[[str], None], mf: ModelFile) -> None:
    latencies: dict[str, list[int]] = {name: [] for name in loops}
    order = list(loops)
    for k in range(rounds):
        say(f"round {k + 1}/{rounds}")
        shift = k % len(order)
        for name in order[shift:] + order[:shift]:
            if name not in loops:
                continue
            gc_was_enabled = gc.isenabled()
            gc.collect()
            gc.disable()
            try:
                loops[name].time(calls, SETTLE, latencies[name])
            except Exception as e:
                if name == ORT:
                    raise EdgernnError(f"onnxruntime failed while timing: {first_line(e)}") from None
                _failed(results[name], loops.pop(name), e, mf)
            finally:
                if gc_was_enabled:
                    gc.enable()
    for name in loops:
        lat = np.asarray(latencies[name], dtype=np.float64) / 1e3
        r = results[name]
        r.p50_us, r.p99_us = (float(v) for v in np.percentile(lat, [50, 99]))
        r.mean_us, r.timed_calls, r.latencies_us = float(lat.mean()), int(lat.size), lat


__all__ = ["check", "CheckReport", "RuntimeCheck", "CheckError", "RUNTIMES", "TOLERANCE", "DEFAULT_FRAMES",
           "parse_runtimes"]
