"""edgernn: export recurrent PyTorch models to streaming ONNX with explicit state I/O.

Public API::

    import edgernn
    report = edgernn.export(model, "gru.onnx", mode="chunk")   # verified against PyTorch
    session = edgernn.open("gru.onnx")                         # a StreamingSession
    y = session.step(frames)["y"]; session.state; session.reset()
    model = edgernn.load("gru.pt").module                      # checkpoints, state_dicts...
    edgernn.save(model, "gru.pt")                              # edgernn's own checkpoint
    q = edgernn.quantize("gru.onnx", method="dynamic")        # int8, with an accuracy report
    f = edgernn.ModelFile.open("gru.onnx")                     # a file and its resolved contract
    r = edgernn.check("gru.onnx", runtimes="ort,openvino,tract")  # the same frames in every runtime
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from edgernn.checkpoints import LoadedModel, load, save
    from edgernn.converters.quantize import QuantizeReport, quantize
    from edgernn.converters.export import ExportReport, export
    from edgernn.modelfile import ModelFile
    from edgernn.runtimes.check import CheckReport, check
    from edgernn.runtimes.session import StreamingSession

_LAZY = {
    "export": ("edgernn.converters.export", "export"),
    "ExportReport": ("edgernn.converters.export", "ExportReport"),
    "StreamingSession": ("edgernn.runtimes.session", "StreamingSession"),
    "load": ("edgernn.checkpoints", "load"),
    "save": ("edgernn.checkpoints", "save"),
    "LoadedModel": ("edgernn.checkpoints", "LoadedModel"),
    "info": ("edgernn.api", "info"),
    "run": ("edgernn.api", "run"),
    "export_file": ("edgernn.api", "export_file"),
    "quantize": ("edgernn.converters.quantize", "quantize"),
    "QuantizeReport": ("edgernn.converters.quantize", "QuantizeReport"),
    "ModelFile": ("edgernn.modelfile", "ModelFile"),
    "check": ("edgernn.runtimes.check", "check"),
    "CheckReport": ("edgernn.runtimes.check", "CheckReport"),
}


def open(path, **kwargs) -> "StreamingSession":  # noqa: A001 - mirrors builtins.open on purpose
    """Open an edgernn ONNX file as a :class:`~edgernn.runtimes.StreamingSession`."""
    from edgernn.runtimes.session import StreamingSession

    return StreamingSession(path, **kwargs)


def __getattr__(name: str) -> Any:
    # torch and onnxruntime load only when used, so `edgernn --help` stays instant
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'edgernn' has no attribute {name!r}")


__all__ = ["export", "ExportReport", "quantize", "QuantizeReport", "StreamingSession", "open", "load", "save", "LoadedModel", "info", "run",
           "export_file", "ModelFile", "check", "CheckReport", "__version__"]
