"""The copy task of Graves et al. 2014 (section 4.1), shared by ``train.py``, ``evaluate.py`` and the tests.

A sequence is T random vectors of ``BITS`` bits. The network sees them one per frame, then one
frame with only the delimiter channel on, then T blank frames, during which it must output the
T vectors again, in order. Frames have ``BITS + 1`` channels (the bits, then the delimiter):

    frame     0 .. T-1        T            T+1 .. 2T
    input     bits, delim 0   delim 1      zeros
    target    -               -            the bits of frame t - T - 1
    mask      0               0            1

Arrays are time-major, ``[time, batch, channels]``, as the model takes one ``[batch, channels]``
frame per call.
"""

from __future__ import annotations

import numpy as np

BITS = 8
CHANNELS = BITS + 1  # the bits and the delimiter


def sequence_frames(length: int) -> int:
    """Frames one copy of ``length`` vectors takes: input, delimiter, output."""
    return 2 * length + 1


def make_batch(batch: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``batch`` copy sequences of ``length`` vectors: inputs ``[2L+1, batch, BITS+1]``, targets
    ``[2L+1, batch, BITS]`` and mask ``[2L+1, batch]`` (1 where the copy is expected)."""
    if length < 1:
        raise ValueError(f"a copy sequence needs at least one vector, got length {length}")
    frames = sequence_frames(length)
    bits = rng.integers(0, 2, (length, batch, BITS)).astype(np.float32)
    x = np.zeros((frames, batch, CHANNELS), dtype=np.float32)
    x[:length, :, :BITS] = bits
    x[length, :, BITS] = 1.0
    target = np.zeros((frames, batch, BITS), dtype=np.float32)
    target[length + 1:] = bits
    mask = np.zeros((frames, batch), dtype=np.float32)
    mask[length + 1:] = 1.0
    return x, target, mask


def bit_errors(logits: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Wrong bits per sequence ``[batch]``: the output bit is 1 where the logit is positive
    (sigmoid > 0.5), counted over the frames where the copy is expected."""
    wrong = (np.asarray(logits) > 0) != (target > 0.5)
    return (wrong.sum(axis=-1) * mask).sum(axis=0).astype(np.int64)
