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
                v = np.ascontiguousarray(values[s.name], dtype=np.dtype(s.dtype))
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


__all__ = ["BoundStates"]
