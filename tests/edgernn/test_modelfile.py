"""ModelFile: one place that opens a file and resolves its contract, for every command and runtime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import edgernn
from edgernn.contract import ContractError, read_metadata
from edgernn.modelfile import ModelFile, ModelFileError
from edgernn.runtimes import StreamingSession
from conftest import invoke


@pytest.fixture(scope="module")
def gru(tmp_path_factory):
    torch.manual_seed(0)
    module = nn.GRU(3, 5, batch_first=True).eval()
    path = tmp_path_factory.mktemp("modelfile") / "gru.onnx"
    assert edgernn.export(module, path, verify=False).path
    return module, path


def _foreign(path, tmp_path):
    """The same file as another exporter would write it: no metadata, its own state names."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for v in [*model.graph.input, *model.graph.output]:
        v.name = {"state_in.gru.h": "h0", "state_out.gru.h": "hn"}.get(v.name, v.name)
    for node in model.graph.node:
        node.input[:] = [{"state_in.gru.h": "h0"}.get(n, n) for n in node.input]
        node.output[:] = [{"state_out.gru.h": "hn"}.get(n, n) for n in node.output]
    out = tmp_path / "foreign.onnx"
    onnx.save(model, str(out))
    return out


def _torch_stream(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x))[0].numpy()


def test_one_contract_from_a_path_bytes_or_proto(gru):
    module, path = gru
    by_path = ModelFile.open(path)
    assert by_path.contract_from == "metadata" and by_path.source == str(path)
    assert ModelFile.open(path.read_bytes()).contract == by_path.contract
    assert ModelFile.open(onnx.load(str(path))).contract == by_path.contract
    assert ModelFile.open(by_path) is by_path  # nothing new to resolve
    assert [s.name for s in by_path.contract.states] == ["gru.h"]
    x = np.random.default_rng(0).standard_normal((2, 9, 3)).astype(np.float32)
    y = StreamingSession(by_path).stream(x, chunk=4)["y"]
    np.testing.assert_allclose(y, _torch_stream(module, x), atol=1e-5, rtol=0)


def test_foreign_file_is_inferred_and_stamped(gru, tmp_path):
    module, path = gru
    foreign = ModelFile.open(_foreign(path, tmp_path))
    assert foreign.contract_from == "inferred"
    assert [(s.input, s.output) for s in foreign.contract.states] == [("h0", "hn")]
    assert foreign.inferred["pairs"][0]["rule"].startswith("f:")
    assert "has no edgernn metadata; state pairs found by the naming rule" in foreign.foreign_note
    saved = foreign.save(tmp_path / "stamped.onnx")  # an edgernn file now: its states renamed
    again = ModelFile.open(saved)
    assert again.contract_from == "metadata"
    assert [(s.input, s.output) for s in again.contract.states] == [("state_in.h0", "state_out.h0")]
    x = np.random.default_rng(1).standard_normal((1, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(StreamingSession(again).stream(x, chunk=3)["y"], _torch_stream(module, x),
                               atol=1e-5, rtol=0)


def test_given_pairs_override_the_metadata_and_must_exist(gru):
    _, path = gru
    given = ModelFile.open(path, state_pairs={"state_in.gru.h": "state_out.gru.h"})
    assert given.contract_from == "inferred" and given.inferred["pairs"][0]["rule"] == "given"
    with pytest.raises(ContractError, match="no graph input 'h0'"):
        ModelFile.open(path, state_pairs={"h0": "hn"}).contract
    contract = ModelFile.open(path).contract
    assert ModelFile.open(path, contract=contract).contract_from == "given"
    wrong = type(contract)(contract.mode, contract.inputs, contract.outputs,
                           (type(contract.states[0])("g", (1, "batch", 5), "float32", 1),))
    with pytest.raises(ContractError, match="has no graph input 'state_in.g'"):
        ModelFile.open(path, contract=wrong).contract


def test_start_values_come_from_the_graph_and_are_checked(gru, tmp_path):
    _, path = gru
    model = onnx.load(str(path))
    props = {p.key: p for p in model.metadata_props}
    states = json.loads(props["edgernn.states"].value)
    states[0]["init"] = {"initializer": "h.start"}
    props["edgernn.states"].value = json.dumps(states)
    start = np.arange(5, dtype=np.float32).reshape(1, 1, 5)
    model.graph.initializer.append(onnx.numpy_helper.from_array(start, "h.start"))
    stored = tmp_path / "stored.onnx"
    onnx.save(model, str(stored))
    mf = ModelFile.open(stored)
    np.testing.assert_array_equal(mf.start_values()["gru.h"], start)
    np.testing.assert_array_equal(StreamingSession(mf).initial_state(3)["gru.h"], np.repeat(start, 3, axis=1))
    model.graph.initializer[-1].CopyFrom(onnx.numpy_helper.from_array(np.zeros((1, 1, 4), np.float32), "h.start"))
    onnx.save(model, str(stored))
    with pytest.raises(ContractError, match=r"has shape \[1, 1, 4\]; expected \[1, 1, 5\]"):
        ModelFile.open(stored).start_values()


def test_the_graph_is_parsed_once_and_only_when_asked(gru, tmp_path):
    _, path = gru
    mf = ModelFile.open(path)
    assert mf._proto is None  # opening reads nothing
    assert mf.proto is mf.proto and mf.ir is mf.ir
    assert read_metadata(mf.stamped()) == mf.contract
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf")
    lazy = ModelFile.open(junk)  # a path: nothing is read yet
    with pytest.raises(ModelFileError, match="junk.onnx is not an ONNX model"):
        lazy.contract
    with pytest.raises(ModelFileError, match="does not exist or is not a file"):
        ModelFile.open(tmp_path / "missing.onnx")
    with pytest.raises(ModelFileError, match="expected an ONNX file path, its bytes or an onnx.ModelProto"):
        ModelFile.open(3.5)


def _with_states(path, tmp_path, change) -> object:
    """``path`` with its edgernn.states entry changed by ``change(states)``, as a stranger could write it."""
    model = onnx.load(str(path))
    props = {p.key: p for p in model.metadata_props}
    states = json.loads(props["edgernn.states"].value)
    change(states)
    props["edgernn.states"].value = json.dumps(states)
    out = tmp_path / "claimed.onnx"
    onnx.save(model, str(out))
    return out


@pytest.mark.parametrize("change, message", [
    (lambda s: s[0].update(shape=[1, "batch", 100_000_000_000]),
     r"declares state 'gru.h' of shape \[1, batch, 100000000000\]: 373 GiB per stream, over the limit of 1 GiB"),
    (lambda s: s[0].update(dtype="float64"), r"declares 'state_in.gru.h' \(state 'gru.h'\) as float64, but the graph "
                                             "has it as float32"),
    (lambda s: s[0].update(shape=[1, "batch", 6]), r"with shape \[1, batch, 6\], but the graph has \[1, batch, 5\] "
                                                   r"\(axis 2 is 5\)"),
    (lambda s: s[0].update(shape=["batch", 5]), r"with shape \[batch, 5\], but the graph has \[1, batch, 5\] \(3 axes\)"),
    (lambda s: s[0].update(name="g", input="state_in.g", output="state_out.g"), "has no graph input 'state_in.g'"),
], ids=["huge", "dtype", "size", "rank", "name"])
def test_metadata_that_disagrees_with_the_graph_is_one_sentence(gru, tmp_path, change, message):
    claimed = _with_states(gru[1], tmp_path, change)
    with pytest.raises(ContractError, match=message) as e:
        ModelFile.open(claimed).contract
    assert "\n" not in str(e.value)
    with pytest.raises(ContractError, match=message):
        StreamingSession(claimed)  # before onnxruntime or numpy allocate anything


def test_the_state_size_limit_can_be_raised(gru, tmp_path):
    claimed = _with_states(gru[1], tmp_path, lambda s: None)
    with pytest.raises(ContractError, match="over the limit of 9.31e-09 GiB"):
        ModelFile.open(claimed, max_state_bytes=10).contract  # 5 floats: 20 bytes per stream
    assert ModelFile.open(claimed, max_state_bytes=20).contract.states[0].name == "gru.h"


def test_run_on_a_file_that_claims_a_huge_state_exits_1_with_the_sentence(gru, tmp_path):
    claimed = _with_states(gru[1], tmp_path, lambda s: s[0].update(shape=[1, "batch", 100_000_000_000]))
    np.save(tmp_path / "x.npy", np.zeros((1, 4, 3), np.float32))
    result = invoke("run", claimed, "-d", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert result.exit_code == 1 and "373 GiB per stream, over the limit of 1 GiB" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "y.npy").exists()
