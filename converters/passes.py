"""The export pipeline: named passes run in order over one :class:`ExportContext`.

``PIPELINE`` lists them, one module each (a pass file is named after its pass):

====================  =====================  ===================================================
pass                  module                 what it does
====================  =====================  ===================================================
resolve-inputs        ``resolve.py``         data inputs and the forward arguments that are states
cache-context         ``context.py``         context caches for convolutions and poolings over time
time-loop             ``timeloop.py``        finds a forward that loops over time in Python
lift-state            ``lift.py``            states of recurrent layers become graph I/O
check-streamable      ``streamable.py``      two calls give what one gives, in PyTorch
capture               ``capture.py``         ``torch.onnx.export``, recurrent layers as placeholders
lower-recurrent       ``lower.py``           placeholders to ONNX ops (``recurrent.py``)
scan-over-time        ``scan.py``            one-frame graphs in a ``Scan`` over frames
describe-state-io     ``describe.py``        the contract on the I/O and in the metadata
optimize              ``optimize.py``        onnxscript's optimizer
check                 ``check.py``           onnx's checker and shape inference
verify                ``verify.py``          parity with PyTorch through onnxruntime
====================  =====================  ===================================================

Each pass returns a :class:`~edgernn.converters.pass_api.PassResult` (whether it changed
anything, and a detail that says what, or why it declined), checks its preconditions up front
and raises an :class:`~edgernn.errors.ExportError` with a sentence when it cannot apply. The
options are checked once, when :class:`ExportOptions` is made. A test can run the passes one by
one (see ``tests/converters/test_passes.py``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import torch
from torch import nn
from torch.utils import _pytree as pytree

from edgernn.contract import MODES, Contract
from edgernn.converters import capture
from edgernn.converters.capture import Capture
from edgernn.converters.check import CheckAndInferShapes
from edgernn.converters.context import CacheTemporalContext
from edgernn.converters.describe import DescribeStateIO
from edgernn.converters.io import InputSpec
from edgernn.converters.lift import LiftState
from edgernn.converters.lower import LowerRecurrentLayers
from edgernn.converters.optimize import Optimize
from edgernn.converters.pass_api import Pass
from edgernn.converters.recurrent import CELLS, RecurrentLayerSpec
from edgernn.converters.resolve import ExplicitState, ResolveInputs
from edgernn.converters.scan import ScanOverTime
from edgernn.converters.streamable import CheckStreamable
from edgernn.converters.timeloop import DetectTimeLoop
from edgernn.converters.verify import Verify
from edgernn.errors import ExportError

STATE_LAYOUTS = ("native", "batch-major")  # how state tensors sit in the file (see DescribeStateIO)


MIN_OPSET = 18  # torch.onnx's dynamo exporter; the newest depends on the torch installed (it says so)


@dataclass
class ExportOptions:
    """How to export. ``inputs`` declares data inputs (and, by name, explicit state arguments);
    ``state_args`` names the forward arguments that are states (else found by ``resolve.STATE_ARG``)."""

    mode: str = "chunk"
    opset: int = 18
    inputs: Sequence[InputSpec] = ()
    state_args: Sequence[str] | None = None
    output_names: Sequence[str] | None = None
    verify: bool = True
    tolerance: float = 1e-5
    cells: str = "auto"  # step mode: "auto" (fastest measured form per kind) or "matmul"
    # "native": states keep PyTorch's layout ([layers*dirs, batch, H]); "batch-major": every state
    # with a batch axis has it first in the file ([batch, layers*dirs, H]), for runtimes that need that
    state_layout: str = "native"

    def __post_init__(self) -> None:
        """The one check of the choices (``export`` makes its options first thing)."""
        if self.mode not in MODES:
            raise ExportError(f"mode {self.mode!r} is unknown; expected {', '.join(MODES[:-1])} or {MODES[-1]}")
        if self.cells not in CELLS:
            raise ExportError(f"cells {self.cells!r} is unknown; expected {' or '.join(CELLS)}")
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or self.opset < MIN_OPSET:
            raise ExportError(f"opset {self.opset!r} is not supported; the exporter writes opset {MIN_OPSET} or newer "
                              "(torch.onnx's dynamo exporter)")
        if self.state_layout not in STATE_LAYOUTS:
            raise ExportError(f"state layout {self.state_layout!r} is unknown; expected {' or '.join(STATE_LAYOUTS)}")


@dataclass
class PassRecord:
    """What one pass did, for :attr:`ExportReport.passes <edgernn.converters.export.ExportReport>`."""

    name: str
    changed: bool
    detail: str
    seconds: float


@dataclass
class ExportContext:
    """Everything the passes share. ``original`` is the user's model (never modified);
    ``model`` is a private copy that the passes wrap and capture."""

    original: nn.Module
    options: ExportOptions
    model: nn.Module = field(init=False)
    data: list[InputSpec] = field(default_factory=list)
    explicit: list[ExplicitState] = field(default_factory=list)
    wrappers: list[capture.StatefulRecurrent] = field(default_factory=list)
    lifted: list[capture.LiftedState] = field(default_factory=list)
    lifter: capture.StateLifter | None = None
    output_names: list[str] = field(default_factory=list)
    output_axes: list[tuple[int | None, int | None]] = field(default_factory=list)  # (batch, time)
    layer_specs: dict[int, RecurrentLayerSpec] = field(default_factory=dict)
    onnx_model: onnx.ModelProto | None = None
    contract: Contract | None = None
    parity: Any = None
    notes: list[str] = field(default_factory=list)
    records: list[PassRecord] = field(default_factory=list)
    frame_model: bool = False  # one frame per forward, exported for chunk/sequence as a Scan over time
    # every call's frames must be a multiple of this (a model that reshapes time into blocks, a
    # stride over time); probes, capture and verification use lengths that are multiples of it.
    # Combine new constraints with math.lcm.
    frame_multiple: int = 1
    temporal: Any = None  # context.TemporalPlan: convolutions over time with context caches, delays
    # why the forward loops over time in Python ("" if it does not): captured for one frame, chunk and
    # sequence files run that frame in a Scan over the data's own time axis (converters/timeloop.py)
    time_loop: str = ""
    # state name -> axis order of the file's state in terms of PyTorch's (state_layout="batch-major"
    # moves the batch axis first); states absent here have PyTorch's layout in the file too
    state_perms: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model = copy.deepcopy(self.original).eval()

    @property
    def mode(self) -> str:
        return self.options.mode

    @property
    def capture_mode(self) -> str:
        """The mode the model is captured in: a one-frame model, or one whose forward loops over time
        in Python, is always captured one step at a time."""
        return "step" if self.frame_model or self.time_loop else self.mode

    @property
    def streams_time(self) -> bool:
        """True when data inputs have a time axis (not a one-frame-per-call model)."""
        return any(s.time_axis is not None for s in self.data)

    @property
    def state_names(self) -> list[str]:
        return [n for e in self.explicit for n in e.leaf_names] + [s.name for s in self.lifted]

    def initial_states(self, batch: int, generator: torch.Generator | None = None, scale: float = 0.0
                       ) -> list[torch.Tensor]:
        """Flat state tensors (explicit, then lifted) for ``batch``: init values, plus noise if asked."""
        leaves: list[torch.Tensor] = []
        for e in self.explicit:
            leaves += [t.detach() for t in pytree.tree_leaves(e.make(batch))]  # a learned init may need grad
        leaves += [s.example(batch) for s in self.lifted]
        if scale and generator is not None:
            leaves = [t + scale * torch.randn(t.shape, generator=generator).to(t.dtype)
                      if t.dtype.is_floating_point else t for t in leaves]
        return leaves

    def example_data(self, batch: int, time: int, generator: torch.Generator) -> list[torch.Tensor]:
        return [s.random(batch, time, generator) for s in self.data]

    def run_lifter(self, data: Sequence[torch.Tensor], states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        with torch.no_grad():
            return list(self.lifter(*data, *states))

    def to_file_layout(self, states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Flat states (explicit, then lifted) from PyTorch's layout to the file's (:attr:`state_perms`)."""
        return [t.permute(self.state_perms[n]).contiguous() if n in self.state_perms else t
                for n, t in zip(self.state_names, states)]

    def from_file_layout(self, states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Flat states from the file's layout back to PyTorch's (the inverse of :meth:`to_file_layout`)."""
        inverse = {n: tuple(int(k) for k in np.argsort(p)) for n, p in self.state_perms.items()}
        return [t.permute(inverse[n]).contiguous() if n in inverse else t for n, t in zip(self.state_names, states)]


PIPELINE: tuple[Pass, ...] = (
    ResolveInputs(), CacheTemporalContext(), DetectTimeLoop(), LiftState(), CheckStreamable(), Capture(),
    LowerRecurrentLayers(), ScanOverTime(), DescribeStateIO(), Optimize(), CheckAndInferShapes(), Verify())


def run_pipeline(ctx: ExportContext, passes: Sequence[Pass] = PIPELINE, progress: Callable[[str], None] | None = None
                 ) -> ExportContext:
    """Run ``passes`` in order, recording what each did."""
    for p in passes:
        if progress:
            progress(p.name)
        t0 = time.perf_counter()
        result = p(ctx)
        ctx.records.append(PassRecord(p.name, result.changed, result.detail, time.perf_counter() - t0))
    return ctx


__all__ = ["PIPELINE", "STATE_LAYOUTS", "ExportContext", "ExportOptions", "PassRecord", "run_pipeline"]
