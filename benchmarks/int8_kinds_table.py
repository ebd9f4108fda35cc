"""int8 over model kinds as users write them: size (graph and weights), latency, error, agreement.

    .venv/bin/python benchmarks/int8_kinds_table.py [--frames 2000] [-o docs/quantization.md]

Each model is exported by edgernn (or built as a silero-like file, tests/fixtures/silero_like.py)
and quantized with ``edgernn.quantize`` (dynamic int8) at its defaults: weights folded first, debug
metadata dropped, weights under ``--min-size`` kept float. The accuracy check's figures are the
report's: max abs error and decision agreement against the float file over ``--frames`` frames of
synthetic AR(1) data (silero-like: 400 audio-like windows x 2 streams), and the latency ratio is
p50(int8 call) / p50(float call), the two timed alternately in the check on one thread.

With ``-o FILE`` the table replaces only the text between the markers ``<!-- int8-kinds:begin -->``
and ``<!-- int8-kinds:end -->`` in FILE (appended with them when absent); the rest stays.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "tests"))  # fixtures.silero_like (after the package: tests/edgernn is no package to import)

from edgernn.converters.export import export  # noqa: E402
from edgernn.converters.quantize import quantize  # noqa: E402

BEGIN, END = "<!-- int8-kinds:begin -->", "<!-- int8-kinds:end -->"


class ChunkedCell(nn.Module):
    """One matrix per input, chunked (and transposed) in forward: a GRU-like cell of 256."""

    def __init__(self, n_in: int = 64, hidden: int = 256) -> None:
        super().__init__()
        self.hidden = hidden
        self.w = nn.Parameter(torch.randn(n_in, 3 * hidden) * 0.1)
        self.u = nn.Parameter(torch.randn(hidden, 3 * hidden) * 0.05)
        self.head = nn.Linear(hidden, 4)

    def forward(self, x, state=None):
        if state is None:
            state = x.new_zeros(x.shape[0], self.hidden)
        wz, wr, wn = self.w.chunk(3, dim=1)
        uz, ur, un = self.u.t().chunk(3, dim=0)
        z = torch.sigmoid(x @ wz + state @ uz.t())
        r = torch.sigmoid(x @ wr + state @ ur.t())
        n = torch.tanh(x @ wn + r * (state @ un.t()))
        h = (1 - z) * n + z * state
        return self.head(h), h


class Crnn(nn.Module):
    """Conv1d frontend over time (40 bands -> 64, k3, causal) + GRU(64, 128) + head of 12."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(40, 64, 3)
        self.rnn = nn.GRU(64, 128, batch_first=True)
        self.head = nn.Linear(128, 12)

    def forward(self, x):  # x [batch, 40, time]
        y = torch.relu(self.conv(nn.functional.pad(x, (2, 0))))
        y, _ = self.rnn(y.transpose(1, 2))
        return self.head(y)


class SmallGru(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


class Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(64, 128, num_layers=3, batch_first=True, bidirectional=True)
        self.head = nn.Linear(256, 8)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


def kib(n: int) -> str:
    return f"{n / 1024:.1f}"


def rows(frames: int, work: Path) -> list[dict]:
    torch.manual_seed(0)
    cases = []
    for name, model, kwargs in (
            ("cell chunking its weights in forward (GRU-like, 256)", ChunkedCell(), {"mode": "step",
                                                                                   "inputs": ["x:float32:B,64"]}),
            ("conv-frontend CRNN (Conv1d 40->64, GRU 128)", Crnn(), {"mode": "chunk"}),
            ("small GRU of 32 units (3 features)", SmallGru(), {"mode": "chunk"}),
            ("sequence-mode stack (3 x BiLSTM 128)", Stack(), {"mode": "sequence"})):
        path = work / f"{len(cases)}.onnx"
        export(model.eval(), path, mode=kwargs["mode"], inputs=kwargs.get("inputs", ()))
        cases.append((name, path, {"steps": frames}))
    from fixtures.silero_like import audio_windows, build

    (work / "silero").mkdir()
    silero = build(work / "silero")
    np.save(work / "windows.npy", audio_windows(400, 2, seed=1))
    cases.append(("silero-like file (If on sr; --fix sr=16000)", silero["if_sr"],
                  {"fix": {"sr": "16000"}, "data": work / "windows.npy"}))
    out = []
    for name, path, kwargs in cases:
        r = quantize(path, work / f"{path.stem}.int8.onnx", **kwargs)
        acc, s = r.accuracy, r.sizes
        out.append({"kind": name, "float": f"{kib(s.graph_before)} + {kib(s.weights_before)}",
                    "int8": f"{kib(s.graph_after)} + {kib(s.weights_after)}", "ratio": f"{r.size_ratio:.2f}x",
                    "latency": f"{acc.latency_ratio:.2f}x", "error": f"{acc.max_error:.3g}",
                    "agreement": "-" if acc.min_agreement is None else f"{acc.min_agreement:.2%}",
                    "nodes": f"{len(r.quantized)} int8 / {len(r.kept_float)} float"})
    return out


def markdown(table: list[dict], frames: int) -> str:
    lines = [BEGIN, "", "## int8 over model kinds (dynamic, defaults)", "",
             f"`benchmarks/int8_kinds_table.py --frames {frames}` (random weights, seed 0, one CPU thread). Sizes in "
             "KiB as graph + weights (weights: initializers and Constant values); latency: p50 int8 call / p50 float "
             "call in the accuracy check; error and agreement against the float file.", "",
             "| model | float KiB | int8 KiB | size | latency | max error | agreement | nodes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in table:
        lines.append(f"| {r['kind']} | {r['float']} | {r['int8']} | {r['ratio']} | {r['latency']} | {r['error']} | "
                     f"{r['agreement']} | {r['nodes']} |")
    return "\n".join([*lines, "", END])


def update(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("-o", "--output", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        section = markdown(rows(args.frames, Path(tmp)), args.frames)
    print(section)
    if args.output:
        update(args.output, section)


if __name__ == "__main__":
    main()
