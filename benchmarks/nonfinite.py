"""The cost of the NaN/infinity check: ``nonfinite="raise"`` against ``"ignore"``, side by side.

    .venv/bin/python benchmarks/nonfinite.py [--rounds 40] [--calls 2000] [--streams 16]

Models: ``nn.GRU(64, 256)`` with 1 and 2 layers (random weights, seed 0) exported in step mode.
In one process, one intra-op thread: one ``StreamingSession`` (batch 1) and one
``StreamBatcher`` (``--streams`` streams), each timed with ``nonfinite="raise"`` and with
``"ignore"`` in turn, round by round (the same session, so that only the check differs and both
see the same machine state). Each round times ``--calls`` calls of each; the figures are medians
over rounds, in microseconds per call, and the overhead is ``raise / ignore - 1``. The goal:
under 3% of a GRU-256 step.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def export_model(path: Path, layers: int) -> Path:
    import torch

    from edgernn.converters.export import export

    torch.manual_seed(0)
    export(torch.nn.GRU(64, 256, layers, batch_first=True).eval(), path, mode="step")
    return path


def _time(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def measure(layers: int, rounds: int, calls: int, streams: int, folder: Path) -> dict:
    from edgernn.runtimes.batcher import StreamBatcher
    from edgernn.runtimes.session import StreamingSession

    path = export_model(folder / f"gru{layers}.onnx", layers)
    x = np.random.default_rng(0).standard_normal((1, 1, 64)).astype(np.float32)
    session = StreamingSession(path)
    batcher = StreamBatcher(path, capacity=streams)
    frames = {batcher.open(): x for _ in range(streams)}
    runs = {"session": (session, lambda: session.step(x), calls),
            "batcher": (batcher, lambda: batcher.step(frames), max(1, calls // streams))}
    for _, fn, _ in runs.values():  # warm up: the bound buffers of the call shape are made
        _time(fn, 50)
    times: dict[str, list[float]] = {f"{k} {p}": [] for k in runs for p in ("raise", "ignore")}
    for r in range(rounds):
        for k, (runtime, fn, n) in runs.items():
            for policy in (("raise", "ignore") if r % 2 else ("ignore", "raise")):
                runtime.nonfinite = policy
                times[f"{k} {policy}"].append(_time(fn, n))
    us = {k: statistics.median(v) for k, v in times.items()}
    return {"layers": layers, "us": us,
            "session_overhead": us["session raise"] / us["session ignore"] - 1,
            "batcher_overhead": us["batcher raise"] / us["batcher ignore"] - 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--streams", type=int, default=16)
    args = ap.parse_args()
    print("| model | StreamingSession ignore / raise (us) | overhead | "
          f"StreamBatcher x{args.streams} ignore / raise (us) | overhead |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for layers in (1, 2):
            r = measure(layers, args.rounds, args.calls, args.streams, Path(tmp))
            us = r["us"]
            print(f"| GRU 256x{layers} step | {us['session ignore']:.1f} / {us['session raise']:.1f} | "
                  f"{100 * r['session_overhead']:+.1f}% | {us['batcher ignore']:.1f} / {us['batcher raise']:.1f} | "
                  f"{100 * r['batcher_overhead']:+.1f}% |")


if __name__ == "__main__":
    main()
