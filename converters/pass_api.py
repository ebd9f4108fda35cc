"""What a pass is: a named callable on the export context that returns a :class:`PassResult`.

The shape follows onnx-ir's passes (``onnx_ir.passes.PassResult``): a pass says whether it
changed anything, and when it declines, the detail says why ("not needed (whole sequences)").
The pipeline that runs them is ``converters/passes.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from edgernn.converters.passes import ExportContext


@dataclass(frozen=True)
class PassResult:
    """What one pass did: ``changed`` (the context, model or graph was modified) and a short
    description for the export report."""

    changed: bool
    detail: str

    @classmethod
    def done(cls, detail: str) -> PassResult:
        """The pass applied and changed something."""
        return cls(True, detail)

    @classmethod
    def unchanged(cls, detail: str) -> PassResult:
        """The pass changed nothing: it declined (``detail`` says why) or only checked."""
        return cls(False, detail)


class Pass(Protocol):
    """One step of the export: ``name`` for the report, called once on the context."""

    name: str

    def __call__(self, ctx: ExportContext) -> PassResult: ...


__all__ = ["Pass", "PassResult"]
