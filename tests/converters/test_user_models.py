"""User models built around recurrent layers and cells: state lifting, explicit state arguments,
inferred inputs, several outputs, and a model that cannot stream (verification must catch it).

Each export is verified by ``edgernn.export`` itself; the tests also stream their own data through
``StreamingSession`` and compare with the PyTorch model, from random initial states where the
model lets us pass one.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

import edgernn
from edgernn.errors import ExportError
from edgernn.runtimes import StreamingSession

from streams import TOLERANCE, assert_close, assert_verified, session_of, states_of, stream  # noqa: F401

RECURRENT_OPS = {"GRU", "LSTM", "RNN", "Scan"}


def sizes_for(mode: str, total: int) -> list[int]:
    return [1] * total if mode == "step" else [3, 1, total - 4]


# ---------------------------------------------------------------------------------------------
# (a) frontend + recurrent core + head, forward(x) takes no state: the core's state is lifted
# ---------------------------------------------------------------------------------------------

class LinearFrontendLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frontend = nn.Sequential(nn.Linear(10, 12), nn.ReLU())
        self.core = nn.LSTM(12, 19, num_layers=2, batch_first=True)
        self.head = nn.Linear(19, 3)

    def forward(self, x):
        y, _ = self.core(self.frontend(x))
        return self.head(y)

    def reference(self, x, h0, c0):
        """What the lifted graph computes from a given initial state."""
        y, (h, c) = self.core(self.frontend(x), (h0, c0))
        return self.head(y), h, c


class ConvFrontendGRU(nn.Module):
    """Conv1d over the features of each frame (kernel 1): ``x`` is [batch, channels, time]."""

    def __init__(self) -> None:
        super().__init__()
        self.frontend = nn.Conv1d(6, 10, kernel_size=1)
        self.core = nn.GRU(10, 11, num_layers=3)
        self.head = nn.Linear(11, 2)

    def forward(self, x):
        y, _ = self.core(torch.tanh(self.frontend(x)).permute(2, 0, 1))
        return self.head(y)

    def reference(self, x, h0):
        y, h = self.core(torch.tanh(self.frontend(x)).permute(2, 0, 1), h0)
        return self.head(y), h


@functools.lru_cache(maxsize=None)
def exported_frontend(cls_name: str, mode: str):
    torch.manual_seed(21)
    model = {"lstm": LinearFrontendLSTM, "gru": ConvFrontendGRU}[cls_name]().eval()
    return model, edgernn.export(model, mode=mode)


@pytest.mark.parametrize("mode", ["chunk", "step"])
def test_frontend_lstm_state_is_lifted(mode: str) -> None:
    model, report = exported_frontend("lstm", mode)
    assert_verified(report)
    assert states_of(report) == {"core.c": (2, "batch", 19), "core.h": (2, "batch", 19)}
    assert report.contract.inputs[0].shape == ("batch", 1 if mode == "step" else "time", 10)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 9, 10, generator=gen)
    h0, c0 = (0.6 * torch.randn(2, 3, 19, generator=gen) for _ in range(2))
    with torch.no_grad():
        y_ref, h_ref, c_ref = model.reference(x, h0, c0)
        y_zero = model(x)
    session = session_of(report)
    y = stream(session, x.numpy(), sizes_for(mode, 9), 1, {"core.h": h0.numpy(), "core.c": c0.numpy()})
    assert_close(y, y_ref.numpy(), "output from a random state")
    assert_close(session.state["core.h"], h_ref.numpy(), "final core.h")
    assert_close(session.state["core.c"], c_ref.numpy(), "final core.c")
    assert_close(stream(session, x.numpy(), sizes_for(mode, 9), 1), y_zero.numpy(), "output from zero state")


@pytest.mark.parametrize("mode", ["chunk", "step"])
def test_conv_frontend_gru_state_is_lifted(mode: str) -> None:
    model, report = exported_frontend("gru", mode)
    assert_verified(report)
    assert states_of(report) == {"core.h": (3, "batch", 11)}
    inp = report.contract.inputs[0]
    assert inp.shape == ("batch", 6, 1 if mode == "step" else "time") and inp.time_axis == 2
    assert report.contract.outputs[0].time_axis == 0  # the model returns time-major frames
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, 8, generator=gen)
    h0 = 0.6 * torch.randn(3, 2, 11, generator=gen)
    with torch.no_grad():
        y_ref, h_ref = model.reference(x, h0)
    session = session_of(report)
    pieces, start = [], 0
    session.reset(state={"core.h": h0.numpy()})
    for size in sizes_for(mode, 8):
        pieces.append(session.step(x[:, :, start:start + size].numpy())["y"])
        start += size
    assert_close(np.concatenate(pieces, axis=0), y_ref.numpy(), "output")
    assert_close(session.state["core.h"], h_ref.numpy(), "final core.h")


def test_frontend_model_written_to_file(tmp_path) -> None:
    torch.manual_seed(4)
    model = LinearFrontendLSTM().eval()
    path = tmp_path / "vad.onnx"
    report = edgernn.export(model, path, mode="chunk")
    session = StreamingSession(path)
    x = torch.randn(2, 12, 10)
    with torch.no_grad():
        y_ref = model(x).numpy()
    assert_close(session.stream(x.numpy(), chunk=5)["y"], y_ref, "file streamed in chunks of 5")
    assert {s.name for s in session.states} == {"core.h", "core.c"}
    assert report.path == str(path)


# ---------------------------------------------------------------------------------------------
# (b) forward(x, state) with an LSTMCell's h and c stacked in one [2, batch, hidden] tensor
# ---------------------------------------------------------------------------------------------

class StackedCellBase(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 20)
        self.cell = nn.LSTMCell(20, 32)
        self.head = nn.Linear(32, 4)

    def run(self, x, stacked):
        if stacked is None:
            stacked = x.new_zeros(2, x.shape[0], 32)
        h, c = self.cell(torch.relu(self.proj(x)), (stacked[0], stacked[1]))
        return self.head(h), torch.stack([h, c])


class NamedState(StackedCellBase):  # found by the name rule, shape probed through the default
    def forward(self, x, state=None):
        return self.run(x, state)


class OddlyNamed(StackedCellBase):  # "s" is not a state name: needs state_args
    def forward(self, x, s=None):
        return self.run(x, s)


class WithInitHook(StackedCellBase):  # no default: the shape comes from initial_state
    def forward(self, x, state):
        return self.run(x, state)

    def initial_state(self, batch_size: int):
        return torch.zeros(2, batch_size, 32)


class OddlyNamedNoDefault(StackedCellBase):  # the shape comes from --input
    def forward(self, x, s):
        return self.run(x, s)


STACKED = {
    "name-rule": (NamedState, {}, "state"),
    "state_args": (OddlyNamed, {"state_args": ["s"]}, "s"),
    "initial_state": (WithInitHook, {}, "state"),
    "inputs": (OddlyNamedNoDefault, {"inputs": ["x:float32:B,16", "s:float32:2,B,32"], "state_args": ["s"]}, "s"),
    "inputs-name-rule": (WithInitHook, {"inputs": ["x:float32:B,16", "state:float32:2,B,32"]}, "state"),
}


@pytest.mark.parametrize("how", list(STACKED))
def test_stacked_lstmcell_state(how: str) -> None:
    cls, kwargs, arg = STACKED[how]
    torch.manual_seed(31)
    model = cls().eval()
    report = edgernn.export(model, mode="step", **kwargs)
    assert_verified(report)
    assert states_of(report) == {arg: (2, "batch", 32)}
    (state,) = report.contract.states
    assert (state.input, state.output, state.batch_axis) == (f"state_in.{arg}", f"state_out.{arg}", 1)
    assert [t.name for t in report.contract.inputs] == ["x"] and report.contract.inputs[0].shape == ("batch", 16)
    assert [t.name for t in report.contract.outputs] == ["y"]

    session = session_of(report)
    gen = torch.Generator().manual_seed(3)
    s = 0.5 * torch.randn(2, 4, 32, generator=gen)
    session.reset(state={arg: s.numpy()})
    for t in range(6):
        x = torch.randn(4, 16, generator=gen)
        with torch.no_grad():
            y_ref, s = model(x, s)
        assert_close(session.step(x.numpy())["y"], y_ref.numpy(), f"frame {t}")
    assert_close(session.state[arg], s.numpy(), "final state")


def test_oddly_named_argument_without_state_args_is_data() -> None:
    """Documented behaviour: only names matching the rule (state, hidden, memory, carry, h0...)
    are states by default; ``--input`` gives a shape, not state-ness. ``s`` stays a data input and
    the new state is a plain output."""
    torch.manual_seed(31)
    report = edgernn.export(OddlyNamedNoDefault().eval(), mode="step",
                            inputs=["x:float32:B,16", "s:float32:2,B,32"])
    assert_verified(report)
    assert report.contract.states == ()
    assert [t.name for t in report.contract.inputs] == ["x", "s"]
    assert [t.name for t in report.contract.outputs] == ["y.0", "y.1"]


class LearnedStart(StackedCellBase):
    """initial_state() hands out a trainable start state (a Parameter: it requires grad)."""

    def __init__(self, start: float) -> None:
        super().__init__()
        self.start = nn.Parameter(torch.full((2, 1, 32), start))

    def forward(self, x, state):
        return self.run(x, state)

    def initial_state(self, batch_size: int):
        return self.start.expand(2, batch_size, 32)


def test_initial_state_that_requires_grad() -> None:
    torch.manual_seed(32)
    report = edgernn.export(LearnedStart(0.0).eval(), mode="step")
    assert_verified(report)
    assert [(s.name, s.init) for s in report.contract.states] == [("state", "zeros")]


def test_nonzero_initial_state_is_stored_in_the_file(tmp_path) -> None:
    """A learned start state is stored as an initializer (size 1 on the batch axis) and named by
    the state's init; a fresh session starts from it, as PyTorch's initial_state() does."""
    model = LearnedStart(0.3).eval()
    torch.manual_seed(33)
    with torch.no_grad():
        model.start.add_(0.1 * torch.randn_like(model.start))
    report = edgernn.export(model, tmp_path / "start.onnx", mode="step")
    assert_verified(report)
    assert [(s.name, s.init) for s in report.contract.states] == [("state", {"initializer": "state_init.state"})]
    session = edgernn.open(tmp_path / "start.onnx")
    session.reset(3)
    want = model.initial_state(3).detach().numpy()
    np.testing.assert_array_equal(session.state["state"], want)
    x = np.random.default_rng(0).standard_normal((6, 3, 16)).astype(np.float32)
    session.reset()
    got = session.stream(x)["y"]
    state, ys = model.initial_state(3), []
    with torch.no_grad():
        for t in range(6):
            y, state = model(torch.from_numpy(x[t]), state)
            ys.append(y.numpy())
    np.testing.assert_allclose(got, np.stack(ys), atol=1e-5)


def test_start_values_that_differ_between_streams_are_refused() -> None:
    class PerStream(LearnedStart):
        def initial_state(self, batch_size: int):
            return torch.arange(batch_size, dtype=torch.float32).view(1, batch_size, 1).expand(2, batch_size, 32) + 1

    with pytest.raises(ExportError, match="differ between streams"):
        edgernn.export(PerStream(0.0).eval(), mode="step")


def test_state_shape_cannot_be_guessed() -> None:
    class NoHint(StackedCellBase):
        def forward(self, x, state):
            return self.run(x, state)

    with pytest.raises(ExportError, match="initial_state"):
        edgernn.export(NoHint(), mode="step")


# ---------------------------------------------------------------------------------------------
# (c) GRUCell / RNNCell models: one frame per call
# ---------------------------------------------------------------------------------------------

class GRUCellModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(9, 14)
        self.head = nn.Linear(14, 3)

    def forward(self, x, h=None):
        h = self.cell(x, h)
        return self.head(h), h


class RNNCellModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frontend = nn.Linear(5, 8)
        self.cell = nn.RNNCell(8, 15, nonlinearity="tanh")

    def forward(self, x, hidden):
        h = self.cell(self.frontend(x), hidden)
        return torch.sigmoid(h), h

    def init_hidden(self, batch_size: int):
        return torch.zeros(batch_size, 15)


CELL_MODELS = {"GRUCell": (GRUCellModel, "h", 9, 14), "RNNCell": (RNNCellModel, "hidden", 5, 15)}


@pytest.mark.parametrize("name", list(CELL_MODELS))
def test_cell_model_step(name: str) -> None:
    cls, arg, n_in, hidden = CELL_MODELS[name]
    torch.manual_seed(41)
    model = cls().eval()
    report = edgernn.export(model, mode="step")
    assert_verified(report)
    assert states_of(report) == {arg: ("batch", hidden)}
    assert report.contract.inputs[0].shape == ("batch", n_in)  # inferred: one frame, no time axis
    assert not {n.op_type for n in report.model.graph.node} & RECURRENT_OPS
    gen = torch.Generator().manual_seed(4)
    h0 = torch.randn(2, hidden, generator=gen)
    xs = torch.randn(8, 2, n_in, generator=gen)
    refs, h = [], h0
    with torch.no_grad():
        for t in range(8):
            y, h = model(xs[t], h)
            refs.append(y.numpy())
    session = session_of(report)
    session.reset(state={arg: h0.numpy()})
    # stream() takes per-frame models' frames on a new leading time axis
    assert_close(session.stream(xs.numpy())["y"], np.stack(refs), "outputs of 8 frames")
    assert_close(session.state[arg], h.numpy(), "final state")


@pytest.mark.parametrize("mode", ["chunk", "sequence"])
def test_cell_model_in_chunk_mode_scans_its_step_graph(mode: str) -> None:
    """A one-frame model in chunk/sequence mode: its step graph runs in a Scan over a new leading
    time axis; chunks of any size carry the state like frame-by-frame PyTorch."""
    torch.manual_seed(5)
    model = GRUCellModel().eval()
    report = edgernn.export(model, mode=mode)
    assert_verified(report)
    assert [n.op_type for n in report.model.graph.node] == ["Scan"]
    (x_spec,) = report.contract.inputs
    assert x_spec.shape[0] == "time" and x_spec.time_axis == 0 and x_spec.batch_axis == 1
    assert report.contract.outputs[0].time_axis == 0
    arg = report.contract.states[0].name
    gen = torch.Generator().manual_seed(6)
    xs = torch.randn(9, 2, x_spec.shape[2], generator=gen)
    h0 = torch.randn(*report.contract.states[0].concrete_shape(2), generator=gen)
    refs, h = [], h0
    with torch.no_grad():
        for t in range(9):
            y, h = model(xs[t], h)
            refs.append(y.numpy())
    session = session_of(report)
    session.reset(state={arg: h0.numpy()})
    chunk = 4 if mode == "chunk" else 9
    assert_close(session.stream(xs.numpy(), chunk=chunk)["y"], np.stack(refs), "outputs of 9 frames")
    assert_close(session.state[arg], h.numpy(), "final state")


# ---------------------------------------------------------------------------------------------
# (d) integer tokens: Embedding in front of a GRU, input inferred
# ---------------------------------------------------------------------------------------------

class TokenGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 12)
        self.gru = nn.GRU(12, 15, num_layers=2, batch_first=True)
        self.head = nn.Linear(15, 50)

    def forward(self, tokens):
        y, _ = self.gru(self.embed(tokens))
        return self.head(y)


@pytest.mark.parametrize("mode", ["chunk", "step"])
def test_token_inputs(mode: str) -> None:
    torch.manual_seed(51)
    model = TokenGRU().eval()
    report = edgernn.export(model, mode=mode)
    assert_verified(report)
    (inp,) = report.contract.inputs
    assert (inp.name, inp.dtype, inp.shape) == ("tokens", "int64", ("batch", 1 if mode == "step" else "time"))
    assert states_of(report) == {"gru.h": (2, "batch", 15)}
    tokens = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(5))
    h0 = torch.randn(2, 3, 15, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        y_ref, h_ref = model.gru(model.embed(tokens), h0)
        y_ref = model.head(y_ref)
    session = session_of(report)
    y = stream(session, tokens.numpy(), sizes_for(mode, 10), 1, {"gru.h": h0.numpy()})
    assert_close(y, y_ref.numpy(), "logits")
    assert_close(session.state["gru.h"], h_ref.numpy(), "final gru.h")


# ---------------------------------------------------------------------------------------------
# (e) a real streaming model: per-frame Conv1d over a window of samples + LSTMCell, explicit state
# ---------------------------------------------------------------------------------------------

class ConvLSTMCellStreamer(nn.Module):
    """Each call takes one frame of 160 audio samples ``[batch, 1, 160]``; a strided Conv1d turns
    it into 19 positions x 8 channels, pooled to one feature vector, fed to an LSTMCell."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 8, kernel_size=16, stride=8)
        self.proj = nn.Linear(8 * 19, 24)
        self.cell = nn.LSTMCell(24, 30)
        self.head = nn.Linear(30, 2)

    def forward(self, x, state):
        f = torch.relu(self.conv(x)).flatten(1)
        h, c = self.cell(torch.tanh(self.proj(f)), state)
        return torch.log_softmax(self.head(h), dim=-1), (h, c)

    def initial_state(self, batch_size: int):
        return torch.zeros(batch_size, 30), torch.zeros(batch_size, 30)


def test_conv_lstmcell_streamer() -> None:
    torch.manual_seed(61)
    model = ConvLSTMCellStreamer().eval()
    report = edgernn.export(model, mode="step", inputs=["x:float32:B,1,160"])
    assert_verified(report)
    assert states_of(report) == {"state.0": ("batch", 30), "state.1": ("batch", 30)}
    ops = {n.op_type for n in report.model.graph.node}
    assert "Conv" in ops and not ops & RECURRENT_OPS
    gen = torch.Generator().manual_seed(7)
    audio = torch.randn(2, 1, 160 * 12, generator=gen)
    h, c = 0.3 * torch.randn(2, 30, generator=gen), 0.3 * torch.randn(2, 30, generator=gen)
    session = session_of(report)
    session.reset(state={"state.0": h.numpy(), "state.1": c.numpy()})
    state = (h, c)
    for t in range(12):
        frame = audio[:, :, 160 * t:160 * (t + 1)]
        with torch.no_grad():
            y_ref, state = model(frame, state)
        assert_close(session.step(frame.numpy())["y"], y_ref.numpy(), f"frame {t}")
    assert_close(session.state["state.0"], state[0].numpy(), "final h")
    assert_close(session.state["state.1"], state[1].numpy(), "final c")


def test_conv_first_cell_model_input_cannot_be_inferred() -> None:
    with pytest.raises(ExportError, match="--input"):
        edgernn.export(ConvLSTMCellStreamer(), mode="step")


# ---------------------------------------------------------------------------------------------
# (f) a temporal Conv1d mixes frames across chunk boundaries: its context is cached as state and
# its lookahead declared as a delay (tests/converters/test_temporal.py covers the variants); a model
# that pools over all frames cannot stream and is refused before capture
# ---------------------------------------------------------------------------------------------

class TemporalConvGRU(nn.Module):
    """Conv1d with kernel 3 over *time* (padding 1): each output frame sees its neighbours."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 6, kernel_size=3, padding=1)
        self.gru = nn.GRU(6, 9, batch_first=True)

    def forward(self, x):
        y, _ = self.gru(self.conv(x.transpose(1, 2)).transpose(1, 2))
        return y


def test_cross_chunk_conv_streams_with_a_delay(tmp_path) -> None:
    torch.manual_seed(71)
    model = TemporalConvGRU().eval()
    report = edgernn.export(model, tmp_path / "conv.onnx", mode="chunk", inputs=["x:float32:B,T,4"])
    assert_verified(report)
    assert report.contract.outputs[0].delay == 1
    assert states_of(report) == {"conv.context": ("batch", 4, 2), "gru.h": (1, "batch", 9), "gru.warmup": ("batch", 1)}
    x = torch.randn(1, 20, 4, generator=torch.Generator().manual_seed(8)).numpy()
    with torch.no_grad():
        y_ref = model(torch.from_numpy(x)).numpy()
    chunked = stream(session_of(report), x, [5, 5, 3, 7], 1)
    assert_close(chunked[:, 1:], y_ref[:, :-1], "streamed output = PyTorch one frame earlier")


class MeanPooledGRU(nn.Module):
    """Each frame's output mixes in the mean over all frames: it needs the whole sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 6, batch_first=True)
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        y, _ = self.gru(x)
        return self.head(torch.cat([y, y.mean(dim=1, keepdim=True).expand_as(y)], -1))


@pytest.mark.parametrize("mode", ["chunk", "step"])
def test_global_pooling_is_refused_naming_the_module(mode: str, tmp_path) -> None:
    path = tmp_path / "pooled.onnx"
    with pytest.raises(ExportError, match=r"^head: Linear .*--mode sequence"):
        edgernn.export(MeanPooledGRU().eval(), path, mode=mode)
    assert not path.exists()
    report = edgernn.export(MeanPooledGRU().eval(), path, mode="sequence")
    assert_verified(report)


# ---------------------------------------------------------------------------------------------
# (g) two recurrent layers in one model, both lifted
# ---------------------------------------------------------------------------------------------

class EncoderDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.GRU(8, 10, batch_first=True)
        self.decoder = nn.LSTM(10, 7, num_layers=2, batch_first=True)

    def forward(self, x):
        e, _ = self.encoder(x)
        d, _ = self.decoder(e)
        return d


@pytest.mark.parametrize("mode", ["chunk", "step"])
def test_encoder_decoder_both_lifted(mode: str) -> None:
    torch.manual_seed(81)
    model = EncoderDecoder().eval()
    report = edgernn.export(model, mode=mode)
    assert_verified(report)
    assert list(states_of(report).items()) == [
        ("decoder.c", (2, "batch", 7)), ("decoder.h", (2, "batch", 7)), ("encoder.h", (1, "batch", 10))]
    graph = report.model.graph
    assert [i.name for i in graph.input] == ["x", "state_in.decoder.c", "state_in.decoder.h", "state_in.encoder.h"]
    assert [o.name for o in graph.output] == ["y", "state_out.decoder.c", "state_out.decoder.h",
                                              "state_out.encoder.h"]
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 9, 8, generator=gen)
    eh = 0.5 * torch.randn(1, 2, 10, generator=gen)
    dh, dc = 0.5 * torch.randn(2, 2, 7, generator=gen), 0.5 * torch.randn(2, 2, 7, generator=gen)
    with torch.no_grad():
        e, eh_ref = model.encoder(x, eh)
        y_ref, (dh_ref, dc_ref) = model.decoder(e, (dh, dc))
    session = session_of(report)
    y = stream(session, x.numpy(), sizes_for(mode, 9), 1,
               {"encoder.h": eh.numpy(), "decoder.h": dh.numpy(), "decoder.c": dc.numpy()})
    assert_close(y, y_ref.numpy(), "decoder output")
    final = session.state
    assert_close(final["encoder.h"], eh_ref.numpy(), "encoder.h")
    assert_close(final["decoder.h"], dh_ref.numpy(), "decoder.h")
    assert_close(final["decoder.c"], dc_ref.numpy(), "decoder.c")


# ---------------------------------------------------------------------------------------------
# (h) a tuple of outputs: y.0 per frame, y.1 from the last frame only
# ---------------------------------------------------------------------------------------------

class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(8, 10, batch_first=True, nonlinearity="relu")
        self.frame_head = nn.Linear(10, 2)
        self.voice = nn.Linear(10, 1)

    def forward(self, x):
        y, h = self.rnn(x)
        return self.frame_head(y), torch.sigmoid(self.voice(h[-1]))


@pytest.mark.parametrize("mode", ["chunk", "step"])
def test_tuple_outputs(mode: str) -> None:
    torch.manual_seed(91)
    model = TwoHeads().eval()
    report = edgernn.export(model, mode=mode)
    assert_verified(report)
    frames, last = report.contract.outputs
    t = 1 if mode == "step" else "time"
    assert (frames.name, frames.shape, frames.batch_axis, frames.time_axis) == ("y.0", ("batch", t, 2), 0, 1)
    # [batch, 1]: the 1 is a feature, not a time axis, in both modes
    assert (last.name, last.shape, last.batch_axis, last.time_axis) == ("y.1", ("batch", 1), 0, None)
    assert states_of(report) == {"rnn.h": (1, "batch", 10)}
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        y0_ref, y1_ref = model(x)
    session = session_of(report)
    session.reset()
    pieces, out, start = [], {}, 0
    for size in sizes_for(mode, 8):
        out = session.step(x[:, start:start + size].numpy())
        pieces.append(out["y.0"])
        start += size
    assert_close(np.concatenate(pieces, axis=1), y0_ref.numpy(), "y.0")
    assert_close(out["y.1"], y1_ref.numpy(), "y.1 after the last call")
