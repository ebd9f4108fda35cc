"""Recurrent layers after a lookahead skip the stream's warm-up frames.

A delayed layer (``converters/context.py``) emits, at the start of each stream, frames that
belong to no frame of the model. A recurrent layer after it must leave its state unchanged on
them: it gets a per-stream counter state ``<layer>.warmup`` (int64 ``[batch, 1]``, zeros at the
start) and, in capture, a gated placeholder (``edgernn::recurrent_gated``) that
``recurrent.lower_gated`` lowers to an ``If``: the fused ONNX op when a call has no warm-up frame,
a masked ``Scan`` of the cell otherwise. The ``If`` carries the layer's mark with role ``gated``,
and the nodes of both branches their own (``edgernn/recurrent_kinds.py``).
"""

from __future__ import annotations

import torch

from edgernn.converters import capture

class RecurrentGate:
    """The warm-up counter of a recurrent layer after a lookahead: the layer's first ``skip``
    frames of each stream belong to no frame of the model, so they leave its state as it is.
    Set on the layer as ``gate`` (read by :class:`~edgernn.converters.capture.StatefulRecurrent`);
    same lifting protocol as :class:`TemporalState`."""

    parts = ["warmup"]

    def __init__(self, path: str, skip: int) -> None:
        self.path = path
        self.skip = skip
        self.lifted: tuple[torch.Tensor, ...] | None = None
        self.final: tuple[torch.Tensor, ...] | None = None

    def state_batch_axis(self, part: int) -> int:
        return 0

    def state_example(self, part: int, batch: int) -> torch.Tensor:
        return torch.zeros(batch, 1, dtype=torch.int64)  # [batch, 1]: Triton needs a dimension besides the batch

    def lifted_states(self) -> list[capture.LiftedState]:
        return [capture.LiftedState(f"{self.path}.warmup", self, 0)]

    def describe(self) -> str:
        return f"{self.path}: recurrent layer skips {self.skip} warm-up frame{'s' if self.skip > 1 else ''}"


@torch.library.custom_op("edgernn::recurrent_gated", mutates_args=())
def recurrent_gated_op(x: torch.Tensor, h0: torch.Tensor, valid: torch.Tensor, layer: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Placeholder for an RNN/GRU layer that skips frames where ``valid`` [T, B, 1] is 0."""
    raise RuntimeError("edgernn::recurrent_gated is a capture placeholder and has no eager kernel")


@recurrent_gated_op.register_fake
def _(x, h0, valid, layer):
    return capture._fake_outputs(x, [h0], layer)


@torch.library.custom_op("edgernn::recurrent_lstm_gated", mutates_args=())
def recurrent_lstm_gated_op(x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, valid: torch.Tensor, layer: int
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Placeholder for an LSTM layer that skips frames where ``valid`` [T, B, 1] is 0."""
    raise RuntimeError("edgernn::recurrent_lstm_gated is a capture placeholder and has no eager kernel")


@recurrent_lstm_gated_op.register_fake
def _(x, h0, c0, valid, layer):
    return capture._fake_outputs(x, [h0, c0], layer)


def _register_gated_schemas() -> None:
    import onnx
    from onnx.defs import OpSchema

    for name, n_state in (("RecurrentGated", 1), ("RecurrentLSTMGated", 2)):
        if onnx.defs.has(name, capture.DOMAIN):
            continue
        states = ["initial_h", "initial_c"][:n_state]
        onnx.defs.register_schema(OpSchema(
            name, capture.DOMAIN, 1,
            doc="edgernn placeholder for a recurrent layer that skips warm-up frames; lowered before writing",
            inputs=[OpSchema.FormalParameter(n, "T") for n in ["X", *states, "valid"]],
            outputs=[OpSchema.FormalParameter(n, "T") for n in ["Y", "Y_h", "Y_c"][:n_state + 1]],
            type_constraints=[("T", ["tensor(float)"], "float tensors")],
            attributes=[OpSchema.Attribute("layer", OpSchema.AttrType.INT, "index into the layer table")],
        ))


_register_gated_schemas()


def translations() -> dict:
    """The gated placeholders' entries of the capture's custom translation table."""
    from onnxscript.values import Opset

    E = Opset(capture.DOMAIN, 1)

    def gated(x, h0, valid, layer: int):
        return E.RecurrentGated(x, h0, valid, layer=layer)

    def gated_lstm(x, h0, c0, valid, layer: int):
        return E.RecurrentLSTMGated(x, h0, c0, valid, layer=layer)

    return {torch.ops.edgernn.recurrent_gated.default: gated,
            torch.ops.edgernn.recurrent_lstm_gated.default: gated_lstm}


def run_gated(layer, x: torch.Tensor, hx, gate: RecurrentGate):
    """A recurrent layer's forward that leaves its state unchanged on warm-up frames: in capture
    the gated placeholder, in eager one frame at a time."""
    spec = layer.spec
    paired = len(spec.state_parts) > 1  # LSTM: the state is (h, c)
    xt = x.transpose(0, 1) if spec.batch_first else x  # [T, B, F]
    frames, batch = xt.shape[0], xt.shape[1]
    warm = gate.lifted[0] if gate.lifted is not None else torch.zeros(batch, 1, dtype=torch.int64)
    valid, gate.final = skip_mask(warm, frames, gate.skip, xt, time_axis=0, batch_axis=1)
    gate.final = (gate.final,)
    if hx is None:
        zeros = tuple(xt.new_zeros(spec.num_layers * spec.directions, batch, spec.state_size(p))
                      for p in spec.state_parts)
        hx = zeros if paired else zeros[0]
    if layer.capturing:
        mask = valid.to(xt.dtype)
        if paired:
            y, h, c = torch.ops.edgernn.recurrent_lstm_gated(xt, hx[0], hx[1], mask, layer.layer_id)
            hn = (h, c)
        else:
            y, hn = torch.ops.edgernn.recurrent_gated(xt, hx, mask, layer.layer_id)
        return (y.transpose(0, 1) if spec.batch_first else y), hn
    forward = super(capture.StatefulRecurrent, layer).forward  # the layer class's own forward
    state, ys = hx, []
    for t in range(frames):
        frame = x.narrow(1 if spec.batch_first else 0, t, 1)
        y, new = forward(frame, state)
        keep = valid[t].unsqueeze(0)  # [1, B, 1] over [L, B, H]
        state = tuple(torch.where(keep, n, o) for n, o in zip(new, state)) if paired else torch.where(keep, new, state)
        ys.append(y)
    return torch.cat(ys, 1 if spec.batch_first else 0), state


def skip_mask(warmup: torch.Tensor, frames: int | torch.SymInt, skip: int, like: torch.Tensor, time_axis: int,
              batch_axis: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Which of a call's frames are real (``warmup + t >= skip``), shaped to broadcast over
    ``like`` (batch at ``batch_axis``, time at ``time_axis``), and the new warm-up count."""
    t = torch.arange(frames, device=like.device)
    valid = (warmup + t.unsqueeze(0)) >= skip  # [batch, 1] + [1, time] -> [batch, time]
    if time_axis < batch_axis:
        valid = valid.transpose(0, 1)
    lo, hi = sorted((batch_axis, time_axis))
    for _ in range(lo):  # broadcastable: size-1 axes around the two
        valid = valid.unsqueeze(0)
    for _ in range(hi - lo - 1):
        valid = valid.unsqueeze(lo + 1)
    for _ in range(like.dim() - hi - 1):
        valid = valid.unsqueeze(-1)
    return valid, torch.clamp(warmup + frames, max=skip)


__all__ = ["RecurrentGate", "run_gated", "skip_mask", "translations"]
