"""The NTM copy-task example: evaluate.py's numbers hold, train.py runs and saves a checkpoint.

evaluate.py runs once (4 sequences at lengths 8 and 30, into a temporary folder) through its
``main``, as ``python examples/ntm_copy/evaluate.py --sequences 4 --lengths 8 30 --out DIR`` would;
the tests read the numbers it wrote to ``report.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import edgernn

BITS_PER_SEQUENCE = {"8": 8 * 8, "30": 30 * 8}


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory, ntm_example) -> tuple[int, dict, Path]:
    out = tmp_path_factory.mktemp("ntm_copy")
    code = ntm_example("evaluate").main(["--sequences", "4", "--lengths", "8", "30", "--out", str(out)])
    return code, json.loads((out / "report.json").read_text()), out


def test_fp32_files_output_the_same_bits_as_pytorch(evaluation):
    code, report, out = evaluation
    assert code == 0 and report["passed"] is True
    assert set(report["lengths"]) == {"8", "30"}
    for column in ("step", "chunk"):
        assert report["exports"][column]["parity"]["max_error"] < 1e-5, column
        assert edgernn.open(out / f"ntm_copy_{column}.onnx").mode == column
        for length, row in report["lengths"].items():
            assert row[column]["bit_errors"] == row["pytorch"]["bit_errors"], (column, length)
            assert row[column]["bits_differing_from_pytorch"] == 0, (column, length)
            assert row[column]["max_abs_logit_error"] < 1e-3, (column, length)
    for length, row in report["lengths"].items():  # the shipped model copies, also beyond training
        assert sum(row["pytorch"]["bit_errors"]) <= 0.01 * 4 * BITS_PER_SEQUENCE[length], length


def test_fp16_file_is_judged_on_bits(evaluation):
    _, report, out = evaluation
    assert (out / "ntm_copy_step.fp16.onnx").stat().st_size < 0.7 * (out / "ntm_copy_step.onnx").stat().st_size
    assert report["quantize"]["fp16"]["accuracy"]["data_source"].startswith("data file")
    for length, row in report["lengths"].items():
        assert 1e-5 < row["fp16"]["max_abs_logit_error"] < 0.5, length  # measured 9.5e-3
        assert row["fp16"]["bits_differing_from_pytorch"] <= 0.01 * 4 * BITS_PER_SEQUENCE[length], length


def test_int8_file_is_judged_on_bits(evaluation):
    _, report, out = evaluation
    assert "int8" in report["files"], report["skipped"]
    assert (out / "ntm_copy_step.int8.onnx").stat().st_size < 0.6 * (out / "ntm_copy_step.onnx").stat().st_size
    for length, row in report["lengths"].items():
        assert row["int8"]["bits_differing_from_pytorch"] <= 0.01 * 4 * BITS_PER_SEQUENCE[length], length


def test_train_runs_and_saves_an_edgernn_checkpoint(tmp_path, capsys, ntm_example):
    train = ntm_example("train")
    path = tmp_path / "tiny.pt"
    assert train.main(["--steps", "2", "--fine-tune", "1", "-o", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "bit errors per sequence" in printed and "longer than training" in printed
    loaded = edgernn.load(path)
    assert loaded.kind == "edgernn-checkpoint" and loaded.module.config == train.CONFIG
