"""40-band streams for the CRNN keyword spotter, made from the wakeword example's generator.

``examples/wakeword/data.py`` synthesizes 16-band log-energy streams with rising-chirp keywords,
falling-chirp and click distractors and per-frame labels. Here each 16-band frame is spread onto
40 bands (linear interpolation across bands, as a 40-filter mel bank sees a smooth spectrum) with
a little independent noise per band, and the result is laid out channels first,
``[40, time]``, as ``nn.Conv1d`` takes it. Labels, keywords and scoring are the wakeword ones.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

_WAKEWORD_DATA = Path(__file__).resolve().parents[1] / "wakeword" / "data.py"


def _load_wakeword_data():
    name = "kws_crnn_wakeword_data"  # a unique name: other examples import theirs as `data`
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _WAKEWORD_DATA)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


wake = _load_wakeword_data()
N_MELS = 40
BAND_NOISE = 0.1  # per-band noise added after spreading, in log-energy units
THRESHOLD = wake.THRESHOLD
Stream = wake.Stream
score = wake.score
keyword_probability = wake.keyword_probability
detections = wake.detections


def _spread_matrix() -> np.ndarray:
    """[16, 40]: each of the 40 bands linearly interpolated between its two nearest source bands."""
    pos = np.linspace(0, wake.N_BANDS - 1, N_MELS)
    m = np.zeros((wake.N_BANDS, N_MELS), dtype=np.float64)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, wake.N_BANDS - 1)
    frac = pos - lo
    m[lo, np.arange(N_MELS)] += 1 - frac
    m[hi, np.arange(N_MELS)] += frac
    return m


SPREAD = _spread_matrix()


def make_stream(n_frames: int, rng: np.random.Generator) -> wake.Stream:
    """A stream with ``x`` [40, time] (channels first), labels ``y`` [time] and its keywords."""
    s = wake.make_stream(n_frames, rng)
    x = s.x.astype(np.float64) @ SPREAD + rng.normal(0, BAND_NOISE, (n_frames, N_MELS))
    return wake.Stream(np.ascontiguousarray(x.T).astype(np.float32), s.y, s.keywords)


def make_batch(batch: int, n_frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Features [batch, 40, time] and labels [batch, time]."""
    streams = [make_stream(n_frames, rng) for _ in range(batch)]
    return np.stack([s.x for s in streams]), np.stack([s.y for s in streams])
