"""Models that use their recurrent layers the way user code does: ``flatten_parameters()`` and
attributes read in forward, layers run over a reshaped batch (dual-path blocks), lengths that
must be a multiple of a chunk, a Conv1d-first model that takes [batch, time, channels], and a
cell model whose state argument has no default.

Every export is verified by ``edgernn.export`` itself; the tests also stream their own data
through ``StreamingSession`` and compare with the PyTorch model.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from torch import nn

import edgernn
from edgernn.converters import capture
from edgernn.errors import ExportError

from streams import TOLERANCE, assert_close, assert_verified, session_of, states_of, stream  # noqa: F401


CHUNKS = [1, 3, 7, 16]  # 27 frames


# ---------------------------------------------------------------------------------------------
# the lifted layer is still the user's layer: flatten_parameters(), attributes, parameter names
# ---------------------------------------------------------------------------------------------

class FlattenLSTM(nn.Module):
    """The common ``self.lstm.flatten_parameters()`` at the top of forward (a no-op on CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.frontend = nn.Linear(8, 12)
        self.lstm = nn.LSTM(12, 16, num_layers=2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        self.lstm.flatten_parameters()
        y, _ = self.lstm(torch.relu(self.frontend(x)))
        return self.head(y)

    def reference(self, x, h0, c0):
        y, (h, c) = self.lstm(torch.relu(self.frontend(x)), (h0, c0))
        return self.head(y), h, c


@functools.lru_cache(maxsize=None)
def exported_flatten(mode: str):
    torch.manual_seed(11)
    model = FlattenLSTM().eval()
    return model, edgernn.export(model, mode=mode)


@pytest.mark.parametrize("mode", ["chunk", "step"])
def test_flatten_parameters_in_forward(mode: str) -> None:
    model, report = exported_flatten(mode)
    assert_verified(report)
    assert {s.name: s.shape for s in report.contract.states} == {"lstm.c": (2, "batch", 16),
                                                                  "lstm.h": (2, "batch", 16)}
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, sum(CHUNKS), 8, generator=gen)
    h0, c0 = (0.5 * torch.randn(2, 2, 16, generator=gen) for _ in range(2))
    with torch.no_grad():
        y_zero = model(x).numpy()
        y_ref, h_ref, c_ref = model.reference(x, h0, c0)
    sizes = [1] * sum(CHUNKS) if mode == "step" else CHUNKS
    session = session_of(report)
    assert_close(stream(session, x.numpy(), sizes, 1), y_zero, "output from the init state")
    got = stream(session, x.numpy(), sizes, 1, {"lstm.h": h0.numpy(), "lstm.c": c0.numpy()})
    assert_close(got, y_ref.numpy(), "output from a random state")
    assert_close(session.state["lstm.h"], h_ref.numpy(), "final lstm.h")
    assert_close(session.state["lstm.c"], c_ref.numpy(), "final lstm.c")


def test_wrapped_layer_is_the_layer() -> None:
    """After wrapping, user code sees the same object: its class's attributes and methods, its
    parameters under the same names; the passes see path, spec and counters."""
    torch.manual_seed(12)
    original = FlattenLSTM().eval()
    model = copy.deepcopy(original)
    (w,) = capture.wrap_recurrent_layers(model)
    assert model.lstm is w and w.layer is w and isinstance(w, nn.LSTM)
    assert isinstance(w, capture.StatefulRecurrent) and type(w).__name__ == "StatefulLSTM"
    assert (w.path, w.layer_id, w.spec.kind, w.lifted, w.final, w.capturing) == ("lstm", 0, "lstm", None, None, False)
    assert (w.input_size, w.hidden_size, w.num_layers, w.batch_first, w.bidirectional, w.proj_size) == \
        (12, 16, 2, True, False, 0)
    assert w.weight_ih_l0 is model.lstm._flat_weights[0] and len(w.all_weights) == 2
    w.flatten_parameters()
    assert [k for k, _ in model.named_parameters()] == [k for k, _ in original.named_parameters()]
    assert list(model.state_dict()) == list(original.state_dict())
    x = torch.randn(3, 6, 8)
    with torch.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), original(x).numpy())
    assert (w.calls, w.calls_without_state, w.batches) == (1, 1, [3])
    assert capture.wrap_recurrent_layers(model) == []  # wrapped once


class AttributeState(nn.Module):
    """Builds its start state from the layer's attributes inside forward."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(6, 10, num_layers=2, batch_first=True)
        self.head = nn.Linear(10, 2)

    def forward(self, x, h=None):
        if h is None:
            batch = x.shape[0] if self.gru.batch_first else x.shape[1]
            h = x.new_zeros(self.gru.num_layers * (2 if self.gru.bidirectional else 1), batch, self.gru.hidden_size)
        y, h = self.gru(x, h)
        return self.head(y), h


@pytest.mark.parametrize("mode", ["chunk", "step"])
def test_attributes_read_in_forward(mode: str) -> None:
    torch.manual_seed(13)
    model = AttributeState().eval()
    report = edgernn.export(model, mode=mode)
    assert_verified(report)
    assert {s.name: s.shape for s in report.contract.states} == {"h": (2, "batch", 10)}
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, sum(CHUNKS), 6, generator=gen)
    h0 = 0.5 * torch.randn(2, 3, 10, generator=gen)
    with torch.no_grad():
        y_ref, h_ref = model(x, h0)
    sizes = [1] * sum(CHUNKS) if mode == "step" else CHUNKS
    session = session_of(report)
    assert_close(stream(session, x.numpy(), sizes, 1, {"h": h0.numpy()}), y_ref.numpy(), "output")
    assert_close(session.state["h"], h_ref.numpy(), "final h")


# ---------------------------------------------------------------------------------------------
# dual-path block: a GRU within chunks (batch * chunks) and one across chunks (batch * chunk)
# ---------------------------------------------------------------------------------------------

class DualPath(nn.Module):
    def __init__(self, features: int = 6, hidden: int = 8, chunk: int = 4) -> None:
        super().__init__()
        self.chunk = chunk
        self.proj = nn.Linear(features, hidden)
        self.intra = nn.GRU(hidden, hidden, batch_first=True)
        self.inter = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 3)

    def forward(self, x):
        b, t, _ = x.shape
        h = self.proj(x)
        n = t // self.chunk
        a, _ = self.intra(h.reshape(b * n, self.chunk, -1))  # within each chunk
        a = a.reshape(b, n, self.chunk, -1).permute(0, 2, 1, 3).reshape(b * self.chunk, n, -1)
        a, _ = self.inter(a)  # across chunks
        a = a.reshape(b, self.chunk, n, -1).permute(0, 2, 1, 3).reshape(b, t, -1)
        return self.head(a + h)


def test_dual_path_block_in_sequence_mode() -> None:
    torch.manual_seed(14)
    model = DualPath().eval()
    report = edgernn.export(model, mode="sequence")
    assert_verified(report)
    assert report.contract.states == ()  # both layers run on a reshaped batch: they start from zeros
    (x_spec,) = report.contract.inputs
    assert x_spec.shape == ("batch", "time", 6) and x_spec.frame_multiple == 4
    notes = " ".join(report.notes)
    assert "'intra' runs on a batch of 10" in notes and "'inter' runs on a batch of 8" in notes
    session = session_of(report)
    gen = torch.Generator().manual_seed(3)
    for batch, frames in ((2, 12), (3, 32)):  # lengths that are multiples of the chunk, not traced
        x = torch.randn(batch, frames, 6, generator=gen)
        with torch.no_grad():
            want = model(x).numpy()
        session.reset()
        assert_close(session.step(x.numpy())["y"], want, f"batch {batch}, {frames} frames")


def test_dual_path_block_streams_in_chunk_mode() -> None:
    """The intra-chunk GRU restarts in every chunk of 4 frames (no state pair); the inter-chunk GRU
    runs on batch * 4 rows and is carried as [1, batch, 4, hidden]."""
    torch.manual_seed(14)
    model = DualPath().eval()
    report = edgernn.export(model, mode="chunk")
    assert_verified(report)
    assert {s.name: s.shape for s in report.contract.states} == {"inter.h": (1, "batch", 4, 8)}
    assert report.contract.inputs[0].frame_multiple == 4
    x = torch.randn(2, 32, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = model(x).numpy()
    session = session_of(report)
    for sizes in ([4] * 8, [12, 4, 16], [16, 16]):
        assert_close(stream(session, x.numpy(), sizes, 1), want, f"calls of {sizes}")
    alone = stream(session, x[1:].numpy(), [8] * 4, 1)  # one stream alone: its rows are its own
    assert_close(alone, want[1:], "second stream alone")


class InterleavedDualPath(DualPath):
    """Puts row k * batch + b where DualPath puts b * chunk + k: streams share the inter GRU's rows."""

    def forward(self, x):
        b, t, _ = x.shape
        h = self.proj(x)
        n = t // self.chunk
        a, _ = self.intra(h.reshape(b * n, self.chunk, -1))
        a = a.reshape(b, n, self.chunk, -1).permute(2, 0, 1, 3).reshape(self.chunk * b, n, -1)
        a, _ = self.inter(a)
        a = a.reshape(self.chunk, b, n, -1).permute(1, 2, 0, 3).reshape(b, t, -1)
        return self.head(a + h)


def test_dual_path_block_cannot_step_or_interleave_streams(tmp_path) -> None:
    torch.manual_seed(14)
    path = tmp_path / "dual.onnx"
    with pytest.raises(ExportError) as info:
        edgernn.export(DualPath().eval(), path, mode="step")
    assert str(info.value) == ("layer 'intra' runs on a batch of 10 where the model's batch is 2 (the model "
                               "reshapes its batch); its state cannot be carried between calls: export with "
                               "--mode sequence")
    with pytest.raises(ExportError, match=r"^layer 'inter' runs on 4 rows per stream, but the model does not keep"):
        edgernn.export(InterleavedDualPath().eval(), path, mode="chunk")
    assert not path.exists()


class BlockGRU(nn.Module):
    """Folds each block of 2 frames into one step of a GRU: lengths must be even, state streams."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(2 * 5, 9, batch_first=True)
        self.head = nn.Linear(9, 2 * 3)

    def forward(self, x):
        b, t, f = x.shape
        y, _ = self.gru(x.reshape(b, t // 2, 2 * f))
        return self.head(y).reshape(b, t, 3)


def test_length_multiple_in_chunk_mode() -> None:
    torch.manual_seed(15)
    model = BlockGRU().eval()
    report = edgernn.export(model, mode="chunk", inputs=["x:float32:B,T,5"])  # the GRU sees 2 frames as one
    assert_verified(report)
    assert report.contract.inputs[0].frame_multiple == 2
    assert {s.name for s in report.contract.states} == {"gru.h"}
    x = torch.randn(2, 2 * sum(CHUNKS), 5, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = model(x).numpy()
    assert_close(stream(session_of(report), x.numpy(), [2 * c for c in CHUNKS], 1), want, "even chunks")


# ---------------------------------------------------------------------------------------------
# inferred inputs: a Conv1d-first model fed [batch, time, channels]
# ---------------------------------------------------------------------------------------------

class ConvOverTimeMajor(nn.Module):
    """Takes [batch, time, channels] and transposes for its Conv1d (kernel 1: frame by frame)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(6, 10, kernel_size=1)
        self.gru = nn.GRU(10, 12, batch_first=True)
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        h = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        y, _ = self.gru(h)
        return self.head(y)


def test_conv1d_first_model_taking_batch_time_channels() -> None:
    torch.manual_seed(16)
    model = ConvOverTimeMajor().eval()
    report = edgernn.export(model, mode="chunk")
    assert_verified(report)
    assert report.contract.inputs[0].shape == ("batch", "time", 6)
    x = torch.randn(2, sum(CHUNKS), 6, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = model(x).numpy()
    assert_close(stream(session_of(report), x.numpy(), CHUNKS, 1), want, "output")


def test_input_that_fits_no_layout_shows_the_flag() -> None:
    class Sliced(ConvOverTimeMajor):
        def forward(self, x):
            return self.gru(self.conv(x[..., :3]))[0]

    with pytest.raises(ExportError) as info:
        edgernn.export(Sliced().eval())
    msg = str(info.value)
    assert msg.startswith("cannot infer the input of Sliced: its first layer Conv1d(6 -> 10) fails on "
                          "[batch, 6, time] and [batch, time, 6]")
    assert msg.endswith("pass --input x:float32:B,T,6 (or B,6,T)")


# ---------------------------------------------------------------------------------------------
# a state argument without a default: its shape comes from the model's cell
# ---------------------------------------------------------------------------------------------

class GRUCellNoDefault(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frontend = nn.Linear(5, 7)
        self.cell = nn.GRUCell(7, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, x, hx):
        h = self.cell(torch.tanh(self.frontend(x)), hx)
        return self.head(h), h


class LSTMCellNoDefault(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(5, 12)
        self.head = nn.Linear(12, 2)

    def forward(self, x, state):
        h, c = self.cell(x, state)
        return self.head(h), (h, c)


@pytest.mark.parametrize("cls, states", [(GRUCellNoDefault, {"hx": ("batch", 16)}),
                                         (LSTMCellNoDefault, {"state.0": ("batch", 12), "state.1": ("batch", 12)})])
def test_cell_state_without_default(cls, states) -> None:
    torch.manual_seed(17)
    model = cls().eval()
    report = edgernn.export(model, mode="step")
    assert_verified(report)
    assert {s.name: s.shape for s in report.contract.states} == states
    gen = torch.Generator().manual_seed(6)
    hidden = next(iter(states.values()))[1]
    start = [0.5 * torch.randn(3, hidden, generator=gen) for _ in states]
    state = start[0] if len(start) == 1 else tuple(start)
    xs = torch.randn(8, 3, 5, generator=gen)
    refs = []
    with torch.no_grad():
        for t in range(8):
            y, state = model(xs[t], state)
            refs.append(y.numpy())
    session = session_of(report)
    session.reset(state={name: s.numpy() for name, s in zip(sorted(states), start)})
    assert_close(session.stream(xs.numpy())["y"], np.stack(refs), "outputs of 8 frames")
    finals = [state] if isinstance(state, torch.Tensor) else list(state)
    for name, want in zip(sorted(states), finals):
        assert_close(session.state[name], want.numpy(), f"final {name}")


def test_cell_state_that_does_not_fit_shows_the_flag() -> None:
    class Indexed(GRUCellNoDefault):  # takes [2, batch, 16] and uses the first: zeros [batch, 16] fail
        def forward(self, x, hx):
            h = self.cell(torch.tanh(self.frontend(x)), hx[0])
            return self.head(h), h

    with pytest.raises(ExportError, match=r"pass --input hx:float32:B,16$"):
        edgernn.export(Indexed().eval(), mode="step")
