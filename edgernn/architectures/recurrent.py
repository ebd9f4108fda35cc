"""Recurrent models defined by edgernn: a bare layer as a model, and a frame classifier."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgernn.recurrent_kinds import KINDS, kind_of_mode, kinds_of


def layer_config(layer: nn.RNNBase) -> dict[str, Any]:
    """Constructor arguments of an ``nn.RNN``/``nn.LSTM``/``nn.GRU``."""
    cfg: dict[str, Any] = {
        "input_size": layer.input_size, "hidden_size": layer.hidden_size, "num_layers": layer.num_layers,
        "bias": layer.bias, "batch_first": layer.batch_first, "bidirectional": layer.bidirectional,
    }
    kind = kind_of_mode(layer.mode)
    if kind.nonlinearity:
        cfg["nonlinearity"] = kind.nonlinearity
    if getattr(layer, "proj_size", 0):
        cfg["proj_size"] = layer.proj_size
    return cfg


class RecurrentLayer(nn.Module):
    """A bare ``nn.RNN``/``nn.LSTM``/``nn.GRU`` as a model: ``forward(x) -> output``.

    The layer is stored under its kind (``rnn``, ``lstm``, ``gru``), so its states export as
    ``gru.h`` (and ``lstm.c``); the final state leaves the graph as those state outputs.
    """

    def __init__(self, layer: nn.RNNBase) -> None:
        super().__init__()
        self.kind = kind_of_mode(layer.mode).architecture
        self.add_module(self.kind, layer)

    @property
    def layer(self) -> nn.RNNBase:
        return getattr(self, self.kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.kind)(x)[0]


class FrameClassifier(nn.Module):
    """Per-frame classifier: Linear+ReLU frontend, a recurrent core, a Linear head.

    ``forward(x)`` takes ``[batch, time, n_features]`` and returns logits ``[batch, time,
    n_classes]``; the core starts from zero state (export lifts it into state I/O).
    """

    def __init__(self, n_features: int, hidden_size: int, n_classes: int, num_layers: int = 1,
                 cell: str = "gru", frontend_size: int | None = None) -> None:
        super().__init__()
        self.config = {"n_features": n_features, "hidden_size": hidden_size, "n_classes": n_classes,
                       "num_layers": num_layers, "cell": cell, "frontend_size": frontend_size}
        kinds = kinds_of(architecture=cell)
        if not kinds:
            raise ValueError(f"cell {cell!r} is unknown; expected one of "
                             f"{', '.join(dict.fromkeys(k.architecture for k in KINDS.values()))}")
        front = frontend_size or hidden_size
        self.frontend = nn.Sequential(nn.Linear(n_features, front), nn.ReLU())
        self.core = kinds[0].torch_class(front, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.core(self.frontend(x))
        return self.head(y)
