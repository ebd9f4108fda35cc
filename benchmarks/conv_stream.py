"""Per-frame cost of a conv-cached CRNN streamed in chunks, against PyTorch eager.

    .venv/bin/python benchmarks/conv_stream.py [--frames 2000] [--chunk 16] [--reps 30] [--json FILE]

Model: the shipped CRNN keyword spotter of ``examples/kws_crnn/`` (Conv1d(40, 32, k3, padding=1)
+ BN + ReLU, a causal dilated Conv1d (k3, d2) + BN + ReLU, GRU(32, 48), Linear head), exported
with ``edgernn.export_file`` in chunk mode: both convolutions carry a context cache as state,
the output has a delay of 1 frame. Also quantized (``edgernn.quantize``, dynamic int8: the GRU and
head MatMuls, and the convolutions' weights, stored int8 and dequantized once at load). One stream of ``--frames`` synthetic 40-band frames,
batch 1, one thread everywhere (``torch.set_num_threads(1)``; the sessions through
``edgernn.open(path, threads=1)``, i.e. ``SessionOptions.intra_op_num_threads = 1``).

Contenders, each timed over the whole stream, interleaved (the order rotates every repetition,
so drift of a shared machine hits all alike):

- ``edgernn chunk fp32``: ``StreamingSession.step`` on chunks of ``--chunk`` frames, state
  carried (``reset()`` before each stream, outside the timing);
- ``edgernn chunk int8``: the same on the int8 file;
- ``eager, whole stream``: ``model(x)`` on all frames in one forward (what offline evaluation
  does; not streaming);
- ``eager, per chunk``: ``model(x[..., i:i + chunk])`` per chunk with no state carried: what
  users often time, and wrong (every chunk restarts the GRU and the convolutions' padding; the
  report gives its error against the whole-stream output).

Figures: medians over repetitions of the stream's wall time divided by its frames (µs/frame),
and ratios contender / baseline (below 1: the contender is faster), each the median over
repetitions of that repetition's ratio (paired: the two ran back to back).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the model's class: examples.kws_crnn.model:KwsCRNN
    sys.path.insert(0, str(ROOT))

import edgernn  # noqa: E402
from edgernn.runtimes.bench import _environment  # noqa: E402  (cpu, versions: as edgernn bench reports them)
from examples.kws_crnn import kws_data  # noqa: E402

CHECKPOINT = ROOT / "examples" / "kws_crnn" / "kws_crnn.pt"
CLASS_PATH = "examples.kws_crnn.model:KwsCRNN"
SEED = 2024


def measure(frames: int = 2000, chunk: int = 16, reps: int = 30, warmup: int = 3, workdir: Path | None = None
            ) -> dict:
    """Median µs/frame per contender over ``reps`` interleaved repetitions (after ``warmup``)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(workdir or tmp)
        fp32 = work / "kws_crnn_chunk.onnx"
        report = edgernn.export_file(CHECKPOINT, fp32, mode="chunk", class_path=CLASS_PATH,
                                     config=CHECKPOINT.with_suffix(".json"))
        int8 = work / "kws_crnn_chunk.int8.onnx"
        edgernn.quantize(fp32, int8, method="dynamic", steps=2000)
        sizes = {"fp32": round(fp32.stat().st_size / 1024, 1), "int8": round(int8.stat().st_size / 1024, 1)}
        model = edgernn.load(CHECKPOINT, class_path=CLASS_PATH, config=CHECKPOINT.with_suffix(".json")).module.eval()

        x = kws_data.make_stream(frames, np.random.default_rng(SEED)).x[None]  # [1, 40, T]
        xt = torch.from_numpy(x)
        chunks_np = [np.ascontiguousarray(x[..., i:i + chunk]) for i in range(0, frames, chunk)]
        chunks_pt = [torch.from_numpy(c) for c in chunks_np]
        sessions = {"fp32": edgernn.open(fp32, threads=1), "int8": edgernn.open(int8, threads=1)}
        delay = sessions["fp32"].delay

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            # same numbers first: the fp32 stream against eager on the whole stream, shifted by the delay
            with torch.inference_mode():
                whole = model(xt).numpy()
                per_chunk = torch.cat([model(c) for c in chunks_pt], 1).numpy()
            sessions["fp32"].reset()
            streamed = np.concatenate([sessions["fp32"].step(c)["y"] for c in chunks_np], 1)
            scale = max(1.0, float(np.abs(whole).max()))
            stream_err = float(np.abs(streamed[:, delay:] - whole[:, :frames - delay]).max()) / scale
            chunked_err = float(np.abs(per_chunk - whole).max()) / scale

            def run_session(name: str):
                s = sessions[name]

                def go() -> None:
                    for c in chunks_np:
                        s.step(c)
                return s.reset, go

            def run_whole():
                def go() -> None:
                    with torch.inference_mode():
                        model(xt)
                return None, go

            def run_chunks():
                def go() -> None:
                    with torch.inference_mode():
                        for c in chunks_pt:
                            model(c)
                return None, go

            contenders = {"edgernn chunk fp32": run_session("fp32"), "edgernn chunk int8": run_session("int8"),
                          "eager, whole stream": run_whole(), "eager, per chunk": run_chunks()}
            names = list(contenders)
            samples: dict[str, list[float]] = {n: [] for n in names}
            gc_was = gc.isenabled()
            gc.disable()
            try:
                for rep in range(warmup + reps):
                    k = rep % len(names)
                    for name in names[k:] + names[:k]:
                        prepare, go = contenders[name]
                        if prepare is not None:
                            prepare()
                        t0 = time.perf_counter_ns()
                        go()
                        t1 = time.perf_counter_ns()
                        if rep >= warmup:
                            samples[name].append((t1 - t0) / 1000.0 / frames)
            finally:
                if gc_was:
                    gc.enable()
        finally:
            torch.set_num_threads(threads)

    med = {n: statistics.median(v) for n, v in samples.items()}
    spread = {n: (float(np.percentile(v, 10)), float(np.percentile(v, 90))) for n, v in samples.items()}
    return {
        "frames": frames, "chunk": chunk, "calls": len(chunks_np), "reps": reps, "warmup": warmup, "delay": delay,
        "states": [s.name for s in report.contract.states], "file_kib": sizes,
        "us_per_frame": med, "p10_p90": spread,
        # paired: the ratio within each repetition (the contenders ran back to back), then its median
        "ratios": {f"{a} / {b}": statistics.median(x / y for x, y in zip(samples[a], samples[b]))
                   for a in names for b in ("eager, whole stream", "eager, per chunk")},
        "stream_error_vs_whole": stream_err, "per_chunk_eager_error_vs_whole": chunked_err,
        "environment": {"date": datetime.date.today().isoformat(), **_environment(with_torch=True)},
    }


def markdown(r: dict) -> str:
    m, sp, ratio = r["us_per_frame"], r["p10_p90"], r["ratios"]
    lines = [f"| runtime | calls for {r['frames']} frames | µs/frame, median (p10-p90) | vs eager whole stream | "
             "vs eager per chunk |", "|---|---:|---:|---:|---:|"]
    calls = {"edgernn chunk fp32": r["calls"], "edgernn chunk int8": r["calls"], "eager, whole stream": 1,
             "eager, per chunk": r["calls"]}
    for name, v in m.items():
        lines.append(f"| {name} | {calls[name]} | {v:.2f} ({sp[name][0]:.2f}-{sp[name][1]:.2f}) | "
                     f"{ratio[name + ' / eager, whole stream']:.2f}x | {ratio[name + ' / eager, per chunk']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--reps", type=int, default=30, help="timed repetitions of each contender, interleaved")
    ap.add_argument("--warmup", type=int, default=3, help="untimed repetitions first")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    r = measure(args.frames, args.chunk, args.reps, args.warmup)
    env = r["environment"]
    print(f"Measured {env['date']} on {env['cpu']} ({env['cpu_count']} cores); Python {env['python']}, onnxruntime {env['onnxruntime']}, "
          f"torch {env['torch']}. Batch 1, 1 thread, one stream of {r['frames']} frames, {r['chunk']} frames per "
          f"call, median of {r['reps']} interleaved repetitions after {r['warmup']} warm-up ones; delay "
          f"{r['delay']}, states {', '.join(r['states'])}.\n")
    print(markdown(r))
    print(f"\nedgernn fp32 stream vs eager whole stream (shifted by the delay): max error {r['stream_error_vs_whole']:.1e} "
          f"relative; eager per chunk vs whole stream: {r['per_chunk_eager_error_vs_whole']:.2f} relative (wrong)")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
