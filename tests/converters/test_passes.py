"""The export pipeline run pass by pass (``converters.passes.PIPELINE``), checking what each
pass leaves behind: placeholders after capture, real ONNX after lowering, the contract in
``metadata_props`` after describe-state-io, and parity at the end."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from torch import nn

from edgernn.contract import FORMAT_VERSION
from edgernn.converters import capture
from edgernn.converters.io import parse_input
from edgernn.converters.passes import PIPELINE, ExportContext, ExportOptions, run_pipeline
from edgernn.errors import ExportError

RECURRENT_OPS = {"GRU", "LSTM", "RNN", "Scan"}
STATES = ["decoder.c", "decoder.h", "encoder.h"]  # sorted by name, not by call order


class EncoderDecoder(nn.Module):
    """Two recurrent layers, called in the order encoder, decoder; both get lifted."""

    def __init__(self) -> None:
        super().__init__()
        self.frontend = nn.Linear(6, 8)
        self.encoder = nn.GRU(8, 10, batch_first=True)
        self.decoder = nn.LSTM(10, 7, num_layers=2, batch_first=True)
        self.head = nn.Linear(7, 3)

    def forward(self, x):
        e, _ = self.encoder(torch.relu(self.frontend(x)))
        d, _ = self.decoder(e)
        return self.head(d)


def node_domains(model: onnx.ModelProto) -> set[str]:
    return {n.domain for n in model.graph.node}


def op_types(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


@pytest.mark.parametrize("mode", ["chunk", "step"])
def test_pipeline_pass_by_pass(mode: str) -> None:
    torch.manual_seed(0)
    model = EncoderDecoder().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = ExportContext(model, ExportOptions(mode=mode))
    passes = {p.name: p for p in PIPELINE}
    assert list(passes) == ["resolve-inputs", "cache-context", "time-loop", "lift-state", "check-streamable",
                            "capture", "lower-recurrent", "scan-over-time", "describe-state-io", "optimize", "check",
                            "verify"]

    run_pipeline(ctx, [passes["resolve-inputs"]])
    (x,) = ctx.data
    assert (x.name, x.dtype, x.shape) == ("x", "float32", ("batch", "time", 6))  # inferred from the Linear
    assert ctx.explicit == []

    run_pipeline(ctx, [passes["cache-context"], passes["time-loop"]])  # no conv over time, no Python loop
    assert ctx.records[-2].detail == "no convolution or pooling" and ctx.temporal.states == []
    assert ctx.records[-1].detail.startswith("no loop over time" if mode == "chunk" else "not needed in step mode")

    run_pipeline(ctx, [passes["lift-state"]])
    assert ctx.state_names == STATES
    assert ctx.output_names == ["y"] and ctx.output_axes == [(0, 1)]

    run_pipeline(ctx, [passes["check-streamable"]])
    assert "give what one call gives" in ctx.records[-1].detail

    run_pipeline(ctx, [passes["capture"]])
    placeholders = [n for n in ctx.onnx_model.graph.node if n.domain == capture.DOMAIN]
    assert sorted(n.op_type for n in placeholders) == ["Recurrent", "RecurrentLSTM"]
    assert not op_types(ctx.onnx_model) & RECURRENT_OPS  # the exporter did not touch the layers
    assert capture.DOMAIN in {o.domain for o in ctx.onnx_model.opset_import}
    assert [i.name for i in ctx.onnx_model.graph.input] == ["x", *(f"state_in.{n}" for n in STATES)]
    assert [o.name for o in ctx.onnx_model.graph.output] == ["y", *(f"state_out.{n}" for n in STATES)]

    run_pipeline(ctx, [passes["lower-recurrent"]])
    lowered = ctx.onnx_model
    assert capture.DOMAIN not in node_domains(lowered)
    assert capture.DOMAIN not in {o.domain for o in lowered.opset_import}
    # chunk, and step with cells="auto": ONNX's GRU and LSTM ops (measured fastest at one frame too)
    assert {"GRU", "LSTM"} <= op_types(lowered)
    assert sum(n.op_type == "LSTM" for n in lowered.graph.node) == 2  # one per decoder layer

    run_pipeline(ctx, [passes["scan-over-time"]])  # declines: this model takes a time axis itself
    assert ctx.records[-1].detail.startswith("not needed") and ctx.onnx_model is lowered
    assert not ctx.records[-1].changed

    run_pipeline(ctx, [passes["describe-state-io"]])
    props = {p.key: p.value for p in ctx.onnx_model.metadata_props}
    assert {"edgernn.format", "edgernn.mode", "edgernn.inputs", "edgernn.outputs", "edgernn.states"} <= set(props)
    assert props["edgernn.format"] == FORMAT_VERSION and props["edgernn.mode"] == mode
    states = json.loads(props["edgernn.states"])
    assert [s["name"] for s in states] == STATES
    assert [s["shape"] for s in states] == [[2, "batch", 7], [2, "batch", 7], [1, "batch", 10]]
    assert all(s["batch_axis"] == 1 and s["init"] == "zeros" and s["dtype"] == "float32" for s in states)
    (inp,) = json.loads(props["edgernn.inputs"])
    assert inp["shape"] == ["batch", 1 if mode == "step" else "time", 6] and inp["time_axis"] == 1
    (out,) = json.loads(props["edgernn.outputs"])
    assert out["name"] == "y" and out["batch_axis"] == 0 and out["time_axis"] == 1
    state_in = [i.name for i in ctx.onnx_model.graph.input if i.name.startswith("state_in.")]
    state_out = [o.name for o in ctx.onnx_model.graph.output if o.name.startswith("state_out.")]
    assert [n.removeprefix("state_in.") for n in state_in] == [n.removeprefix("state_out.") for n in state_out]
    assert state_in == sorted(state_in) and state_out == sorted(state_out)
    assert [s["input"] for s in states] == state_in and [s["output"] for s in states] == state_out

    run_pipeline(ctx, [passes["optimize"], passes["check"]])
    onnx.checker.check_model(ctx.onnx_model, full_check=True)
    assert {p.key: p.value for p in ctx.onnx_model.metadata_props}["edgernn.states"] == props["edgernn.states"]

    run_pipeline(ctx, [passes["verify"]])
    assert ctx.parity.passed, ctx.parity.summary()
    assert {e.name for e in ctx.parity.errors} == {"y", *STATES}

    assert [r.name for r in ctx.records] == list(passes)
    assert all(r.seconds >= 0 and r.detail for r in ctx.records)
    # passes that declined (no convolution, no Python loop, no Scan needed) or only checked changed nothing
    assert {r.name for r in ctx.records if r.changed} == {"resolve-inputs", "lift-state", "capture", "lower-recurrent",
                                                          "describe-state-io", "optimize"}
    # the user's model is never modified (the passes work on a copy)
    assert all(isinstance(m, (nn.GRU, nn.LSTM)) for m in (model.encoder, model.decoder))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_lift_state_needs_one_call_per_layer() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(4, 4, batch_first=True)

        def forward(self, x):
            return self.gru(self.gru(x)[0])[0]

    ctx = ExportContext(Twice(), ExportOptions(mode="chunk"))
    with pytest.raises(ExportError, match="'gru' is called 2 times"):
        run_pipeline(ctx, PIPELINE[:[p.name for p in PIPELINE].index("lift-state") + 1])


def test_unknown_choices_and_arguments_are_refused() -> None:
    with pytest.raises(ExportError, match="mode 'frames' is unknown"):  # the options check their choices, once
        ExportOptions(mode="frames")
    with pytest.raises(ExportError, match="state layout 'sideways' is unknown"):
        ExportOptions(state_layout="sideways")
    opts = ExportOptions(mode="chunk", inputs=[parse_input("z:float32:B,T,6")])
    with pytest.raises(ExportError, match="'z' is not an argument"):
        run_pipeline(ExportContext(EncoderDecoder(), opts), PIPELINE[:1])
