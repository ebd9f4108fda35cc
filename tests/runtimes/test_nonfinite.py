"""NaN and infinity in a stream: StreamingSession and StreamBatcher follow their ``nonfinite``
policy (raise / reset / ignore), and quantize refuses non-finite data.

Why the policy exists is checked first: onnxruntime's GRU kernel turns a NaN input into finite
numbers where PyTorch gives NaN, so without the check a stream would carry a wrong state silently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import edgernn
from edgernn.runtimes.batcher import StreamBatcher
from edgernn.runtimes.session import StreamError, StreamingSession
from conftest import invoke, listing

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("nonfinite")
    torch.manual_seed(0)
    gru = nn.GRU(8, 16, batch_first=True).eval()
    made = {"gru_step": folder / "gru_step.onnx", "gru_chunk": folder / "gru_chunk.onnx",
            "lstm_step": folder / "lstm_step.onnx"}
    assert edgernn.export(gru, made["gru_step"], mode="step").passed
    assert edgernn.export(gru, made["gru_chunk"], mode="chunk").passed
    assert edgernn.export(nn.LSTM(4, 6, batch_first=True).eval(), made["lstm_step"], mode="step").passed
    made["torch_gru"] = gru
    return made


def _frames(rng, n: int, batch: int = 3, features: int = 8) -> np.ndarray:
    return rng.standard_normal((batch, n, features)).astype(np.float32)


def test_onnxruntime_does_not_propagate_nan_as_pytorch_does(files) -> None:
    """The reason for the policy: PyTorch's GRU gives NaN from a NaN input, onnxruntime's finite numbers."""
    x = _frames(np.random.default_rng(0), 1, batch=1)
    x[0, 0, 2] = np.nan
    with torch.no_grad():
        want = files["torch_gru"](torch.from_numpy(x))[0].numpy()
    got = StreamingSession(files["gru_step"], nonfinite="ignore").step(x)["y"]
    assert np.isnan(want).all()
    assert np.isfinite(got).any()  # the kernel's answer: not NaN, so not what PyTorch says


@pytest.mark.parametrize("name", ["gru_step", "gru_chunk"])
def test_raise_names_the_input_the_frame_and_the_batch_entry(files, name) -> None:
    rng = np.random.default_rng(1)
    s = StreamingSession(files[name])
    chunk = 1 if name == "gru_step" else 4
    for _ in range(3):
        s.step(_frames(rng, chunk))
    before = s.state
    bad = _frames(rng, chunk)
    bad[2, chunk - 1, 5] = np.inf
    with pytest.raises(StreamError) as e:
        s.step(bad)
    frame = 3 * chunk + chunk - 1
    assert str(e.value).startswith(f"input 'x' holds infinity at frame {frame} of the stream (batch entry 2)")
    after = s.state  # nothing ran: the state is as it was
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert s.stats.calls == 3 and s.stats.nonfinite_resets == 0


def test_raise_names_a_state_that_holds_nan(files) -> None:
    s = StreamingSession(files["lstm_step"])
    x = np.ones((2, 1, 4), np.float32)
    s.step(x)
    state = s.state
    name = sorted(state)[-1]
    state[name][0, 1, 3] = np.nan
    s.set_state(state)
    with pytest.raises(StreamError, match=rf"^state '{name}' holds NaN going into frame 1 of the stream \(batch entry 1\)"):
        s.step(x)


@pytest.mark.parametrize("name", ["gru_step", "gru_chunk"])
def test_reset_starts_only_the_affected_stream_over(files, name) -> None:
    """A frame with NaN runs, then that stream's state goes back to its start values: from the next
    call on it gives what a fresh stream gives; the other streams are untouched."""
    rng = np.random.default_rng(2)
    chunk = 1 if name == "gru_step" else 3
    calls = [_frames(rng, chunk) for _ in range(8)]
    bad = [c.copy() for c in calls]
    bad[3][1, 0, 0] = np.nan
    s = StreamingSession(files[name], nonfinite="reset")
    clean = StreamingSession(files[name], nonfinite="ignore")
    fresh = StreamingSession(files[name])
    got = [s.step(c)["y"] for c in bad]
    want = [clean.step(c)["y"] for c in calls]
    restart = [fresh.step(c[1:2])["y"] for c in calls[4:]]  # stream 1 from the call after the NaN
    assert s.stats.nonfinite_resets == 1 and s.stats.calls == 8
    for t in range(8):
        for b in (0, 2):  # the other streams: as if nothing happened
            np.testing.assert_allclose(got[t][b], want[t][b], atol=1e-6)
    for t, r in zip(range(4, 8), restart):
        np.testing.assert_allclose(got[t][1], r[0], atol=1e-6)
        assert np.abs(got[t][1] - want[t][1]).max() > 1e-3  # (a restart, not the clean stream)


def test_reset_of_a_state_that_holds_infinity_happens_before_the_call(files) -> None:
    s = StreamingSession(files["gru_step"], nonfinite="reset")
    x = _frames(np.random.default_rng(3), 1, batch=2)
    s.step(x)
    state = s.state
    state["gru.h"][0, 0, 0] = -np.inf
    s.set_state(state)
    y = s.step(x)["y"]
    fresh = StreamingSession(files["gru_step"]).step(x)["y"]
    np.testing.assert_allclose(y[0], fresh[0], atol=1e-6)  # stream 0 started over, then ran this frame
    assert np.abs(y[1] - fresh[1]).max() > 1e-3  # stream 1 carried its state
    assert s.stats.nonfinite_resets == 1


def test_ignore_runs_as_given(files) -> None:
    s = StreamingSession(files["gru_step"], nonfinite="ignore")
    x = np.full((1, 1, 8), np.nan, np.float32)
    s.step(x)
    assert s.stats.nonfinite_resets == 0 and s.stats.calls == 1


def test_the_policy_is_checked(files) -> None:
    with pytest.raises(StreamError, match="nonfinite must be one of raise, reset, ignore; got 'skip'"):
        StreamingSession(files["gru_step"], nonfinite="skip")
    with pytest.raises(StreamError, match="nonfinite must be one of"):
        StreamBatcher(files["gru_step"], nonfinite="zero")


def test_the_check_holds_on_every_call_shape(files) -> None:
    """The fast check covers the first shape (its inputs share the state's buffer) and the others."""
    rng = np.random.default_rng(4)
    s = StreamingSession(files["gru_chunk"])
    for n in (2, 2, 5, 5, 2, 7):
        s.step(_frames(rng, n))
    for n in (2, 5, 7):
        bad = _frames(rng, n)
        bad[0, n - 1, 7] = np.nan
        with pytest.raises(StreamError, match="holds NaN"):
            s.step(bad)
        s.step(_frames(rng, n))  # and a clean call after it runs


def test_batcher_raise_names_the_stream(files) -> None:
    rng = np.random.default_rng(5)
    b = StreamBatcher(files["gru_step"], capacity=4)
    ids = [b.open() for _ in range(3)]
    b.step({i: rng.standard_normal((1, 1, 8)).astype(np.float32) for i in ids})
    before = b.state(ids[1])
    frames = {i: rng.standard_normal((1, 1, 8)).astype(np.float32) for i in ids}
    frames[ids[1]][0, 0, 4] = np.nan
    with pytest.raises(StreamError, match=rf"^stream {ids[1]}'s input 'x' holds NaN at frame 0 of the call"):
        b.step(frames)
    assert np.array_equal(b.state(ids[1])["gru.h"], before["gru.h"])


@pytest.mark.parametrize("subset", ["all", "scattered"])
def test_batcher_reset_resets_only_the_affected_stream(files, subset) -> None:
    rng = np.random.default_rng(6)
    b = StreamBatcher(files["gru_step"], capacity=6, nonfinite="reset")
    ids = [b.open() for _ in range(5)]
    stepped = ids if subset == "all" else ids[::2]
    alone = {i: StreamingSession(files["gru_step"]) for i in stepped}
    victim = stepped[1]
    for t in range(6):
        frames = {i: rng.standard_normal((1, 1, 8)).astype(np.float32) for i in stepped}
        fed = dict(frames)
        if t == 2:
            fed[victim] = frames[victim].copy()
            fed[victim][0, 0, 1] = np.inf
        out = b.step(fed)
        for i in stepped:
            if i == victim and t == 2:
                alone[i].reset()  # what the policy does: the stream starts over after this frame
                continue
            want = alone[i].step(frames[i])["y"]
            np.testing.assert_allclose(out[i]["y"], want, atol=1e-5)
    assert b.stats.nonfinite_resets == 1 and b.stats.calls == 6


def test_batcher_reset_of_a_state_before_the_call(files) -> None:
    rng = np.random.default_rng(7)
    b = StreamBatcher(files["lstm_step"], capacity=3, nonfinite="reset")
    a, c = b.open(), b.open()
    frames = {i: rng.standard_normal((1, 1, 4)).astype(np.float32) for i in (a, c)}
    b.step(frames)
    state = b.state(c)
    name = sorted(state)[0]
    state[name][...] = np.nan
    b.set_state(c, state)
    out = b.step(frames)
    fresh = StreamingSession(files["lstm_step"]).step(frames[c])["y"]
    np.testing.assert_allclose(out[c]["y"], fresh, atol=1e-6)
    assert b.stats.nonfinite_resets == 1


def test_quantize_refuses_nonfinite_data(files, tmp_path) -> None:
    data = _frames(np.random.default_rng(8), 50, batch=2)
    data[1, 17, 3] = np.nan
    np.save(tmp_path / "calib.npy", data)
    before = listing(tmp_path)
    for flag in ("--calibration", "--data"):
        r = invoke("quantize", files["gru_chunk"], "-o", tmp_path / "q.onnx", flag, tmp_path / "calib.npy",
                   *(["--method", "static"] if flag == "--calibration" else []))
        assert r.exit_code == 1, r.output
        assert "holds NaN at index [1, 17, 3] (frame 17); give finite data" in r.output
        assert "Traceback" not in r.output
    assert listing(tmp_path) == before


def test_run_follows_the_policy_given(files, tmp_path) -> None:
    data = _frames(np.random.default_rng(9), 12, batch=1)
    data[0, 5, 0] = np.nan
    np.save(tmp_path / "x.npy", data)
    r = invoke("run", files["gru_step"], "-d", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert r.exit_code == 1 and "input 'x' holds NaN at frame 5 of the stream (batch entry 0)" in r.stderr
    assert not (tmp_path / "y.npy").exists()
    r = invoke("run", files["gru_step"], "-d", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--nonfinite", "reset")
    assert r.exit_code == 0 and "1 stream started over from the start state" in r.output, r.output
    y = np.load(tmp_path / "y.npy")
    fresh = StreamingSession(files["gru_step"]).stream(data[:, 6:])["y"]  # after the NaN frame: a new stream
    np.testing.assert_allclose(y[:, 6:], fresh, atol=1e-6)
