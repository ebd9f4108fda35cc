"""edgernn.runtimes.bench: report fields, reference checks, errors and the plot. No timing is asserted."""

from __future__ import annotations

import json
import math
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import edgernn
from edgernn.errors import EdgernnError
from edgernn.runtimes.bench import EAGER, EDGERNN, ORT_LOOP, PLAIN, BenchError, MismatchError, bench, plot

QUICK = {"steps": 40, "warmup": 3, "rounds": 2}


@pytest.fixture(scope="module")
def gru(tmp_path_factory):
    """GRU(8, 16, 1), batch-first: its edgernn checkpoint, chunk- and step-mode exports."""
    d = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    layer = nn.GRU(8, 16, 1, batch_first=True).eval()
    pt = d / "gru.pt"
    edgernn.save(layer, pt)
    edgernn.export(layer, d / "chunk.onnx", mode="chunk")
    edgernn.export(layer, d / "step.onnx", mode="step")
    return {"dir": d, "layer": layer, "pt": pt, "chunk": d / "chunk.onnx", "step": d / "step.onnx"}


@pytest.fixture(scope="module")
def report(gru):
    calls = []
    r = bench(gru["chunk"], against=gru["pt"], chunk=4, batch=2, progress=calls.append, **QUICK)
    r.progress_calls = calls
    return r


def test_report_fields_are_consistent(report, gru):
    assert [r.name for r in report.runtimes] == [EDGERNN, ORT_LOOP, EAGER]
    assert report.mode == "chunk" and report.chunk == 4 and report.batch == 2 and report.threads == 1
    assert report.provider == "CPUExecutionProvider"
    assert report.model_bytes == gru["chunk"].stat().st_size
    assert not report.reduced_precision
    for r in report.runtimes:
        assert r.calls == QUICK["steps"] == len(r.latencies_us)
        assert 0 < r.min_us <= r.p50_us <= r.p90_us <= r.p99_us <= r.max_us
        assert r.min_us <= r.mean_us <= r.max_us
        assert r.frames_per_call == 8
        assert r.per_frame_p50_us == pytest.approx(r.p50_us / 4)
        assert r.per_frame_p99_us == pytest.approx(r.p99_us / 4)
        assert r.fps == pytest.approx(8 / (float(np.mean(r.latencies_us)) * 1e-6), rel=1e-9)
        assert r.p50_us == pytest.approx(float(np.median(r.latencies_us)))
        assert r.peak_memory_mib is None or r.peak_memory_mib > 0
    by = {r.name: r for r in report.runtimes}
    assert report.ratios == {
        f"{EDGERNN} / {ORT_LOOP}": by[EDGERNN].p50_us / by[ORT_LOOP].p50_us,
        f"{EDGERNN} / {EAGER}": by[EDGERNN].p50_us / by[EAGER].p50_us,
    }
    assert report.deviations[EAGER] < 1e-5
    assert any("directly" in n for n in report.notes)
    assert report.progress_calls == ["warm-up", "round 1/2", "round 2/2"]


def test_json_is_plain_and_leaves_latencies_out(report):
    d = json.loads(json.dumps(report.to_json()))
    assert d["settings"] == {"steps": 40, "chunk": 4, "batch": 2, "threads": 1, "provider": "CPUExecutionProvider",
                             "warmup": 3, "rounds": 2}
    assert [r["name"] for r in d["runtimes"]] == [EDGERNN, ORT_LOOP, EAGER]
    assert all("latencies_us" not in r for r in d["runtimes"])
    assert d["ratios"] == report.ratios
    first = d["runtimes"][0]
    assert first["p50_us"] <= first["p90_us"] <= first["p99_us"]
    assert first["fps"] == pytest.approx(first["frames_per_call"] / (first["mean_us"] * 1e-6))
    with_lat = json.loads(json.dumps(report.to_json(latencies=True)))
    assert len(with_lat["runtimes"][1]["latencies_us"]) == 40


def test_step_file_without_reference(gru):
    r = bench(gru["step"], **QUICK)
    assert [x.name for x in r.runtimes] == [EDGERNN, ORT_LOOP]
    assert r.mode == "step" and r.deviations == {} and list(r.ratios) == [f"{EDGERNN} / {ORT_LOOP}"]


def test_chunk_above_one_on_a_step_file_raises(gru):
    with pytest.raises(BenchError, match="step mode.*chunk must be 1, not 16"):
        bench(gru["step"], chunk=16, **QUICK)


def test_unknown_provider_names_the_installed_ones(gru):
    import onnxruntime as ort

    with pytest.raises(EdgernnError, match="NoSuchExecutionProvider") as e:
        bench(gru["chunk"], provider="NoSuchExecutionProvider", **QUICK)
    for name in ort.get_available_providers():
        assert name in str(e.value)


@pytest.mark.parametrize("other, match", [
    (lambda: nn.GRU(8, 32, 1, batch_first=True), r"state 'gru.h' differs: \[1, 1, 16\] .* \[1, 1, 32\]"),
    (lambda: nn.GRU(6, 16, 1, batch_first=True), r"input 'x' differs: .*\[batch, time, 8\].*\[batch, time, 6\]"),
    (lambda: nn.LSTM(8, 16, 1, batch_first=True), r"the states differ: .* has gru.h but .* has lstm.c, lstm.h"),
    (lambda: nn.GRU(8, 16, 1), r"input 'x' differs: .*\[batch, time, 8\].*\[time, batch, 8\]"),
    (lambda: nn.GRU(8, 16, 1, batch_first=True), r"does not compute what .* differ by up to"),  # other weights
])
def test_against_a_different_model_raises(gru, tmp_path, other, match):
    torch.manual_seed(7)
    pt = tmp_path / "other.pt"
    edgernn.save(other().eval(), pt)
    with pytest.raises(MismatchError, match=match) as e:
        bench(gru["chunk"], against=pt, **QUICK)
    assert isinstance(e.value, EdgernnError) and "\n" not in str(e.value)


def test_bare_state_dict_takes_its_layout_from_the_file(gru, tmp_path):
    pt = tmp_path / "sd.pt"
    torch.save(gru["layer"].state_dict(), pt)
    r = bench(gru["step"], against=pt, **QUICK)
    assert r.deviations[EAGER] < 1e-5
    assert any("batch_first=True" in n for n in r.notes)


def test_load_options_need_a_model_file(gru):
    with pytest.raises(BenchError, match="class_path applies only to a PyTorch model file"):
        bench(gru["chunk"], class_path="pkg.mod:Net", **QUICK)


def _plain_export(layer: nn.GRU, path, inputs=("x", "h")) -> None:
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x, h):
            return self.layer(x, h)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Plain().eval(), (torch.zeros(2, 3, 8), torch.zeros(1, 2, 16)), str(path), dynamo=False,
                          input_names=list(inputs), output_names=["y", "h_out"],
                          dynamic_axes={inputs[0]: {0: "b", 1: "t"}, inputs[1]: {1: "b"}, "y": {0: "b", 1: "t"},
                                        "h_out": {1: "b"}})


def test_plain_export_baseline(gru):
    plain = gru["dir"] / "plain.onnx"
    _plain_export(gru["layer"], plain)
    r = bench(gru["chunk"], baseline_onnx=plain, chunk=3, **QUICK)
    assert [x.name for x in r.runtimes] == [EDGERNN, ORT_LOOP, PLAIN]
    assert r.deviations[PLAIN] < 1e-5
    assert r.ratios[f"{EDGERNN} / {PLAIN}"] == r.runtime(EDGERNN).p50_us / r.runtime(PLAIN).p50_us
    assert any("h -> gru.h" in n for n in r.notes)


def test_quantized_file_reports_deviation_without_raising(gru, tmp_path):
    from edgernn.converters.quantize import quantize

    q = tmp_path / "q.onnx"
    quantize(gru["chunk"], q, method="dynamic", min_size=0)  # a small GRU: int8 anyway
    r = bench(q, against=gru["pt"], **QUICK)
    assert r.reduced_precision
    assert 0 < r.deviations[EAGER] < 0.5
    assert any("reported, not checked" in n for n in r.notes)


def test_plot_writes_a_png(report, tmp_path):
    pytest.importorskip("matplotlib")
    out = plot(report, tmp_path / "lat.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_plot_without_matplotlib_says_how_to_install(report, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(BenchError, match="pip install matplotlib"):
        plot(report, tmp_path / "lat.png")


def test_bad_settings_raise(gru, tmp_path):
    with pytest.raises(BenchError, match="steps must be an integer of at least 1"):
        bench(gru["chunk"], steps=0)
    with pytest.raises(BenchError, match="does not exist"):
        bench(tmp_path / "missing.onnx")
    assert math.isfinite(bench(gru["chunk"], steps=1, warmup=0, rounds=5).runtime(EDGERNN).p50_us)


def test_batch_major_file_against_pytorch(tmp_path):
    """A file with batch-major states (export state_layout="batch-major") is checked against the
    PyTorch layer in the file's layout: same numbers, not a state-shape mismatch."""
    torch.manual_seed(4)
    lstm = nn.LSTM(5, 7, 2, batch_first=True).eval()
    edgernn.save(lstm, tmp_path / "lstm.pt")
    edgernn.export(lstm, tmp_path / "lstm_bm.onnx", state_layout="batch-major")
    r = bench(tmp_path / "lstm_bm.onnx", against=tmp_path / "lstm.pt", steps=20, warmup=2, rounds=2, chunk=3, batch=2)
    assert r.deviations[EAGER] < 1e-5
    assert any("batch-major" in n for n in r.notes)
