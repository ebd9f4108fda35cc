"""The model that Triton's Python backend runs for a repository written with ``backend="python"``
(:mod:`edgernn.runtimes.triton_python`): one :class:`~edgernn.runtimes.batcher.StreamBatcher`
per model instance, one stream per sequence.

Triton's sequence batcher hands :meth:`SequenceModel.execute` the requests it batched, each one
stream's data (batch size 1 on axis 0) with the control inputs ``START``, ``END``, ``READY`` and
``CORRID``. The state of each sequence stays here, keyed by ``CORRID``: ``START`` opens it at the
file's start values (or puts a known sequence back to them), ``END`` frees it after its request,
and a sequence that sends nothing for ``max_sequence_idle_microseconds`` is freed as Triton ends
it. The requests of one call go through the batcher in one ``step`` (those whose frames agree in
shape), or one ``step`` each for a file whose activations are quantized at run time (see
:func:`edgernn.runtimes.triton_python.couples_streams`). A request that does not fit gets an error
response of one sentence; the others of its call are answered as usual.

The generated ``model.py`` puts edgernn's packages on ``sys.path`` and imports this module; the
``triton_python_backend_utils`` module comes from Triton's stub (tests pass a stand-in as ``pb``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgernn.runtimes.batcher import StreamBatcher
from edgernn.runtimes.session import StreamError

#: Triton's default when the config gives no max_sequence_idle_microseconds
DEFAULT_IDLE_US = 1_000_000


class SequenceModel:
    """Streams the requests of a Triton Python-backend model instance through a StreamBatcher.

    ``args`` and ``config`` are what Triton gives ``initialize`` (the config parsed from its
    JSON), ``params`` the config's ``parameters`` as strings. ``clock`` gives seconds (for the idle
    timeout; tests pass their own).
    """

    def __init__(self, args: dict[str, Any], config: dict[str, Any], params: dict[str, str], *, pb: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if pb is None:
            import triton_python_backend_utils as pb  # provided by Triton's Python backend stub
        self._pb = pb
        self.name: str = config.get("name", "model")
        path = Path(args["model_repository"]) / str(args["model_version"]) / params.get("edgernn_model_file",
                                                                                      "model.onnx")
        self.batcher = StreamBatcher(str(path), capacity=int(params.get("edgernn_capacity", "128")),
                                     threads=int(params.get("edgernn_threads", "1")))
        #: step the requests of one call together (one run) or apart (one run per stream)
        self.together: bool = params.get("edgernn_batch_streams", "together") != "apart"
        idle_us = config.get("sequence_batching", {}).get("max_sequence_idle_microseconds") or DEFAULT_IDLE_US
        self.idle_s: float = int(idle_us) / 1e6
        self.clock = clock
        self._inputs = [(t.name, t.batch_axis) for t in self.batcher.inputs]
        self._outputs = [(t.name, t.batch_axis) for t in self.batcher.outputs]
        self._one_input = len(self._inputs) == 1
        #: CORRID -> the batcher's stream id, and when the sequence last sent a request
        self.sequences: dict[int, int] = {}
        self.last_seen: dict[int, float] = {}
        self._next_sweep = 0.0

    # ------------------------------------------------------------------ requests

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request, in order."""
        now = self.clock()
        self.drop_idle(now)
        replies: list[Any] = [None] * len(requests)
        work = []
        for k, request in enumerate(requests):
            try:
                item = self._read(request)
            except StreamError as e:
                replies[k] = self._error(str(e))
                continue
            if item is None:  # READY=0: a slot Triton filled with a null request
                replies[k] = self._pb.InferenceResponse(output_tensors=[])
                continue
            work.append((k, *item))
        while work:  # one request per sequence in each round, in the order they came
            seen: set[int] = set()
            this, later = [], []
            for item in work:
                (later if item[1] in seen else this).append(item)
                seen.add(item[1])
            self._round(this, replies, now)
            work = later
        return replies

    def drop_idle(self, now: float, *, force: bool = False) -> list[int]:
        """Free the sequences idle for longer than the timeout; return their CORRIDs."""
        if not force and now < self._next_sweep:
            return []
        self._next_sweep = now + min(1.0, self.idle_s / 4)
        gone = [c for c, t in self.last_seen.items() if now - t > self.idle_s]
        for corrid in gone:
            self._forget(corrid)
        return gone

    def _read(self, request: Any) -> tuple[int, bool, bool, Any] | None:
        """(CORRID, START, END, frame) of a request, or None for a null request (READY=0)."""
        if not self._control(request, "READY", 1):
            return None
        corrid = self._control(request, "CORRID", None)
        if corrid is None:
            corrid = int(request.correlation_id())
        frames = {}
        for name, axis in self._inputs:
            tensor = self._pb.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise StreamError(f"the request of sequence {corrid} has no input {name!r}")
            value = to_numpy(tensor)
            if value.ndim == 0 or value.shape[0] != 1:
                raise StreamError(f"input {name!r} of sequence {corrid} has shape {list(value.shape)}; a request "
                                  "carries one stream: batch size 1 on axis 0")
            frames[name] = value if axis in (None, 0) else np.moveaxis(value, 0, axis)
        frame = frames[self._inputs[0][0]] if self._one_input else frames
        return corrid, bool(self._control(request, "START", 0)), bool(self._control(request, "END", 0)), frame

    def _control(self, request: Any, name: str, default: Any) -> Any:
        tensor = self._pb.get_input_tensor_by_name(request, name)
        return default if tensor is None else int(to_numpy(tensor).reshape(-1)[0])

    def _round(self, items: list, replies: list, now: float) -> None:
        ready = []
        for k, corrid, start, end, frame in items:
            sid = self.sequences.get(corrid)
            if start and sid is not None:
                self.batcher.reset(sid)
            elif start:
                try:
                    sid = self._open(corrid, now)
                except StreamError as e:
                    replies[k] = self._error(str(e))
                    continue
            elif sid is None:
                replies[k] = self._error(
                    f"sequence {corrid} has no state in model {self.name!r}: it ended, idled out (after "
                    f"{self.idle_s:g} s), or the server restarted; send its first request again with "
                    "sequence_start=True")
                continue
            self.last_seen[corrid] = now
            ready.append((k, sid, frame))
        if self.together:
            groups: dict[Any, list] = {}
            for entry in ready:
                groups.setdefault(_shapes(entry[2]), []).append(entry)
            batches = list(groups.values())
        else:
            batches = [[entry] for entry in ready]
        for batch in batches:
            self._step(batch, replies)
        for k, corrid, start, end, frame in items:
            if end and corrid in self.sequences:
                self._forget(corrid)

    def _step(self, batch: list, replies: list) -> None:
        try:
            outs = self.batcher.step({sid: frame for _, sid, frame in batch})
        except StreamError as e:
            if len(batch) > 1:  # find the request at fault: the others still get their outputs
                for entry in batch:
                    self._step([entry], replies)
                return
            replies[batch[0][0]] = self._error(str(e))
            return
        pb = self._pb
        for k, sid, _ in batch:
            out = outs[sid]
            tensors = []
            for name, axis in self._outputs:
                value = out[name]
                if axis is None:
                    value = np.expand_dims(value, 0)
                elif axis:
                    value = np.moveaxis(value, axis, 0)
                tensors.append(from_numpy(pb, name, value))
            replies[k] = pb.InferenceResponse(output_tensors=tensors)

    # ------------------------------------------------------------------ sequences

    def _open(self, corrid: int, now: float) -> int:
        if len(self.batcher) >= self.batcher.capacity:
            self.drop_idle(now, force=True)
        if len(self.batcher) >= self.batcher.capacity:
            raise StreamError(f"all {self.batcher.capacity} sequence slots of model {self.name!r} hold live "
                              f"sequences; sequence {corrid} cannot start until one ends (send sequence_end=True) "
                              "or idles out")
        sid = self.batcher.open()
        self.sequences[corrid] = sid
        return sid

    def _forget(self, corrid: int) -> None:
        sid = self.sequences.pop(corrid, None)
        self.last_seen.pop(corrid, None)
        if sid is not None:
            self.batcher.close(sid)

    def _error(self, message: str) -> Any:
        return self._pb.InferenceResponse(output_tensors=[], error=self._pb.TritonError(message))


# ---------------------------------------------------------------- tensors in and out of the stub
#
# The stub (Triton 2.51's Python backend, nvidia-pytriton 0.7) is built against numpy 1.x: with
# numpy 2 its Tensor.as_numpy() reads every element as the first one and pb.Tensor(name, array)
# sends no bytes (numpy 2 moved the dtype's item size), silently. DLPack carries no numpy struct
# and works both ways, so tensors go through it.

_USED_BY_NUMPY = b"used_dltensor"  # a capsule consumed, as numpy's capsule destructor knows it
_USED_BY_STUB = b"used_dlpack"  # what the stub renames a capsule it consumed to


def to_numpy(tensor: Any) -> np.ndarray:
    """A request's tensor as a numpy array (a view of the stub's memory, valid during the call)."""
    return np.from_dlpack(tensor)


def from_numpy(pb: Any, name: str, value: np.ndarray) -> Any:
    """A response tensor holding (a C-order copy of) ``value``. The stub takes the DLPack capsule,
    calls its deleter when done, and renames it ``used_dlpack``, a name numpy's capsule destructor
    does not know: it would print a traceback for every tensor. Renamed ``used_dltensor`` (what the
    DLPack protocol says), numpy leaves the capsule to its consumer."""
    capsule = np.array(value, order="C").__dlpack__()
    tensor = pb.Tensor.from_dlpack(name, capsule)
    api = _capsule_api()
    if api.PyCapsule_IsValid(capsule, _USED_BY_STUB):
        api.PyCapsule_SetName(capsule, _USED_BY_NUMPY)
    return tensor


def _capsule_api() -> Any:
    global _API
    if _API is None:
        import ctypes

        api = ctypes.pythonapi
        api.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]
        api.PyCapsule_IsValid.restype = ctypes.c_int
        api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
        api.PyCapsule_SetName.restype = ctypes.c_int
        _API = api
    return _API


_API: Any = None


def _shapes(frame: Any) -> Any:
    if isinstance(frame, dict):
        return tuple((name, value.shape) for name, value in frame.items())
    return frame.shape


__all__ = ["SequenceModel", "DEFAULT_IDLE_US", "to_numpy", "from_numpy"]
