"""Dynamic int8 for convolutions: three routes measured side by side, size, latency and accuracy.

    .venv/bin/python benchmarks/conv_int8.py [--calls 3000] [--json FILE]

Models:

- ``conv+gru``: Conv1d(40 -> 128, k5, causal) + ReLU, Conv1d(128 -> 128, k5, dilation 2, causal) +
  ReLU, GRU(128 -> 64), Linear(64 -> 4), random weights (seed 0), exported in chunk mode (both
  convolutions carry a context cache as state), timed 16 frames per call and 1 frame per call;
- ``silero-like``: tests/fixtures/silero_like.py's ``if_sr`` file (silero-vad's If-on-sr layout)
  quantized with ``--fix sr=16000`` on its audio-like windows, one 576-sample window per call.

Routes, each applied to the same dynamic int8 file (MatMul, Gemm, GRU and LSTM already int8):

- ``convs float``: the convolutions left float32 (what ``quantize --method dynamic`` did before);
- ``ConvInteger``: onnxruntime's ``quantize_dynamic`` with ``Conv`` in its op types (int8 weights,
  activations quantized to uint8 every call by DynamicQuantizeLinear);
- ``DequantizeLinear``: int8 weights, one scale per output channel, behind a DequantizeLinear;
- ``weight-only (edgernn)``: what ``quantize --method dynamic`` does now (converters/quantize/
  convolution.py): the same int8 weights behind Cast and Mul, which onnxruntime folds into a float
  weight when the session loads.

Sizes compare with the fp32 file (the specialised graph for silero-like). Latency: one thread
(``edgernn.open(path, threads=1)``), batch 1, every file fed the same call in turn (the order
rotating), ``--calls`` calls after 50 of warm-up; p50 per frame and the median over calls of the
paired ratio to the fp32 file's time on that call. Errors: ``edgernn.converters.quantize.accuracy.
compare`` of each file against the fp32 file (2,000 synthetic frames; the 400 windows x 2 streams
of silero-like), the largest output error, the largest final-state error, and decision agreement.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

import edgernn
from edgernn.converters.quantize import quantize
from edgernn.converters.quantize.accuracy import compare, load_streams, synthetic_streams
from edgernn.converters.specialize import open_fixed

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "tests"))  # after edgernn's imports: tests/edgernn would shadow it as a namespace
from fixtures.silero_like import audio_windows, build  # noqa: E402


class ConvGRU(nn.Module):
    """x [batch, 40, time] -> two causal convolutions -> GRU -> 4 logits per frame."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(40, 128, 5, padding=4)
        self.conv2 = nn.Conv1d(128, 128, 5, padding=8, dilation=2)
        self.gru = nn.GRU(128, 64, batch_first=True)
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        t = x.shape[-1]
        h = torch.relu(self.conv1(x)[..., :t])
        h = torch.relu(self.conv2(h)[..., :t])
        y, _ = self.gru(h.transpose(1, 2))
        return self.head(y)


def conv_names(path: Path) -> list[str]:
    return [n.name for n in onnx.load(path).graph.node if n.op_type == "Conv"]


def conv_integer(src: Path, dst: Path) -> None:
    """onnxruntime's dynamic quantizer on the convolutions alone: ConvInteger."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)
    quantize_dynamic(src, dst, op_types_to_quantize=["Conv"], weight_type=QuantType.QInt8)


def dequantize_linear(src: Path, dst: Path) -> None:
    """int8 weights per output channel behind DequantizeLinear (axis 0)."""
    m = onnx.load(src)
    inits = {t.name: t for t in m.graph.initializer}
    added = []
    for n in m.graph.node:
        if n.op_type != "Conv" or n.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        amax = np.abs(w.reshape(w.shape[0], -1)).max(1)
        scale = np.where(amax > 0, amax / 127, 1).astype(np.float32)
        q = np.clip(np.rint(w / scale.reshape(-1, *[1] * (w.ndim - 1))), -127, 127).astype(np.int8)
        base = n.input[1]
        m.graph.initializer.extend([numpy_helper.from_array(q, base + ".q"), numpy_helper.from_array(scale, base + ".s"),
                                    numpy_helper.from_array(np.zeros(w.shape[0], np.int8), base + ".z")])
        added.append(helper.make_node("DequantizeLinear", [base + ".q", base + ".s", base + ".z"], [base + ".dq"],
                                      axis=0))
        m.graph.initializer.remove(inits[base])
        n.input[1] = base + ".dq"
    for k, node in enumerate(added):
        m.graph.node.insert(k, node)
    onnx.save(m, dst)


def routes(fp32: Path, work: Path, stem: str, **options) -> dict[str, Path]:
    """The four files of one model (see the module docstring)."""
    out = {}
    floats = work / f"{stem}.convs_float.onnx"
    convs = conv_names(options.pop("specialised", fp32))
    quantize(fp32, floats, method="dynamic", exclude=convs, **options)
    out["convs float"] = floats
    conv_integer(floats, work / f"{stem}.convinteger.onnx")
    out["ConvInteger"] = work / f"{stem}.convinteger.onnx"
    dequantize_linear(floats, work / f"{stem}.dq.onnx")
    out["DequantizeLinear"] = work / f"{stem}.dq.onnx"
    quantize(fp32, work / f"{stem}.int8.onnx", method="dynamic", **options)
    out["weight-only (edgernn)"] = work / f"{stem}.int8.onnx"
    return out


def timed(files: dict[str, Path], calls: list[dict[str, np.ndarray]], frames: int, rounds: int) -> dict[str, dict]:
    """p50 µs per frame and the median paired ratio to ``fp32`` (every file fed each call in turn)."""
    sessions = {k: edgernn.open(p, threads=1) for k, p in files.items()}
    names = list(sessions)
    for s in sessions.values():
        s.reset()
    lat: dict[str, list[float]] = {k: [] for k in names}
    for i in range(rounds + 50):
        call = calls[i % len(calls)]
        k0 = i % len(names)
        for name in names[k0:] + names[:k0]:
            t0 = time.perf_counter_ns()
            sessions[name].step(**call)
            if i >= 50:
                lat[name].append((time.perf_counter_ns() - t0) / 1000 / frames)
    base = np.array(lat["fp32"])
    return {k: {"us": float(np.median(v)), "ratio": float(np.median(np.array(v) / base))} for k, v in lat.items()}


def accuracy(fp32: Path, files: dict[str, Path], streams, chunk: int | None) -> dict[str, dict]:
    out = {}
    for name, path in files.items():
        acc = compare(str(fp32), str(path), streams, chunk=chunk, data_source="benchmark")
        agree = [o.agreement for o in acc.outputs if o.agreement is not None]
        out[name] = {"max_error": acc.max_error, "state_error": max(acc.state_errors.values(), default=0.0),
                     "agreement": min(agree) if agree else None}
    return out


def measure(calls_n: int, work: Path) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    fp32 = work / "conv_gru.onnx"
    edgernn.export(ConvGRU().eval(), fp32, mode="chunk")
    files = {"fp32": fp32, **routes(fp32, work, "conv_gru", steps=2000)}
    base = edgernn.open(fp32)
    stream = synthetic_streams(base.contract, 2000, seed=3)[0]["x"]
    acc = accuracy(fp32, {k: v for k, v in files.items() if k != "fp32"}, synthetic_streams(base.contract, 2000),
                   chunk=16)
    for chunk in (16, 1):
        calls = [{"x": np.ascontiguousarray(stream[..., i:i + chunk])} for i in range(0, 1600, chunk)]
        lat = timed(files, calls, chunk, calls_n)
        for name, path in files.items():
            rows.append({"model": "conv+gru", "call": f"{chunk} frames", "route": name,
                         "kib": path.stat().st_size / 1024, "size_ratio": path.stat().st_size / fp32.stat().st_size,
                         **lat[name], **acc.get(name, {})})

    (work / "silero_like").mkdir()
    paths = build(work / "silero_like")
    windows = work / "windows.npy"
    np.save(windows, audio_windows(400, 2, seed=1))
    spec_mf, _ = open_fixed(paths["if_sr"], {"sr": 16000})
    specialised = work / "silero_16k.onnx"  # the graph the int8 files are made from, its states named as theirs
    onnx.save(spec_mf.stamped() if spec_mf.contract_from != "metadata" else spec_mf.proto, specialised)
    files = {"fp32": specialised, **routes(paths["if_sr"], work, "silero", fix={"sr": 16000}, data=windows,
                                          specialised=specialised)}
    streams = load_streams(windows, edgernn.open(files["weight-only (edgernn)"]).contract, what="data")
    acc = accuracy(specialised, {k: v for k, v in files.items() if k != "fp32"}, streams, chunk=None)
    data = np.load(windows)
    calls = [{"input": np.ascontiguousarray(data[i, :1])} for i in range(len(data))]
    lat = timed(files, calls, 1, calls_n)
    for name, path in files.items():
        rows.append({"model": "silero-like", "call": "1 window", "route": name, "kib": path.stat().st_size / 1024,
                     "size_ratio": path.stat().st_size / specialised.stat().st_size, **lat[name], **acc.get(name, {})})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | call | route | size | size vs fp32 | latency | vs fp32 (paired) | max error | "
             "final-state error | decisions agree |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        agree = "-" if r.get("agreement") is None else f"{r['agreement']:.2%}"
        err = "-" if "max_error" not in r else f"{r['max_error']:.3g}"
        state = "-" if "state_error" not in r else f"{r['state_error']:.3g}"
        lines.append(f"| {r['model']} | {r['call']} | {r['route']} | {r['kib']:.0f} KiB | {r['size_ratio']:.2f}x | "
                     f"{r['us']:.1f} us | {r['ratio']:.2f}x | {err} | {state} | {agree} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000, help="timed calls per file")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args.calls, Path(tmp))
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
