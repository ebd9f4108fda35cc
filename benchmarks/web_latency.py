"""Per-step latency of the JavaScript runtime (runtimes/web), in Node and in Chromium, next to Python's.

    .venv/bin/python benchmarks/web_latency.py [--steps 2000] [--backends wasm,webgpu] [-o docs/performance.md]

Step files (one frame per call, batch 1), fp32 and int8 (``quantize(..., method="dynamic")``):
the wakeword GRU (examples/wakeword, 16 bands), and bare GRU 256x2 and LSTM 256x2 layers with 64
input features and random weights (seed 0), as in benchmarks/runtime_table.py. The same 200 frames
go, repeated, through

* Python: ``StreamingSession.step`` and a hand-written ``sess.run`` loop, interleaved in this process;
* Node (onnxruntime-node): edgernn-web's ``step`` and a hand-written ``session.run`` loop that feeds
  the state outputs back (runtimes/web/test/cases.js, ``plainLoop``), alternated in 4 rounds (ABBA,
  each with its own warm-up; the median of the rounds' p50s) in one process;
* headless Chromium (Debian's, via playwright-core), onnxruntime-web with each backend asked for:
  the same two, alternated the same way in one page (served cross-origin isolated, so ``performance.now()``
  resolves 5 µs, not 100 µs).

All with one thread. Latencies are p50 per step in µs; "web / loop" is edgernn-web over the hand
loop on the same engine (what the library costs), "browser / Python" is Chromium's edgernn-web
over Python's StreamingSession (what the browser costs). A backend that does not start is
reported with its error, not timed. The table goes into ``--output`` between the ``web-table``
markers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

import edgernn
from edgernn.converters.quantize import quantize
from edgernn.runtimes.session import StreamingSession, session_options
from edgernn.runtimes.webserve import WEB_ROOT, check_web_root, serve

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_table import _write_between_markers  # noqa: E402  (benchmarks/runtime_table.py)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- web-table:begin -->", "<!-- web-table:end -->"
WAKEWORD = ROOT / "examples" / "wakeword" / "wakeword_gru.pt"
FRAMES = 200  # distinct frames, repeated to make up --steps
ROUNDS = 4  # JS: edgernn-web and the hand loop alternate in this many rounds (ABBA); the p50 is the rounds' median


def build(folder: Path) -> dict[str, Path]:
    files = {}
    fp32 = folder / "wakeword.onnx"
    edgernn.export_file(WAKEWORD, fp32, mode="step")
    files["wakeword GRU"] = fp32
    for name, cls in (("GRU 256x2", nn.GRU), ("LSTM 256x2", nn.LSTM)):
        torch.manual_seed(0)
        path = folder / f"{name.split()[0].lower()}.onnx"
        edgernn.export(cls(64, 256, num_layers=2, batch_first=True).eval(), path, mode="step")
        files[name] = path
    out = {}
    for name, path in files.items():
        int8 = path.with_suffix(".int8.onnx")
        quantize(path, int8, method="dynamic", steps=200)
        out[f"{name}|fp32"], out[f"{name}|int8"] = path, int8
    return out


def python_times(path: Path, frames: list[np.ndarray], steps: int, warmup: int, rounds: int) -> dict[str, float]:
    """p50 µs per step: StreamingSession.step and a hand sess.run loop, interleaved."""
    session = StreamingSession(path)
    raw = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
    name = session.inputs[0].name
    states = {s.input: np.zeros(s.concrete_shape(1), np.float32) for s in session.states}
    outs = [t.name for t in session.outputs] + [s.output for s in session.states]
    n_out = len(session.outputs)

    def loop(i: int) -> None:
        nonlocal states
        r = raw.run(outs, {name: frames[i % len(frames)], **states})
        states = {s.input: v for s, v in zip(session.states, r[n_out:])}

    runs = {"edgernn": lambda i: session.step(frames[i % len(frames)]), "loop": loop}
    samples: dict[str, list[int]] = {k: [] for k in runs}
    for k, f in runs.items():
        for i in range(warmup):
            f(i)
    per = max(1, steps // rounds)
    for _ in range(rounds):
        for k, f in runs.items():
            for i in range(per):
                t0 = time.perf_counter_ns()
                f(i)
                samples[k].append(time.perf_counter_ns() - t0)
    return {k: statistics.median(v) / 1000 for k, v in samples.items()}


def js_cases(files: dict[str, Path], frames: dict[str, list[np.ndarray]], steps: int, warmup: int) -> list[dict]:
    cases = []
    for key, path in files.items():
        s = StreamingSession(path)
        spec = s.inputs[0]
        calls = [f.ravel().tolist() for f in frames[key]]
        plain = {"input": spec.name, "dims": list(spec.concrete_shape(1, 1)),
                 "states": [{"input": st.input, "output": st.output, "dims": list(st.concrete_shape(1))}
                            for st in s.states]}
        common = {"model": path.name, "calls": calls, "repeat": max(1, steps // len(calls) // ROUNDS),
                  "warmup": warmup, "keep": False, "as": "float32"}
        for r in range(ROUNDS):  # alternated in ABBA order, so that neither always runs first
            web = {"name": f"{key}|web|{r}", "kind": "step", **common}
            loop = {"name": f"{key}|loop|{r}", "kind": "plain", "plain": plain, **common}
            cases += [web, loop] if r % 2 == 0 else [loop, web]
    return cases


def _node(*args: str) -> None:
    done = subprocess.run(["node", *args], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        sys.exit(f"node {args[0]} failed:\n{done.stderr[-2000:]}")


def js_times(results: dict, key: str) -> dict[str, float | str]:
    out: dict[str, float | str] = {}
    for kind in ("web", "loop"):
        got = [results[f"{key}|{kind}|{r}"] for r in range(ROUNDS)]
        errors = [g["error"] for g in got if "error" in g]
        out[kind] = errors[0] if errors else statistics.median(g["stepUs"]["p50"] for g in got)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000, help="timed steps per runtime (default 2000)")
    ap.add_argument("--warmup", type=int, default=200, help="untimed steps first (default 200)")
    ap.add_argument("--backends", default="wasm,webgpu", help="onnxruntime-web backends to try (default wasm,webgpu)")
    ap.add_argument("--webgpu-steps", type=int, default=200,
                    help="timed steps for webgpu (default 200: without a GPU it is SwiftShader, milliseconds a step)")
    ap.add_argument("-o", "--output", type=Path, default=None,
                    help=f"markdown file with the {BEGIN} ... {END} markers (e.g. {DOC.relative_to(ROOT)})")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results as JSON here")
    args = ap.parse_args()
    check_web_root()
    if args.output is not None and BEGIN not in (args.output.read_text() if args.output.is_file() else ""):
        sys.exit(f"{args.output} has no {BEGIN} ... {END} markers; add them where the table goes")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    raw: dict = {"python": {}, "node": {}, "browser": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("exporting and quantizing ...", flush=True)
        files = build(folder)
        rng = np.random.default_rng(0)
        frames = {}
        for key, path in files.items():
            shape = StreamingSession(path).inputs[0].concrete_shape(1, 1)
            frames[key] = [rng.standard_normal(shape).astype(np.float32) for _ in range(FRAMES)]
        for key, path in files.items():
            raw["python"][key] = python_times(path, frames[key], args.steps, args.warmup, rounds=5)
            print(f"python {key}: {raw['python'][key]}", flush=True)
        cases = js_cases(files, frames, args.steps, args.warmup)
        (folder / "cases.json").write_text(json.dumps(cases))
        node_cases = [{**c, "model": str(folder / c["model"])} for c in cases]
        (folder / "cases-node.json").write_text(json.dumps(node_cases))
        print("node ...", flush=True)
        _node(str(WEB_ROOT / "test" / "stream-node.mjs"), str(folder / "cases-node.json"), str(folder / "node.json"))
        node = json.loads((folder / "node.json").read_text())
        raw["node"] = {k: js_times(node["results"], k) for k in files}
        server = serve({"/fixtures/": folder})
        url = f"http://127.0.0.1:{server.server_address[1]}/test/page.html"
        try:
            for backend in backends:
                print(f"chromium {backend} ...", flush=True)
                out = folder / f"browser-{backend}.json"
                path = folder / "cases.json"
                if backend == "webgpu":
                    path = folder / "cases-webgpu.json"
                    path.write_text(json.dumps(js_cases(files, frames, args.webgpu_steps, 20)))
                _node(str(WEB_ROOT / "test" / "browser.mjs"), url, str(path), str(out), backend, "/fixtures/")
                got = json.loads(out.read_text())
                raw["browser"][backend] = {k: js_times(got["results"], k) for k in files}
                raw["browser_version"] = got.get("browser")
                raw["ort_web"] = got.get("runtime")
        finally:
            server.shutdown()
        raw["ort_node"] = node.get("runtime")
    table = markdown(raw, files, backends, args)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))
    if args.output is not None:
        _write_between_markers(args.output, table, BEGIN, END)
        print(f"wrote the table into {args.output}")


def _us(v) -> str:
    return f"{v:.1f}" if isinstance(v, float) else "did not run"


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if isinstance(a, float) and isinstance(b, float) else "-"


def markdown(raw: dict, files: dict, backends: list[str], args) -> str:
    head = (f"Measured {datetime.date.today().isoformat()}: Python onnxruntime {ort.__version__}, "
            f"{raw.get('ort_node', '?')}, {raw.get('ort_web', '?').split(' (')[0]} in Chromium "
            f"{raw.get('browser_version', '?')} (headless); batch 1, one thread, {args.steps} steps per runtime after "
            f"{args.warmup} warm-up steps ({args.webgpu_steps} and 20 for webgpu, on SwiftShader when there is no "
            "GPU). p50 µs per step.\n\n")
    cols = ["model", "file", "Python edgernn", "Python loop", "Node edgernn-web", "Node loop"]
    for b in backends:
        cols += [f"Chromium {b} edgernn-web", f"Chromium {b} loop", f"{b} web / loop", f"{b} browser / Python"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    errors = {}
    for key in files:
        model, precision = key.split("|")
        py, nd = raw["python"][key], raw["node"][key]
        row = [model, f"step {precision}", _us(py["edgernn"]), _us(py["loop"]), _us(nd["web"]), _us(nd["loop"])]
        for b in backends:
            br = raw["browser"][b][key]
            row += [_us(br["web"]), _us(br["loop"]), _ratio(br["web"], br["loop"]), _ratio(br["web"], py["edgernn"])]
            if isinstance(br["web"], str):
                errors[b] = br["web"]
        lines.append("| " + " | ".join(row) + " |")
    notes = "".join(f"\n{b} did not run: {e}\n" for b, e in errors.items())
    return head + "\n".join(lines) + "\n" + notes


if __name__ == "__main__":
    main()
