"""Architectures edgernn knows by name, so that its checkpoints hold a name and a config, not code.

``ARCHITECTURES`` maps a name to a constructor taking the config as keyword arguments. Bare
``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` are registered as ``rnn`` / ``lstm`` / ``gru``; edgernn's own
models by their names below (``frame_classifier``, ``ntm`` for the Neural Turing Machine...).
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from edgernn.architectures.ntm import NTM
from edgernn.architectures.recurrent import FrameClassifier, RecurrentLayer, layer_config
from edgernn.architectures.tree import ChildSumTreeLSTM, Forest, TreeRNN, validate_forest
from edgernn.recurrent_kinds import KINDS, kind_of_mode

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    **{k.architecture: k.torch_class for k in KINDS.values()},  # rnn, lstm, gru
    "frame_classifier": FrameClassifier,
    "tree_rnn": TreeRNN,
    "child_sum_tree_lstm": ChildSumTreeLSTM,
    "ntm": NTM,
}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make ``name`` loadable from edgernn checkpoints."""

    def deco(cls: type) -> type:
        ARCHITECTURES[name] = cls
        return cls
    return deco


def describe(model: nn.Module) -> tuple[str, dict[str, Any]] | None:
    """(name, config) of a model whose class is registered and whose config is known, else None."""
    if isinstance(model, RecurrentLayer):
        model = model.layer
    if isinstance(model, nn.RNNBase):
        return kind_of_mode(model.mode).architecture, layer_config(model)
    for name, cls in ARCHITECTURES.items():
        if type(model) is cls and isinstance(getattr(model, "config", None), dict):
            return name, dict(model.config)
    return None


__all__ = ["ARCHITECTURES", "register", "describe", "FrameClassifier", "NTM", "RecurrentLayer", "layer_config", "TreeRNN",
           "ChildSumTreeLSTM", "Forest", "validate_forest"]
