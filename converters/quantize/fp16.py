"""float16 and mixed float16/float32 conversion of streaming graphs.

Built on onnxruntime's ``convert_float_to_float16`` (graph inputs and outputs, hence the state
I/O, stay float32 at the boundary), with the decisions made here, node by node:

* ``mixed=True`` keeps the recurrent state path in float32: every node on a path from a state
  input to a state output (the feedback loop that is carried from call to call), the recurrent
  ops themselves (GRU, LSTM, RNN, Scan, Loop) and their weights. Rounding there would compound
  over every step of a stream; rounding the frontend and the head does not.
* A node whose op has no float16 kernel in onnxruntime's CPU provider (read from onnxruntime's
  kernel registry) computes in float32 between casts; its weights are still *stored* as float16
  (a ``Cast`` onnxruntime folds when it loads the file), which halves the file. onnxruntime would
  insert such casts by itself, but then rounds tensors to float16 between float32 nodes (the carried
  state included) and, in 1.32, can crash while optimizing the result (a float16 ``Transpose``
  between casts feeding ``MatMul``), so the casts are placed here, explicitly.
* Nodes that only move data (Transpose, Slice, Concat...) run in float16 only between float16
  nodes; elsewhere float16 would add casts and save nothing.
* The converter's own round trips (a float32 tensor cast to float16 and straight back between
  two float32 nodes) are removed, so float32 paths really stay float32.
"""

from __future__ import annotations

import copy
import functools
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from edgernn.contract import Contract, read_metadata
from edgernn.converters.quantize.decisions import decide
from edgernn.converters.quantize.graph import sorted_model
from edgernn.converters.quantize.report import NodeDecision
from edgernn.errors import EdgernnError
from edgernn.recurrent_kinds import ONNX_OPS

RECURRENT_OPS = frozenset({*ONNX_OPS, "Scan", "Loop"})
CONTROL_FLOW_OPS = frozenset({"Scan", "Loop", "If"})
# ops that only move or reshape data (or make constants): they gain nothing from float16 alone
DATA_OPS = frozenset({
    "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Split", "Concat", "Gather",
    "GatherElements", "GatherND", "Expand", "Tile", "Pad", "Identity", "Constant", "ConstantOfShape", "Cast",
    "DepthToSpace", "SpaceToDepth",
})
_FP32 = TensorProto.FLOAT
_STORED_SUFFIX = ".fp16"
_FP16_SUFFIX = "_cast_to_fp16"  # the converter's name for a float32 output before its cast

# why a node stays float32 (first match wins); the first three also keep the node's weights float32
_EXCLUDED = "excluded by the user"
_RECURRENT = "recurrent op: mixed mode keeps the recurrent state path in float32"
_STATE_PATH = "on the recurrent state path ({}): mixed mode keeps it in float32"
_KEEP_WEIGHTS = (_EXCLUDED, _RECURRENT, _STATE_PATH.split(" (")[0])  # reasons that keep float32 weights too
_CONTROL_FLOW = "control flow: its body stays float32, since the float16 converter cannot place casts in subgraphs"
_NO_KERNEL = "onnxruntime's CPU provider has no float16 kernel for {}"
_DATA_ONLY = "moves data only and does not sit between float16 nodes, where float16 would only add casts"
_REJECTED = "onnxruntime's CPU provider rejected it in float16: {}"


def to_fp16(model: onnx.ModelProto, *, mixed: bool, exclude: Sequence[str] = (),
            contract: Contract | None = None) -> tuple[onnx.ModelProto, list[NodeDecision], list[NodeDecision]]:
    """Convert ``model`` to float16 (``mixed=False``) or to float16 with the recurrent state path
    kept in float32 (``mixed=True``).

    Args:
        model: a float32 ONNX model (not modified).
        mixed: keep the nodes on the recurrent state path, recurrent ops and their weights float32.
        exclude: node names or op types to keep in float32 (weights included).
        contract: the state I/O contract; read from the model's metadata when omitted (needed in
            mixed mode, to find the state inputs and outputs).

    Returns:
        ``(model, converted, kept)``: the converted model (graph inputs and outputs still float32,
        ``metadata_props`` as in the input), the nodes that compute or store weights in float16,
        and the float nodes kept entirely in float32, each with the reason.

    Raises:
        EdgernnError: an ``exclude`` name matches no node or op type, the model has no float
            weights or nodes to convert, or onnxruntime cannot load the result.
    """
    original = copy.deepcopy(model)
    _name_nodes(original)
    _drop_initializer_value_info(original)
    if mixed and contract is None:
        contract = read_metadata(original)
    floats = _float_tensors(original)
    readers = _outer_reads_explicit(original, floats)
    floats = _float_tensors(original)
    nodes = [n for n in original.graph.node if n.name not in readers]
    float_nodes = [n for n in nodes if any(t in floats for t in (*_referenced(n), *n.output))]
    if not float_nodes:
        raise EdgernnError("the model has no float32 nodes or weights to convert to float16")
    chosen = _fp32_reasons(original, float_nodes, mixed, exclude, contract)
    chosen.update(readers)
    while True:  # the kernel registry should be right; onnxruntime's loader has the last word
        reasons = dict(chosen)
        for name in _data_ops_off_float16_paths(original, float_nodes, floats, reasons):
            reasons[name] = _DATA_ONLY
        result, stored = _convert(original, reasons)
        rejected = _load_error(result)
        if rejected is None:
            return result, *_decisions(float_nodes, reasons, stored)
        op_type, message = rejected
        newly = [n for n in float_nodes if n.op_type == op_type and n.name not in reasons]
        if not newly:
            raise EdgernnError(f"onnxruntime cannot load the float16 model: {message}")
        for n in newly:
            chosen[n.name] = _REJECTED.format(message)


# ---------------------------------------------------------------------------------------------
# which nodes stay float32, and why
# ---------------------------------------------------------------------------------------------

def _fp32_reasons(model: onnx.ModelProto, float_nodes: list[onnx.NodeProto], mixed: bool,
                  exclude: Sequence[str], contract: Contract | None) -> dict[str, str]:
    """Node name -> why it stays float32, for the nodes the user, mixed mode or the CPU kernels
    keep there (data-moving nodes are decided afterwards, from these)."""
    names = {n.name for n in model.graph.node}
    op_types = {n.op_type for n in model.graph.node}
    unknown = [e for e in exclude if e not in names and e not in op_types]
    if unknown:
        raise EdgernnError(f"exclude {unknown[0]!r} matches no node name or op type of the model")
    excluded = set(exclude)
    path = state_path_nodes(model, contract) if contract is not None and mixed else {}
    kernels = _cpu_float16_kernels()
    opset = {o.domain or "": o.version for o in model.opset_import}
    reasons: dict[str, str] = {}
    for n in float_nodes:
        if n.name in excluded or n.op_type in excluded:
            reasons[n.name] = _EXCLUDED
        elif mixed and n.op_type in RECURRENT_OPS:
            reasons[n.name] = _RECURRENT
        elif n.name in path:
            reasons[n.name] = _STATE_PATH.format(path[n.name])
        elif n.op_type in CONTROL_FLOW_OPS:
            reasons[n.name] = _CONTROL_FLOW
        elif not _has_float16_kernel(kernels, n, opset):
            reasons[n.name] = _NO_KERNEL.format(n.op_type)
    return reasons


def state_path_nodes(model: onnx.ModelProto, contract: Contract) -> dict[str, str]:
    """Nodes on a path from a state input to a state output (the recurrent feedback loop), by
    name, each with the state pairs it lies between (``"state_in.gru.h -> state_out.gru.h"``)."""
    nodes = list(sorted_model(model).graph.node)
    producers_done: dict[str, set[str]] = {s.input: {s.input} for s in contract.states}
    reached: dict[str, set[str]] = {}  # node -> state inputs it depends on
    for n in nodes:
        sources = set().union(*(producers_done.get(t, set()) for t in _referenced(n)))
        if sources:
            reached[n.name] = sources
            for out in n.output:
                producers_done[out] = sources
    needed: dict[str, set[str]] = {s.output: {s.output} for s in contract.states}
    feeds: dict[str, set[str]] = {}  # node -> state outputs it feeds
    for n in reversed(nodes):
        sinks = set().union(*(needed.get(t, set()) for t in n.output))
        if sinks:
            feeds[n.name] = sinks
            for t in _referenced(n):
                needed.setdefault(t, set()).update(sinks)
    return {name: ", ".join(sorted(reached[name])) + " -> " + ", ".join(sorted(feeds[name]))
            for name in reached if name in feeds}


@functools.lru_cache(maxsize=1)
def _cpu_float16_kernels() -> dict[tuple[str, str], list[tuple[int, int]]]:
    """(domain, op type) -> opset version ranges for which onnxruntime's CPU provider has a
    float16 kernel, from onnxruntime's kernel registry."""
    from onnxruntime.capi import _pybind_state as C

    out: dict[tuple[str, str], list[tuple[int, int]]] = {}
    if not hasattr(C, "get_all_opkernel_def"):  # not in this build: every op computes in float32
        return out
    for kernel in C.get_all_opkernel_def():
        if kernel.provider != "CPUExecutionProvider":
            continue
        if any("tensor(float16)" in types for types in kernel.type_constraints.values()):
            domain = "" if kernel.domain in ("", "ai.onnx") else kernel.domain
            out.setdefault((domain, kernel.op_name), []).append(tuple(kernel.version_range))
    return out


def _has_float16_kernel(kernels, node: onnx.NodeProto, opset: dict[str, int]) -> bool:
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    version = opset.get(domain, opset.get("ai.onnx", 0))
    return any(lo <= version <= hi for lo, hi in kernels.get((domain, node.op_type), []))


def _data_ops_off_float16_paths(model: onnx.ModelProto, float_nodes: list[onnx.NodeProto], floats: set[str],
                                reasons: dict[str, str]) -> list[str]:
    """Data-moving nodes that would be float16 but do not sit between float16 nodes: fed by a
    float32 node or graph input, or feeding no float16 node. Moving the cast across such a node
    changes no value (it only moves data) and saves a float16 tensor round trip; it also keeps
    onnxruntime 1.32 from crashing on a float16 ``Transpose`` cast up into ``MatMul``."""
    fp16 = {n.name for n in float_nodes if n.name not in reasons}
    weights = {t.name for t in model.graph.initializer}
    producer = {out: n.name for n in model.graph.node for out in n.output}
    consumers: dict[str, list[str]] = {}
    for n in model.graph.node:
        for t in _referenced(n):
            consumers.setdefault(t, []).append(n.name)
    blocked: list[str] = []
    changed = True
    while changed:
        changed = False
        for n in float_nodes:
            if n.name not in fp16 or n.op_type not in DATA_OPS:
                continue
            fed = all(producer.get(t) in fp16 for t in _referenced(n) if t in floats and t not in weights)
            feeds = any(c in fp16 for t in n.output if t in floats for c in consumers.get(t, []))
            if not (fed and feeds):
                fp16.discard(n.name)
                blocked.append(n.name)
                changed = True
    return blocked


# ---------------------------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------------------------

def _convert(model: onnx.ModelProto, reasons: dict[str, str]) -> tuple[onnx.ModelProto, set[str]]:
    """Run onnxruntime's converter with ``reasons``' nodes blocked, then remove its float32 round
    trips and store the weights of blocked nodes as float16 where their reason allows; returns the
    model and the names of the weights stored as float16."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    keep_weights = {name for name, why in reasons.items() if why.startswith(_KEEP_WEIGHTS)}
    users = _weight_users(model)
    result = convert_float_to_float16(copy.deepcopy(model), keep_io_types=True, op_block_list=[],
                                      node_block_list=sorted(reasons), force_fp16_initializers=False)
    # the converter retypes the subgraphs of blocked control-flow nodes too: give them back as they were
    bodies = {n.name: [copy.deepcopy(a) for a in n.attribute] for n in model.graph.node
              if n.name in reasons and _subgraphs(n)}
    for n in result.graph.node:
        if n.name in bodies:
            del n.attribute[:]
            n.attribute.extend(bodies[n.name])
    # and the float32 reads made for them (_outer_reads_explicit) stay float32 under their names
    wanted = {n.name: n.output[0] for n in model.graph.node if "/fp32_read_" in n.name}
    for n in result.graph.node:
        if n.name in wanted and n.output[0] != wanted[n.name]:
            cast = next((c for c in result.graph.node if c.op_type == "Cast" and wanted[n.name] in c.output), None)
            if cast is not None:
                result.graph.node.remove(cast)
            n.output[0] = wanted[n.name]
    _remove_round_trips(result)
    stored = _store_weights_as_float16(result, users, keep_weights)
    del result.graph.value_info[:]  # types changed; onnxruntime infers them
    return sorted_model(result), stored  # the converter appends its casts at the end


def _weight_users(model: onnx.ModelProto) -> dict[str, set[str]]:
    weights = {t.name for t in model.graph.initializer if t.data_type == _FP32}
    users: dict[str, set[str]] = {w: set() for w in weights}
    for n in model.graph.node:
        for t in _referenced(n):
            if t in users:
                users[t].add(n.name)
    return users


def _is_inserted_fp16_cast(node: onnx.NodeProto) -> bool:
    return node.op_type == "Cast" and (node.name.startswith("graph_input_cast") or
                                       node.name.endswith("_cast_to_fp16_node"))


def _is_inserted_fp32_cast(node: onnx.NodeProto) -> bool:
    return node.op_type == "Cast" and (node.name.startswith("graph_output_cast") or
                                       node.name.endswith("_cast_to_fp32_node"))


def _remove_round_trips(model: onnx.ModelProto) -> None:
    """Replace the converter's float32 -> float16 -> float32 cast pairs by the float32 tensor."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    inputs = {i.name for i in graph.input}
    producer = {out: n for n in graph.node for out in n.output}
    rename: dict[str, str] = {}
    drop: set[int] = set()
    for outer in graph.node:
        if not _is_inserted_fp32_cast(outer):
            continue
        inner = producer.get(outer.input[0])
        if inner is None or not _is_inserted_fp16_cast(inner):
            continue
        source, target = inner.input[0], outer.output[0]
        if target not in outputs:
            rename[target] = source  # consumers of the float32 copy read the original
            drop.add(id(outer))
        elif source not in inputs and source not in outputs and source in producer and source not in rename:
            rename[source] = target  # the original's producer writes the graph output itself
            drop.add(id(outer))
        else:
            outer.op_type = "Identity"
            outer.input[0] = source
            del outer.attribute[:]
    kept = [n for n in graph.node if id(n) not in drop]
    for n in kept:
        for i, t in enumerate(n.input):
            n.input[i] = _follow(rename, t)
        for i, t in enumerate(n.output):
            n.output[i] = _follow(rename, t)
    _rename_in_subgraphs(kept, rename)
    used = {t for n in kept for t in _referenced(n)} | outputs
    kept = [n for n in kept if not (_is_inserted_fp16_cast(n) and n.output[0] not in used)]
    # blocked nodes whose output cast is gone write their tensors under the original names again
    taken = {t for n in kept for t in (*_referenced(n), *n.output)} | outputs | inputs
    restore = {t: t[: -len(_FP16_SUFFIX)] for n in kept for t in n.output
               if t.endswith(_FP16_SUFFIX) and t[: -len(_FP16_SUFFIX)] not in taken}
    for n in kept:
        n.input[:] = [restore.get(t, t) for t in n.input]
        n.output[:] = [restore.get(t, t) for t in n.output]
    _rename_in_subgraphs(kept, restore)
    del graph.node[:]
    graph.node.extend(kept)


def _follow(rename: dict[str, str], name: str) -> str:
    seen = set()
    while name in rename and name not in seen:
        seen.add(name)
        name = rename[name]
    return name


def _rename_in_subgraphs(nodes: Iterable[onnx.NodeProto], rename: dict[str, str]) -> None:
    """Outer-scope names used inside subgraphs follow a rename too."""
    for n in nodes:
        for g in _subgraphs(n):
            local = {t.name for t in g.input} | {t.name for t in g.initializer} | {o for m in g.node for o in m.output}
            for m in g.node:
                for i, t in enumerate(m.input):
                    if t not in local:
                        m.input[i] = _follow(rename, t)
            _rename_in_subgraphs(g.node, {k: v for k, v in rename.items() if k not in local})


def _store_weights_as_float16(model: onnx.ModelProto, users: dict[str, set[str]], keep: set[str]) -> set[str]:
    """Float32 weights that no float32-by-choice node uses become float16 initializers followed by
    a ``Cast`` back to float32 (folded by onnxruntime at load): half the bytes on disk."""
    graph = model.graph
    graph_inputs = {i.name for i in graph.input}
    stored, casts = set(), []
    for init in graph.initializer:
        name = init.name
        if init.data_type != _FP32 or name in graph_inputs or not users.get(name) or users[name] & keep:
            continue
        value = numpy_helper.to_array(init)
        if value.size < 2:
            continue  # a scalar saves nothing
        half = numpy_helper.from_array(_to_float16(value), name + _STORED_SUFFIX)
        init.CopyFrom(half)
        casts.append(helper.make_node("Cast", [name + _STORED_SUFFIX], [name], to=_FP32, name=name + "/fp16_storage"))
        stored.add(name)
    if casts:
        nodes = casts + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
    return stored


def _to_float16(value: np.ndarray) -> np.ndarray:
    """Round to float16 as onnxruntime's converter does (no overflow to inf, no flush to zero)."""
    from onnxruntime.transformers.float16 import convert_np_to_float16

    return convert_np_to_float16(value.astype(np.float32))


def _load_error(model: onnx.ModelProto) -> tuple[str, str] | None:
    """None when onnxruntime's CPU provider loads ``model`` as StreamingSession does; else the op
    type it names (or "") and its message."""
    import re

    import onnxruntime as ort

    from edgernn.runtimes.session import session_options

    try:
        ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises several types; all mean "cannot load"
        message = str(e).splitlines()[0][:300]
        match = re.search(r"implementation for (\w+)\(", message) or re.search(r"Op \((\w+)\)", message)
        return (match.group(1) if match else ""), message
    return None


# ---------------------------------------------------------------------------------------------
# decisions and graph helpers
# ---------------------------------------------------------------------------------------------

def _decisions(float_nodes: list[onnx.NodeProto], reasons: dict[str, str],
               stored: set[str]) -> tuple[list[NodeDecision], list[NodeDecision]]:
    """Each float node's decision (:func:`~edgernn.converters.quantize.decisions.decide`): float16
    unless ``reasons`` keeps it float32, whose weights may still be stored as float16."""
    def float16(n: onnx.NodeProto) -> tuple[str, str] | None:
        why = reasons.get(n.name)
        if why is None:
            return "float16", "runs in float16"
        if any(t in stored for t in _referenced(n)):
            return "float16", f"weights stored as float16, computed in float32: {why}"
        return None

    return decide(((n, True) for n in float_nodes), float16, lambda n: reasons[n.name])


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name (the converter blocks nodes by name). By hand, not onnx-ir's
    NameFixPass: names already given stay as they are, for the report and ``--exclude``."""
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            base = n.name or f"{n.op_type}_{i}"
            name, k = base, 0
            while name in seen:
                k += 1
                name = f"{base}_{k}"
            n.name = name
        seen.add(n.name)


def _drop_initializer_value_info(model: onnx.ModelProto) -> None:
    """Remove value_info entries of initializers (some exporters write them): the converter would
    type them float16 while keeping float32 data for float32 nodes, and the file would not load."""
    weights = {t.name for t in model.graph.initializer}
    keep = [v for v in model.graph.value_info if v.name not in weights]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of the float32 tensors of the main graph (types from shape inference)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference fails on some custom ops; declared types still tell most
        inferred = model
    g = inferred.graph
    out = {t.name for t in g.initializer if t.data_type == _FP32}
    for v in (*g.input, *g.output, *g.value_info):
        if v.type.tensor_type.elem_type == _FP32:
            out.add(v.name)
    for n in g.node:
        if n.op_type == "Constant" and any(a.t.data_type == _FP32 for a in n.attribute if a.name == "value"):
            out.update(n.output)
    return out


def _outer_reads_explicit(model: onnx.ModelProto, floats: set[str]) -> dict[str, str]:
    """A control-flow node's subgraphs stay float32 but read outer float tensors by name, which
    the converter would make float16 (it casts only a blocked node's own inputs). Route each such
    read through an ``Identity`` before the node (blocked too, so its input gets a cast to float32)
    and rename it in the subgraphs. Returns the Identity nodes' names with their reason."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    new_nodes, added = [], {}
    for node in graph.node:
        if node.op_type in CONTROL_FLOW_OPS:
            rename = {}
            for k, name in enumerate(sorted(t for g in _subgraphs(node) for t in _free_names(g))):
                if name in floats and name not in initializers and name not in rename:
                    rename[name] = f"{name}@fp32_for_{node.name}"
                    ident = helper.make_node("Identity", [name], [rename[name]], name=f"{node.name}/fp32_read_{k}")
                    new_nodes.append(ident)
                    added[ident.name] = _CONTROL_FLOW
            if rename:
                _rename_in_subgraphs([node], rename)
        new_nodes.append(node)
    if added:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return added


# By hand, on protos: onnxruntime's float16 converter takes and returns ModelProtos and blocks nodes by
# name, and these follow names read across subgraph boundaries through its renames.
def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [g for a in node.attribute for g in ([a.g] if a.type == AttributeProto.GRAPH else a.graphs)]


def _referenced(node: onnx.NodeProto) -> list[str]:
    """The node's inputs and the outer-scope names its subgraphs read."""
    names = [t for t in node.input if t]
    for g in _subgraphs(node):
        names.extend(sorted(_free_names(g)))
    return names


def _free_names(graph: onnx.GraphProto) -> set[str]:
    defined = {t.name for t in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for n in graph.node:
        used.update(t for t in _referenced(n) if t not in defined)
        defined.update(n.output)
    used.update(o.name for o in graph.output if o.name not in defined)
    return used
