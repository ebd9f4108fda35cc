"""edgernn end to end on a small GRU keyword spotter: export -> stream -> compare -> time.

    .venv/bin/python examples/wakeword/demo.py [--frames 2000] [--out out/wakeword]

1. ``edgernn export`` the shipped checkpoint (``wakeword_gru.pt``, trained by ``train.py``) in
   chunk mode and in step mode; each export is verified against PyTorch by edgernn itself.
2. Stream a fresh synthetic test stream through onnxruntime with ``edgernn.open``: the step file
   one frame per call, the chunk file 16 frames per call, state carried between calls; compare
   with PyTorch on the whole sequence (logits, final state, keyword detections).
3. Time one frame per call at batch 1 on one thread: PyTorch eager (carrying the GRU's hidden
   state by hand) against the step file through ``StreamingSession.step``, interleaved.
4. Print a report and write it to ``OUT/report.json``. Exits 1 if parity or detections fail.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import data  # noqa: E402  (examples/wakeword/data.py)

import edgernn  # noqa: E402

CHECKPOINT = HERE / "wakeword_gru.pt"
INT8_MIN_AGREEMENT = 0.99  # int8 is judged on the task: frame decisions that agree with PyTorch
TOLERANCE = 1e-5  # the fp32 parity bar: max |onnx - torch| / max(1, max |torch|)
CHUNK = 16
TEST_SEED = 2024  # differs from train.py's training (0) and held-out (1000) seeds
WARMUP = 100

console = Console()


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when it is inside it (for commands a reader can copy)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def export_with_cli(checkpoint: Path, target: Path, mode: str) -> dict[str, Any]:
    """Run ``edgernn export CHECKPOINT -o TARGET --mode MODE --json`` and return its report."""
    args = ["export", _shown(checkpoint), "-o", _shown(target), "--mode", mode, "--json"]
    console.print(f"$ edgernn {' '.join(args)}", style="bold", highlight=False, soft_wrap=True)
    done = subprocess.run([sys.executable, "-m", "edgernn", *args], capture_output=True, text=True)
    if done.returncode != 0:
        console.print(done.stdout + done.stderr, highlight=False, markup=False)
        raise SystemExit(f"edgernn export --mode {mode} failed (exit {done.returncode})")
    report = json.loads(done.stdout)
    table = Table(title=f"{_shown(target)}: {mode} mode, {report['size_bytes'] / 1024:.1f} KiB",
                  title_justify="left")
    for col in ("kind", "name", "shape", "dtype"):
        table.add_column(col)
    for kind, key in (("input", "inputs"), ("output", "outputs"), ("state", "states")):
        for t in report[key]:
            name = f"{t['input']} -> {t['output']}" if kind == "state" else t["name"]
            table.add_row(kind, name, "[" + ", ".join(map(str, t["shape"])) + "]", t["dtype"])
    console.print(table, markup=False)
    parity = report["parity"]
    console.print(f"export parity with PyTorch: max error {parity['max_error']:.2e} over {len(parity['cases'])} "
                  f"cases ({'passed' if parity['passed'] else 'FAILED'}, tolerance {parity['tolerance']:g})\n",
                  highlight=False)
    return report


def quantize_with_cli(source: Path, target: Path) -> dict[str, Any]:
    """Run ``edgernn quantize SOURCE -o TARGET --method dynamic --json`` and return its report."""
    args = ["quantize", _shown(source), "-o", _shown(target), "--method", "dynamic", "--json"]
    console.print(f"$ edgernn {' '.join(args)}", style="bold", highlight=False, soft_wrap=True)
    done = subprocess.run([sys.executable, "-m", "edgernn", *args], capture_output=True, text=True)
    if done.returncode != 0:
        console.print(done.stdout + done.stderr, highlight=False, markup=False)
        raise SystemExit(f"edgernn quantize failed (exit {done.returncode})")
    report = json.loads(done.stdout)
    acc = report["accuracy"]
    agree = acc["min_agreement"]
    console.print(f"int8: {len(report['quantized'])} nodes int8, {len(report['kept_float'])} kept float, size "
                  f"{report['size_ratio']:.2f}x of fp32; against fp32 over {acc['steps']} frames of "
                  f"{acc['data_source'].split(' (')[0]}: max error {acc['max_error']:.3g}, decisions agree "
                  f"{'-' if agree is None else f'{agree:.2%}'}\n", highlight=False)
    return report


def stream_parity(path: Path, x: np.ndarray, chunk: int, want_y: np.ndarray, want_h: np.ndarray) -> dict[str, Any]:
    """Stream ``x`` [1, time, bands] through ``path`` ``chunk`` frames per call; compare with PyTorch."""
    session = edgernn.open(path)
    y = session.stream(x, chunk=chunk)["y"]
    h = session.state["core.h"]
    err_y = float(np.max(np.abs(y.astype(np.float64) - want_y)))
    err_h = float(np.max(np.abs(h.astype(np.float64) - want_h)))
    rel = max(err_y / max(1.0, float(np.max(np.abs(want_y)))), err_h / max(1.0, float(np.max(np.abs(want_h)))))
    return {"file": _shown(path), "chunk": chunk, "calls": -(-x.shape[1] // chunk), "logits": y,
            "max_abs_error": err_y, "state_max_abs_error": err_h, "error": rel, "passed": rel <= TOLERANCE}


def detection_summary(logits: np.ndarray, stream: data.Stream) -> dict[str, Any]:
    active = data.keyword_probability(logits[0]) > data.THRESHOLD
    s = data.score(active[None], [stream])
    return {"active": active, "detections": data.detections(active), "accuracy": s.accuracy,
            "precision": s.precision, "recall": s.recall, "f1": s.f1, "tp": s.tp, "fp": s.fp, "fn": s.fn}


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    a = np.asarray(samples_ns, dtype=np.float64) / 1000.0
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "mean": float(a.mean())}


def measure_latency(model: torch.nn.Module, step_file: Path, int8_file: Path, x: np.ndarray,
                    steps: int) -> dict[str, Any]:
    """Per-frame latency at batch 1 on one thread, interleaved in this process (the order of the
    contenders rotates every frame so that none always runs first):

    - PyTorch eager: frontend, ``core(frame, h)`` carrying ``h``, head;
    - the step file through ``StreamingSession.step`` (state carried by edgernn);
    - the same file through a bare ``InferenceSession.run`` (state fed by hand), to show what the
      session wrapper costs;
    - the int8 file (``edgernn quantize``) through ``StreamingSession.step``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        session = edgernn.open(step_file, threads=1)
        session_int8 = edgernn.open(int8_file, threads=1)
        ort = session.session
        names = [session.outputs[0].name, session.states[0].output]
        x_name, h_name = session.inputs[0].name, session.states[0].input
        frames_np = [np.ascontiguousarray(x[:, t % x.shape[1]:t % x.shape[1] + 1]) for t in range(steps + WARMUP)]
        frames_pt = [torch.from_numpy(f) for f in frames_np]
        h_pt: torch.Tensor | None = None
        h_ort = np.zeros(session.states[0].concrete_shape(1), dtype=np.float32)
        timings: dict[str, list[int]] = {"pytorch": [], "onnx_step": [], "ort_run": [], "onnx_int8": []}
        clock = time.perf_counter_ns

        def run_pytorch(i: int) -> None:
            nonlocal h_pt
            y, h_pt = model.core(model.frontend(frames_pt[i]), h_pt)
            model.head(y)

        def run_session(i: int) -> None:
            session.step(frames_np[i])

        def run_int8(i: int) -> None:
            session_int8.step(frames_np[i])

        def run_ort(i: int) -> None:
            nonlocal h_ort
            _, h_ort = ort.run(names, {x_name: frames_np[i], h_name: h_ort})

        contenders = [("pytorch", run_pytorch), ("onnx_step", run_session), ("ort_run", run_ort),
                      ("onnx_int8", run_int8)]
        with torch.inference_mode():
            for i in range(steps + WARMUP):
                k = i % len(contenders)
                for name, fn in contenders[k:] + contenders[:k]:
                    t0 = clock()
                    fn(i)
                    t1 = clock()
                    if i >= WARMUP:
                        timings[name].append(t1 - t0)
    finally:
        torch.set_num_threads(threads)
    result: dict[str, Any] = {name: _percentiles(v) for name, v in timings.items()}
    result["steps"] = steps
    result["ratio_p50"] = result["pytorch"]["p50"] / result["onnx_step"]["p50"]
    result["ratio_p90"] = result["pytorch"]["p90"] / result["onnx_step"]["p90"]
    result["ratio_int8_p50"] = result["pytorch"]["p50"] / result["onnx_int8"]["p50"]
    return result


def run_demo(frames: int = 2000, out: Path = Path("out/wakeword"), checkpoint: Path = CHECKPOINT,
             seed: int = TEST_SEED, latency_steps: int | None = None) -> dict[str, Any]:
    """Export, stream, compare and time; print the report and return its numbers (also written to
    ``out/report.json``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"chunk": out / "wakeword_chunk.onnx", "step": out / "wakeword_step.onnx"}

    # 1. export with the CLI, as a user would
    exports = {mode: export_with_cli(checkpoint, path, mode) for mode, path in files.items()}
    files["int8"] = out / "wakeword_step.int8.onnx"
    quantized = quantize_with_cli(files["step"], files["int8"])

    # 2. a fresh stream: PyTorch on the whole sequence vs onnxruntime in calls, state carried
    stream = data.make_stream(frames, np.random.default_rng(seed))
    x = stream.x[None]  # [1, time, bands]
    model = edgernn.load(checkpoint).module
    with torch.inference_mode():
        xt = torch.from_numpy(x)
        _, h = model.core(model.frontend(xt))
        want_y = model(xt).numpy().astype(np.float64)
        want_h = h.numpy().astype(np.float64)
    streamed = {"step": stream_parity(files["step"], x, 1, want_y, want_h),
                "chunk": stream_parity(files["chunk"], x, CHUNK, want_y, want_h)}
    int8 = stream_parity(files["int8"], x, 1, want_y, want_h)  # judged on the task, not on 1e-5
    det = {"pytorch": detection_summary(want_y, stream)}
    det["onnx_int8"] = detection_summary(int8.pop("logits"), stream)
    int8["detections_agree"] = det["onnx_int8"]["detections"] == det["pytorch"]["detections"]
    int8["frames_agree"] = int(np.sum(det["onnx_int8"]["active"] == det["pytorch"]["active"]))
    int8["passed"] = int8["frames_agree"] >= INT8_MIN_AGREEMENT * frames
    for mode, s in streamed.items():
        det[f"onnx_{mode}"] = detection_summary(s.pop("logits"), stream)
        s["detections_agree"] = det[f"onnx_{mode}"]["detections"] == det["pytorch"]["detections"]
        s["frames_agree"] = int(np.sum(det[f"onnx_{mode}"]["active"] == det["pytorch"]["active"]))

    # 3. latency, one frame per call
    latency = measure_latency(model, files["step"], files["int8"], x, latency_steps or max(frames, 200))

    passed = all(s["passed"] and s["detections_agree"] for s in streamed.values()) and all(
        e["parity"]["passed"] for e in exports.values()) and int8["passed"]
    streamed["int8"] = int8
    results = {
        "frames": frames, "keywords": len(stream.keywords), "tolerance": TOLERANCE, "passed": passed,
        "files": {"checkpoint": {"path": _shown(checkpoint), "size_bytes": checkpoint.stat().st_size},
                  **{m: {"path": _shown(p), "size_bytes": p.stat().st_size} for m, p in files.items()}},
        "export_parity": {m: e["parity"]["max_error"] for m, e in exports.items()},
        "quantize": {"size_ratio": quantized["size_ratio"], "accuracy": quantized["accuracy"]},
        "stream": streamed,
        "detection": {k: {kk: vv for kk, vv in v.items() if kk != "active"} for k, v in det.items()},
        "latency_us": latency,
    }
    print_report(results)
    (out / "report.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def print_report(r: dict[str, Any]) -> None:
    """One table, a column per contender: PyTorch, the step file, the chunk file."""
    ok = lambda b: "[green]yes[/]" if b else "[bold red]NO[/]"  # noqa: E731
    st, ch, lat, det = r["stream"]["step"], r["stream"]["chunk"], r["latency_us"], r["detection"]
    q8 = r["stream"]["int8"]
    t = Table(title=f"wakeword GRU on a fresh stream of {r['frames']} frames with {r['keywords']} keywords",
              title_justify="left")
    t.add_column("")
    t.add_column("PyTorch", justify="right")
    t.add_column(f"ONNX step\n{st['chunk']} frame/call", justify="right")
    t.add_column(f"ONNX chunk\n{ch['chunk']} frames/call", justify="right")
    t.add_column("ONNX int8 step\n1 frame/call", justify="right")
    t.add_row("file size", *(f"{r['files'][k]['size_bytes'] / 1024:.1f} KiB"
                             for k in ("checkpoint", "step", "chunk", "int8")))
    t.add_row("export check (edgernn verify)", "", f"{r['export_parity']['step']:.1e}",
              f"{r['export_parity']['chunk']:.1e}", "")
    t.add_row("calls for the stream", "1", str(st["calls"]), str(ch["calls"]), str(q8["calls"]))
    t.add_row("logits: max abs error", "", f"{st['max_abs_error']:.1e}", f"{ch['max_abs_error']:.1e}",
              f"{q8['max_abs_error']:.1e}")
    t.add_row("final state: max abs error", "", f"{st['state_max_abs_error']:.1e}",
              f"{ch['state_max_abs_error']:.1e}", f"{q8['state_max_abs_error']:.1e}")
    t.add_row(f"within tolerance {r['tolerance']:g} (int8: decisions)", "", ok(st["passed"]), ok(ch["passed"]),
              ok(q8["passed"]))
    t.add_section()
    cols = [det["pytorch"], det["onnx_step"], det["onnx_chunk"], det["onnx_int8"]]
    t.add_row("keywords found / false / missed", *(f"{d['tp']} / {d['fp']} / {d['fn']}" for d in cols))
    t.add_row("detection F1", *(f"{d['f1']:.3f}" for d in cols))
    t.add_row("frame accuracy", *(f"{d['accuracy']:.4f}" for d in cols))
    t.add_row("same detections as PyTorch", "", ok(st["detections_agree"]), ok(ch["detections_agree"]),
              ok(q8["detections_agree"]))
    t.add_row("same frame decisions", "", f"{st['frames_agree']}/{r['frames']}", f"{ch['frames_agree']}/{r['frames']}",
              f"{q8['frames_agree']}/{r['frames']}")
    t.add_section()
    t.add_row("latency per frame, p50", f"{lat['pytorch']['p50']:.1f} us", f"{lat['onnx_step']['p50']:.1f} us", "",
              f"{lat['onnx_int8']['p50']:.1f} us")
    t.add_row("latency per frame, p90", f"{lat['pytorch']['p90']:.1f} us", f"{lat['onnx_step']['p90']:.1f} us", "",
              f"{lat['onnx_int8']['p90']:.1f} us")
    t.add_row("speed-up over PyTorch (p50)", "", f"{lat['ratio_p50']:.2f}x", "", f"{lat['ratio_int8_p50']:.2f}x")
    console.print(t)
    console.print(f"latency: batch 1, 1 thread, {lat['steps']} frames one per call, interleaved; PyTorch eager "
                  f"carries the GRU state by hand, the step file runs through StreamingSession.step. The same file "
                  f"through a bare InferenceSession.run: p50 {lat['ort_run']['p50']:.1f} us, "
                  f"p90 {lat['ort_run']['p90']:.1f} us.", highlight=False)
    if r["passed"]:
        console.print("[green]parity and detections: passed[/]")
    else:
        console.print("[bold red]parity or detections FAILED[/]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="edgernn end to end on a GRU keyword spotter: export, quantize, "
                                                 "stream, compare with PyTorch, time.")
    parser.add_argument("--frames", type=int, default=2000, help="frames in the test stream (default 2000)")
    parser.add_argument("--out", type=Path, default=Path("out/wakeword"), help="folder for the ONNX files and "
                        "report.json (default out/wakeword, created)")
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT, help="FrameClassifier checkpoint to "
                        "export, as train.py writes (default: the shipped wakeword_gru.pt)")
    parser.add_argument("--seed", type=int, default=TEST_SEED, help="seed of the test stream")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error("--frames must be at least 1")
    results = run_demo(args.frames, args.out, args.checkpoint, args.seed)
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
