"""Recurrent kinds: the one table of what edgernn knows about each kind of recurrent layer.

:data:`KINDS` holds one :class:`RecurrentKind` per kind edgernn exports (``rnn_tanh``,
``rnn_relu``, ``lstm``, ``gru``): the PyTorch classes, the gates in PyTorch's and in ONNX's order
and the permutation between them, the state parts, the ONNX op with its activations and
attributes, onnxruntime's int8 op where one exists, and the form step mode uses. The lowering
(``converters/recurrent.py``), the quantizers (``converters/quantize/``), the checkpoint reader
(``checkpoints.py``) and the architectures (``architectures/``) read it; no other module spells
out a gate order or a kind map.

Lowered layers carry a mark: every node ``converters/recurrent.py`` emits for a layer has a
:class:`LayerMark` in its ``metadata_props`` under :data:`MARK_KEY` (JSON: kind, the module's
path, the layer of the stack, the node's role), so the quantizers find a layer's parts by name,
not by shape.

This module imports neither torch nor onnx, so that reading the table costs nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

import numpy as np

# ONNX's gate letters that differ from PyTorch's for the same gate: GRU's h is PyTorch's n, LSTM's c is g
_TORCH_LETTER = {"h": "n", "c": "g"}


@dataclass(frozen=True)
class RecurrentKind:
    """One kind of recurrent layer, as PyTorch, ONNX and onnxruntime name it."""

    name: str  # edgernn's name: rnn_tanh, rnn_relu, lstm, gru
    torch_module: str  # class in torch.nn
    torch_cell: str  # its one-step cell class in torch.nn
    torch_mode: str  # nn.RNNBase.mode
    architecture: str  # registered checkpoint name, and the attribute of a bare RecurrentLayer
    torch_gates: tuple[str, ...]  # gate blocks of weight_ih / weight_hh, in PyTorch's order
    onnx_gates: tuple[str, ...]  # gate blocks of W / R / B, in ONNX's order (ONNX's letters)
    state_parts: tuple[str, ...]  # ("h",) or ("h", "c")
    onnx_op: str  # the ONNX operator
    activations: tuple[str, ...]  # the op's ``activations`` for one direction (ONNX's defaults)
    onnx_attributes: tuple[tuple[str, int], ...] = ()  # attributes edgernn's lowering sets
    nonlinearity: str | None = None  # nn.RNN's argument
    int8_op: str | None = None  # onnxruntime's int8 kernel for the op (none for GRU, RNN: onnxruntime#9796)
    # Step mode (cells="auto") runs the ONNX op when it beats MatMul cells at one frame per call on
    # onnxruntime CPU (1 thread, 2-layer, 256 units, IOBinding: GRU op 92 us vs cells 101 us; LSTM op
    # 146 vs 157; Elman RNN op 46 vs cells 34): see docs/performance.md and benchmarks/step_choices.py.
    step_op: bool = False

    @property
    def gates(self) -> int:
        return len(self.torch_gates)

    @property
    def onnx_of_torch(self) -> tuple[int, ...]:
        """ONNX gate ``k`` is PyTorch gate ``onnx_of_torch[k]`` (GRU: z,r,h <- r,z,n is (1, 0, 2))."""
        return tuple(self.torch_gates.index(_TORCH_LETTER.get(g, g)) for g in self.onnx_gates)

    @property
    def torch_of_onnx(self) -> tuple[int, ...]:
        """PyTorch gate ``k`` is ONNX gate ``torch_of_onnx[k]`` (LSTM: i,f,g,o <- i,o,f,c is (0, 2, 3, 1))."""
        order = self.onnx_of_torch
        return tuple(order.index(k) for k in range(self.gates))

    def to_onnx_gates(self, a: np.ndarray, hidden: int) -> np.ndarray:
        """Gate blocks of ``a`` (axis 0, ``hidden`` rows each) from PyTorch's order to ONNX's."""
        return _blocks(a, hidden, self.onnx_of_torch)

    def to_torch_gates(self, a: np.ndarray, hidden: int) -> np.ndarray:
        """Gate blocks of ``a`` (axis 0, ``hidden`` rows each) from ONNX's order to PyTorch's."""
        return _blocks(a, hidden, self.torch_of_onnx)

    @property
    def torch_class(self) -> type:
        """The ``torch.nn`` layer class (imports torch)."""
        from torch import nn

        return getattr(nn, self.torch_module)

    @property
    def torch_cell_class(self) -> type:
        """The ``torch.nn`` cell class (imports torch)."""
        from torch import nn

        return getattr(nn, self.torch_cell)


def _blocks(a: np.ndarray, hidden: int, order: tuple[int, ...]) -> np.ndarray:
    return np.concatenate([a[k * hidden:(k + 1) * hidden] for k in order], axis=0)


RNN_TANH = RecurrentKind(
    name="rnn_tanh", torch_module="RNN", torch_cell="RNNCell", torch_mode="RNN_TANH", architecture="rnn",
    torch_gates=("i",), onnx_gates=("i",), state_parts=("h",), onnx_op="RNN", activations=("Tanh",),
    nonlinearity="tanh")
RNN_RELU = replace(RNN_TANH, name="rnn_relu", torch_mode="RNN_RELU", activations=("Relu",), nonlinearity="relu")
LSTM = RecurrentKind(
    name="lstm", torch_module="LSTM", torch_cell="LSTMCell", torch_mode="LSTM", architecture="lstm",
    torch_gates=("i", "f", "g", "o"), onnx_gates=("i", "o", "f", "c"), state_parts=("h", "c"), onnx_op="LSTM",
    activations=("Sigmoid", "Tanh", "Tanh"), int8_op="DynamicQuantizeLSTM", step_op=True)
GRU = RecurrentKind(
    name="gru", torch_module="GRU", torch_cell="GRUCell", torch_mode="GRU", architecture="gru",
    torch_gates=("r", "z", "n"), onnx_gates=("z", "r", "h"), state_parts=("h",), onnx_op="GRU",
    activations=("Sigmoid", "Tanh"), onnx_attributes=(("linear_before_reset", 1),), step_op=True)

KINDS: dict[str, RecurrentKind] = {k.name: k for k in (RNN_TANH, RNN_RELU, LSTM, GRU)}
ONNX_OPS: tuple[str, ...] = tuple(dict.fromkeys(k.onnx_op for k in KINDS.values()))  # RNN, LSTM, GRU


def kind_of_mode(mode: str) -> RecurrentKind:
    """The kind of an ``nn.RNNBase`` from its ``mode`` (``"GRU"``, ``"RNN_TANH"``...)."""
    for kind in KINDS.values():
        if kind.torch_mode == mode:
            return kind
    raise ValueError(f"recurrent mode {mode!r} is unknown; expected one of "
                     f"{', '.join(k.torch_mode for k in KINDS.values())}")


def kinds_of(*, gates: int | None = None, torch_module: str | None = None,
             architecture: str | None = None) -> tuple[RecurrentKind, ...]:
    """The kinds with ``gates`` gate blocks, PyTorch class ``torch_module`` or checkpoint name
    ``architecture`` (both Elman kinds share one of each)."""
    return tuple(k for k in KINDS.values() if (gates is None or k.gates == gates)
                 and (torch_module is None or k.torch_module == torch_module)
                 and (architecture is None or k.architecture == architecture))


def kind_of_onnx(op_type: str, activations: tuple[str, ...] | list[str] = ()) -> RecurrentKind:
    """The kind an ONNX ``RNN`` / ``LSTM`` / ``GRU`` op computes with its ``activations`` attribute
    (both directions' for a bidirectional op; empty: the op's defaults). Raises ValueError when
    no kind does."""
    for kind in KINDS.values():
        if kind.onnx_op == op_type and all(a == d for a, d in zip(activations, kind.activations * 2)):
            return kind
    raise ValueError(f"it uses activations {list(activations)}" if op_type in ONNX_OPS
                     else f"{op_type} is not a recurrent op")


# ---------------------------------------------------------------------------------------------
# the mark lowered layers carry in the graph
# ---------------------------------------------------------------------------------------------

MARK_KEY = "edgernn.layer"
ROLES = {
    "op": "the layer's ONNX RNN / GRU / LSTM op",
    "scan": "a Scan over time doing the recurrence (its body's nodes are marked too)",
    "gated": "the If that runs the fused op, or on warm-up frames a masked Scan",
    "input_projection": "W_ih x (+ bias): a MatMul and its Add",
    "recurrence": "W_hh h (+ b_hh for GRU): a MatMul and its Add",
    "projection": "an LSTM's W_hr (o * tanh(c)): the MatMul that makes its new h",
    "cell": "the gates' elementwise ops",
    "h_out": "computes the cell's new h (before an LSTM's projection)",
    "c_out": "computes the cell's new c",
    "state_in": "reads one layer's state (``part``) out of the stacked state",
    "glue": "layout around the layers: squeezes, transposes, the stacked states",
}


@dataclass(frozen=True)
class LayerMark:
    """What a node does for which recurrent layer: written by the lowering, read by the quantizers."""

    kind: str  # a key of KINDS
    layer: str  # the module's path in the model (the ONNX op's name for layers the quantizers lower)
    index: int | None  # layer of the stack (num_layers), None for nodes of the whole stack
    role: str  # a key of ROLES
    part: str | None = None  # state_in: the state part read

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, separators=(",", ":"))

    @classmethod
    def of(cls, node: Any) -> LayerMark | None:
        """The mark of an ONNX ``NodeProto`` or onnx-ir ``Node``; None when it has none (or a malformed one)."""
        props = node.metadata_props
        text = props.get(MARK_KEY) if isinstance(props, Mapping) else next(
            (p.value for p in props if p.key == MARK_KEY), None)
        if text is None:
            return None
        try:
            fields = json.loads(text)
            mark = cls(str(fields["kind"]), str(fields["layer"]), fields.get("index"), str(fields["role"]),
                       fields.get("part"))
        except (ValueError, KeyError, TypeError):
            return None
        return mark if mark.kind in KINDS and mark.role in ROLES else None

    def stamp(self, node: Any) -> None:
        """Write this mark on a ``NodeProto`` or an onnx-ir ``Node`` (replacing one it has)."""
        props = node.metadata_props
        if isinstance(props, dict):
            props[MARK_KEY] = self.to_json()
            return
        for p in props:
            if p.key == MARK_KEY:
                p.value = self.to_json()
                return
        entry = props.add()
        entry.key, entry.value = MARK_KEY, self.to_json()


__all__ = ["RecurrentKind", "KINDS", "ONNX_OPS", "RNN_TANH", "RNN_RELU", "LSTM", "GRU", "kind_of_mode", "kinds_of",
           "kind_of_onnx", "MARK_KEY", "ROLES", "LayerMark"]
