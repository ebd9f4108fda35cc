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
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edgernn.contract import BATCH, TIME, Contract
from edgernn.errors import EdgernnError
from edgernn.runtimes.providers import resolve as resolve_providers

EDGERNN = "edgernn"
ORT_LOOP = "onnxruntime loop"
EAGER = "pytorch eager"
PLAIN = "plain export loop"
TOLERANCE = 1e-3  # largest max-abs deviation accepted between a float32 file and its reference
CHECK_FRAMES = 8
POOL = 16  # distinct input arrays cycled through in timed calls
SETTLE = 5  # untimed calls at the start of each runtime's turn in a round (at most warmup)
REDUCED_OPS = {"MatMulInteger", "DynamicQuantizeLSTM", "MatMulNBits", "DynamicQuantizeLinear", "QuantizeLinear",
               "DequantizeLinear", "QLinearMatMul", "QLinearConv", "ConvInteger", "DynamicQuantizeMatMul",
               "QAttention", "QGemm"}


class BenchError(EdgernnError):
    """A benchmark cannot run as asked."""


class MismatchError(BenchError):
    """The reference model (``against`` or ``baseline_onnx``) does not compute what the file computes."""


@dataclass
class RuntimeResult:
    """One runtime's timings. Latencies are per call (``frames_per_call`` = batch x chunk frames)."""

    name: str
    calls: int
    chunk: int
    batch: int
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float
    min_us: float
    max_us: float
    peak_memory_mib: float | None  # process high-water mark while this runtime ran (see BenchReport.memory_scope)
    memory_growth_mib: float | None  # that peak minus the resident size just before this runtime's rounds
    load_memory_mib: float | None  # resident size added by loading this runtime (session or model)
    latencies_us: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    @property
    def frames_per_call(self) -> int:
        return self.batch * self.chunk

    @property
    def per_frame_p50_us(self) -> float:
        return self.p50_us / self.chunk

    @property
    def per_frame_p90_us(self) -> float:
        return self.p90_us / self.chunk

    @property
    def per_frame_p99_us(self) -> float:
        return self.p99_us / self.chunk

    @property
    def fps(self) -> float:
        """Frames per second over all streams: batch x chunk / mean call time."""
        return self.frames_per_call / (self.mean_us * 1e-6) if self.mean_us > 0 else float("inf")

    def to_json(self, latencies: bool = False) -> dict:
        d = {"name": self.name, "calls": self.calls, "chunk": self.chunk, "batch": self.batch,
             "frames_per_call": self.frames_per_call,
             "p50_us": self.p50_us, "p90_us": self.p90_us, "p99_us": self.p99_us, "mean_us": self.mean_us,
             "min_us": self.min_us, "max_us": self.max_us,
             "per_frame_p50_us": self.per_frame_p50_us, "per_frame_p90_us": self.per_frame_p90_us,
             "per_frame_p99_us": self.per_frame_p99_us, "fps": self.fps,
             "peak_memory_mib": self.peak_memory_mib, "memory_growth_mib": self.memory_growth_mib,
             "load_memory_mib": self.load_memory_mib}
        if latencies:
            d["latencies_us"] = [float(v) for v in self.latencies_us]
        return d


@dataclass
class BenchReport:
    """What :func:`bench` measured. ``ratios`` are edgernn's p50 over each other runtime's p50
    (below 1: edgernn is faster); ``deviations`` the largest absolute output/state difference
    of each reference runtime from the file over :data:`CHECK_FRAMES` frames."""

    model: str
    model_bytes: int
    mode: str
    reduced_precision: bool
    steps: int
    chunk: int
    batch: int
    threads: int
    provider: str
    warmup: int
    rounds: int
    runtimes: list[RuntimeResult]
    against: str | None = None
    baseline_onnx: str | None = None
    deviations: dict[str, float] = field(default_factory=dict)
    memory_scope: str = ""
    environment: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def runtime(self, name: str) -> RuntimeResult:
        for r in self.runtimes:
            if r.name == name:
                return r
        raise KeyError(f"no runtime {name!r} in this report; it has {', '.join(r.name for r in self.runtimes)}")

    @property
    def model_mib(self) -> float:
        return self.model_bytes / 2**20

    @property
    def ratios(self) -> dict[str, float]:
        """``{"edgernn / NAME": edgernn p50 / NAME p50}`` for every other runtime."""
        mine = self.runtime(EDGERNN).p50_us
        return {f"{EDGERNN} / {r.name}": mine / r.p50_us for r in self.runtimes if r.name != EDGERNN}

    def table(self) -> str:
        """A plain-text summary: one row per runtime, then deviations, memory scope and notes."""
        head = ["runtime", "p50 µs", "p90 µs", "p99 µs", "µs/frame p50", "frames/s", "peak MiB", "load MiB",
                "edgernn / it"]
        mine = self.runtime(EDGERNN).p50_us
        rows = [[r.name, f"{r.p50_us:.1f}", f"{r.p90_us:.1f}", f"{r.p99_us:.1f}", f"{r.per_frame_p50_us:.2f}",
                 f"{r.fps:,.0f}", _mib(r.peak_memory_mib), _mib(r.load_memory_mib),
                 "" if r.name == EDGERNN else f"{mine / r.p50_us:.2f}x"] for r in self.runtimes]
        widths = [max(len(row[k]) for row in [head, *rows]) for k in range(len(head))]
        lines = [f"{self.model} ({self.mode} mode, {self.model_bytes / 1024:.0f} KiB): {self.chunk} frame(s) x "
                 f"{self.batch} stream(s) per call, {self.threads} thread(s), {self.provider}, {self.steps} calls "
                 f"per runtime in {self.rounds} rounds"]
        for row in [head, *rows]:
            lines.append("  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(row, widths))))
        for name, dev in self.deviations.items():
            lines.append(f"max |difference| from {name} over {CHECK_FRAMES} frames: {dev:.2g}")
        lines.append(f"memory: {self.memory_scope}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_json(self, latencies: bool = False) -> dict:
        """Plain JSON types; ``latencies=True`` adds every call's latency (``latencies_us``)."""
        return {"model": self.model, "model_bytes": self.model_bytes, "model_mib": self.model_mib, "mode": self.mode,
                "reduced_precision": self.reduced_precision, "against": self.against,
                "baseline_onnx": self.baseline_onnx,
                "settings": {"steps": self.steps, "chunk": self.chunk, "batch": self.batch, "threads": self.threads,
                             "provider": self.provider, "warmup": self.warmup, "rounds": self.rounds},
                "runtimes": [r.to_json(latencies) for r in self.runtimes],
                "ratios": self.ratios, "deviations": dict(self.deviations), "memory_scope": self.memory_scope,
                "environment": dict(self.environment), "notes": list(self.notes)}


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# ---------------------------------------------------------------- runtimes


class _Runner:
    """One runtime: ``reset`` starts fresh streams, ``run`` times ``n`` calls, ``forward`` runs one
    call untimed and returns (outputs in contract order, final states by contract name)."""

    name: str
    load_memory_mib: float | None = None

    def reset(self) -> None:
        raise NotImplementedError

    def run(self, pool: Sequence[Any], start: int, n: int, out: list[int]) -> None:
        raise NotImplementedError

    def forward(self, inputs: Sequence[np.ndarray]) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        raise NotImplementedError

    def pool(self, pool: Sequence[tuple[np.ndarray, ...]]) -> Sequence[Any]:
        """The input pool in this runtime's own form (numpy here; tensors for PyTorch)."""
        return pool


class _EdgernnRunner(_Runner):
    name = EDGERNN

    def __init__(self, path: str, threads: int, providers: list[str], batch: int, allow_fallback: bool = False) -> None:
        from edgernn.runtimes.session import StreamingSession

        self.session = StreamingSession(path, threads=threads, providers=providers, allow_fallback=allow_fallback)
        self.batch = batch

    def reset(self) -> None:
        self.session.reset(self.batch)

    def run(self, pool, start, n, out) -> None:
        step, clock, size = self.session.step, time.perf_counter_ns, len(pool)
        for k in range(start, start + n):
            inputs = pool[k % size]
            t0 = clock()
            step(*inputs)
            out.append(clock() - t0)

    def forward(self, inputs):
        res = self.session.step(*inputs)
        return [res[t.name] for t in self.session.outputs], self.session.state


class _OrtLoop(_Runner):
    """The plain loop: ``sess.run(None, feeds)``, states fed back by name."""

    def __init__(self, name: str, path: str, threads: int, providers: list[str], data_names: Sequence[str],
                 n_outputs: int, pairs: Sequence[tuple[str, str, str]], init: Mapping[str, np.ndarray]) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.name = name
        self.sess = ort.InferenceSession(path, opts, providers=providers)
        self.data_names = list(data_names)
        self.out_names = [o.name for o in self.sess.get_outputs()]
        self.n_outputs = n_outputs
        self.pairs = list(pairs)  # (contract state name, graph input, graph output)
        self.init = dict(init)
        self.feeds: dict[str, np.ndarray] = {}
        self.mapping = ""  # how a plain export's states were matched to the contract's

    def reset(self) -> None:
        self.feeds = {i: self.init[s].copy() for s, i, _ in self.pairs}

    def run(self, pool, start, n, out) -> None:
        sess, feeds, clock, size = self.sess, self.feeds, time.perf_counter_ns, len(pool)
        names, out_names = self.data_names, self.out_names
        pairs = [(i, o) for _, i, o in self.pairs]
        for k in range(start, start + n):
            inputs = pool[k % size]
            t0 = clock()
            for name, value in zip(names, inputs):
                feeds[name] = value
            results = dict(zip(out_names, sess.run(None, feeds)))
            for i, o in pairs:
                feeds[i] = results[o]
            out.append(clock() - t0)

    def forward(self, inputs):
        self.feeds.update(zip(self.data_names, inputs))
        results = self.sess.run(None, self.feeds)
        by_name = dict(zip(self.out_names, results))
        for _, i, o in self.pairs:
            self.feeds[i] = by_name[o]
        return list(results[: self.n_outputs]), {s: by_name[o].copy() for s, _, o in self.pairs}


class _LayerRunner(_Runner):
    """A bare ``nn.RNN``/``nn.GRU``/``nn.LSTM`` called directly: ``y, h = m(x, h)``."""

    name = EAGER

    def __init__(self, layer, kind: str, state_names: Sequence[str], init: Mapping[str, np.ndarray]) -> None:
        self.layer = layer
        self.lstm = kind == "lstm"
        # contract names of (h, c) or (h,)
        self.names = [f"{kind}.h", f"{kind}.c"] if self.lstm else [f"{kind}.h"]
        if sorted(self.names) != sorted(state_names):
            raise MismatchError(f"the layer's states are {', '.join(self.names)} but the file's are "
                                f"{', '.join(state_names)}")
        self.init = init
        self.h: Any = None

    def pool(self, pool):
        import torch

        return [torch.from_numpy(p[0]) for p in pool]

    def reset(self) -> None:
        import torch

        parts = [torch.from_numpy(self.init[n].copy()) for n in self.names]
        self.h = tuple(parts) if self.lstm else parts[0]

    def run(self, pool, start, n, out) -> None:
        import torch

        layer, h, clock, size = self.layer, self.h, time.perf_counter_ns, len(pool)
        with torch.inference_mode():
            for k in range(start, start + n):
                x = pool[k % size]
                t0 = clock()
                y, h = layer(x, h)
                out.append(clock() - t0)
        self.h = h

    def forward(self, inputs):
        import torch

        with torch.inference_mode():
            y, self.h = self.layer(torch.from_numpy(inputs[0]), self.h)
        parts = self.h if self.lstm else (self.h,)
        return [y.numpy().copy()], {n: t.numpy().copy() for n, t in zip(self.names, parts)}


class _LifterRunner(_Runner):
    """Any other model, through the exporter's state lifter: ``lifter(*data, *states)``."""

    name = EAGER

    def __init__(self, ctx, init: Mapping[str, np.ndarray]) -> None:
        self.ctx = ctx
        self.lifter = ctx.lifter
        self.names = list(ctx.state_names)
        self.init = init
        self.frame_model = ctx.frame_model and ctx.mode != "step"
        self.states: list = []

    def pool(self, pool):
        import torch

        tensors = [tuple(torch.from_numpy(a) for a in p) for p in pool]
        if self.frame_model:  # one frame per forward: split each call's data along its time axis 0
            return [[tuple(t.select(0, f) for t in p) for f in range(p[0].shape[0])] for p in tensors]
        return tensors

    def reset(self) -> None:
        import torch

        self.states = [torch.from_numpy(self.init[n].copy()) for n in self.names]

    def run(self, pool, start, n, out) -> None:
        import torch

        lifter, states, clock, size = self.lifter, self.states, time.perf_counter_ns, len(pool)
        n_states = len(states)
        with torch.inference_mode():
            if self.frame_model:
                for k in range(start, start + n):
                    frames = pool[k % size]
                    t0 = clock()
                    for frame in frames:
                        res = lifter(*frame, *states)
                        states = res[len(res) - n_states:]
                    out.append(clock() - t0)
            else:
                for k in range(start, start + n):
                    data = pool[k % size]
                    t0 = clock()
                    res = lifter(*data, *states)
                    states = res[len(res) - n_states:]
                    out.append(clock() - t0)
        self.states = list(states)

    def forward(self, inputs):
        import torch

        data = [torch.from_numpy(a) for a in inputs]
        n_states = len(self.states)
        with torch.inference_mode():
            if self.frame_model:
                pieces = []
                for f in range(data[0].shape[0]):
                    res = self.lifter(*[t.select(0, f) for t in data], *self.states)
                    self.states = list(res[len(res) - n_states:])
                    pieces.append(res[: len(res) - n_states])
                outs = [np.stack([p[k].numpy() for p in pieces], axis=0) for k in range(len(pieces[0]))]
            else:
                res = self.lifter(*data, *self.states)
                self.states = list(res[len(res) - n_states:])
                outs = [t.numpy().copy() for t in res[: len(res) - n_states]]
        return outs, {n: t.numpy().copy() for n, t in zip(self.names, self.states)}


# ---------------------------------------------------------------- memory


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _clear_high_water_mark() -> bool:
    """Reset the process's peak resident size to its current size (Linux ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def _maxrss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _rss_mib() -> float | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def _loaded(make: Callable[[], Any]) -> tuple[Any, float | None]:
    gc.collect()
    before = _rss_mib()
    obj = make()
    gc.collect()
    after = _rss_mib()
    return obj, (None if before is None or after is None else max(after - before, 0.0))


# ---------------------------------------------------------------- checks


def _reduced_precision(path: str) -> bool:
    """Quantized (edgernn.quantization metadata, integer/quantize ops) or float16 weights."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    if any(p.key == "edgernn.quantization" for p in model.metadata_props):
        return True
    graphs = [model.graph]
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
    from edgernn.runtimes.session import _NP

    pool = []
    for _ in range(count):
        call = []
        for spec in contract.inputs:
            shape = spec.concrete_shape(batch, chunk)
            dtype = np.dtype(_NP[spec.dtype])
            if dtype.kind == "f":
                call.append(rng.standard_normal(shape).astype(dtype))
            elif dtype.kind == "b":
                call.append(np.zeros(shape, dtype))
            else:
                call.append(rng.integers(0, (highs or {}).get(spec.name, 1), shape).astype(dtype))
        pool.append(tuple(call))
    return pool


def _fmt(shape: Sequence) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _context(module, contract: Contract, against: str):
    """The exporter's view of ``module`` (data inputs, lifted states, state lifter), for ``contract.mode``."""
    from edgernn.converters.io import InputSpec
    from edgernn.converters.passes import ExportContext, ExportOptions, LiftState, ResolveInputs
    from edgernn.errors import ExportError

    def build(inputs):
        ctx = ExportContext(module, ExportOptions(mode=contract.mode, inputs=inputs, verify=False))
        ResolveInputs()(ctx)
        LiftState()(ctx)
        return ctx

    try:
        return build(())
    except ExportError as first:
        declared = [InputSpec(t.name, t.dtype, tuple(BATCH if k == t.batch_axis else TIME if k == t.time_axis else d
                                                      for k, d in enumerate(t.shape))) for t in contract.inputs]
        try:  # inputs the model does not reveal: take them from the file
            return build(declared)
        except ExportError:
            raise MismatchError(f"{against} cannot be run as a streaming model for this file: {first}") from None


def _check_shapes(ctx, contract: Contract, model: str, against: str, batch: int,
                  moved: Mapping[str, int] | None = None) -> None:
    """Same data inputs (feature sizes and batch/time layout) and the same states (names, shapes)."""
    if len(ctx.data) != len(contract.inputs):
        raise MismatchError(f"{against} takes {len(ctx.data)} data input(s) but {model} takes "
                            f"{len(contract.inputs)} ({', '.join(t.name for t in contract.inputs)})")
    step = contract.mode == "step"
    for spec, t in zip(ctx.data, contract.inputs):
        shape = tuple(spec.step_shape() if step else spec.shape)
        if ctx.frame_model and not step:
            shape = (TIME, *shape)
        if shape != tuple(t.shape) or spec.dtype != t.dtype:
            raise MismatchError(f"input {t.name!r} differs: {model} takes {t.dtype} {_fmt(t.shape)} but {against} "
                                f"takes {spec.dtype} {_fmt(shape)}")
    want = {s.name: s.concrete_shape(batch) for s in contract.states}
    moved = moved or {}
    have = {}
    for n, v in zip(ctx.state_names, ctx.initial_states(batch)):
        shape = list(v.shape)
        if n in moved:  # the file keeps this state batch-major
            shape.insert(0, shape.pop(moved[n]))
        have[n] = tuple(shape)
    if set(want) != set(have):
        raise MismatchError(f"the states differ: {model} has {', '.join(sorted(want)) or 'none'} but {against} has "
                            f"{', '.join(sorted(have)) or 'none'}")
    for name, shape in want.items():
        if have[name] != shape:
            raise MismatchError(f"state {name!r} differs: {_fmt(shape)} in {model} but {_fmt(have[name])} in "
                                f"{against} (at batch {batch})")


def _deviation(reference: _Runner, edgernn: _EdgernnRunner, calls: Sequence[tuple[np.ndarray, ...]],
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
                raise MismatchError(f"output {name!r} differs in shape: {_fmt(a.shape)} from {model} but "
                                    f"{_fmt(b.shape)} from {ref_name}")
            worst = max(worst, _maxabs(a, b))
    final = edgernn.session.state
    for name, value in ref_states.items():
        if value.shape != final[name].shape:
            raise MismatchError(f"state {name!r} differs in shape: {_fmt(final[name].shape)} from {model} but "
                                f"{_fmt(value.shape)} from {ref_name}")
        worst = max(worst, _maxabs(final[name], value))
    return worst


def _maxabs(a: np.ndarray, b: np.ndarray) -> float:
    if not a.size:
        return 0.0
    d = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    return d if math.isfinite(d) else float("inf")


def _baseline_pairs(sess, contract: Contract, path: str) -> tuple[list[str], list[tuple[str, str, str]], str]:
    """Data input names, (state, input, output) triples of a plain export (see the module
    docstring) and a sentence saying how its states were matched."""
    ins = [i.name for i in sess.get_inputs()]
    outs = [o.name for o in sess.get_outputs()]
    n_in, n_out, n_st = len(contract.inputs), len(contract.outputs), len(contract.states)
    if len(ins) != n_in + n_st or len(outs) != n_out + n_st:
        raise MismatchError(f"{path} has {len(ins)} input(s) and {len(outs)} output(s); a plain export of this "
                            f"model takes {n_in} data input(s) and {n_st} state(s) and returns {n_out} output(s) "
                            f"and {n_st} state(s)")
    st_in, st_out = ins[n_in:], outs[n_out:]
    names = [s.name for s in contract.states]

    def match(key: Callable[[str], str]) -> list[str] | None:
        found = []
        for i in st_in:
            hits = [n for n in names if key(n) == key(i.removeprefix("state_in."))]
            if len(hits) != 1:
                return None
            found.append(hits[0])
        return found if len(set(found)) == len(found) else None

    order = match(lambda n: n) or match(lambda n: n.rsplit(".", 1)[-1])
    how = "by name"
    if order is None:
        order, how = names, "by position"
    specs = {s.name: s for s in contract.states}
    graph_in = {i.name: i for i in sess.get_inputs()}
    for state, i in zip(order, st_in):
        want = specs[state].shape
        got = graph_in[i].shape
        if len(got) != len(want) or any(isinstance(a, int) and isinstance(b, int) and a != b
                                         for a, b in zip(got, want)):
            raise MismatchError(f"state input {i!r} of {path} has shape {_fmt(got)} but state {state!r} of the "
                                f"file has {_fmt(want)}")
    pairs = [(s, i, o) for s, i, o in zip(order, st_in, st_out)]
    return ins[:n_in], pairs, f"states matched {how}: " + ", ".join(f"{i} -> {s}" for s, i, _ in pairs)


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
          allow_fallback: bool = False, **load_options: Any) -> BenchReport:
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

    Raises:
        BenchError: bad settings, or a step-mode file with ``chunk`` > 1.
        ProviderError: an unknown or not installed provider (the message names the installed
            ones), or one that could not start.
        MismatchError: the reference model differs from the file (inputs, states, or numbers).
    """
    path = Path(model)
    if not path.is_file():
        raise BenchError(f"{path} does not exist or is not a file")
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

    reduced = _reduced_precision(name)  # (imports onnx before any load is measured)
    _first_session(name, providers)
    edgernn_runner, load_mib = _loaded(lambda: _EdgernnRunner(name, threads, providers, batch, allow_fallback))
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
    ort_runner, load_mib = _loaded(lambda: _OrtLoop(
        ORT_LOOP, name, threads, providers, [t.name for t in contract.inputs], len(contract.outputs),
        [(s.name, s.input, s.output) for s in contract.states], init))
    ort_runner.load_memory_mib = load_mib
    runners: list[_Runner] = [edgernn_runner, ort_runner]
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
            eager, ctx = _eager_runner(Path(against), contract, name, batch, init, load_options, notes)
            highs = {s.name: s.high for s in ctx.data if s.high}
            runners.append(eager)
            if highs:
                check_calls = _inputs(contract, batch, check_chunk, np.random.default_rng(0),
                                      CHECK_FRAMES // check_chunk, highs)
            deviations[EAGER] = _deviation(eager, edgernn_runner, check_calls, out_names, str(against), name)
            if provider_name != "CPUExecutionProvider":
                notes.append(f"pytorch eager runs on the CPU; the ONNX runtimes on {provider_name}")
        if baseline_onnx is not None:
            plain = _plain_runner(Path(baseline_onnx), contract, threads, providers, init, notes)
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
    return ref == PLAIN and baseline_onnx is not None and _reduced_precision(str(baseline_onnx))


def _eager_runner(against: Path, contract: Contract, model: str, batch: int, init: Mapping[str, np.ndarray],
                  load_options: Mapping[str, Any], notes: list[str]):
    from torch import nn

    from edgernn.architectures import RecurrentLayer
    from edgernn.checkpoints import load

    options = dict(load_options)
    loaded, load_mib = _loaded(lambda: load(against, **options))
    if loaded.kind == "state_dict" and "batch_first" not in options and contract.inputs:
        # a bare layer's state_dict does not record its layout: take it from the file
        options["batch_first"] = contract.inputs[0].batch_axis == 0
        loaded, load_mib = _loaded(lambda: load(against, **options))
        notes.append(f"{against.name} is a bare state_dict, which does not record batch_first; "
                     f"took batch_first={options['batch_first']} from {Path(model).name}")
    else:
        notes += loaded.notes
    module = loaded.module
    if isinstance(module, nn.RNNBase):
        module = RecurrentLayer(module)
    ctx = _context(module, contract, str(against))
    moved = _moved_batch_axes(ctx, contract, batch)
    _check_shapes(ctx, contract, model, str(against), batch, moved)
    if moved:  # a batch-major file: PyTorch starts from (and is compared in) its own layout
        init = {k: np.moveaxis(v, 0, moved[k]) if k in moved else v for k, v in init.items()}
        notes.append(f"{Path(model).name} keeps states batch-major; pytorch eager's states are moved to that layout "
                     "for the check")
    if isinstance(module, RecurrentLayer):
        runner: _Runner = _LayerRunner(module.layer, module.kind, ctx.state_names, init)
        notes.append(f"pytorch eager calls the bare nn.{type(module.layer).__name__} directly (y, h = m(x, h))")
    else:
        runner = _LifterRunner(ctx, init)
        if ctx.lifted:
            notes.append(f"pytorch eager runs {type(module).__name__} through the exporter's state lifter, which "
                         "wraps its recurrent layers to take and return their states: a little Python work per call")
        else:
            notes.append(f"pytorch eager calls {type(module).__name__} with its state arguments carried from call to "
                         "call (through the exporter's thin wrapper forward(*data, *states))")
        if runner.frame_model:
            notes.append(f"{type(module).__name__} takes one frame per forward: pytorch eager loops over the "
                         f"frames of each call in Python")
    if moved:
        runner = _BatchMajor(runner, moved)
    runner.load_memory_mib = load_mib
    return runner, ctx


def _moved_batch_axes(ctx, contract: Contract, batch: int) -> dict[str, int]:
    """For a file exported with ``state_layout="batch-major"``: state name -> the batch axis the
    PyTorch model keeps it on (states whose batch axis the export moved to the front)."""
    names = ctx.state_names
    one = {n: tuple(v.shape) for n, v in zip(names, ctx.initial_states(batch))}
    two = {n: tuple(v.shape) for n, v in zip(names, ctx.initial_states(batch + 1))}
    moved = {}
    for s in contract.states:
        if s.name not in one or s.batch_axis != 0:
            continue
        axis = next((k for k, (a, b) in enumerate(zip(one[s.name], two[s.name])) if a != b), None)
        if axis not in (None, 0):
            moved[s.name] = axis
    return moved


class _BatchMajor(_Runner):
    """A PyTorch runner whose final states are reported with the batch axis first, like the file."""

    def __init__(self, inner: _Runner, moved: Mapping[str, int]) -> None:
        self.inner, self.moved, self.name = inner, dict(moved), inner.name

    def reset(self) -> None:
        self.inner.reset()

    def run(self, pool, start, n, out) -> None:
        self.inner.run(pool, start, n, out)

    def pool(self, pool):
        return self.inner.pool(pool)

    def forward(self, inputs):
        outputs, states = self.inner.forward(inputs)
        return outputs, {k: np.moveaxis(v, self.moved[k], 0) if k in self.moved else v for k, v in states.items()}


def _plain_runner(path: Path, contract: Contract, threads: int, providers: list[str],
                  init: Mapping[str, np.ndarray], notes: list[str]):
    if not path.is_file():
        raise BenchError(f"{path} does not exist or is not a file")

    def make():
        import onnxruntime as ort

        try:
            sess = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:
            raise BenchError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0][:300]}") from None
        data, pairs, how = _baseline_pairs(sess, contract, str(path))
        del sess
        runner = _OrtLoop(PLAIN, str(path), threads, providers, data, len(contract.outputs), pairs, init)
        runner.mapping = how
        return runner

    runner, load_mib = _loaded(make)
    runner.load_memory_mib = load_mib
    notes.append(f"{PLAIN} runs {path.name}; {runner.mapping}")
    return runner


def _time(runners: list[_Runner], contract: Contract, batch: int, chunk: int, steps: int, warmup: int, rounds: int,
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
    per_runtime = _clear_high_water_mark()
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
                before = _status_kib("VmRSS") if per_runtime else None
                if per_runtime:
                    _clear_high_water_mark()
                r.run(pools[r.name], offsets[r.name], n, latencies[r.name])
                offsets[r.name] += n
                if per_runtime:
                    hwm = _status_kib("VmHWM") or 0
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
            peaks.get(r.name) if per_runtime else _maxrss_mib(), growth.get(r.name) if per_runtime else None,
            r.load_memory_mib, lat))
    return results, per_runtime


# ---------------------------------------------------------------- plot


def plot(report: BenchReport, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Write a PNG of each runtime's per-call latency distribution side by side: a violin (the
    density) with a box (quartiles, whiskers at p1 and p99, median line) per runtime and its p50
    and p99 written under it, on a log axis when the plotted latencies (p0.1 to p99.9 of each)
    spread over more than 8x."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise BenchError("plotting needs matplotlib, which is not installed: pip install matplotlib") from None
    target = Path(path)
    if not target.parent.is_dir():
        raise BenchError(f"cannot write {target}: folder {target.parent} does not exist")
    runs = [r for r in report.runtimes if r.latencies_us.size]
    if not runs:
        raise BenchError("the report holds no per-call latencies to plot (a report read back from JSON keeps them "
                         "only if written with latencies=True)")
    data = []
    for r in runs:  # the extreme 0.1% would stretch the violins into needles
        lo, hi = np.percentile(r.latencies_us, [0.1, 99.9])
        data.append(np.clip(r.latencies_us, lo, hi))
    fig = Figure(figsize=(1.9 * len(runs) + 2.5, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    log = max(float(d.max()) for d in data) > 8 * max(min(float(d.min()) for d in data), 1e-9)
    if log:  # the densities too are estimated on the log scale, so that long tails do not swamp them
        data = [np.log10(np.maximum(d, 1e-3)) for d in data]
    parts = ax.violinplot(data, showmedians=False, showextrema=False, widths=0.8)
    colors = ["#2a7ab9", "#e08a1e", "#55a868", "#c44e52", "#8172b2"]
    for body, color in zip(parts["bodies"], colors * 2):
        body.set_facecolor(color)
        body.set_alpha(0.55)
    ax.boxplot(data, widths=0.12, showfliers=False, whis=(1, 99), medianprops={"color": "black"})
    if log:
        low = math.floor(min(float(d.min()) for d in data))
        high = math.ceil(max(float(d.max()) for d in data))
        ticks = [math.log10(m * 10.0**e) for e in range(low, high + 1) for m in (1, 2, 5)]
        ticks = [t for t in ticks if low <= t <= high]
        ax.set_yticks(ticks)
        ax.set_yticklabels([f"{10**t:g}" for t in ticks])
        lo, hi = min(float(d.min()) for d in data), max(float(d.max()) for d in data)
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    else:
        ax.set_ylim(bottom=0)
    ax.set_xticks(range(1, len(runs) + 1))
    ax.set_xticklabels([f"{r.name}\np50 {r.p50_us:.1f}\np99 {r.p99_us:.1f}" for r in runs], fontsize=8)
    ax.set_ylabel("latency per call (µs" + (", log scale)" if log else ")"))
    ax.grid(axis="y", alpha=0.3, which="both")
    frames = f"{report.chunk} frame{'s' if report.chunk > 1 else ''} x {report.batch} stream" \
             f"{'s' if report.batch > 1 else ''} per call"
    ax.set_title(title or f"{Path(report.model).name} ({report.mode} mode): {frames}, {report.threads} thread"
                 f"{'s' if report.threads > 1 else ''}", fontsize=10)
    fig.tight_layout()
    fig.savefig(str(target), format="png")
    return target


__all__ = ["bench", "plot", "BenchReport", "RuntimeResult", "BenchError", "MismatchError", "EDGERNN", "ORT_LOOP",
           "EAGER", "PLAIN"]
