"""Export and graph passes: PyTorch module -> ONNX graph with explicit state I/O.

Pipeline (``passes.PIPELINE``): resolve-inputs, time-loop, lift-state, capture, lower-recurrent,
scan-over-time, describe-state-io, optimize, check, verify. Quantization: ``converters.quantize``.
"""

from edgernn.converters.export import ExportReport, export

__all__ = ["export", "ExportReport"]
