"""Convolutions and poolings over time stream exactly: context caches, delays, frame multiples.

The models are written the way people write streaming frontends (``padding=k//2``, causal
``F.pad`` before a padding-free conv, TCN-style pad-and-crop, strided convs, Conv2d over
[time, freq], pooling over time). Each export is verified by ``edgernn.export``; the tests then
stream their own data through ``StreamingSession`` in calls of 1, 3, 7 and 16 frames (multiples of
the frame multiple where the model strides), state carried, and compare with PyTorch on the whole
sequence shifted by the declared delay.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgernn
from edgernn.errors import EdgernnError, ExportError
from edgernn.runtimes import StreamingSession

TOLERANCE = 1e-5  # VISION.md "Tolerances"
FRAMES = 64


class ConvFrontend(nn.Module):
    """[batch, time, 12] -> Conv1d over time (causal through F.pad, or padded by the module) -> GRU/LSTM -> head."""

    def __init__(self, kernel: int, dilation: int, stride: int, causal: bool, core: str) -> None:
        super().__init__()
        self.pad = (kernel - 1) * dilation if causal else 0
        padding = 0 if causal else (kernel - 1) * dilation // 2
        self.front = nn.Sequential(nn.Conv1d(12, 16, kernel, stride=stride, padding=padding, dilation=dilation),
                                   nn.BatchNorm1d(16), nn.ReLU())
        self.core = (nn.GRU if core == "gru" else nn.LSTM)(16, 20, batch_first=True)
        self.head = nn.Linear(20, 3)

    def forward(self, x):
        h = x.transpose(1, 2)
        if self.pad:
            h = F.pad(h, (self.pad, 0))
        y, _ = self.core(self.front(h).transpose(1, 2))
        return self.head(y)


class TCNBlock(nn.Module):
    """Pad (k-1)*d on both sides, crop the right ("chomp"), residual: a temporal conv network."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(12, 12, 3, padding=4, dilation=2)
        self.conv2 = nn.Conv1d(12, 12, 3, padding=2)
        self.gru = nn.GRU(12, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, x):  # [batch, 12, time]
        h = torch.relu(self.conv1(x)[:, :, :-4])
        h = torch.relu(self.conv2(h)[:, :, :-2]) + x
        y, _ = self.gru(h.permute(2, 0, 1))
        return self.head(y)


class SpectroCRNN(nn.Module):
    """Conv2d over [time, freq] ('same' over both), max pooling over frequency and time, GRU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, (3, 3), padding=(1, 1))
        self.pool = nn.MaxPool2d((2, 2))
        self.gru = nn.GRU(4 * 8, 16, batch_first=True)
        self.head = nn.Linear(16, 2)

    def forward(self, x):  # [batch, time, 16]
        h = self.pool(torch.relu(self.conv(x.unsqueeze(1))))  # [batch, 4, time/2, 8]
        b, c, t, f = h.shape
        y, _ = self.gru(h.permute(0, 2, 1, 3).reshape(b, t, c * f))
        return self.head(y)


class WaveformFrontend(nn.Module):
    """A learned frontend over raw samples: Conv1d(kernel 64, stride 32, padding 16), then a GRU."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv1d(1, 8, 64, stride=32, padding=16)
        self.gru = nn.GRU(8, 12, batch_first=True)
        self.head = nn.Linear(12, 2)

    def forward(self, wav):  # [batch, samples]
        return self.head(self.gru(torch.relu(self.enc(wav.unsqueeze(1))).transpose(1, 2))[0])


CASES = {
    # name: (factory, --input, data layout time axis, expected delay, expected frame multiple)
    "causal-k5-d2-lstm": (lambda: ConvFrontend(5, 2, 1, True, "lstm"), "x:float32:B,T,12", 1, 0, 1),
    "same-k3-d1-lstm": (lambda: ConvFrontend(3, 1, 1, False, "lstm"), "x:float32:B,T,12", 1, 1, 1),
    "same-k5-d2-gru": (lambda: ConvFrontend(5, 2, 1, False, "gru"), "x:float32:B,T,12", 1, 4, 1),
    # stride 2, padding 1: output i reads frames 2i-1..2i+1, all inside a call of an even length: no delay
    "same-k3-s2-gru": (lambda: ConvFrontend(3, 1, 2, False, "gru"), "x:float32:B,T,12", 1, 0, 2),
    "causal-k5-s2-lstm": (lambda: ConvFrontend(5, 1, 2, True, "lstm"), "x:float32:B,T,12", 1, 0, 2),
    "tcn-chomp-residual": (TCNBlock, "x:float32:B,12,T", 2, 0, 1),
    "conv2d-time-freq-pool": (SpectroCRNN, "x:float32:B,T,16", 1, 1, 2),
    # kernel wider than the short probes, stride 32: probed at longer lengths, calls of 32 samples
    "waveform-k64-s32": (WaveformFrontend, "wav:float32:B,T", 1, 1, 32),
}


@functools.lru_cache(maxsize=None)
def exported(name: str, mode: str = "chunk"):
    factory, spec, *_ = CASES[name]
    torch.manual_seed(sum(map(ord, name)))
    model = factory()
    for m in model.modules():  # a trained BatchNorm: running statistics that are not 0 and 1
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    return model, edgernn.export(model, mode=mode, inputs=[spec])


def stream(session: StreamingSession, x: np.ndarray, size: int, axis: int) -> np.ndarray:
    session.reset(x.shape[0])
    pieces = [session.step(np.take(x, range(t, min(t + size, x.shape[axis])), axis=axis))["y"]
              for t in range(0, x.shape[axis], size)]
    return np.concatenate(pieces, axis=0 if pieces[0].shape[0] != x.shape[0] else 1)


def assert_shifted(got: np.ndarray, want: np.ndarray, delay: int, axis: int, what: str) -> None:
    """Frame t of the stream is frame t - delay of PyTorch on the whole sequence."""
    n = got.shape[axis] - delay
    assert n > FRAMES // 4, f"{what}: only {n} frames to compare"
    a = np.take(got, range(delay, delay + n), axis=axis)
    b = np.take(want, range(n), axis=axis)
    scale = max(1.0, float(np.max(np.abs(b))))
    np.testing.assert_allclose(a, b, rtol=0, atol=TOLERANCE * scale, err_msg=what)


@pytest.mark.parametrize("name", list(CASES))
def test_streams_like_the_whole_sequence_shifted_by_its_delay(name: str) -> None:
    model, report = exported(name)
    _, _, t_axis, delay, multiple = CASES[name]
    assert report.parity.passed, report.parity.summary()
    out, inp = report.contract.outputs[0], report.contract.inputs[0]
    assert (out.delay, inp.frame_multiple) == (delay, multiple)
    assert any(s.name.endswith(".context") for s in report.contract.states)
    shape = [2, FRAMES, 16 if name.startswith("conv2d") else 12] if t_axis == 1 else [2, 12, FRAMES]
    if name.startswith("waveform"):
        shape = [2, FRAMES * multiple]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(x).numpy()
    session = StreamingSession(report.model.SerializeToString())
    for size in (1, 3, 7, 16):
        size *= multiple
        got = stream(session, x.numpy(), size, t_axis)
        assert_shifted(got, want, delay, out.time_axis, f"{name}, calls of {size} frames")


def test_step_mode_carries_context_and_skips_warmup() -> None:
    model, report = exported("same-k5-d2-gru", "step")
    assert report.contract.outputs[0].delay == 4
    names = {s.name: s for s in report.contract.states}
    assert names["front.0.context"].shape == ("batch", 12, 8)
    assert names["core.warmup"].dtype == "int64" and names["core.warmup"].shape == ("batch", 1)
    x = torch.randn(1, 40, 12, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = model(x).numpy()
    got = stream(StreamingSession(report.model.SerializeToString()), x.numpy(), 1, 1)
    assert_shifted(got, want, 4, 1, "one frame per call")


def test_a_call_off_the_frame_multiple_is_refused() -> None:
    _, report = exported("same-k3-s2-gru")
    session = StreamingSession(report.model.SerializeToString())
    with pytest.raises(EdgernnError, match="multiple of 2"):
        session.step(np.zeros((1, 3, 12), np.float32))


def test_strided_model_cannot_export_in_step_mode() -> None:
    with pytest.raises(ExportError, match=r"^front\.0: Conv1d with stride 2 over time needs calls of 2 frames"):
        exported("same-k3-s2-gru", "step")


def test_sequence_mode_keeps_the_models_own_padding() -> None:
    model, report = exported("same-k3-d1-lstm", "sequence")
    assert report.parity.passed
    assert report.contract.outputs[0].delay == 0
    assert not any(s.name.endswith((".context", ".warmup")) for s in report.contract.states)


class MixedDelays(nn.Module):
    """A 'same' conv (one frame of lookahead) added to its own input (none): no single delay fits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.gru = nn.GRU(8, 8, batch_first=True)

    def forward(self, x):  # [batch, 8, time]
        y, _ = self.gru((x + torch.relu(self.conv(x))).transpose(1, 2))
        return y


class Attentive(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(8, 8, batch_first=True)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        y, _ = self.gru(x)
        return self.attention(y, y, y)[0]


@pytest.mark.parametrize("model, spec, message", [
    (MixedDelays, "x:float32:B,8,T", r"^gru: its input differs when the sequence streams .*--mode sequence"),
    (Attentive, "x:float32:B,T,8", r"^attention: MultiheadAttention looks at every frame .*--mode sequence"),
])
def test_models_that_cannot_stream_are_refused_naming_the_module(model, spec, message, tmp_path) -> None:
    path = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match=message):
        edgernn.export(model().eval(), path, mode="chunk", inputs=[spec])
    assert not path.exists()


def test_int8_and_fp16_follow_the_context_caches(tmp_path) -> None:
    """Dynamic int8 and fp16 of a conv-cached, delayed file: judged on decisions over a stream."""
    from edgernn.converters.quantize import quantize

    model, report = exported("same-k3-d1-lstm")
    path = tmp_path / "crnn.onnx"
    path.write_bytes(report.model.SerializeToString())
    x = torch.randn(1, 400, 12, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = model(x).numpy()[0, :-1].argmax(-1)
    for method in ("dynamic", "fp16"):
        q = quantize(path, method=method, steps=400)
        assert q.passed and q.path, q.to_json()
        got = stream(StreamingSession(q.path), x.numpy(), 16, 1)[0, 1:].argmax(-1)
        assert float(np.mean(got == want)) >= 0.97, method


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_quantize_feeds_whole_frame_multiples(method: str, tmp_path) -> None:
    """A file that strides over time (frame_multiple 2): the accuracy check and the calibration
    feed calls of whole multiples, whatever the stream length asked for (here odd)."""
    from edgernn.converters.quantize import quantize

    _, report = exported("same-k3-s2-gru")
    path = tmp_path / "strided.onnx"
    path.write_bytes(report.model.SerializeToString())
    q = quantize(path, method=method, steps=301, min_size=0)  # small layers: int8 anyway
    assert q.passed, q.to_json()
    assert q.accuracy.steps == 300 and q.accuracy.chunk % 2 == 0


class FinalStateAfterLookahead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3, padding=1)
        self.gru = nn.GRU(4, 6, batch_first=True)

    def forward(self, x):  # [batch, 4, time] -> (per-frame output, final state)
        return self.gru(self.conv(x).transpose(1, 2))


def test_an_output_without_time_after_a_lookahead_is_refused() -> None:
    with pytest.raises(ExportError, match=r"^output 1 of FinalStateAfterLookahead.forward has no time axis .* comes "
                                          r"after a lookahead \(conv: Conv1d"):
        edgernn.export(FinalStateAfterLookahead().eval(), mode="chunk", inputs=["x:float32:B,4,T"])


def test_batcher_streams_opened_at_different_times_each_equal_pytorch() -> None:
    """StreamBatcher carries the context caches and warm-up counters per stream: a stream opened
    later (its counter at zero while the others' are done) still equals PyTorch shifted by the delay."""
    from edgernn.runtimes import StreamBatcher

    model, report = exported("same-k5-d2-gru")
    batcher = StreamBatcher(report.model.SerializeToString(), capacity=3)
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((1, 48, 12)).astype(np.float32) for _ in range(3)]
    ids, ys = [], {}
    for call in range(6 + 2 * 2):
        if call in (0, 2, 4):  # a new stream every two calls
            ids.append(batcher.open())
            ys[ids[-1]] = []
        frames = {}
        for k, sid in enumerate(ids):
            start = (call - 2 * k) * 8
            if start < 48:
                frames[sid] = xs[k][:, start:start + 8]
        for sid, out in batcher.step(frames).items():
            ys[sid].append(out["y"])
    for k, sid in enumerate(ids):
        with torch.no_grad():
            want = model(torch.from_numpy(xs[k])).numpy()
        assert_shifted(np.concatenate(ys[sid], axis=1), want, 4, 1, f"stream {k}")


class CausalConv1d(nn.Conv1d):
    """The subclass TCN and WaveNet code defines: it pads its own input on the left in forward."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int = 1) -> None:
        super().__init__(cin, cout, kernel, dilation=dilation)
        self.left = (kernel - 1) * dilation

    def forward(self, x):
        return super().forward(F.pad(x, (self.left, 0)))


class SymmetricConv1d(nn.Conv1d):
    def forward(self, x):
        return super().forward(F.pad(x, (1, 1)))


class WaveNetLike(nn.Module):
    def __init__(self, conv=CausalConv1d) -> None:
        super().__init__()
        self.c1 = conv(8, 8, 2) if conv is CausalConv1d else conv(8, 8, 3)
        self.c2 = CausalConv1d(8, 8, 2, dilation=2)
        self.gru = nn.GRU(8, 10, batch_first=True)

    def forward(self, x):  # [batch, 8, time]
        h = torch.tanh(self.c1(x)) + x
        h = torch.tanh(self.c2(h)) + h
        return self.gru(h.transpose(1, 2))[0]


def test_a_causal_conv_subclass_that_pads_in_forward_streams_without_delay() -> None:
    torch.manual_seed(13)
    model = WaveNetLike().eval()
    report = edgernn.export(model, mode="chunk", inputs=["x:float32:B,8,T"])
    assert report.contract.outputs[0].delay == 0
    assert {s.name: s.shape for s in report.contract.states if s.name.endswith(".context")} == {
        "c1.context": ("batch", 8, 1), "c2.context": ("batch", 8, 2)}
    x = torch.randn(1, 8, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(x).numpy()
    got = stream(StreamingSession(report.model.SerializeToString()), x.numpy(), 7, 2)
    assert_shifted(got, want, 0, 1, "calls of 7 frames")
    with pytest.raises(ExportError, match=r"^c1: SymmetricConv1d overrides forward and pads time"):
        edgernn.export(WaveNetLike(SymmetricConv1d).eval(), mode="chunk", inputs=["x:float32:B,8,T"])
