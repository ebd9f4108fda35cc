"""Per-frame cost of a Python-time-loop model's chunk file (its one-frame graph in a ``Scan``
over time, ``converters/timeloop.py``) against the same model's step file called once per frame.

    .venv/bin/python benchmarks/timeloop.py [--chunk 16] [--frames 4000] [--rounds 8]

Each model of ``tests/converters/test_time_loops.py`` (seed 7) is exported in chunk and in step
mode; both files run through ``StreamingSession`` with one thread, batch 1, in interleaved rounds
in one process after a warm-up: the chunk file takes ``--chunk`` frames per call, the step file
one frame per call, state carried in both. The figure is the median of per-round µs per frame;
``chunk / step`` below 1 means the Scan file costs less per frame; the best round of each is given
too, being the least disturbed by other load on the machine. Prints markdown.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import edgernn
from edgernn.runtimes import StreamingSession

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "converters"))
from test_time_loops import MODELS, example  # noqa: E402  (the models users and libraries write)


def _per_frame_us(session: StreamingSession, calls: list[list[np.ndarray]], frames_per_call: int) -> float:
    session.reset(1)
    t0 = time.perf_counter_ns()
    for call in calls:
        session.step(*call)
    return (time.perf_counter_ns() - t0) / 1e3 / (len(calls) * frames_per_call)


def _split(data: list[torch.Tensor], axes: list[int], size: int) -> list[list[np.ndarray]]:
    total = data[0].shape[axes[0]]
    return [[np.ascontiguousarray(t.narrow(a, k, size).numpy()) for t, a in zip(data, axes)]
            for k in range(0, total - size + 1, size)]


def measure(name: str, chunk: int, frames: int, rounds: int) -> tuple[float, float, float, float, int]:
    """Median and best per-round µs per frame of the chunk and the step file, and the Scan body's size."""
    factory, inputs, axis = MODELS[name]
    torch.manual_seed(7)
    model = factory().eval()
    chunk_file = edgernn.export(model, mode="chunk", inputs=inputs)
    step_file = edgernn.export(model, mode="step", inputs=inputs)
    scan = next(n for n in chunk_file.model.graph.node if n.op_type == "Scan")
    n_body = len(next(a.g for a in scan.attribute if a.name == "body").node)
    data = example(name, 1, frames, torch.Generator().manual_seed(0))
    axes = [axis if t.dim() > 1 and t.shape[axis] == frames else 1 for t in data]
    s_chunk = StreamingSession(chunk_file.model.SerializeToString(), threads=1)
    s_step = StreamingSession(step_file.model.SerializeToString(), threads=1)
    by_chunk, by_frame = _split(data, axes, chunk), _split(data, axes, 1)
    _per_frame_us(s_chunk, by_chunk[:50], chunk)  # warm-up
    _per_frame_us(s_step, by_frame[:500], 1)
    c, s = [], []
    for _ in range(rounds):
        c.append(_per_frame_us(s_chunk, by_chunk, chunk))
        s.append(_per_frame_us(s_step, by_frame, 1))
    return float(np.median(c)), float(np.median(s)), float(np.min(c)), float(np.min(s)), n_body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--frames", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"| model | Scan body nodes | chunk file, {args.chunk} frames/call: µs/frame (best) | step file, 1 frame/call:"
          " µs/frame (best) | chunk / step (best rounds) |")
    print("|---|---|---|---|---|")
    ratios = []
    for name in args.models:
        c, s, c_best, s_best, n = measure(name, args.chunk, args.frames, args.rounds)
        ratios.append(c / s)
        print(f"| {name} | {n} | {c:.2f} ({c_best:.2f}) | {s:.2f} ({s_best:.2f}) | {c / s:.2f}x "
              f"({c_best / s_best:.2f}x) |", flush=True)
    print(f"\nmedian chunk / step over {len(ratios)} models: {np.median(ratios):.2f}x per frame "
          f"(batch 1, 1 thread, {args.frames} frames x {args.rounds} interleaved rounds)")


if __name__ == "__main__":
    main()
