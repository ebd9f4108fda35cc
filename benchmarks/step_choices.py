"""The measurements behind two defaults: the step-mode cell form per kind, and the session options.

    .venv/bin/python benchmarks/step_choices.py [--steps 3000] [--rounds 6]

1. Cells: each reference layer (64 inputs, batch-first, seed 0: GRU 256x2, LSTM 256x2, Elman RNN
   256x3) is exported in step mode with ``cells="auto"`` and with ``cells="matmul"``; the auto
   file and the matmul file run through ``StreamingSession.step`` in interleaved rounds in one
   process (``auto / matmul`` below 1: the auto form is faster). ``auto`` picks the ONNX GRU/LSTM op for GRU and LSTM and MatMul cells for Elman RNN
   (``edgernn.recurrent_kinds``: ``step_op``); for the RNN both files are the same form, a control.
2. Session options: the GRU step file through ``StreamingSession`` with each graph optimization
   level, and the session start-up time from the file against from a pre-optimized copy (what
   caching the optimized model would save).

Prints markdown; docs/performance.md quotes a run of it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

import edgernn
from edgernn.recurrent_kinds import kind_of_mode
from edgernn.runtimes.session import StreamingSession, session_options

MODELS = [("GRU 256x2", nn.GRU, 2, {}), ("LSTM 256x2", nn.LSTM, 2, {}), ("RNN 256x3 tanh", nn.RNN, 3, {})]


def _interleaved(sessions: dict, x: np.ndarray, steps: int, rounds: int) -> dict[str, float]:
    """p50 µs per ``step(x)`` of each session, timed in interleaved rounds after a warm-up."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        for _ in range(200):
            s.step(x)
    for _ in range(rounds):
        for name, s in sessions.items():
            for _ in range(steps // rounds):
                t0 = time.perf_counter_ns()
                s.step(x)
                times[name].append((time.perf_counter_ns() - t0) / 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def cells_table(folder: Path, steps: int, rounds: int) -> str:
    lines = ["| model | auto form | auto p50 µs | matmul cells p50 µs | auto / matmul |", "|---|---|---|---|---|"]
    x = np.random.default_rng(0).standard_normal((1, 1, 64)).astype(np.float32)
    for name, cls, layers, extra in MODELS:
        torch.manual_seed(0)
        layer = cls(64, 256, layers, batch_first=True, **extra).eval()
        auto, matmul = folder / f"{cls.__name__}_auto.onnx", folder / f"{cls.__name__}_matmul.onnx"
        edgernn.export(layer, auto, mode="step")
        edgernn.export(layer, matmul, mode="step", cells="matmul")
        p50 = _interleaved({"auto": StreamingSession(auto), "matmul": StreamingSession(matmul)}, x, steps, rounds)
        form = "ONNX op" if kind_of_mode(layer.mode).step_op else "MatMul cells"
        lines.append(f"| {name} | {form} | {p50['auto']:.1f} | {p50['matmul']:.1f} | {p50['auto'] / p50['matmul']:.2f}x |")
    return "\n".join(lines)


def options_table(folder: Path, steps: int, rounds: int) -> str:
    torch.manual_seed(0)
    path = folder / "gru_step.onnx"
    edgernn.export(nn.GRU(64, 256, 2, batch_first=True).eval(), path, mode="step")
    levels = {"all (default)": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    sessions = {}
    for name, level in levels.items():
        opts = session_options(1)
        opts.graph_optimization_level = level
        sessions[name] = StreamingSession(path, options=opts)
    x = np.random.default_rng(0).standard_normal((1, 1, 64)).astype(np.float32)
    p50 = _interleaved(sessions, x, steps, rounds)
    lines = ["| graph optimization level | p50 µs/step |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in p50.items()]

    optimized = folder / "gru_step.optimized.onnx"
    opts = session_options(1)
    opts.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def start(p: Path, level) -> float:
        o = session_options(1)
        o.graph_optimization_level = level
        t0 = time.perf_counter()
        ort.InferenceSession(str(p), o, providers=["CPUExecutionProvider"])
        return (time.perf_counter() - t0) * 1e3

    fresh = [start(path, levels["all (default)"]) for _ in range(20)]
    cached = [start(optimized, levels["disabled"]) for _ in range(20)]
    lines += ["", "| session start-up (GRU 256x2 step file) | median ms |", "|---|---|",
              f"| from the file, all optimizations | {np.median(fresh):.2f} |",
              f"| from a cached optimized copy, optimizations off | {np.median(cached):.2f} |"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="timed calls per runtime")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(cells_table(folder, args.steps, args.rounds))
        print()
        print(options_table(folder, args.steps, args.rounds))


if __name__ == "__main__":
    main()
