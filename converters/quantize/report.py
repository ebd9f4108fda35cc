"""Reports of the quantizers: what happened to each node, sizes, and the accuracy check."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


DECIDED_BY = "edgernn.converters.quantize.decisions.decide"  # where the rules of every NodeDecision are


@dataclass
class NodeDecision:
    """What a quantizer did with one node: ``dtype`` is ``int8``, ``float16`` or ``float32``, and
    ``why`` the rule that decided it (all rules: :data:`DECIDED_BY`)."""

    name: str
    op_type: str
    dtype: str
    why: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OutputAccuracy:
    """Error of one output of the quantized model against the float model, over whole streams.

    ``decision`` names the decision compared for classifier-like outputs (``argmax`` over the
    last axis, or ``threshold 0.5`` / ``threshold 0``) and ``agreement`` the fraction of frames
    on which float and quantized decide the same; both are None for other outputs."""

    name: str
    max_abs: float
    mean_abs: float
    scale: float
    decision: str | None = None
    agreement: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SizeSplit:
    """Bytes of the float and the quantized file, and of their weights (initializers and Constant
    values, subgraphs included); the rest is graph: nodes, names, metadata."""

    before: int
    weights_before: int
    after: int
    weights_after: int

    @property
    def graph_before(self) -> int:
        return self.before - self.weights_before

    @property
    def graph_after(self) -> int:
        return self.after - self.weights_after

    def to_json(self) -> dict[str, int]:
        return {"graph_before": self.graph_before, "weights_before": self.weights_before,
                "graph_after": self.graph_after, "weights_after": self.weights_after}


@dataclass
class AccuracyReport:
    """Float vs quantized, streamed side by side (state carried in both)."""

    data_source: str  # "calibration file X", "data file X" or "synthetic ..."
    steps: int  # frames per stream
    streams: int
    chunk: int  # frames per call
    outputs: list[OutputAccuracy] = field(default_factory=list)
    state_errors: dict[str, float] = field(default_factory=dict)  # max abs error of the final state
    float_call_us: float | None = None  # p50 microseconds per call of each model, timed side by side in the check
    quantized_call_us: float | None = None
    notes: list[str] = field(default_factory=list)  # how the data was fed (e.g. sequence mode's bounded streams)

    @property
    def latency_ratio(self) -> float | None:
        if not self.float_call_us or self.quantized_call_us is None:
            return None
        return self.quantized_call_us / self.float_call_us

    @property
    def max_error(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def min_agreement(self) -> float | None:
        values = [o.agreement for o in self.outputs if o.agreement is not None]
        return min(values) if values else None

    def to_json(self) -> dict[str, Any]:
        return {"data_source": self.data_source, "steps": self.steps, "streams": self.streams, "chunk": self.chunk,
                "outputs": [o.to_json() for o in self.outputs], "state_errors": self.state_errors,
                "max_error": self.max_error, "min_agreement": self.min_agreement,
                "latency_us": {"float": self.float_call_us, "quantized": self.quantized_call_us,
                               "ratio": self.latency_ratio}, "notes": self.notes}


@dataclass
class QuantizeReport:
    """What ``quantize`` did: method, sizes, per-node decisions, accuracy, and the verdict."""

    method: str
    source: str
    path: str | None
    size_before: int
    size_after: int
    quantized: list[NodeDecision] = field(default_factory=list)
    kept_float: list[NodeDecision] = field(default_factory=list)
    accuracy: AccuracyReport | None = None
    max_error: float | None = None  # thresholds the user gave
    min_agreement: float | None = None
    notes: list[str] = field(default_factory=list)
    model: Any = field(default=None, repr=False)
    sizes: SizeSplit | None = None  # graph and weight bytes apart

    @property
    def size_ratio(self) -> float:
        return self.size_after / self.size_before if self.size_before else float("nan")

    @property
    def failures(self) -> list[str]:
        """Sentences for each threshold the accuracy check missed (empty when it passed)."""
        out = []
        acc = self.accuracy
        if acc is None:
            return out
        if self.max_error is not None and acc.max_error > self.max_error:
            worst = max(acc.outputs, key=lambda o: o.max_abs)
            out.append(f"output {worst.name!r} differs from the float model by up to {acc.max_error:.3g}, "
                       f"more than --max-error {self.max_error:g}")
        if self.min_agreement is not None:
            agree = acc.min_agreement
            if agree is None:
                out.append("--min-agreement was given but no output looks like a classifier's (no decision to compare)")
            elif agree < self.min_agreement:
                out.append(f"decisions agree with the float model on {agree:.2%} of frames, less than "
                           f"--min-agreement {self.min_agreement:.2%}")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def decided_by(self) -> str:
        """The function whose docstring states how each node was decided."""
        return DECIDED_BY

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "source": self.source, "path": self.path, "size_before": self.size_before,
                "size_after": self.size_after, "size_ratio": self.size_ratio,
                "sizes": self.sizes.to_json() if self.sizes else None,
                "quantized": [d.to_json() for d in self.quantized],
                "kept_float": [d.to_json() for d in self.kept_float], "decided_by": self.decided_by,
                "accuracy": self.accuracy.to_json() if self.accuracy else None,
                "thresholds": {"max_error": self.max_error, "min_agreement": self.min_agreement},
                "passed": self.passed, "failures": self.failures, "notes": self.notes}
