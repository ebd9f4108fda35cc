"""The check pass: onnx's checker (full) and shape inference, and graph I/O named as the contract says."""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from edgernn.converters.pass_api import PassResult
from edgernn.errors import ExportError

if TYPE_CHECKING:  # pragma: no cover
    from edgernn.converters.passes import ExportContext


class CheckAndInferShapes:
    """onnx.checker (full) and shape inference; graph I/O must follow the contract's names."""

    name = "check"

    def __call__(self, ctx: ExportContext) -> PassResult:
        model = onnx.shape_inference.infer_shapes(ctx.onnx_model, check_type=True, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
        names_in = [i.name for i in model.graph.input]
        names_out = [o.name for o in model.graph.output]
        want_in = [s.name for s in ctx.contract.inputs] + [s.input for s in ctx.contract.states]
        want_out = [s.name for s in ctx.contract.outputs] + [s.output for s in ctx.contract.states]
        if names_in != want_in or names_out != want_out:
            raise ExportError(f"graph I/O {names_in} -> {names_out} does not follow the contract "
                              f"{want_in} -> {want_out}")
        changed = model.graph != ctx.onnx_model.graph  # inference adds the shapes it found
        ctx.onnx_model = model
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        return PassResult(changed, f"ir {model.ir_version}, opset {opset}")


__all__ = ["CheckAndInferShapes"]
