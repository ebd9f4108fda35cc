"""Stateful ONNX files from other exporters (no edgernn metadata): the state pairs and axes found by
the documented rule (docs/state-contract.md, "Files from other exporters") or given by the user,
streaming through StreamingSession against PyTorch, stamping the contract into the file, and the
CLI's `info` / `run` on such files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import edgernn
from edgernn.contract import ContractError, SCHEMA_PATH, decoded_metadata, infer_contract, read_metadata, with_contract
from edgernn.foreign import INFERRED_KEY, inferred_record
from edgernn.runtimes import StreamingSession
from conftest import torch_export, invoke

TOL = 1e-5


class Silero(nn.Module):
    """silero-vad's interface: one window per call, a stacked [layers, batch, H] state, a scalar sr."""

    def __init__(self, layers: int = 2) -> None:
        super().__init__()
        self.proj, self.rnn, self.head = nn.Linear(16, 8), nn.GRU(8, 8, num_layers=layers), nn.Linear(8, 1)

    def forward(self, input, state, sr):
        x = self.proj(input) * (sr.float() / 16000.0)
        y, state_n = self.rnn(x.unsqueeze(0), state)
        return torch.sigmoid(self.head(y[0])), state_n


class Icefall(nn.Module):
    """icefall / sherpa-onnx's interface: x [N, T, F], states state0, state1 -> new_state0, new_state1."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.head = nn.LSTM(8, 6, batch_first=True), nn.Linear(6, 3)

    def forward(self, x, state0, state1):
        y, (h, c) = self.lstm(x, (state0, state1))
        return self.head(y), h, c


class TimeMajor(nn.Module):
    """A plain nn.GRU export: x [seq, batch, F], h0 -> hn."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(4, 5, num_layers=2)

    def forward(self, x, h0):
        return self.rnn(x, h0)


class Memory(nn.Module):
    """Names no rule pairs: mem -> mem_next, one frame per call."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(4, 6)

    def forward(self, x, mem):
        mem = self.cell(x, mem)
        return mem * 2.0, mem


def _export(module, args, path, inputs, outputs, axes=None) -> Path:
    torch.manual_seed(0)
    return torch_export(module, args, path, inputs, outputs, axes)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("foreign")
    torch.manual_seed(0)
    made = {}
    silero = Silero().eval()
    sil_args = (torch.randn(1, 16), torch.zeros(2, 1, 8), torch.tensor(16000))
    sil_names = (["input", "state", "sr"], ["output", "stateN"])
    made["silero_fixed"] = (silero, _export(silero, sil_args, folder / "silero_fixed.onnx", *sil_names))
    made["silero"] = (silero, _export(silero, sil_args, folder / "silero.onnx", *sil_names,
                                      {"input": {0: "batch"}, "state": {1: "batch"}, "output": {0: "batch"},
                                       "stateN": {1: "batch"}}))
    one = Silero(layers=1).eval()
    made["silero_1layer_fixed"] = (one, _export(one, (torch.randn(1, 16), torch.zeros(1, 1, 8), torch.tensor(16000)),
                                                folder / "silero1.onnx", *sil_names))
    ice = Icefall().eval()
    made["icefall"] = (ice, _export(ice, (torch.randn(2, 5, 8), torch.zeros(1, 2, 6), torch.zeros(1, 2, 6)),
                                    folder / "icefall.onnx", ["x", "state0", "state1"], ["y", "new_state0", "new_state1"],
                                    {"x": {0: "N", 1: "T"}, "state0": {1: "N"}, "state1": {1: "N"}}))
    tm = TimeMajor().eval()
    made["h0"] = (tm, _export(tm, (torch.randn(5, 2, 4), torch.zeros(2, 2, 5)), folder / "h0.onnx", ["x", "h0"],
                              ["y", "hn"], {"x": {0: "seq", 1: "batch"}, "h0": {1: "batch"}, "y": {0: "seq", 1: "batch"},
                                            "hn": {1: "batch"}}))
    mem = Memory().eval()
    made["memory"] = (mem, _export(mem, (torch.randn(2, 4), torch.zeros(2, 6)), folder / "memory.onnx", ["x", "mem"],
                                   ["y", "mem_next"], {"x": {0: "batch"}, "mem": {0: "batch"}}))
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 3])])
    onnx.save(onnx.helper.make_model(graph), str(folder / "stateless.onnx"))
    made["stateless"] = (None, folder / "stateless.onnx")
    return made


def _contract(files, name, **kw):
    return infer_contract(onnx.load(str(files[name][1])), source=name, **kw)


# ---------------------------------------------------------------- the rule


# (file, mode, {state: (input, output, rule, shape, batch axis)}, {data tensor: (shape, batch axis, time axis)})
CASES = [
    ("silero_fixed", "step", {"state": ("state", "stateN", "a", [2, 1, 8], 1)},
     {"input": ([1, 16], 0, None), "sr": ([], None, None), "output": ([1, 1], 0, None)}),
    ("silero", "step", {"state": ("state", "stateN", "a", [2, "batch", 8], 1)},
     {"input": (["batch", 16], 0, None), "sr": ([], None, None), "output": (["batch", 1], 0, None)}),
    ("silero_1layer_fixed", "step", {"state": ("state", "stateN", "a", [1, 1, 8], 1)},
     {"input": ([1, 16], 0, None), "output": ([1, 1], 0, None)}),
    ("icefall", "chunk", {"state0": ("state0", "new_state0", "b", [1, "batch", 6], 1),
                          "state1": ("state1", "new_state1", "b", [1, "batch", 6], 1)},
     {"x": (["batch", "time", 8], 0, 1), "y": (["batch", "time", 3], 0, 1)}),
    ("h0", "chunk", {"h0": ("h0", "hn", "f", [2, "batch", 5], 1)},
     {"x": (["time", "batch", 4], 1, 0), "y": (["time", "batch", 5], 1, 0)}),
]


@pytest.mark.parametrize("name, mode, states, tensors", CASES, ids=[c[0] for c in CASES])
def test_pairs_and_axes_follow_the_rule(files, name, mode, states, tensors):
    c = _contract(files, name)
    assert c.mode == mode
    assert {s.name: (s.input, s.output, list(s.shape), s.batch_axis) for s in c.states} == {
        k: (v[0], v[1], v[3], v[4]) for k, v in states.items()}
    rules = {p["name"]: p["rule"][0] for p in inferred_record(c)["pairs"]}
    assert rules == {k: v[2] for k, v in states.items()}
    specs = {t.name: (list(t.shape), t.batch_axis, t.time_axis) for t in (*c.inputs, *c.outputs)}
    for tensor, want in tensors.items():
        assert specs[tensor] == want, tensor


def test_the_rule_pairs_each_documented_name_form():
    """One graph with a pair for each rule a-f, plus names that must not pair."""
    f = onnx.TensorProto.FLOAT
    pairs = {"h": "hn", "cache": "new_cache", "conv_in": "conv_out", "past_key_values.0.key": "present.0.key",
             "state_in.gru.h": "state_out.gru.h", "enc_c0": "enc_cn"}
    names_in = ["x", *pairs, "other"]
    names_out = ["y", *pairs.values(), "other_result", "h_out"]
    nodes = [onnx.helper.make_node("Identity", [i], [o]) for i, o in
             zip(names_in, ["y", *pairs.values(), "other_result"])]
    nodes.append(onnx.helper.make_node("Identity", ["x"], ["h_out"]))
    vi = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(nodes, "g", [vi(n, f, ["B", 3]) for n in names_in],
                                   [vi(n, f, ["B", 3 if n != "h_out" else 4]) for n in names_out])
    c = infer_contract(onnx.helper.make_model(graph))
    assert {s.input: s.output for s in c.states} == pairs
    assert [s.name for s in c.states] == ["h", "cache", "conv", "past_key_values.0.key", "gru.h", "enc_c0"]
    assert [p["rule"][0] for p in inferred_record(c)["pairs"]] == list("abcdef")
    assert [t.name for t in c.inputs] == ["x", "other"] and [t.name for t in c.outputs] == ["y", "other_result",
                                                                                          "h_out"]


def test_nothing_pairable_is_one_sentence(files):
    for name, ins, outs in [("stateless", "x", "y"), ("memory", "x, mem", "y, mem_next")]:
        with pytest.raises(ContractError) as e:
            _contract(files, name)
        text = str(e.value)
        assert text == (f"{name} has no edgernn metadata (metadata_props 'edgernn.format' is missing) and no state "
                        f"pair was found by name among its inputs ({ins}) and outputs ({outs}); name each pair with "
                        "--state-pair IN=OUT (state_pairs={IN: OUT} in Python)")


@pytest.mark.parametrize("pairs, message", [
    ({"hidden": "stateN"}, "silero has no graph input 'hidden' (--state-pair hidden=stateN); its inputs are input, "
                           "state, sr"),
    ({"state": "state_next"}, "silero has no graph output 'state_next' (--state-pair state=state_next); its outputs "
                              "are output, stateN"),
    ({"sr": "stateN"}, "silero cannot pair 'sr' with 'stateN': the input is int64 [] but the output is float32 "
                       "[2, batch, 8]; a state pair needs the same dtype and shape"),
    ({"input": "stateN"}, "silero cannot pair 'input' with 'stateN': the input is float32 [batch, 16] but the output "
                          "is float32 [2, batch, 8]"),
    ({"state": "stateN", "input": "stateN"}, "silero cannot pair 'input' with 'stateN': that output already pairs "
                                             "with 'state'"),
])
def test_bad_pairs_are_one_sentence(files, pairs, message):
    with pytest.raises(ContractError) as e:
        _contract(files, "silero", pairs=pairs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_given_pairs_replace_the_rule(files):
    c = _contract(files, "icefall", pairs={"state0": "new_state0"})
    assert [(s.input, s.output) for s in c.states] == [("state0", "new_state0")]
    assert inferred_record(c)["pairs"][0]["rule"] == "given"
    assert [t.name for t in c.inputs] == ["x", "state1"] and [t.name for t in c.outputs] == ["y", "new_state1"]
    c = _contract(files, "memory", pairs={"mem": "mem_next"})
    assert [(s.name, list(s.shape), s.batch_axis) for s in c.states] == [("mem", ["batch", 6], 0)]
    assert c.mode == "step"


def test_axes_and_mode_can_be_overridden(files):
    c = _contract(files, "silero", mode="chunk", batch_axes={"state": None, "output": None})
    assert c.mode == "chunk" and c.states[0].batch_axis is None and c.outputs[0].batch_axis is None
    c = _contract(files, "icefall", time_axes={"y": None})
    assert c.outputs[0].time_axis is None and c.outputs[0].shape == ("batch", "T", 3)
    with pytest.raises(ContractError, match="time axis 5 of 'x' is outside its 3 axes"):
        _contract(files, "icefall", time_axes={"x": 5})
    with pytest.raises(ContractError, match="has no tensor 'z' to set an axis of"):
        _contract(files, "icefall", batch_axes={"z": 0})
    with pytest.raises(ContractError, match="mode 'stream' is unknown"):
        _contract(files, "icefall", mode="stream")


# ---------------------------------------------------------------- streaming against PyTorch


def _torch_windows(module, windows, state, sr):
    outs = []
    with torch.no_grad():
        for w in windows:
            y, state = module(torch.from_numpy(w), state, torch.tensor(sr))
            outs.append(y.numpy())
    return np.stack(outs), state.numpy()


@pytest.mark.parametrize("name, batch", [("silero_fixed", 1), ("silero", 3), ("silero_1layer_fixed", 1)])
def test_silero_like_streams_like_pytorch(files, name, batch):
    module, path = files[name]
    windows = np.random.default_rng(0).standard_normal((9, batch, 16)).astype(np.float32)
    session = StreamingSession(path)
    assert session.contract_from == "inferred" and session.mode == "step"
    y = session.stream(input=windows, sr=np.array(16000))["output"]
    layers = module.rnn.num_layers
    want, state = _torch_windows(module, windows, torch.zeros(layers, batch, 8), 16000)
    np.testing.assert_allclose(y, want, atol=TOL, rtol=0)
    np.testing.assert_allclose(session.state["state"], state, atol=TOL, rtol=0)
    # step by step, sr given on each call, continuing the carried state
    more = np.random.default_rng(1).standard_normal((3, batch, 16)).astype(np.float32)
    got = [session.step(input=w, sr=np.array(8000))["output"] for w in more]
    want, _ = _torch_windows(module, more, torch.from_numpy(state), 8000)
    np.testing.assert_allclose(np.stack(got), want, atol=TOL, rtol=0)


@pytest.mark.parametrize("name, batch, chunk", [("icefall", 2, 3), ("icefall", 1, 1), ("h0", 2, 4)])
def test_chunked_foreign_files_stream_like_pytorch(files, name, batch, chunk):
    module, path = files[name]
    rng = np.random.default_rng(2)
    session = edgernn.open(path)
    if name == "icefall":
        x = rng.standard_normal((batch, 10, 8)).astype(np.float32)
        y = session.stream(x, chunk=chunk)["y"]
        with torch.no_grad():
            want, h, c = module(torch.from_numpy(x), torch.zeros(1, batch, 6), torch.zeros(1, batch, 6))
        finals = {"state0": h, "state1": c}
    else:
        x = rng.standard_normal((10, batch, 4)).astype(np.float32)
        y = session.stream(x, chunk=chunk)["y"]
        with torch.no_grad():
            want, hn = module(torch.from_numpy(x), torch.zeros(2, batch, 5))
        finals = {"h0": hn}
    np.testing.assert_allclose(y, want.numpy(), atol=TOL, rtol=0)
    for key, value in finals.items():
        np.testing.assert_allclose(session.state[key], value.numpy(), atol=TOL, rtol=0)


def test_given_pairs_stream_like_pytorch(files):
    module, path = files["memory"]
    x = np.random.default_rng(3).standard_normal((7, 2, 4)).astype(np.float32)
    session = StreamingSession(Path(path).read_bytes(), state_pairs={"mem": "mem_next"})
    y = session.stream(x=x)["y"]
    mem, want = torch.zeros(2, 6), []
    with torch.no_grad():
        for frame in x:
            out, mem = module(torch.from_numpy(frame), mem)
            want.append(out.numpy())
    np.testing.assert_allclose(y, np.stack(want), atol=TOL, rtol=0)
    np.testing.assert_allclose(session.state["mem"], mem.numpy(), atol=TOL, rtol=0)
    with pytest.raises(ContractError, match="no state pair was found by name"):
        StreamingSession(path)


# ---------------------------------------------------------------- stamping the contract


@pytest.mark.parametrize("name", ["silero", "icefall"])
def test_with_contract_makes_an_edgernn_file(files, name, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    module, path = files[name]
    model = onnx.load(str(path))
    before = model.SerializeToString()
    contract = infer_contract(model)
    stamped = with_contract(model, contract)
    assert model.SerializeToString() == before  # the input is not changed
    onnx.checker.check_model(stamped)
    props = {p.key: p.value for p in stamped.metadata_props}
    jsonschema.validate(decoded_metadata(props), json.loads(SCHEMA_PATH.read_text()))
    read = read_metadata(stamped)
    names = [s.name for s in contract.states]
    assert [s.input for s in read.states] == [f"state_in.{n}" for n in names]
    assert [i.name for i in stamped.graph.input] == [t.name for t in contract.inputs] + [s.input for s in read.states]
    assert [o.name for o in stamped.graph.output] == [t.name for t in contract.outputs] + [s.output for s in read.states]
    graph_dims = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
                  for v in [*stamped.graph.input, *stamped.graph.output]}
    for spec in (*read.inputs, *read.outputs):
        assert graph_dims[spec.name] == list(spec.shape)
    record = json.loads(props[INFERRED_KEY])  # the original names stay on record
    assert [(p["input"], p["output"]) for p in record["pairs"]] == [(s.input, s.output) for s in contract.states]
    out = tmp_path / "stamped.onnx"
    onnx.save(stamped, str(out))
    session, foreign = StreamingSession(out), StreamingSession(path)
    assert session.contract_from == "metadata"
    rng = np.random.default_rng(4)
    if name == "silero":
        feeds = {"input": rng.standard_normal((5, 2, 16)).astype(np.float32), "sr": np.array(16000)}
        chunk = 1
    else:
        feeds, chunk = {"x": rng.standard_normal((2, 9, 8)).astype(np.float32)}, 4
    a, b = session.stream(chunk=chunk, **feeds), foreign.stream(chunk=chunk, **feeds)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=TOL, rtol=0)
    for key, value in session.state.items():
        np.testing.assert_allclose(value, foreign.state[key], atol=TOL, rtol=0)


def test_with_contract_refuses_a_contract_of_another_graph(files):
    contract = _contract(files, "silero")
    with pytest.raises(ContractError, match="has no graph input 'input', which the contract names as a data input"):
        with_contract(onnx.load(str(files["icefall"][1])), contract)


# ---------------------------------------------------------------- the CLI


def _invoke(*args):
    return invoke(*args, env={"COLUMNS": "200"})  # wide: the tables' text in one line




def test_cli_info_says_the_contract_was_inferred(files):
    result = _invoke("info", files["silero"][1])
    assert result.exit_code == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "no edgernn metadata, contract inferred from the graph, step mode" in text
    assert "inferred: state state = state -> stateN (rule a: output = input + N" in text
    info = json.loads(_invoke("info", files["icefall"][1], "--json").stdout)
    assert info["contract_from"] == "inferred" and info["format"] is None and info["mode"] == "chunk"
    assert [(s["input"], s["output"]) for s in info["states"]] == [("state0", "new_state0"), ("state1", "new_state1")]
    assert info["inferred"]["time"] == "symbol 'T' of the data inputs names time"
    assert INFERRED_KEY not in info["metadata"]


def test_cli_info_with_state_pairs(files):
    result = _invoke("info", files["memory"][1], "--json", "--state-pair", "mem=mem_next")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["states"][0]["input"] == "mem" and info["inferred"]["pairs"][0]["rule"] == "given"
    text = " ".join(_invoke("info", files["memory"][1], "--state-pair", "mem=mem_next").stdout.split())
    assert "inferred: state mem = mem -> mem_next (given with --state-pair)" in text


@pytest.mark.parametrize("args, message", [
    (["info", "memory"], "no state pair was found by name among its inputs (x, mem) and outputs (y, mem_next); "
                         "name each pair with --state-pair IN=OUT"),
    (["info", "memory", "--state-pair", "mem=next"], "has no graph output 'next' (--state-pair mem=next)"),
    (["run", "memory", "-d", "x.npy"], "no state pair was found by name"),
])
def test_cli_foreign_errors_are_one_sentence(files, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    np.save("x.npy", np.zeros((3, 2, 4), np.float32))
    args = [str(files[a][1]) if a in files else a for a in args]
    result = _invoke(*args)
    assert result.exit_code == 1
    err = result.stderr.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err


def test_cli_run_on_foreign_files(files, tmp_path):
    module, path = files["silero"]
    windows = np.random.default_rng(5).standard_normal((6, 2, 16)).astype(np.float32)
    np.save(tmp_path / "w.npy", windows)
    np.save(tmp_path / "sr.npy", np.array(16000))
    result = _invoke("run", path, "-d", f"input={tmp_path / 'w.npy'}", "-d", f"sr={tmp_path / 'sr.npy'}",
                     "-o", tmp_path / "y.npy", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["frames"], report["calls"], report["final_state"]) == (6, 6, {"state": [2, 2, 8]})
    want, _ = _torch_windows(module, windows, torch.zeros(2, 2, 8), 16000)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, atol=TOL, rtol=0)
    # a file no rule pairs, with --state-pair
    np.save(tmp_path / "x.npy", np.zeros((4, 2, 4), np.float32))
    result = _invoke("run", files["memory"][1], "-d", tmp_path / "x.npy", "--state-pair", "mem=mem_next", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["final_state"] == {"mem": [2, 6]}
