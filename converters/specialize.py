"""Specialise a graph for fixed values of some of its inputs (``--fix sr=16000``).

Files from other exporters often take a setting as a graph input and branch on it inside the
graph: silero-vad's ``sr`` (an int64 scalar) selects, through an ``If`` node, between a 16 kHz and
an 8 kHz model, each with its own weights inside its branch. Behind the ``If`` the weights are
not constants of the graph, so nothing can quantize them, and every call pays for the branch.
:func:`specialize` folds the named inputs to constants and simplifies the graph around them:

1. each fixed input becomes an initializer holding the value (its dtype and shape from the graph
   input; a string is parsed as a number, a list ``1,2`` or JSON ``[[1, 2]]``), and leaves the
   graph's inputs (and an edgernn file's contract: ``edgernn.inputs``); ``edgernn.fixed`` in the
   metadata records what was fixed;
2. onnxscript's optimizer folds what became constant. Its constant folder inlines an ``If`` whose
   condition is constant (the taken branch's nodes move into the enclosing graph, nested ``If``
   nodes are folded on the next iteration), folds the weight chains (Identity, Slice, Concat,
   Unsqueeze of constants) left in the branch, and lifts the weights to initializers; onnx-ir's
   ``NameFixPass``, the optimizer's last pass, renames values the inlined branch brought in that
   clash with names of the enclosing graph. So no If-inlining is written here. It runs with
   larger size limits than its defaults (:data:`FOLD_LIMIT`), so that weights fold;
3. the result is checked against the original fed the fixed values: on made-up inputs here when
   the original runs on them, else by the command that has data (:func:`check_parity` on its
   first call: ``quantize --data``, ``run``).

:func:`open_fixed` is how the commands (``info``, ``run``, ``quantize``, ``pack``) open a file with
``fix``: the specialised graph as a :class:`~edgernn.modelfile.ModelFile` under the file's name,
its contract resolved as for any file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from edgernn.converters.optimize import FOLD_LIMIT  # the folder's size limit, defined with it
from edgernn.errors import EdgernnError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from edgernn.contract import Contract
    from edgernn.modelfile import ModelFile

FIXED_KEY = "edgernn.fixed"
"""``metadata_props`` key of a specialised file: JSON ``{input name: value}`` of the inputs fixed."""


TOLERANCE = 1e-4  # relative to max(1, |output|): folding regroups nothing, it evaluates constants in numpy
_MAX_ITERATIONS = 8  # optimizer rounds: each one folds one more level of nested If


class SpecializeError(EdgernnError):
    """A ``--fix`` value or name does not fit the graph, or the specialised graph differs from it."""


@dataclass
class Specialization:
    """What :func:`specialize` did: the values fixed, the If nodes and nodes before and after, and
    the parity check against the original (``parity``: the largest output difference relative to
    max(1, |output|), ``None`` until checked; ``checked_on`` says on what)."""

    model: Any  # onnx.ModelProto, the specialised graph
    fixed: dict[str, np.ndarray]
    source: str
    if_nodes: tuple[int, int] = (0, 0)  # before, after (subgraphs included)
    nodes: tuple[int, int] = (0, 0)
    parity: float | None = None
    checked_on: str | None = None
    unchecked_why: str | None = None  # why the made-up inputs could not be used
    original: Any = field(default=None, repr=False)  # the original onnx.ModelProto, for check_parity

    @property
    def fixed_text(self) -> str:
        return ", ".join(f"{k}={_shown(v)}" for k, v in self.fixed.items())

    def note(self) -> str:
        """One sentence for reports."""
        ifs = self.if_nodes[0] - self.if_nodes[1]
        done = (f"{ifs} If node{'s' if ifs != 1 else ''} inlined" + (f" ({self.if_nodes[1]} left)" if self.if_nodes[1]
                                                                      else "")
                if self.if_nodes[0] else "no If node")
        head = (f"{self.source} specialised for {self.fixed_text} (--fix): the fixed input{'s' if len(self.fixed) > 1 else ''} "
                f"left the graph, {done}, {self.nodes[0]} -> {self.nodes[1]} nodes")
        if self.parity is not None:
            return f"{head}; same outputs as the original fed {self.fixed_text} on {self.checked_on} " \
                   f"(largest difference {self.parity:.2g})"
        return f"{head}; not compared with the original ({self.unchecked_why})"

    def to_json(self) -> dict:
        return {"fixed": {k: v.tolist() for k, v in self.fixed.items()}, "if_nodes": list(self.if_nodes),
                "nodes": list(self.nodes), "parity": self.parity, "checked_on": self.checked_on}


# ---------------------------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------------------------

def _shown(v: np.ndarray) -> str:
    return json.dumps(v.tolist()).replace(" ", "")


def _graph_inputs(model: onnx.ModelProto) -> dict[str, Any]:
    inits = {t.name for t in model.graph.initializer}
    return {v.name: v for v in model.graph.input if v.name not in inits}


def _parse_text(text: str) -> Any:
    """``16000`` -> 16000, ``1,2`` -> [1, 2], ``[[1, 2]]`` -> [[1, 2]], ``true`` -> True (else ``ValueError``)."""
    s = text.strip()
    if s.startswith("["):
        return json.loads(s)
    parts = [p.strip() for p in s.split(",")] if "," in s else [s]
    values = []
    for p in parts:
        low = p.lower()
        if low in ("true", "false"):
            values.append(low == "true")
            continue
        try:
            values.append(int(p))
        except ValueError:
            values.append(float(p))  # ValueError for what is no number
    return values if "," in s else values[0]


def fixed_value(name: str, given: Any, graph_input: Any, source: str) -> np.ndarray:
    """``given`` (a string from the command line, or a number / list / array) as a value of the
    graph input ``graph_input`` (an ``onnx.ValueInfoProto``): its dtype, and its shape where the
    graph fixes one (a single number fills an input of one element, e.g. shape [1])."""
    from onnx import helper

    what = f"--fix {name}={given}" if isinstance(given, str) else f"fix {name}={given!r}"
    t = graph_input.type.tensor_type
    if not graph_input.type.HasField("tensor_type") or not t.elem_type:
        raise SpecializeError(f"{source}'s input {name!r} is not a tensor of a known type, so it cannot be fixed ({what})")
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))
    except Exception:
        raise SpecializeError(f"{source}'s input {name!r} has ONNX element type {t.elem_type}, which --fix cannot "
                              f"write ({what})") from None
    try:
        raw = _parse_text(given) if isinstance(given, str) else given
        value = np.asarray(raw)
        if value.dtype == object or value.dtype.kind not in "biuf":
            raise ValueError
    except (ValueError, TypeError):
        raise SpecializeError(f"{what}: {given!r} is not a number or a list of numbers (input {name!r} of {source} "
                              f"takes {dtype}: e.g. 16000, 1,2 or [[1,2]])") from None
    if dtype.kind in "iu":
        if value.dtype.kind == "f" and not np.all(np.isfinite(value) & (value == np.round(value))):
            raise SpecializeError(f"{what}: input {name!r} of {source} is {dtype}, and {given} is not a whole number")
        info = np.iinfo(dtype)
        if value.size and (value.min() < info.min or value.max() > info.max):
            raise SpecializeError(f"{what}: {given} is outside the range of {dtype}, the dtype of input {name!r} of "
                                  f"{source}")
    elif dtype.kind == "b" and value.dtype.kind != "b" and not np.all((value == 0) | (value == 1)):
        raise SpecializeError(f"{what}: input {name!r} of {source} is bool; give true, false, 1 or 0")
    value = value.astype(dtype)
    if t.HasField("shape"):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        want = "[" + ", ".join(str(d) if d is not None else (t.shape.dim[k].dim_param or "?")
                               for k, d in enumerate(dims)) + "]"
        if value.ndim == 0 and dims and all(d == 1 for d in dims):
            value = value.reshape([1] * len(dims))
        if value.ndim != len(dims) or any(d is not None and d != n for d, n in zip(dims, value.shape)):
            raise SpecializeError(f"{what}: input {name!r} of {source} has shape {want}, but the value has shape "
                                  f"{list(value.shape)}")
    return value


# ---------------------------------------------------------------------------------------------
# specialising
# ---------------------------------------------------------------------------------------------

def _count(graph: Any) -> tuple[int, int]:
    import onnx_ir as ir

    nodes = list(ir.traversal.RecursiveGraphIterator(graph))
    return sum(n.op_type == "If" for n in nodes), len(nodes)


def _states_of(model: onnx.ModelProto, state_pairs: Mapping[str, str] | None, source: str) -> dict[str, str]:
    """Graph input -> state name, where the file's contract can be resolved (else none known)."""
    from edgernn.modelfile import ModelFile

    try:
        contract = ModelFile.open(model, state_pairs=state_pairs, source=source).contract
    except EdgernnError:
        return {}
    return {s.input: s.name for s in contract.states}


def specialize(model: str | Any, fix: Mapping[str, Any], *, source: str | None = None,
               state_pairs: Mapping[str, str] | None = None, check: bool = True) -> Specialization:
    """Fold the graph inputs named in ``fix`` (input name -> value: a string as ``--fix`` takes it,
    or a number, list or array) to constants, inline the ``If`` nodes that became constant and fold
    what follows (see the module docstring). ``model``: a path, an ``onnx.ModelProto`` or a
    :class:`~edgernn.modelfile.ModelFile` (not changed). ``check``: compare the specialised graph
    with the original on made-up inputs, where the original runs on them.

    Raises :class:`SpecializeError` (one sentence) for a name that is not a graph input or is a
    state's input, a value that does not parse or fit the input's dtype and shape, and a
    specialised graph whose outputs differ from the original's.
    """
    import onnx
    import onnx_ir as ir

    from edgernn.contract import Contract
    from edgernn.converters.describe import STATE_INIT
    from edgernn.converters.optimize import fold_constants
    from edgernn.modelfile import ModelFile

    mf = ModelFile.open(model, source=source) if not hasattr(model, "with_weights") else model
    src = source or mf.source
    original = mf.with_weights()
    inputs = _graph_inputs(original)
    if not fix:
        raise SpecializeError(f"no input of {src} to fix was given")
    for name in fix:
        if name not in inputs:
            raise SpecializeError(f"{src} has no graph input {name!r} to fix (--fix {name}=...); its inputs are "
                                  f"{', '.join(inputs) or 'none'}")
    states = _states_of(original, state_pairs, src)
    for name in fix:
        if name in states:
            raise SpecializeError(f"input {name!r} of {src} is the input of state {states[name]!r}; --fix folds data "
                                  "inputs (a state is carried from call to call)")
    fixed = {name: fixed_value(name, given, inputs[name], src) for name, given in fix.items()}

    m = ir.from_proto(original)
    ifs_before, nodes_before = _count(m.graph)
    for value in [v for v in m.graph.inputs if v.name in fixed]:
        m.graph.inputs.remove(value)
        value.const_value = ir.tensor(fixed[value.name], name=value.name)
        m.graph.register_initializer(value)
    starts = {name for name in m.graph.initializers if name.startswith(STATE_INIT)}
    fold_constants(m, iterations=_MAX_ITERATIONS, limit=FOLD_LIMIT)  # start values kept, subgraph weights moved back
    _drop_unread(m.graph, keep=starts)
    ifs_after, nodes_after = _count(m.graph)
    kept_inputs = [n for n in inputs if n not in fixed]
    if [v.name for v in m.graph.inputs] != kept_inputs:
        raise SpecializeError(f"specialising {src} changed its other inputs ({', '.join(kept_inputs)} became "
                              f"{', '.join(v.name for v in m.graph.inputs)}); nothing was written")
    out = ir.to_proto(m)
    props = {p.key: p.value for p in out.metadata_props}
    record = {**json.loads(props.get(FIXED_KEY, "{}")), **{k: v.tolist() for k, v in fixed.items()}}
    if "edgernn.format" in props:  # an edgernn file: the fixed inputs leave its contract
        from edgernn.contract import read_metadata, write_metadata

        c = read_metadata(out, src)
        write_metadata(out, Contract(c.mode, tuple(t for t in c.inputs if t.name not in fixed), c.outputs, c.states,
                                     {**c.extra, FIXED_KEY: json.dumps(record)}, c.format))
    else:
        kept = [p for p in out.metadata_props if p.key != FIXED_KEY]
        del out.metadata_props[:]
        out.metadata_props.extend(kept)
        out.metadata_props.add(key=FIXED_KEY, value=json.dumps(record))
    onnx.checker.check_model(out, full_check=False)
    spec = Specialization(out, fixed, src, (ifs_before, ifs_after), (nodes_before, nodes_after), original=original)
    if check:
        from edgernn.converters.quantize.graph import random_feeds

        try:
            feeds = random_feeds(out, batch=2, seed=0)
            _run(original, {**feeds, **fixed})
        except Exception as e:  # the original needs real data (a window of a given size, say)
            spec.unchecked_why = ("the original does not run on made-up inputs: " +
                                  _first_line(e) + "; give data to compare on")
        else:
            check_parity(spec, feeds, "made-up inputs")
    else:
        spec.unchecked_why = "not asked to"
    return spec


def _drop_unread(graph: Any, keep: set[str]) -> None:
    """Drop the main graph's initializers that no node of the graph (or of its subgraphs) reads.
    onnx-ir still counts the nodes of a folded If's discarded branch as readers of the values they
    read, so ``RemoveUnusedNodesPass`` keeps a fixed input that only that branch read."""
    import onnx_ir as ir

    read = {v for n in ir.traversal.RecursiveGraphIterator(graph) for v in n.inputs if v is not None}
    read.update(v for g in (graph, *graph.subgraphs()) for v in g.outputs)
    for name, v in list(graph.initializers.items()):
        if v not in read and name not in keep:
            del graph.initializers[name]


def _first_line(e: Exception) -> str:
    """onnxruntime's reason, without the nesting of the nodes it ran in."""
    text = str(e).strip() or type(e).__name__
    text = text.rsplit("Status Message: ", 1)[-1].splitlines()[0].strip()
    return text[:200]


def _run(model: Any, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # the caller says what failed
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, dict(feeds))))


def check_parity(spec: Specialization, feeds: Mapping[str, np.ndarray], what: str,
                 tolerance: float = TOLERANCE) -> float:
    """Run the specialised graph on ``feeds`` (its inputs) and the original on ``feeds`` and the
    fixed values; raise :class:`SpecializeError` when an output differs by more than ``tolerance``
    relative to max(1, |output|). Records (and returns) the largest difference in ``spec``."""
    want = _run(spec.original, {**feeds, **spec.fixed})
    got = _run(spec.model, feeds)
    worst = 0.0
    for name, ref in want.items():
        if name not in got:
            continue
        a, b = np.asarray(ref, np.float64), np.asarray(got[name], np.float64)
        if a.shape != b.shape:
            raise SpecializeError(f"the graph of {spec.source} specialised for {spec.fixed_text} gives output {name!r} "
                                  f"of shape {list(b.shape)}, the original {list(a.shape)}; nothing was written")
        diff = float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(a)))) if a.size else 0.0
        if not np.isfinite(diff) and np.array_equal(a, b, equal_nan=True):
            diff = 0.0
        if not diff <= tolerance:
            raise SpecializeError(f"the graph of {spec.source} specialised for {spec.fixed_text} differs from the "
                                  f"original fed {spec.fixed_text} on {what}: output {name!r} by {diff:.3g} (relative "
                                  f"to max(1, |output|)), over {tolerance:g}; nothing was written")
        worst = max(worst, diff)
    spec.parity, spec.checked_on, spec.unchecked_why = worst, what, None
    return worst


def first_call(contract: Contract, arrays: Mapping[str, np.ndarray], whole_scalars: bool = True
               ) -> dict[str, np.ndarray]:
    """The feeds of a first call from streams in the layout ``run`` and the accuracy check take
    (an input without a time axis has a leading one; with ``whole_scalars``, as ``run`` takes them,
    not an input with neither a batch nor a time axis: it is fed whole): each input's first frame
    (or ``frame_multiple`` frames), zero states."""
    feeds: dict[str, np.ndarray] = {}
    batch = 1
    for t in contract.inputs:
        arr = np.asarray(arrays[t.name])
        if t.time_axis is None and t.batch_axis is None and whole_scalars:
            feeds[t.name] = arr
            continue
        if t.time_axis is None:
            feeds[t.name] = arr[0]
        else:
            feeds[t.name] = np.take(arr, range(min(t.frame_multiple, arr.shape[t.time_axis])), axis=t.time_axis)
        if t.batch_axis is not None:
            batch = feeds[t.name].shape[t.batch_axis]
    for s in contract.states:
        feeds[s.input] = np.zeros(s.concrete_shape(batch), np.dtype(s.dtype) if s.dtype != "bfloat16" else np.float32)
    return feeds


def verify_on_data(spec: Specialization | None, contract: Contract, arrays: Mapping[str, np.ndarray],
                   whole_scalars: bool = True) -> None:
    """Where ``spec`` was not compared on made-up inputs, compare it on the first call of the
    user's data (``arrays``: streams by input name, see :func:`first_call`)."""
    if spec is None or spec.parity is not None or spec.unchecked_why == "not asked to":
        return
    try:
        feeds = first_call(contract, arrays, whole_scalars)
    except (KeyError, IndexError, ValueError):
        return  # the data does not fit; the command says how
    check_parity(spec, feeds, "the first call of the data")


def open_fixed(model: Any, fix: Mapping[str, Any] | None, *, state_pairs: Mapping[str, str] | None = None,
               source: str | None = None) -> tuple[ModelFile, Specialization | None]:
    """Open ``model`` as :meth:`ModelFile.open <edgernn.modelfile.ModelFile.open>` does, specialised
    for ``fix`` when given (see :func:`specialize`): the specialised graph, under the file's own
    name (``source``), its contract resolved with ``state_pairs`` (default: those of a ``ModelFile``
    passed in). Without ``fix``: the file itself and ``None``."""
    from edgernn.modelfile import ModelFile

    if isinstance(model, ModelFile) and state_pairs is None:
        state_pairs = model.state_pairs
    mf = ModelFile.open(model, state_pairs=state_pairs, source=source) if not isinstance(model, ModelFile) \
        else (ModelFile.open(model, state_pairs=state_pairs) if state_pairs is not None else model)
    if not fix:
        return mf, None
    spec = specialize(mf, fix, state_pairs=state_pairs)
    return ModelFile.open(spec.model, state_pairs=state_pairs, source=spec.source), spec


__all__ = ["specialize", "open_fixed", "check_parity", "verify_on_data", "first_call", "fixed_value", "Specialization",
           "SpecializeError", "FIXED_KEY", "FOLD_LIMIT"]
