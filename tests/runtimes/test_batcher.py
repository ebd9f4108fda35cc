"""StreamBatcher: many streams through one session give each stream what it gets alone.

Every stream of a batcher is shadowed by a StreamingSession of its own (batch 1), fed the same
frames; outputs and states must agree within 1e-5 relative to their scale, while streams open,
close and reset at different times and different subsets step (all in slot order, shuffled,
a leading or middle run of slots, scattered slots, one stream).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import edgernn
from edgernn.architectures import NTM
from edgernn.runtimes.batcher import StreamBatcher
from edgernn.runtimes.session import StreamError, StreamingSession
from conftest import torch_export

TOL = 1e-5  # max |batched - alone| / max(1, max |alone|)


pytestmark = pytest.mark.usefixtures("one_thread")


class TwoInputs(nn.Module):
    """Two data inputs, two data outputs, state h0 -> hn: x [batch, 3], z [batch, 2]."""

    def __init__(self) -> None:
        super().__init__()
        self.cell, self.head = nn.GRUCell(5, 6), nn.Linear(6, 1)

    def forward(self, x, z, h0):
        h = self.cell(torch.cat([x, z], -1), h0)
        return h * 2.0, self.head(h), h




@pytest.fixture(scope="module")
def files(tmp_path_factory, silero_like) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("batcher")
    torch.manual_seed(0)
    gru = nn.GRU(8, 16, 2, batch_first=True).eval()
    made = {"gru_step": folder / "gru_step.onnx", "gru_chunk": folder / "gru_chunk.onnx",
            "lstm_step": folder / "lstm_step.onnx", "ntm": folder / "ntm.onnx"}
    assert edgernn.export(gru, made["gru_step"], mode="step").passed
    assert edgernn.export(gru, made["gru_chunk"], mode="chunk").passed
    assert edgernn.export(nn.LSTM(4, 6).eval(), made["lstm_step"], mode="step").passed  # time-major, h and c
    ntm = NTM(3, 2, controller_size=8, memory_size=8, memory_width=4).eval()  # stored init: memory, weightings
    assert edgernn.export(ntm, made["ntm"], mode="step").passed
    two = TwoInputs().eval()
    made["two_inputs"] = torch_export(two, (torch.randn(2, 3), torch.randn(2, 2), torch.zeros(2, 6)),
                                       folder / "two_inputs.onnx", ["x", "z", "h0"], ["y", "score", "hn"],
                                       {n: {0: "batch"} for n in ("x", "z", "h0", "y", "score", "hn")})
    silero = silero_like().eval()
    args = (torch.randn(1, 16), torch.zeros(2, 1, 8), torch.tensor(16000))
    names = (["input", "state", "sr"], ["output", "stateN"])
    made["silero"] = torch_export(silero, args, folder / "silero.onnx", *names,
                                   {"input": {0: "batch"}, "state": {1: "batch"}, "output": {0: "batch"},
                                    "stateN": {1: "batch"}})
    made["silero_fixed"] = torch_export(silero, args, folder / "silero_fixed.onnx", *names)
    return made


def _close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = float(np.max(np.abs(got - want))) / max(1.0, float(np.max(np.abs(want))))
    assert err <= TOL, f"{what}: error {err:.2e} relative to scale"


def _frame(batcher: StreamBatcher, rng, frames: int = 1) -> dict[str, np.ndarray]:
    """One stream's call: every batched input in the model's layout with batch 1."""
    return {t.name: rng.standard_normal(t.concrete_shape(1, frames)).astype(t.dtype)
            for t in batcher.inputs if t.batch_axis is not None}


def _subset(kind: str, ids: list[int], rng) -> list[int]:
    n = len(ids)
    if kind == "all":  # slot order: states read in place
        return ids
    if kind == "shuffled":  # every stream, another order
        return [ids[i] for i in rng.permutation(n)]
    if kind == "leading":
        return ids[: max(1, n - 1)]
    if kind == "middle":
        return ids[1:-1] or ids[:1]
    if kind == "scattered":  # gather / scatter along the batch axis
        return [ids[i] for i in rng.permutation(range(0, n, 2))]
    return [ids[int(rng.integers(n))]]  # one


KINDS = ["all", "shuffled", "leading", "middle", "scattered", "one"]


def _drive(path: Path, calls: int = 30, capacity: int = 6, seed: int = 0, shared: dict | None = None):
    """Streams through a batcher and alone side by side; opens, closes and resets along the way.
    Returns the batcher, the largest output magnitude seen (to show the numbers are not trivial)
    and the most streams open at once."""
    rng = np.random.default_rng(seed)
    batcher = StreamBatcher(path, capacity=capacity)
    alone: dict[int, StreamingSession] = {}
    largest, most = 0.0, 0

    def open_stream() -> int:
        sid = batcher.open()
        alone[sid] = StreamingSession(path)
        alone[sid].reset(1)
        return sid

    for _ in range(4):
        open_stream()
    events = {4: "close middle", 7: "open", 9: "reset", 12: "close last", 13: "open", 14: "open",
              15: "open", 18: "close first", 21: "reset", 24: "close middle", 25: "open"}
    for c in range(calls):
        ids = list(batcher.streams)
        chosen = _subset(KINDS[c % len(KINDS)], ids, rng)
        count = int(rng.integers(1, 5)) if batcher.mode == "chunk" else 1
        frames = {sid: _frame(batcher, rng, count) for sid in chosen}
        out = batcher.step(frames, shared=shared)
        assert sorted(out) == sorted(chosen)
        for sid in chosen:
            want = alone[sid].step(**frames[sid], **(shared or {}))
            assert set(out[sid]) == set(want)
            for name, value in want.items():
                _close(out[sid][name], value, f"call {c}, stream {sid}, {name}")
                largest = max(largest, float(np.max(np.abs(value))))
        event = events.get(c)
        if event == "open":
            open_stream()
            most = max(most, len(batcher))
        elif event == "reset":
            sid = ids[len(ids) // 2]
            batcher.reset(sid)
            alone[sid].reset(1)
        elif event and event.startswith("close"):
            sid = {"close middle": ids[len(ids) // 2], "close last": ids[-1], "close first": ids[0]}[event]
            batcher.close(sid)
            del alone[sid]
    assert sorted(batcher.streams) == sorted(alone)
    for sid in batcher.streams:
        state = batcher.state(sid)
        for name, value in alone[sid].state.items():
            _close(state[name], value, f"final state of stream {sid}, {name}")
    return batcher, largest, most


# ---------------------------------------------------------------- parity with streams alone


@pytest.mark.parametrize("name", ["gru_step", "gru_chunk", "lstm_step", "ntm", "two_inputs"])
def test_every_stream_gets_what_it_gets_alone(files, name):
    batcher, largest, most = _drive(files[name])
    assert largest > 0.05  # real numbers went through, not zeros
    assert most == batcher.capacity == 6 and len(batcher) == 5


def test_shared_input_without_batch_axis(files):
    """silero-vad's sr: the same for every stream, given once per call."""
    batcher, largest, _ = _drive(files["silero"], calls=12, shared={"sr": np.array(16000)})
    assert largest > 0.05
    sid = batcher.streams[0]
    frame = np.ones((1, 16), np.float32)
    before = batcher.state(sid)
    at_8k = batcher.step({sid: frame}, shared={"sr": np.array(8000)})[sid]["output"]
    batcher.set_state(sid, before)
    at_16k = batcher.step({sid: frame}, shared={"sr": np.array(16000)})[sid]["output"]
    assert np.abs(at_8k - at_16k).max() > 1e-4  # sr reaches the model


def test_streams_equal_pytorch_on_their_whole_sequences(files):
    """Chunk mode, three streams of different lengths fed in calls of equal length: each equals
    nn.GRU on its own whole sequence."""
    torch.manual_seed(0)
    gru = nn.GRU(8, 16, 2, batch_first=True).eval()  # the weights of the files
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1, t, 8)).astype(np.float32) for t in (9, 6, 3)]
    batcher = StreamBatcher(files["gru_chunk"], capacity=3)
    ids = [batcher.open() for _ in xs]
    ys: dict[int, list[np.ndarray]] = {sid: [] for sid in ids}
    for start in range(0, 9, 3):
        frames = {sid: x[:, start:start + 3] for sid, x in zip(ids, xs) if x.shape[1] > start}
        for sid, out in batcher.step(frames).items():
            ys[sid].append(out["y"])
    for sid, x in zip(ids, xs):
        with torch.no_grad():
            want, h = gru(torch.from_numpy(x))
        _close(np.concatenate(ys[sid], axis=1), want.numpy(), f"stream {sid}")
        _close(batcher.state(sid)["gru.h"], h.numpy(), f"stream {sid} state")


def test_stored_init_starts_every_stream(files):
    """The NTM's start memory and weightings are stored in the file: open and reset give them."""
    session = StreamingSession(files["ntm"])
    init = session.initial_state(1)
    assert np.abs(init["state.memory"]).max() > 0.01 and init["state.read_weights"][0, 0, 0] == 1.0
    batcher = StreamBatcher(session, capacity=3)
    a, b = batcher.open(), batcher.open()
    for sid in (a, b):
        for name, value in batcher.state(sid).items():
            np.testing.assert_array_equal(value, init[name], name)
    rng = np.random.default_rng(0)
    for _ in range(3):
        batcher.step({a: rng.standard_normal((1, 3)).astype(np.float32)})
    assert np.abs(batcher.state(a)["state.memory"] - init["state.memory"]).max() > 1e-3
    np.testing.assert_array_equal(batcher.state(b)["state.memory"], init["state.memory"])  # b did not move
    batcher.reset(a)
    for name, value in batcher.state(a).items():
        np.testing.assert_array_equal(value, init[name], name)


def test_frames_with_or_without_batch_axis_give_the_same(files):
    """[1, 1, 8] and [1, 8] (the batch axis left out), or {input name: array}; outputs keep the model's layout."""
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((3, 1, 1, 8)).astype(np.float32)
    results = []
    for form in (lambda x: x, lambda x: x[0], lambda x: {"x": x}):
        batcher = StreamBatcher(files["gru_step"], capacity=2)
        a, b = batcher.open(), batcher.open()
        ys = [batcher.step({a: form(x), b: form(2 * x)}) for x in xs]
        results.append(np.stack([[y[a]["y"], y[b]["y"]] for y in ys]))
    assert results[0].shape == (3, 2, 1, 1, 16)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])
    assert np.abs(results[0][:, 0] - results[0][:, 1]).max() > 1e-3  # the streams differ


def test_time_major_outputs_keep_the_batch_axis(files):
    """LSTM [1, batch, 4] in, [1, batch, 6] out: each stream gets [1, 1, 6], its own entry."""
    batcher = StreamBatcher(files["lstm_step"], capacity=4)
    ids = [batcher.open() for _ in range(3)]
    rng = np.random.default_rng(2)
    frames = {sid: rng.standard_normal((1, 1, 4)).astype(np.float32) for sid in ids}
    out = batcher.step(frames)
    session = StreamingSession(files["lstm_step"])
    both = session.step(np.concatenate([frames[s] for s in ids], axis=1))["y"]  # one batch of 3 by hand
    for k, sid in enumerate(ids):
        assert out[sid]["y"].shape == (1, 1, 6)
        _close(out[sid]["y"], both[:, k:k + 1], f"stream {sid}")


def test_errors_leave_every_state_as_it_was(files):
    batcher = StreamBatcher(files["gru_step"], capacity=3)
    a, b = batcher.open(), batcher.open()
    rng = np.random.default_rng(0)
    batcher.step({a: rng.standard_normal((1, 1, 8)).astype(np.float32)})
    before = {sid: batcher.state(sid) for sid in (a, b)}
    with pytest.raises(StreamError):
        batcher.step({a: np.ones((1, 1, 8), np.float32), b: np.ones((1, 1, 8))})  # b's frame is float64
    for sid in (a, b):
        np.testing.assert_array_equal(batcher.state(sid)["gru.h"], before[sid]["gru.h"])
    assert batcher.step({}) == {}


def test_set_state_and_a_session_given_open(files):
    session = StreamingSession(files["gru_step"])
    batcher = StreamBatcher(session, capacity=2)
    assert batcher.session is session
    a = batcher.open()
    h = np.random.default_rng(0).standard_normal((2, 1, 16)).astype(np.float32)
    batcher.set_state(a, {"gru.h": h})
    x = np.ones((1, 1, 8), np.float32)
    y = batcher.step({a: x})[a]["y"]
    alone = StreamingSession(files["gru_step"])
    alone.set_state({"gru.h": h})
    _close(y, alone.step(x)["y"], "after set_state")
    batcher.set_state(a, {"gru.h": h[:, 0]})  # without the batch axis
    np.testing.assert_array_equal(batcher.state(a)["gru.h"], h)


def test_slots_are_reused_and_ids_are_not(files):
    batcher = StreamBatcher(files["gru_step"], capacity=2)
    a, b = batcher.open(), batcher.open()
    batcher.close(a)
    c = batcher.open()
    assert c not in (a, b) and batcher.streams == (b, c) and a not in batcher and c in batcher


# ---------------------------------------------------------------- errors, one sentence each


def _fresh(files, name="gru_step", capacity=2):
    batcher = StreamBatcher(files[name], capacity=capacity)
    return batcher, batcher.open()


X = np.zeros((1, 1, 8), np.float32)


@pytest.mark.parametrize("frame, message", [
    (np.zeros((1, 1, 8)), "^stream 0's input 'x' has dtype float64; expected float32$"),
    (np.zeros((1, 1, 7), np.float32), r"^stream 0's input 'x' has size 7 on axis 2 of \[batch, 1, 8\]; expected 8$"),
    (np.zeros((1, 3, 8), np.float32), r"^stream 0's input 'x' has size 3 on axis 1 of \[batch, 1, 8\]; expected 1: "
                                      "this model was exported in step mode and takes one frame per call$"),
    (np.zeros((2, 1, 8), np.float32), r"^stream 0's input 'x' has size 2 on the batch axis \(axis 0 of "
                                      r"\[batch, 1, 8\]\); one stream is one batch entry: give size 1 there, or "
                                      "leave the axis out$"),
    (np.zeros((8,), np.float32), r"^stream 0's input 'x' has shape \[8\]; expected \[batch, 1, 8\] with size 1 on the "
                                 "batch axis, or without the batch axis$"),
    ({"y": X}, "^stream 0 gives unknown input 'y'; this model's inputs are x$"),
    ([[[0.0] * 8]], "^stream 0's input 'x' has dtype float64; expected float32$"),
])
def test_bad_frames(files, frame, message):
    batcher, sid = _fresh(files)
    with pytest.raises(StreamError, match=message):
        batcher.step({sid: frame})


def test_stream_ids(files):
    batcher, a = _fresh(files)
    with pytest.raises(StreamError, match="^stream 7 was never opened by this StreamBatcher; open streams with open"):
        batcher.step({7: X})
    with pytest.raises(StreamError, match="^stream 'a' was never opened"):
        batcher.reset("a")
    batcher.close(a)
    for call in (lambda: batcher.step({a: X}), lambda: batcher.reset(a), lambda: batcher.close(a),
                 lambda: batcher.state(a)):
        with pytest.raises(StreamError, match=r"^stream 0 was closed; open a new stream with open\(\)$"):
            call()
    with pytest.raises(StreamError, match=r"^step\(\) takes a dict \{stream id: frame\}; got list$"):
        batcher.step([X])


def test_capacity(files):
    batcher, _ = _fresh(files, capacity=2)
    batcher.open()
    with pytest.raises(StreamError, match="^all 2 stream slots are in use; close a stream first or make the "
                                          "StreamBatcher with a larger capacity$"):
        batcher.open()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(StreamError, match="^capacity must be a whole number of streams, at least 1"):
            StreamBatcher(files["gru_step"], capacity=bad)


def test_chunk_calls_need_equal_frame_counts(files):
    batcher, a = _fresh(files, "gru_chunk")
    b = batcher.open()
    x = np.zeros((1, 3, 8), np.float32)
    with pytest.raises(StreamError, match="^stream 1 gives 2 frames of input 'x' but stream 0 gives 3: all "
                                          "streams of one call need the same number of frames; step the others "
                                          "in another call$"):
        batcher.step({a: x, b: x[:, :2]})
    with pytest.raises(StreamError, match=r"^stream 0's input 'x' has no frames \(its time axis has length 0\); "
                                          "expected at least one frame$"):
        batcher.step({a: x[:, :0]})
    assert batcher.step({a: x, b: x})[b]["y"].shape == (1, 3, 16)


def test_multi_input_frames(files):
    batcher, a = _fresh(files, "two_inputs")
    x, z = np.zeros((1, 3), np.float32), np.zeros((1, 2), np.float32)
    with pytest.raises(StreamError, match=r"^stream 0's frame is a ndarray; this model has inputs x, z: give "
                                          r"\{input name: array\} with every input$"):
        batcher.step({a: x})
    with pytest.raises(StreamError, match=r"^stream 0's frame has no input 'z'; give every input of the model "
                                          r"\(x, z\)$"):
        batcher.step({a: {"x": x}})
    with pytest.raises(StreamError, match="^stream 0 gives unknown input 'w'; this model's inputs are x, z$"):
        batcher.step({a: {"x": x, "z": z, "w": z}})
    with pytest.raises(StreamError, match=r"^stream 0's input 'z' has size 3 on axis 1 of \[batch, 2\]; expected 2$"):
        batcher.step({a: {"x": x, "z": x}})
    out = batcher.step({a: {"x": x[0], "z": z}})[a]
    assert out["y"].shape == (1, 6) and out["score"].shape == (1, 1)


def test_shared_input_errors(files):
    batcher, a = _fresh(files, "silero")
    w = np.zeros((1, 16), np.float32)
    with pytest.raises(StreamError, match=r"^input 'sr' has no batch axis, so it is the same for every stream: pass "
                                          r"it as step\(frames, shared=\{'sr': value\}\)$"):
        batcher.step({a: w})
    with pytest.raises(StreamError, match="^stream 0 gives input 'sr', which has no batch axis and is the same for "
                                          "every stream: pass it as step"):
        batcher.step({a: {"input": w, "sr": np.array(16000)}})
    with pytest.raises(StreamError, match="^shared input 'sr' has dtype float64; expected int64$"):
        batcher.step({a: w}, shared={"sr": np.array(16000.0)})
    with pytest.raises(StreamError, match="^shared input 'input' has a batch axis: give it per stream in the frames$"):
        batcher.step({a: w}, shared={"sr": np.array(16000), "input": w})
    with pytest.raises(StreamError, match="^shared input 'rate' is not an input of this model$"):
        batcher.step({a: w}, shared={"sr": np.array(16000), "rate": 1})


def test_models_that_cannot_be_batched(files):
    with pytest.raises(StreamError, match="^input 'input' has a fixed size of 1 on its batch axis, so the file runs "
                                          "at that batch size only; re-export it with a dynamic batch axis$"):
        StreamBatcher(files["silero_fixed"])
    with pytest.raises(StreamError, match="^providers cannot be applied to an open StreamingSession; give the "
                                          "model's path instead$"):
        StreamBatcher(StreamingSession(files["gru_step"]), providers=["CPUExecutionProvider"])


def test_set_state_errors(files):
    batcher, a = _fresh(files)
    h = np.zeros((2, 1, 16), np.float32)
    with pytest.raises(StreamError, match=r"^unknown state 'h'; this model's states are \['gru.h'\]$"):
        batcher.set_state(a, {"gru.h": h, "h": h})
    with pytest.raises(StreamError, match="^state 'gru.h' is missing; give every state of the model$"):
        batcher.set_state(a, {})
    with pytest.raises(StreamError, match="^state 'gru.h' has dtype float64; expected float32$"):
        batcher.set_state(a, {"gru.h": h.astype(np.float64)})
    with pytest.raises(StreamError, match=r"^state 'gru.h' has shape \[2, 2, 16\]; expected \[2, 1, 16\] \(one "
                                          r"stream: size 1 on batch axis 1, or without that axis\)$"):
        batcher.set_state(a, {"gru.h": np.zeros((2, 2, 16), np.float32)})
