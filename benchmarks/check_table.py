"""The cross-runtime table of docs/deploy.md ("One file, every runtime"): every model kind through
every runtime with :func:`edgernn.check`, which is what ``edgernn check FILE --frames 500 --json``
prints for each file.

    .venv/bin/python benchmarks/check_table.py [--frames 500] [--rounds 3] [--keep DIR]

Models (random weights, seed 0, 40 input features, batch 1): GRU 64x2, LSTM 64x2 and Elman RNN
(tanh) 64x1 in step mode; GRU 64x2 in chunk mode (10 frames per call); int8 files from
``edgernn quantize --method dynamic`` (GRU: MatMulInteger cells; LSTM: onnxruntime's
DynamicQuantizeLSTM) and ``--method static`` (LSTM, QDQ); the NTM of examples/ntm_copy in step
mode; a 'same'-padded Conv1d(40, 64, 3) before a GRU 64 in chunk mode (10 frames per call: a
context cache, an int64 warm-up counter and a masked Scan behind an If). Prints the table in
Markdown; each cell is ``max |difference| from onnxruntime / p50 µs per call``, or why it did not run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import edgernn
from edgernn.converters.quantize import quantize

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = ("ort", "openvino", "tract", "node", "web")


class ConvGRU(nn.Module):
    """[batch, 40, time] -> 'same' Conv1d -> GRU over [time, batch, 64]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(40, 64, 3, padding=1)
        self.gru = nn.GRU(64, 64)

    def forward(self, x):
        return self.gru(torch.relu(self.conv(x)).permute(2, 0, 1))[0]


def make(folder: Path) -> dict[str, tuple[Path, dict]]:
    """Model kind -> (file, check options)."""
    torch.manual_seed(0)
    files: dict[str, tuple[Path, dict]] = {}
    gru, lstm, rnn = nn.GRU(40, 64, 2).eval(), nn.LSTM(40, 64, 2).eval(), nn.RNN(40, 64).eval()
    for name, module in (("GRU 64x2 step", gru), ("LSTM 64x2 step", lstm), ("RNN 64 step", rnn)):
        path = folder / f"{name.split()[0].lower()}_step.onnx"
        assert edgernn.export(module, path, mode="step").passed
        files[name] = (path, {})
    path = folder / "gru_chunk.onnx"
    assert edgernn.export(gru, path, mode="chunk").passed
    files["GRU 64x2 chunk (10 frames)"] = (path, {"chunk": 10})
    for name, src, method in (("GRU int8 step (dynamic)", "gru_step", "dynamic"),
                              ("LSTM int8 step (dynamic)", "lstm_step", "dynamic"),
                              ("LSTM int8 step (static QDQ)", "lstm_step", "static")):
        out = folder / f"{src}.{method}.onnx"
        quantize(folder / f"{src}.onnx", out, method=method, steps=2000)
        files[name] = (out, {})
    path = folder / "ntm_step.onnx"
    assert edgernn.export_file(ROOT / "examples" / "ntm_copy" / "ntm_copy.pt", path, mode="step").passed
    files["NTM (examples/ntm_copy) step"] = (path, {})
    path = folder / "conv_gru_chunk.onnx"
    assert edgernn.export(ConvGRU().eval(), path, mode="chunk", inputs=["x:float32:B,40,T"]).passed
    files["Conv1d 'same' + GRU 64 chunk (10 frames)"] = (path, {"chunk": 10})
    return files


def cell(r) -> str:
    if not r.ran:
        return "not installed" if r.install else "fails: " + r.reason.replace("|", "/")[:160]
    dev = "ref." if r.name == "ort" else "0" if r.max_deviation == 0 else f"{r.max_deviation:.1e}"
    return f"{dev} / {r.p50_us:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="write the model files here (else a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        files = make(folder)
        print("| model | " + " | ".join(RUNTIMES) + " |")
        print("| --- |" + " --- |" * len(RUNTIMES))
        labels = {}
        for name, (path, options) in files.items():
            report = edgernn.check(path, frames=args.frames, rounds=args.rounds, **options)
            labels.update({r.name: r.label for r in report.runtimes if r.ran})
            print(f"| {name} | " + " | ".join(cell(report.runtime(n)) for n in RUNTIMES) + " |", flush=True)
            for r in report.runtimes:
                if r.hint:
                    print(f"<!-- {name}: {r.name}: {r.hint} -->", file=sys.stderr)
        print("\n" + "; ".join(f"{k}: {v}" for k, v in labels.items()), file=sys.stderr)


if __name__ == "__main__":
    main()
