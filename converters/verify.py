"""Numerical verification of an export against PyTorch, through onnxruntime.

Never trust one exporter: every export is run at batch sizes and lengths other than the traced
ones, from the file's own init state and from a nonzero state PyTorch reached on random frames,
in calls of several sizes that carry state, and compared with PyTorch on the whole sequence. The error of a tensor is ``max|onnx - torch|``
divided by ``max(1, max|torch|)`` (error relative to the output's scale, floored at 1).

PyTorch and onnxruntime never share a tensor: every reference call gets copies of its inputs and
states and returns copies (:func:`_reference`), and onnxruntime is fed arrays of its own, so a
model that updates its arguments in place (``state.copy_(new)``, slice assignment into a
convolution buffer) is compared on the same frames and start states as the file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from edgernn.converters.pass_api import PassResult
from edgernn.errors import ExportError

if TYPE_CHECKING:  # pragma: no cover
    from edgernn.converters.passes import ExportContext

# (batch, chunk sizes, random initial state) per mode; lengths differ from the traced 5 frames
CASES = {
    "chunk": [(1, [4, 1, 6], False), (3, [9], True), (4, [1, 1, 1, 10], True)],
    "sequence": [(1, [9], True), (3, [3], False), (2, [12], True)],
    "step": [(1, [1] * 6, False), (3, [1] * 7, True)],
}


@dataclass
class TensorError:
    name: str
    kind: str  # "output" or "state"
    max_abs: float
    scale: float

    @property
    def rel(self) -> float:
        return self.max_abs / max(1.0, self.scale)


@dataclass
class ParityReport:
    """Worst error per output and per final state over all cases."""

    tolerance: float
    cases: list[str] = field(default_factory=list)
    errors: list[TensorError] = field(default_factory=list)

    @property
    def max_error(self) -> float:
        return max((e.rel for e in self.errors), default=0.0)

    @property
    def passed(self) -> bool:
        return all(np.isfinite(e.rel) and e.rel <= self.tolerance for e in self.errors)

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return f"{verdict}: max error {self.max_error:.2e} over {len(self.cases)} cases (tolerance {self.tolerance:g})"

    def to_json(self) -> dict:
        return {"tolerance": self.tolerance, "passed": self.passed, "max_error": self.max_error,
                "cases": self.cases,
                "errors": [{**asdict(e), "rel": e.rel} for e in self.errors]}

    def _add(self, name: str, kind: str, got: np.ndarray, want: np.ndarray) -> None:
        if got.shape != want.shape:
            raise ExportError(f"{kind} {name!r} has shape {list(got.shape)} in ONNX but {list(want.shape)} in PyTorch")
        err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if got.size else 0.0
        if not np.isfinite(err):
            err = float("inf")
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        for e in self.errors:
            if e.name == name and e.kind == kind:
                e.max_abs, e.scale = max(e.max_abs, err), max(e.scale, scale)
                return
        self.errors.append(TensorError(name, kind, err, scale))


class Verify:
    """Numerical parity with PyTorch through onnxruntime (:func:`verify_parity`)."""

    name = "verify"

    def __call__(self, ctx: ExportContext) -> PassResult:
        if not ctx.options.verify:
            ctx.notes.append("parity was not checked (--no-verify)")
            return PassResult.unchanged("skipped")
        # states go in and come out in the file's layout (batch-major or not), PyTorch runs in its own
        ctx.parity = verify_parity(_InFileLayout(ctx) if ctx.state_perms else ctx)
        return PassResult.unchanged(ctx.parity.summary())


class _InFileLayout:
    """``ctx`` seen with states in the file's layout: ``initial_states`` gives them so and
    ``run_lifter`` takes and returns them so (PyTorch still runs in its own layout). The parity
    check runs on this view, so that start states handed to the file and final states compared
    with PyTorch's are laid out as the file's contract says."""

    def __init__(self, ctx: ExportContext) -> None:
        self._ctx = ctx

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def initial_states(self, batch: int, generator: torch.Generator | None = None, scale: float = 0.0
                       ) -> list[torch.Tensor]:
        return self._ctx.to_file_layout(self._ctx.initial_states(batch, generator, scale))

    def run_lifter(self, data: Sequence[torch.Tensor], states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = self._ctx.run_lifter(data, self._ctx.from_file_layout(states))
        n_out = len(out) - len(states)
        return out[:n_out] + self._ctx.to_file_layout(out[n_out:])


def verify_parity(ctx) -> ParityReport:
    """Run the cases of ``ctx.mode`` through onnxruntime and PyTorch; return the worst errors."""
    from edgernn.runtimes.session import StreamingSession

    session = StreamingSession(ctx.onnx_model.SerializeToString())
    report = ParityReport(ctx.options.tolerance)
    gen = torch.Generator().manual_seed(1234)
    n_out = len(ctx.output_names)
    multiple = ctx.frame_multiple  # calls must feed multiples of it: scale every chunk
    for batch, chunks, random_init in CASES[ctx.mode]:
        chunks = [c * multiple for c in chunks] if ctx.mode != "step" else chunks
        total = sum(chunks)
        init = _reached_state(ctx, batch, gen) if random_init else ctx.initial_states(batch)
        if ctx.streams_time:
            data = ctx.example_data(batch, total, gen)
            ref, how = _reference_sequence(ctx, data, init, total)
            frames = [_slice_time(ctx, data, start, size) for start, size in _spans(chunks)]
        else:  # one frame per call: the stream is a list of frames
            frames = [ctx.example_data(batch, 1, gen) for _ in range(total)]
            ref, how = _reference_frames(ctx, frames, init), "frame by frame"
        if random_init:
            session.reset(state={n: _array(t) for n, t in zip(ctx.state_names, init)})
        else:
            session.reset(batch)  # the file's own start values (zeros or stored) must equal PyTorch's
        pieces: list[list[np.ndarray]] = [[] for _ in range(n_out)]
        for frame in frames:
            out = session.step(*[_array(t) for t in frame])
            for k, name in enumerate(ctx.output_names):
                pieces[k].append(out[name])
        for k, name in enumerate(ctx.output_names):
            _, time_axis = ctx.output_axes[k]
            if not ctx.streams_time:
                got = np.stack(pieces[k], axis=0)
            elif time_axis is not None:
                got = np.concatenate(pieces[k], axis=time_axis)
            else:
                got = pieces[k][-1]
            report._add(name, "output", got, ref[k])
        final = session.state
        for name, want in zip(ctx.state_names, ref[n_out:]):
            report._add(name, "state", final[name], want)
        report.cases.append(f"batch {batch}, {total} frames in calls of {_fmt_chunks(chunks)}, "
                            f"{'a reached' if random_init else 'the init'} initial state, PyTorch {how}")
    return report


def _reached_state(ctx, batch: int, gen: torch.Generator, frames: int = 4) -> list[torch.Tensor]:
    """A nonzero start for a case: the state PyTorch reaches after ``frames`` random frames from
    the init state, plus a little noise. A state the model can reach keeps constrained states
    valid (an NTM's weightings stay distributions), where plain noise could leave the model's
    domain and measure chaos instead of the export."""
    n_out = len(ctx.output_names)
    states = ctx.initial_states(batch)
    if ctx.streams_time and not ctx.frame_model:
        try:
            length = frames * ctx.frame_multiple
            return _jitter(_reference(ctx, ctx.example_data(batch, length, gen), states)[n_out:], gen)
        except Exception:
            if ctx.capture_mode != "step" or ctx.time_loop:  # a loop over time runs on any length
                raise
    for _ in range(frames):
        frame = ctx.example_data(batch, 1, gen)
        if ctx.frame_model:
            frame = [t.select(0, 0) for t in frame]
        elif ctx.streams_time:
            pass  # a one-frame call of a step-mode model
        states = _reference(ctx, frame, states)[n_out:]
    return _jitter(states, gen)


def _jitter(states: list[torch.Tensor], gen: torch.Generator, scale: float = 0.01) -> list[torch.Tensor]:
    return [t + scale * torch.randn(t.shape, generator=gen).to(t.dtype) if t.is_floating_point() else t
            for t in states]


def _reference_sequence(ctx, data, init, total) -> tuple[list[np.ndarray], str]:
    if ctx.frame_model:  # PyTorch takes one frame per forward: frames along the graph's axis 0
        frames = [[t.select(0, k) for t in data] for k in range(total)]
        return _reference_frames(ctx, frames, init), "frame by frame"
    try:  # a forward that loops over time in Python (ctx.time_loop) runs here too: the real model, full length
        out = _reference(ctx, data, init)
        return [t.numpy() for t in out], "on the whole sequence"
    except Exception:
        if ctx.mode != "step":
            raise
    frames = [_slice_time(ctx, data, t, 1) for t in range(total)]
    n_out = len(ctx.output_names)
    out = _reference_frames(ctx, frames, init, stack=False)
    merged = []
    for k in range(n_out):
        _, axis = ctx.output_axes[k]
        merged.append(np.concatenate(out[k], axis=axis) if axis is not None else out[k][-1])
    return merged + out[n_out:], "frame by frame"


def _reference_frames(ctx, frames, init, stack: bool = True) -> list:
    """PyTorch one frame per call, carrying state; outputs stacked on a new leading axis."""
    n_out = len(ctx.output_names)
    states = list(init)
    outs: list[list[np.ndarray]] = [[] for _ in range(n_out)]
    for frame in frames:
        res = _reference(ctx, frame, states)
        for k in range(n_out):
            outs[k].append(res[k].numpy())
        states = res[n_out:]
    merged = [np.stack(o, axis=0) for o in outs] if stack else outs
    return merged + [s.numpy() for s in states]


def _reference(ctx, data: Sequence[torch.Tensor], states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """PyTorch on copies of ``data`` and ``states``; copies of what it returns. A forward that
    writes into its arguments (or returns a view of one, or the same tensor as output and state)
    then changes nothing that a later reference call or the onnxruntime feeds read."""
    out = ctx.run_lifter([t.clone() for t in data], [t.clone() for t in states])
    return [t.detach().clone() for t in out]


def _array(t: torch.Tensor) -> np.ndarray:
    """A numpy array of ``t``'s values that shares no memory with it (onnxruntime's feed)."""
    return t.detach().numpy().copy()


def _spans(chunks: Sequence[int]):
    start = 0
    for size in chunks:
        yield start, size
        start += size


def _slice_time(ctx, data, start: int, size: int) -> list[torch.Tensor]:
    return [t.narrow(s.time_axis, start, size) if s.time_axis is not None else t for s, t in zip(ctx.data, data)]


def _fmt_chunks(chunks: Sequence[int]) -> str:
    return "1 frame" if set(chunks) == {1} else "+".join(map(str, chunks))
