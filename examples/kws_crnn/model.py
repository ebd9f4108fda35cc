"""A streaming CRNN keyword spotter, written the way such models usually are.

Input ``[batch, 40, time]`` log-mel-like frames (channels first, as ``nn.Conv1d`` wants them):

1. frontend: ``Conv1d(40, 32, kernel_size=3, padding=1)`` + ``BatchNorm1d`` + ReLU. The symmetric
   padding makes each output frame look one frame into the future: streamed, the model's output
   comes one frame late (the contract's ``delay``).
2. a causal dilated convolution: kernel 3, dilation 2, left padding ``(k - 1) * d = 4`` frames
   through ``F.pad`` (no future frames).
3. ``GRU(32, 48, batch_first=True)`` over time, then a Linear head: two logits per frame
   (background, keyword), ``[batch, time, 2]``.

This module has no edgernn code in it: ``edgernn export kws_crnn.pt --class
examples.kws_crnn.model:KwsCRNN --config examples/kws_crnn/kws_crnn.json`` (from the repository
root) reads the state_dict and the constructor arguments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KwsCRNN(nn.Module):
    def __init__(self, n_mels: int = 40, channels: int = 32, hidden_size: int = 48, n_classes: int = 2,
                 kernel_size: int = 3, dilation: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, channels, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm1d(channels)
        self.causal_pad = (kernel_size - 1) * dilation
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=kernel_size, dilation=dilation)
        self.bn2 = nn.BatchNorm1d(channels)
        self.gru = nn.GRU(channels, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [batch, n_mels, time] -> logits [batch, time, n_classes]."""
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(F.pad(h, (self.causal_pad, 0)))))
        y, _ = self.gru(h.transpose(1, 2))
        return self.head(y)
