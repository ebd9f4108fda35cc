"""The lower-recurrent pass: each capture placeholder becomes real ONNX (``recurrent.py`` emits it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgernn.converters import capture
from edgernn.converters.pass_api import PassResult
from edgernn.converters.recurrent import GraphBuilder, lower_gated, lower_sequence, lower_step

if TYPE_CHECKING:  # pragma: no cover
    from edgernn.converters.passes import ExportContext


class LowerRecurrentLayers:
    """Replace each placeholder by ONNX RNN/LSTM/GRU ops (chunk, sequence) or, in step mode, the
    form ``options.cells`` asks for (see ``converters.recurrent.lower_step``)."""

    name = "lower-recurrent"

    def __call__(self, ctx: ExportContext) -> PassResult:
        assert ctx.onnx_model is not None
        graph = ctx.onnx_model.graph
        # By hand, in the ModelProto: the lowerings build NodeProtos (GraphBuilder) that write the
        # placeholder's own output names, so replacing a placeholder is splicing its nodes in its place
        new_nodes, inits, lowered = [], [], []
        for node in graph.node:
            if node.domain != capture.DOMAIN:
                new_nodes.append(node)
                continue
            layer = next(a.i for a in node.attribute if a.name == "layer")
            spec = ctx.layer_specs[layer]
            g = GraphBuilder(spec.path or spec.kind)
            ins = list(node.input)
            valid = ins.pop() if node.op_type.endswith("Gated") else None  # skips warm-up frames (context.py)
            x, h0, *c0 = ins
            y, hn, *cn = node.output
            args = (g, spec, x, h0, c0[0] if c0 else None, y, hn, cn[0] if cn else None)
            if valid is not None:
                lower_gated(*args[:5], valid, *args[5:])
            elif ctx.capture_mode == "step":
                lower_step(*args, cells=ctx.options.cells)
            else:
                lower_sequence(*args)
            new_nodes += g.nodes
            inits += g.initializers
            kinds = sorted({n.op_type for n in g.nodes} & {"GRU", "LSTM", "RNN", "Scan", "MatMul"})
            lowered.append(f"{spec.path or spec.kind} ({spec.kind}) -> {'/'.join(kinds)}")
        if lowered:
            del graph.node[:]
            graph.node.extend(new_nodes)
            graph.initializer.extend(inits)
        keep = [o for o in ctx.onnx_model.opset_import if o.domain != capture.DOMAIN]
        dropped = len(keep) < len(ctx.onnx_model.opset_import)
        del ctx.onnx_model.opset_import[:]
        ctx.onnx_model.opset_import.extend(keep)
        return PassResult(bool(lowered) or dropped, "; ".join(lowered) or "no recurrent layers")


__all__ = ["LowerRecurrentLayers"]
