"""Triton model repositories: config.pbtxt parsed with Triton's own model-config schema (the
``model_config_pb2`` that tritonclient ships), every state pair checked against the graph, and the
repository's model run in onnxruntime the way Triton's ONNX Runtime backend feeds it.

No Triton server runs here; docs/deploy.md says how to start one on the repository."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import edgernn
from edgernn.contract import Contract, StateSpec, TensorSpec, read_metadata, write_metadata
from edgernn.runtimes.triton import (CONTROLS, LAYOUT_FIX, TritonError, _check_pairing_order,
                                     triton_repository)

CONTROL_KINDS = {"START": "CONTROL_SEQUENCE_START", "END": "CONTROL_SEQUENCE_END",
                 "READY": "CONTROL_SEQUENCE_READY", "CORRID": "CONTROL_SEQUENCE_CORRID"}


@pytest.fixture(scope="module")
def pb2():
    """tritonclient's model_config_pb2, loaded from its file: importing the tritonclient.grpc
    package would need grpcio, which the schema itself does not."""
    tritonclient = pytest.importorskip("tritonclient")
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(pb2, report):
    from google.protobuf import text_format

    text = Path(report.config_path).read_text()
    assert text == report.config_text
    return text_format.Parse(text, pb2.ModelConfig())


def type_name(pb2, value: int) -> str:
    return pb2.DataType.Name(value)


# ---------------------------------------------------------------- models


def accumulator(path: Path | None = None, *, metadata: bool = True, names=("x", "state_in.h", "y", "state_out.h"),
                mode: str = "chunk") -> onnx.ModelProto:
    """By hand: x [batch, time, 4], state h [batch, 3]; xw = x @ W; y = xw + h; h' = h + sum_t xw."""
    x, h_in, y, h_out = names
    w = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5) / 10
    nodes = [helper.make_node("MatMul", [x, "W"], ["xw"]),
             helper.make_node("ReduceSum", ["xw", "axis1"], ["s"], keepdims=0),
             helper.make_node("Add", [h_in, "s"], [h_out]),
             helper.make_node("Unsqueeze", [h_in, "axis1"], ["hu"]),
             helper.make_node("Add", ["xw", "hu"], [y])]
    graph = helper.make_graph(
        nodes, "accumulator",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", "time", 4]),
         helper.make_tensor_value_info(h_in, TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["batch", "time", 3]),
         helper.make_tensor_value_info(h_out, TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array([1], np.int64), "axis1")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    if metadata:
        write_metadata(model, Contract(mode, [TensorSpec(x, ("batch", "time", 4), "float32", 0, 1)],
                                       [TensorSpec(y, ("batch", "time", 3), "float32", 0, 1)],
                                       [StateSpec("h", ("batch", 3), "float32", 0)]))
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        onnx.save(model, path)
    return model


class GRUCellModel(nn.Module):
    """The state is an explicit argument: forward(x [batch, 6], h [batch, 5])."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(6, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x, h):
        h = self.cell(x, h)
        return self.head(h), h

    def initial_state(self, batch_size: int):
        return torch.zeros(batch_size, 5)


class LearnedStartCell(GRUCellModel):
    """A learned (nonzero) start state: the file stores it as the initializer state_init.h."""

    def __init__(self) -> None:
        super().__init__()
        self.start = nn.Parameter(torch.linspace(-0.5, 0.7, 5).view(1, 5))

    def initial_state(self, batch_size: int):
        return self.start.expand(batch_size, 5)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The test models on disk: name -> path."""
    folder = tmp_path_factory.mktemp("triton_models")
    out = {"acc": folder / "acc.onnx"}
    accumulator(out["acc"])
    torch.manual_seed(5)
    for name, model in (("cell", GRUCellModel()), ("learned", LearnedStartCell())):
        out[name] = folder / f"{name}.onnx"
        assert edgernn.export(model.eval(), out[name], mode="step").passed
    out["gru"] = folder / "gru.onnx"
    assert edgernn.export(nn.GRU(4, 5, num_layers=2, batch_first=True).eval(), out["gru"]).passed
    return out


def run_like_triton(path: Path, steps, state: dict[str, np.ndarray], start: np.ndarray) -> tuple[list, dict]:
    """Execute the repository's model as the ONNX Runtime backend does: data inputs, the control
    inputs (START as given, END/READY/CORRID filler) and the implicit state tensors by name."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    contract = read_metadata(onnx.load(str(path)))
    ys = []
    for k, feeds in enumerate(steps):
        batch = next(iter(feeds.values())).shape[0]
        controls = {"START": (start if k == 0 else np.zeros_like(start)).reshape(batch, 1).astype(np.int32),
                    "END": np.zeros((batch, 1), np.int32), "READY": np.ones((batch, 1), np.int32),
                    "CORRID": np.arange(batch, dtype=np.uint64).reshape(batch, 1)}
        names = [t.name for t in contract.outputs] + [s.output for s in contract.states]
        results = session.run(names, {**feeds, **controls, **{s.input: state[s.name] for s in contract.states}})
        ys.append(results[0])
        state = {s.name: v for s, v in zip(contract.states, results[len(contract.outputs):])}
    return ys, state


def check_backend_io(pb2, config, model_path: Path) -> None:
    """What the ONNX Runtime backend checks at load: the model's inputs are exactly the config's
    inputs + control inputs + state inputs; control inputs are [-1, 1] (batch, 1) of the declared
    type; data tensors have a variable leading batch dim; outputs include the state outputs."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    model_inputs = {i.name: i for i in session.get_inputs()}
    model_outputs = {o.name: o for o in session.get_outputs()}
    sb = config.sequence_batching
    expected = [i.name for i in config.input] + [c.name for c in sb.control_input] + [s.input_name for s in sb.state]
    assert sorted(model_inputs) == sorted(expected)
    ort_types = {"TYPE_INT32": "tensor(int32)", "TYPE_UINT64": "tensor(uint64)", "TYPE_FP32": "tensor(float)"}
    for c in sb.control_input:
        (control,) = c.control
        data_type = "TYPE_UINT64" if control.kind == pb2.ModelSequenceBatching.Control.CONTROL_SEQUENCE_CORRID \
            else "TYPE_INT32"
        assert model_inputs[c.name].type == ort_types[data_type]
        shape = model_inputs[c.name].shape
        assert (shape[1:] if config.max_batch_size > 0 else shape) == [1]
    for s in sb.state:
        assert s.output_name in model_outputs
    for tensor, info in [*((t, model_inputs[t.name]) for t in config.input),
                         *((t, model_outputs[t.name]) for t in config.output)]:
        shape = [d if isinstance(d, int) else -1 for d in info.shape]
        if config.max_batch_size > 0:
            assert shape[0] == -1
            shape = shape[1:]
        assert len(shape) == len(tensor.dims)
        for model_dim, dim in zip(shape, tensor.dims):
            assert model_dim == -1 or model_dim == dim


# ---------------------------------------------------------------- the config


def test_hand_built_file_gives_a_config_triton_parses(pb2, files, tmp_path):
    report = triton_repository(files["acc"], tmp_path / "repo")
    config = parse(pb2, report)
    assert config.name == "acc" == report.name
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64
    assert [(t.name, type_name(pb2, t.data_type), list(t.dims)) for t in config.input] == [("x", "TYPE_FP32", [-1, 4])]
    assert [(t.name, type_name(pb2, t.data_type), list(t.dims)) for t in config.output] == [("y", "TYPE_FP32", [-1, 3])]
    sb = config.sequence_batching
    assert sb.WhichOneof("strategy_choice") == "oldest"
    assert sb.oldest.max_candidate_sequences == 64
    assert sb.max_sequence_idle_microseconds == 5_000_000
    (state,) = sb.state
    graph = onnx.load(report.model_path).graph
    assert state.input_name == "state_in.h" and state.input_name in [v.name for v in graph.input]
    assert state.output_name == "state_out.h" and state.output_name in [v.name for v in graph.output]
    assert type_name(pb2, state.data_type) == "TYPE_FP32" and list(state.dims) == [3]
    (init,) = state.initial_state
    assert init.WhichOneof("state_data") == "zero_data" and init.zero_data
    assert type_name(pb2, init.data_type) == "TYPE_FP32" and list(init.dims) == [3] and init.name == "h"
    kinds = {c.name: [pb2.ModelSequenceBatching.Control.Kind.Name(k.kind) for k in c.control] for c in sb.control_input}
    assert kinds == {name: [kind] for name, kind in CONTROL_KINDS.items()}
    for c in sb.control_input:
        (control,) = c.control
        if c.name == "CORRID":
            assert type_name(pb2, control.data_type) == "TYPE_UINT64"
        else:
            assert list(control.int32_false_true) == [0, 1]
    (group,) = config.instance_group
    assert group.count == 1 and pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_CPU"
    # the layout Triton expects
    repo = tmp_path / "repo"
    assert Path(report.model_path) == repo / "acc" / "1" / "model.onnx"
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == ["acc", "acc/1", "acc/1/model.onnx",
                                                                          "acc/config.pbtxt"]
    check_backend_io(pb2, config, Path(report.model_path))
    assert report.to_json()["states"] == [{"input_name": "state_in.h", "output_name": "state_out.h",
                                           "data_type": "TYPE_FP32", "dims": [3],
                                           "initial_state": {"name": "h", "data_type": "TYPE_FP32", "dims": [3],
                                                             "zero_data": True}}]


def test_start_resets_the_state_inside_the_served_model(files, tmp_path):
    """Row 0 starts a sequence (START=1) over a garbage state; row 1 continues its own: the served
    model gives the original model's results from zeros for row 0 and from the carried state for row 1."""
    report = triton_repository(files["acc"], tmp_path / "repo")
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((2, t, 4)).astype(np.float32) for t in (3, 1, 2)]
    carried = rng.standard_normal((2, 3)).astype(np.float32)
    garbage = carried.copy()
    garbage[0] = 1e6
    got, got_state = run_like_triton(Path(report.model_path), [{"x": x} for x in xs], {"h": garbage},
                                     start=np.array([1, 0]))
    reference = ort.InferenceSession(str(files["acc"]), providers=["CPUExecutionProvider"])
    state = carried.copy()
    state[0] = 0
    for x, y in zip(xs, got):
        want, state = reference.run(None, {"x": x, "state_in.h": state})
        np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_state["h"], state, rtol=1e-6, atol=1e-6)


def test_cell_model_exported_in_step_mode(pb2, files, tmp_path):
    """forward(x, h) with h [batch, 5]: the state has batch axis 0, and a sequence streamed through
    the served model frame by frame gives what edgernn's own session gives."""
    report = triton_repository(files["cell"], tmp_path / "repo", name="cell_gru")
    config = parse(pb2, report)
    contract = read_metadata(onnx.load(str(files["cell"])))
    assert [(s.name, s.shape, s.batch_axis) for s in contract.states] == [("h", ("batch", 5), 0)]
    assert config.name == "cell_gru" and Path(report.model_dir).name == "cell_gru"
    assert [(t.name, list(t.dims)) for t in config.input] == [("x", [6])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("y", [2])]
    graph = onnx.load(report.model_path).graph
    for state, spec in zip(config.sequence_batching.state, contract.states):
        assert (state.input_name, state.output_name) == (spec.input, spec.output)
        assert state.input_name in [v.name for v in graph.input]
        assert state.output_name in [v.name for v in graph.output]
        assert list(state.dims) == [d for k, d in enumerate(spec.shape) if k != spec.batch_axis]
        assert list(state.initial_state[0].dims) == list(state.dims) and state.initial_state[0].zero_data
    check_backend_io(pb2, config, Path(report.model_path))
    x = np.random.default_rng(1).standard_normal((5, 1, 6)).astype(np.float32)
    got, _ = run_like_triton(Path(report.model_path), [{"x": frame} for frame in x],
                             {"h": np.zeros((1, 5), np.float32)}, start=np.array([1]))
    want = edgernn.open(files["cell"]).stream(x)["y"]
    np.testing.assert_allclose(np.stack(got), want, rtol=1e-5, atol=1e-6)


def test_stored_start_value_goes_to_an_initial_state_data_file(pb2, files, tmp_path):
    report = triton_repository(files["learned"], tmp_path / "repo")
    config = parse(pb2, report)
    (state,) = config.sequence_batching.state
    (init,) = state.initial_state
    assert init.WhichOneof("state_data") == "data_file" and init.data_file == "h.bin"
    assert list(init.dims) == [5] and type_name(pb2, init.data_type) == "TYPE_FP32"
    data = Path(report.model_dir) / "initial_state" / "h.bin"  # where Triton reads it: <model>/initial_state/
    stored = numpy_helper.to_array(next(t for t in onnx.load(str(files["learned"])).graph.initializer
                                        if t.name == "state_init.h"))
    assert data.read_bytes() == stored.astype("<f4").tobytes()
    assert np.frombuffer(data.read_bytes(), "<f4").size == int(np.prod(list(init.dims)))
    assert str(data) in report.files
    # START=1 over a garbage state starts from the stored value, as edgernn's session does
    x = np.random.default_rng(2).standard_normal((3, 1, 6)).astype(np.float32)
    got, _ = run_like_triton(Path(report.model_path), [{"x": f} for f in x], {"h": np.full((1, 5), 9.0, np.float32)},
                             start=np.array([1]))
    np.testing.assert_allclose(np.stack(got), edgernn.open(files["learned"]).stream(x)["y"], rtol=1e-5, atol=1e-6)


def test_state_with_batch_on_axis_1_is_refused_with_the_fix(files, tmp_path):
    """A bare nn.GRU: state [layers, batch, hidden]. Triton stacks states on axis 0."""
    assert read_metadata(onnx.load(str(files["gru"]))).states[0].batch_axis == 1
    with pytest.raises(TritonError, match="--state-layout batch-major") as err:
        triton_repository(files["gru"], tmp_path / "repo")
    assert "'gru.h'" in str(err.value) and "max_batch_size=0" in str(err.value)
    assert LAYOUT_FIX in str(err.value)
    assert not (tmp_path / "repo" / "gru").exists()


def test_max_batch_size_zero_serves_any_layout(pb2, files, tmp_path):
    report = triton_repository(files["gru"], tmp_path / "repo", max_batch_size=0)
    config = parse(pb2, report)
    assert config.max_batch_size == 0
    (state,) = config.sequence_batching.state
    assert (state.input_name, state.output_name) == ("state_in.gru.h", "state_out.gru.h")
    assert list(state.dims) == [2, 1, 5] and list(state.initial_state[0].dims) == [2, 1, 5]
    assert [list(t.dims) for t in config.input] == [[1, -1, 4]]
    assert [list(t.dims) for t in config.output] == [[-1, -1, 5]]
    check_backend_io(pb2, config, Path(report.model_path))


@pytest.mark.skipif("state_layout" not in inspect.signature(edgernn.export).parameters,
                    reason="this edgernn has no batch-major state export")
def test_batch_major_export_of_a_gru_is_served(pb2, tmp_path):
    torch.manual_seed(3)
    path = tmp_path / "gru_bm.onnx"
    assert edgernn.export(nn.GRU(4, 5, num_layers=2, batch_first=True).eval(), path,
                          state_layout="batch-major").passed
    report = triton_repository(path, tmp_path / "repo")
    config = parse(pb2, report)
    (state,) = config.sequence_batching.state
    assert list(state.dims) == [2, 5] and list(state.initial_state[0].dims) == [2, 5]
    assert [list(t.dims) for t in config.input] == [[-1, 4]]
    check_backend_io(pb2, config, Path(report.model_path))


def test_without_controls_the_model_file_is_copied_as_is(pb2, files, tmp_path):
    report = triton_repository(files["acc"], tmp_path / "repo", controls=False)
    config = parse(pb2, report)
    assert len(config.sequence_batching.control_input) == 0
    assert config.sequence_batching.state[0].initial_state[0].zero_data
    assert Path(report.model_path).read_bytes() == files["acc"].read_bytes()
    assert report.controls == []
    check_backend_io(pb2, config, Path(report.model_path))


def test_options_reach_the_config(pb2, files, tmp_path):
    report = triton_repository(files["acc"], tmp_path / "repo", name="acc_gpu", version=3, max_batch_size=8,
                               strategy="direct", max_sequence_idle_microseconds=60_000_000,
                               max_queue_delay_microseconds=500, instance_count=2, instance_kind="gpu")
    config = parse(pb2, report)
    assert config.name == "acc_gpu" and config.max_batch_size == 8
    assert Path(report.model_path) == tmp_path / "repo" / "acc_gpu" / "3" / "model.onnx"
    sb = config.sequence_batching
    assert sb.WhichOneof("strategy_choice") == "direct" and sb.direct.max_queue_delay_microseconds == 500
    assert sb.max_sequence_idle_microseconds == 60_000_000
    (group,) = config.instance_group
    assert group.count == 2 and pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_GPU"
    report = triton_repository(files["acc"], tmp_path / "repo", name="acc_many", max_candidate_sequences=500)
    assert parse(pb2, report).sequence_batching.oldest.max_candidate_sequences == 500
    assert report.to_json()["config"] == report.config_text


@pytest.mark.parametrize("kwargs, message", [
    ({"strategy": "fifo"}, "strategy 'fifo' is unknown"),
    ({"instance_kind": "tpu"}, "instance kind 'tpu' is unknown"),
    ({"version": 0}, "version must be an integer >= 1"),
    ({"max_batch_size": -1}, "max_batch_size must be an integer >= 0"),
    ({"name": "a/b"}, "cannot be a Triton model folder"),
    ({"strategy": "direct", "max_candidate_sequences": 9}, "oldest strategy only"),
])
def test_bad_options_are_refused(files, tmp_path, kwargs, message):
    with pytest.raises(TritonError, match=message):
        triton_repository(files["acc"], tmp_path / "repo", **kwargs)
    assert not (tmp_path / "repo").exists()  # refused before anything is written


def test_existing_model_folder_needs_overwrite(pb2, files, tmp_path):
    repo = tmp_path / "repo"
    triton_repository(files["acc"], repo, controls=False)
    with pytest.raises(TritonError, match="already exists; pass overwrite=True"):
        triton_repository(files["acc"], repo)
    assert len(parse(pb2, triton_repository(files["acc"], repo, overwrite=True)).sequence_batching.control_input) == 4
    assert sorted(p.name for p in repo.iterdir()) == ["acc"]  # no temporary folders left behind


def _flat_state() -> onnx.ModelProto:
    """x [batch, time, 4] -> y = x; state h [batch] (no axis but the batch): h' = h + sum x."""
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0),
             helper.make_node("Add", ["state_in.h", "s"], ["state_out.h"]), helper.make_node("Identity", ["x"], ["y"])]
    graph = helper.make_graph(
        nodes, "flat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", 4]),
                        helper.make_tensor_value_info("state_in.h", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "time", 4]),
         helper.make_tensor_value_info("state_out.h", TensorProto.FLOAT, ["batch"])],
        [numpy_helper.from_array(np.array([1, 2], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    write_metadata(model, Contract("chunk", [TensorSpec("x", ("batch", "time", 4), "float32", 0, 1)],
                                   [TensorSpec("y", ("batch", "time", 4), "float32", 0, 1)],
                                   [StateSpec("h", ("batch",), "float32", 0)]))
    return model


def test_files_that_cannot_stream_through_triton_are_refused(files, tmp_path):
    model = accumulator(mode="sequence")
    with pytest.raises(TritonError, match="sequence-mode file"):
        triton_repository(model, tmp_path / "repo", name="seq")
    with pytest.raises(TritonError, match="give the model a name"):
        triton_repository(accumulator(), tmp_path / "repo")
    # a state with nothing besides the batch axis (triton#3901)
    model = _flat_state()
    with pytest.raises(TritonError, match="at least one more dimension"):
        triton_repository(model, tmp_path / "repo", name="flat")
    # a time-major data input
    model = accumulator()
    contract = read_metadata(model)
    write_metadata(model, Contract("chunk", [TensorSpec("x", ("time", "batch", 4), "float32", 1, 0)],
                                   contract.outputs, contract.states))
    with pytest.raises(TritonError, match="tensor 'x' .* batch axis at 1 .* batch-first"):
        triton_repository(model, tmp_path / "repo", name="tmajor")


def test_file_from_another_exporter_gets_standard_state_names(pb2, tmp_path):
    """No edgernn metadata: the pair h -> hn is inferred, and the served model names it
    state_in.h / state_out.h (names whose sorted orders agree, see triton#8586)."""
    path = tmp_path / "foreign.onnx"
    accumulator(path, metadata=False, names=("x", "h", "y", "hn"))
    report = triton_repository(path, tmp_path / "repo")
    config = parse(pb2, report)
    (state,) = config.sequence_batching.state
    assert (state.input_name, state.output_name) == ("state_in.h", "state_out.h")
    assert any("no edgernn metadata" in n for n in report.notes)
    check_backend_io(pb2, config, Path(report.model_path))


def test_state_names_that_sort_differently_are_refused():
    """triton#8586: Triton pairs the k-th output name in sorted order with the k-th input name."""
    states = [StateSpec("a", ("batch", 4), "float32", 0, input="cache_last_channel",
                        output="cache_last_channel_next"),
              StateSpec("b", ("batch", 1), "int64", 0, input="cache_last_channel_len",
                        output="cache_last_channel_len_next")]
    contract = Contract("chunk", [], [], states)
    with pytest.raises(TritonError, match="triton#8586"):
        _check_pairing_order(contract, "the model")
    _check_pairing_order(Contract("chunk", [], [], [StateSpec("a", ("batch", 4), "float32", 0),
                                                    StateSpec("a.len", ("batch", 1), "int64", 0)]), "the model")


def test_control_names_are_the_ones_documented():
    assert [(n, k) for n, k, _ in CONTROLS] == list(CONTROL_KINDS.items())


def test_the_config_in_docs_is_the_one_written(pb2, files, tmp_path):
    """docs/deploy.md shows the config of the learned-start GRU cell; it parses to what we write."""
    from google.protobuf import text_format

    docs = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()
    section = docs.split("## Triton Inference Server", 1)[1].split("\n## ", 1)[0]
    shown = next(block for block in section.split("```")[1::2] if block.lstrip().startswith('name: "gru_cell"'))
    report = triton_repository(files["learned"], tmp_path / "repo", name="gru_cell")
    assert text_format.Parse(shown, pb2.ModelConfig()) == parse(pb2, report)
