"""The `edgernn` command line: happy paths checked against PyTorch, and bad input answered with one
sentence on stderr, a non-zero exit, no traceback and nothing left on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import edgernn
from edgernn.runtimes import StreamError
from conftest import invoke, listing







@pytest.fixture(scope="module")
def gru_files(tmp_path_factory):
    """A bare 2-layer batch-first GRU state_dict, its export by the CLI, and the PyTorch layer."""
    folder = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    gru = nn.GRU(8, 16, num_layers=2, batch_first=True).eval()
    torch.save(gru.state_dict(), folder / "gru.pt")
    result = invoke("export", folder / "gru.pt", "--batch-first", "--json", "-o", folder / "gru.onnx")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    return {"folder": folder, "pt": folder / "gru.pt", "onnx": folder / "gru.onnx", "module": gru, "report": report}


# ---------------------------------------------------------------- happy paths


def test_export_json_report(gru_files):
    report = gru_files["report"]
    assert report["path"] == str(gru_files["onnx"]) and report["mode"] == "chunk"
    assert report["parity"]["passed"] and report["parity"]["max_error"] <= 1e-5
    assert [s["name"] for s in report["states"]] == ["gru.h"]
    assert any("batch_first=True" in n for n in report["notes"])
    assert os.stat(gru_files["onnx"]).st_size == report["size_bytes"]


def test_info_json_lists_the_states(gru_files):
    result = invoke("info", gru_files["onnx"], "--json")
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["format"] == "1" and info["mode"] == "chunk" and info["producer"] == "edgernn"
    assert info["states"] == [{"name": "gru.h", "input": "state_in.gru.h", "output": "state_out.gru.h",
                               "shape": [2, "batch", 16], "dtype": "float32", "batch_axis": 1, "init": "zeros"}]
    assert info["inputs"][0]["shape"] == ["batch", "time", 8]
    assert info["op_counts"]["GRU"] == 2


def test_info_table(gru_files):
    result = invoke("info", gru_files["onnx"])
    assert result.exit_code == 0
    assert "gru.h" in result.stdout and "state_in.gru.h" in result.stdout and "chunk mode" in result.stdout


@pytest.mark.parametrize("chunk", [3, None])
def test_run_saves_outputs_equal_to_pytorch(gru_files, tmp_path, chunk):
    x = np.random.default_rng(1).standard_normal((2, 20, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    args = ["run", gru_files["onnx"], "--data", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--json"]
    result = invoke(*args, *(["--chunk", str(chunk)] if chunk else []))
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    calls = 7 if chunk == 3 else 1
    assert (report["frames"], report["calls"], report["saved_to"]) == (20, calls, str(tmp_path / "y.npy"))
    assert report["final_state"] == {"gru.h": [2, 2, 16]}
    with torch.no_grad():
        want = gru_files["module"](torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, atol=1e-5, rtol=0)
    assert listing(tmp_path) == ["x.npy", "y.npy"]


def test_run_prints_a_summary(gru_files, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 5, 8), np.float32))
    result = invoke("run", gru_files["onnx"], "-d", tmp_path / "x.npy", "-c", "2")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())  # rich wraps long lines at the terminal width
    assert "streamed 5 frames" in text and "3 calls of 2 frame(s)" in text and "final state gru.h: [2, 1, 16]" in text


def test_export_table_and_default_output_path(gru_files, tmp_path):
    (tmp_path / "gru.pt").write_bytes(gru_files["pt"].read_bytes())
    result = invoke("export", tmp_path / "gru.pt", "--batch-first")
    assert result.exit_code == 0, result.stderr
    assert "parity passed" in result.stdout and f"wrote {tmp_path / 'gru.onnx'}" in result.stdout
    assert listing(tmp_path) == ["gru.onnx", "gru.pt"]


def test_version_and_help():
    assert invoke("--version").stdout.strip() == edgernn.__version__
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("export", "info", "run"):
        assert command in result.stdout


# ---------------------------------------------------------------- as a program


def _python_m(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgernn", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={**os.environ, "COLUMNS": "120"})


def test_program_help():
    proc = _python_m("--help")
    assert proc.returncode == 0, proc.stderr
    assert "export" in proc.stdout and "run" in proc.stdout and "Traceback" not in proc.stderr


def test_program_exports_and_fails_cleanly(gru_files, tmp_path):
    (tmp_path / "gru.pt").write_bytes(gru_files["pt"].read_bytes())
    proc = _python_m("export", "gru.pt", "--batch-first", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["parity"]["passed"]
    assert onnx.load(str(tmp_path / "gru.onnx")).graph.input[1].name == "state_in.gru.h"
    proc = _python_m("export", "missing.pt", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: missing.pt does not exist"
    assert listing(tmp_path) == ["gru.onnx", "gru.pt"]


# ---------------------------------------------------------------- bad input


def _write(folder: Path, name: str, what: str) -> None:
    path = folder / name
    if what == "random":
        path.write_bytes(np.random.default_rng(0).bytes(2048))
    elif what == "text":
        path.write_text("weights: none, this is a text file\n")
    elif what == "pickle":
        torch.save(nn.GRU(3, 4), path)
    elif what == "unknown":
        torch.save({"encoder.weight": torch.zeros(4, 3), "decoder.weight": torch.zeros(3, 4)}, path)
    elif what == "bidirectional":
        torch.save(nn.GRU(3, 4, bidirectional=True).state_dict(), path)
    elif what == "npy":
        np.save(path, np.zeros((1, 3), np.float32))
    elif what == "gru":
        torch.save(nn.GRU(3, 4).state_dict(), path)
    elif what == "onnx-without-metadata":
        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])])
        onnx.save(onnx.helper.make_model(graph), str(path))
    else:
        raise AssertionError(what)


# (id, files to create, args, exit code, what stderr says); malformed command lines are in test_cli_usage.py
EXPORT_ERRORS = [
    ("missing file", [], ["export", "missing.pt"], 1, "missing.pt does not exist"),
    ("folder", [], ["export", "."], 1, "is not a file"),
    ("random bytes", [("m.pt", "random")], ["export", "m.pt"], 1,
     "m.pt is not a PyTorch model file (torch.load cannot read it)"),
    ("text file", [("m.pt", "text")], ["export", "m.pt"], 1, "m.pt is not a PyTorch model file"),
    ("pickle", [("m.pt", "pickle")], ["export", "m.pt"], 1, "if you trust this file, pass --allow-pickle"),
    ("unknown architecture", [("m.pt", "unknown")], ["export", "m.pt"], 1,
     "m.pt is a state_dict of an unknown architecture (keys encoder.weight, decoder.weight...)"),
    ("class does not import", [("m.pt", "gru")], ["export", "m.pt", "--class", "no_such_pkg.models:Net"], 1,
     "--class 'no_such_pkg.models:Net': cannot import module 'no_such_pkg.models'"),
    ("bidirectional streamed", [("m.pt", "bidirectional")], ["export", "m.pt"], 1,
     "layer 'gru' is bidirectional and cannot stream: it needs the future of the sequence; export with --mode sequence"),
    ("bidirectional step", [("m.pt", "bidirectional")], ["export", "m.pt", "--mode", "step"], 1,
     "export with --mode sequence"),
    ("output folder missing", [("m.pt", "gru")], ["export", "m.pt", "-o", "nowhere/m.onnx"], 1,
     "cannot write nowhere/m.onnx: folder nowhere does not exist"),
    ("info of a checkpoint", [("m.pt", "gru")], ["info", "m.pt"], 1, "m.pt is not an ONNX model"),
    ("info of foreign onnx", [("f.onnx", "onnx-without-metadata")], ["info", "f.onnx"], 1,
     "f.onnx has no edgernn metadata (metadata_props 'edgernn.format' is missing)"),
    ("run foreign onnx", [("f.onnx", "onnx-without-metadata"), ("x.npy", "npy")], ["run", "f.onnx", "-d", "x.npy"], 1,
     "f.onnx has no edgernn metadata"),
    ("output is the input", [("m.pt", "gru")], ["export", "m.pt", "-o", "m.pt"], 1,
     "output m.pt is the input file; choose another path with -o"),
]


@pytest.mark.parametrize("files, args, code, message", [e[1:] for e in EXPORT_ERRORS],
                         ids=[e[0] for e in EXPORT_ERRORS])
def test_bad_input_is_one_sentence_and_writes_nothing(tmp_path, monkeypatch, files, args, code, message):
    monkeypatch.chdir(tmp_path)
    for name, what in files:
        _write(tmp_path, name, what)
    before = listing(tmp_path)
    result = invoke(*args)
    _assert_clean_failure(result, code, message)
    assert listing(tmp_path) == before


def _assert_clean_failure(result, code: int, message: str) -> None:
    assert result.exit_code == code, (result.stdout, result.stderr)
    err = result.stderr.strip()
    assert err.startswith("error: ") and message in err, err
    assert "\n" not in err, err
    assert "Traceback" not in result.stdout + result.stderr


def test_export_that_fails_parity_writes_nothing(gru_files, tmp_path):
    (tmp_path / "gru.pt").write_bytes(gru_files["pt"].read_bytes())
    result = invoke("export", tmp_path / "gru.pt", "--batch-first", "--tolerance", "1e-12")
    _assert_clean_failure(result, 1, "the export does not match PyTorch: FAILED")
    assert "no file was written" in result.stderr and "NO" in result.stdout  # the report shows what failed
    assert listing(tmp_path) == ["gru.pt"]


RUN_ERRORS = [  # (id, array to save or raw bytes, extra args, what stderr says)
    ("wrong feature size", np.zeros((1, 5, 9), np.float32), [],
     "input 'x' has shape [1, 5, 9]; expected ['batch', 'time', 8] (axis 2 must be 8)"),
    ("missing batch axis", np.zeros((5, 8), np.float32), [], "input 'x' has shape [5, 8]; expected 3 axes"),
    ("wrong dtype", np.zeros((1, 5, 8), np.float64), [], "input 'x' has dtype float64; expected float32"),
    ("integer dtype", np.zeros((1, 5, 8), np.int64), [], "input 'x' has dtype int64; expected float32"),
    ("not an array file", b"this is no npy file", [], "x.npy is not a .npy array file"),
    ("pickled npy", np.array([{"a": 1}], dtype=object), [], "x.npy is not a .npy array file"),
    ("empty stream", np.zeros((1, 0, 8), np.float32), [], "input 'x' has no frames"),
    ("output folder missing", np.zeros((1, 5, 8), np.float32), ["-o", "nowhere/y.npy"],
     "cannot write nowhere/y.npy: folder nowhere does not exist"),
]


@pytest.mark.parametrize("data, extra, message", [e[1:] for e in RUN_ERRORS], ids=[e[0] for e in RUN_ERRORS])
def test_run_bad_input(gru_files, tmp_path, monkeypatch, data, extra, message):
    monkeypatch.chdir(tmp_path)
    if isinstance(data, bytes):
        (tmp_path / "x.npy").write_bytes(data)
    else:
        np.save(tmp_path / "x.npy", data, allow_pickle=data.dtype == object)
    before = listing(tmp_path)
    result = invoke("run", gru_files["onnx"], "-d", "x.npy", *extra)
    _assert_clean_failure(result, 1, message)
    assert listing(tmp_path) == before


def test_run_named_input_of_another_name(gru_files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save("x.npy", np.zeros((1, 5, 8), np.float32))
    result = invoke("run", gru_files["onnx"], "-d", "z=x.npy")
    _assert_clean_failure(result, 1, "unknown input 'z'; the model's inputs are x")


def test_state_of_the_wrong_batch_is_refused(gru_files):
    """`run` starts from the init state; through the API a carried state of another batch is refused."""
    session = edgernn.open(gru_files["onnx"])
    session.set_state({"gru.h": np.zeros((2, 2, 16), np.float32)})
    with pytest.raises(StreamError, match=r"input has batch 3 but the carried state has batch 2; call reset\(\)"):
        session.stream(np.zeros((3, 4, 8), np.float32), chunk=2)
    with pytest.raises(StreamError, match=r"state 'gru.h' has shape \[2, 3, 15\]; expected \[2, 'batch', 16\]"):
        session.set_state({"gru.h": np.zeros((2, 3, 15), np.float32)})


# ---------------------------------------------------------------- execution providers


def test_run_on_a_named_provider_and_info_lists_the_installed_ones(gru_files, tmp_path):
    import onnxruntime as ort

    x = np.random.default_rng(5).standard_normal((1, 9, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = invoke("run", gru_files["onnx"], "-d", tmp_path / "x.npy", "--provider", "cpu", "-o",
                    tmp_path / "y.npy", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["provider"] == "CPUExecutionProvider" and report["notes"] == []
    with torch.no_grad():
        want, _ = gru_files["module"](torch.from_numpy(x))
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want.numpy(), atol=1e-5)
    info = json.loads(invoke("info", gru_files["onnx"], "--json").stdout)
    assert info["providers_available"] == ort.get_available_providers()
    assert "execution providers on this machine: " in invoke("info", gru_files["onnx"]).stdout


@pytest.mark.parametrize("provider, message", [
    ("warp", "error: provider 'warp' is unknown; the installed ones are "),
    ("coreml", "error: provider 'coreml' (CoreMLExecutionProvider) is not installed in this onnxruntime"),
])
def test_run_on_an_unknown_or_missing_provider_is_one_sentence(gru_files, tmp_path, provider, message):
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8), np.float32))
    result = invoke("run", gru_files["onnx"], "-d", tmp_path / "x.npy", "--provider", provider, "-o",
                    tmp_path / "y.npy")
    assert result.exit_code == 1
    assert message in " ".join(result.stderr.split())
    assert not (tmp_path / "y.npy").exists()
