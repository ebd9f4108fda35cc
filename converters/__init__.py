"""Export and graph passes: PyTorch module -> ONNX graph with explicit state I/O.

Pipeline (``passes.PIPELINE``): resolve-inputs, cache-context, time-loop, lift-state,
check-streamable, capture, lower-recurrent, scan-over-time, describe-state-io, optimize, check,
verify. Quantization: ``converters.quantize``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from edgernn.converters.export import ExportReport, export


def __getattr__(name: str) -> Any:
    # torch loads with the exporter only: `edgernn quantize` on an ONNX file does not need it
    if name in ("export", "ExportReport"):
        import importlib

        module = importlib.import_module("edgernn.converters.export")
        globals().update(export=module.export, ExportReport=module.ExportReport)  # as an eager import would
        return globals()[name]
    raise AttributeError(f"module 'edgernn.converters' has no attribute {name!r}")


__all__ = ["export", "ExportReport"]
