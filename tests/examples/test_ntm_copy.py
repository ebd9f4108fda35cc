"""The NTM copy-task example: evaluate.py's numbers hold, train.py runs and saves a checkpoint.

evaluate.py runs once (4 sequences at lengths 8 and 30, into a temporary folder) through its
``main``, as ``python examples/ntm_copy/evaluate.py --sequences 4 --lengths 8 30 --out DIR`` would;
the tests read the numbers it wrote to ``report.json``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

import edgernn

COPY = Path(__file__).resolve().parents[2] / "examples" / "ntm_copy"
BITS_PER_SEQUENCE = {"8": 8 * 8, "30": 30 * 8}


def _example(name: str) -> ModuleType:
    """examples/ntm_copy/NAME.py as a module (the folder is not a package). The scripts import
    their neighbours as ``copy_data`` and ``train``; those names are taken out of ``sys.modules`` again
    afterwards, so that other examples' ``data`` modules are not shadowed by these."""
    neighbours = ("copy_data", "train")
    saved = {k: sys.modules.pop(k) for k in neighbours if k in sys.modules}
    sys.path.insert(0, str(COPY))
    try:
        spec = importlib.util.spec_from_file_location(f"ntm_copy_{name}", COPY / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(COPY))
        for k in neighbours:
            sys.modules.pop(k, None)
        sys.modules.update(saved)
    return module


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory) -> tuple[int, dict, Path]:
    out = tmp_path_factory.mktemp("ntm_copy")
    code = _example("evaluate").main(["--sequences", "4", "--lengths", "8", "30", "--out", str(out)])
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


def test_train_runs_and_saves_an_edgernn_checkpoint(tmp_path, capsys):
    train = _example("train")
    path = tmp_path / "tiny.pt"
    assert train.main(["--steps", "2", "--fine-tune", "1", "-o", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "bit errors per sequence" in printed and "longer than training" in printed
    loaded = edgernn.load(path)
    assert loaded.kind == "edgernn-checkpoint" and loaded.module.config == train.CONFIG
