"""Stamp a contract into a graph: :func:`with_contract` renames the state I/O of an
``onnx.ModelProto`` ``state_in.<name>`` / ``state_out.<name>``, orders its inputs and outputs
data first, names its batch and time dimensions ``batch`` / ``time`` and writes the contract
into its metadata (through :func:`edgernn.contract.write_metadata`), so that a file from another
exporter, whose contract :mod:`edgernn.foreign` inferred, becomes an edgernn file.

The surgery is done on onnx-ir, where a value is one object however many nodes (and subgraphs)
read it: renaming it renames every use.
"""

from __future__ import annotations

from typing import Any

from edgernn.contract import (
    BATCH,
    TIME,
    Contract,
    ContractError,
    StateSpec,
    state_input_name,
    state_output_name,
    write_metadata,
)


def standard_names(contract: Contract) -> Contract:
    """``contract`` with every state's graph I/O named ``state_in.<name>`` / ``state_out.<name>``."""
    states = tuple(StateSpec(s.name, s.shape, s.dtype, s.batch_axis, s.init) for s in contract.states)
    return Contract(contract.mode, contract.inputs, contract.outputs, states, dict(contract.extra), contract.format)


def with_contract(model: Any, contract: Contract, source: str = "the model") -> Any:
    """A copy of ``model`` (an ``onnx.ModelProto``) that follows ``contract`` and declares it.

    State inputs and outputs are renamed ``state_in.<name>`` / ``state_out.<name>`` throughout the
    graph (subgraphs included); graph inputs are reordered data inputs first, then states (outputs
    likewise); the symbolic dimensions at batch and time axes are renamed ``batch`` and ``time``;
    and the contract is written to ``metadata_props``. :func:`~edgernn.contract.read_metadata`
    reads it back. The input model is not changed.
    """
    graph = model.graph
    g_inputs = {v.name: v for v in graph.input}
    g_outputs = {v.name: v for v in graph.output}
    for spec in contract.inputs:
        if spec.name not in g_inputs:
            raise ContractError(f"{source} has no graph input {spec.name!r}, which the contract names as a data input")
    for spec in contract.outputs:
        if spec.name not in g_outputs:
            raise ContractError(f"{source} has no graph output {spec.name!r}, which the contract names as a data output")
    rename: dict[str, str] = {}
    for s in contract.states:
        if s.input not in g_inputs or s.output not in g_outputs:
            raise ContractError(f"{source} has no state pair {s.input!r} -> {s.output!r} in its graph I/O, "
                                f"which the contract names for state {s.name!r}")
        for old, new in ((s.input, state_input_name(s.name)), (s.output, state_output_name(s.name))):
            if old != new:
                rename[old] = new
    import onnx_ir as ir

    # on onnx-ir, a value is one object however many nodes (and subgraphs) read it: renaming it
    # renames every use, and the graph's inputs and outputs are plain lists to reorder
    m = ir.from_proto(model)
    values = _all_values(m.graph)
    existing = {v.name for v in values}
    clash = sorted(n for n in rename.values() if n in existing and n not in rename)
    if clash:
        raise ContractError(f"{source} already has a value named {clash[0]!r}; cannot rename a state to it")
    for v in values:
        if v.name in rename:
            v.name = rename[v.name]
    _reorder(m.graph.inputs, [t.name for t in contract.inputs] + [state_input_name(s.name) for s in contract.states])
    _reorder(m.graph.outputs, [t.name for t in contract.outputs] + [state_output_name(s.name) for s in contract.states])
    _rename_symbols(m.graph, values, contract)
    out = ir.to_proto(m)
    write_metadata(out, standard_names(contract))
    return out


def value_names(model: Any) -> set[str]:
    """Every value name of an ``onnx.ModelProto``'s graph, subgraphs included."""
    import onnx_ir as ir

    return {v.name for v in _all_values(ir.from_proto(model).graph) if v.name}


def _all_values(graph: Any) -> list[Any]:
    """The ``onnx_ir.Value`` objects of ``graph`` and its subgraphs: inputs, initializers and node outputs."""
    from onnx_ir.traversal import RecursiveGraphIterator

    seen: dict[int, Any] = {}
    for v in [*graph.inputs, *graph.initializers.values()]:
        seen[id(v)] = v
    for node in RecursiveGraphIterator(graph):
        for v in [*node.inputs, *node.outputs]:
            if v is not None:
                seen[id(v)] = v
        for attr in node.attributes.values():
            for sub in ([attr.value] if attr.type == attr.type.GRAPH else
                        list(attr.value) if attr.type == attr.type.GRAPHS else []):
                for v in sub.inputs:
                    seen[id(v)] = v
    return list(seen.values())


def _reorder(values: Any, order: list[str]) -> None:
    rank = {n: k for k, n in enumerate(order)}
    items = sorted(values, key=lambda v: rank.get(v.name, len(order)))  # stable: others keep their order, at the end
    values.clear()
    values.extend(items)


def _rename_symbols(graph: Any, values: list[Any], contract: Contract) -> None:
    """Rename the symbolic dims at contract batch / time axes to ``batch`` / ``time``, everywhere."""
    import onnx_ir as ir

    symbols: dict[str, str] = {}
    io = {v.name: v for v in [*graph.inputs, *graph.outputs]}
    tensors: list[tuple[str, int | None, int | None]] = [(t.name, t.batch_axis, t.time_axis)
                                                         for t in (*contract.inputs, *contract.outputs)]
    for s in contract.states:
        tensors += [(state_input_name(s.name), s.batch_axis, None), (state_output_name(s.name), s.batch_axis, None)]
    for name, b, t in tensors:
        v = io[name]
        if v.shape is None:
            continue
        dims = list(v.shape.dims)
        for axis, symbol in ((b, BATCH), (t, TIME)):
            if axis is not None and axis < len(dims) and not isinstance(dims[axis], int):
                old = dims[axis].value
                if old and symbols.setdefault(old, symbol) != symbol:
                    symbols[old] = ""  # used as both: leave it alone
                dims[axis] = ir.SymbolicDim(symbol)
        v.shape = ir.Shape(dims)
    symbols = {k: v for k, v in symbols.items() if v and k != v}
    if not symbols:
        return
    for v in values:
        if v.shape is not None and any(not isinstance(d, int) and d.value in symbols for d in v.shape.dims):
            v.shape = ir.Shape([d if isinstance(d, int) or d.value not in symbols else ir.SymbolicDim(symbols[d.value])
                                for d in v.shape.dims])


__all__ = ["with_contract", "standard_names", "value_names"]
