"""The shared metadata fixtures (tests/fixtures/metadata) through the Python readers.

Each case in ``cases/*.json`` is metadata_props (``props``), a contract sidecar (``sidecar`` or
``sidecar_text``) or a model file (``file``, with ``state_pairs``), and the outcome both runtimes
must give: the contract as JSON (with where it came from, and start values), or an error that
contains a sentence. Python opens each with ``ModelFile`` / ``edgernn.contract``; the JavaScript
runtime runs the same cases (runtimes/web/test/metadata.js, run by tests/runtimes/test_web.py).
Valid contracts follow ``metadata.schema.json``, and every refused document that decodes is one
the schema refuses too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import onnx
import pytest

from edgernn.contract import (
    SCHEMA_PATH,
    ContractError,
    decoded_metadata,
    read_contract_json,
)
from edgernn.errors import EdgernnError
from edgernn.modelfile import ModelFile

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "metadata"
FILES = FIXTURES / "files"
CASES = {p.stem: json.loads(p.read_text()) for p in sorted((FIXTURES / "cases").glob("*.json"))}
KINDS = ("props", "sidecar", "sidecar_text", "file")


def _params() -> list[Any]:
    return [pytest.param(name, id=name) for name in CASES]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _graph_declared_by(props: dict) -> onnx.GraphProto:
    """A graph with the inputs and outputs the metadata declares (the readers check a contract
    against its graph); none where the metadata does not decode (the reader refuses it first)."""
    from onnx import TensorProto, helper

    def value(entry: Any) -> onnx.ValueInfoProto | None:
        try:
            dtype = TensorProto.BFLOAT16 if entry["dtype"] == "bfloat16" else \
                helper.np_dtype_to_tensor_dtype(np.dtype(entry["dtype"]))
            return helper.make_tensor_value_info(entry["name"], dtype, [d if isinstance(d, int) else str(d)
                                                                        for d in entry["shape"]])
        except Exception:  # a malformed entry: the reader says so before it looks at the graph
            return None

    try:
        d = decoded_metadata(props)
    except ContractError:
        return onnx.helper.make_graph([], "g", [], [])
    states_in = [{**s, "name": s.get("input")} for s in d["states"] if isinstance(s, dict)]
    states_out = [{**s, "name": s.get("output")} for s in d["states"] if isinstance(s, dict)]
    inputs = [v for v in map(value, [*d["inputs"], *states_in]) if v is not None]
    outputs = [v for v in map(value, [*d["outputs"], *states_out]) if v is not None]
    return onnx.helper.make_graph([], "g", inputs, outputs)


def _open(case: dict, tmp_path: Path) -> dict[str, Any]:
    """What Python makes of the case: ``{"contract", "contract_from", "start_values"}``."""
    if "props" in case:  # metadata_props of a graph whose inputs and outputs are what they declare
        model = onnx.helper.make_model(_graph_declared_by(case["props"]))
        for key, value in case["props"].items():
            model.metadata_props.add(key=key, value=value)
        mf = ModelFile.open(model, source="model.onnx")
    elif "file" in case:
        mf = ModelFile.open(FILES / case["file"], state_pairs=case.get("state_pairs"))
    else:
        path = tmp_path / "model.edgernn.json"
        path.write_text(case["sidecar_text"] if "sidecar_text" in case else json.dumps(case["sidecar"]))
        return {"contract": read_contract_json(path, "model.edgernn.json").to_json()}
    starts = mf.start_values()  # the contract first, then the stored start values, as a runtime opens a file
    return {"contract": mf.contract.to_json(), "contract_from": mf.contract_from,
            "start_values": {k: {"shape": list(v.shape), "data": v.ravel().tolist()} for k, v in starts.items()}}


@pytest.mark.parametrize("name", _params())
def test_python_reads_each_fixture_as_it_expects(name, tmp_path):
    case = CASES[name]
    expect = case["expect"]
    if "error" in expect:
        with pytest.raises((ContractError, EdgernnError)) as info:
            _open(case, tmp_path)
        text = str(info.value)
        assert expect["error"] in text, f"{name}: {text!r}"
        assert "\n" not in text
        if "file" not in case:  # one sentence that names what it is about
            assert ("model.onnx " if "props" in case else "model.edgernn.json ") in text, text
        return
    got = _open(case, tmp_path)
    assert got["contract"] == expect["contract"]
    if "contract_from" in expect:
        assert got["contract_from"] == expect["contract_from"]
    for state, want in expect.get("start_values", {}).items():
        assert got["start_values"][state]["shape"] == want["shape"]
        np.testing.assert_array_equal(np.float32(got["start_values"][state]["data"]), np.float32(want["data"]))
    assert set(got.get("start_values", {})) == set(expect.get("start_values", {}))


def _decoded(case: dict) -> Any:
    """The document the schema describes, where the case has one that decodes (else None)."""
    if "props" in case:
        try:
            return decoded_metadata(case["props"])
        except ContractError:
            return None
    if "sidecar" in case:
        return case["sidecar"]
    return None


@pytest.mark.parametrize("name", list(CASES))
def test_the_schema_agrees_with_each_fixture(name, validator):
    """Valid metadata and sidecars follow the schema (before and after reading); refused ones that
    decode break it (the readers check no less than the schema, and say what)."""
    case = CASES[name]
    expect = case["expect"]
    decoded = _decoded(case)
    if "error" in expect:
        if decoded is not None:
            assert list(validator.iter_errors(decoded)), f"{name}: the schema accepts what the readers refuse"
        return
    if expect.get("contract_from") in (None, "metadata", "sidecar"):
        validator.validate(expect["contract"])
        if decoded is not None:
            validator.validate(decoded)


def test_every_fixture_says_what_it_is_and_what_to_expect():
    assert len(CASES) >= 30
    for name, case in CASES.items():
        assert case.get("description"), name
        assert [k for k in KINDS if k in case] and len([k for k in KINDS if k in case]) == 1, name
        for expect in (case["expect"], case.get("js_expect", {"error": "-"})):
            assert ("error" in expect) != ("contract" in expect), name
        if "file" in case:
            assert (FILES / case["file"]).is_file(), f"{case['file']} is missing: run tests/fixtures/metadata/make.py"
    kinds = {k for case in CASES.values() for k in KINDS if k in case}
    assert kinds == set(KINDS)
    assert any(c.get("file", "").endswith(".ort") and c["expect"].get("contract_from") == "sidecar"
               for c in CASES.values())


def test_the_fixture_files_are_what_make_py_builds(tmp_path):
    """The committed .onnx files and contract sidecars are make.py's output (the .ort files depend on
    the onnxruntime version, the .npz files on the clock; their values are checked by the cases)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("metadata_fixtures_make", FIXTURES / "make.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    built = {p.name for p in make.build(tmp_path)}
    assert built == {p.name for p in FILES.iterdir()}
    for name in sorted(built):
        if name.endswith((".onnx", ".edgernn.json")):
            assert (tmp_path / name).read_bytes() == (FILES / name).read_bytes(), f"{name}: run make.py again"
    for name in sorted(n for n in built if n.endswith(".npz")):
        with np.load(tmp_path / name) as new, np.load(FILES / name) as old:
            assert sorted(new.files) == sorted(old.files)
            for k in new.files:
                np.testing.assert_array_equal(new[k], old[k])
