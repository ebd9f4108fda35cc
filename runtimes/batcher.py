"""Many independent streams through one onnxruntime session: states stacked on their batch axes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgernn.runtimes.session import (NonFinitePolicy, StreamError, StreamingSession, StreamStats, check_policy,
                                      first_nonfinite, kind_of, nonfinite_entries)

Frame = Any  # an array (one-input models) or {input name: array}


class StreamBatcher:
    """Serve many independent streams with one onnxruntime session, one ``run`` per call.

    >>> b = StreamBatcher("gru_step.onnx", capacity=64)
    >>> a, c = b.open(), b.open()                       # two streams, each at its init state
    >>> out = b.step({a: frame_a, c: frame_c})          # one run for both
    >>> out[a]["y"]                                     # stream a's outputs, by output name
    >>> b.reset(a); b.close(c); b.streams               # (a,)

    Each stream owns one slot on the batch axis of every state; a call stacks the frames of the
    streams it is given, runs the model once and keeps each stream's new state in its slot, so
    every stream gets exactly what a :class:`StreamingSession` of its own would give it (within
    float rounding of the batched kernels).

    ``model``: a path (or the bytes) of an edgernn file, a :class:`~edgernn.modelfile.ModelFile`,
    or an open :class:`StreamingSession`, whose onnxruntime session and contract are used
    (``threads`` and ``session_args`` then do not apply). ``session_args`` go to :class:`StreamingSession` (``providers``, ``state_pairs``,
    ``contract``). ``capacity``: the most streams open at once; state memory for that many is
    allocated up front.

    **Streams.** ``open()`` starts a stream at the model's init state (zeros, or the start value
    stored in the file) and returns its id, an ``int`` never reused; ``reset(id)`` puts a stream
    back to its init state; ``close(id)`` ends it and frees its slot; ``streams`` lists the open
    ids (in slot order); ``state(id)`` / ``set_state(id, state)`` read and write one stream's
    state (model layout, size 1 on the batch axis).

    **Calls.** ``step({id: frame, ...})`` steps the given streams (any subset of the open ones,
    in any order) and returns ``{id: {output name: array}}``. A frame is one array for a model
    with one input, or ``{input name: array}`` with every input for a model with several. Each
    array has the model's layout (``edgernn info``) with size 1 on the batch axis, or leaves the
    batch axis out; its dtype must be the model's. One frame per call in ``step`` mode; in
    ``chunk`` (and ``sequence``) mode any number of frames (a multiple of ``frame_multiple`` for
    a model that strides over time), the same number for all streams of one call (step streams
    with other lengths in another call). Outputs come as the file produces them: an output with
    lookahead (``delays``) is ``delay`` frames behind its stream. Outputs have the model's layout
    with size 1 on the batch axis; for speed they are views of one array per output, fresh each
    call. An input without a batch axis (silero-vad's ``sr``) is the same for all streams: pass it
    as ``step(frames, shared={name: value})``; an output without a batch axis is given to every
    stream of the call. Anything that does not fit raises :class:`StreamError` with one sentence,
    before the model runs (states stay as they were).

    **Speed.** Slots are kept dense: stream slots are ``0..n-1`` for ``n`` open streams (closing
    a stream moves the last slot into its place), and each state's ``n`` slots sit contiguously
    at the start of a buffer preallocated for ``capacity`` streams. When a call steps every open
    stream, or any run of neighbouring slots, the model reads the states in place and the new
    states are copied back with one ``copyto`` per state; other subsets gather and scatter along
    the batch axis. Open, close and reset cost one stream's state (a state whose batch axis is not
    its first axis is moved within its buffer when the number of streams changes). Not
    thread-safe: use one batcher per thread, or a lock.

    **NaN and infinity.** ``nonfinite`` is the policy of :class:`StreamingSession`, per stream:
    ``"raise"`` (default) names the stream, the input or state and the frame of the call before
    the model runs (no state changes); ``"reset"`` starts only the affected streams over from the
    start values (a state holding NaN before the call runs, a frame holding NaN after it), counted
    in ``stats.nonfinite_resets``; ``"ignore"`` checks nothing. The check is one dot product per
    stacked input and state.
    """

    def __init__(self, model: str | Path | bytes | StreamingSession, *, capacity: int = 64,
                 threads: int | None = 1, nonfinite: NonFinitePolicy = "raise", **session_args: Any) -> None:
        #: what a call does with NaN or infinity in a stream's inputs or state: raise, reset or ignore
        self.nonfinite: str = check_policy(nonfinite)
        #: calls run, and streams reset for NaN (``nonfinite="reset"``)
        self.stats = StreamStats()
        self._tiny: dict[int, np.ndarray] = {}  # size -> 2**-100 vector (the cheap check's other operand)
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
            raise StreamError(f"capacity must be a whole number of streams, at least 1; got {capacity!r}")
        if isinstance(model, StreamingSession):
            if session_args:
                raise StreamError(f"{', '.join(sorted(session_args))} cannot be applied to an open StreamingSession; "
                                  "give the model's path instead")
            self.session = model
        else:
            self.session = StreamingSession(model, threads=threads, **session_args)
        self.capacity = int(capacity)
        s = self.session
        self.mode: str = s.mode
        self.inputs = s.inputs
        self.outputs = s.outputs
        self.states = s.states
        self._ort = s.session
        #: the frames of a call must be a multiple of this (the model strides over time or works in blocks of frames; see StreamingSession)
        self.frame_multiple: int = s.frame_multiple
        #: per output: frames of lookahead, as the file produces them (frame t is the model's frame t - delay)
        self.delays: dict[str, int] = s.delays
        self._streamed = [t for t in s.inputs if t.batch_axis is not None]
        self._shared = [t for t in s.inputs if t.batch_axis is None]
        if not self._streamed:
            raise StreamError("this model has no input with a batch axis, so streams cannot be stacked; use one "
                              "StreamingSession per stream")
        for kind, specs in (("input", self._streamed), ("state", s.states)):
            for spec in specs:
                if spec.batch_axis is None:
                    raise StreamError(f"{kind} {spec.name!r} has no batch axis, so streams would share it; use one "
                                      "StreamingSession per stream")
                if isinstance(spec.shape[spec.batch_axis], int):
                    raise StreamError(f"{kind} {spec.name!r} has a fixed size of {spec.shape[spec.batch_axis]} on its "
                                      "batch axis, so the file runs at that batch size only; re-export it with a "
                                      "dynamic batch axis")
        self._in_dtype = [np.dtype(t.dtype) for t in self._streamed]
        # expected frame shape (size 1 on the batch axis); None where a dimension is free (time, other symbols)
        self._template = [tuple(1 if k == t.batch_axis else d if isinstance(d, int) else None
                                for k, d in enumerate(t.shape)) for t in self._streamed]
        self._fixed = [None if None in tmpl else tmpl for tmpl in self._template]
        self._input_names = [t.name for t in self._streamed]
        self._one_input = len(self._streamed) == 1 and not self._shared
        self._output_names = [t.name for t in s.outputs] + [st.output for st in s.states]
        self._n_out = len(s.outputs)

        init = s.initial_state(1)
        self._init: dict[str, np.ndarray] = {}
        self._shape1: dict[str, tuple[int, ...]] = {}
        self._flat: dict[str, np.ndarray] = {}
        self._prefix: dict[str, bool] = {}  # slots 0..n-1 of n+1 are the first n's memory (batch axis leads)
        for st in s.states:
            value = np.ascontiguousarray(init[st.name], dtype=np.dtype(st.dtype))
            self._init[st.name] = value
            self._shape1[st.name] = value.shape
            self._flat[st.name] = np.empty(value.size * self.capacity, value.dtype)
            self._prefix[st.name] = int(np.prod(value.shape[:st.batch_axis])) == 1
        self._dense: dict[str, np.ndarray] = {st.name: self._layout(st.name, st.batch_axis, 0) for st in s.states}
        self._slot_of: dict[int, int] = {}
        self._sid_at: list[int] = []
        self._next_id = 0

    # ------------------------------------------------------------------ streams

    @property
    def streams(self) -> tuple[int, ...]:
        """Ids of the open streams, in slot order (stepping them in this order is the fastest)."""
        return tuple(self._sid_at)

    def __len__(self) -> int:
        return len(self._sid_at)

    def __contains__(self, sid: object) -> bool:
        return sid in self._slot_of

    def open(self) -> int:
        """Start a stream at the init state; return its id."""
        n = len(self._sid_at)
        if n >= self.capacity:
            raise StreamError(f"all {self.capacity} stream slots are in use; close a stream first or make the "
                              "StreamBatcher with a larger capacity")
        self._resize(n + 1)
        for st in self.states:
            self._dense[st.name][_at(st.batch_axis, slice(n, n + 1))] = self._init[st.name]
        sid = self._next_id
        self._next_id += 1
        self._slot_of[sid] = n
        self._sid_at.append(sid)
        return sid

    def reset(self, sid: int) -> None:
        """Put stream ``sid`` back to the init state (a new stream in the same slot, same id)."""
        slot = self._slot(sid)
        for st in self.states:
            self._dense[st.name][_at(st.batch_axis, slice(slot, slot + 1))] = self._init[st.name]

    def close(self, sid: int) -> None:
        """End stream ``sid`` and free its slot (the last slot's stream moves into it)."""
        slot = self._slot(sid)
        last = len(self._sid_at) - 1
        if slot != last:
            for st in self.states:
                dense = self._dense[st.name]
                dense[_at(st.batch_axis, slice(slot, slot + 1))] = dense[_at(st.batch_axis, slice(last, last + 1))]
            moved = self._sid_at[last]
            self._sid_at[slot] = moved
            self._slot_of[moved] = slot
        self._sid_at.pop()
        del self._slot_of[sid]
        self._resize(last)

    def state(self, sid: int) -> dict[str, np.ndarray]:
        """Stream ``sid``'s state by name (copies, model layout with size 1 on the batch axis)."""
        slot = self._slot(sid)
        return {st.name: self._dense[st.name][_at(st.batch_axis, slice(slot, slot + 1))].copy() for st in self.states}

    def set_state(self, sid: int, state: Mapping[str, np.ndarray]) -> None:
        """Replace stream ``sid``'s state: every state by name, size 1 on the batch axis (or without it)."""
        slot = self._slot(sid)
        specs = {st.name: st for st in self.states}
        unknown = sorted(set(state) - set(specs))
        if unknown:
            raise StreamError(f"unknown state {unknown[0]!r}; this model's states are {sorted(specs)}")
        missing = sorted(set(specs) - set(state))
        if missing:
            raise StreamError(f"state {missing[0]!r} is missing; give every state of the model")
        values = {}
        for name, st in specs.items():
            value = np.asarray(state[name])
            want = self._shape1[name]
            if value.dtype != np.dtype(st.dtype):
                raise StreamError(f"state {name!r} has dtype {value.dtype}; expected {st.dtype}")
            if value.ndim == len(want) - 1:
                value = np.expand_dims(value, st.batch_axis)
            if value.shape != want:
                raise StreamError(f"state {name!r} has shape {list(value.shape)}; expected {list(want)} (one stream: "
                                  f"size 1 on batch axis {st.batch_axis}, or without that axis)")
            values[name] = value
        for st in self.states:
            self._dense[st.name][_at(st.batch_axis, slice(slot, slot + 1))] = values[st.name]

    def _slot(self, sid: Any) -> int:
        try:
            return self._slot_of[sid]
        except (KeyError, TypeError):
            pass
        if isinstance(sid, (int, np.integer)) and not isinstance(sid, bool) and 0 <= sid < self._next_id:
            raise StreamError(f"stream {sid} was closed; open a new stream with open()") from None
        raise StreamError(f"stream {sid!r} was never opened by this StreamBatcher; open streams with open()") from None

    # ------------------------------------------------------------------ state buffers

    def _layout(self, name: str, batch_axis: int, n: int) -> np.ndarray:
        """The first ``n`` slots of a state's buffer, as one contiguous array of the model's layout."""
        shape = list(self._shape1[name])
        shape[batch_axis] = n
        return self._flat[name][: self._init[name].size * n].reshape(shape)

    def _resize(self, n: int) -> None:
        """Lay the states out for ``n`` open streams, keeping the first ``min(n, now)`` slots' values."""
        for st in self.states:
            old = self._dense[st.name]
            new = self._layout(st.name, st.batch_axis, n)
            if not self._prefix[st.name]:
                keep = _at(st.batch_axis, slice(0, min(n, old.shape[st.batch_axis])))
                new[keep] = old[keep].copy()  # same memory, another layout
            self._dense[st.name] = new

    # ------------------------------------------------------------------ calls

    def step(self, frames: Mapping[int, Frame], shared: Mapping[str, np.ndarray] | None = None
             ) -> dict[int, dict[str, np.ndarray]]:
        """Feed one call for each stream in ``frames`` ({id: frame}); return {id: {output name: array}}."""
        if not isinstance(frames, Mapping):
            raise StreamError(f"step() takes a dict {{stream id: frame}}; got {type(frames).__name__}")
        k = len(frames)
        if k == 0:
            return {}
        slot_of = self._slot_of
        slots: list[int] = []
        wants = list(self._fixed)
        first: list[Any] = [None] * len(wants)
        if self._one_input:
            want, dtype, col = wants[0], self._in_dtype[0], []
            cols = [col]
            for sid, f in frames.items():
                slot = slot_of.get(sid)
                if slot is None:
                    self._slot(sid)
                slots.append(slot)
                if f.__class__ is not np.ndarray or f.shape != want or f.dtype is not dtype:  # checked in full there
                    f = self._frame(sid, 0, f, wants, first)
                    want = wants[0]
                col.append(f)
        else:
            cols = [[] for _ in wants]
            for sid, f in frames.items():
                slot = slot_of.get(sid)
                if slot is None:
                    self._slot(sid)
                slots.append(slot)
                f = self._named(sid, f)
                for i, name in enumerate(self._input_names):
                    a = f[name]
                    if a.__class__ is not np.ndarray or a.shape != wants[i] or a.dtype is not self._in_dtype[i]:
                        a = self._frame(sid, i, a, wants, first)
                    cols[i].append(a)

        n = len(self._sid_at)
        if k == n and slots == list(range(n)):  # every open stream, in slot order: states in place
            sids = list(frames)
            where: Any = None
        else:
            if any(a > b for a, b in zip(slots, slots[1:])):
                order = sorted(range(k), key=slots.__getitem__)
                slots = [slots[i] for i in order]
                cols = [[col[i] for i in order] for col in cols]
            sids = [self._sid_at[s] for s in slots]
            lo, hi = slots[0], slots[-1]
            where = slice(lo, hi + 1) if hi - lo == k - 1 else np.asarray(slots, dtype=np.intp)
            if isinstance(where, slice) and k == n:
                where = None

        feeds: dict[str, np.ndarray] = {}
        for spec, col in zip(self._streamed, cols):
            feeds[spec.name] = col[0] if k == 1 else np.concatenate(col, axis=spec.batch_axis)
        if self._shared or shared:
            feeds.update(self._shared_feeds(shared))
        dense = self._dense
        for st in self.states:
            if where is None:
                feeds[st.input] = dense[st.name]
            elif isinstance(where, slice):
                feeds[st.input] = dense[st.name][_at(st.batch_axis, where)]
            else:
                feeds[st.input] = np.take(dense[st.name], where, axis=st.batch_axis)

        after: list[int] = []
        if self.nonfinite != "ignore" and not self._finite(feeds):
            after = self._nonfinite(feeds, sids, where)
        results = self._ort.run(self._output_names, feeds)
        self.stats.calls += 1

        n_out = self._n_out
        for st, new in zip(self.states, results[n_out:]):
            if where is None:
                np.copyto(dense[st.name], new)
            else:
                dense[st.name][_at(st.batch_axis, where)] = new
        for sid in after:  # their frames held NaN: the state made from them is not carried
            self.reset(sid)
        per_output = [_split(r, t.batch_axis, k) for t, r in zip(self.outputs, results[:n_out])]
        if n_out == 1:
            name = self.outputs[0].name
            return {sid: {name: v} for sid, v in zip(sids, per_output[0])}
        names = [t.name for t in self.outputs]
        return {sid: dict(zip(names, vals)) for sid, *vals in zip(sids, *per_output)}

    def _finite(self, feeds: Mapping[str, np.ndarray]) -> bool:
        """The cheap check: no NaN or infinity in the call's float inputs and states (one dot
        product each with a vector of 2**-100; see BoundStates)."""
        for value in feeds.values():
            if value.dtype != np.float32:
                if value.dtype.kind == "f" and not np.isfinite(value).all():
                    return False
                continue
            flat = value.reshape(-1)
            tiny = self._tiny.get(flat.size)
            if tiny is None:
                if len(self._tiny) > 64:
                    self._tiny.clear()
                tiny = self._tiny[flat.size] = np.full(flat.size, 2.0 ** -100, np.float32)
            try:
                if not abs(np.dot(flat, tiny)) < 1e30:
                    return False
            except RuntimeWarning:  # +inf and -inf met (warnings as errors)
                return False
        return True

    def _nonfinite(self, feeds: dict[str, np.ndarray], sids: list[int], where: Any) -> list[int]:
        """A call whose feeds hold NaN or infinity: raise naming the stream (``raise``), or put the
        streams whose state holds it back to their start values in ``feeds`` and the state
        buffers, and return the streams whose frames hold it (reset after the call)."""
        streams = {st.name: nonfinite_entries(feeds[st.input], st.batch_axis) for st in self.states}
        frames = {t.name: nonfinite_entries(feeds[t.name], t.batch_axis) for t in self._streamed}
        if self.nonfinite == "raise":
            for t in self._streamed:
                if frames[t.name]:
                    pos = min(frames[t.name])
                    one = np.take(feeds[t.name], [pos], axis=t.batch_axis)
                    at = first_nonfinite(one)
                    frame = f" at frame {at[t.time_axis]} of the call" if t.time_axis is not None else ""
                    raise StreamError(f"stream {sids[pos]}'s input {t.name!r} holds {kind_of(one, at)}{frame}; clean "
                                      "the data, or make the StreamBatcher with nonfinite='reset' to start such "
                                      "streams over (or 'ignore')")
            for t in self._shared:
                at = first_nonfinite(feeds[t.name])
                if at is not None:
                    raise StreamError(f"shared input {t.name!r} holds {kind_of(feeds[t.name], at)}; clean the data")
            for st in self.states:
                if streams[st.name]:
                    pos = min(streams[st.name])
                    raise StreamError(f"stream {sids[pos]}'s state {st.name!r} holds NaN or infinity before this call; "
                                      "the model made it, or it was set so: reset() the stream, or make the "
                                      "StreamBatcher with nonfinite='reset' (or 'ignore')")
            raise StreamError("the check for NaN found one that it cannot place; make the StreamBatcher with "
                              "nonfinite='ignore' and report this")  # (the cheap and the exact check disagree)
        carried = sorted(set().union(*streams.values()))
        for pos in carried:
            self.reset(sids[pos])
        if carried:  # the call's state feeds again, from the reset buffers
            for st in self.states:
                dense = self._dense[st.name]
                if where is None:
                    feeds[st.input] = dense
                elif isinstance(where, slice):
                    feeds[st.input] = dense[_at(st.batch_axis, where)]
                else:
                    feeds[st.input] = np.take(dense, where, axis=st.batch_axis)
        fed = sorted(set().union(*frames.values()))
        if any(first_nonfinite(feeds[t.name]) is not None for t in self._shared):
            fed = list(range(len(sids)))
        self.stats.nonfinite_resets += len(carried) + len(fed)
        return [sids[pos] for pos in fed]

    def _named(self, sid: Any, f: Any) -> Mapping[str, Any]:
        """A multi-input frame: {input name: array} with every streamed input."""
        names = self._input_names
        if not isinstance(f, Mapping):
            if len(names) == 1:
                return {names[0]: f}
            raise StreamError(f"stream {sid}'s frame is a {type(f).__name__}; this model has inputs "
                              f"{', '.join(names)}: give {{input name: array}} with every input")
        unknown = [k for k in f if k not in names]
        if unknown:
            if any(t.name == unknown[0] for t in self._shared):
                raise StreamError(f"stream {sid} gives input {unknown[0]!r}, which has no batch axis and is the same "
                                  f"for every stream: pass it as step(frames, shared={{{unknown[0]!r}: value}})")
            raise StreamError(f"stream {sid} gives unknown input {unknown[0]!r}; this model's inputs are "
                              f"{', '.join(names)}")
        missing = [k for k in names if k not in f]
        if missing:
            raise StreamError(f"stream {sid}'s frame has no input {missing[0]!r}; give every input of the model "
                              f"({', '.join(names)})")
        return f

    def _frame(self, sid: Any, i: int, value: Any, wants: list, first: list) -> np.ndarray:
        """Check one stream's array for input ``i`` and return it with size 1 on the batch axis;
        the first stream of a call fixes the free dimensions (frames in chunk mode) for the rest."""
        spec = self._streamed[i]
        name, axis = spec.name, spec.batch_axis
        if isinstance(value, Mapping) and self._one_input:
            value = self._named(sid, value)[name]
        try:
            arr = np.asarray(value)
        except ValueError:
            raise StreamError(f"stream {sid}'s input {name!r} is not an array of one shape") from None
        if arr.dtype != self._in_dtype[i]:
            raise StreamError(f"stream {sid}'s input {name!r} has dtype {arr.dtype}; expected {spec.dtype}")
        template = self._template[i]
        shown = _show(spec.shape)
        if arr.ndim == len(template) - 1:
            arr = np.expand_dims(arr, axis)
        elif arr.ndim != len(template):
            raise StreamError(f"stream {sid}'s input {name!r} has shape {list(arr.shape)}; expected {shown} with "
                              "size 1 on the batch axis, or without the batch axis")
        elif arr.shape[axis] != 1:
            raise StreamError(f"stream {sid}'s input {name!r} has size {arr.shape[axis]} on the batch axis (axis "
                              f"{axis} of {shown}); one stream is one batch entry: give size 1 there, or leave the "
                              "axis out")
        for a, (got, fixed) in enumerate(zip(arr.shape, template)):
            if fixed is not None and got != fixed:
                hint = (": this model was exported in step mode and takes one frame per call"
                        if a == spec.time_axis and self.mode == "step" else "")
                raise StreamError(f"stream {sid}'s input {name!r} has size {got} on axis {a} of {shown}; expected "
                                  f"{fixed}{hint}")
        if wants[i] is None:
            if spec.time_axis is not None and arr.shape[spec.time_axis] == 0:
                raise StreamError(f"stream {sid}'s input {name!r} has no frames (its time axis has length 0); "
                                  "expected at least one frame")
            if spec.time_axis is not None and arr.shape[spec.time_axis] % spec.frame_multiple:
                raise StreamError(f"stream {sid}'s input {name!r} has {arr.shape[spec.time_axis]} frames; the model "
                                  f"takes a multiple of {spec.frame_multiple} frames per call (it strides over time)")
            wants[i], first[i] = arr.shape, sid
        elif arr.shape != wants[i]:
            a = next(a for a, (x, y) in enumerate(zip(arr.shape, wants[i])) if x != y)
            if a == spec.time_axis:
                raise StreamError(f"stream {sid} gives {arr.shape[a]} frames of input {name!r} but stream {first[i]} "
                                  f"gives {wants[i][a]}: all streams of one call need the same number of frames; "
                                  "step the others in another call")
            raise StreamError(f"stream {sid}'s input {name!r} has size {arr.shape[a]} on axis {a} of {shown} but "
                              f"stream {first[i]}'s has {wants[i][a]}: streams of one call must agree on every axis "
                              "but the batch axis")
        return arr

    def _shared_feeds(self, shared: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        shared = dict(shared or {})
        feeds = {}
        for spec in self._shared:
            if spec.name not in shared:
                raise StreamError(f"input {spec.name!r} has no batch axis, so it is the same for every stream: pass "
                                  f"it as step(frames, shared={{{spec.name!r}: value}})")
            value = np.asarray(shared.pop(spec.name))
            if value.dtype != np.dtype(spec.dtype):
                raise StreamError(f"shared input {spec.name!r} has dtype {value.dtype}; expected {spec.dtype}")
            if value.ndim != len(spec.shape) or any(isinstance(d, int) and got != d
                                                    for got, d in zip(value.shape, spec.shape)):
                raise StreamError(f"shared input {spec.name!r} has shape {list(value.shape)}; expected "
                                  f"{_show(spec.shape)}")
            feeds[spec.name] = value
        if shared:
            name = sorted(shared)[0]
            what = "has a batch axis: give it per stream in the frames" if name in self._input_names else \
                "is not an input of this model"
            raise StreamError(f"shared input {name!r} {what}")
        return feeds


def _at(axis: int, index: Any) -> tuple:
    """Index ``index`` on ``axis``, everything on the axes before it."""
    return (slice(None),) * axis + (index,)


def _split(value: np.ndarray, axis: int | None, k: int) -> Sequence[np.ndarray]:
    """One view per batch entry, each keeping the batch axis with size 1 (an output without a batch
    axis goes to every stream as it is)."""
    if axis is None:
        return [value] * k
    if axis == 0:
        return list(value[:, None])
    return list(np.moveaxis(np.expand_dims(value, axis + 1), axis, 0))


def _show(shape: Sequence) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


__all__ = ["StreamBatcher"]
