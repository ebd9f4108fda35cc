"""Runtime table: edgernn against a plain onnxruntime loop, a plain torch.onnx export and PyTorch eager.

    .venv/bin/python benchmarks/runtime_table.py [--quick] [--steps 2000] [--threads 1] [-o docs/performance.md]

Reference models: bare batch-first layers with 64 input features and random weights (seed 0):
GRU 256x2, LSTM 256x2, Elman RNN (tanh) 256x3 and a small GRU 64x1. Each is exported with
``edgernn.export`` in step and chunk mode, and each file quantized to int8
(``quantize(..., method="dynamic")``). Every file is timed by :func:`edgernn.runtimes.bench.bench`
(step files 1 frame per call; chunk files 1 and 16 frames per call; batch 1) against

* ``onnxruntime loop``: a hand-written ``sess.run`` loop over the same file;
* ``plain export loop``: the same loop over a plain ``torch.onnx.export(dynamo=False)`` of the
  layer wrapped to take and return ``(x, h[, c])``, what a user gets without edgernn;
* ``pytorch eager``: the layer itself, ``y, h = m(x, h)`` in ``torch.inference_mode``,

all in the same process, in interleaved rounds. The table goes into ``--output`` between the
``runtime-table`` markers (the rest of the file is left as it is). ``--quick`` is a short run
(fewer calls, fewer rounds) that only prints, unless ``--output`` is given.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

import edgernn
from edgernn.converters.quantize import quantize
from edgernn.runtimes.bench import EAGER, EDGERNN, ORT_LOOP, PLAIN, bench

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- runtime-table:begin -->", "<!-- runtime-table:end -->"
FEATURES = 64
# name, layer class, hidden size, layers, extra constructor arguments
MODELS = [
    ("GRU 256x2", nn.GRU, 256, 2, {}),
    ("LSTM 256x2", nn.LSTM, 256, 2, {}),
    ("RNN 256x3 tanh", nn.RNN, 256, 3, {"nonlinearity": "tanh"}),
    ("GRU 64x1", nn.GRU, 64, 1, {}),
]
# (file mode, frames per call)
CASES = [("step", 1), ("chunk", 1), ("chunk", 16)]


class _Plain(nn.Module):
    """What a user exports without edgernn: the layer with its state as an argument and a result."""

    def __init__(self, layer: nn.RNNBase) -> None:
        super().__init__()
        self.layer = layer
        self.lstm = isinstance(layer, nn.LSTM)

    def forward(self, x, h, c=None):
        if self.lstm:
            y, (h, c) = self.layer(x, (h, c))
            return y, h, c
        y, h = self.layer(x, h)
        return y, h


def plain_export(layer: nn.RNNBase, path: Path) -> None:
    """``torch.onnx.export(dynamo=False)`` of ``(x, h[, c]) -> (y, h[, c])``, batch and time dynamic."""
    lstm = isinstance(layer, nn.LSTM)
    x = torch.zeros(2, 5, layer.input_size)
    h = torch.zeros(layer.num_layers, 2, layer.hidden_size)
    args = (x, h, h.clone()) if lstm else (x, h)
    inputs, outputs = ["x", "h", "c"][: len(args)], ["y", "h_out", "c_out"][: len(args)]
    axes = {"x": {0: "batch", 1: "time"}, "y": {0: "batch", 1: "time"}}
    axes.update({n: {1: "batch"} for n in inputs[1:] + outputs[1:]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Plain(layer).eval(), args, str(path), dynamo=False, input_names=inputs,
                          output_names=outputs, dynamic_axes=axes, opset_version=17)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a short run (300 calls in 3 rounds); prints only unless -o")
    ap.add_argument("--steps", type=int, default=None, help="timed calls per runtime (default 2000, --quick 300)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, --quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls per runtime (default 200, --quick 30)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-o", "--output", type=Path, default=None,
                    help=f"markdown file with the {BEGIN} ... {END} markers (default {DOC.relative_to(ROOT)}, "
                         "not written by --quick)")
    ap.add_argument("--json", type=Path, default=None, help="also write every bench report as JSON here")
    args = ap.parse_args()
    steps = args.steps or (300 if args.quick else 2000)
    rounds = args.rounds or (3 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (30 if args.quick else 200)
    output = args.output if args.output is not None else (None if args.quick else DOC)
    if output is not None:  # fail now rather than after the run
        text = output.read_text() if output.is_file() else ""
        if BEGIN not in text or END not in text:
            sys.exit(f"{output} has no {BEGIN} ... {END} markers; add them where the table goes")
    rows, reports = [], []
    environment = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cls, hidden, layers, extra in MODELS:
            torch.manual_seed(0)
            layer = cls(FEATURES, hidden, num_layers=layers, batch_first=True, **extra).eval()
            stem = name.split()[0].lower() + f"{hidden}x{layers}"
            pt, plain = Path(tmp, f"{stem}.pt"), Path(tmp, f"{stem}.plain.onnx")
            edgernn.save(layer, pt)
            plain_export(layer, plain)
            files = {}
            for mode in ("step", "chunk"):
                fp32 = Path(tmp, f"{stem}.{mode}.onnx")
                edgernn.export(layer, fp32, mode=mode)
                int8 = Path(tmp, f"{stem}.{mode}.int8.onnx")
                quantize(fp32, int8, method="dynamic")
                files[mode] = {"fp32": fp32, "int8": int8}
            for precision in ("fp32", "int8"):
                for mode, chunk in CASES:
                    r = bench(files[mode][precision], against=pt, baseline_onnx=plain, steps=steps, chunk=chunk,
                              batch=1, threads=args.threads, warmup=warmup, rounds=rounds)
                    environment = r.environment
                    row = _row_of(name, mode, precision, r)
                    rows.append(row)
                    reports.append({"model": name, "mode": mode, "precision": precision, **r.to_json()})
                    print(_line(row), flush=True)
    table = _markdown(rows, environment, steps, rounds, warmup, args.threads)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1))
    if output is not None:
        _write_between_markers(output, table)
        print(f"wrote the table into {output}")


def _row_of(name: str, mode: str, precision: str, r) -> dict:
    by = {x.name: x for x in r.runtimes}
    mine = by[EDGERNN]
    return {"model": name, "mode": mode, "precision": precision, "chunk": r.chunk, "kib": r.model_bytes / 1024,
            "p50": mine.p50_us, "p99": mine.p99_us, "per_frame": mine.per_frame_p50_us, "fps": mine.fps,
            "ort": by[ORT_LOOP].p50_us, "plain": by[PLAIN].p50_us, "eager": by[EAGER].p50_us,
            "vs_ort": r.ratios[f"{EDGERNN} / {ORT_LOOP}"], "vs_plain": r.ratios[f"{EDGERNN} / {PLAIN}"],
            "vs_eager": r.ratios[f"{EDGERNN} / {EAGER}"], "dev": r.deviations[EAGER],
            "growth": mine.memory_growth_mib}


def _line(r: dict) -> str:
    return (f"| {r['model']} | {r['mode']} {r['precision']} | {r['chunk']} | {r['kib']:.0f} KiB | "
            f"{r['p50']:.1f} ({r['p99']:.0f}) | {r['per_frame']:.1f} | {r['fps']:,.0f} | {r['ort']:.1f} | "
            f"{r['plain']:.1f} | {r['eager']:.1f} | {r['vs_ort']:.2f}x | {r['vs_plain']:.2f}x | "
            f"{r['vs_eager']:.2f}x | {r['dev']:.1e} |")


def _markdown(rows: list[dict], env: dict, steps: int, rounds: int, warmup: int, threads: int) -> str:
    when = datetime.date.today().isoformat()
    head = (f"Measured {when} on {env.get('cpu', '?')} ({env.get('cpu_count', '?')} cores), "
            f"{env.get('platform', '?')}; "
            f"Python {env.get('python', '?')}, onnxruntime {env.get('onnxruntime', '?')}, torch "
            f"{env.get('torch', '?')}. Batch 1, {threads} thread{'s' if threads > 1 else ''}, {steps} timed calls per "
            f"runtime in {rounds} interleaved rounds after {warmup} warm-up calls. Latencies are per call in µs "
            "(p50, p99 in brackets); ratios are edgernn p50 / baseline p50 (below 1: edgernn is faster).\n\n"
            "| model | file | frames/call | file size | edgernn µs/call p50 (p99) | µs/frame | frames/s | "
            "ort loop p50 | plain export p50 | eager p50 | vs ort loop | vs plain export | vs eager | "
            "max dev vs eager |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    return head + "\n".join(_line(r) for r in rows) + "\n"


def _write_between_markers(path: Path, table: str, begin: str = BEGIN, end: str = END) -> None:
    text = path.read_text()
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    path.write_text(pattern.sub(lambda _: f"{begin}\n{table}{end}", text, count=1))


if __name__ == "__main__":
    main()
