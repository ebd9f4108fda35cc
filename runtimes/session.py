"""Streaming execution of edgernn ONNX files with onnxruntime: state is carried for you."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from edgernn.contract import BATCH, Contract, ContractError, StateSpec, TensorSpec, infer_contract
from edgernn.errors import EdgernnError

_NP = {"float32": np.float32, "float16": np.float16, "float64": np.float64, "int64": np.int64,
       "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint64": np.uint64, "uint32": np.uint32,
       "uint16": np.uint16, "uint8": np.uint8, "bool": np.bool_}


class StreamError(EdgernnError):
    """Data fed to a stream does not fit the model."""


def session_options(threads: int | None = 1, spin: bool | None = None):
    """onnxruntime options suited to streaming at small batch.

    ``threads`` intra-op threads: 1 by default, since a step of a streaming RNN is too small to
    split (``None`` or 0: onnxruntime's default, one per core). ``spin``: whether idle pool
    threads busy-wait for the next call; only matters with more than one thread. Off by
    default: between frames of a live stream spinning burns a core for nothing; turn it on when
    calls come back to back (benchmarks, offline batches). Sequential execution, all graph
    optimizations (measured: no level is faster for these graphs, docs/performance.md).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if spin is not None or (threads or 0) > 1:
        flag = "1" if spin else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", flag)
        opts.add_session_config_entry("session.inter_op.allow_spinning", flag)
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


class _BoundStates:
    """The carried state as two preallocated sets of OrtValues on the session's device, bound once
    to two IOBindings that swap roles each call: the state outputs of one call are the state
    inputs of the next, with no allocation, copy or name lookup per call, and on a GPU no trip
    through host memory. Data inputs are bound per call (no copy on the CPU); data outputs are
    allocated by onnxruntime on the host."""

    def __init__(self, session, states: Sequence[StateSpec], inputs: Sequence[TensorSpec],
                 outputs: Sequence[TensorSpec], values: Mapping[str, np.ndarray], device: str) -> None:
        import onnxruntime as ort

        self.session, self.device = session, device
        self.shapes = {s.name: values[s.name].shape for s in states}
        self.buffers: list[dict[str, np.ndarray]] = [{}, {}]  # host arrays the CPU OrtValues share
        self.values: list[dict] = [{}, {}]
        for k in (0, 1):
            for s in states:
                v = np.ascontiguousarray(values[s.name], dtype=_NP[s.dtype])
                if device == "cpu":
                    buf = v.copy()
                    self.buffers[k][s.name] = buf
                    self.values[k][s.name] = ort.OrtValue.ortvalue_from_numpy(buf)
                else:
                    self.values[k][s.name] = ort.OrtValue.ortvalue_from_numpy(v, device, 0)
        self.bindings = []
        for k in (0, 1):
            b = session.io_binding()
            for t in outputs:  # first, so that they come first in get_outputs()
                b.bind_output(t.name, "cpu")
            for s in states:
                b.bind_ortvalue_input(s.input, self.values[k][s.name])
                b.bind_ortvalue_output(s.output, self.values[1 - k][s.name])
            self.bindings.append(b)
        self.output_names = [t.name for t in outputs]
        self.input_names = [t.name for t in inputs]
        self._ort = ort
        self.preallocate = True
        # per binding: input shapes -> (input buffers, output buffers), each [(host array, OrtValue)]
        self.slots: list[dict] = [{}, {}]
        self.bound_key: list = [None, None]  # per binding: the input shapes its buffers are bound for
        self.cur = 0  # index of the set holding the current state
        self._feeds: Mapping[str, np.ndarray] = {}

    def fits(self, values: Mapping[str, np.ndarray]) -> bool:
        return all(values[k].shape == shape for k, shape in self.shapes.items())

    def write(self, values: Mapping[str, np.ndarray]) -> None:
        for name, value in values.items():
            if self.device == "cpu":
                np.copyto(self.buffers[self.cur][name], value)
            else:
                self.values[self.cur][name].update_inplace(np.ascontiguousarray(value))

    def read(self) -> dict[str, np.ndarray]:
        if self.device == "cpu":
            return {k: v.copy() for k, v in self.buffers[self.cur].items()}
        return {k: v.numpy() for k, v in self.values[self.cur].items()}

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """One call: data in, run, swap the state sets; return the data outputs (new arrays).

        Data inputs and outputs go through host buffers bound once per input shape, learnt on
        the first call of each shape (where onnxruntime sizes the outputs): a call shaped like an
        earlier one only copies the frames in and the outputs out. A graph whose output shapes
        depend on more than its input shapes makes onnxruntime refuse a buffer; from then on
        inputs are bound and outputs allocated every call."""
        k = self.cur
        b = self.bindings[k]
        key = tuple(v.shape for v in feeds.values()) if self.preallocate else None
        slot = self.slots[k].get(key) if key is not None else None
        if slot is None:
            self._bind_io(b, feeds, None)
            self.bound_key[k] = None
        else:
            if self.bound_key[k] != key:
                self._bind_io(b, None, slot)
                self.bound_key[k] = key
            for (buf, _), value in zip(slot[0], feeds.values()):
                np.copyto(buf, value)
        try:
            self.session.run_with_iobinding(b)
        except RuntimeError:
            if slot is None:
                raise
            self.preallocate, slot = False, None  # output shapes vary: let onnxruntime size them
            self.bound_key = [None, None]
            self._bind_io(b, feeds, None)
            self.session.run_with_iobinding(b)
        self.cur ^= 1
        if slot is not None:
            return [buf.copy() for buf, _ in slot[1]]
        values = b.get_outputs()
        arrays = [values[i].numpy() for i in range(len(self.output_names))]
        if key is not None:
            slots = self.slots[k]
            if len(slots) >= 8:  # many chunk sizes: keep the memory bounded
                slots.clear()
            slots[key] = (self._buffers(feeds.values()), self._buffers(arrays))
        return arrays

    def _buffers(self, like) -> list:
        """(host array, OrtValue sharing its memory) shaped like each of ``like``."""
        bufs = [np.empty_like(a) for a in like]
        return [(buf, self._ort.OrtValue.ortvalue_from_numpy(buf)) for buf in bufs]

    def _bind_io(self, b, feeds, slot) -> None:
        """Bind the data inputs and outputs: to ``slot``'s buffers, or ``feeds`` and unallocated
        outputs (onnxruntime sizes them for this call)."""
        if slot is None:
            self._feeds = feeds  # the binding points into these arrays until the next bind
            for name, value in feeds.items():
                b.bind_cpu_input(name, value)
            for name in self.output_names:
                b.bind_output(name, "cpu")
            return
        for name, (_, value) in zip(self.input_names, slot[0]):
            b.bind_ortvalue_input(name, value)
        for name, (_, value) in zip(self.output_names, slot[1]):
            b.bind_ortvalue_output(name, value)


class StreamingSession:
    """One onnxruntime session over an edgernn file, carrying the recurrent state between calls.

    >>> s = StreamingSession("gru.onnx")
    >>> y = s.step(frames)["y"]      # frames: [batch, T, features] (layout as in `edgernn info`)
    >>> s.state["gru.h"]             # the carried state, by name
    >>> s.reset()                    # start a new stream (states back to their init values)

    ``step`` feeds one call's worth of data: one frame in ``step`` mode, any number of frames in
    ``chunk`` mode, a whole sequence in ``sequence`` mode. ``stream`` splits long arrays into
    calls of ``chunk`` frames and joins the outputs along their time axes.

    Calls go through a fast path (``_BoundStates``): states live in preallocated OrtValues bound
    once, on the provider's device (a GPU keeps them there between calls). ``providers``: short
    names (``cpu``, ``cuda``, ``tensorrt``...), onnxruntime's names, or ``auto``; a provider that
    cannot start is an error unless ``allow_fallback`` (then ``notes`` says so). ``threads`` and
    ``spin``: see :func:`session_options`; ``options``: your own ``onnxruntime.SessionOptions``
    instead (profiling, other optimization levels).

    A file without edgernn metadata (exported by others: silero-vad, icefall, optimum...) gets
    its contract from :func:`~edgernn.contract.infer_contract`: state pairs found by the
    documented rule, or the ``state_pairs`` given (graph input name -> graph output name, which
    also overrides a file's metadata); ``contract`` gives the whole contract yourself (e.g. one
    built by ``infer_contract(..., batch_axes=...)``). ``contract_from`` says which it was:
    ``"metadata"``, ``"inferred"`` or ``"given"``. A data input with neither a batch nor a time
    axis (silero-vad's scalar ``sr``) is not streamed: pass it on every ``step`` call, and ``stream``
    feeds it whole to every call.
    """

    def __init__(self, model: str | Path | bytes, *, threads: int | None = 1,
                 providers: str | Sequence[str] | None = None, state_pairs: Mapping[str, str] | None = None,
                 contract: Contract | None = None, allow_fallback: bool = False, spin: bool | None = None,
                 options=None) -> None:
        import onnxruntime as ort

        from edgernn.runtimes import providers as eps

        source = "the model" if isinstance(model, bytes) else str(model)
        if not isinstance(model, bytes):
            path = Path(model)
            if not path.is_file():
                raise EdgernnError(f"{path} does not exist or is not a file")
            model = str(path)
        requested = eps.resolve(providers)
        try:
            opts = options if options is not None else session_options(threads, spin)
            self.session = ort.InferenceSession(model, opts, providers=requested)
        except Exception as e:
            raise EdgernnError(f"onnxruntime cannot load {source}: {str(e).splitlines()[0][:300]}") from None
        self.notes: list[str] = eps.check_started(self.session, requested, allow_fallback, source)
        self.provider: str = self.session.get_providers()[0]
        self.device: str = eps.device_of(self.session)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.contract_from = "metadata"
        if contract is None and state_pairs is None and "edgernn.format" in meta:
            self.contract: Contract = Contract.from_metadata(meta, source)
        else:
            if contract is None:
                from edgernn.runtimes.pack import CONTRACT_SUFFIX, is_ort_format, load_contract, sidecar_path

                sidecar = None if isinstance(model, bytes) else sidecar_path(model, CONTRACT_SUFFIX)
                if state_pairs is None and sidecar is not None and sidecar.is_file() and is_ort_format(model):
                    contract = load_contract(sidecar)  # written by `edgernn pack` for a file from another exporter
                else:
                    contract = infer_contract(_graph_of(model, source), state_pairs, source=source)
                self.contract_from = "inferred"
            else:
                self.contract_from = "given"
            self.contract = contract
            self._check_io(source)
        self.inputs: tuple[TensorSpec, ...] = self.contract.inputs
        self.outputs: tuple[TensorSpec, ...] = self.contract.outputs
        self.states: tuple[StateSpec, ...] = self.contract.states
        self._output_names = [t.name for t in self.outputs] + [s.output for s in self.states]
        self._input_names = [t.name for t in self.inputs]
        self._data_output_names = [t.name for t in self.outputs]
        # per input: (name, dtype, batch axis) for the per-call check; shapes that passed it
        self._fast_checks = [(t.name, np.dtype(_NP[t.dtype]), t.batch_axis) for t in self.inputs]
        self._seen_shapes: dict[str, tuple] = {}
        # the bound fast path needs every state's shape known once the batch is: else plain run()
        self._bindable = all(isinstance(d, int) or d == BATCH for s in self.states for d in s.shape)
        self._bound: _BoundStates | None = None
        self._state: dict[str, np.ndarray] = {}  # the plain path's state
        self.batch_size: int | None = None
        self._stored_init = _stored_inits(model, self.states, source)
        _check_timing(self.contract, source)
        # inputs whose frames per call must be a multiple of their frame_multiple (checked per new shape)
        self._multiples = {t.name: t.frame_multiple for t in self.inputs
                           if t.frame_multiple > 1 and t.time_axis is not None}
        self._fresh = True  # no call since the streams started (stream(align=True) needs it)
        #: zero frames the last ``stream(align=True)`` fed at its end to flush the outputs' delay
        self.flushed_frames = 0

    def _check_io(self, source: str) -> None:
        """A contract not read from the file's metadata must name the file's graph I/O."""
        ins = {i.name for i in self.session.get_inputs()}
        outs = {o.name for o in self.session.get_outputs()}
        for name in [t.name for t in self.contract.inputs] + [s.input for s in self.contract.states]:
            if name not in ins:
                raise ContractError(f"{source} has no graph input {name!r}; its inputs are {', '.join(sorted(ins))}")
        for name in [t.name for t in self.contract.outputs] + [s.output for s in self.contract.states]:
            if name not in outs:
                raise ContractError(f"{source} has no graph output {name!r}; its outputs are {', '.join(sorted(outs))}")

    @property
    def mode(self) -> str:
        return self.contract.mode

    @property
    def frame_multiples(self) -> dict[str, int]:
        """Per data input: its frames per call must be a multiple of this (1: any number)."""
        return {t.name: t.frame_multiple for t in self.inputs}

    @property
    def frame_multiple(self) -> int:
        """The frames of every call must be a multiple of this (the model strides over time or works in blocks of frames; 1:
        any number of frames): the least common multiple of the inputs' ``frame_multiple``."""
        return math.lcm(1, *(t.frame_multiple for t in self.inputs))

    @property
    def delays(self) -> dict[str, int]:
        """Per data output: frames of lookahead. Frame ``t`` of the streamed output is frame
        ``t - delay`` of the model's output on the whole sequence (0: no lookahead)."""
        return {t.name: t.delay for t in self.outputs}

    @property
    def delay(self) -> int:
        """The largest delay of the data outputs, in frames (0: every output is in step with the input)."""
        return max((t.delay for t in self.outputs), default=0)

    @property
    def state(self) -> dict[str, np.ndarray]:
        """The current state by name (a copy; empty before the first call or after ``reset``)."""
        if self._bound is not None:
            return self._bound.read()
        return {k: v.copy() for k, v in self._state.items()}

    @property
    def _started(self) -> bool:
        return self._bound is not None or bool(self._state)

    def _load(self, values: Mapping[str, np.ndarray]) -> None:
        """Make ``values`` (checked, every state) the carried state."""
        if not self._bindable or not self.states:
            self._state = {k: np.array(v, copy=True) for k, v in values.items()}
        elif self._bound is not None and self._bound.fits(values):
            self._bound.write(values)
        else:
            self._bound = _BoundStates(self.session, self.states, self.inputs, self.outputs, values, self.device)

    def initial_state(self, batch_size: int) -> dict[str, np.ndarray]:
        """Each state's ``init`` value for ``batch_size`` streams."""
        out = {}
        for s in self.states:
            if s.name in self._stored_init:  # stored with size 1 on the batch axis: one copy per stream
                value = self._stored_init[s.name]
                reps = [batch_size if k == s.batch_axis else 1 for k in range(value.ndim)]
                out[s.name] = np.tile(value, reps) if s.batch_axis is not None else value.copy()
            else:
                out[s.name] = np.zeros(s.concrete_shape(batch_size), dtype=_NP[s.dtype])
        return out

    def reset(self, batch_size: int | None = None, state: Mapping[str, np.ndarray] | None = None) -> None:
        """Start new streams: states go back to their init values (or to ``state``, if given).
        Without ``batch_size`` the batch is taken from the next call's input."""
        self.batch_size = batch_size
        self._state = {}
        self._fresh = state is None
        if batch_size:
            self._load(self.initial_state(batch_size))
        else:
            self._bound = None
        if state is not None:
            self.set_state(state)

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Replace the carried state (every state by name, with this model's shapes and dtypes)."""
        specs = {s.name: s for s in self.states}
        unknown = set(state) - set(specs)
        if unknown:
            raise StreamError(f"unknown state {sorted(unknown)[0]!r}; this model's states are {sorted(specs)}")
        missing = set(specs) - set(state)
        if missing:
            raise StreamError(f"state {sorted(missing)[0]!r} is missing; give every state of the model")
        batch = None
        for name, value in state.items():
            spec = specs[name]
            value = np.asarray(value)
            b = self._check("state", spec.name, value, spec.shape, spec.dtype, spec.batch_axis)
            if batch is not None and b != batch:
                raise StreamError(f"state {name!r} has batch {b} but other states have batch {batch}")
            batch = b
        self._load({k: np.asarray(v) for k, v in state.items()})
        self.batch_size = batch
        self._fresh = False

    def _check(self, what: str, name: str, value: np.ndarray, shape: Sequence, dtype: str,
               batch_axis: int | None) -> int | None:
        if value.dtype != np.dtype(_NP[dtype]):
            raise StreamError(f"{what} {name!r} has dtype {value.dtype}; expected {dtype}")
        if value.ndim != len(shape):
            raise StreamError(f"{what} {name!r} has shape {list(value.shape)}; expected {len(shape)} axes "
                              f"{list(shape)}")
        for axis, (got, want) in enumerate(zip(value.shape, shape)):
            if isinstance(want, int) and got != want:
                raise StreamError(f"{what} {name!r} has shape {list(value.shape)}; expected {list(shape)} "
                                  f"(axis {axis} must be {want})")
        return value.shape[batch_axis] if batch_axis is not None else None

    def step(self, *inputs: np.ndarray, **named: np.ndarray) -> dict[str, np.ndarray]:
        """Feed one call (positional arrays in input order, or by name); return outputs by name."""
        if named or len(inputs) != len(self._input_names):
            feeds = self._feeds(inputs, named)
        else:
            feeds = dict(zip(self._input_names, inputs))
        batch = None
        seen = self._seen_shapes
        for name, dtype, batch_axis in self._fast_checks:
            value = feeds[name]
            # the common case, a frame shaped like the last one, costs one comparison per input
            if (type(value) is not np.ndarray or value.dtype != dtype or value.shape != seen.get(name)
                    or not value.flags.c_contiguous):
                value = feeds[name] = np.asarray(value, order="C")  # (keeps 0-d inputs 0-d)
                spec = self.inputs[self._input_names.index(name)]
                self._check("input", name, value, spec.shape, spec.dtype, batch_axis)
                multiple = self._multiples.get(name)
                if multiple and value.shape[spec.time_axis] % multiple:
                    raise StreamError(f"input {name!r} takes a multiple of {multiple} frames per call (the model "
                                      f"strides over time or works in blocks of frames); got {value.shape[spec.time_axis]}")
                seen[name] = value.shape
            if batch_axis is not None:
                batch = value.shape[batch_axis]
        if not self._started:
            self.reset(batch or 1)
        elif batch is not None and self.batch_size is not None and batch != self.batch_size:
            raise StreamError(f"input has batch {batch} but the carried state has batch {self.batch_size}; "
                              "call reset() to start streams of another batch size")
        self._fresh = False
        if self._bound is not None:
            results = self._bound.run(feeds)
            return dict(zip(self._data_output_names, results))
        for s in self.states:
            feeds[s.input] = self._state[s.name]
        results = self.session.run(self._output_names, feeds)
        n = len(self.outputs)
        self._state = {s.name: r for s, r in zip(self.states, results[n:])}
        return {t.name: r for t, r in zip(self.outputs, results[:n])}

    def _feeds(self, inputs: Sequence[np.ndarray], named: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [t.name for t in self.inputs]
        if len(inputs) > len(names):
            raise StreamError(f"got {len(inputs)} inputs; the model takes {len(names)} ({', '.join(names)})")
        feeds = dict(zip(names, (np.asarray(a) for a in inputs)))
        for k, v in named.items():
            if k not in names:
                raise StreamError(f"unknown input {k!r}; the model's inputs are {', '.join(names)}")
            feeds[k] = np.asarray(v)
        missing = [n for n in names if n not in feeds]
        if missing:
            raise StreamError(f"input {missing[0]!r} is missing; the model's inputs are {', '.join(names)}")
        return {n: feeds[n] for n in names}  # in input order, as the bound buffers are

    def stream(self, *inputs: np.ndarray, chunk: int = 1, align: bool = False,
               **named: np.ndarray) -> dict[str, np.ndarray]:
        """Feed whole streams ``chunk`` frames per call, carrying state; join outputs along time.

        Inputs keep the model's layout; an input that has no time axis in the model (a per-frame
        model) takes an extra leading time axis here, except an input with neither a batch nor a
        time axis (a scalar setting such as silero-vad's ``sr``), which is fed whole to every call.
        Outputs without a time axis are stacked along a new leading axis, one entry per call, when
        the model is per-frame, and are those of the last call otherwise. The state is not reset
        first: call ``reset()`` to start afresh.

        A model that strides over time (``frame_multiple`` > 1) takes a multiple of that many frames
        per call: ``chunk`` and the stream's length must be multiples of it. Outputs with lookahead
        (``delays``) come as the file produces them: frame ``t`` is the model's frame ``t - delay``
        of the whole sequence, the first ``delay`` frames come before the model's first output, and
        the last ``delay`` frames of the model are still to come. ``align=True`` gives the model's
        frames instead, as PyTorch on the whole sequence: it drops each output's first ``delay``
        frames and, at the end, feeds zero frames (in the input's dtype; ``frame_multiple`` per
        call) until every output has its last frames, which is the model's own right zero padding
        where the lookahead layers read the input (a 'same'-padded Conv1d front end), and trims the
        outputs to the frames the stream produced. Since the lookahead's first frames are dropped,
        ``align=True`` starts a stream: it needs fresh streams (a new session, or ``reset()``); the
        zero frames end it (the carried state is then the state after the whole padded sequence:
        ``reset()`` before the next stream).
        """
        if chunk < 1:
            raise StreamError(f"chunk must be at least 1 frame, got {chunk}")
        if self.mode == "step" and chunk != 1:
            raise StreamError(f"this model was exported in step mode and takes one frame per call; use chunk 1, "
                              f"not {chunk}")
        aligning = bool(align) and self.delay > 0
        if aligning and not self._fresh:
            raise StreamError("align=True drops the first frames of a stream, so it must start one: call reset() "
                              "first (or open a new session)")
        feeds = self._feeds(inputs, named)
        streamed = [spec for spec in self.inputs if _streamed(spec)]
        if not streamed:
            raise StreamError("this model has no input with a batch or time axis to stream; call step() instead")
        lengths = {}
        for spec in streamed:
            axis = self._stream_axis(spec)
            arr = feeds[spec.name]
            if arr.ndim <= axis:
                raise StreamError(f"input {spec.name!r} has shape {list(arr.shape)}; expected a stream with "
                                  f"time on axis {axis} of {_stream_shape(spec)}")
            lengths[spec.name] = arr.shape[axis]
        if len(set(lengths.values())) > 1:
            raise StreamError(f"inputs have different stream lengths {lengths}")
        total = next(iter(lengths.values()))
        if total == 0:
            raise StreamError(f"input {next(iter(lengths))!r} has no frames (its time axis has length 0); "
                              "expected at least one frame")
        for name, multiple in self._multiples.items():
            if total % multiple:
                raise StreamError(f"input {name!r} has {total} frames, not a multiple of {multiple} (the model strides "
                                  f"over time); pad or cut the stream to a multiple of {multiple} frames")
        for name, multiple in self._multiples.items():
            if chunk % multiple:
                raise StreamError(f"chunk {chunk} is not a multiple of {multiple}: input {name!r} takes a multiple of "
                                  f"{multiple} frames per call (the model strides over time or works in blocks of frames)")
        per_frame = any(i.time_axis is None for i in streamed)

        def call_of(start: int, stop: int, zeros: bool = False) -> dict[str, np.ndarray]:
            call = {spec.name: feeds[spec.name] for spec in self.inputs if not _streamed(spec)}
            for spec in streamed:
                axis = self._stream_axis(spec)
                part = np.take(feeds[spec.name], range(start, stop), axis=axis)
                if zeros:
                    part = np.zeros_like(part)
                if spec.time_axis is None:
                    part = part[0] if part.shape[0] == 1 else part
                call[spec.name] = part
            return call

        pieces: dict[str, list[np.ndarray]] = {t.name: [] for t in self.outputs}
        for start in range(0, total, chunk):
            out = self.step(**call_of(start, min(start + chunk, total)))
            for t in self.outputs:
                pieces[t.name].append(out[t.name])

        # the axis each output is joined on (None: the last call's value)
        join = {t.name: t.time_axis if t.time_axis is not None else 0 if per_frame else None for t in self.outputs}

        def frames(t: TensorSpec) -> int:
            if t.time_axis is None:
                return len(pieces[t.name])
            return sum(p.shape[t.time_axis] for p in pieces[t.name])

        target: dict[str, int] = {}
        self.flushed_frames = 0
        if aligning:
            target = {t.name: frames(t) for t in self.outputs if join[t.name] is not None}
            step = self.frame_multiple if self.mode != "step" else 1
            flush = call_of(0, step, zeros=True)

            def lacking() -> list[TensorSpec]:
                return [t for t in self.outputs if t.name in target and frames(t) < target[t.name] + t.delay]

            calls = 0
            while lacking():
                if calls > 4 * self.delay + 4:
                    t = lacking()[0]
                    raise StreamError(f"output {t.name!r} gave too few frames for {calls * step} zero frames to "
                                      f"flush its delay of {t.delay}; stream without align=True")
                out = self.step(**flush)
                for t in self.outputs:
                    pieces[t.name].append(out[t.name])
                calls += 1
                self.flushed_frames += step
        result = {}
        for t in self.outputs:
            if t.time_axis is not None:
                value = np.concatenate(pieces[t.name], axis=t.time_axis)
            elif per_frame:
                value = np.stack(pieces[t.name], axis=0)
            else:
                value = pieces[t.name][-1]
            if t.name in target:
                axis = join[t.name]
                value = value[(slice(None),) * axis + (slice(t.delay, t.delay + target[t.name]),)]
            result[t.name] = value
        return result

    @staticmethod
    def _stream_axis(spec: TensorSpec) -> int:
        return 0 if spec.time_axis is None else spec.time_axis


def _check_timing(contract: Contract, source: str) -> None:
    """A data input's ``frame_multiple`` > 1 needs calls of several frames along a time axis."""
    for t in contract.inputs:
        if t.frame_multiple == 1:
            continue
        if contract.mode == "step":
            raise ContractError(f"{source} is a step-mode file whose input {t.name!r} takes a multiple of "
                                f"{t.frame_multiple} frames per call, but a step file takes one frame per call; "
                                "re-export it in chunk mode")
        if t.time_axis is None:
            raise ContractError(f"{source} declares frame_multiple {t.frame_multiple} for input {t.name!r}, which "
                                "has no time axis; re-export it")


def _streamed(spec: TensorSpec) -> bool:
    """Whether ``stream`` splits this input into calls (it has a batch or a time axis)."""
    return spec.batch_axis is not None or spec.time_axis is not None


def _stored_inits(model: str | bytes, states: Sequence[StateSpec], source: str) -> dict[str, np.ndarray]:
    """Start values of states whose ``init`` names a graph initializer (read once, at open)."""
    wanted = {s.init["initializer"]: s for s in states if isinstance(s.init, dict) and "initializer" in s.init}
    bad = [s for s in states if s.init != "zeros" and not (isinstance(s.init, dict) and "initializer" in s.init)]
    if bad:
        raise StreamError(f"state {bad[0].name!r} has init {bad[0].init!r}; expected \"zeros\" or "
                          "{\"initializer\": NAME}")
    if not wanted:
        return {}
    from edgernn.runtimes.pack import STATE_INIT_SUFFIX, is_ort_format, read_stored_inits, sidecar_path

    if is_ort_format(model):  # onnxruntime drops initializers no node reads: `edgernn pack` saved them aside
        if isinstance(model, bytes):
            raise StreamError(f"{source} is an ORT-format model whose states start from stored values; open it by "
                              f"path, so that the <name>{STATE_INIT_SUFFIX} file next to it is read")
        found = read_stored_inits(model, source)
        if not found:
            raise StreamError(f"{source} is an ORT-format model whose states start from stored values, but "
                              f"{sidecar_path(model, STATE_INIT_SUFFIX).name} is not next to it; copy it from the "
                              "folder `edgernn pack` wrote")
    else:
        from onnx import numpy_helper

        graph = _graph_of(model, source).graph
        found = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name in wanted}
    missing = [n for n in wanted if n not in found]
    if missing:
        raise StreamError(f"{source} names initializer {missing[0]!r} as a state's start value, but has no such "
                          "initializer")
    out = {}
    for name, spec in wanted.items():
        value = found[name].astype(_NP[spec.dtype])
        want = spec.concrete_shape(1)
        if value.shape != want:
            raise StreamError(f"start value {name!r} of state {spec.name!r} has shape {list(value.shape)}; expected "
                              f"{list(want)} (the state's shape with size 1 on the batch axis)")
        out[spec.name] = value
    return out


def _graph_of(model: str | bytes, source: str):
    """The ONNX graph of a file onnxruntime has already loaded (weights in external files are not read)."""
    import onnx

    from edgernn.runtimes.pack import is_ort_format

    if is_ort_format(model):
        raise EdgernnError(f"{source} is an ORT-format model without edgernn metadata, so its contract cannot be "
                           "read from a graph; pass contract=edgernn.runtimes.pack.load_contract(PATH_TO_ORT)")
    try:
        if isinstance(model, bytes):
            return onnx.load_from_string(model)
        return onnx.load(model, load_external_data=False)
    except Exception:
        raise EdgernnError(f"{source} is not an ONNX model (onnx.load could not parse it)") from None


def _stream_shape(spec: TensorSpec) -> list:
    return list(spec.shape) if spec.time_axis is not None else ["time", *spec.shape]
