"""`edgernn check` / edgernn.check(): one file, the same frames, every runtime, side by side.

Each model kind (GRU, LSTM, Elman RNN, an int8 file from edgernn's quantizer, an NTM with stored
start values, a 'same'-padded convolution before a GRU in chunk mode) streams through onnxruntime,
OpenVINO and tract, carrying its state as each runtime's users carry it, and must agree with
onnxruntime within 1e-4 (int8: reported, and here far below one quantization step); two run under
Node and one in Chromium through the JavaScript runtime; one is compared with PyTorch. OpenVINO and
tract are optional extras (`pip install 'edgernn[openvino,tract]'`, which setup.sh installs): their
tests skip, saying so, where they are missing, and the check then lists them with the install
command (tested here by hiding the packages).
"""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import edgernn
from conftest import invoke
from edgernn.architectures import NTM
from edgernn.converters.quantize import quantize
from edgernn.runtimes.check import CheckError, check, parse_runtimes

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-4
INT8_TOL = 1e-3  # int8: runtimes may round a quantized activation the other way; one step is far more than this
FRAMES = 24


def _openvino():
    return pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'edgernn[openvino]')")


def _tract():
    return pytest.importorskip("tract", reason="tract is not installed (pip install 'edgernn[tract]')")


class _TimeMajorGRU(nn.Module):
    """[batch, channels, time] -> a GRU over [time, batch, channels]."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 6)

    def forward(self, x):
        return self.gru(x.permute(2, 0, 1))[0]


class _Models(dict):
    """The test files, each made on first use (under pytest-xdist each worker makes only the ones
    its tests read)."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def __missing__(self, kind: str) -> Path:
        torch.manual_seed(0)
        path = self.folder / f"{kind}.onnx"
        if kind == "gru":
            gru = nn.GRU(4, 6, 2).eval()
            edgernn.save(gru, self.folder / "gru.pt")
            assert edgernn.export(gru, path, mode="step").passed
        elif kind == "lstm":
            assert edgernn.export(nn.LSTM(4, 6).eval(), path, mode="step").passed
        elif kind == "rnn":
            assert edgernn.export(nn.RNN(4, 6, batch_first=True).eval(), path, mode="chunk").passed
        elif kind == "ntm":  # memory and weightings start from values stored in the file
            ntm = NTM(3, 2, controller_size=8, memory_size=8, memory_width=4).eval()
            assert edgernn.export(ntm, path, mode="step").passed
        elif kind == "conv":  # a 'same' Conv1d (lookahead 1) before a GRU: context cache, int64 warm-up
            conv = nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), _TimeMajorGRU()).eval()  # counter, masked Scan in an If
            assert edgernn.export(conv, path, mode="chunk", inputs=["input:float32:B,4,T"]).passed
        elif kind in ("gru32", "lstm32"):  # for int8: weights of 1024 elements and more (smaller ones stay float)
            layer = nn.GRU(32, 32) if kind == "gru32" else nn.LSTM(32, 32)
            assert edgernn.export(layer.eval(), path, mode="step").passed
        elif kind == "int8":  # MatMulInteger cells (standard ONNX ops)
            quantize(self["gru32"], path, method="dynamic", steps=50)
        elif kind == "lstm_int8":  # onnxruntime's contrib op DynamicQuantizeLSTM
            quantize(self["lstm32"], path, method="dynamic", steps=50)
        else:
            raise KeyError(kind)
        self[kind] = path
        return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> _Models:
    return _Models(tmp_path_factory.mktemp("check"))


KINDS = {"gru": {}, "lstm": {}, "rnn": {"chunk": 3}, "int8": {}, "ntm": {}, "conv": {"chunk": 2}}


@pytest.mark.parametrize("kind", list(KINDS))
def test_openvino_and_tract_give_onnxruntimes_numbers(models, kind):
    _openvino()
    _tract()
    report = check(models[kind], runtimes="openvino,tract", frames=FRAMES, rounds=1, **KINDS[kind])
    assert report.ran == ["ort", "openvino", "tract"], [(r.name, r.reason) for r in report.runtimes]
    for name in ("openvino", "tract"):
        r = report.runtime(name)
        assert r.max_deviation is not None and r.max_deviation < (INT8_TOL if kind == "int8" else TOL), (name, r)
        assert r.status == ("reported" if kind == "int8" else "ok"), (name, r.status)
        assert r.timed_calls == report.calls and r.p50_us > 0 and r.p99_us >= r.p50_us
    assert report.passed and report.reduced_precision == (kind == "int8")
    assert report.calls == FRAMES // KINDS[kind].get("chunk", 1)


def test_tract_streams_chunks_behind_a_lookahead(models):
    """The conv file in tract needs three things: the Scan output its body also reads has its own Identity
    (the export's optimize pass), `time` bound with SetSymbols, and the int64 warm-up counter tract
    computes from shapes (TDim) converted to int64."""
    _tract()
    report = check(models["conv"], runtimes="tract", frames=12, chunk=3, rounds=1)
    r = report.runtime("tract")
    assert r.status == "ok", r.reason
    assert any("SetSymbols(batch=1, time=3)" in n for n in r.notes)


def test_every_scan_output_the_body_reads_has_its_own_identity(models):
    """converters/optimize.py scan_outputs_apart: what tract needs, checked on the graph itself."""
    graphs, scans = [onnx.load(models["conv"]).graph], 0
    while graphs:
        g = graphs.pop()
        for node in g.node:
            subs = [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
            graphs.extend(subs)
            if node.op_type == "Scan":
                scans += 1
                body = subs[0]
                states = len(node.input) - next(a.i for a in node.attribute if a.name == "num_scan_inputs")
                read = {i for n in body.node for i in n.input}
                assert not read & {o.name for o in body.output[states:]}
    assert scans == 1  # the masked Scan of the warm-up branch


def test_tract_reports_a_missing_contrib_op_and_what_avoids_it(models, tmp_path):
    _tract()
    report = check(models["lstm_int8"], runtimes="tract", frames=8, rounds=1)
    r = report.runtime("tract")
    assert r.status == "failed" and "DynamicQuantizeLSTM" in r.reason and "\n" not in r.reason
    assert "edgernn quantize --method static" in r.hint
    static = tmp_path / "lstm.qdq.onnx"  # the hint works: QDQ int8 runs in tract
    quantize(models["lstm32"], static, method="static", steps=50)
    assert check(static, runtimes="tract", frames=8, rounds=1).runtime("tract").status == "reported"


def test_against_pytorch(models):
    _tract()
    report = check(models["gru"], runtimes="tract", frames=FRAMES, rounds=1, against=models.folder / "gru.pt")
    assert report.ran == ["ort", "tract", "pytorch"]
    for r in report.runtimes:
        assert r.pytorch_deviation is not None and r.pytorch_deviation < TOL, r
    assert report.runtime("pytorch").status == "ok" and report.runtime("pytorch").p50_us > 0
    assert any("nn.GRU directly" in n for n in report.runtime("pytorch").notes)


def test_node_runs_the_javascript_runtime(models, web_tools):
    for kind in ("conv", "ntm"):  # int64 warm-up state and a delay; stored start values
        report = check(models[kind], runtimes="node", frames=12, rounds=1, **({"chunk": 2} if kind == "conv" else {}))
        r = report.runtime("node")
        assert r.status == "ok", r.reason
        assert r.max_deviation < TOL and "onnxruntime-node" in r.label and r.timed_calls == report.calls


def test_web_runs_in_chromium(models, chromium):
    report = check(models["gru"], runtimes="web", frames=10, rounds=1)
    r = report.runtime("web")
    assert r.status == "ok", r.reason
    assert r.max_deviation < TOL and "(wasm) in Chromium" in r.label


def test_data_file_is_streamed(models, tmp_path):
    x = np.random.default_rng(3).standard_normal((2, 9, 4)).astype(np.float32)  # batch-first: 2 streams, 9 frames
    np.save(tmp_path / "x.npy", x)
    report = check(models["rnn"], runtimes="ort", data=tmp_path / "x.npy", chunk=4, rounds=1)
    assert (report.batch, report.frames, report.calls) == (2, 8, 2)  # whole calls of 4 frames
    assert str(tmp_path / "x.npy") in report.data_source
    with pytest.raises(edgernn.errors.EdgernnError, match="axis 2 must be 4"):
        np.save(tmp_path / "bad.npy", x[..., :3])
        check(models["rnn"], runtimes="ort", data=tmp_path / "bad.npy")


def test_missing_runtimes_are_listed_with_their_install_command(models, monkeypatch):
    real_import = builtins.__import__

    def no_extras(name, *args, **kwargs):
        if name.split(".")[0] in ("openvino", "tract"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_extras)
    monkeypatch.setattr("edgernn.runtimes.check_runners.shutil.which", lambda name: None)
    report = check(models["gru"], frames=6, rounds=1)
    assert report.ran == ["ort"]
    want = {"openvino": "pip install openvino", "tract": "pip install tract", "node": "npm ci", "web": "npm ci"}
    for name, command in want.items():
        r = report.runtime(name)
        assert r.status == "not installed" and command in r.install, (name, r)
    assert report.passed


def test_settings_are_checked():
    assert parse_runtimes("tract, NODE") == ["ort", "tract", "node"]
    with pytest.raises(CheckError, match="unknown runtime 'tflite'; choose from ort, openvino, tract, node, web"):
        parse_runtimes("ort,tflite")


def test_cli(models):
    ok = invoke("check", models["gru"], "--runtimes", "ort", "--frames", "6", "--rounds", "1", "--json")
    assert ok.exit_code == 0, ok.output
    got = json.loads(ok.stdout)
    assert got["passed"] and [r["name"] for r in got["runtimes"]] == ["ort"] and got["calls"] == 6
    bad = invoke("check", models["gru"], "--runtimes", "ort,tflite")
    assert bad.exit_code == 2 and "unknown runtime 'tflite'" in bad.stderr
    missing = invoke("check", models["gru"].with_name("nothing.onnx"), "--runtimes", "ort")
    assert missing.exit_code == 1 and missing.stderr.startswith("error: ") and "does not exist" in missing.stderr
    step = invoke("check", models["gru"], "--runtimes", "ort", "--chunk", "2")
    assert step.exit_code == 1 and "step mode" in step.stderr


def test_cli_exits_1_when_a_runtime_differs(models):
    _tract()
    result = invoke("check", models["gru"], "--runtimes", "tract", "--frames", "8", "--rounds", "1",
                    "--tolerance", "0")
    assert result.exit_code == 1, result.output
    assert "differs" in result.stdout and "error: tract differs from onnxruntime by up to" in result.stderr


def test_the_cli_lists_the_librarys_runtimes():
    from edgernn._cli_options import CHECK_RUNTIMES
    from edgernn.runtimes.check import RUNTIMES

    assert CHECK_RUNTIMES == RUNTIMES
