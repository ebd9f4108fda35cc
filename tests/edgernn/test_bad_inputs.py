"""Every command against a table of bad inputs: missing, truncated, of the wrong kind, data of the
wrong shape or dtype or holding NaN, hostile metadata, external data outside the model's folder.

Each case asserts what a user must see: exit 1 (a bad file or value; a malformed command line is
exit 2, tests/edgernn/test_cli_usage.py), one sentence on stderr starting ``error:``, no
traceback (``invoke`` raises any uncaught exception) and no file left behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import edgernn
from conftest import invoke, listing

ONNX_COMMANDS = {  # command -> the arguments it needs besides the model, writing into OUT
    "info": [],
    "run": ["-d", "{x}", "-o", "{out}/y.npy"],
    "quantize": ["-o", "{out}/q.onnx", "--frames", "20"],
    "bench": ["--calls", "5", "--warmup", "1", "--rounds", "1"],
    "check": ["--runtimes", "ort", "--frames", "5", "--rounds", "1"],
    "pack": ["-o", "{out}/packed"],
    "serve": ["--triton", "{out}/repo", "--max-batch-size", "0"],
}


def _with_states(model: onnx.ModelProto, edit) -> onnx.ModelProto:
    """A copy of ``model`` whose edgernn.states metadata ``edit`` changed (a list of dicts)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for prop in out.metadata_props:
        if prop.key == "edgernn.states":
            states = json.loads(prop.value)
            edit(states)
            prop.value = json.dumps(states)
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The good files and the bad ones, made once."""
    d = tmp_path_factory.mktemp("bad_inputs")
    torch.manual_seed(0)
    gru = torch.nn.GRU(3, 4, batch_first=True).eval()
    edgernn.save(gru, d / "good.pt")
    assert edgernn.export(gru, d / "good.onnx", mode="step").passed
    good = (d / "good.onnx").read_bytes()
    (d / "truncated.onnx").write_bytes(good[: len(good) // 2])
    (d / "truncated.pt").write_bytes((d / "good.pt").read_bytes()[:300])
    (d / "text.onnx").write_text("this is not a model\n")
    (d / "text.pt").write_text("this is not a checkpoint\n")
    shutil.copy(d / "good.pt", d / "checkpoint.onnx")  # a checkpoint where a model file is expected
    model = onnx.load_from_string(good)

    def huge(states):
        states[0]["shape"] = [1, "batch", 100_000_000_000]

    def ghost(states):
        states[0]["input"] = "state_in.nowhere"

    def wrong_dtype(states):
        states[0]["dtype"] = "float16"

    onnx.save(_with_states(model, huge), d / "huge_state.onnx")
    onnx.save(_with_states(model, ghost), d / "ghost_state.onnx")
    onnx.save(_with_states(model, wrong_dtype), d / "dtype_state.onnx")
    bad_json = onnx.ModelProto()
    bad_json.CopyFrom(model)
    for prop in bad_json.metadata_props:
        if prop.key == "edgernn.inputs":
            prop.value = '[{"name": "x", "shape": ["batch", 1, 3]'  # cut short
    onnx.save(bad_json, d / "bad_json.onnx")
    # an initializer kept in external data, pointing outside the model's folder
    inner = d / "inner"
    inner.mkdir()
    escape = onnx.ModelProto()
    escape.CopyFrom(model)
    init = max(escape.graph.initializer, key=lambda t: len(t.raw_data))
    (d / "outside.bin").write_bytes(init.raw_data)
    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../outside.bin"), ("offset", "0"), ("length", str((d / "outside.bin").stat().st_size))):
        entry = init.external_data.add()
        entry.key, entry.value = key, value
    (inner / "escape.onnx").write_bytes(escape.SerializeToString())
    rng = np.random.default_rng(0)
    np.save(d / "x.npy", rng.standard_normal((1, 6, 3)).astype(np.float32))
    np.save(d / "x_shape.npy", rng.standard_normal((1, 6, 5)).astype(np.float32))
    np.save(d / "x_rank.npy", rng.standard_normal((6, 3)).astype(np.float32))
    np.save(d / "x_f64.npy", rng.standard_normal((1, 6, 3)))
    nan = rng.standard_normal((1, 6, 3)).astype(np.float32)
    nan[0, 4, 1] = np.nan
    np.save(d / "x_nan.npy", nan)
    np.save(d / "x_empty.npy", np.zeros((1, 0, 3), np.float32))
    np.save(d / "x_object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (d / "x_text.npy").write_text("1, 2, 3\n")
    return d


BAD_MODELS = {  # file -> words the sentence must hold
    "missing.onnx": "does not exist",
    "truncated.onnx": "truncated.onnx",
    "text.onnx": "text.onnx",
    "checkpoint.onnx": "checkpoint.onnx",
    "huge_state.onnx": "GiB",
    "ghost_state.onnx": "state_in.nowhere",
    "dtype_state.onnx": "float16",
    "bad_json.onnx": "edgernn.inputs",
    "inner/escape.onnx": "outside",
}

CASES = [
    *[(command, model, ONNX_COMMANDS[command], words) for command in ONNX_COMMANDS for model, words in BAD_MODELS.items()],
    ("export", "missing.pt", ["-o", "{out}/m.onnx"], "does not exist"),
    ("export", "truncated.pt", ["-o", "{out}/m.onnx"], "truncated.pt"),
    ("export", "text.pt", ["-o", "{out}/m.onnx"], "text.pt"),
    ("export", "good.onnx", ["-o", "{out}/m.onnx"], "good.onnx"),
    ("run", "good.onnx", ["-d", "{d}/x_shape.npy", "-o", "{out}/y.npy"], "axis 2 must be 3"),
    ("run", "good.onnx", ["-d", "{d}/x_rank.npy", "-o", "{out}/y.npy"], "x"),
    ("run", "good.onnx", ["-d", "{d}/x_f64.npy", "-o", "{out}/y.npy"], "float64"),
    ("run", "good.onnx", ["-d", "{d}/x_nan.npy", "-o", "{out}/y.npy"], "holds NaN at frame 4"),
    ("run", "good.onnx", ["-d", "{d}/x_empty.npy", "-o", "{out}/y.npy"], "no frames"),
    ("run", "good.onnx", ["-d", "{d}/x_object.npy", "-o", "{out}/y.npy"], "x_object.npy"),
    ("run", "good.onnx", ["-d", "{d}/x_text.npy", "-o", "{out}/y.npy"], "x_text.npy"),
    ("run", "good.onnx", ["-d", "{d}/nothing.npy", "-o", "{out}/y.npy"], "nothing.npy"),
    ("run", "good.onnx", ["-d", "h=x.npy", "-o", "{out}/y.npy"], "h"),
    ("run", "good.onnx", ["-d", "{d}/x.npy", "-o", "{out}/no/such/y.npy"], "does not exist"),
    ("quantize", "good.onnx", ["-o", "{out}/q.onnx", "--data", "{d}/x_shape.npy"], "axis 2 must be 3"),
    ("quantize", "good.onnx", ["-o", "{out}/q.onnx", "--data", "{d}/x_f64.npy"], "float64"),
    ("quantize", "good.onnx", ["-o", "{out}/q.onnx", "--data", "{d}/x_nan.npy"], "holds NaN"),
    ("quantize", "good.onnx", ["-o", "{out}/q.onnx", "--calibration", "{d}/x_text.npy", "--method", "static"],
     "x_text.npy"),
    ("quantize", "good.onnx", ["-o", "{out}/q.onnx", "--data", "{d}/x_empty.npy"], "no frames"),
    ("bench", "good.onnx", ["--calls", "5", "--against", "{d}/text.pt"], "text.pt"),
    ("bench", "good.onnx", ["--calls", "5", "--against", "{d}/missing.pt"], "missing.pt"),
    ("bench", "good.onnx", ["--calls", "5", "--baseline", "{d}/truncated.onnx"], "truncated.onnx"),
    ("bench", "good.onnx", ["--calls", "5", "--plot", "{out}/no/such/p.png"], "does not exist"),
    ("check", "good.onnx", ["--runtimes", "ort", "-d", "{d}/x_shape.npy"], "axis 2 must be 3"),
    ("check", "good.onnx", ["--runtimes", "ort", "-d", "{d}/x_nan.npy"], "holds NaN"),
    ("check", "good.onnx", ["--runtimes", "ort", "-d", "{d}/x_text.npy"], "x_text.npy"),
    ("check", "good.onnx", ["--runtimes", "ort", "-d", "{d}/nothing.npy"], "nothing.npy"),
    ("check", "good.onnx", ["--runtimes", "ort", "--chunk", "2"], "step mode"),
    ("check", "good.onnx", ["--runtimes", "ort", "--frames", "5", "--against", "{d}/text.pt"], "text.pt"),
    ("check", "good.onnx", ["--runtimes", "ort", "--frames", "5", "--against", "{d}/missing.pt"], "missing.pt"),
    ("check", "good.onnx", ["--runtimes", "ort", "--frames", "5", "--class", "a.b:C"], "applies only to a PyTorch model file"),
    ("pack", "good.onnx", ["-o", "{d}/x.npy"], "x.npy"),
    ("serve", "good.onnx", ["--triton", "{d}/x.npy"], "x.npy"),
]


@pytest.mark.parametrize("command, model, extra, words", CASES,
                         ids=[f"{c[0]} {c[1]} {' '.join(Path(a).name for a in c[2][:2])}" for c in CASES])
def test_bad_input_is_one_sentence_exit_1_and_writes_nothing(folder, tmp_path, monkeypatch, command, model, extra, words):
    monkeypatch.chdir(folder)
    out = tmp_path / "out"
    out.mkdir()
    args = [a.format(d=folder, out=out, x=folder / "x.npy") for a in extra]
    before = listing(folder)
    result = invoke(command, folder / model, *args)
    err = result.stderr.strip()
    assert result.exit_code == 1, (result.exit_code, result.stdout, err)
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output, err
    assert words in err, err
    assert listing(out) == [] and listing(folder) == before
