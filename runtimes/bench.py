"""Latency, throughput and memory of a streaming ONNX file, against the baselines a user would write.

:func:`bench` times, in one process and in interleaved rounds (every runtime runs once per round,
in a rotating order, so drift of the machine hits all of them alike):

``edgernn``
    :meth:`StreamingSession.step <edgernn.runtimes.session.StreamingSession.step>`, one call per
    ``chunk`` frames of ``batch`` streams.
``onnxruntime loop``
    the loop a user writes without edgernn over the same file: ``ort.InferenceSession`` with
    default ``SessionOptions`` except ``intra_op_num_threads``, ``sess.run(None, feeds)``, the
    new states fed back by name from the file's contract.
``pytorch eager`` (with ``against=MODEL.pt``)
    the PyTorch model in ``torch.inference_mode`` on ``threads`` threads, streaming with its state
    carried: a bare ``nn.RNN``/``nn.GRU``/``nn.LSTM`` is called directly (``y, h = m(x, h)``);
    other models run through the exporter's state lifter (the wrapper that feeds each lifted
    state into its layer), which adds some Python work per call.
``plain export loop`` (with ``baseline_onnx=FILE``)
    the onnxruntime loop over another file, e.g. a plain ``torch.onnx.export`` of the same layer
    that takes ``(x, h[, c])``: its inputs after the data inputs are the states, paired with its
    outputs after the data outputs in the same order, and matched to the contract's states by
    name where the names allow it (``h`` -> ``gru.h``), else by position.

Before timing, a reference model is checked against the file: same input feature sizes, same
state names and shapes, and 8 frames through both from the same start state; the largest
absolute difference of outputs and final states is reported, and above ``1e-3`` it is an error
unless the file is quantized or float16 (then it is only reported).

Latencies are per call, in microseconds, after ``warmup`` untimed calls per runtime (and a few
more, at most :data:`SETTLE`, at the start of each runtime's turn in a round: the first calls after
switching runtimes meet cold caches); the report keeps every call's latency for :func:`plot`.
"""

from __future__ import annotations

import gc
import math
import os
import platform
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edgernn.contract import Contract
from edgernn.modelfile import ModelFile, ModelFileError
from edgernn.runtimes.bench_report import (CHECK_FRAMES, EAGER, EDGERNN, ORT_LOOP, PLAIN, TOLERANCE, BenchError,
                                           BenchReport, MismatchError, RuntimeResult, plot)
from edgernn.runtimes.bench_runners import (EdgernnRunner, OrtLoop, Runner, clear_high_water_mark, eager_runner,
                                            fmt_shape, maxrss_mib, measured_load, plain_runner, status_kib)
from edgernn.runtimes.providers import resolve as resolve_providers

POOL = 16  # distinct input arrays cycled through in timed calls
SETTLE = 5  # untimed calls at the start of each runtime's turn in a round (at most warmup)
REDUCED_OPS = {"MatMulInteger", "DynamicQuantizeLSTM", "MatMulNBits", "DynamicQuantizeLinear", "QuantizeLinear",
               "DequantizeLinear", "QLinearMatMul", "QLinearConv", "ConvInteger", "DynamicQuantizeMatMul",
               "QAttention", "QGemm"}



# ---------------------------------------------------------------- checks


def _reduced_precision(mf: ModelFile) -> bool:
    """Quantized (edgernn.quantization metadata, integer/quantize ops) or float16 weights."""
    import onnx

    if "edgernn.quantization" in mf.metadata:
        return True
    graphs = [mf.proto.graph]
    while graphs:
        g = graphs.pop()
        if any(t.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16) for t in g.initializer):
            return True
        for node in g.node:
            if node.op_type in REDUCED_OPS:
                return True
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    graphs.append(a.g)
                graphs.extend(a.graphs)
    return False


def _inputs(contract: Contract, batch: int, chunk: int, rng: np.random.Generator, count: int,
            highs: Mapping[str, int] | None = None) -> list[tuple[np.ndarray, ...]]:
    """``count`` calls' worth of data inputs: normal noise for floats, small integers otherwise."""
    pool = []
    for _ in range(count):
        call = []
        for spec in contract.inputs:
            shape = spec.concrete_shape(batch, chunk)
            dtype = np.dtype(spec.dtype)
            if dtype.kind == "f":
                call.append(rng.standard_normal(shape).astype(dtype))
            elif dtype.kind == "b":
                call.append(np.zeros(shape, dtype))
            else:
                call.append(rng.integers(0, (highs or {}).get(spec.name, 1), shape).astype(dtype))
        pool.append(tuple(call))
    return pool


def _deviation(reference: Runner, edgernn: EdgernnRunner, calls: Sequence[tuple[np.ndarray, ...]],
               names: Sequence[str], ref_name: str, model: str) -> float:
    """Largest |difference| of outputs (each call) and final states, same start state and frames."""
    reference.reset()
    edgernn.reset()
    worst = 0.0
    for inputs in calls:
        got, _ = edgernn.forward(inputs)
        want, ref_states = reference.forward(inputs)
        if len(want) != len(got):
            raise MismatchError(f"{ref_name} returns {len(want)} output(s) but {model} returns {len(got)}")
        for name, a, b in zip(names, got, want):
            if a.shape != b.shape:
                raise MismatchError(f"output {name!r} differs in shape: {fmt_shape(a.shape)} from {model} but "
                                    f"{fmt_shape(b.shape)} from {ref_name}")
            worst = max(worst, _maxabs(a, b))
    final = edgernn.session.state
    for name, value in ref_states.items():
        if value.shape != final[name].shape:
            raise MismatchError(f"state {name!r} differs in shape: {fmt_shape(final[name].shape)} from {model} but "
                                f"{fmt_shape(value.shape)} from {ref_name}")
        worst = max(worst, _maxabs(final[name], value))
    return worst


def _maxabs(a: np.ndarray, b: np.ndarray) -> float:
    if not a.size:
        return 0.0
    d = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    return d if math.isfinite(d) else float("inf")


def _environment(with_torch: bool) -> dict[str, Any]:
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    env: dict[str, Any] = {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version(), "onnxruntime": ort.__version__,
                           "numpy": np.__version__}
    if with_torch:
        import torch

        env["torch"] = torch.__version__
    return env


# ---------------------------------------------------------------- bench


def bench(model: str | os.PathLike, *, against: str | os.PathLike | None = None, steps: int = 1000, chunk: int = 1,
          batch: int = 1, threads: int = 1, provider: str | Sequence[str] | None = None, warmup: int = 100,
          rounds: int = 5,
          progress: Callable[[str], None] | None = None, baseline_onnx: str | os.PathLike | None = None,
          allow_fallback: bool = False, state_pairs: Mapping[str, str] | None = None,
          **load_options: Any) -> BenchReport:
    """Time ``model`` (an edgernn ONNX file) in edgernn and in a plain onnxruntime loop, and
    against a PyTorch model file (``against``, read by :func:`edgernn.load` with
    ``load_options``: ``class_path``, ``config``, ``allow_pickle``, ``nonlinearity``,
    ``batch_first``) and another ONNX file (``baseline_onnx``) if given.

    Args:
        steps: timed calls per runtime, spread over ``rounds`` interleaved rounds.
        chunk: frames per call (1 for step-mode files).
        batch: streams per call.
        threads: intra-op threads of onnxruntime and ``torch.set_num_threads`` for PyTorch.
        provider: onnxruntime execution provider: a short name (``cpu``, ``cuda``...), onnxruntime's
            name (``CUDAExecutionProvider``), or ``None`` for the CPU. PyTorch stays on the CPU.
        warmup: untimed calls per runtime before the first round.
        progress: called with ``"warm-up"`` once, then ``"round K/N"`` at the start of each round.
        allow_fallback: run on the CPU when ``provider`` cannot start (the report's notes say so)
            instead of raising.
        state_pairs: graph input -> output names of the states, for a file without edgernn
            metadata whose pairs the naming rule misses (see :class:`~edgernn.modelfile.ModelFile`).

    Raises:
        BenchError: bad settings, or a step-mode file with ``chunk`` > 1.
        ProviderError: an unknown or not installed provider (the message names the installed
            ones), or one that could not start.
        MismatchError: the reference model differs from the file (inputs, states, or numbers).
    """
    try:
        mf = ModelFile.open(model, state_pairs=state_pairs)
    except ModelFileError as e:
        raise BenchError(str(e)) from None
    if mf.path is None:
        raise BenchError("bench times a model file; give its path (or a ModelFile opened from one)")
    path = mf.path
    for what, value, low in (("steps", steps, 1), ("chunk", chunk, 1), ("batch", batch, 1), ("threads", threads, 1),
                             ("rounds", rounds, 1), ("warmup", warmup, 0)):
        if not isinstance(value, int) or value < low:
            raise BenchError(f"{what} must be an integer of at least {low}, got {value!r}")
    unknown = set(load_options) - {"class_path", "config", "allow_pickle", "nonlinearity", "batch_first"}
    if unknown:
        raise BenchError(f"unknown option {sorted(unknown)[0]!r}; the model file options are class_path, config, "
                         "allow_pickle, nonlinearity and batch_first")
    if load_options and against is None:
        verb = "applies" if len(load_options) == 1 else "apply"
        raise BenchError(f"{', '.join(sorted(load_options))} {verb} only to a PyTorch model file, and none was given "
                         "(against=)")
    rounds = min(rounds, steps)
    providers = resolve_providers(provider)
    provider_name = providers[0]
    name = str(path)
    notes: list[str] = []

    reduced = _reduced_precision(mf)  # (imports onnx before any load is measured)
    _first_session(name, providers)
    edgernn_runner, load_mib = measured_load(lambda: EdgernnRunner(mf, threads, providers, batch, allow_fallback))
    edgernn_runner.load_memory_mib = load_mib
    session = edgernn_runner.session
    provider_name = session.provider  # (the CPU, where a fallback was allowed and taken)
    contract = session.contract
    notes += session.notes
    if threads > 1:
        notes.append("edgernn's sessions let idle pool threads sleep between calls (spin off, for live streams), "
                     "while a default onnxruntime session spins them, which favours back-to-back calls")
    if contract.mode == "step" and chunk != 1:
        raise BenchError(f"{path} was exported in step mode and takes one frame per call, so chunk must be 1, not "
                         f"{chunk}; export it with mode chunk to time several frames per call")
    if batch > 1 and not any(t.batch_axis is not None for t in contract.inputs):
        raise BenchError(f"{path} has no batch axis on its inputs, so batch must be 1, not {batch}")
    init = session.initial_state(batch)
    ort_runner, load_mib = measured_load(lambda: OrtLoop(
        ORT_LOOP, name, threads, providers, [t.name for t in contract.inputs], len(contract.outputs),
        [(s.name, s.input, s.output) for s in contract.states], init))
    ort_runner.load_memory_mib = load_mib
    runners: list[Runner] = [edgernn_runner, ort_runner]
    rng = np.random.default_rng(0)
    check_chunk = 1 if contract.mode == "step" else CHECK_FRAMES // 2
    check_calls = _inputs(contract, batch, check_chunk, rng, CHECK_FRAMES // check_chunk)
    out_names = [t.name for t in contract.outputs]
    deviations: dict[str, float] = {}
    highs: dict[str, int] = {}

    previous_threads = None
    try:
        if against is not None:
            import torch

            previous_threads = torch.get_num_threads()
            torch.set_num_threads(threads)
            eager, ctx = eager_runner(Path(against), contract, name, batch, init, load_options, notes)
            highs = {s.name: s.high for s in ctx.data if s.high}
            runners.append(eager)
            if highs:
                check_calls = _inputs(contract, batch, check_chunk, np.random.default_rng(0),
                                      CHECK_FRAMES // check_chunk, highs)
            deviations[EAGER] = _deviation(eager, edgernn_runner, check_calls, out_names, str(against), name)
            if provider_name != "CPUExecutionProvider":
                notes.append(f"pytorch eager runs on the CPU; the ONNX runtimes on {provider_name}")
        if baseline_onnx is not None:
            plain = plain_runner(Path(baseline_onnx), contract, threads, providers, init, notes)
            runners.append(plain)
            deviations[PLAIN] = _deviation(plain, edgernn_runner, check_calls, out_names, str(baseline_onnx),
                                           name)
        for ref, dev in deviations.items():
            if dev > TOLERANCE and not (reduced or _reduced_precision_of(ref, baseline_onnx)):
                what = str(against) if ref == EAGER else str(baseline_onnx)
                hint = f" ({plain.mapping})" if ref == PLAIN else ""
                raise MismatchError(f"{what} does not compute what {path} computes: outputs differ by up to {dev:.3g} "
                                    f"over {CHECK_FRAMES} frames from the same start state (tolerance {TOLERANCE:g} "
                                    f"for a float32 file){hint}")
        if reduced and deviations:
            notes.append(f"{path.name} is quantized or float16: its deviation from the references is reported, not "
                         "checked")
        results = _time(runners, contract, batch, chunk, steps, warmup, rounds, progress, highs)
    finally:
        if previous_threads is not None:
            import torch

            torch.set_num_threads(previous_threads)
    scope = ("process high-water mark (VmHWM) while the runtime ran, reset before each of its rounds through "
             "/proc/self/clear_refs" if results[1] else
             "process-wide peak resident size since start (ru_maxrss): the same figure for every runtime")
    report = BenchReport(name, path.stat().st_size, contract.mode, reduced, steps, chunk, batch, threads,
                         provider_name, warmup, rounds, results[0], str(against) if against else None,
                         str(baseline_onnx) if baseline_onnx else None, deviations, scope,
                         _environment(against is not None), notes)
    return report


def _first_session(path: str, providers: list[str]) -> None:
    """Open and drop one session, so that onnxruntime's one-time set-up (its environment, thread
    pools, kernel registries) and the imports are not counted in the first runtime's load memory."""
    import onnxruntime as ort

    import edgernn.runtimes.session  # noqa: F401

    try:
        ort.InferenceSession(path, providers=providers)
    except Exception:
        pass  # StreamingSession says what is wrong with the file


def _reduced_precision_of(ref: str, baseline_onnx: Any) -> bool:
    return ref == PLAIN and baseline_onnx is not None and _reduced_precision(ModelFile.open(baseline_onnx))


def _time(runners: list[Runner], contract: Contract, batch: int, chunk: int, steps: int, warmup: int, rounds: int,
          progress: Callable[[str], None] | None, highs: Mapping[str, int]):
    """Interleaved rounds; returns (results, whether per-runtime peaks were measured)."""
    rng = np.random.default_rng(1)
    base = _inputs(contract, batch, chunk, rng, min(POOL, max(steps, 1)), highs)
    pools = {r.name: r.pool(base) for r in runners}
    sizes = [steps // rounds + (1 if k < steps % rounds else 0) for k in range(rounds)]
    latencies: dict[str, list[int]] = {r.name: [] for r in runners}
    peaks: dict[str, float] = {}
    growth: dict[str, float] = {}
    offsets = {r.name: 0 for r in runners}
    settle = min(warmup, SETTLE)
    if progress:
        progress("warm-up")
    for r in runners:
        r.reset()
        r.run(pools[r.name], 0, warmup, [])
    per_runtime = clear_high_water_mark()
    gc_was_enabled = gc.isenabled()
    try:
        for k, n in enumerate(sizes):
            if progress:
                progress(f"round {k + 1}/{rounds}")
            shift = k % len(runners)
            for r in runners[shift:] + runners[:shift]:
                r.reset()
                gc.collect()
                gc.disable()
                # the first calls after switching runtimes meet cold caches, an artefact of
                # interleaving that a streaming loop does not have: run a few untimed
                r.run(pools[r.name], offsets[r.name], settle, [])
                before = status_kib("VmRSS") if per_runtime else None
                if per_runtime:
                    clear_high_water_mark()
                r.run(pools[r.name], offsets[r.name], n, latencies[r.name])
                offsets[r.name] += n
                if per_runtime:
                    hwm = status_kib("VmHWM") or 0
                    peaks[r.name] = max(peaks.get(r.name, 0.0), hwm / 1024)
                    growth[r.name] = max(growth.get(r.name, 0.0), (hwm - (before or hwm)) / 1024)
                if gc_was_enabled:
                    gc.enable()
    finally:
        if gc_was_enabled:
            gc.enable()
    results = []
    for r in runners:
        lat = np.asarray(latencies[r.name], dtype=np.float64) / 1e3
        p50, p90, p99 = (float(v) for v in np.percentile(lat, [50, 90, 99]))
        results.append(RuntimeResult(
            r.name, len(lat), chunk, batch, p50, p90, p99, float(lat.mean()), float(lat.min()), float(lat.max()),
            peaks.get(r.name) if per_runtime else maxrss_mib(), growth.get(r.name) if per_runtime else None,
            r.load_memory_mib, lat))
    return results, per_runtime


# ---------------------------------------------------------------- plot


__all__ = ["bench", "plot", "BenchReport", "RuntimeResult", "BenchError", "MismatchError", "EDGERNN", "ORT_LOOP",
           "EAGER", "PLAIN"]
