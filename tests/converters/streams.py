"""Helpers the user-model tests share: compare with PyTorch, stream a file in calls."""

from __future__ import annotations

import numpy as np

from edgernn.runtimes import StreamingSession

TOLERANCE = 1e-5  # VISION.md "Tolerances"


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape} != PyTorch {want.shape}"
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE * scale, err_msg=what)


def assert_verified(report) -> None:
    assert report.parity is not None and report.parity.passed, report.parity.summary()
    assert all(e.rel <= TOLERANCE for e in report.parity.errors)


def session_of(report) -> StreamingSession:
    return StreamingSession(report.model.SerializeToString())


def states_of(report) -> dict[str, tuple]:
    return {s.name: s.shape for s in report.contract.states}


def stream(session: StreamingSession, x: np.ndarray, sizes: list[int], axis: int, state=None, name: str = "y"):
    """Feed ``x`` in calls of ``sizes`` frames along ``axis`` (state carried); outputs joined along ``axis``."""
    session.reset(state=state)
    pieces, start = [], 0
    for size in sizes:
        pieces.append(session.step(np.take(x, range(start, start + size), axis=axis))[name])
        start += size
    return np.concatenate(pieces, axis=axis)
