"""Streaming execution of edgernn ONNX files with onnxruntime: state is carried for you."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np

from edgernn.contract import BATCH, Contract, ContractError, StateSpec, TensorSpec
from edgernn.errors import EdgernnError
from edgernn.modelfile import ModelFile
from edgernn.runtimes.bound import BoundStates, NonFinite, all_finite

#: what a stream does with NaN or infinity in its inputs or carried state (see StreamingSession)
NONFINITE_POLICIES = ("raise", "reset", "ignore")
NonFinitePolicy = Literal["raise", "reset", "ignore"]


class StreamError(EdgernnError):
    """Data fed to a stream does not fit the model."""


@dataclass
class StreamStats:
    """Counts kept by a :class:`StreamingSession` (or a :class:`StreamBatcher`) since it opened."""

    #: calls that ran the model
    calls: int = 0
    #: streams put back to their start values because their input or state held NaN or infinity
    #: (``nonfinite="reset"``)
    nonfinite_resets: int = 0


def check_policy(nonfinite: str) -> str:
    if nonfinite not in NONFINITE_POLICIES:
        raise StreamError(f"nonfinite must be one of {', '.join(NONFINITE_POLICIES)}; got {nonfinite!r}")
    return nonfinite


def first_nonfinite(value: np.ndarray) -> tuple[int, ...] | None:
    """The index of the first NaN or infinity in a float array (None: all finite, or not float)."""
    if value.dtype.kind not in "fc" or value.size == 0:
        return None
    bad = np.argwhere(~np.isfinite(value))
    return tuple(int(i) for i in bad[0]) if len(bad) else None


def nonfinite_entries(value: np.ndarray, batch_axis: int | None) -> set[int] | None:
    """Batch entries of ``value`` that hold NaN or infinity (None: the array has no batch axis
    and holds some)."""
    if value.dtype.kind not in "fc" or value.size == 0 or bool(np.isfinite(value).all()):
        return set()
    if batch_axis is None:
        return None
    bad = ~np.isfinite(value)
    return {int(b) for b in np.nonzero(bad.any(axis=tuple(a for a in range(value.ndim) if a != batch_axis)))[0]}


def kind_of(value: np.ndarray, index: tuple[int, ...]) -> str:
    v = value[index]
    return "NaN" if np.isnan(v) else "infinity"


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


class StreamingSession:
    """One onnxruntime session over an edgernn file, carrying the recurrent state between calls.

    >>> s = StreamingSession("gru.onnx")
    >>> y = s.step(frames)["y"]      # frames: [batch, T, features] (layout as in `edgernn info`)
    >>> s.state["gru.h"]             # the carried state, by name
    >>> s.reset()                    # start a new stream (states back to their init values)

    ``step`` feeds one call's worth of data: one frame in ``step`` mode, any number of frames in
    ``chunk`` mode, a whole sequence in ``sequence`` mode. ``stream`` splits long arrays into
    calls of ``chunk`` frames and joins the outputs along their time axes.

    Calls go through a fast path (``BoundStates``): states live in preallocated OrtValues bound
    once, on the provider's device (a GPU keeps them there between calls). ``providers``: short
    names (``cpu``, ``cuda``, ``tensorrt``...), onnxruntime's names, or ``auto``; a provider that
    cannot start is an error unless ``allow_fallback`` (then ``notes`` says so). ``threads`` and
    ``spin``: see :func:`session_options`; ``options``: your own ``onnxruntime.SessionOptions``
    instead (profiling, other optimization levels).

    ``model``: a path, the file's bytes or a :class:`~edgernn.modelfile.ModelFile`, which
    resolves the contract (``state_pairs`` and ``contract`` are passed to it): the file's
    metadata; for a file without edgernn metadata (exported by others: silero-vad, icefall,
    optimum...) the state pairs found by the documented rule or the ``state_pairs`` given (graph
    input name -> graph output name, which also overrides a file's metadata); the sidecar
    ``<name>.edgernn.json`` of an ``.ort`` file from another exporter; or the whole ``contract``
    given. ``contract_from`` says which it was: ``"metadata"``, ``"inferred"``, ``"sidecar"`` or
    ``"given"``; ``file`` is the ModelFile. A data input with neither a batch nor a time axis
    (silero-vad's scalar ``sr``) is not streamed: pass it on every ``step`` call, and ``stream``
    feeds it whole to every call.

    **NaN and infinity.** ``nonfinite`` says what a call does when its float inputs or the state
    carried into it hold NaN or infinity. ``"raise"`` (the default): a :class:`StreamError` naming
    the input or state, the frame of the stream and the batch entry, before the model runs (the
    state stays as it was). ``"reset"``: the affected streams (batch entries) start over from their
    start values, counted in ``stats.nonfinite_resets``: a state that holds NaN going into a call
    is reset before the call runs; a frame with NaN runs as given (its outputs are what the runtime
    makes of it) and the state after it is reset. ``"ignore"``: no check. Why it matters:
    PyTorch propagates a NaN through the recurrence, but onnxruntime's recurrent kernels (the ONNX
    ``GRU``/``LSTM`` ops) can turn a NaN input into finite numbers, so a stream that meets one NaN
    would carry a wrong state for the rest of its life, silently. On the CPU the check is one dot
    product over the state and the frame (0.7-1 us a call, docs/performance.md).
    """

    def __init__(self, model: str | Path | bytes | ModelFile, *, threads: int | None = 1,
                 providers: str | Sequence[str] | None = None, state_pairs: Mapping[str, str] | None = None,
                 contract: Contract | None = None, allow_fallback: bool = False, spin: bool | None = None,
                 options=None, nonfinite: NonFinitePolicy = "raise") -> None:
        import onnxruntime as ort

        from edgernn.runtimes import providers as eps

        self._bound: BoundStates | None = None
        self._nonfinite = check_policy(nonfinite)
        #: calls run and streams reset for NaN (``nonfinite="reset"``)
        self.stats = StreamStats()
        self._frame = 0  # frames fed to the current streams before this call
        self._call_frames = 1  # frames in a call shaped like the last one
        self.file: ModelFile = ModelFile.open(model, state_pairs=state_pairs, contract=contract)
        source = self.file.source
        self.contract: Contract = self.file.contract  # (says what is wrong with a file that is not a model)
        self.contract_from: str = self.file.contract_from
        requested = eps.resolve(providers)
        # by path where there is one (onnxruntime then finds weights kept in external files)
        load = str(self.file.path) if self.file.path is not None else self.file.data
        try:
            opts = options if options is not None else session_options(threads, spin)
            self.session = ort.InferenceSession(load, opts, providers=requested)
        except Exception as e:
            raise EdgernnError(f"onnxruntime cannot load {source}: {str(e).splitlines()[0][:300]}") from None
        self.notes: list[str] = eps.check_started(self.session, requested, allow_fallback, source)
        self.provider: str = self.session.get_providers()[0]
        self.device: str = eps.device_of(self.session)
        self.inputs: tuple[TensorSpec, ...] = self.contract.inputs
        self.outputs: tuple[TensorSpec, ...] = self.contract.outputs
        self.states: tuple[StateSpec, ...] = self.contract.states
        self._output_names = [t.name for t in self.outputs] + [s.output for s in self.states]
        self._input_names = [t.name for t in self.inputs]
        self._data_output_names = [t.name for t in self.outputs]
        # per input: (name, dtype, batch axis) for the per-call check; shapes that passed it
        self._fast_checks = [(t.name, np.dtype(t.dtype), t.batch_axis) for t in self.inputs]
        self._seen_shapes: dict[str, tuple] = {}
        # the bound fast path needs every state's shape known once the batch is: else plain run()
        self._bindable = all(isinstance(d, int) or d == BATCH for s in self.states for d in s.shape)
        self._state: dict[str, np.ndarray] = {}  # the plain path's state
        self.batch_size: int | None = None
        self._stored_init = self.file.start_values()
        _check_timing(self.contract, source)
        # inputs whose frames per call must be a multiple of their frame_multiple (checked per new shape)
        self._multiples = {t.name: t.frame_multiple for t in self.inputs
                           if t.frame_multiple > 1 and t.time_axis is not None}
        self._fresh = True  # no call since the streams started (stream(align=True) needs it)
        #: zero frames the last ``stream(align=True)`` fed at its end to flush the outputs' delay
        self.flushed_frames = 0

    @property
    def mode(self) -> str:
        return self.contract.mode

    @property
    def nonfinite(self) -> str:
        """What a call does with NaN or infinity in its inputs or carried state: ``raise``,
        ``reset`` or ``ignore`` (may be changed between calls)."""
        return self._nonfinite

    @nonfinite.setter
    def nonfinite(self, policy: str) -> None:
        self._nonfinite = check_policy(policy)
        if self._bound is not None:
            self._bound.check = policy != "ignore"

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
            self._bound = BoundStates(self.session, self.states, self.inputs, self.outputs, values, self.device,
                                      check=self.nonfinite != "ignore")

    def initial_state(self, batch_size: int) -> dict[str, np.ndarray]:
        """Each state's ``init`` value for ``batch_size`` streams."""
        out = {}
        for s in self.states:
            if s.name in self._stored_init:  # stored with size 1 on the batch axis: one copy per stream
                value = self._stored_init[s.name]
                reps = [batch_size if k == s.batch_axis else 1 for k in range(value.ndim)]
                out[s.name] = np.tile(value, reps) if s.batch_axis is not None else value.copy()
            else:
                out[s.name] = np.zeros(s.concrete_shape(batch_size), dtype=np.dtype(s.dtype))
        return out

    def reset(self, batch_size: int | None = None, state: Mapping[str, np.ndarray] | None = None) -> None:
        """Start new streams: states go back to their init values (or to ``state``, if given).
        Without ``batch_size`` the batch is taken from the next call's input."""
        self.batch_size = batch_size
        self._state = {}
        self._fresh = state is None
        self._frame = 0
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
        if value.dtype != np.dtype(dtype):
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
                self._call_frames = value.shape[spec.time_axis] if spec.time_axis is not None else 1
            if batch_axis is not None:
                batch = value.shape[batch_axis]
        if not self._started:
            self.reset(batch or 1)
        elif batch is not None and self.batch_size is not None and batch != self.batch_size:
            raise StreamError(f"input has batch {batch} but the carried state has batch {self.batch_size}; "
                              "call reset() to start streams of another batch size")
        self._fresh = False
        if self._bound is not None:
            try:
                results = self._bound.run(feeds)
            except NonFinite:
                return self._nonfinite_call(feeds)
            self._frame += self._call_frames
            self.stats.calls += 1
            return dict(zip(self._data_output_names, results))
        if self.nonfinite != "ignore" and not (all_finite(feeds.values()) and all_finite(self._state.values())):
            return self._nonfinite_call(feeds)
        return self._run_plain(feeds)

    def _run_plain(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for s in self.states:
            feeds[s.input] = self._state[s.name]
        results = self.session.run(self._output_names, feeds)
        n = len(self.outputs)
        self._state = {s.name: r for s, r in zip(self.states, results[n:])}
        self._frame += self._call_frames
        self.stats.calls += 1
        return {t.name: r for t, r in zip(self.outputs, results[:n])}

    def _nonfinite_call(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A call whose inputs or carried state hold NaN or infinity (found by the cheap check):
        say which (``raise``), or start the affected streams over (``reset``)."""
        state = self.state
        if self.nonfinite == "raise":
            for spec in self.inputs:
                at = first_nonfinite(feeds[spec.name])
                if at is not None:
                    frame = self._frame + (at[spec.time_axis] if spec.time_axis is not None else 0)
                    where = f" (batch entry {at[spec.batch_axis]})" if spec.batch_axis is not None else ""
                    raise StreamError(f"input {spec.name!r} holds {kind_of(feeds[spec.name], at)} at frame {frame} "
                                      f"of the stream{where}; clean the data, or open the session with "
                                      "nonfinite='reset' to start such streams over (or 'ignore')")
            for spec in self.states:
                at = first_nonfinite(state[spec.name])
                if at is not None:
                    where = f" (batch entry {at[spec.batch_axis]})" if spec.batch_axis is not None else ""
                    raise StreamError(f"state {spec.name!r} holds {kind_of(state[spec.name], at)} going into frame "
                                      f"{self._frame} of the stream{where}; the model made it, or it was set so: "
                                      "reset() the stream, or open the session with nonfinite='reset' (or 'ignore')")
            raise StreamError("the check for NaN found one that it cannot place; open the session with "
                              "nonfinite='ignore' and report this")  # (the cheap and the exact check disagree)
        carried = self._entries({s.name: (state[s.name], s.batch_axis) for s in self.states})
        if carried:
            self._restart(carried)
        fed = self._entries({t.name: (feeds[t.name], t.batch_axis) for t in self.inputs})
        if self._bound is not None:
            self._bound.check = False  # this call runs as given
            try:
                results = dict(zip(self._data_output_names, self._bound.run(feeds)))
            finally:
                self._bound.check = True
            self._frame += self._call_frames
            self.stats.calls += 1
        else:
            results = self._run_plain(feeds)
        if fed:
            self._restart(fed)
        return results

    def _entries(self, arrays: Mapping[str, tuple[np.ndarray, int | None]]) -> set[int]:
        """Batch entries that hold NaN or infinity in any of ``arrays`` (every entry where an array
        without a batch axis does)."""
        out: set[int] = set()
        for value, axis in arrays.values():
            bad = nonfinite_entries(value, axis)
            if bad is None:
                return set(range(self.batch_size or 1))
            out |= bad
        return out

    def _restart(self, entries: set[int]) -> None:
        """Put batch entries ``entries`` back to their start values (other streams keep theirs)."""
        batch = self.batch_size or 1
        init = self.initial_state(batch)
        values = self.state
        for s in self.states:
            if s.batch_axis is None or len(entries) == batch:
                values[s.name] = init[s.name]
            else:
                index = (slice(None),) * s.batch_axis + (sorted(entries),)
                values[s.name][index] = init[s.name][index]
        self._load(values)
        self.stats.nonfinite_resets += len(entries)

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
        Outputs without a time axis are stacked along a new leading axis, one entry per call (in
        every mode: the last entry is the value after the whole stream). The state is not reset
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

        # the axis each output is joined on (an output without time: one entry per call, stacked on a new axis 0)
        join = {t.name: t.time_axis if t.time_axis is not None else 0 for t in self.outputs}

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
            else:
                value = np.stack(pieces[t.name], axis=0)
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


def _stream_shape(spec: TensorSpec) -> list:
    return list(spec.shape) if spec.time_axis is not None else ["time", *spec.shape]
