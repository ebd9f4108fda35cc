"""`edgernn info`, `export` and `run` on files whose contract declares a stride over time
(``frame_multiple``) or lookahead (``delay``): the fields are printed, refused calls are one
sentence with exit code 1 and nothing written (files from the ``timed_files`` fixture)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import torch

from edgernn._cli_print import io_table, print_export
from edgernn.contract import read_metadata
from conftest import invoke





def _flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines at the terminal width


def test_info_prints_the_frame_multiple_and_the_delay(timed_files):
    result = invoke("info", timed_files["gru_m2_d1"])
    assert result.exit_code == 0, result.stderr
    text = _flat(result.stdout)
    assert "x: takes a multiple of 2 frames per call (the model strides over time or works in blocks of frames)" in text
    assert "y: 1 frame of lookahead (delay): its frame t is the model's frame t - 1" in text
    import io

    import onnx
    from rich.console import Console

    wide = Console(file=io.StringIO(), width=200)  # the table's cells, unwrapped whatever the terminal
    wide.print(io_table("t", read_metadata(onnx.load(timed_files["gru_m2_d1"]))))
    assert "1 (multiple of 2)" in wide.file.getvalue() and "1 (delay 1)" in wide.file.getvalue()
    plain = _flat(invoke("info", timed_files["gru"]).stdout)
    assert "lookahead" not in plain and "multiple of" not in plain


def test_info_json_has_the_fields_only_where_they_are_not_default(timed_files):
    info = json.loads(invoke("info", timed_files["gru_m2_d1"], "--json").stdout)
    assert info["inputs"][0]["frame_multiple"] == 2 and "delay" not in info["inputs"][0]
    assert info["outputs"][0]["delay"] == 1 and "frame_multiple" not in info["outputs"][0]
    plain = json.loads(invoke("info", timed_files["gru"], "--json").stdout)
    assert "frame_multiple" not in plain["inputs"][0] and "delay" not in plain["outputs"][0]


def test_export_table_prints_them(timed_files, capsys):
    import onnx

    contract = read_metadata(onnx.load(timed_files["conv_m2"]))
    print_export(SimpleNamespace(contract=contract, parity=None, passes=[], notes=[], path="m.onnx", size_bytes=10))
    text = _flat(capsys.readouterr().out)
    assert "x: takes a multiple of 2 frames per call" in text and "y: 1 frame of lookahead (delay)" in text


def test_run_refuses_a_chunk_that_is_not_a_multiple_and_writes_nothing(timed_files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save("x.npy", np.zeros((1, 12, 8), np.float32))
    for extra, message in ((["--chunk", "3"], "chunk 3 is not a multiple of 2: input 'x' takes a multiple of 2 frames "
                                              "per call (the model strides over time or works in blocks of frames)"),
                           ([], "input 'x' has 7 frames, not a multiple of 2")):
        if not extra:
            np.save("x.npy", np.zeros((1, 7, 8), np.float32))
        result = invoke("run", timed_files["gru_m2_d1"], "-d", "x.npy", "-o", "y.npy", *extra)
        assert result.exit_code == 1, (result.stdout, result.stderr)
        err = result.stderr.strip()
        assert err.startswith("error: ") and message in _flat(err) and "Traceback" not in result.stdout + err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def test_run_reports_the_delay_and_keeps_the_frames_as_the_file_produces_them(timed_files, tmp_path):
    x = np.random.default_rng(2).standard_normal((1, 12, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    with torch.no_grad():
        want = timed_files["conv_module"](torch.from_numpy(x).transpose(1, 2)).transpose(1, 2).numpy()
    result = invoke("run", timed_files["conv_m2"], "-d", tmp_path / "x.npy", "-c", "4", "-o", tmp_path / "y.npy",
                    "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["frame_multiple"], report["delays"], report["aligned"], report["calls"]) == (2, {"y": 1}, False, 3)
    assert any("y: 1 frame of lookahead (delay); frame t is the model's frame t - 1" in n for n in report["notes"])
    np.testing.assert_allclose(np.load(tmp_path / "y.npy")[:, 1:], want[:, :-1], atol=1e-5)

    result = invoke("run", timed_files["conv_m2"], "-d", tmp_path / "x.npy", "-c", "4", "-o", tmp_path / "y.npy",
                    "--align", "--json")
    report = json.loads(result.stdout)
    assert (report["aligned"], report["flushed_frames"], report["calls"], report["outputs"]) == \
        (True, 2, 4, {"y": [1, 12, 4]})
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, atol=1e-5)

    text = _flat(invoke("run", timed_files["conv_m2"], "-d", tmp_path / "x.npy", "-c", "4").stdout)
    assert "note: input x takes a multiple of 2 frames per call" in text and "--align gives the model's frames" in text
