"""edgernn on a streaming CRNN keyword spotter: export -> stream -> compare -> quantize.

    .venv/bin/python examples/kws_crnn/demo.py [--frames 2000] [--out out/kws_crnn]

The model (``model.py``) is a Conv1d frontend with symmetric padding (one frame of lookahead), a
causal dilated Conv1d and a GRU, trained by ``train.py`` (``kws_crnn.pt``, a state_dict, with
``kws_crnn.json``, its constructor's arguments).

1. ``edgernn.export_file`` in chunk mode (the Python API behind ``edgernn export``): each
   convolution over time gets a context cache (state ``<module>.context``); the frontend's
   padding looks one frame ahead, so the contract declares ``delay`` 1 on the output and the
   layers after it skip their warm-up frame (``<module>.warmup``). edgernn verifies the export.
2. Stream a fresh test stream through ``edgernn.open`` (``StreamingSession``), 16 frames per
   call, state carried, and compare with PyTorch on the whole sequence shifted by the delay:
   frame ``t`` of the stream is PyTorch's frame ``t - delay``. The GRU's final state is compared
   with PyTorch's GRU output at the last frame the stream has produced.
3. ``edgernn.quantize`` the chunk file to dynamic int8 and stream it the same way; int8 is judged
   on keyword decisions (argmax agreement per frame, detections), not on 1e-5.
4. Print a report and write it to ``OUT/report.json``. Exits 1 if parity or detections fail.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:  # the model's class is examples.kws_crnn.model:KwsCRNN
    sys.path.insert(0, str(REPO))

from examples.kws_crnn import kws_data as data  # noqa: E402

import edgernn  # noqa: E402

CHECKPOINT = HERE / "kws_crnn.pt"
CONFIG_FILE = HERE / "kws_crnn.json"
CLASS_PATH = "examples.kws_crnn.model:KwsCRNN"
CHUNK = 16
TOLERANCE = 1e-5  # fp32 parity bar: max |onnx - torch| / max(1, max |torch|)
INT8_MIN_AGREEMENT = 0.97  # int8: fraction of frames whose argmax decision agrees with PyTorch's
TEST_SEED = 2024  # differs from train.py's training (0) and held-out (1000) seeds
HELDOUT_SEED = 3000  # streams for edgernn.quantize's own accuracy check
HELDOUT_STREAMS, HELDOUT_FRAMES = 4, 1000

console = Console()


def _shown(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load_model(checkpoint: Path = CHECKPOINT) -> torch.nn.Module:
    """The PyTorch model, read as ``edgernn export`` reads it (state_dict + --class + --config)."""
    return edgernn.load(checkpoint, class_path=CLASS_PATH, config=checkpoint.with_suffix(".json")).module


def export_chunk(checkpoint: Path, target: Path) -> Any:
    """``edgernn.export_file`` in chunk mode; prints the contract (delays, states) and parity."""
    console.print(f"$ edgernn export {_shown(checkpoint)} --class {CLASS_PATH} --config "
                  f"{_shown(checkpoint.with_suffix('.json'))} -o {_shown(target)} --mode chunk", style="bold",
                  highlight=False, soft_wrap=True)
    report = edgernn.export_file(checkpoint, target, mode="chunk", class_path=CLASS_PATH,
                                 config=checkpoint.with_suffix(".json"))
    c = report.contract
    t = Table(title=f"{_shown(target)}: chunk mode, {report.size_bytes / 1024:.1f} KiB", title_justify="left")
    for col in ("kind", "name", "shape", "dtype", "time axis", "delay / frame multiple"):
        t.add_column(col)
    shape = lambda s: escape("[" + ", ".join(str(d) for d in s) + "]")  # noqa: E731  (not rich markup)
    for i in c.inputs:
        t.add_row("input", i.name, shape(i.shape), i.dtype, str(i.time_axis), f"multiple {i.frame_multiple}")
    for o in c.outputs:
        t.add_row("output", o.name, shape(o.shape), o.dtype, str(o.time_axis), f"delay {o.delay}")
    for s in c.states:
        t.add_row("state", s.name, shape(s.shape), s.dtype, "", "")
    console.print(t)
    console.print(f"parity (edgernn verify): {report.parity.summary()}", highlight=False)
    return report


def torch_reference(model: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch on the whole sequence from zero state: logits [1, T, 2] and the GRU's output
    [1, T, 48] (a 1-layer GRU's output at frame t is its state after frame t)."""
    seen: dict[str, torch.Tensor] = {}
    hook = model.gru.register_forward_hook(lambda m, a, out: seen.__setitem__("y", out[0]))
    try:
        with torch.inference_mode():
            y = model(torch.from_numpy(x)).numpy().astype(np.float64)
    finally:
        hook.remove()
    return y, seen["y"].numpy().astype(np.float64)


def stream_parity(path: Path, x: np.ndarray, chunk: int, want_y: np.ndarray, want_gru: np.ndarray) -> dict[str, Any]:
    """Stream ``x`` [1, 40, T] through ``path``, ``chunk`` frames per call; compare with PyTorch
    shifted by the file's declared delay (stream frame t = PyTorch frame t - delay)."""
    session = edgernn.open(path, threads=1)
    delay = session.delays["y"]
    y = session.stream(x, chunk=chunk)["y"].astype(np.float64)
    frames = x.shape[2]
    got, want = y[:, delay:], want_y[:, :frames - delay]
    err_y = float(np.max(np.abs(got - want)))
    # the GRU has consumed frames up to the model's frame T-1-delay
    h = session.state["gru.h"].astype(np.float64)  # [1, 1, 48]
    err_h = float(np.max(np.abs(h[0] - want_gru[:, frames - 1 - delay])))
    rel = max(err_y / max(1.0, float(np.max(np.abs(want)))), err_h / max(1.0, float(np.max(np.abs(want_gru)))))
    warm = {s.name: int(session.state[s.name].reshape(-1)[0]) for s in session.states if s.name.endswith(".warmup")}
    return {"file": _shown(path), "chunk": chunk, "calls": -(-frames // chunk), "delay": delay,
            "compared_frames": frames - delay, "logits": got, "max_abs_error": err_y, "state_max_abs_error": err_h,
            "error": rel, "passed": rel <= TOLERANCE, "warmup_counters": warm}


def decisions(logits: np.ndarray, stream: data.Stream, delay: int) -> dict[str, Any]:
    """Keyword decisions on the model's frames 0..T-1-delay (``logits`` [1, T - delay, 2])."""
    active = data.keyword_probability(logits[0]) > data.THRESHOLD
    n = active.shape[0]
    truth = data.Stream(stream.x[:, :n], stream.y[:n], [k for k in stream.keywords if k[1] < n])
    s = data.score(active[None], [truth])
    return {"active": active, "argmax": np.argmax(logits[0], axis=-1), "detections": data.detections(active),
            "accuracy": s.accuracy, "precision": s.precision, "recall": s.recall, "f1": s.f1,
            "tp": s.tp, "fp": s.fp, "fn": s.fn}


def run_demo(frames: int = 2000, out: Path = Path("out/kws_crnn"), checkpoint: Path = CHECKPOINT,
             seed: int = TEST_SEED) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"chunk": out / "kws_crnn_chunk.onnx", "int8": out / "kws_crnn_chunk.int8.onnx"}

    # 1. export (verified by edgernn)
    report = export_chunk(checkpoint, files["chunk"])
    delay = report.contract.outputs[0].delay

    # 2. quantize, its accuracy check on held-back streams of this task (not synthetic noise)
    rng = np.random.default_rng(HELDOUT_SEED)
    heldout = out / "heldout.npy"
    np.save(heldout, np.stack([data.make_stream(HELDOUT_FRAMES, rng).x for _ in range(HELDOUT_STREAMS)]))
    console.print(f"$ edgernn quantize {_shown(files['chunk'])} -o {_shown(files['int8'])} --method dynamic "
                  f"--data {_shown(heldout)}", style="bold", highlight=False, soft_wrap=True)
    q = edgernn.quantize(files["chunk"], files["int8"], method="dynamic", data=heldout)
    console.print(f"int8: {len(q.quantized)} nodes int8 ({', '.join(sorted({n.op_type for n in q.quantized}))}), "
                  f"{len(q.kept_float)} kept float ({', '.join(sorted({n.op_type for n in q.kept_float}))}), size "
                  f"{q.size_ratio:.2f}x of fp32; max error {q.accuracy.max_error:.3g} on the held-back streams\n",
                  highlight=False)

    # 3. a fresh stream: PyTorch on the whole sequence vs the files in calls of 16 frames
    stream = data.make_stream(frames, np.random.default_rng(seed))
    x = stream.x[None]  # [1, 40, T]
    model = load_model(checkpoint)
    want_y, want_gru = torch_reference(model, x)
    streamed = {"chunk": stream_parity(files["chunk"], x, CHUNK, want_y, want_gru),
                "int8": stream_parity(files["int8"], x, CHUNK, want_y, want_gru)}
    streamed["int8"]["passed"] = None  # judged on decisions below
    n = frames - delay
    det = {"pytorch": decisions(want_y[:, :n], stream, delay)}
    for k, s in streamed.items():
        d = det[f"onnx_{k}"] = decisions(s.pop("logits"), stream, delay)
        s["detections_agree"] = d["detections"] == det["pytorch"]["detections"]
        s["argmax_agree"] = int(np.sum(d["argmax"] == det["pytorch"]["argmax"]))
        s["frames_agree"] = int(np.sum(d["active"] == det["pytorch"]["active"]))
    q8 = streamed["int8"]
    q8["argmax_agreement"] = q8["argmax_agree"] / max(1, n)
    q8["passed"] = q8["argmax_agreement"] >= INT8_MIN_AGREEMENT
    ch = streamed["chunk"]
    passed = bool(report.parity.passed and ch["passed"] and ch["detections_agree"] and q8["passed"])

    results = {
        "frames": frames, "keywords": len([k for k in stream.keywords if k[1] < n]), "tolerance": TOLERANCE,
        "passed": passed, "delay": delay,
        "states": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in report.contract.states],
        "files": {"checkpoint": {"path": _shown(checkpoint), "size_bytes": checkpoint.stat().st_size},
                  **{m: {"path": _shown(p), "size_bytes": p.stat().st_size} for m, p in files.items()}},
        "export_parity": report.parity.max_error,
        "quantize": {"size_ratio": q.size_ratio, "max_error": q.accuracy.max_error,
                     "quantized": [n.name for n in q.quantized], "kept_float": [n.name for n in q.kept_float]},
        "int8_min_agreement": INT8_MIN_AGREEMENT,
        "stream": streamed,
        "detection": {k: {kk: vv for kk, vv in v.items() if kk not in ("active", "argmax")} for k, v in det.items()},
    }
    print_report(results)
    (out / "report.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def print_report(r: dict[str, Any]) -> None:
    ok = lambda b: "[green]yes[/]" if b else "[bold red]NO[/]"  # noqa: E731
    ch, q8, det = r["stream"]["chunk"], r["stream"]["int8"], r["detection"]
    n = ch["compared_frames"]
    t = Table(title=f"KWS CRNN on a fresh stream of {r['frames']} frames with {r['keywords']} keywords "
                    f"(delay {r['delay']}: {n} frames compared)", title_justify="left")
    t.add_column("")
    t.add_column("PyTorch\nwhole sequence", justify="right")
    t.add_column(f"ONNX chunk fp32\n{ch['chunk']} frames/call", justify="right")
    t.add_column(f"ONNX chunk int8\n{q8['chunk']} frames/call", justify="right")
    t.add_row("file size", *(f"{r['files'][k]['size_bytes'] / 1024:.1f} KiB" for k in ("checkpoint", "chunk", "int8")))
    t.add_row("calls for the stream", "1", str(ch["calls"]), str(q8["calls"]))
    t.add_row("logits: max abs error (shifted by delay)", "", f"{ch['max_abs_error']:.1e}", f"{q8['max_abs_error']:.1e}")
    t.add_row("GRU state: max abs error", "", f"{ch['state_max_abs_error']:.1e}", f"{q8['state_max_abs_error']:.1e}")
    t.add_row(f"within {r['tolerance']:g} (int8: argmax >= {r['int8_min_agreement']:.0%})", "", ok(ch["passed"]),
              ok(q8["passed"]))
    t.add_section()
    cols = [det["pytorch"], det["onnx_chunk"], det["onnx_int8"]]
    t.add_row("keywords found / false / missed", *(f"{d['tp']} / {d['fp']} / {d['fn']}" for d in cols))
    t.add_row("detection F1", *(f"{d['f1']:.3f}" for d in cols))
    t.add_row("frame accuracy", *(f"{d['accuracy']:.4f}" for d in cols))
    t.add_row("same detections as PyTorch", "", ok(ch["detections_agree"]), ok(q8["detections_agree"]))
    t.add_row("same argmax as PyTorch", "", f"{ch['argmax_agree']}/{n}", f"{q8['argmax_agree']}/{n}")
    console.print(t)
    console.print(f"delay {r['delay']} frame(s); states: " + ", ".join(
        f"{s['name']} {s['shape']} {s['dtype']}" for s in r["states"]), highlight=False)
    console.print("[green]parity and detections: passed[/]" if r["passed"] else "[bold red]parity or detections FAILED[/]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="edgernn on a streaming CRNN keyword spotter: export in chunk mode, "
                                                 "stream with the delay, compare with PyTorch, quantize.")
    parser.add_argument("--frames", type=int, default=2000, help="frames in the test stream (default 2000)")
    parser.add_argument("--out", type=Path, default=Path("out/kws_crnn"), help="folder for the ONNX files and "
                        "report.json (default out/kws_crnn, created)")
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT, help="state_dict written by train.py, with "
                        "its .json config next to it (default: the shipped kws_crnn.pt)")
    parser.add_argument("--seed", type=int, default=TEST_SEED, help="seed of the test stream")
    args = parser.parse_args(argv)
    if args.frames < CHUNK:
        parser.error(f"--frames must be at least {CHUNK}")
    results = run_demo(args.frames, args.out, args.checkpoint, args.seed)
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
