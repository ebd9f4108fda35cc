"""Synthetic keyword-spotting streams, shared by ``train.py``, ``demo.py`` and the tests.

Each frame is 16 bands of log energy (think 10 ms frames of a small filterbank). A stream is
background noise whose level drifts slowly per band, with three kinds of events mixed in at random
times (sounds add in the power domain, then the log is taken):

- the keyword: a rising chirp, a bump of energy that sweeps from a low band to a high band over
  10-20 frames;
- a distractor chirp of the same shape that falls (high to low), so the direction matters;
- a broadband click of 2-4 frames in every band.

The per-frame label is 1 for ``HOLD`` frames from the keyword's last frame on: a streaming
detector can only know the keyword once it has heard all of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

N_BANDS = 16
HOLD = 8  # frames the label stays on after the keyword ends
MIN_LEN, MAX_LEN = 10, 20  # keyword and distractor chirp lengths, in frames
GAP = 12  # frames of background at least between two events
DRIFT_FRAMES = 150.0  # time constant of the background level's drift
NOISE = 0.35  # frame-to-frame noise of the background, in log-energy units
MATCH_SLACK = 4  # frames a detection may be early or late and still count (see detection_f1)


@dataclass
class Stream:
    """One synthetic stream: features ``x`` [time, bands], labels ``y`` [time] and the keywords
    as (first frame, last frame) pairs."""

    x: np.ndarray
    y: np.ndarray
    keywords: list[tuple[int, int]] = field(default_factory=list)


def _background(n: int, rng: np.random.Generator) -> np.ndarray:
    """Log energy of drifting background noise, [n, bands]: a spectral tilt, a slow per-band level
    (an Ornstein-Uhlenbeck process, stationary so long streams look like short ones) and noise."""
    tilt = np.linspace(0.6, -0.6, N_BANDS) + rng.normal(0, 0.2, N_BANDS)
    a = np.exp(-1.0 / DRIFT_FRAMES)
    kicks = rng.normal(0, 0.3 * np.sqrt(1 - a * a), (n, N_BANDS))
    kicks += rng.normal(0, 0.6 * np.sqrt(1 - a * a), (n, 1))  # loudness changes shared by all bands
    kicks[0] = rng.normal(0, 0.6, N_BANDS)  # start from the stationary spread
    return tilt + _decay_sum(kicks, a) + rng.normal(0, NOISE, (n, N_BANDS))


def _decay_sum(kicks: np.ndarray, a: float, block: int = 256) -> np.ndarray:
    """``level[t] = a * level[t-1] + kicks[t]`` along axis 0, vectorised in blocks (within a block,
    ``level[s+j] = a**(j+1) * (level[s-1] + cumsum(kicks[s+k] / a**(k+1))``)."""
    out = np.empty_like(kicks)
    carry = np.zeros(kicks.shape[1:])
    for s in range(0, len(kicks), block):
        k = kicks[s:s + block]
        p = a ** np.arange(1, len(k) + 1)[:, None]
        out[s:s + block] = p * (carry + np.cumsum(k / p, axis=0))
        carry = out[s + len(k) - 1]
    return out


def _chirp(length: int, rising: bool, rng: np.random.Generator) -> np.ndarray:
    """Power of a chirp, [length, bands]: a bump of width ~1.3 bands sweeping across bands."""
    lo, hi = rng.uniform(0, 3.5), rng.uniform(11, 15)
    centre = np.linspace(lo, hi, length) if rising else np.linspace(hi, lo, length)
    width = rng.uniform(1.0, 1.6)
    bands = np.arange(N_BANDS)
    envelope = np.sin(np.linspace(0.25, np.pi - 0.25, length))[:, None]  # fades in and out
    return envelope * np.exp(-0.5 * ((bands[None, :] - centre[:, None]) / width) ** 2)


def make_stream(n_frames: int, rng: np.random.Generator, *, keywords_per_100: float = 0.6,
                distractors_per_100: float = 0.5) -> Stream:
    """A stream of ``n_frames`` frames with keywords and distractors at random times."""
    log_bg = _background(n_frames, rng)
    power = np.exp(log_bg)
    loud = np.exp(log_bg.mean())  # events are loud relative to the stream's typical background
    y = np.zeros(n_frames, dtype=np.int64)
    keywords: list[tuple[int, int]] = []
    n_events = rng.poisson((keywords_per_100 + distractors_per_100) * n_frames / 100.0)
    kinds = rng.choice(["keyword", "chirp_down", "click"], size=n_events,
                       p=[keywords_per_100 / (keywords_per_100 + distractors_per_100),
                          0.6 * distractors_per_100 / (keywords_per_100 + distractors_per_100),
                          0.4 * distractors_per_100 / (keywords_per_100 + distractors_per_100)])
    starts = np.sort(rng.integers(0, max(1, n_frames - MAX_LEN), n_events))
    free_from = 0
    for kind, start in zip(kinds, starts):
        start = max(int(start), free_from)
        length = int(rng.integers(MIN_LEN, MAX_LEN + 1)) if kind != "click" else int(rng.integers(2, 5))
        end = start + length - 1
        if end >= n_frames:
            break
        gain = loud * rng.uniform(2.0, 6.0)
        if kind == "click":
            power[start:end + 1] += gain * 0.6 * rng.uniform(0.5, 1.5, N_BANDS)
        else:
            power[start:end + 1] += gain * _chirp(length, kind == "keyword", rng)
        if kind == "keyword":
            keywords.append((start, end))
            y[end:end + HOLD] = 1
        free_from = end + 1 + GAP
    return Stream(np.log(power).astype(np.float32), y, keywords)


def make_batch(batch: int, n_frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` streams stacked batch-first: features [batch, time, bands], labels [batch, time]."""
    streams = [make_stream(n_frames, rng) for _ in range(batch)]
    return np.stack([s.x for s in streams]), np.stack([s.y for s in streams])


def detections(active: np.ndarray) -> list[tuple[int, int]]:
    """Runs of active frames as (first, last) frame pairs: one detection per run."""
    a = np.concatenate([[False], np.asarray(active, dtype=bool), [False]])
    edges = np.flatnonzero(a[1:] != a[:-1])
    return [(int(s), int(e) - 1) for s, e in zip(edges[::2], edges[1::2])]


@dataclass
class Score:
    """Frame accuracy and keyword detection counts over one or more streams."""

    frames: int = 0
    correct: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / max(1, self.frames)

    # with nothing to find and nothing flagged, the detector is perfect: these are 1.0, not 0/0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp + self.fp + self.fn else 1.0

    def add(self, active: np.ndarray, labels: np.ndarray, keywords: list[tuple[int, int]]) -> None:
        """Score one stream: ``active`` are the frames the detector flags, ``labels`` the truth.

        A keyword counts as found (true positive) when a detection overlaps its label window
        widened by ``MATCH_SLACK`` frames on each side; each detection finds at most one keyword,
        and a detection that finds none is a false positive.
        """
        active = np.asarray(active, dtype=bool)
        self.frames += active.size
        self.correct += int(np.sum(active == labels.astype(bool)))
        found = [False] * len(keywords)
        for first, last in detections(active):
            hit = next((k for k, (_, end) in enumerate(keywords) if not found[k]
                        and first <= end + HOLD - 1 + MATCH_SLACK and last >= end - MATCH_SLACK), None)
            if hit is None:
                self.fp += 1
            else:
                found[hit] = True
                self.tp += 1
        self.fn += found.count(False)


def score(active: np.ndarray, streams: list[Stream]) -> Score:
    """Score detections ``active`` [streams, time] against ``streams``."""
    s = Score()
    for a, st in zip(active, streams):
        s.add(a, st.y, st.keywords)
    return s


def keyword_probability(logits: np.ndarray) -> np.ndarray:
    """P(keyword) from the model's two logits (last axis): softmax, class 1."""
    z = logits.astype(np.float64)
    return 1.0 / (1.0 + np.exp(z[..., 0] - z[..., 1]))


THRESHOLD = 0.5  # a frame is flagged when P(keyword) exceeds this
