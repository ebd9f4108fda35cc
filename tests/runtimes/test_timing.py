"""Strides and lookahead over time in the contract (``frame_multiple`` on inputs, ``delay`` on
outputs): StreamingSession, StreamBatcher and the Triton repository honour them (files from the
``timed_files`` fixture in tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgernn.contract import ContractError
from edgernn.runtimes import StreamError, StreamingSession
from edgernn.runtimes.batcher import StreamBatcher


def _x(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _conv(files, x: np.ndarray) -> np.ndarray:
    """PyTorch's 'same'-padded Conv1d on the whole sequence ([batch, time, 3] -> [batch, time, 4])."""
    with torch.no_grad():
        return files["conv_module"](torch.from_numpy(x).transpose(1, 2)).transpose(1, 2).numpy()


def test_a_call_that_is_not_a_multiple_of_frame_multiple_is_refused(timed_files):
    s = StreamingSession(timed_files["gru_m2_d1"])
    assert s.frame_multiple == 2 and s.frame_multiples == {"x": 2}
    assert s.delay == 1 and s.delays == {"y": 1}
    with pytest.raises(StreamError) as e:
        s.step(_x((1, 3, 8)))
    assert str(e.value) == ("input 'x' takes a multiple of 2 frames per call (the model strides over time or works in blocks of frames); got 3")
    assert s.step(_x((1, 4, 8)))["y"].shape == (1, 4, 16)
    assert s.step(_x((1, 2, 8)))["y"].shape == (1, 2, 16)  # the shape seen before passes; a new one is checked
    with pytest.raises(StreamError, match="got 1$"):
        s.step(_x((1, 1, 8)))


def test_defaults_say_any_number_of_frames_and_no_delay(timed_files):
    s = StreamingSession(timed_files["gru"])
    assert (s.frame_multiple, s.delay, s.delays) == (1, 0, {"y": 0})
    assert s.step(_x((1, 3, 8)))["y"].shape == (1, 3, 16)


def test_stream_refuses_a_chunk_or_a_length_that_is_not_a_multiple(timed_files):
    s = StreamingSession(timed_files["gru_m2_d1"])
    with pytest.raises(StreamError, match=r"^chunk 3 is not a multiple of 2: input 'x' takes a multiple of 2 frames "
                                          r"per call \(the model strides over time or works in blocks of frames\)$"):
        s.stream(_x((1, 12, 8)), chunk=3)
    with pytest.raises(StreamError, match=r"input 'x' has 7 frames, not a multiple of 2 .* multiple of 2 frames$"):
        s.stream(_x((1, 7, 8)), chunk=2)
    assert s.stream(_x((1, 12, 8)), chunk=4)["y"].shape == (1, 12, 16)


def test_a_step_file_with_a_frame_multiple_is_refused_at_open(timed_files):
    with pytest.raises(ContractError, match=r"is a step-mode file whose input 'x' takes a multiple of 2 frames per "
                                            r"call, but a step file takes one frame per call; re-export it in chunk"):
        StreamingSession(timed_files["gru_step_m2"])


@pytest.mark.parametrize("name, chunk", [("conv", 1), ("conv", 5), ("conv", 12), ("conv_m2", 2), ("conv_m2", 4)])
def test_stream_align_equals_pytorch_on_the_whole_sequence(timed_files, name, chunk):
    x = _x((2, 12, 3), seed=chunk)
    want = _conv(timed_files, x)
    s = StreamingSession(timed_files[name])
    raw = s.stream(x, chunk=chunk)["y"]  # as the file produces them: frame t is the model's frame t - 1
    assert raw.shape == want.shape
    np.testing.assert_allclose(raw[:, 1:], want[:, :-1], atol=1e-5)
    s.reset()
    aligned = s.stream(x, chunk=chunk, align=True)["y"]
    assert aligned.shape == want.shape
    np.testing.assert_allclose(aligned, want, atol=1e-5)


def test_align_starts_a_stream(timed_files):
    s = StreamingSession(timed_files["conv"])
    s.step(_x((1, 2, 3)))
    with pytest.raises(StreamError, match=r"align=True drops the first frames of a stream, so it must start one: "
                                          r"call reset\(\) first"):
        s.stream(_x((1, 4, 3)), chunk=2, align=True)
    s.reset()
    assert s.stream(_x((1, 4, 3)), chunk=2, align=True)["y"].shape == (1, 4, 4)
    plain = StreamingSession(timed_files["gru"])  # no delay: align changes nothing
    plain.step(_x((1, 2, 8)))
    assert plain.stream(_x((1, 3, 8)), chunk=2, align=True)["y"].shape == (1, 3, 16)


def test_batcher_steps_multiples_and_refuses_other_counts(timed_files):
    b = StreamBatcher(timed_files["gru_m2_d1"], capacity=4)
    assert b.frame_multiple == 2 and b.delays == {"y": 1}
    a, c = b.open(), b.open()
    out = b.step({a: _x((1, 4, 8)), c: _x((1, 4, 8), seed=1)})
    assert out[a]["y"].shape == (1, 4, 16)
    with pytest.raises(StreamError, match=r"^stream 0's input 'x' has 3 frames; the model takes a multiple of 2 "
                                          r"frames per call \(it strides over time\)$"):
        b.step({a: _x((1, 3, 8)), c: _x((1, 3, 8))})


def test_triton_repository_carries_the_fields(timed_files, tmp_path):
    from edgernn.runtimes.triton import triton_repository

    r = triton_repository(timed_files["gru_m2_d1"], tmp_path, max_batch_size=0)
    assert r.inputs[0]["frame_multiple"] == 2 and r.outputs[0]["delay"] == 1
    assert "frame_multiple" not in r.outputs[0] and "delay" not in r.inputs[0]
    assert any("multiple of 2 frames" in n for n in r.notes) and any("1 frame of lookahead" in n for n in r.notes)
    assert "# input 'x': each request carries a multiple of 2 frames" in r.config_text
    import onnx

    from edgernn.contract import read_metadata

    c = read_metadata(onnx.load(r.model_path))
    assert c.inputs[0].frame_multiple == 2 and c.outputs[0].delay == 1
    plain = triton_repository(timed_files["gru"], tmp_path / "plain", max_batch_size=0)
    assert "frame_multiple" not in plain.inputs[0] and not any("lookahead" in n for n in plain.notes)
