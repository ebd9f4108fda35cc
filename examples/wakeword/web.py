"""The GRU keyword spotter streaming in a browser, next to the Python runtime.

    .venv/bin/python examples/wakeword/web.py [--port 8000] [--frames 1500] [--out out/wakeword-web]
                                              [--build-only]

1. ``edgernn export`` the shipped checkpoint (``wakeword_gru.pt``) in step mode to
   ``OUT/wakeword_step.onnx`` and ``edgernn quantize`` it (dynamic int8) to
   ``OUT/wakeword_step.int8.onnx``, with the CLI, as ``demo.py`` does.
2. Make a synthetic test stream (seed 2024), run it through both files with the Python runtime
   one frame per call, time ``StreamingSession.step``, and write the frames, the keywords and the
   Python logits to ``OUT/demo.json``.
3. Serve ``runtimes/web`` (the page is ``runtimes/web/demo/``) with ``OUT`` mounted at ``/assets/``
   and print the address; the page streams the same frames through onnxruntime-web (WASM or
   WebGPU) with edgernn-web's ``StreamingSession`` and plots them live against the Python logits.
   Ctrl-C stops the server. ``--build-only`` stops after step 2.

Needs ``runtimes/web/node_modules`` (``npm ci`` in runtimes/web; ``bash setup.sh`` does it).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import data  # noqa: E402  (examples/wakeword/data.py)
import demo  # noqa: E402  (examples/wakeword/demo.py: the CLI export and quantize steps)

import edgernn  # noqa: E402
from edgernn.errors import EdgernnError  # noqa: E402

FRAME_MS = 10
WARMUP = 100  # steps run before timing (first calls allocate)
MODELS = (("GRU fp32", "wakeword_step.onnx"), ("GRU int8", "wakeword_step.int8.onnx"))


def python_run(path: Path, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Logits [time, 2] of ``x`` [time, bands] through ``path`` one frame per call (the Python
    runtime, one thread, as the page runs one WASM thread), and the p50 of a timed ``step`` in µs."""
    session = edgernn.open(path, threads=1)
    logits = session.stream(x[None], chunk=1)["y"][0]  # [time, 2]
    frames = [np.ascontiguousarray(x[None, t:t + 1]) for t in range(len(x))]  # [1, 1, bands] each
    session.reset()
    for t in range(min(WARMUP, len(frames))):
        session.step(frames[t])
    session.reset()
    clock = time.perf_counter_ns
    samples = []
    for f in frames:
        t0 = clock()
        session.step(f)
        samples.append(clock() - t0)
    return logits, float(np.percentile(np.asarray(samples, dtype=np.float64), 50)) / 1000.0


def build(out: Path, frames: int) -> dict[str, Any]:
    """Export, quantize, run the Python runtime and write ``out/demo.json``; return its content."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fp32, int8 = (out / name for _, name in MODELS)
    demo.export_with_cli(demo.CHECKPOINT, fp32, "step")
    demo.quantize_with_cli(fp32, int8)

    stream = data.make_stream(frames, np.random.default_rng(demo.TEST_SEED))
    x = np.ascontiguousarray(stream.x, dtype=np.float32)  # [time, bands]
    models, step_us = [], {}
    for (label, name), path in zip(MODELS, (fp32, int8)):
        logits, p50 = python_run(path, x)
        models.append({"label": label, "url": f"/assets/{name}",
                       "python": [[float(v) for v in row] for row in logits]})
        step_us[label] = p50
    content = {
        "frame_ms": FRAME_MS, "bands": int(x.shape[1]),
        "frames": [[float(v) for v in row] for row in x],
        "keywords": [[int(a), int(b)] for a, b in stream.keywords],
        "threshold": float(data.THRESHOLD), "models": models, "python_step_us": step_us,
    }
    (out / "demo.json").write_text(json.dumps(content, separators=(",", ":")) + "\n")
    print(f"wrote {out / 'demo.json'}: {frames} frames, {len(stream.keywords)} keywords; Python step p50 "
          + ", ".join(f"{k} {v:.1f} us" for k, v in step_us.items()))
    return content


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stream the GRU keyword spotter in a browser (onnxruntime-web) "
                                                 "next to the Python runtime.")
    parser.add_argument("--port", type=int, default=8000, help="port to serve on, on 127.0.0.1 (default 8000; "
                        "0 takes a free one)")
    parser.add_argument("--frames", type=int, default=1500, help="frames in the stream (default 1500, 15 s)")
    parser.add_argument("--out", type=Path, default=Path("out/wakeword-web"), help="folder for the ONNX files "
                        "and demo.json (default out/wakeword-web, created)")
    parser.add_argument("--build-only", action="store_true", help="write the files, do not serve")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error("--frames must be at least 1")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    from edgernn.runtimes.webserve import check_web_root, serve

    server = None
    try:
        if not args.build_only:  # before the export, so a missing install or a busy port fails fast
            check_web_root()
            server = serve({"/assets/": args.out}, port=args.port)
        build(args.out, args.frames)
        if server is None:
            return 0
        print(f"open http://127.0.0.1:{server.server_address[1]}/demo/  (Ctrl-C stops)", flush=True)
        threading.Event().wait()
    except EdgernnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped")
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
