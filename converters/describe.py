"""The describe-state-io pass: the file's contract, on its graph I/O and in its ``metadata_props``.

Data inputs and outputs get their ``batch`` and ``time`` dims named, states their batch dim, and
the contract (``edgernn.contract``) is written into the metadata. A state with a nonzero start
value gets it stored as the initializer ``state_init.<name>``. The graph is edited with onnx-ir.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import onnx_ir as ir

from edgernn.contract import (BATCH, FORMAT_VERSION, TIME, Contract, StateSpec, TensorSpec, state_input_name,
                              state_output_name, write_metadata)
from edgernn.converters.pass_api import PassResult
from edgernn.errors import ExportError

if TYPE_CHECKING:  # pragma: no cover
    from edgernn.converters.passes import ExportContext

STATE_INIT = "state_init."  # prefix of the initializers that hold stored start values


class DescribeStateIO:
    """Name dims (``batch``, ``time``) on graph I/O and write the contract into metadata_props.

    With ``options.state_layout == "batch-major"``, every state whose batch axis is not its first
    axis is moved to batch-first at the graph's edge: a ``Transpose`` after ``state_in.<name>``
    back to PyTorch's layout, and one before ``state_out.<name>`` to batch-first, so the graph
    inside computes as before. The contract then gives the state's shape batch-first with
    ``batch_axis`` 0, and a stored start value (``state_init.<name>``) is permuted the same way.
    States without a batch axis, or with it first already, are left as they are."""

    name = "describe-state-io"

    def __call__(self, ctx: ExportContext) -> PassResult:
        assert ctx.onnx_model is not None
        batch_major = ctx.options.state_layout == "batch-major"  # checked with the options (passes.py)
        step = ctx.mode == "step"
        model = ir.serde.deserialize_model(ctx.onnx_model)
        graph = model.graph
        inputs = tuple(s.to_tensor_spec(step, ctx.frame_multiple) for s in ctx.data)
        outs_by_name = {v.name: v for v in graph.outputs}
        outputs = []
        delays = list(ctx.temporal.delays) if ctx.temporal is not None else []
        for k, (name, (b, t)) in enumerate(zip(ctx.output_names, ctx.output_axes)):
            v = outs_by_name[name]
            shape = _shape(v)
            if b is not None:
                shape[b] = BATCH
            if t is not None:
                shape[t] = 1 if step else TIME
            delay = delays[k] if k < len(delays) and t is not None else 0
            outputs.append(TensorSpec(name, tuple(shape), _dtype_name(v), b, t, delay=delay))
        states = []
        lifted_leaves = {s.name: s for s in ctx.lifted}
        explicit_axes = {n: a for e in ctx.explicit for n, a in zip(e.leaf_names, e.batch_axes)}
        stored = {n: v for e in ctx.explicit for n, v in e.stored.items()}
        ins_by_name = {v.name: v for v in graph.inputs}
        ctx.state_perms = {}
        for name in ctx.state_names:
            v = ins_by_name[state_input_name(name)]
            shape = _shape(v)
            axis = lifted_leaves[name].batch_axis if name in lifted_leaves else explicit_axes[name]
            if axis is not None:
                shape[axis] = BATCH
            start = stored.get(name)
            if batch_major and axis is not None and axis != 0:
                perm = (axis, *range(axis), *range(axis + 1, len(shape)))
                transpose_state_io(graph, name, perm)
                ctx.state_perms[name] = perm
                shape, axis = [shape[k] for k in perm], 0
                if start is not None:
                    start = np.ascontiguousarray(start.transpose(perm))
            init: str | dict[str, str] = "zeros"
            if start is not None:
                stored_as = STATE_INIT + name
                init = {"initializer": stored_as}
                graph.initializers.add(ir.val(stored_as, const_value=ir.tensor(start, name=stored_as)))
            states.append(StateSpec(name, tuple(shape), _dtype_name(v), axis, init))
        ctx.contract = Contract(ctx.mode, inputs, tuple(outputs), tuple(states))  # type: ignore[arg-type]
        ins_by_name = {v.name: v for v in graph.inputs}
        outs_by_name = {v.name: v for v in graph.outputs}  # the transposes gave some states new outputs
        for v, spec in [*((ins_by_name[s.name], s) for s in inputs), *((outs_by_name[s.name], s) for s in outputs),
                        *((ins_by_name[s.input], s) for s in states), *((outs_by_name[s.output], s) for s in states)]:
            v.shape = ir.Shape(spec.shape)
        model.producer_name = "edgernn"
        ctx.onnx_model = ir.serde.serialize_model(model)
        write_metadata(ctx.onnx_model, ctx.contract)
        detail = f"format {FORMAT_VERSION}, mode {ctx.mode}, {len(states)} state pairs"
        if batch_major:
            detail += f", batch-major ({len(ctx.state_perms)} transposed)"
        return PassResult.done(detail)


def transpose_state_io(graph: ir.Graph, name: str, perm: Sequence[int]) -> None:
    """Make the graph take and give state ``name`` with its axes in ``perm`` order (PyTorch's axes
    ``perm[0], perm[1], ...``), leaving every node that reads or writes it as it was."""
    state_in = next(v for v in graph.inputs if v.name == state_input_name(name))
    k, state_out = next((k, v) for k, v in enumerate(graph.outputs) if v.name == state_output_name(name))
    if state_out.producer() is None:
        raise ExportError(f"internal: no node computes {state_out.name!r}, so its layout cannot be changed")
    native_in = ir.Value(name=f"{state_in.name}@native")
    state_in.replace_all_uses_with(native_in)  # its readers, in subgraphs too, now read PyTorch's layout
    if state_in.shape is not None:
        state_in.shape = ir.Shape([state_in.shape[p] for p in perm])
    graph.insert_before(graph[0], ir.node("Transpose", [state_in], {"perm": [int(p) for p in np.argsort(perm)]},
                                          outputs=[native_in], name=f"{state_in.name}/to_native"))
    shape = None if state_out.shape is None else ir.Shape([state_out.shape[p] for p in perm])
    file_out = ir.Value(name=state_out.name, type=state_out.type, shape=shape,
                        metadata_props=dict(state_out.metadata_props))
    state_out.name = f"{file_out.name}@native"
    state_out.metadata_props.clear()
    graph.outputs[k] = file_out
    graph.append(ir.node("Transpose", [state_out], {"perm": list(perm)}, outputs=[file_out],
                         name=f"{file_out.name}/batch_major"))


def _shape(v: ir.Value) -> list[int | str]:
    """``v``'s dims: sizes, dim names, ``"?"`` for an unnamed dynamic dim."""
    return [d if isinstance(d, int) else (d.value or "?") for d in (v.shape or ())]


def _dtype_name(v: ir.Value) -> str:
    return v.dtype.numpy().name


__all__ = ["STATE_INIT", "DescribeStateIO", "transpose_state_io"]
