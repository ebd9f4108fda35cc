"""Quantization table: size, per-step latency, error and decision agreement per cell and method.

    .venv/bin/python benchmarks/quantize_table.py [--hidden 256] [--steps 10000] [-o docs/quantization.md]

Reference models: a recurrent classifier (Linear frontend 64 -> 2-layer RNN/LSTM/GRU of
``--hidden`` -> Linear head of 4 classes, random weights, seed 0), exported in step and chunk
mode. Each method's file is compared with the fp32 export on the same synthetic stream of
``--steps`` frames (AR(1) noise), and timed one frame per call (step mode) or 100 frames per call
(chunk mode) at batch 1 on one thread, interleaved with the fp32 file in the same process so
both see the same machine state. Latency ratios are p50(method) / p50(fp32).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import edgernn
from edgernn.architectures import FrameClassifier
from edgernn.converters.quantize import quantize
from edgernn.converters.quantize.accuracy import synthetic_streams

METHODS = ("dynamic", "static", "fp16", "mixed")


def timed(session, frames: np.ndarray, chunk: int, rounds: int) -> list[float]:
    """Seconds per frame of each call, over ``rounds`` calls."""
    session.reset()
    out = []
    axis = session.inputs[0].time_axis
    total = frames.shape[axis]
    for k in range(rounds):
        start = (k * chunk) % max(total - chunk, 1)
        part = np.take(frames, range(start, start + chunk), axis=axis)
        t0 = time.perf_counter()
        session.step(part)
        out.append((time.perf_counter() - t0) / chunk)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=600, help="timed calls per file")
    ap.add_argument("-o", "--output", type=Path, default=None, help="write the table as markdown here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cell in ("gru", "lstm", "rnn"):
            torch.manual_seed(0)
            model = FrameClassifier(n_features=64, hidden_size=args.hidden, n_classes=4, num_layers=2, cell=cell,
                                    frontend_size=64)
            for mode in ("step", "chunk"):
                fp32 = Path(tmp, f"{cell}_{mode}.onnx")
                edgernn.export(model, fp32, mode=mode)
                base = edgernn.open(fp32)
                chunk = 1 if mode == "step" else 100
                frames = synthetic_streams(base.contract, 2_000, seed=3)[0]["x"]
                sessions, reports = {}, {}
                for method in METHODS:
                    out = Path(tmp, f"{cell}_{mode}.{method}.onnx")
                    reports[method] = quantize(fp32, out, method=method, steps=args.steps)
                    sessions[method] = edgernn.open(out)
                lat = {m: [] for m in ("fp32", *METHODS)}
                for _ in range(3):  # interleave: every file timed in each round
                    for name, s in (("fp32", base), *sessions.items()):
                        lat[name] += timed(s, frames, chunk, args.rounds // 3)
                p50 = {k: float(np.median(v)) for k, v in lat.items()}
                for method in METHODS:
                    r = reports[method]
                    acc = r.accuracy
                    rows.append({
                        "cell": cell, "mode": mode, "method": method, "size_kib": r.size_after / 1024,
                        "size_ratio": r.size_ratio, "us_fp32": p50["fp32"] * 1e6, "us": p50[method] * 1e6,
                        "latency_ratio": p50[method] / p50["fp32"], "max_error": acc.max_error,
                        "state_error": max(acc.state_errors.values(), default=0.0),
                        "agreement": acc.min_agreement, "steps": acc.steps,
                    })
                    print(_row(rows[-1]), flush=True)
    table = _markdown(rows, args)
    print(table)
    if args.output:
        args.output.write_text(table)


def _row(r: dict) -> str:
    agree = "-" if r["agreement"] is None else f"{r['agreement']:.2%}"
    return (f"| {r['cell']} | {r['mode']} | {r['method']} | {r['size_kib']:.0f} KiB | {r['size_ratio']:.2f}x | "
            f"{r['us']:.1f} us | {r['us_fp32']:.1f} us | {r['latency_ratio']:.2f}x | {r['max_error']:.3g} | "
            f"{r['state_error']:.3g} | {agree} |")


def _markdown(rows: list[dict], args) -> str:
    head = (f"Reference: Linear 64 -> 2-layer cell of {args.hidden} -> Linear 4, random weights; "
            f"{rows[0]['steps'] if rows else args.steps} synthetic frames per accuracy check; latency p50 per frame "
            "at batch 1, 1 thread (step: 1 frame per call, chunk: 100 frames per call), fp32 timed side by side.\n\n"
            "| cell | mode | method | size | size vs fp32 | latency | fp32 latency | latency vs fp32 | max error | "
            "final-state error | decisions agree |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    return head + "\n".join(_row(r) for r in rows) + "\n"


if __name__ == "__main__":
    main()
