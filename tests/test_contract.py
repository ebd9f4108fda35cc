"""The state I/O contract: exported files follow the JSON schema, the contract round-trips through
metadata_props, bad metadata is refused with a sentence, and the documented runtime works."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
import torch
from torch import nn

import edgernn
from edgernn.architectures import FrameClassifier
from edgernn.contract import (
    SCHEMA_PATH,
    Contract,
    ContractError,
    StateSpec,
    TensorSpec,
    decoded_metadata,
    read_metadata,
    write_metadata,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "state-contract.md"


def _gru() -> nn.Module:
    torch.manual_seed(0)
    return nn.GRU(8, 16, num_layers=2, batch_first=True)


def _lstm_with_frontend() -> nn.Module:
    torch.manual_seed(1)
    return FrameClassifier(n_features=6, hidden_size=10, n_classes=3, cell="lstm", frontend_size=12)


MODELS = {"gru": _gru, "lstm_frontend": _lstm_with_frontend}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[nn.Module, Path]]:
    """Each model of MODELS exported in chunk mode: name -> (PyTorch module, ONNX path)."""
    folder = tmp_path_factory.mktemp("contract")
    out = {}
    for name, make in MODELS.items():
        model = make().eval()
        path = folder / f"{name}.onnx"
        report = edgernn.export(model, output=path)
        assert report.passed and report.path == str(path)
        assert read_metadata(onnx.load(str(path))) == report.contract  # what the report says is in the file
        out[name] = (model, path)
    return out


@pytest.fixture(scope="module")
def schema() -> dict:
    value = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(value)
    return value


def _props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _torch_output(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        y = model(torch.from_numpy(x))
    return (y[0] if isinstance(y, tuple) else y).numpy()


# ---------------------------------------------------------------- schema


@pytest.mark.parametrize("name", list(MODELS))
def test_exported_metadata_follows_the_schema(exported, schema, name):
    _, path = exported[name]
    decoded = decoded_metadata(_props(path), str(path))
    jsonschema.validate(decoded, schema, cls=jsonschema.Draft202012Validator)
    assert decoded["format"] == "1" and decoded["mode"] == "chunk"
    for spec in decoded["inputs"] + decoded["outputs"]:
        assert spec["shape"][spec["batch_axis"]] == "batch"
        assert spec["shape"][spec["time_axis"]] == "time"
    for spec in decoded["states"]:
        assert spec["shape"][spec["batch_axis"]] == "batch"


@pytest.mark.parametrize("name", list(MODELS))
def test_graph_io_matches_the_metadata(exported, name):
    _, path = exported[name]
    model = onnx.load(str(path))
    contract = read_metadata(model, str(path))

    def dims(vi):
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]

    graph_in = {i.name: i for i in model.graph.input}
    graph_out = {o.name: o for o in model.graph.output}
    assert list(graph_in) == [t.name for t in contract.inputs] + [s.input for s in contract.states]
    assert list(graph_out) == [t.name for t in contract.outputs] + [s.output for s in contract.states]
    for t in contract.inputs:
        assert dims(graph_in[t.name]) == list(t.shape)
    for t in contract.outputs:
        assert dims(graph_out[t.name]) == list(t.shape)
    for s in contract.states:
        assert dims(graph_in[s.input]) == dims(graph_out[s.output]) == list(s.shape)
        assert graph_in[s.input].type.tensor_type.elem_type == graph_out[s.output].type.tensor_type.elem_type


def test_lstm_with_frontend_states_are_named_by_module_path(exported):
    contract = read_metadata(onnx.load(str(exported["lstm_frontend"][1])))
    assert [s.name for s in contract.states] == ["core.c", "core.h"]
    assert [s.shape for s in contract.states] == [(1, "batch", 10), (1, "batch", 10)]
    assert [t.shape for t in contract.inputs] == [("batch", "time", 6)]
    assert [t.shape for t in contract.outputs] == [("batch", "time", 3)]


def _valid_decoded() -> dict:
    return {
        "format": "1", "mode": "chunk",
        "inputs": [{"name": "x", "shape": ["batch", "time", 8], "dtype": "float32", "batch_axis": 0, "time_axis": 1}],
        "outputs": [{"name": "y", "shape": ["batch", "time", 4], "dtype": "float32", "batch_axis": 0,
                     "time_axis": 1}],
        "states": [{"name": "gru.h", "input": "state_in.gru.h", "output": "state_out.gru.h",
                    "shape": [1, "batch", 4], "dtype": "float32", "batch_axis": 1, "init": "zeros"}],
    }


_DELETE = object()


def _set(d: dict, path: str, value) -> None:
    *parents, last = path.split("/")
    for p in parents:
        d = d[int(p)] if p.isdigit() else d[p]
    if value is _DELETE:
        del d[last]
    else:
        d[last] = value


@pytest.mark.parametrize("path, value", [
    ("format", "2"),
    ("mode", "stream"),
    ("inputs", []),
    ("states/0/input", "h_in"),
    ("states/0/output", "state_in.gru.h"),
    ("states/0/shape", [0, "batch", 4]),
    ("states/0/init", "ones"),
    ("states/0/init", {"initializer": ""}),
    ("states/0/dtype", "float"),
    ("states/0/batch_axis", _DELETE),
    ("inputs/0/time_axis", -1),
    ("inputs/0/shape", "batch,time,8"),
    ("outputs/0/extra", 1),
    ("inputs/0/frame_multiple", 0),
    ("inputs/0/frame_multiple", 1.5),
    ("outputs/0/delay", -1),
    ("outputs/0/delay", "1"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_schema_rejects_what_the_contract_does_not_allow(schema, path, value):
    jsonschema.validate(_valid_decoded(), schema, cls=jsonschema.Draft202012Validator)
    bad = _valid_decoded()
    _set(bad, path, value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema, cls=jsonschema.Draft202012Validator)


def test_schema_accepts_a_stored_initial_state_and_step_mode(schema):
    d = _valid_decoded()
    d["mode"] = "step"
    d["inputs"][0].update(shape=["batch", 1, 8])
    d["states"][0]["init"] = {"initializer": "gru.h.init"}
    jsonschema.validate(d, schema, cls=jsonschema.Draft202012Validator)


def test_schema_accepts_a_frame_multiple_and_a_delay(schema):
    d = _valid_decoded()
    d["inputs"][0]["frame_multiple"] = 2
    d["outputs"][0]["delay"] = 1
    jsonschema.validate(d, schema, cls=jsonschema.Draft202012Validator)
    props = {"edgernn.format": "1", "edgernn.mode": "chunk", **{f"edgernn.{k}": json.dumps(d[k])
                                                                 for k in ("inputs", "outputs", "states")}}
    contract = Contract.from_metadata(props)
    assert (contract.inputs[0].frame_multiple, contract.outputs[0].delay) == (2, 1)
    assert (contract.outputs[0].frame_multiple, contract.inputs[0].delay) == (1, 0)
    again = {k: json.loads(v) for k, v in contract.to_metadata().items() if k != "edgernn.format" and
             k != "edgernn.mode"}
    assert again["edgernn.inputs"] == d["inputs"] and again["edgernn.outputs"] == d["outputs"]  # defaults left out
    assert "frame_multiple" not in json.dumps(_handmade().to_metadata())  # nor written where they are default


# ---------------------------------------------------------------- round trip


def _handmade() -> Contract:
    return Contract(
        mode="step",
        inputs=(TensorSpec("frame", ("batch", 40), "float32", 0, None),
                TensorSpec("tokens", ("batch", 1), "int64", 0, 1)),
        outputs=(TensorSpec("logits", ("batch", 5), "float32", 0, None),),
        states=(StateSpec("ntm.memory", (2, "batch", 16, 8), "float32", 1, {"initializer": "ntm.memory.init"}),
                StateSpec("ntm.read", ("batch", 8), "float32", 0)),
        extra={"edgernn.quantization": "int8"},
    )


@pytest.mark.parametrize("which", ["gru", "lstm_frontend", "handmade"])
def test_contract_round_trips_through_metadata(exported, which):
    if which == "handmade":
        contract = _handmade()
    else:
        contract = read_metadata(onnx.load(str(exported[which][1])))
    props = contract.to_metadata()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in props.items())
    assert Contract.from_metadata(props) == contract
    # and through an ONNX file's metadata_props, replacing what was there
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    model.metadata_props.add(key="edgernn.mode", value="sequence")
    model.metadata_props.add(key="author", value="someone")
    write_metadata(model, contract)
    assert read_metadata(model) == contract
    assert sorted(p.key for p in model.metadata_props).count("edgernn.mode") == 1
    assert {p.key: p.value for p in model.metadata_props}["author"] == "someone"


def test_state_spec_names_follow_from_the_state_name():
    s = StateSpec("encoder.rnn.c", (2, "batch", 32), "float32", 1)
    assert (s.input, s.output) == ("state_in.encoder.rnn.c", "state_out.encoder.rnn.c")
    assert s.concrete_shape(3) == (2, 3, 32)
    assert TensorSpec("x", ("time", "batch", 4), "float32", 1, 0).concrete_shape(2, 7) == (7, 2, 4)


# ---------------------------------------------------------------- bad metadata


def _edited(**changes) -> dict[str, str]:
    props = _handmade().to_metadata()
    for key, value in changes.items():
        key = "edgernn." + key
        if value is None:
            del props[key]
        else:
            props[key] = value
    return props


def _states_json(**fields) -> str:
    entry = _handmade().states[1].to_json()
    for k, v in fields.items():
        if v is None:
            del entry[k]
        else:
            entry[k] = v
    return json.dumps([entry])


@pytest.mark.parametrize("props, message", [
    ({}, "has no edgernn metadata (metadata_props 'edgernn.format' is missing)"),
    ({"producer": "someone else"}, "has no edgernn metadata"),
    (_edited(mode=None), "without 'edgernn.mode'"),
    (_edited(states=_states_json(dtype=None)), "entry in edgernn.states (number 0) without the field 'dtype'"),
])
def test_missing_or_garbled_metadata_is_refused_with_a_sentence(props, message):
    """A few here; each kind of malformed metadata, newer format and sidecar is a case of the fixtures that
    Python and JavaScript share (tests/fixtures/metadata, test_metadata_fixtures.py)."""
    with pytest.raises(ContractError) as info:
        Contract.from_metadata(props, "model.onnx")
    text = str(info.value)
    assert text.startswith("model.onnx ")
    assert message in text
    assert "\n" not in text


# ---------------------------------------------------------------- state order


@pytest.mark.parametrize("name", list(MODELS))
def test_state_input_and_output_names_sort_in_the_same_order(exported, name):
    model = onnx.load(str(exported[name][1]))
    ins = [i.name for i in model.graph.input if i.name.startswith("state_in.")]
    outs = [o.name for o in model.graph.output if o.name.startswith("state_out.")]
    assert ins and len(ins) == len(outs)
    # pairs in graph order, and sorting both sides keeps the pairs together
    assert [n.removeprefix("state_in.") for n in ins] == [n.removeprefix("state_out.") for n in outs]
    assert [n.removeprefix("state_in.") for n in sorted(ins)] == [n.removeprefix("state_out.") for n in sorted(outs)]


# ---------------------------------------------------------------- the documented runtime


def _docs_runtime() -> dict:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    block = next(b for b in blocks if "def stream(" in b)
    namespace: dict = {}
    exec(compile(block, str(DOCS), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("name", list(MODELS))
def test_documented_runtime_matches_pytorch(exported, name):
    model, path = exported[name]
    features = 8 if name == "gru" else 6
    x = np.random.default_rng(3).standard_normal((2, 11, features)).astype(np.float32)
    y, state = _docs_runtime()["stream"](str(path), x, 3)
    want = _torch_output(model, x)
    np.testing.assert_allclose(y, want, atol=1e-5, rtol=0)
    if name == "gru":
        with torch.no_grad():
            _, h = model(torch.from_numpy(x))
        np.testing.assert_allclose(state["gru.h"], h.numpy(), atol=1e-5, rtol=0)


def test_docs_show_a_real_export(exported):
    """The metadata example in docs/state-contract.md is what exporting its GRU writes."""
    text = DOCS.read_text()
    props = _props(exported["gru"][1])
    for key in ("edgernn.inputs", "edgernn.outputs", "edgernn.states"):
        assert f"`{key}` | `{props[key]}` |" in text, key
