"""The fast path of :class:`~edgernn.runtimes.StreamingSession`: the carried state held in
preallocated OrtValues on the session's device, bound once (:class:`BoundStates`)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from edgernn.contract import StateSpec, TensorSpec


class BoundStates:
    """The carried state as two preallocated sets of OrtValues on the session's device, bound once
    to two IOBindings that swap roles each call: the state outputs of one call are the state
    inputs of the next, with no allocation, copy or name lookup per call, and on a GPU no trip
    through host memory. Data inputs are bound per call (no copy on the CPU); data outputs are
    allocated by onnxruntime on the host.

    ``check``: before each run, look for NaN or infinity in the call's float inputs and in the
    carried state (:meth:`run` raises :class:`NonFinite`, having run nothing). On the CPU the
    float32 states and the inputs of the first call shape share one buffer per set (an arena), so
    the check is one dot product (numpy calls BLAS) with a vector of 2**-100: finite values give a
    small finite sum (no product or sum can overflow), NaN or an infinity gives NaN or an infinity.
    About 0.7 us a call in a 22 us GRU-256 step (docs/performance.md, "The NaN check"). Written by hand since
    ``np.isfinite(x).all()`` costs two passes and an allocation, and no library checks an
    onnxruntime call's feeds."""

    def __init__(self, session, states: Sequence[StateSpec], inputs: Sequence[TensorSpec],
                 outputs: Sequence[TensorSpec], values: Mapping[str, np.ndarray], device: str,
                 check: bool = False) -> None:
        import onnxruntime as ort

        self.session, self.device, self.check = session, device, check
        self.states = list(states)
        self.shapes = {s.name: values[s.name].shape for s in states}
        self.buffers: list[dict[str, np.ndarray]] = [{}, {}]  # host arrays the CPU OrtValues share
        self.values: list[dict] = [{}, {}]
        self._ort = ort
        # per set: one flat float32 buffer under its float32 states (and later the inputs of the
        # first call shape), checked in one dot product; the call shape whose inputs it holds
        self.arena: list[np.ndarray | None] = [None, None]
        self.arena_key: list = [None, None]
        self.tiny: list[np.ndarray | None] = [None, None]  # per set: 2**-100, the arena's size
        for k in (0, 1):
            if device == "cpu":
                self._lay_out(k, values, ())
            else:
                for s in states:
                    v = np.ascontiguousarray(values[s.name], dtype=np.dtype(s.dtype))
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
        self.preallocate = True
        # per binding: input shapes -> (input buffers, output buffers), each [(host array, OrtValue)]
        self.slots: list[dict] = [{}, {}]
        self.bound_key: list = [None, None]  # per binding: the input shapes its buffers are bound for
        self.cur = 0  # index of the set holding the current state
        self._feeds: Mapping[str, np.ndarray] = {}

    def _lay_out(self, k: int, values: Mapping[str, np.ndarray], extra: Sequence[np.ndarray]) -> list[np.ndarray]:
        """(Re)make set ``k``'s host buffers: the float32 states, then room for ``extra`` float32
        arrays (returned, as views), in one arena; other states in buffers of their own. Holds
        ``values``; the OrtValues of set ``k`` are made anew (rebind them if bound)."""
        f32 = np.dtype(np.float32)
        packed = [s for s in self.states if np.dtype(s.dtype) == f32]
        sizes = [int(np.prod(values[s.name].shape)) for s in packed] + [a.size for a in extra]
        arena = np.empty(sum(sizes), f32)
        self.tiny[k] = np.full(arena.size, 2.0 ** -100, f32)
        views, at = [], 0
        for n in sizes:
            views.append(arena[at:at + n])
            at += n
        for s in self.states:
            shape = values[s.name].shape
            buf = views.pop(0).reshape(shape) if s in packed else np.empty(shape, np.dtype(s.dtype))
            np.copyto(buf, values[s.name], casting="unsafe")
            self.buffers[k][s.name] = buf
            self.values[k][s.name] = self._ort.OrtValue.ortvalue_from_numpy(buf)
        self.arena[k] = arena
        return [v.reshape(a.shape) for v, a in zip(views, extra)]

    def _arena_inputs(self, k: int, feeds: Mapping[str, np.ndarray]) -> list | None:
        """Move set ``k`` into an arena that also holds this call shape's inputs (all float32):
        their (host array, OrtValue) pairs, or None when an input is not float32."""
        if self.arena_key[k] is not None or any(v.dtype != np.float32 for v in feeds.values()):
            return None
        current = {name: buf.copy() for name, buf in self.buffers[k].items()}
        views = self._lay_out(k, current, list(feeds.values()))
        for s in self.states:  # set k is the state input of binding k and the state output of the other
            self.bindings[k].bind_ortvalue_input(s.input, self.values[k][s.name])
            self.bindings[1 - k].bind_ortvalue_output(s.output, self.values[k][s.name])
        return [(v, self._ort.OrtValue.ortvalue_from_numpy(v)) for v in views]

    def finite(self, k: int, feeds: Mapping[str, np.ndarray]) -> bool:
        """Whether the call's float inputs and set ``k``'s states hold no NaN or infinity (the
        exact check; :meth:`run` has the fast one)."""
        arrays = list(feeds.values()) + list(self.buffers[k].values() if self.device == "cpu"
                                             else (v.numpy() for v in self.values[k].values()))
        return all_finite(arrays)

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
            if self.check and not self.finite(k, feeds):
                raise NonFinite
            self._bind_io(b, feeds, None)
            self.bound_key[k] = None
        else:
            if self.bound_key[k] != key:
                self._bind_io(b, None, slot)
                self.bound_key[k] = key
            for (buf, _), value in zip(slot[0], feeds.values()):
                np.copyto(buf, value)
            if self.check:
                arena = slot[2]  # when the arena holds this shape's inputs (and slot[3] is 2**-100s)
                if arena is None:
                    if not self.finite(k, feeds):
                        raise NonFinite
                else:
                    try:
                        if not abs(_dot(arena, slot[3])) < 1e30:
                            raise NonFinite
                    except RuntimeWarning:  # +inf and -inf met (warnings as errors): not finite either
                        raise NonFinite from None
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
                self.arena_key[k] = None  # (the next slot's inputs take the arena's room)
            inputs = self._arena_inputs(k, feeds) if self.check and self.device == "cpu" else None
            if inputs is not None:
                self.arena_key[k] = key
                self.bound_key[k] = None  # set k's state values were made anew: bind them again
            arena, tiny = (self.arena[k], self.tiny[k]) if inputs is not None else (None, None)
            slots[key] = (inputs or self._buffers(feeds.values()), self._buffers(arrays), arena, tiny)
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


_dot = np.dot


class NonFinite(Exception):
    """A call's inputs or carried state hold NaN or infinity (raised before anything ran)."""


def all_finite(arrays) -> bool:
    """Whether no float array among ``arrays`` holds NaN or infinity (other dtypes pass)."""
    return all(a.dtype.kind not in "fc" or bool(np.isfinite(a).all()) for a in arrays)


__all__ = ["BoundStates", "NonFinite", "all_finite"]
