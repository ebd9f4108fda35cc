"""Files as silero-vad publishes them: look-alikes of its three layouts (tests/fixtures/silero_like.py,
built here) through `--fix` (converters/specialize.py), `quantize`, `run`, `info` and `pack`.

- the If on ``sr`` (silero_vad.onnx, silero_vad_16k_op15.onnx): `--fix sr=16000` inlines the
  16 kHz branch, after which its weights are constants that int8 quantizes; the int8 file is judged
  on the decisions (probability > 0.5) over 2,000 windows of audio-like data;
- the ifless op18 file: its samples axis has no fixed size, so `quantize` without `--data` makes up
  windows of the first size the model takes (512) and says so; a model that takes none of the sizes
  tried is refused with one sentence;
- a time axis on the input (chunk mode): `run` stacks an output without a time axis, one row per call.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgernn.contract import Contract, TensorSpec, StateSpec, read_metadata, write_metadata
from edgernn.converters.specialize import FIXED_KEY, SpecializeError, check_parity, first_call, specialize
from edgernn.modelfile import ModelFile
from edgernn.runtimes import StreamingSession
from conftest import invoke
from fixtures.silero_like import audio_windows, build

WINDOWS = 2000  # the long stream the int8 file is judged on
MIN_AGREEMENT = 0.95


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("silero_like")
    paths = build(folder)
    np.save(folder / "windows.npy", audio_windows(400, 2, seed=1))  # [calls, batch, 576]
    np.save(folder / "windows8k.npy", audio_windows(100, 1, 8000, seed=2))
    paths["windows"], paths["windows8k"] = folder / "windows.npy", folder / "windows8k.npy"
    return paths


def _json(result) -> dict:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _one_sentence(result, code: int) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _outputs(path: Path, windows: np.ndarray, **fixed) -> np.ndarray:
    session = StreamingSession(path)
    return session.stream(input=windows, **{k: np.array(v) for k, v in fixed.items()})["output"]


# ---------------------------------------------------------------- info, and the specialised graph


def test_info_fix_shows_no_sr_input(files):
    plain = _json(invoke("info", files["if_sr"], "--json"))
    assert [t["name"] for t in plain["inputs"]] == ["input", "sr"] and plain["op_counts"]["If"] == 1
    report = _json(invoke("info", files["if_sr"], "--fix", "sr=16000", "--json"))
    assert [t["name"] for t in report["inputs"]] == ["input"]
    assert report["inputs"][0]["shape"] == ["batch", "samples"]
    assert [s["input"] for s in report["states"]] == ["state"]
    assert report["fixed"] == {"sr": 16000} and "If" not in report["op_counts"]
    assert "specialised for sr=16000 (--fix): the fixed input left the graph, 1 If node inlined" in report["notes"][0]
    text = invoke("info", files["if_sr"], "--fix", "sr=16000")
    assert text.exit_code == 0 and "│ sr " not in text.stdout and "1 If node inlined" in text.stdout


@pytest.mark.parametrize("sr, data", [(16000, "windows"), (8000, "windows8k")])
def test_the_specialised_graph_computes_what_the_original_computes_for_that_sr(files, sr, data):
    spec = specialize(files["if_sr"], {"sr": str(sr)})
    assert spec.if_nodes == (1, 0) and spec.nodes[1] < spec.nodes[0] / 5
    assert [i.name for i in spec.model.graph.input] == ["input", "state"]
    assert json.loads({p.key: p.value for p in spec.model.metadata_props}[FIXED_KEY]) == {"sr": sr}
    # made-up inputs of 2 samples do not fit the reflect pad: said, and compared on real windows instead
    assert spec.parity is None and "Pad reflect" in spec.unchecked_why
    windows = np.load(files[data])
    contract = ModelFile.open(spec.model).contract
    assert check_parity(spec, first_call(contract, {"input": windows}), "a window") == 0.0
    # and over a stream, state carried: the original fed sr, the specialised file without it
    got = StreamingSession(spec.model.SerializeToString()).stream(input=windows)["output"]
    np.testing.assert_allclose(got, _outputs(files["if_sr"], windows, sr=sr), atol=1e-6, rtol=0)
    # the other branch computes something else: the fold took the branch sr chose
    other = 8000 if sr == 16000 else 16000
    assert not np.allclose(got, _outputs(files["if_sr"], windows, sr=other), atol=1e-3)


def _nested_if_model() -> onnx.ModelProto:
    """y = x * 2 + 1 when mode == 1 (through an If nested in the then-branch on mode > 0), else x - 1;
    the branches name their values as the main graph names its own (``t``), and read a weight
    through Identity."""
    f = TensorProto.FLOAT
    two = numpy_helper.from_array(np.array([2.0], np.float32))
    inner_then = helper.make_graph([helper.make_node("Constant", [], ["w"], value=two),
                                    helper.make_node("Identity", ["w"], ["w_id"]),
                                    helper.make_node("Mul", ["x", "w_id"], ["t"])], "inner_then", [],
                                   [helper.make_tensor_value_info("t", f, None)])
    inner_else = helper.make_graph([helper.make_node("Neg", ["x"], ["t"])], "inner_else", [],
                                   [helper.make_tensor_value_info("t", f, None)])
    then = helper.make_graph([helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(
                                  np.array(0, np.int64))),
                              helper.make_node("Greater", ["mode", "zero"], ["positive"]),
                              helper.make_node("If", ["positive"], ["u"], then_branch=inner_then,
                                               else_branch=inner_else)], "then", [],
                             [helper.make_tensor_value_info("u", f, None)])
    otherwise = helper.make_graph([helper.make_node("Identity", ["x"], ["u"])], "else", [],
                                  [helper.make_tensor_value_info("u", f, None)])
    one = numpy_helper.from_array(np.array(1, np.int64), "one")
    main = helper.make_graph(
        [helper.make_node("Equal", ["mode", "one"], ["is_one"]),
         helper.make_node("If", ["is_one"], ["t"], then_branch=then, else_branch=otherwise),
         helper.make_node("Add", ["t", "c1"], ["y"]), helper.make_node("Identity", ["h"], ["hn"])],
        "nested", [helper.make_tensor_value_info("x", f, ["batch", 3]),
                   helper.make_tensor_value_info("mode", TensorProto.INT64, []),
                   helper.make_tensor_value_info("h", f, ["batch", 3])],
        [helper.make_tensor_value_info("y", f, ["batch", 3]), helper.make_tensor_value_info("hn", f, ["batch", 3])],
        [one, numpy_helper.from_array(np.array([1.0], np.float32), "c1")])
    return helper.make_model(main, opset_imports=[helper.make_opsetid("", 16)])


def test_nested_ifs_fold_and_clashing_names_are_renamed():
    model = _nested_if_model()
    onnx.checker.check_model(model)
    for mode, want in ((1, lambda x: x * 2 + 1), (0, lambda x: x + 1)):
        spec = specialize(model, {"mode": mode})
        assert spec.if_nodes[1] == 0, spec.note()
        assert "mode" not in {t.name for t in spec.model.graph.initializer}  # read only by the branches dropped
        assert spec.parity == 0.0 and spec.checked_on == "made-up inputs"  # against the original fed mode
        onnx.checker.check_model(spec.model, full_check=True)
        names = [o for n in spec.model.graph.node for o in n.output]
        assert len(names) == len(set(names))
        import onnxruntime as ort

        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        y = ort.InferenceSession(spec.model.SerializeToString()).run(["y"], {"x": x, "h": x})[0]
        np.testing.assert_allclose(y, want(x))


def test_an_edgernn_file_loses_the_fixed_input_from_its_contract():
    model = _nested_if_model()
    for v in model.graph.input:
        if v.name == "h":
            v.name = "state_in.h"
    for v in model.graph.output:
        if v.name == "hn":
            v.name = "state_out.h"
    model.graph.node[3].input[0], model.graph.node[3].output[0] = "state_in.h", "state_out.h"
    write_metadata(model, Contract("step", (TensorSpec("x", ("batch", 3), "float32", 0, None),
                                            TensorSpec("mode", (), "int64", None, None)),
                                   (TensorSpec("y", ("batch", 3), "float32", 0, None),),
                                   (StateSpec("h", ("batch", 3), "float32", 0, "zeros"),)))
    spec = specialize(model, {"mode": "1"})
    contract = read_metadata(spec.model)
    assert [t.name for t in contract.inputs] == ["x"] and contract.extra[FIXED_KEY] == '{"mode": 1}'
    out = StreamingSession(spec.model.SerializeToString()).step(x=np.ones((2, 3), np.float32))
    np.testing.assert_allclose(out["y"], np.full((2, 3), 3.0))
    with pytest.raises(SpecializeError, match="is the input of state 'h'; --fix folds data inputs"):
        specialize(model, {"state_in.h": "0"})


# ---------------------------------------------------------------- quantize


def test_without_fix_the_if_file_quantizes_both_branches(files, tmp_path):
    """The weights behind the If are Constant chains in each branch: folded before quantization
    (issue 19), so both branches' LSTMs become int8 and the file keeps its sr input."""
    windows = np.load(files["windows"])
    np.savez(tmp_path / "data.npz", input=windows, sr=np.full(len(windows), 16000))  # sr: one value per call
    result = invoke("quantize", files["if_sr"], "-d", tmp_path / "data.npz", "-o", tmp_path / "q.onnx", "--json")
    assert result.exit_code == 0, result.output
    report = _json(result)
    assert any(d["op_type"] == "LSTM" and d["dtype"] == "int8" for d in report["quantized"])
    assert (tmp_path / "q.onnx").stat().st_size < 0.5 * files["if_sr"].stat().st_size
    assert "sr" in [t.name for t in ModelFile.open(tmp_path / "q.onnx").contract.inputs]


def test_quantize_fix_writes_a_smaller_int8_file_whose_decisions_agree(files, tmp_path, capsys):
    out = tmp_path / "vad.int8.onnx"
    report = _json(invoke("quantize", files["if_sr"], "--fix", "sr=16000", "-d", files["windows"], "-o", out,
                          "--min-agreement", str(MIN_AGREEMENT), "--json"))
    float_bytes = files["if_sr"].stat().st_size
    assert out.stat().st_size < 0.5 * float_bytes  # the 8 kHz weights are gone, and the LSTM's are int8
    assert any(d["op_type"] == "LSTM" and d["dtype"] == "int8" for d in report["quantized"])
    assert any("same outputs as the original fed sr=16000 on the first call of the data" in n for n in report["notes"])
    q = ModelFile.open(out)
    assert [t.name for t in q.contract.inputs] == ["input"] and FIXED_KEY in q.metadata
    # judged on decisions over a long stream of fresh audio-like windows, against the original file fed sr
    windows = audio_windows(WINDOWS, 2, seed=7)
    want, got = _outputs(files["if_sr"], windows, sr=16000), _outputs(out, windows)
    assert want.shape == got.shape == (WINDOWS, 2, 1)
    speech = want > 0.5
    assert 0.2 < speech.mean() < 0.8  # the look-alike detects the bursts: both decisions occur
    agreement = float(np.mean(speech == (got > 0.5)))
    with capsys.disabled():
        print(f"\nint8 vs float (sr=16000): {out.stat().st_size} / {float_bytes} bytes "
              f"({out.stat().st_size / float_bytes:.2f}x of the file), decisions agree on {agreement:.4f} of "
              f"{want.size} ({WINDOWS} windows x 2 streams); max |p diff| {np.abs(want - got).max():.3g}")
    assert agreement >= MIN_AGREEMENT


def test_quantize_the_ifless_file_on_real_windows(files, tmp_path):
    report = _json(invoke("quantize", files["ifless"], "-d", files["windows"], "-o", tmp_path / "q.onnx", "--json"))
    assert report["size_after"] < report["size_before"] / 2
    assert report["accuracy"]["outputs"][0]["agreement"] >= MIN_AGREEMENT


@pytest.mark.parametrize("name, fix", [("ifless", []), ("if_sr", ["--fix", "sr=16000"])])
def test_quantize_without_data_makes_up_windows_of_a_size_the_model_takes(files, tmp_path, name, fix):
    out = tmp_path / "q.onnx"
    report = _json(invoke("quantize", files[name], *fix, "--frames", "300", "-o", out, "--json"))
    assert any("input 'input' has no fixed size on axis 1 ('samples'): made-up frames are 512 long there, the first "
               "of 512, 256" in n for n in report["notes"]), report["notes"]
    assert report["accuracy"]["steps"] == 300 and report["accuracy"]["streams"] == 1
    windows = audio_windows(300, 1, seed=3)[:, :, :512]  # the made-up size, on audio-like data: int8 still agrees
    want = _outputs(files[name], windows, **({"sr": 16000} if fix else {}))
    got = _outputs(out, windows)
    assert np.mean((want > 0.5) == (got > 0.5)) >= MIN_AGREEMENT and np.abs(want - got).max() < 0.1


def test_quantize_without_data_refuses_a_window_the_model_takes_in_no_tried_size(tmp_path):
    """A model that reshapes its samples into rows of 7 takes none of the window sizes tried."""
    rows = helper.make_node("Reshape", ["x", "shape"], ["r"])
    mm = helper.make_node("MatMul", ["r", "w"], ["m"])
    mean = helper.make_node("ReduceMean", ["m"], ["y0"], axes=[0], keepdims=0)
    add = helper.make_node("Add", ["y0", "h"], ["hn"])
    out = helper.make_node("Identity", ["hn"], ["y"])
    graph = helper.make_graph(
        [rows, mm, mean, add, out], "sevens",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["samples"]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16]),
         helper.make_tensor_value_info("hn", TensorProto.FLOAT, [16])],
        [numpy_helper.from_array(np.array([-1, 7], np.int64), "shape"),
         numpy_helper.from_array(np.random.default_rng(0).standard_normal((7, 16)).astype(np.float32), "w")])
    path, q = tmp_path / "sevens.onnx", tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    err = _one_sentence(invoke("quantize", path, "--min-size", "0", "-o", q), 1)
    assert ("input 'x' of " in err and "has no fixed size on axis 0 ('samples', neither its batch nor its time axis), "
            "and the float model takes none of the sizes tried for made-up frames (512, 256" in err), err
    assert "pass --data FILE" in err and "[time, samples]" in err and not q.exists()


# ---------------------------------------------------------------- run and pack


def test_run_stacks_per_call_outputs_and_says_so(files, tmp_path):
    windows = np.load(files["windows"])[:50]
    np.save(tmp_path / "w.npy", windows)
    report = _json(invoke("run", files["if_sr"], "--fix", "sr=16000", "-d", tmp_path / "w.npy", "-o",
                          tmp_path / "p.npy", "--json"))
    assert report["calls"] == 50 and report["outputs"]["output"] == [50, 2, 1]
    assert any("output output has no time axis: its value after each call is one row, stacked along a new leading "
               "axis (50 calls: [50, 2, 1])" in n for n in report["notes"])
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), _outputs(files["if_sr"], windows, sr=16000), atol=1e-6)


def test_run_on_a_chunk_mode_file_keeps_every_calls_output(files, tmp_path):
    windows = np.load(files["windows"])[:40].transpose(1, 0, 2)  # [batch, time, 576]
    np.save(tmp_path / "x.npy", windows)
    report = _json(invoke("run", files["sequence"], "-d", tmp_path / "x.npy", "--chunk", "10", "-o",
                          tmp_path / "p.npy", "--json"))
    assert report["calls"] == 4 and report["outputs"]["output"] == [4, 2, 1]
    assert any("stacked along a new leading axis (4 calls: [4, 2, 1])" in n for n in report["notes"])
    rows = np.load(tmp_path / "p.npy")
    # row k is the probability after call k: the whole stream in one call gives the last row
    whole = StreamingSession(files["sequence"]).stream(input=windows, chunk=40)["output"]
    assert whole.shape == (1, 2, 1)
    np.testing.assert_allclose(rows[-1], whole[0], atol=1e-5)
    assert not np.allclose(rows[0], rows[-1])


def test_pack_fix(files, tmp_path):
    report = _json(invoke("pack", files["if_sr"], "--fix", "sr=16000", "-o", tmp_path / "out", "--json"))
    onnx_copy = tmp_path / "out" / "if_sr_op16.onnx"
    assert [i.name for i in onnx.load(onnx_copy).graph.input] == ["input", "state_in.state"]
    assert "specialised for sr=16000" in report["notes"][0]
    session = StreamingSession(tmp_path / "out" / "if_sr_op16.ort")
    windows = np.load(files["windows"])[:20]
    np.testing.assert_allclose(session.stream(input=windows)["output"], _outputs(files["if_sr"], windows, sr=16000),
                               atol=1e-5)


# ---------------------------------------------------------------- what --fix refuses


@pytest.mark.parametrize("args, code, message", [
    (["--fix", "rate=16000"], 1, "has no graph input 'rate' to fix (--fix rate=...); its inputs are input, state, sr"),
    (["--fix", "sr=sixteen"], 1, "--fix sr=sixteen: 'sixteen' is not a number or a list of numbers"),
    (["--fix", "sr=16000.5"], 1, "input 'sr' of"),
    (["--fix", "sr=1,2"], 1, "input 'sr' of"),
    (["--fix", "state=0"], 1, "is the input of state 'state'; --fix folds data inputs"),
    (["--fix", "sr"], 2, "'sr' is not NAME=VALUE"),
    (["--fix", "=16000"], 2, "'=16000' is not NAME=VALUE"),
    (["--fix", "sr=16000", "--fix", "sr=8000"], 2, "input 'sr' is fixed twice"),
])
@pytest.mark.parametrize("command", ["quantize", "info"])
def test_bad_fix_values(files, tmp_path, command, args, code, message):
    out = ["-o", tmp_path / "q.onnx", "-d", files["windows"]] if command == "quantize" else []
    err = _one_sentence(invoke(command, files["if_sr"], *args, *out), code)
    assert message in err, err
    assert not (tmp_path / "q.onnx").exists()


def test_bad_fix_values_in_the_library(files):
    with pytest.raises(SpecializeError, match="is int64, and 16000.5 is not a whole number"):
        specialize(files["if_sr"], {"sr": 16000.5})
    with pytest.raises(SpecializeError, match=r"has shape \[\], but the value has shape \[2\]"):
        specialize(files["if_sr"], {"sr": [16000, 8000]})
    spec = specialize(files["if_sr"], {"sr": np.int32(8000)})  # any integer type: cast to the input's int64
    assert spec.fixed["sr"].dtype == np.int64 and spec.fixed_text == "sr=8000"
