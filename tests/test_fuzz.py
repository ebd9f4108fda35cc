"""Property-based fuzzing (hypothesis) of what reads untrusted input: the contract's metadata and
JSON readers, ModelFile.open on generated, random and damaged files, the contract inference of
foreign graphs, and the forest validator. The property everywhere: the reader returns, or raises
the project's own error (an ``EdgernnError``) with a one-sentence message; any other exception is a
bug and fails the test. Where a reader returns, what it returned is checked too (round trips,
agreement with a reference)."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from edgernn.architectures.tree import Forest
from edgernn.contract import DTYPES, MODES, Contract, decoded_metadata, read_contract_json, read_metadata
from edgernn.errors import EdgernnError
from edgernn.foreign import infer_contract
from edgernn.modelfile import ModelFile
from edgernn.runtimes.tree import validate_forest

FILES = Path(__file__).parent / "fixtures" / "metadata" / "files"


def fuzz(examples: int):
    """Deterministic settings for CI: a fixed number of examples, no database, no deadline."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.large_base_example])


def one_sentence(e: BaseException) -> None:
    msg = str(e)
    assert isinstance(e, EdgernnError), f"{type(e).__name__} is not an EdgernnError: {msg!r}"
    assert msg.strip(), f"{type(e).__name__} with an empty message"
    assert len(msg.splitlines()) == 1, f"{type(e).__name__} message spans lines: {msg!r}"
    assert "Traceback" not in msg, f"{type(e).__name__} message holds a traceback: {msg!r}"


def outcome(f, *args, **kwargs):
    """``f(*args, **kwargs)``, or the ``EdgernnError`` it raised, checked to be one sentence; any
    other exception propagates (and fails the test)."""
    what = getattr(f, "__name__", "call")
    try:
        result = f(*args, **kwargs)
    except EdgernnError as e:
        one_sentence(e)
        event(f"{what}: {type(e).__name__}")  # --hypothesis-show-statistics: how often each path ran
        return e
    event(f"{what}: returned")
    return result


# ------------------------------------------------------------------------------- JSON values

# strategies are built once (hypothesis draws from a prebuilt strategy faster), and mostly pick
# from lists of values that matter, so that an example costs few draws
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4)
json_values = st.recursive(_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c,
                                                                                          max_size=3), max_leaves=6)
EDGE = st.sampled_from([None, True, False, 0, -1, 1, 2, 2**31, 2**63, 10**30, 10**400, 1.0, 1.5, float("nan"),
                        float("inf"), "", "?", "batch", "time", "zeros", "state_in.", "a\nb", [], {}, [1], [[1]],
                        {"initializer": ""}, {"initializer": "w"}, {"initializer": 1}])
names = st.sampled_from(["x", "y", "gru.h", "a.b", "h\n0", "\u2028", "é", "0", "batch", "state_in.x", " ", "x y",
                         "\x00", "名"]) | st.text(min_size=1, max_size=3)
_DIMS = [1, 2, 3, 8, 2**31, 10**400, "batch", "time", "n", "T", "sym", "\x1e", "é"]
RANKS = st.sampled_from([2, 3, 1, 0])
SHAPE_POOLS = {r: st.sampled_from([list(p) for p in itertools.product(_DIMS, repeat=r)]) for r in range(4)}
AXES = st.integers(-1, 3)
EXTRAS = st.sampled_from([{}, {}, {"frame_multiple": 2}, {"delay": 1}, {"frame_multiple": 3, "delay": 2}])
DTYPE = st.sampled_from(DTYPES)
INIT = st.sampled_from(["zeros", "zeros", {"initializer": "w"}, {"initializer": "a\nb"}])
DICE = st.integers(0, 9)
DEPTHS = st.sampled_from([1, 2, 500, 999, 1000, 1001, 5000, 100_000])  # about Python's recursion limit, and over


def _mutate(draw, d: dict, values=json_values) -> tuple[dict, bool]:
    """``d`` with up to two keys dropped, replaced or set to an edge value (and whether it changed)."""
    d = dict(d)
    changed = False
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from([*d, "other"]))
        action = draw(st.sampled_from(["drop", "random", "edge", "edge"]))
        if action == "drop":
            d.pop(key, None)
        else:
            d[key] = draw(values if action == "random" else EDGE)
        changed = True
    return d, changed


@st.composite
def shapes(draw) -> list:
    shape = list(draw(SHAPE_POOLS[draw(RANKS)]))  # two draws for a shape (a copy: the pool is shared)
    if shape and draw(DICE) == 0:  # one bad dimension (or one that is not, such as 2**63)
        shape[draw(st.integers(0, len(shape) - 1))] = draw(EDGE)
    return shape


def _axis(draw, shape: list):
    axis = draw(AXES)
    return axis if 0 <= axis < len(shape) else None


@st.composite
def tensor_entries(draw) -> dict:
    shape = draw(shapes())
    return {"name": draw(names), "shape": shape, "dtype": draw(DTYPE), "batch_axis": _axis(draw, shape),
            "time_axis": _axis(draw, shape), **draw(EXTRAS)}


@st.composite
def state_entries(draw) -> dict:
    shape = draw(shapes())
    name = draw(names)
    return {"name": name, "input": "state_in." + name, "output": "state_out." + name, "shape": shape,
            "dtype": draw(DTYPE), "batch_axis": _axis(draw, shape), "init": draw(INIT)}


ENTRIES = {"inputs": st.lists(tensor_entries(), max_size=2), "outputs": st.lists(tensor_entries(), max_size=2),
           "states": st.lists(state_entries(), max_size=2)}


@st.composite
def contract_dicts(draw, mutate: bool = True) -> tuple[object, bool]:
    """A contract object (``Contract.to_json``'s layout), perhaps damaged, and whether it is damaged
    (a damaged one may still be valid: a key set to a value it may hold)."""
    if mutate and draw(DICE) == 0:
        return draw(json_values), True
    damaged = False
    entries = {}
    for key, strategy in ENTRIES.items():
        items = []
        for entry in draw(strategy):
            if mutate and draw(DICE) < 2:
                entry, changed = _mutate(draw, entry)
                damaged |= changed
            items.append(entry)
        entries[key] = items
    d = {"format": "1", "mode": draw(st.sampled_from(MODES)), **entries}
    if mutate and draw(DICE) < 2:
        d, changed = _mutate(draw, d)
        damaged |= changed
    damaged |= any(_bad_dim(v) for key in ("inputs", "outputs", "states") if isinstance(d.get(key), list)
                   for e in d[key] if isinstance(e, dict) and isinstance(e.get("shape"), list) for v in e["shape"])
    return d, damaged


def _bad_dim(v) -> bool:
    return not ((isinstance(v, int) and not isinstance(v, bool) and v >= 1) or (isinstance(v, str) and v))


def _round_trips(c: Contract) -> None:
    assert Contract.from_json(json.loads(json.dumps(c.to_json()))) == c
    assert Contract.from_metadata(c.to_metadata()) == c


@fuzz(1500)
@given(contract_dicts())
def test_contract_from_json(case):
    d, damaged = case
    c = outcome(Contract.from_json, d, "the sidecar")
    if not damaged:
        assert isinstance(c, Contract), f"a valid contract was refused: {c}"
    if isinstance(c, Contract):
        _round_trips(c)


@st.composite
def metadata_props(draw) -> tuple[dict, bool]:
    d, damaged = draw(contract_dicts())
    if not isinstance(d, dict):
        d = {"inputs": d}
    props = {"edgernn.format": d.get("format"), "edgernn.mode": d.get("mode")}
    props.update({f"edgernn.{k}": json.dumps(d[k]) for k in ("inputs", "outputs", "states") if k in d})
    props = {k: v if isinstance(v, str) else json.dumps(v) for k, v in props.items()}
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from([*props, "edgernn.other", "other"]))
        damaged = True
        action = draw(st.sampled_from(["drop", "text", "cut", "deep", "bytes"]))
        if action == "drop":
            props.pop(key, None)
        elif action == "text":
            props[key] = draw(st.text(max_size=10))
        elif action == "cut":
            text = props.get(key, "")
            props[key] = text[:draw(st.integers(0, max(len(text) - 1, 0)))]
        elif action == "deep":
            props[key] = draw(st.sampled_from(["[", "{\"a\": ["])) * draw(DEPTHS)
        else:  # protobuf gives a string field that is not UTF-8 as bytes
            props[key.encode() if draw(st.booleans()) else key] = draw(st.binary(max_size=6))
    return props, damaged


@fuzz(700)
@given(metadata_props())
def test_contract_from_metadata(case):
    props, damaged = case
    decoded = outcome(decoded_metadata, props)
    c = outcome(Contract.from_metadata, props)
    if not damaged:
        assert isinstance(c, Contract), f"valid metadata was refused: {c}"
    if isinstance(c, Contract):
        assert isinstance(decoded, dict)
        _round_trips(Contract(c.mode, c.inputs, c.outputs, c.states))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@st.composite
def sidecar_bytes(draw) -> bytes:
    kind = draw(st.sampled_from(["contract", "cut", "random", "deep"]))
    if kind == "random":
        return draw(st.binary(max_size=64))
    if kind == "deep":
        return b"[" * draw(DEPTHS)
    text = json.dumps(draw(contract_dicts())[0]).encode()
    return text[:draw(st.integers(0, len(text)))] if kind == "cut" else text


@fuzz(300)
@given(data=sidecar_bytes())
def test_read_contract_json(folder, data):
    path = folder / "model.edgernn.json"
    path.write_bytes(data)
    c = outcome(read_contract_json, path)
    if isinstance(c, Contract):
        _round_trips(c)


# ------------------------------------------------------------------------------- ModelFile

ELEM = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16,
        "float64": TensorProto.DOUBLE, "int8": TensorProto.INT8, "int16": TensorProto.INT16,
        "int32": TensorProto.INT32, "int64": TensorProto.INT64, "uint8": TensorProto.UINT8,
        "uint16": TensorProto.UINT16, "uint32": TensorProto.UINT32, "uint64": TensorProto.UINT64,
        "bool": TensorProto.BOOL}


def _graph_of(contract: dict) -> tuple[list, list]:
    """Graph inputs and outputs of the tensors a (valid) contract object names."""
    def info(name, entry):  # a size beyond int64 is a symbol in the graph (a symbol takes any size)
        shape = [d if isinstance(d, str) or d < 2**63 else "huge" for d in entry["shape"]]
        return helper.make_tensor_value_info(name, ELEM[entry["dtype"]], shape)
    ins = [info(e["name"], e) for e in contract["inputs"]] + [info(s["input"], s) for s in contract["states"]]
    outs = [info(e["name"], e) for e in contract["outputs"]] + [info(s["output"], s) for s in contract["states"]]
    return ins, outs


def _open_all(model, **kwargs):
    """Open ``model`` and use everything a runtime reads of it; return the contract or the error."""
    mf = outcome(ModelFile.open, model, **kwargs)
    if not isinstance(mf, ModelFile):
        return mf
    def contract():
        return mf.contract

    def metadata():
        return mf.metadata

    def foreign_note():
        return mf.foreign_note

    c = outcome(contract)
    outcome(mf.graph_io)
    outcome(metadata)
    if isinstance(c, Contract):
        outcome(mf.start_values)
        outcome(foreign_note)
    return c


@st.composite
def models_with_metadata(draw) -> tuple[bytes, Contract | None]:
    d, _ = draw(contract_dicts(mutate=False))
    for k, entries in d.items():  # a valid contract whose names are unique, its states starting from zeros
        for j, e in enumerate(entries if isinstance(entries, list) else []):
            e["shape"] = [1 if _bad_dim(v) else v for v in e["shape"]]
            if k == "states":  # (stored start values: tests/edgernn/test_modelfile.py)
                e.update(name=f"{e['name']}{j}", input=f"state_in.{e['name']}{j}", output=f"state_out.{e['name']}{j}",
                         init="zeros")
            else:
                e["name"] = f"{e['name']}.{k}{j}"
    names_ = [e["name"] for e in d["inputs"] + d["outputs"]] + [n for s in d["states"] for n in (s["input"], s["output"])]
    assume(len(set(names_)) == len(names_))
    expected = Contract.from_json(d)
    ins, outs = _graph_of(d)
    if draw(st.integers(0, 2)) == 0:  # the graph disagrees with the contract
        expected = None
        values = draw(st.sampled_from(["ins", "outs"]))
        target = ins if values == "ins" else outs
        if target:
            k = draw(st.integers(0, len(target) - 1))
            what = draw(st.sampled_from(["drop", "dtype", "dim", "rank", "name"]))
            v = target[k]
            if what == "drop":
                del target[k]
            elif what == "dtype":
                v.type.tensor_type.elem_type = draw(st.sampled_from(sorted(ELEM.values()) + [0, 8, 14, 99]))
            elif what == "dim":
                dim = v.type.tensor_type.shape.dim
                if len(dim):
                    dim[draw(st.integers(0, len(dim) - 1))].dim_value = draw(st.sampled_from([0, 1, 7, 2**40]))
            elif what == "rank":
                v.type.tensor_type.shape.dim.add().dim_value = 1
            else:
                v.name = draw(names)
    graph = helper.make_graph([], "g", ins, outs)
    model = helper.make_model(graph)
    props = Contract.from_json(d).to_metadata()
    if draw(st.integers(0, 2)) == 0:  # the metadata is damaged
        expected = None
        props.update(_mutate(draw, {k: v for k, v in props.items()},
                             st.text(max_size=10) | json_values.map(json.dumps))[0])
        for key in ("edgernn.inputs", "edgernn.outputs", "edgernn.states"):
            if key in props and draw(st.integers(0, 4)) == 0:
                entries, _ = draw(contract_dicts())
                props[key] = json.dumps(entries.get(key[8:], entries) if isinstance(entries, dict) else entries)
    onnx.helper.set_model_props(model, {k: v if isinstance(v, str) else json.dumps(v) for k, v in props.items()})
    return model.SerializeToString(), expected


@fuzz(300)
@given(models_with_metadata())
def test_modelfile_reads_generated_metadata(case):
    data, expected = case
    c = _open_all(data)
    if expected is not None:  # the file's own contract is read back (unless a state is over the size limit)
        assert c == expected or "GiB per stream, over the limit" in str(c), f"the file's own contract was refused: {c}"
        assert _open_all(data, max_state_bytes=math.inf) == expected


FIXTURE_FILES = {p.name: p.read_bytes() for p in sorted(FILES.iterdir()) if p.suffix in (".onnx", ".ort")}
# where the fixtures hold text (names, metadata): a byte there that is not UTF-8 reaches the readers
# as a bytes object from protobuf, instead of a str
TEXT_AT = {name: [m.start() for m in re.finditer(rb"[A-Za-z_.]", data)] for name, data in FIXTURE_FILES.items()}


@st.composite
def damaged_files(draw) -> bytes:
    kind = draw(st.sampled_from(["random", "ort", "cut", "flip", "text"]))
    if kind == "random":
        return draw(st.binary(max_size=256))
    if kind == "ort":  # an ORT-format identifier, then garbage
        return draw(st.binary(min_size=4, max_size=4)) + b"ORTM" + draw(st.binary(max_size=256))
    name = draw(st.sampled_from(sorted(FIXTURE_FILES)))
    data = bytearray(FIXTURE_FILES[name])
    if kind == "cut":
        return bytes(data[:draw(st.integers(0, len(data) - 1))])
    if kind == "text":
        data[draw(st.sampled_from(TEXT_AT[name]))] = draw(st.sampled_from([0x80, 0xC0, 0xFF, 0x0A]))
        return bytes(data)
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@fuzz(800)
@given(damaged_files())
def test_modelfile_on_random_and_damaged_bytes(data):
    _open_all(data)


@fuzz(150)
@given(damaged_files())
def test_modelfile_on_damaged_files_by_path(folder, data):
    path = folder / ("model.ort" if data[4:8] == b"ORTM" else "model.onnx")
    path.write_bytes(data)
    _open_all(path)


# ------------------------------------------------------------------------------- foreign graphs

PAIRS = [("h", "hn"), ("state", "stateN"), ("state_in.x", "state_out.x"), ("h0", "hn"), ("c_0", "c_n"),
         ("past_key_values.0.key", "present.0.key"), ("past_x", "present_x"), ("a_in", "a_out"),
         ("a_input", "a_output"), ("hx", "hy"), ("state0", "new_state0"), ("mem", "mem_new"), ("z", "zn"),
         ("", "N"), ("state_in.", "state_out."), ("s\n0", "s\n0N")]
GOOD_ELEM = st.sampled_from([1, 1, 1, 1, 7, 10, 11, 16, 9, 2, 3, 6, 12, 13])
BAD_ELEM = st.sampled_from([0, 8, 14, 17, 23, 99])  # undefined, string, complex, float8, float4, unknown
GRAPH_DIMS = st.sampled_from(
    [1, 2, 3, 16, 1, 2, 3, 16, "batch", "N", "n", "b", "bs", "T", "t", "time", "seq_len", "frames", "L", "l",
     "batch", "N", "T", "time", "s0", "steps", "Batch_Size", None,  # None: a dimension with neither value nor name
     0, -1, -5, 2**31, 2**40, 2**63 - 1, "", "a\nb", "\x1e"])
SHAPES = st.lists(GRAPH_DIMS, max_size=4)
KINDS = st.sampled_from(["tensor"] * 120 + ["no shape", "bad type", "sequence", "map"])  # rare ones last
COUNTS = st.sampled_from([1, 1, 1, 2, 2, 3, 0])


@st.composite
def value_types(draw):
    """(elem_type, dims or None for no shape), or "sequence" / "map" for a value that is not a tensor."""
    kind = draw(KINDS)
    if kind in ("sequence", "map"):
        return kind
    shape = None if kind == "no shape" else draw(SHAPES)
    return draw(BAD_ELEM if kind == "bad type" else GOOD_ELEM), shape


def _value_info(name: str, vtype):
    if vtype == "sequence":
        return helper.make_tensor_sequence_value_info(name, TensorProto.FLOAT, None)
    if vtype == "map":
        return helper.make_value_info(name, helper.make_map_type_proto(TensorProto.INT64,
                                                                       helper.make_tensor_type_proto(1, None)))
    elem, shape = vtype
    v = helper.make_value_info(name, onnx.TypeProto())
    t = v.type.tensor_type
    t.elem_type = elem
    if shape is not None:
        t.shape.SetInParent()
        for d in shape:
            dim = t.shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            elif d is not None:
                dim.dim_param = d
    return v


@st.composite
def foreign_graphs(draw):
    pool = st.sampled_from(["x", "input", "feats", "sr", "y", "output", "logits"]) | st.text(min_size=1, max_size=3)
    ins, outs = [], []
    for _ in range(draw(COUNTS)):  # state pairs by a naming rule, most with one type
        a, b = draw(st.sampled_from(PAIRS))
        t = draw(value_types())
        ins.append((a, t))
        outs.append((b, t if draw(st.integers(0, 4)) else draw(value_types())))
    ins += [(draw(pool), draw(value_types())) for _ in range(draw(COUNTS))]
    outs += [(draw(pool), draw(value_types())) for _ in range(draw(COUNTS))]
    seen: set[str] = set()
    ins = [(n, t) for n, t in ins if not (n in seen or seen.add(n))]  # graph names are unique
    outs = [(n, t) for n, t in outs if not (n in seen or seen.add(n))]
    ins = draw(st.permutations(ins))
    outs = draw(st.permutations(outs))
    nodes = []
    for name, _ in outs:  # some outputs come from an input through a node (for shape inference)
        if ins and draw(st.integers(0, 2)) == 0:
            op = draw(st.sampled_from(["Identity", "Neg", "Relu"]))
            nodes.append(helper.make_node(op, [draw(st.sampled_from([n for n, _ in ins]))], [name]))
    inits = []
    if ins and draw(st.integers(0, 5)) == 0:  # an input that is also an initializer
        inits.append(helper.make_tensor(draw(st.sampled_from([n for n, _ in ins])), TensorProto.FLOAT, [1], [0.0]))
    graph = helper.make_graph(nodes, "g", [_value_info(n, t) for n, t in ins], [_value_info(n, t) for n, t in outs],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    if draw(st.integers(0, 9)) == 0:
        helper.set_model_props(model, {"edgernn.format": "1"})
    names_ = [n for n, _ in ins + outs] + ["other"]
    pairs = None
    if draw(st.integers(0, 3)) == 0:
        pairs = draw(st.dictionaries(st.sampled_from(names_), st.sampled_from(names_), max_size=3))
        pairs = pairs or dict(p for p in PAIRS if p[0] in names_ and p[1] in names_)
    axes = {}
    for key in ("batch_axes", "time_axes"):
        if draw(st.integers(0, 5)) == 0:
            axes[key] = draw(st.dictionaries(st.sampled_from(names_ + [a for a, _ in PAIRS]),
                                             st.none() | st.integers(-2, 4), max_size=2))
    mode = draw(st.none() | st.sampled_from([*MODES, "bogus"])) if draw(st.integers(0, 5)) == 0 else None
    return model, pairs, mode, axes


@fuzz(300)
@given(foreign_graphs())
def test_infer_contract_on_random_graphs(case):
    model, pairs, mode, axes = case
    c = outcome(infer_contract, model, pairs, mode, **axes)
    if isinstance(c, Contract):
        # what was found names the graph's tensors with their dtypes and ranks
        assert c.mode in MODES and c.states
        for spec in (*c.inputs, *c.outputs, *c.states):
            assert spec.dtype in DTYPES and spec.batch_axis in (None, *range(len(spec.shape)))
        if not axes and mode is None and not any(p.key == "edgernn.format" for p in model.metadata_props):
            # ModelFile infers the same contract, and it passes ModelFile's own checks of the graph
            assert _open_all(model, state_pairs=pairs, max_state_bytes=math.inf) == c
    if not isinstance(c, Contract) or not pairs:
        outcome(read_metadata, model)


# ------------------------------------------------------------------------------- forests


def _reference_is_forest(ch: np.ndarray, rt: np.ndarray, n: int) -> bool:
    """The forest rule, node by node, on integer arrays (read as Python ints)."""
    if ch.ndim != 2 or rt.ndim != 1 or ch.shape[0] != n or n == 0 or rt.size == 0:
        return False
    parent: dict[int, int] = {}
    for i in range(n):
        for c in ch[i].tolist():
            if c == -1:
                continue
            if not 0 <= c < i or c in parent:
                return False
            parent[c] = i
    roots = rt.tolist()
    if len(set(roots)) != len(roots) or not all(0 <= r < n and r not in parent for r in roots):
        return False
    return all(i in parent or i in roots for i in range(n))


@st.composite
def forests(draw) -> tuple:
    """``(children, roots, n_nodes, reference)``: a random forest, perhaps damaged, in some array type;
    ``reference`` the integer arrays it holds, or ``None`` where its type cannot hold node indices."""
    n = draw(st.integers(0, 10))
    k = draw(st.integers(0, 3))
    ch = np.full((n, k), -1, dtype=np.int64)
    roots = []
    for i in range(n):  # each node a root or the child of a later node with a free column
        free = [(j, c) for j in range(i + 1, n) for c in range(k) if ch[j, c] == -1]
        if free and draw(st.integers(0, 3)):
            j, c = draw(st.sampled_from(free))
            ch[j, c] = i
        else:
            roots.append(i)
    rt = np.asarray(draw(st.permutations(roots)), dtype=np.int64)
    edge = st.sampled_from([-2, -1, 0, 1, n - 1, n, n + 1, 2**31, -2**63, 2**63 - 1]) | st.integers(-1, n)
    for _ in range(draw(st.integers(0, 2))):
        what = draw(st.sampled_from(["child", "root", "drop_root", "add_root"]))
        if what == "child" and ch.size:
            ch[draw(st.integers(0, n - 1)), draw(st.integers(0, k - 1))] = draw(edge)
        elif what == "root" and rt.size:
            rt[draw(st.integers(0, rt.size - 1))] = draw(edge)
        elif what == "drop_root" and rt.size:
            rt = np.delete(rt, draw(st.integers(0, rt.size - 1)))
        elif what == "add_root":
            rt = np.append(rt, draw(edge))
    if draw(st.integers(0, 9)) == 0:
        ch = draw(st.sampled_from([ch.T, ch.reshape(-1), ch[None], ch[:-1]]))
    if draw(st.integers(0, 9)) == 0:
        n = draw(st.sampled_from([n - 1, n + 1, 0]))
    kind = draw(st.sampled_from(["int64", "int64", "int32", "int16", "int8", "uint8", "uint64", "float32", "bool",
                                 "object", "list", "ragged", "torch"]))
    if kind == "ragged" and ch.ndim == 2 and len(ch) > 1:
        children = ch.tolist()
        children[0] = children[0] + [-1]
        return children, rt.tolist(), n, None
    if kind in ("list", "ragged"):
        return ch.tolist(), rt.tolist(), n, (ch, rt)
    if kind == "torch":
        import torch

        return torch.as_tensor(ch), torch.as_tensor(rt), n, (ch, rt)
    if kind == "object":  # holds no indices, unless it is empty (leaves only)
        return ch.astype(object), rt, n, (ch, rt) if ch.size == 0 else None
    with np.errstate(all="ignore"):  # a cast to a narrower type wraps around: the reference reads what it holds
        cast = ch.astype(kind), rt.astype(kind)
    return cast[0], cast[1], n, cast if kind not in ("float32", "bool") else None


@fuzz(1200)
@given(forests())
def test_validate_forest(case):
    children, roots, n, reference = case
    valid = reference is not None and _reference_is_forest(*reference, n)
    result = outcome(validate_forest, children, roots, n)
    assert (result is None) == valid, f"validate_forest said {result!r}; the reference says valid={valid}"


tree_values = st.integers(0, 20) | st.sampled_from(
    ["+", "3", "4", None, (), 1.5, True, [1.0, 2.0], [0.5, -1.0], [1.0], [1, [2]], [10**400, 1], 2**63, -2**63 - 1,
     {"a": 1}, [[1, 2], [3, 4]], np.int64(3), "a\nb"])
trees = st.recursive(tree_values, lambda c: st.tuples(tree_values) | st.tuples(tree_values, c)
                     | st.tuples(tree_values, c, c), max_leaves=6)


@fuzz(500)
@given(st.lists(trees, max_size=3), st.none() | st.just({"+": 10, "3": 3, "4": 4, 1: 1}),
       st.none() | st.integers(-1, 3))
def test_forest_from_trees(ts, vocab, max_children):
    forest = outcome(Forest.from_trees, ts, vocab=vocab, max_children=max_children)
    if isinstance(forest, Forest):  # what from_trees builds is a forest
        assert outcome(forest.validate) is None
        validate_forest(forest.children, forest.roots, forest.n_nodes)
        assert forest.n_trees == len(ts)


@fuzz(300)
@given(forests(), st.sampled_from(["rows", "rows", "0-d", "empty", "one more", "list"]))
def test_forest_validate(case, x_kind):
    children, roots, _, reference = case
    assume(hasattr(children, "shape") and children.ndim)
    n = children.shape[0]
    x = {"rows": np.zeros((n, 2)), "0-d": np.zeros(()), "empty": np.zeros((0,)), "one more": np.zeros((n + 1, 2)),
         "list": [0] * n}[x_kind]
    result = outcome(Forest(x, children, roots).validate)
    valid = reference is not None and _reference_is_forest(*reference, n) and np.shape(x)[:1] == (n,)
    assert (result is None) == valid, f"Forest.validate said {result!r}; the reference says valid={valid}"
