"""What ``edgernn bench`` measured (:class:`BenchReport`, one :class:`RuntimeResult` per runtime),
the names of the runtimes it times, its errors, and :func:`plot` of the latencies. The timing
itself is in :mod:`edgernn.runtimes.bench`, the runtimes it times in
:mod:`edgernn.runtimes.bench_runners`."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgernn.errors import EdgernnError

EDGERNN = "edgernn"
ORT_LOOP = "onnxruntime loop"
EAGER = "pytorch eager"
PLAIN = "plain export loop"
TOLERANCE = 1e-3  # largest max-abs deviation accepted between a float32 file and its reference
CHECK_FRAMES = 8


class BenchError(EdgernnError):
    """A benchmark cannot run as asked."""


class MismatchError(BenchError):
    """The reference model (``against`` or ``baseline_onnx``) does not compute what the file computes."""


@dataclass
class RuntimeResult:
    """One runtime's timings. Latencies are per call (``frames_per_call`` = batch x chunk frames)."""

    name: str
    calls: int
    chunk: int
    batch: int
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float
    min_us: float
    max_us: float
    peak_memory_mib: float | None  # process high-water mark while this runtime ran (see BenchReport.memory_scope)
    memory_growth_mib: float | None  # that peak minus the resident size just before this runtime's rounds
    load_memory_mib: float | None  # resident size added by loading this runtime (session or model)
    latencies_us: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    @property
    def frames_per_call(self) -> int:
        return self.batch * self.chunk

    @property
    def per_frame_p50_us(self) -> float:
        return self.p50_us / self.chunk

    @property
    def per_frame_p90_us(self) -> float:
        return self.p90_us / self.chunk

    @property
    def per_frame_p99_us(self) -> float:
        return self.p99_us / self.chunk

    @property
    def fps(self) -> float:
        """Frames per second over all streams: batch x chunk / mean call time."""
        return self.frames_per_call / (self.mean_us * 1e-6) if self.mean_us > 0 else float("inf")

    def to_json(self, latencies: bool = False) -> dict:
        d = {"name": self.name, "calls": self.calls, "chunk": self.chunk, "batch": self.batch,
             "frames_per_call": self.frames_per_call,
             "p50_us": self.p50_us, "p90_us": self.p90_us, "p99_us": self.p99_us, "mean_us": self.mean_us,
             "min_us": self.min_us, "max_us": self.max_us,
             "per_frame_p50_us": self.per_frame_p50_us, "per_frame_p90_us": self.per_frame_p90_us,
             "per_frame_p99_us": self.per_frame_p99_us, "fps": self.fps,
             "peak_memory_mib": self.peak_memory_mib, "memory_growth_mib": self.memory_growth_mib,
             "load_memory_mib": self.load_memory_mib}
        if latencies:
            d["latencies_us"] = [float(v) for v in self.latencies_us]
        return d


@dataclass
class BenchReport:
    """What :func:`bench` measured. ``ratios`` are edgernn's p50 over each other runtime's p50
    (below 1: edgernn is faster); ``deviations`` the largest absolute output/state difference
    of each reference runtime from the file over :data:`CHECK_FRAMES` frames."""

    model: str
    model_bytes: int
    mode: str
    reduced_precision: bool
    steps: int
    chunk: int
    batch: int
    threads: int
    provider: str
    warmup: int
    rounds: int
    runtimes: list[RuntimeResult]
    against: str | None = None
    baseline_onnx: str | None = None
    deviations: dict[str, float] = field(default_factory=dict)
    memory_scope: str = ""
    environment: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def runtime(self, name: str) -> RuntimeResult:
        for r in self.runtimes:
            if r.name == name:
                return r
        raise KeyError(f"no runtime {name!r} in this report; it has {', '.join(r.name for r in self.runtimes)}")

    @property
    def model_mib(self) -> float:
        return self.model_bytes / 2**20

    @property
    def ratios(self) -> dict[str, float]:
        """``{"edgernn / NAME": edgernn p50 / NAME p50}`` for every other runtime."""
        mine = self.runtime(EDGERNN).p50_us
        return {f"{EDGERNN} / {r.name}": mine / r.p50_us for r in self.runtimes if r.name != EDGERNN}

    def table(self) -> str:
        """A plain-text summary: one row per runtime, then deviations, memory scope and notes."""
        head = ["runtime", "p50 µs", "p90 µs", "p99 µs", "µs/frame p50", "frames/s", "peak MiB", "load MiB",
                "edgernn / it"]
        mine = self.runtime(EDGERNN).p50_us
        rows = [[r.name, f"{r.p50_us:.1f}", f"{r.p90_us:.1f}", f"{r.p99_us:.1f}", f"{r.per_frame_p50_us:.2f}",
                 f"{r.fps:,.0f}", _mib(r.peak_memory_mib), _mib(r.load_memory_mib),
                 "" if r.name == EDGERNN else f"{mine / r.p50_us:.2f}x"] for r in self.runtimes]
        widths = [max(len(row[k]) for row in [head, *rows]) for k in range(len(head))]
        lines = [f"{self.model} ({self.mode} mode, {self.model_bytes / 1024:.0f} KiB): {self.chunk} frame(s) x "
                 f"{self.batch} stream(s) per call, {self.threads} thread(s), {self.provider}, {self.steps} calls "
                 f"per runtime in {self.rounds} rounds"]
        for row in [head, *rows]:
            lines.append("  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(row, widths))))
        for name, dev in self.deviations.items():
            lines.append(f"max |difference| from {name} over {CHECK_FRAMES} frames: {dev:.2g}")
        lines.append(f"memory: {self.memory_scope}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_json(self, latencies: bool = False) -> dict:
        """Plain JSON types; ``latencies=True`` adds every call's latency (``latencies_us``)."""
        return {"model": self.model, "model_bytes": self.model_bytes, "model_mib": self.model_mib, "mode": self.mode,
                "reduced_precision": self.reduced_precision, "against": self.against,
                "baseline_onnx": self.baseline_onnx,
                "settings": {"steps": self.steps, "chunk": self.chunk, "batch": self.batch, "threads": self.threads,
                             "provider": self.provider, "warmup": self.warmup, "rounds": self.rounds},
                "runtimes": [r.to_json(latencies) for r in self.runtimes],
                "ratios": self.ratios, "deviations": dict(self.deviations), "memory_scope": self.memory_scope,
                "environment": dict(self.environment), "notes": list(self.notes)}


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def plot(report: BenchReport, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Write a PNG of each runtime's per-call latency distribution side by side: a violin (the
    density) with a box (quartiles, whiskers at p1 and p99, median line) per runtime and its p50
    and p99 written under it, on a log axis when the plotted latencies (p0.1 to p99.9 of each)
    spread over more than 8x."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise BenchError("plotting needs matplotlib, which is not installed: pip install matplotlib") from None
    target = Path(path)
    if not target.parent.is_dir():
        raise BenchError(f"cannot write {target}: folder {target.parent} does not exist")
    runs = [r for r in report.runtimes if r.latencies_us.size]
    if not runs:
        raise BenchError("the report holds no per-call latencies to plot (a report read back from JSON keeps them "
                         "only if written with latencies=True)")
    data = []
    for r in runs:  # the extreme 0.1% would stretch the violins into needles
        lo, hi = np.percentile(r.latencies_us, [0.1, 99.9])
        data.append(np.clip(r.latencies_us, lo, hi))
    fig = Figure(figsize=(1.9 * len(runs) + 2.5, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    log = max(float(d.max()) for d in data) > 8 * max(min(float(d.min()) for d in data), 1e-9)
    if log:  # the densities too are estimated on the log scale, so that long tails do not swamp them
        data = [np.log10(np.maximum(d, 1e-3)) for d in data]
    parts = ax.violinplot(data, showmedians=False, showextrema=False, widths=0.8)
    colors = ["#2a7ab9", "#e08a1e", "#55a868", "#c44e52", "#8172b2"]
    for body, color in zip(parts["bodies"], colors * 2):
        body.set_facecolor(color)
        body.set_alpha(0.55)
    ax.boxplot(data, widths=0.12, showfliers=False, whis=(1, 99), medianprops={"color": "black"})
    if log:
        low = math.floor(min(float(d.min()) for d in data))
        high = math.ceil(max(float(d.max()) for d in data))
        ticks = [math.log10(m * 10.0**e) for e in range(low, high + 1) for m in (1, 2, 5)]
        ticks = [t for t in ticks if low <= t <= high]
        ax.set_yticks(ticks)
        ax.set_yticklabels([f"{10**t:g}" for t in ticks])
        lo, hi = min(float(d.min()) for d in data), max(float(d.max()) for d in data)
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    else:
        ax.set_ylim(bottom=0)
    ax.set_xticks(range(1, len(runs) + 1))
    ax.set_xticklabels([f"{r.name}\np50 {r.p50_us:.1f}\np99 {r.p99_us:.1f}" for r in runs], fontsize=8)
    ax.set_ylabel("latency per call (µs" + (", log scale)" if log else ")"))
    ax.grid(axis="y", alpha=0.3, which="both")
    frames = f"{report.chunk} frame{'s' if report.chunk > 1 else ''} x {report.batch} stream" \
             f"{'s' if report.batch > 1 else ''} per call"
    ax.set_title(title or f"{Path(report.model).name} ({report.mode} mode): {frames}, {report.threads} thread"
                 f"{'s' if report.threads > 1 else ''}", fontsize=10)
    fig.tight_layout()
    fig.savefig(str(target), format="png")
    return target


__all__ = ["BenchReport", "RuntimeResult", "BenchError", "MismatchError", "plot", "EDGERNN", "ORT_LOOP", "EAGER",
           "PLAIN", "CHECK_FRAMES", "TOLERANCE"]
