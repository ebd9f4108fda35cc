"""StreamingSession: step / stream / reset / state / set_state, checked against PyTorch numbers."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import edgernn
from edgernn.contract import ContractError
from edgernn.errors import EdgernnError
from edgernn.runtimes import StreamError, StreamingSession

ATOL = 1e-5


@pytest.fixture(scope="module")
def gru(tmp_path_factory):
    """A 2-layer batch-first GRU exported in chunk mode: (module, path)."""
    torch.manual_seed(0)
    module = nn.GRU(5, 7, num_layers=2, batch_first=True).eval()
    path = tmp_path_factory.mktemp("session") / "gru.onnx"
    assert edgernn.export(module, path).passed
    return module, path


@pytest.fixture(scope="module")
def lstm_step(tmp_path_factory):
    """A time-major LSTM exported in step mode (one frame per call, two states): (module, path)."""
    torch.manual_seed(1)
    module = nn.LSTM(4, 6).eval()
    path = tmp_path_factory.mktemp("session") / "lstm_step.onnx"
    assert edgernn.export(module, path, mode="step").passed
    return module, path


def _x(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _torch_gru(module, x, h0=None):
    with torch.no_grad():
        y, h = module(torch.from_numpy(x), None if h0 is None else torch.from_numpy(h0))
    return y.numpy(), h.numpy()


# ---------------------------------------------------------------- streaming equals PyTorch


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("chunk", [1, 3, 13])
def test_stream_in_chunks_equals_pytorch_on_the_whole_sequence(gru, batch, chunk):
    module, path = gru
    x = _x((batch, 13, 5), seed=batch)
    session = StreamingSession(path)
    y = session.stream(x, chunk=chunk)["y"]
    want_y, want_h = _torch_gru(module, x)
    assert y.shape == want_y.shape
    np.testing.assert_allclose(y, want_y, atol=ATOL, rtol=0)
    np.testing.assert_allclose(session.state["gru.h"], want_h, atol=ATOL, rtol=0)


def test_step_calls_carry_state_between_calls(gru):
    module, path = gru
    x = _x((2, 10, 5), seed=7)
    session = edgernn.open(path)
    pieces = [session.step(x[:, a:b])["y"] for a, b in ((0, 4), (4, 5), (5, 10))]
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), _torch_gru(module, x)[0], atol=ATOL, rtol=0)
    # by name, too
    session.reset()
    np.testing.assert_allclose(session.step(x=x)["y"], _torch_gru(module, x)[0], atol=ATOL, rtol=0)


def test_stream_does_not_reset_first(gru):
    module, path = gru
    x = _x((1, 12, 5), seed=2)
    session = edgernn.open(path)
    first = session.stream(x[:, :5], chunk=2)["y"]
    second = session.stream(x[:, 5:], chunk=4)["y"]
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), _torch_gru(module, x)[0], atol=ATOL, rtol=0)


def test_step_mode_takes_one_frame_per_call(lstm_step):
    module, path = lstm_step
    session = edgernn.open(path)
    assert session.mode == "step" and session.inputs[0].shape == (1, "batch", 4)
    x = _x((9, 2, 4), seed=3)
    y = session.stream(x)["y"]  # chunk 1 by default
    with torch.no_grad():
        want, (h, c) = module(torch.from_numpy(x))
    np.testing.assert_allclose(y, want.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(session.state["lstm.h"], h.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(session.state["lstm.c"], c.numpy(), atol=ATOL, rtol=0)
    with pytest.raises(StreamError, match="exported in step mode and takes one frame per call; use chunk 1, not 3"):
        session.stream(x, chunk=3)
    with pytest.raises(StreamError, match=r"input 'x' has shape \[3, 2, 4\]; expected \[1, 'batch', 4\]"):
        session.step(x[:3])


# ---------------------------------------------------------------- state and reset


def test_state_is_empty_until_the_first_call_and_reset_returns_to_zeros(gru):
    module, path = gru
    x = _x((2, 6, 5), seed=4)
    session = edgernn.open(path)
    assert session.state == {} and session.batch_size is None
    fresh = session.step(x)["y"]
    assert session.batch_size == 2 and session.state["gru.h"].shape == (2, 2, 7)
    assert np.abs(session.state["gru.h"]).max() > 0.01
    carried = session.step(x)["y"]
    assert np.abs(carried - fresh).max() > 1e-3  # the carried state changes the outputs
    session.reset()
    assert session.state == {} and session.batch_size is None
    np.testing.assert_array_equal(session.step(x)["y"], fresh)
    session.reset(batch_size=3)
    assert session.batch_size == 3
    np.testing.assert_array_equal(session.state["gru.h"], np.zeros((2, 3, 7), np.float32))
    with pytest.raises(StreamError, match="input has batch 2 but the carried state has batch 3"):
        session.step(x)


def test_initial_state_follows_the_contract(gru):
    session = edgernn.open(gru[1])
    init = session.initial_state(4)
    assert list(init) == ["gru.h"]
    assert init["gru.h"].dtype == np.float32 and init["gru.h"].shape == (2, 4, 7) and not init["gru.h"].any()


def test_state_is_a_copy(gru):
    _, path = gru
    x = _x((1, 4, 5), seed=5)
    session = edgernn.open(path)
    session.step(x)
    state = session.state
    before = state["gru.h"].copy()
    state["gru.h"][:] = 100.0
    state["extra"] = np.zeros(1)
    np.testing.assert_array_equal(session.state["gru.h"], before)
    assert list(session.state) == ["gru.h"]


def test_set_state_continues_from_a_given_state(gru):
    module, path = gru
    x = _x((3, 8, 5), seed=6)
    h0 = _x((2, 3, 7), seed=8) * 0.5
    session = edgernn.open(path)
    given = h0.copy()
    session.set_state({"gru.h": given})
    given[:] = 0.0  # set_state keeps its own copy
    y = session.stream(x, chunk=3)["y"]
    want_y, want_h = _torch_gru(module, x, h0)
    np.testing.assert_allclose(y, want_y, atol=ATOL, rtol=0)
    np.testing.assert_allclose(session.state["gru.h"], want_h, atol=ATOL, rtol=0)
    # reset(state=...) is the same
    session.reset(state={"gru.h": h0})
    np.testing.assert_allclose(session.stream(x, chunk=8)["y"], want_y, atol=ATOL, rtol=0)


def test_state_round_trips_to_resume_a_stream(gru):
    """Saving `state` mid-stream and restoring it in another session continues the same stream."""
    module, path = gru
    x = _x((2, 10, 5), seed=9)
    a = edgernn.open(path)
    first = a.stream(x[:, :6], chunk=2)["y"]
    b = edgernn.open(path)
    b.set_state(a.state)
    second = b.stream(x[:, 6:], chunk=2)["y"]
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), _torch_gru(module, x)[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("state, message", [
    ({"lstm.h": np.zeros((1, 2, 6), np.float32)}, "state 'lstm.c' is missing; give every state of the model"),
    ({"lstm.h": np.zeros((1, 2, 6), np.float32), "lstm.c": np.zeros((1, 2, 6), np.float32),
      "gru.h": np.zeros((1, 2, 6), np.float32)}, "unknown state 'gru.h'; this model's states are ['lstm.c', 'lstm.h']"),
    ({"lstm.h": np.zeros((1, 2, 6), np.float64), "lstm.c": np.zeros((1, 2, 6), np.float32)},
     "state 'lstm.h' has dtype float64; expected float32"),
    ({"lstm.h": np.zeros((1, 2, 5), np.float32), "lstm.c": np.zeros((1, 2, 6), np.float32)},
     "state 'lstm.h' has shape [1, 2, 5]; expected [1, 'batch', 6] (axis 2 must be 6)"),
    ({"lstm.h": np.zeros((2, 6), np.float32), "lstm.c": np.zeros((1, 2, 6), np.float32)},
     "state 'lstm.h' has shape [2, 6]; expected 3 axes [1, 'batch', 6]"),
    ({"lstm.h": np.zeros((1, 2, 6), np.float32), "lstm.c": np.zeros((1, 3, 6), np.float32)},
     "has batch 3 but other states have batch 2"),
])
def test_set_state_refuses_what_does_not_fit(lstm_step, state, message):
    session = edgernn.open(lstm_step[1])
    session.step(_x((1, 2, 4)))
    before = session.state
    with pytest.raises(StreamError) as info:
        session.set_state(state)
    assert message in str(info.value)
    for name, value in before.items():  # a refused state leaves the carried one as it was
        np.testing.assert_array_equal(session.state[name], value)


def test_step_with_a_batch_other_than_the_state_is_refused(lstm_step):
    session = edgernn.open(lstm_step[1])
    session.set_state({"lstm.h": np.zeros((1, 2, 6), np.float32), "lstm.c": np.zeros((1, 2, 6), np.float32)})
    assert session.batch_size == 2
    with pytest.raises(StreamError, match=r"input has batch 3 but the carried state has batch 2; call reset\(\)"):
        session.step(_x((1, 3, 4)))
    session.reset()
    assert session.step(_x((1, 3, 4)))["y"].shape == (1, 3, 6)


# ---------------------------------------------------------------- input errors


@pytest.mark.parametrize("call, message", [
    (lambda s: s.step(np.zeros((1, 4, 5), np.float64)), "input 'x' has dtype float64; expected float32"),
    (lambda s: s.step(np.zeros((1, 4, 6), np.float32)), "input 'x' has shape [1, 4, 6]; expected ['batch', 'time', 5]"),
    (lambda s: s.step(np.zeros((4, 5), np.float32)), "expected 3 axes"),
    (lambda s: s.step(), "input 'x' is missing; the model's inputs are x"),
    (lambda s: s.step(z=np.zeros((1, 4, 5), np.float32)), "unknown input 'z'; the model's inputs are x"),
    (lambda s: s.step(np.zeros((1, 4, 5), np.float32), np.zeros(1)), "got 2 inputs; the model takes 1 (x)"),
    (lambda s: s.stream(np.zeros((1, 4, 5), np.float32), chunk=0), "chunk must be at least 1 frame, got 0"),
    (lambda s: s.stream(np.zeros((1, 0, 5), np.float32), chunk=2), "input 'x' has no frames"),
    (lambda s: s.stream(np.zeros(5, np.float32)), "input 'x' has shape [5]; expected a stream with time on axis 1"),
])
def test_bad_input_raises_stream_error(gru, call, message):
    session = edgernn.open(gru[1])
    with pytest.raises(StreamError) as info:
        call(session)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert session.state == {}


# ---------------------------------------------------------------- files that are not edgernn files


def _identity_model() -> onnx.ModelProto:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 3])])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])


def test_foreign_onnx_without_metadata_is_refused(tmp_path):
    onnx.save(_identity_model(), str(tmp_path / "foreign.onnx"))
    with pytest.raises(ContractError) as info:
        StreamingSession(tmp_path / "foreign.onnx")
    text = str(info.value)
    assert text.startswith(f"{tmp_path / 'foreign.onnx'} has no edgernn metadata") and "\n" not in text
    with pytest.raises(ContractError, match="^the model has no edgernn metadata"):
        StreamingSession(_identity_model().SerializeToString())


def test_missing_and_non_onnx_files_are_refused(tmp_path):
    with pytest.raises(EdgernnError, match="does not exist or is not a file"):
        StreamingSession(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(EdgernnError, match="junk.onnx is not an ONNX model"):
        StreamingSession(tmp_path / "junk.onnx")


def test_stored_initial_state_is_read_and_repeated_per_stream(gru, tmp_path):
    """init {"initializer": NAME}: the start value (batch axis of size 1) repeats for every stream."""
    model = onnx.load(str(gru[1]))
    props = {p.key: p for p in model.metadata_props}
    states = json.loads(props["edgernn.states"].value)
    start = np.random.default_rng(0).standard_normal((2, 1, 7)).astype(np.float32)  # [layers, 1, hidden]
    states[0]["init"] = {"initializer": "gru.h.init"}
    props["edgernn.states"].value = json.dumps(states)
    model.graph.initializer.append(onnx.numpy_helper.from_array(start, "gru.h.init"))
    onnx.save(model, str(tmp_path / "stored_init.onnx"))
    session = StreamingSession(tmp_path / "stored_init.onnx")
    session.reset(3)
    np.testing.assert_array_equal(session.state["gru.h"], np.repeat(start, 3, axis=1))


def test_stored_initial_state_that_is_missing_is_refused(gru, tmp_path):
    model = onnx.load(str(gru[1]))
    props = {p.key: p for p in model.metadata_props}
    states = json.loads(props["edgernn.states"].value)
    states[0]["init"] = {"initializer": "gru.h.init"}
    props["edgernn.states"].value = json.dumps(states)
    onnx.save(model, str(tmp_path / "stored_init.onnx"))
    with pytest.raises(ContractError, match="names initializer 'gru.h.init' as a state's start value, but has no"):
        StreamingSession(tmp_path / "stored_init.onnx")
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros((2, 1, 16), np.float32), "gru.h.init"))
    onnx.save(model, str(tmp_path / "stored_init.onnx"))
    with pytest.raises(ContractError, match=r"has shape \[2, 1, 16\]; expected \[2, 1, 7\]"):
        StreamingSession(tmp_path / "stored_init.onnx")