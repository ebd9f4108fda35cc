"""``pack(..., target="ort")``: ORT-format model, operator config and README, with the .ort file
streaming like the .onnx file (plain onnxruntime and StreamingSession), and one-sentence errors
that leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import edgernn
from edgernn.converters.quantize import quantize
from edgernn.runtimes import StreamingSession
from edgernn.runtimes import pack as pack_module
from edgernn.modelfile import ModelFile
from edgernn.runtimes.pack import PackError, pack
from conftest import listing


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> ONNX path: a 2-layer GRU (chunk mode), an LSTM (step mode) and int8 copies of both."""
    folder = tmp_path_factory.mktemp("pack_models")
    torch.manual_seed(0)
    gru, lstm = folder / "gru.onnx", folder / "lstm.onnx"
    assert edgernn.export(nn.GRU(8, 16, 2, batch_first=True), gru, mode="chunk").passed
    assert edgernn.export(nn.LSTM(8, 16, batch_first=True), lstm, mode="step").passed
    # small layers, where int8 does not pay: --min-size 0 quantizes them anyway (packing is tested here)
    quantize(gru, folder / "gru_int8.onnx", method="dynamic", steps=500, min_size=0)
    quantize(lstm, folder / "lstm_int8.onnx", method="dynamic", steps=500, min_size=0)
    return {p.stem: p for p in sorted(folder.glob("*.onnx"))}


@pytest.fixture(scope="module")
def packed(models, tmp_path_factory):
    """name -> PackReport of each model packed with the defaults."""
    out = tmp_path_factory.mktemp("packed")
    return {name: pack(path, out / name) for name, path in models.items()}


def _x(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _tolerance(name: str) -> float:
    return 1e-4 if "int8" in name else 1e-5


# ---------------------------------------------------------------- what is written


@pytest.mark.parametrize("name", ["gru", "lstm", "gru_int8", "lstm_int8"])
def test_folder_holds_ort_config_onnx_copy_and_readme(packed, models, name):
    r = packed[name]
    folder = Path(r.output_dir)
    assert listing(folder) == sorted([f"{name}.ort", f"{name}.required_operators.config", f"{name}.onnx",
                                       "README.md"])
    assert r.files == {p.name: p.stat().st_size for p in folder.iterdir()}
    assert r.ort_bytes == (folder / f"{name}.ort").stat().st_size > 0
    assert r.config_bytes == (folder / f"{name}.required_operators.config").stat().st_size > 0
    assert r.onnx_bytes == models[name].stat().st_size
    assert (folder / f"{name}.onnx").read_bytes() == models[name].read_bytes()
    assert (folder / f"{name}.ort").read_bytes()[4:8] == b"ORTM"
    assert not list(folder.parent.glob(".*.tmp"))  # no staging folder left
    readme = (folder / "README.md").read_text()
    assert f"{name}.required_operators.config" in readme
    assert "./build.sh --config MinSizeRel --minimal_build --include_ops_by_config" in readme
    assert "--enable_reduced_operator_type_support" in readme  # only as advice: no type reduction here
    assert f'ort.InferenceSession("{name}.ort")' in readme
    assert all(line in readme for line in r.config_lines)
    assert r.parity is not None and r.parity["passed"] and r.parity["calls"] >= 3
    data = json.loads(json.dumps(r.to_json()))
    assert data["sizes"] == {"onnx_bytes": r.onnx_bytes, "ort_bytes": r.ort_bytes, "config_bytes": r.config_bytes}
    assert data["optimization"] == {"level": "all", "style": "Fixed"}
    # the config's header names the .ort file, not the temporary folder the converter saw
    config = (folder / f"{name}.required_operators.config").read_text()
    assert f"# - {name}.ort" in config and ".tmp" not in config


@pytest.mark.parametrize("name, domain, op", [("gru", "ai.onnx", "GRU"), ("lstm", "ai.onnx", "LSTM"),
                                              ("lstm_int8", "com.microsoft", "DynamicQuantizeLSTM"),
                                              ("gru_int8", "com.microsoft", "DynamicQuantizeMatMul")])
def test_config_names_the_recurrent_ops(packed, name, domain, op):
    r = packed[name]
    assert any(d == domain and op in ops for d, _, ops in r.ops)
    lines = [line for line in open(r.config_path).read().splitlines() if not line.startswith("#")]
    assert lines == r.config_lines
    if domain == "com.microsoft":
        assert any("--disable_contrib_ops" in n for n in r.notes)


def test_metadata_survives_in_the_ort_file(packed, models):
    for name, r in packed.items():
        assert r.metadata_kept
        meta = ort.InferenceSession(r.ort_path).get_modelmeta().custom_metadata_map
        want = {p.key: p.value for p in onnx.load(str(models[name])).metadata_props if p.key.startswith("edgernn.")}
        assert {k: v for k, v in meta.items() if k.startswith("edgernn.")} == want


# ---------------------------------------------------------------- parity over a streamed rollout


@pytest.mark.parametrize("name", ["gru", "lstm", "gru_int8", "lstm_int8"])
def test_ort_streams_like_onnx(packed, models, name):
    """Several calls, state carried: StreamingSession over the .ort file equals it over the .onnx."""
    r = packed[name]
    ref, cand = StreamingSession(models[name]), StreamingSession(r.ort_path)
    assert cand.contract == ref.contract and cand.contract_from == "metadata"
    chunk = 1 if ref.mode == "step" else 3
    x = _x((2, 17, 8), seed=1)
    for part in (x[:, :9], x[:, 9:]):  # two stream() calls: the state goes on from the first
        a, b = ref.stream(part, chunk=chunk)["y"], cand.stream(part, chunk=chunk)["y"]
        np.testing.assert_allclose(b, a, atol=_tolerance(name), rtol=0)
    for k, v in ref.state.items():
        np.testing.assert_allclose(cand.state[k], v, atol=_tolerance(name), rtol=0)


@pytest.mark.parametrize("name", ["gru", "lstm_int8"])
def test_plain_onnxruntime_on_the_ort_file_with_state_fed_back(packed, models, name):
    """What an app does: onnxruntime alone, state_out fed back as state_in, call after call."""
    r = packed[name]
    session = ort.InferenceSession(r.ort_path, providers=["CPUExecutionProvider"])
    contract = r.contract
    ref = StreamingSession(models[name])
    chunk = 1 if contract.mode == "step" else 4
    x = _x((1, 12, 8), seed=2)
    state = {s.input: np.zeros(s.concrete_shape(1), np.float32) for s in contract.states}
    outs = []
    for start in range(0, 12, chunk):
        names = ["y", *(s.output for s in contract.states)]
        y, *new = session.run(names, {"x": x[:, start:start + chunk], **state})
        state = {s.input: v for s, v in zip(contract.states, new)}
        outs.append(y)
    np.testing.assert_allclose(np.concatenate(outs, axis=1), ref.stream(x, chunk=chunk)["y"],
                               atol=_tolerance(name), rtol=0)


# ---------------------------------------------------------------- options


def test_basic_optimization_with_type_reduction(models, tmp_path):
    r = pack(models["gru_int8"], tmp_path / "out", optimization="basic", type_reduction=True)
    folder = tmp_path / "out"
    config = folder / "gru_int8.required_operators_and_types.config"
    assert config.is_file() and r.config_path == str(config)
    assert '{"inputs"' in config.read_text()  # element types per operator
    ops = {op for _, _, names in r.ops for op in names}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops  # basic: standard ops, no contrib fusion
    assert all("{" not in op for op in ops)
    assert "--enable_reduced_operator_type_support" in r.build_command
    assert "--enable_reduced_operator_type_support" in (folder / "README.md").read_text()
    assert r.to_json()["optimization"] == {"level": "basic", "style": "Fixed"}
    assert r.parity["passed"]


def test_default_folder_and_no_onnx_copy(models, tmp_path):
    src = tmp_path / "gru.onnx"
    src.write_bytes(models["gru"].read_bytes())
    r = pack(src, copy_onnx=False)
    assert r.output_dir == str(tmp_path / "gru-ort")
    assert listing(tmp_path / "gru-ort") == ["README.md", "gru.ort", "gru.required_operators.config"]


def test_existing_folder_needs_overwrite_and_keeps_other_files(models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    pack(models["lstm"], out)
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(PackError, match=r"^output folder .*out is not empty; choose another folder"):
        pack(models["lstm"], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    r = pack(models["lstm"], out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert set(r.files) | {"notes.txt"} == {p.name for p in out.iterdir()}
    assert not list(tmp_path.glob(".*.tmp"))


def test_stored_start_values_go_next_to_the_ort_file(models, tmp_path):
    """onnxruntime drops initializers no node reads, so stored start values go to <name>.state_init.npz."""
    model = onnx.load(str(models["gru"]))
    props = {p.key: p for p in model.metadata_props}
    states = json.loads(props["edgernn.states"].value)
    start = _x((2, 1, 16), seed=3)
    states[0]["init"] = {"initializer": "gru.h.init"}
    props["edgernn.states"].value = json.dumps(states)
    model.graph.initializer.append(onnx.numpy_helper.from_array(start, "gru.h.init"))
    src = tmp_path / "stored.onnx"
    onnx.save(model, str(src))
    r = pack(src, tmp_path / "out")
    npz = tmp_path / "out" / "stored.state_init.npz"
    assert npz.is_file() and "stored.state_init.npz" in r.files
    np.testing.assert_array_equal(ModelFile.open(r.ort_path).stored_initializers()["gru.h.init"], start)
    assert "stored.state_init.npz" in (tmp_path / "out" / "README.md").read_text()
    assert r.parity["passed"]
    session = StreamingSession(r.ort_path)
    session.reset(3)
    np.testing.assert_array_equal(session.state["gru.h"], np.repeat(start, 3, axis=1))
    ref = StreamingSession(src)
    x = _x((3, 10, 8), seed=4)
    np.testing.assert_allclose(session.stream(x, chunk=4)["y"], ref.stream(x, chunk=4)["y"], atol=1e-5, rtol=0)


def test_file_from_another_exporter_is_packed_with_its_contract_stamped_in(models, tmp_path):
    model = onnx.load(str(models["gru"]))
    del model.metadata_props[:]  # no edgernn metadata, states named as another exporter names them
    rename = {"state_in.gru.h": "h0", "state_out.gru.h": "hn"}
    for v in [*model.graph.input, *model.graph.output]:
        v.name = rename.get(v.name, v.name)
    for node in model.graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    src = tmp_path / "foreign.onnx"
    onnx.save(model, str(src))
    r = pack(src, tmp_path / "out")
    assert r.contract_from == "inferred" and r.metadata_kept
    assert not (tmp_path / "out" / "foreign.edgernn.json").exists()
    assert any("names its states state_in.<name> / state_out.<name>" in n for n in r.notes)
    opened = ModelFile.open(r.ort_path)  # an edgernn file now: the contract is in the .ort file
    assert opened.contract_from == "metadata"
    assert [(s.input, s.output) for s in opened.contract.states] == [("state_in.h0", "state_out.h0")]
    assert ModelFile.open(tmp_path / "out" / "foreign.onnx").contract == opened.contract  # the copy agrees
    cand = StreamingSession(r.ort_path)
    ref = StreamingSession(models["gru"])
    x = _x((2, 11, 8), seed=5)
    np.testing.assert_allclose(cand.stream(x, chunk=4)["y"], ref.stream(x, chunk=4)["y"], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- bad input: one sentence, nothing written


def _one_sentence(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and text
    return text


def test_unknown_target_names_the_targets(models, tmp_path):
    with pytest.raises(PackError) as e:
        pack(models["gru"], tmp_path / "out", target="tflite")
    assert _one_sentence(e).startswith("target 'tflite' is unknown; the targets are: ort (")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("case, message", [
    ("missing", r"missing\.onnx does not exist or is not a file$"),
    ("text", r"notes\.onnx is not an ONNX model \(onnx\.load could not parse it into a graph\)$"),
    ("folder", r"afolder does not exist or is not a file$"),
    ("stateless", r"relu\.onnx has no edgernn metadata .* no state pair was found by name"),
    ("ort", r"gru\.ort is already an ORT-format model; pack the \.onnx file it was made from$"),
])
def test_bad_input_is_refused(packed, tmp_path, case, message):
    src = tmp_path / {"missing": "missing.onnx", "text": "notes.onnx", "folder": "afolder", "stateless": "relu.onnx",
                      "ort": "gru.ort"}[case]
    if case == "text":
        src.write_text("a text file, not a model\n")
    elif case == "folder":
        src.mkdir()
    elif case == "stateless":
        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
        onnx.save(onnx.helper.make_model(graph), str(src))
    elif case == "ort":
        src.write_bytes(open(packed["gru"].ort_path, "rb").read())
    before = listing(tmp_path)
    with pytest.raises(PackError, match=message) as e:
        pack(src, tmp_path / "out")
    _one_sentence(e)
    assert listing(tmp_path) == before


@pytest.mark.parametrize("case, message", [
    ("file", r"^output .*taken is a file; pack writes a folder, so give a folder path$"),
    ("no parent", r"^cannot write .*nowhere/out: folder .*nowhere does not exist$"),
])
def test_bad_output_is_refused(models, tmp_path, case, message):
    (tmp_path / "taken").write_text("a file")
    out = tmp_path / ("taken" if case == "file" else "nowhere/out")
    before = listing(tmp_path)
    with pytest.raises(PackError, match=message) as e:
        pack(models["gru"], out)
    _one_sentence(e)
    assert listing(tmp_path) == before


def test_bad_optimization_is_refused(models, tmp_path):
    with pytest.raises(PackError, match=r"^optimization 'max' is unknown; expected one of basic, extended, all$"):
        pack(models["gru"], tmp_path / "out", optimization="max")
    assert listing(tmp_path) == []


def test_an_ort_file_that_does_not_match_is_refused_and_nothing_is_written(models, tmp_path, monkeypatch):
    """The parity check runs before anything is moved into place: a failure leaves no folder."""
    tampered = onnx.load(str(models["gru"]))
    weight = max(tampered.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 1.5, weight.name))
    convert = pack_module.convert
    monkeypatch.setattr(pack_module, "convert",
                        lambda data, *args: convert(tampered.SerializeToString(), *args))
    with pytest.raises(PackError, match=r"^the ORT-format model made from .*gru\.onnx does not match it: output 'y' "
                                        r"differs by .* nothing was written$") as e:
        pack(models["gru"], tmp_path / "out")
    _one_sentence(e)
    assert listing(tmp_path) == []


def test_pack_names_the_ops_mobile_providers_leave_to_the_cpu(tmp_path):
    """NNAPI and CoreML (by onnxruntime's own usability checker) do not take the GRU op; a step
    export with MatMul cells has no recurrent op left for them to refuse."""
    import torch
    from torch import nn

    import edgernn
    from edgernn.runtimes.pack import pack

    torch.manual_seed(0)
    gru = nn.GRU(8, 16, 2, batch_first=True).eval()
    edgernn.export(gru, tmp_path / "fused.onnx", mode="step")
    edgernn.export(gru, tmp_path / "cells.onnx", mode="step", cells="matmul")
    fused = pack(tmp_path / "fused.onnx", tmp_path / "fused")
    cells = pack(tmp_path / "cells.onnx", tmp_path / "cells")
    assert fused.mobile_eps["NNAPI"]["unsupported_ops"] == ["GRU"]
    assert fused.mobile_eps["NNAPI"]["supported_nodes"] < fused.mobile_eps["NNAPI"]["nodes"]
    assert any(n.startswith("NNAPI takes") and "GRU" in n and "--cells matmul" in n for n in fused.notes)
    assert "GRU" not in cells.mobile_eps["NNAPI"]["unsupported_ops"]
    assert "GRU" not in cells.mobile_eps["CoreML"]["unsupported_ops"]
    assert fused.to_json()["mobile_eps"] == fused.mobile_eps
