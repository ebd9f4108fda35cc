"""`edgernn bench`: the report against PyTorch and a plain loop, the plot, and bad input answered
with one sentence and a non-zero exit. No timing is asserted (speed is measured by benchmarks)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import edgernn
from conftest import invoke





@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    gru = nn.GRU(8, 16, num_layers=2, batch_first=True).eval()
    edgernn.save(gru, folder / "gru.pt")
    edgernn.export(gru, folder / "gru_step.onnx", mode="step")
    edgernn.export(gru, folder / "gru.onnx", mode="chunk")
    torch.manual_seed(1)
    other = nn.GRU(8, 16, num_layers=2, batch_first=True).eval()  # same shapes, other weights
    edgernn.save(other, folder / "other.pt")
    return folder


FAST = ("--calls", "40", "--warmup", "5", "--rounds", "2")


def test_bench_json_against_pytorch_with_a_plot(files):
    png = files / "lat.png"
    result = invoke("bench", files / "gru.onnx", "--against", files / "gru.pt", "--chunk", "4", "--batch", "2",
                    "--plot", png, "--json", *FAST)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    names = [r["name"] for r in report["runtimes"]]
    assert names == ["edgernn", "onnxruntime loop", "pytorch eager"]
    by = {r["name"]: r for r in report["runtimes"]}
    for r in report["runtimes"]:
        assert r["calls"] == 40 and r["frames_per_call"] == 8
        assert 0 < r["p50_us"] <= r["p90_us"] <= r["p99_us"] <= r["max_us"]
        assert r["per_frame_p50_us"] == pytest.approx(r["p50_us"] / 4)
    for other in ("onnxruntime loop", "pytorch eager"):
        assert report["ratios"][f"edgernn / {other}"] == pytest.approx(by["edgernn"]["p50_us"] / by[other]["p50_us"])
    assert report["deviations"]["pytorch eager"] < 1e-5  # the same numbers before any timing
    assert report["plot"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_table(files):
    result = invoke("bench", files / "gru_step.onnx", *FAST)
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "edgernn bench" in text and "p50 us" in text and "memory: process high-water mark" in text
    assert "1.00x" in text or "x │" in text  # the ratio column


@pytest.mark.parametrize("args, message", [
    (("--provider", "warp"), "error: provider 'warp' is unknown; the installed ones are "),
    (("--chunk", "4"), "was exported in step mode and takes one frame per call"),
    (("--against", "{other}"), "gru_step.onnx computes: outputs differ by up to"),
    (("--against", "{missing}"), "does not exist"),
])
def test_bench_bad_input(files, args, message):
    args = [a.format(other=files / "other.pt", missing=files / "nope.pt") for a in args]
    png = files / "never.png"
    result = invoke("bench", files / "gru_step.onnx", *args, "--plot", png, *FAST)
    assert result.exit_code == 1
    text = " ".join(result.stderr.split())
    assert message in text, text
    assert "Traceback" not in result.stderr and not png.exists()



def _foreign_memory_file(path):
    """A stateful ONNX file from another exporter whose state names no rule pairs: mem -> mem_next,
    one frame per call (mem_next = tanh(x W + mem), y = 2 mem_next)."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32), "w")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "mem"], ["pre"]),
             helper.make_node("Tanh", ["pre"], ["mem_next"]), helper.make_node("Mul", ["mem_next", "two"], ["y"])]
    vi = helper.make_tensor_value_info
    inputs = [vi("x", TensorProto.FLOAT, ["batch", 4]), vi("mem", TensorProto.FLOAT, ["batch", 6])]
    outputs = [vi("y", TensorProto.FLOAT, ["batch", 6]), vi("mem_next", TensorProto.FLOAT, ["batch", 6])]
    graph = helper.make_graph(nodes, "memory", inputs, outputs, [w, two])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_bench_takes_the_state_pairs_of_a_foreign_file(tmp_path):
    path = _foreign_memory_file(tmp_path / "memory.onnx")
    result = invoke("bench", path, *FAST)
    assert result.exit_code == 1 and "--state-pair" in result.stderr
    result = invoke("bench", path, "--state-pair", "mem=mem_next", "--json", *FAST)
    assert result.exit_code == 0, result.stderr
    assert [r["calls"] for r in json.loads(result.stdout)["runtimes"]] == [40, 40]
