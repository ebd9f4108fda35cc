"""Export and graph passes: PyTorch module -> ONNX graph with explicit state I/O.

Pipeline (``passes.PIPELINE``): resolve-inputs, lift-state, capture, lower-recurrent,
describe-state-io, optimize, check, verify.
"""

from edgernn.converters.export import ExportReport, export

__all__ = ["export", "ExportReport"]
