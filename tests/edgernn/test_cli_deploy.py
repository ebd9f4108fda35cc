"""`edgernn pack` and `edgernn serve` from the command line: files written and checked, bad input
answered with one sentence, a non-zero exit and nothing written."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

import edgernn
from edgernn.runtimes import StreamingSession
from conftest import invoke





class CellModel(nn.Module):
    """A GRU cell with its state as an argument: the state is [batch, H], batch-major."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(6, 5)
        self.head = nn.Linear(5, 2)

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, 5)

    def forward(self, x, h):
        h = self.cell(x, h)
        return self.head(h), h


def test_pack_writes_an_ort_file_that_streams_like_the_onnx(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "gru.onnx"
    edgernn.export(nn.GRU(8, 16, 2, batch_first=True).eval(), path)
    result = invoke("pack", path, "-o", tmp_path / "pkg", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    ort_file = tmp_path / "pkg" / "gru.ort"
    assert report["ort_path"] == str(ort_file) and ort_file.is_file()
    config = (tmp_path / "pkg" / "gru.required_operators.config").read_text()
    assert "GRU" in config and "gru.required_operators.config" in (tmp_path / "pkg" / "README.md").read_text()
    x = np.random.default_rng(0).standard_normal((2, 10, 8)).astype(np.float32)
    want = StreamingSession(path).stream(x, chunk=3)["y"]
    got = StreamingSession(ort_file).stream(x, chunk=3)["y"]
    np.testing.assert_allclose(got, want, atol=1e-5)
    table = invoke("pack", path, "-o", tmp_path / "pkg2")
    assert table.exit_code == 0 and "parity with the .onnx: max abs difference 0" in table.stdout


def test_pack_bad_target_is_a_usage_error(tmp_path):
    path = tmp_path / "gru.onnx"
    edgernn.export(nn.GRU(4, 3).eval(), path)
    result = invoke("pack", path, "--target", "tflite", "-o", tmp_path / "out")
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and "'ort'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_serve_writes_a_triton_repository(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "cell.onnx"
    edgernn.export(CellModel().eval(), path, mode="step")
    result = invoke("serve", path, "--triton", tmp_path / "repo", "--max-batch-size", "8", "--model-version", "3",
                    "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["max_batch_size"] == 8 and report["version"] == 3
    assert [(s["input_name"], s["output_name"], s["dims"]) for s in report["states"]] == \
        [("state_in.h", "state_out.h", [5])]
    model = tmp_path / "repo" / "cell" / "3" / "model.onnx"
    config = (tmp_path / "repo" / "cell" / "config.pbtxt").read_text()
    assert "max_batch_size: 8" in config and 'input_name: "state_in.h"' in config
    names = {i.name for i in ort.InferenceSession(str(model)).get_inputs()}
    assert {"x", "state_in.h", "START", "END", "READY", "CORRID"} <= names


def test_serve_refuses_a_state_without_a_leading_batch_axis(tmp_path):
    path = tmp_path / "gru.onnx"
    edgernn.export(nn.GRU(4, 3, batch_first=True).eval(), path)  # state [layers, batch, H]
    result = invoke("serve", path, "--triton", tmp_path / "repo")
    assert result.exit_code == 1
    assert "export it with --state-layout batch-major" in " ".join(result.stderr.split())
    assert not (tmp_path / "repo" / "gru").exists()


def test_serve_takes_the_state_pairs_of_a_foreign_file(tmp_path):
    """A plain torch.onnx export whose state names no rule pairs (h -> h_next): named with --state-pair."""
    path = tmp_path / "cell.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(CellModel().eval(), (torch.randn(2, 6), torch.zeros(2, 5)), str(path),
                          input_names=["x", "h"], output_names=["y", "h_next"], dynamo=False,
                          dynamic_axes={"x": {0: "batch"}, "h": {0: "batch"}})
    result = invoke("serve", path, "--triton", tmp_path / "repo")
    assert result.exit_code == 1 and "--state-pair" in result.stderr
    assert not (tmp_path / "repo" / "cell").exists()
    result = invoke("serve", path, "--triton", tmp_path / "repo", "--state-pair", "h=h_next", "--json")
    assert result.exit_code == 0, result.stderr
    assert [(s["input_name"], s["output_name"]) for s in json.loads(result.stdout)["states"]] == \
        [("state_in.h", "state_out.h")]
