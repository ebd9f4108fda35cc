"""StreamBatcher throughput: many streams through one session against a raw batched run and one stream alone.

    .venv/bin/python benchmarks/batcher.py [--streams 64] [--rounds 40] [--calls 25]

Model: ``nn.GRU(64, 256, num_layers=2, batch_first=True)`` (random weights, seed 0) exported in
step mode (one frame per call). In one process, with one intra-op thread each
(``session_options(1)``), interleaved round by round so that all see the same machine state:

- ``batcher``: a :class:`StreamBatcher` with ``--streams`` open streams, all stepped every call
  (``step({id: frame})``, frames of shape [1, 1, 64] made beforehand, outputs split per stream);
- ``batcher, half the streams``: the same batcher stepping a different half of its streams each
  call (states gathered and scattered along the batch axis), for reference;
- ``raw run``: ``InferenceSession.run`` at batch ``--streams``, the state fed back by hand
  (the input batch made beforehand): the floor for the batcher;
- ``one stream``: ``StreamingSession.step`` at batch 1, one stream alone.

Each round times ``--calls`` calls of each; the figures are medians over rounds, in frames per
second (frames of all streams of a call count). :func:`measure` returns them as a dict.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

POOL = 16  # distinct inputs cycled through, per stream


def export_model(path: Path, inputs: int = 64, hidden: int = 256, layers: int = 2) -> Path:
    import torch

    from edgernn.converters.export import export

    torch.manual_seed(0)
    module = torch.nn.GRU(inputs, hidden, layers, batch_first=True).eval()
    export(module, path, mode="step")
    return path


def measure(streams: int = 64, rounds: int = 40, calls: int = 25, model: Path | None = None) -> dict:
    """Frames per second (median over ``rounds``) of the batcher, the raw batched run and one stream alone.

    Returns ``{"streams", "rounds", "calls", "fps": {name: frames/s}, "ms_per_call": {name: ms},
    "batcher_vs_raw", "batcher_vs_one_stream"}``."""
    import onnxruntime as ort

    from edgernn.runtimes.batcher import StreamBatcher
    from edgernn.runtimes.session import StreamingSession, session_options

    with tempfile.TemporaryDirectory() as tmp:
        path = model or export_model(Path(tmp) / "gru_step.onnx")
        batcher = StreamBatcher(path, capacity=streams, threads=1)
        alone = StreamingSession(path, threads=1)
        raw = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(0)
    (x_spec,) = batcher.inputs
    (state,) = batcher.states
    frames = rng.standard_normal((POOL, streams) + x_spec.concrete_shape(1)).astype(np.float32)
    ids = [batcher.open() for _ in range(streams)]
    calls_all = [{sid: frames[p, i] for i, sid in enumerate(ids)} for p in range(POOL)]
    halves = [rng.permutation(streams)[: streams // 2] for _ in range(POOL)]
    calls_half = [{ids[i]: frames[p, i] for i in halves[p]} for p in range(POOL)]
    batches = [np.concatenate(list(frames[p]), axis=x_spec.batch_axis) for p in range(POOL)]
    names = [t.name for t in batcher.outputs] + [state.output]
    raw_state = {"h": np.zeros(state.concrete_shape(streams), np.float32)}
    alone.reset(1)

    def run_batcher(p: int) -> None:
        batcher.step(calls_all[p])

    def run_half(p: int) -> None:
        batcher.step(calls_half[p])

    def run_raw(p: int) -> None:
        _, raw_state["h"] = raw.run(names, {x_spec.name: batches[p], state.input: raw_state["h"]})

    def run_alone(p: int) -> None:
        alone.step(frames[p, 0])

    cases = {  # name: (call, frames per call)
        "batcher": (run_batcher, streams),
        "batcher, half the streams": (run_half, streams // 2),
        "raw run": (run_raw, streams),
        "one stream": (run_alone, 1),
    }
    for fn, _ in cases.values():  # warm up
        for p in range(POOL):
            fn(p)
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (fn, _) in cases.items():
            t0 = time.perf_counter()
            for c in range(calls):
                fn(c % POOL)
            seconds[name].append((time.perf_counter() - t0) / calls)
    per_call = {name: statistics.median(v) for name, v in seconds.items()}
    fps = {name: cases[name][1] / per_call[name] for name in cases}
    return {
        "streams": streams, "rounds": rounds, "calls": calls,
        "fps": fps,
        "ms_per_call": {name: 1e3 * s for name, s in per_call.items()},
        "batcher_vs_raw": fps["batcher"] / fps["raw run"],
        "batcher_vs_one_stream": fps["batcher"] / fps["one stream"],
    }


def table(result: dict) -> str:
    n = result["streams"]
    rows = [
        "| case | streams per call | ms per call | frames/s | vs raw run | vs one stream |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    per_call = {"batcher": n, "batcher, half the streams": n // 2, "raw run": n, "one stream": 1}
    for name, fps in result["fps"].items():
        rows.append(f"| {name} | {per_call[name]} | {result['ms_per_call'][name]:.3f} | {fps:,.0f} | "
                    f"{fps / result['fps']['raw run']:.2f}x | {fps / result['fps']['one stream']:.2f}x |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=40, help="timed rounds; figures are medians over rounds")
    ap.add_argument("--calls", type=int, default=25, help="calls of each case per round")
    args = ap.parse_args(argv)
    result = measure(args.streams, args.rounds, args.calls)
    print(f"GRU(64, 256, 2 layers), step mode, {args.streams} streams, 1 intra-op thread, "
          f"median of {args.rounds} rounds x {args.calls} calls\n")
    print(table(result))
    print(f"\nbatcher / raw run: {result['batcher_vs_raw']:.2f}x (target >= 0.9x); "
          f"batcher / one stream: {result['batcher_vs_one_stream']:.2f}x (target >= 3.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
