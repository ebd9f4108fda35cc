"""The runtimes ``edgernn bench`` times side by side (see :mod:`edgernn.runtimes.bench`): edgernn's
``StreamingSession``, the plain onnxruntime loop a user writes, PyTorch eager (a bare layer, or
the exporter's state lifter), and another ONNX file's loop; each behind one small interface,
:class:`Runner`, so that the timing loop treats them alike."""

from __future__ import annotations

import gc
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edgernn.contract import BATCH, TIME, Contract
from edgernn.modelfile import ModelFile
from edgernn.runtimes.bench_report import EAGER, EDGERNN, PLAIN, BenchError, MismatchError



class Runner:
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


class EdgernnRunner(Runner):
    name = EDGERNN

    def __init__(self, model: ModelFile, threads: int, providers: list[str], batch: int,
                 allow_fallback: bool = False) -> None:
        from edgernn.runtimes.session import StreamingSession

        self.session = StreamingSession(model, threads=threads, providers=providers, allow_fallback=allow_fallback)
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


class OrtLoop(Runner):
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


class LayerRunner(Runner):
    """A bare ``nn.RNN``/``nn.GRU``/``nn.LSTM`` called directly: ``y, h = m(x, h)``."""

    name = EAGER

    def __init__(self, layer, kind: str, state_names: Sequence[str], init: Mapping[str, np.ndarray]) -> None:
        # kind: the layer's attribute in its RecurrentLayer (rnn, lstm, gru), the prefix of its state names
        from edgernn.recurrent_kinds import kind_of_mode

        self.layer = layer
        parts = kind_of_mode(layer.mode).state_parts  # ("h",) or ("h", "c")
        self.lstm = len(parts) == 2  # the layer takes and returns (h, c)
        self.names = [f"{kind}.{part}" for part in parts]  # the contract's names of its states
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


class LifterRunner(Runner):
    """Any other model, through the exporter's state lifter: ``lifter(*data, *states)``.

    The model may update its arguments in place (a convolution buffer shifted with ``copy_``):
    its pool holds tensors of its own (not views of the arrays onnxruntime is fed), each timed
    call gets fresh copies of its data, made before the clock starts (the lifter's own copying is
    off while timing, :func:`~edgernn.converters.capture.uncopied`), and ``forward`` (the parity
    check) copies what it is given and what it returns."""

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

        tensors = [tuple(torch.from_numpy(a.copy()) for a in p) for p in pool]
        if self.frame_model:  # one frame per forward: split each call's data along its time axis 0
            return [[tuple(t.select(0, f) for t in p) for f in range(p[0].shape[0])] for p in tensors]
        return tensors

    def reset(self) -> None:
        import torch

        self.states = [torch.from_numpy(self.init[n].copy()) for n in self.names]

    def run(self, pool, start, n, out) -> None:
        import torch

        from edgernn.converters.capture import uncopied

        lifter, states, clock, size = self.lifter, self.states, time.perf_counter_ns, len(pool)
        n_states = len(states)
        with torch.inference_mode(), uncopied(lifter):
            if self.frame_model:
                for k in range(start, start + n):
                    frames = [tuple(t.clone() for t in frame) for frame in pool[k % size]]
                    t0 = clock()
                    for frame in frames:
                        res = lifter(*frame, *states)
                        states = res[len(res) - n_states:]
                    out.append(clock() - t0)
            else:
                for k in range(start, start + n):
                    data = tuple(t.clone() for t in pool[k % size])
                    t0 = clock()
                    res = lifter(*data, *states)
                    states = res[len(res) - n_states:]
                    out.append(clock() - t0)
        self.states = list(states)

    def forward(self, inputs):
        import torch

        data = [torch.from_numpy(np.array(a, copy=True)) for a in inputs]  # the caller's arrays stay as they are
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


class BatchMajor(Runner):
    """A PyTorch runner whose final states are reported with the batch axis first, like the file."""

    def __init__(self, inner: Runner, moved: Mapping[str, int]) -> None:
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


def eager_runner(against: Path, contract: Contract, model: str, batch: int, init: Mapping[str, np.ndarray],
                  load_options: Mapping[str, Any], notes: list[str]):
    from torch import nn

    from edgernn.architectures import RecurrentLayer
    from edgernn.checkpoints import load

    options = dict(load_options)
    loaded, load_mib = measured_load(lambda: load(against, **options))
    if loaded.kind == "state_dict" and "batch_first" not in options and contract.inputs:
        # a bare layer's state_dict does not record its layout: take it from the file
        options["batch_first"] = contract.inputs[0].batch_axis == 0
        loaded, load_mib = measured_load(lambda: load(against, **options))
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
        runner: Runner = LayerRunner(module.layer, module.kind, ctx.state_names, init)
        notes.append(f"pytorch eager calls the bare nn.{type(module.layer).__name__} directly (y, h = m(x, h))")
    else:
        runner = LifterRunner(ctx, init)
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
        runner = BatchMajor(runner, moved)
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


def plain_runner(path: Path, contract: Contract, threads: int, providers: list[str],
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
        runner = OrtLoop(PLAIN, str(path), threads, providers, data, len(contract.outputs), pairs, init)
        runner.mapping = how
        return runner

    runner, load_mib = measured_load(make)
    runner.load_memory_mib = load_mib
    notes.append(f"{PLAIN} runs {path.name}; {runner.mapping}")
    return runner


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
            raise MismatchError(f"state input {i!r} of {path} has shape {fmt_shape(got)} but state {state!r} of the "
                                f"file has {fmt_shape(want)}")
    pairs = [(s, i, o) for s, i, o in zip(order, st_in, st_out)]
    return ins[:n_in], pairs, f"states matched {how}: " + ", ".join(f"{i} -> {s}" for s, i, _ in pairs)


def _context(module, contract: Contract, against: str):
    """The exporter's view of ``module`` (data inputs, lifted states, state lifter), for ``contract.mode``."""
    from edgernn.converters.io import InputSpec
    from edgernn.converters.lift import LiftState
    from edgernn.converters.passes import ExportContext, ExportOptions
    from edgernn.converters.resolve import ResolveInputs
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
            raise MismatchError(f"input {t.name!r} differs: {model} takes {t.dtype} {fmt_shape(t.shape)} but {against} "
                                f"takes {spec.dtype} {fmt_shape(shape)}")
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
            raise MismatchError(f"state {name!r} differs: {fmt_shape(shape)} in {model} but {fmt_shape(have[name])} in "
                                f"{against} (at batch {batch})")


def fmt_shape(shape: Sequence) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


# ---------------------------------------------------------------- memory

def status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def clear_high_water_mark() -> bool:
    """Reset the process's peak resident size to its current size (Linux ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return status_kib("VmHWM") is not None
    except OSError:
        return False


def maxrss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def rss_mib() -> float | None:
    kib = status_kib("VmRSS")
    return None if kib is None else kib / 1024


def measured_load(make: Callable[[], Any]) -> tuple[Any, float | None]:
    gc.collect()
    before = rss_mib()
    obj = make()
    gc.collect()
    after = rss_mib()
    return obj, (None if before is None or after is None else max(after - before, 0.0))
