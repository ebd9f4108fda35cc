"""`edgernn quantize`: the happy path writes MODEL.int8.onnx and prints the report (or JSON whose
numbers are the library's), and bad input is answered with one `error:` sentence, a non-zero exit,
no traceback, the input file untouched and nothing left on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

import edgernn
from edgernn import _cli_print
from edgernn.converters.quantize import quantize
from conftest import invoke, listing

FRAMES = "500"  # frames of the accuracy check here (the 10,000 default is tested in test_quantize.py)






class Net(nn.Module):
    """A small wake-word-like classifier: Linear frontend, GRU of 40, 3 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.front, self.gru, self.head = nn.Linear(10, 16), nn.GRU(16, 40, batch_first=True), nn.Linear(40, 3)

    def forward(self, x):
        y, _ = self.gru(torch.relu(self.front(x)))
        return self.head(y)


@pytest.fixture(scope="module")
def float_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("cli_quantize") / "net.onnx"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert edgernn.export(Net().eval(), path).passed
    return path.read_bytes()


@pytest.fixture
def model(tmp_path, float_bytes, monkeypatch) -> Path:
    """``net.onnx`` in a fresh folder, which is also the working directory."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "net.onnx"
    path.write_bytes(float_bytes)
    return path


# ---------------------------------------------------------------- happy paths


def test_quantize_writes_next_to_the_input_and_prints_the_report(model, monkeypatch):
    monkeypatch.setattr(_cli_print.out, "width", 200)  # a wide terminal: table cells print unfolded
    result = invoke("quantize", "net.onnx", "--frames", FRAMES)
    assert result.exit_code == 0, result.stderr
    assert listing(model.parent) == ["net.int8.onnx", "net.onnx"]
    out = result.stdout
    assert "edgernn quantize (dynamic)" in out
    assert "accuracy against the float model: 1 stream(s) x 500 frames, 100 frame(s) per call, synthetic data" in out
    library = quantize(model, steps=int(FRAMES), write=False)
    for d in library.quantized:  # every node, its op and dtype, in the table
        assert d.name in out
    assert "gru.h (final state)" in out and "argmax" in out
    assert f"{library.accuracy.max_error:.3g}" in out and f"{library.accuracy.min_agreement:.2%}" in out
    size_line = next(line for line in out.splitlines() if line.startswith("size: "))
    assert f"({library.size_ratio:.2f}x) (graph " in size_line and " weights " in size_line
    assert "wrote net.int8.onnx" in out
    assert "Traceback" not in out + result.stderr
    written = onnx.load("net.int8.onnx")
    assert [v.name for v in written.graph.input] == ["x", "state_in.gru.h"]
    assert json.loads({p.key: p.value for p in written.metadata_props}["edgernn.quantization"])["method"] == "dynamic"


def test_quantize_json_has_the_librarys_numbers(model):
    result = invoke("quantize", "net.onnx", "--method", "static", "-o", "q.onnx", "--frames", FRAMES, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["method"] == "static" and report["path"] == "q.onnx" and report["passed"]
    assert report["size_before"] == model.stat().st_size and report["size_after"] == Path("q.onnx").stat().st_size
    assert report["size_ratio"] == pytest.approx(report["size_after"] / report["size_before"])
    library = quantize(model, method="static", steps=int(FRAMES), write=False)
    assert report["accuracy"]["max_error"] == library.accuracy.max_error
    assert report["accuracy"]["min_agreement"] == library.accuracy.min_agreement
    assert report["accuracy"]["steps"] == 500 and report["accuracy"]["data_source"].startswith("synthetic data")
    # measured: max error 0.040, agreement 0.992 (500 synthetic steps)
    assert 0 < report["accuracy"]["max_error"] < 0.1 and report["accuracy"]["min_agreement"] > 0.95
    assert {d["name"] for d in report["quantized"]} == {d.name for d in library.quantized}
    assert all(d["dtype"] == "int8" for d in report["quantized"])
    assert all("under --min-size 128" in d["why"] for d in report["kept_float"])  # (the small head)
    assert listing(model.parent) == ["net.onnx", "q.onnx"]


def test_exclude_and_calibration_through_the_cli(model):
    x = np.random.default_rng(1).standard_normal((2, 300, 10)).astype(np.float32)
    np.save("calib.npy", x)
    head = [n.name for n in onnx.load("net.onnx").graph.node if n.op_type == "MatMul"][-1]
    result = invoke("quantize", "net.onnx", "--method", "static", "--calibration", "calib.npy", "--exclude", head,
                    "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["path"] == "net.qdq.onnx" and report["accuracy"]["data_source"] == "calibration file calib.npy"
    assert report["accuracy"]["steps"] == 300 and report["accuracy"]["streams"] == 2
    assert report["kept_float"] == [{"name": head, "op_type": "MatMul", "dtype": "float32",
                                     "why": "excluded by the user"}]


def test_the_program_quantizes(model):
    """`python -m edgernn quantize` as a user runs it: pure JSON on stdout, nothing on stderr."""
    proc = subprocess.run([sys.executable, "-m", "edgernn", "quantize", "net.onnx", "--frames", "200", "--json"],
                          capture_output=True, text=True, cwd=model.parent, timeout=300,
                          env={**os.environ, "COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr
    report = json.loads(proc.stdout)
    assert report["path"] == "net.int8.onnx" and report["accuracy"]["steps"] == 200
    assert report["size_ratio"] < 0.7  # measured 0.62: in a net this small, graph and metadata weigh like the weights
    assert listing(model.parent) == ["net.int8.onnx", "net.onnx"]


# ---------------------------------------------------------------- bad input


def _write_bad_files(folder: Path) -> None:
    (folder / "text.onnx").write_text("this is not a model\n")
    (folder / "random.onnx").write_bytes(np.random.default_rng(0).bytes(2048))
    vi = helper.make_tensor_value_info
    add = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"], name="add")], "g",
                            [vi("x", TensorProto.FLOAT, ["batch", 4])], [vi("y", TensorProto.FLOAT, ["batch", 4])])
    onnx.save(helper.make_model(add), str(folder / "add.onnx"))
    stateful_add = helper.make_graph(  # follows the naming rule, but still nothing to quantize
        [helper.make_node("Add", ["x", "state"], ["stateN"], name="add"),
         helper.make_node("Identity", ["stateN"], ["y"], name="copy")], "g",
        [vi("x", TensorProto.FLOAT, ["batch", 4]), vi("state", TensorProto.FLOAT, ["batch", 4])],
        [vi("y", TensorProto.FLOAT, ["batch", 4]), vi("stateN", TensorProto.FLOAT, ["batch", 4])])
    onnx.save(helper.make_model(stateful_add), str(folder / "stateful_add.onnx"))
    np.save(folder / "wrong_shape.npy", np.zeros((2, 50, 9), np.float32))
    np.save(folder / "wrong_rank.npy", np.zeros((50, 10), np.float32))
    np.save(folder / "wrong_dtype.npy", np.zeros((2, 50, 10), np.float64))
    np.save(folder / "ints.npy", np.zeros((2, 50, 10), np.int64))


BAD = [  # (id, the file the command reads, args after it, what the one error sentence says); exit status 1
    # (malformed command lines, exit status 2: test_cli_usage.py)
    ("not onnx (text)", "text.onnx", [], "text.onnx is not an ONNX model (onnx.load could not parse it)"),
    ("not onnx (random bytes)", "random.onnx", [], "random.onnx is not an ONNX model"),
    ("missing file", "missing.onnx", [], "missing.onnx does not exist or is not a file"),
    ("nothing to quantize", "add.onnx", [],
     "add.onnx has no recurrent, MatMul, Gemm or Conv node to quantize; nothing was written"),
    ("nothing to quantize, stateful", "stateful_add.onnx", [],
     "stateful_add.onnx has no recurrent, MatMul, Gemm or Conv node to quantize; nothing was written"),
    ("calibration of the wrong shape", "net.onnx", ["--method", "static", "--calibration", "wrong_shape.npy"],
     "calibration array 'x' has shape [2, 50, 9]; expected [batch, time, 10] (axis 2 must be 10)"),
    ("calibration of the wrong rank", "net.onnx", ["--method", "static", "--calibration", "wrong_rank.npy"],
     "calibration array 'x' has shape [50, 10]; expected [batch, time, 10] (3 axes, time on axis 1)"),
    ("calibration of the wrong dtype", "net.onnx", ["--method", "static", "--calibration", "wrong_dtype.npy"],
     "calibration array 'x' has dtype float64; expected float32"),
    ("calibration of ints", "net.onnx", ["--method", "static", "--calibration", "ints.npy"],
     "calibration array 'x' has dtype int64; expected float32"),
    ("calibration that is not an array", "net.onnx", ["--method", "static", "--calibration", "text.onnx"],
     "calibration file text.onnx is not a .npy or .npz array file"),
    ("data of the wrong shape", "net.onnx", ["--data", "wrong_shape.npy"],
     "data array 'x' has shape [2, 50, 9]; expected [batch, time, 10]"),
    ("output is the input", "net.onnx", ["-o", "net.onnx"],
     "output net.onnx is the input file; choose another path with -o"),
    ("output is the input, other spelling", "net.onnx", ["-o", "./net.onnx"], "is the input file"),
    ("output folder missing", "net.onnx", ["-o", "nowhere/q.onnx"],
     "cannot write nowhere/q.onnx: folder nowhere does not exist"),
    ("exclude of an unknown node", "net.onnx", ["--exclude", "no_such_node"],
     "--exclude 'no_such_node' is not a quantizable node of net.onnx"),
    ("state pair of unknown names", "net.onnx", ["--state-pair", "h=hn"], "net.onnx has no graph input 'h'"),
]


@pytest.mark.parametrize("target, args, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_one_sentence_and_leaves_everything_as_it_was(model, target, args, message):
    _write_bad_files(model.parent)
    path = model.parent / target
    before = (path.read_bytes(), path.stat().st_mtime_ns) if path.exists() else None
    files = listing(model.parent)
    result = invoke("quantize", target, *args, "--frames", "200")
    assert result.exit_code == 1, result.stdout
    err = result.stderr.strip()
    assert err.startswith("error: ") and message in err, err
    assert "\n" not in err and "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""  # nothing was quantized, so there is no report to print
    assert listing(model.parent) == files  # no output, no temporary file
    if before is not None:
        assert (path.read_bytes(), path.stat().st_mtime_ns) == before


@pytest.mark.parametrize("args, message", [
    (["--max-error", "1e-6"], "more than --max-error 1e-06"),
    (["--min-agreement", "1"], "less than --min-agreement 100.00%"),
])
def test_missed_threshold_prints_the_report_exits_1_and_writes_nothing(model, args, message):
    before = (model.read_bytes(), model.stat().st_mtime_ns)
    result = invoke("quantize", "net.onnx", "--frames", "2000", *args)
    assert result.exit_code == 1
    err = result.stderr.strip()
    assert err.startswith("error: the quantized model fails the accuracy check: ") and message in err, err
    assert err.endswith("nothing was written") and "\n" not in err
    assert "accuracy against the float model" in result.stdout and "wrote" not in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert listing(model.parent) == ["net.onnx"]
    assert (model.read_bytes(), model.stat().st_mtime_ns) == before
