"""The fallback of ``stepcells.py``: edgernn's step cells recognized in files without marks.

edgernn marks the nodes of every layer it lowers (``edgernn.layer``, see
``edgernn/recurrent_kinds.py``), and the quantizers find the layers by the marks. Files written
before it did (and foreign files) have none; for them, and only for their unmarked MatMuls, a layer
is recognized by rebuilding edgernn's cell (``converters.recurrent``) from the weights its two
MatMuls hold and comparing the two computations tensor by tensor (op, attributes, constants by
value, wiring). The nodes recognized then get the marks the export writes today, copied from the
rebuilt cell, so ``stepcells.py`` reads old and new files the same way; anything else is left as
it is. Kept to this one job: matching, no rewriting.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import numpy_helper

from edgernn.converters.recurrent import GraphBuilder, RecurrentLayerSpec, input_projection, recurrence
from edgernn.recurrent_kinds import LayerMark, kinds_of


def mark_recognized_cells(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` in which the step cells recognized among the unmarked nodes carry the
    marks the export would have written; ``model`` itself when none is recognized."""
    nodes = list(model.graph.node)
    consts = _const_values(model.graph)
    gathers = {}  # Gather output -> (source, index)
    for n in nodes:
        if n.op_type == "Gather" and len(n.input) == 2 and n.input[1] in consts and LayerMark.of(n) is None:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
            idx = consts[n.input[1]]
            if axis == 0 and idx.ndim == 0 and idx.dtype.kind == "i":
                gathers[n.output[0]] = (n.input[0], int(idx))
    matmuls = [n for n in nodes if n.op_type == "MatMul" and n.domain in ("", "ai.onnx") and len(n.input) == 2
               and LayerMark.of(n) is None and n.input[1] in consts and consts[n.input[1]].ndim == 2
               and consts[n.input[1]].dtype == np.float32]
    if not matmuls:
        return model
    canon = _Canon(nodes, consts)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    marks: dict[int, LayerMark] = {}  # node index -> mark
    index = {id(n): k for k, n in enumerate(nodes)}
    for mm_h in matmuls:
        if mm_h.input[0] in gathers:
            found = _match(mm_h, gathers, matmuls, consts, canon, consumers)
            if found and not any(index[i] in marks for i in found):
                marks.update({index[i]: m for i, m in found.items()})
    if not marks:
        return model
    marked = onnx.ModelProto.FromString(model.SerializeToString())
    for k, mark in marks.items():
        mark.stamp(marked.graph.node[k])
    return marked


def _match(mm_h, gathers, matmuls, consts, canon: _Canon, consumers) -> dict[int, LayerMark] | None:
    """The marks (by node id) of the cell whose recurrence MatMul is ``mm_h`` (reading h =
    Gather(state, index)), if some MatMul of the graph is its input projection and the two compute
    edgernn's cell exactly."""
    w_hh_t = consts[mm_h.input[1]]
    H, N = w_hh_t.shape
    source, index = gathers[mm_h.input[0]]
    c_candidates = [t for t, (s, i) in gathers.items() if i == index and s != source]
    for mm_x in matmuls:
        w_ih_t = consts[mm_x.input[1]]
        if mm_x is mm_h or w_ih_t.shape[1] != N:
            continue
        b_x, b_h = _bias(mm_x, N, consts, consumers), _bias(mm_h, N, consts, consumers)
        for kind in (kinds_of(gates=N // H) if N % H == 0 else ()):
            for c in (c_candidates if len(kind.state_parts) > 1 else [None]):
                weights = {"weight_ih_l0": w_ih_t.T.copy(), "weight_hh_l0": w_hh_t.T.copy()}
                if kind.name == "gru":
                    if (b_x is None) != (b_h is None):
                        continue
                    if b_x is not None:
                        weights.update(bias_ih_l0=b_x, bias_hh_l0=b_h)
                elif b_x is not None:  # RNN and LSTM export b_ih + b_hh folded into the input projection;
                    # -0.0 leaves every value as it is when the reference folds them again (+0.0 would not)
                    weights.update(bias_ih_l0=b_x, bias_hh_l0=np.full_like(b_x, -0.0))
                spec = RecurrentLayerSpec(path=mm_h.name, kind=kind.name, input_size=w_ih_t.shape[0], hidden_size=H,
                                          num_layers=1, bias="bias_ih_l0" in weights, batch_first=False,
                                          bidirectional=False, proj_size=0, weights=weights)
                labels = {mm_x.input[0]: "x", mm_h.input[0]: "h", **({c: "c"} if c else {})}
                if len(labels) < (3 if c else 2):
                    continue
                ref_h, ref_c, roles = _reference(spec)
                canon.relabel(labels)
                h_new = _find(canon, ref_h, mm_h.input[0], consumers)
                c_new = _find(canon, ref_c, c, consumers) if c is not None else None
                if h_new is None or (c is not None and c_new is None):
                    continue
                cone = canon.cone[h_new] | (canon.cone[c_new] if c_new else frozenset())
                found = {i: LayerMark(kind.name, mm_h.name, 0, roles.get(canon.memo[o], "cell"))
                         for i, o in canon.made.items() if i in cone}
                for t, part in ((mm_h.input[0], "h"), (c, "c")):
                    if t is not None:  # the Gathers reading this layer's states
                        found[id(canon.producer[t][0])] = LayerMark(kind.name, mm_h.name, 0, "state_in", part)
                return found
    return None


def _bias(mm: onnx.NodeProto, N: int, consts, consumers) -> np.ndarray | None:
    """The bias of ``mm``: the constant [N] of an Add(mm, bias) that is its only reader."""
    readers = consumers.get(mm.output[0], [])
    if len(readers) == 1 and readers[0].op_type == "Add" and readers[0].input[0] == mm.output[0]:
        b = consts.get(readers[0].input[1])
        if b is not None and b.shape == (N,) and b.dtype == np.float32:
            return b
    return None


def _reference(spec: RecurrentLayerSpec) -> tuple[int, int | None, dict[int, str]]:
    """Hashes of h' (and c') of edgernn's step cell for ``spec`` (converters.recurrent), from the
    labelled inputs x, h, c, and the role of each of its tensors by hash."""
    g = GraphBuilder("ref", mark=LayerMark(spec.kind, "", 0, "cell"))
    h_new, c_new = recurrence(g, spec, 0, input_projection(g, spec, 0, "REF_X"), "REF_H",
                              "REF_C" if len(spec.state_parts) > 1 else None)
    canon = _Canon(g.nodes, {t.name: numpy_helper.to_array(t) for t in g.initializers})
    canon.relabel({"REF_X": "x", "REF_H": "h", "REF_C": "c"})
    roles = {canon.hash(o): LayerMark.of(n).role for n in g.nodes for o in n.output}
    return canon.hash(h_new), canon.hash(c_new) if c_new else None, roles


def _find(canon: _Canon, want: int, start: str, consumers) -> str | None:
    """A tensor downstream of ``start`` (within a cell's reach) whose hash is ``want``."""
    seen, frontier = {start}, [start]
    for _ in range(32):
        nxt = []
        for t in frontier:
            for n in consumers.get(t, []):
                for o in n.output:
                    if o and o not in seen:
                        seen.add(o)
                        nxt.append(o)
                        if canon.hash(o) == want:
                            return o
        frontier = nxt
        if not frontier:
            break
    return None


def _const_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.output:
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            if value is not None:
                out[n.output[0]] = numpy_helper.to_array(value)
    return out


def _digest(a: np.ndarray) -> tuple:
    return ("C", str(a.dtype), a.shape, hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).digest())


class _Canon:
    """Canonical hashes of the tensors of a graph: by value for constants, by label for the tensors
    named in ``labels``, else by producer (op, domain, attributes, hashes of its inputs). Two tensors
    with equal hashes are computed the same way from the labelled tensors and constants. By hand:
    onnx-ir has no structural hash of a subgraph."""

    def __init__(self, nodes, consts: dict[str, np.ndarray]) -> None:
        self.producer = {o: (n, i) for n in nodes for i, o in enumerate(n.output) if o}
        self.const_hash = {k: _digest(v) for k, v in consts.items()}
        self.labels: dict[str, str] = {}
        self.memo: dict[str, int] = {}
        self.cone: dict[str, frozenset[int]] = {}  # tensor -> ids of the nodes it is computed by
        self.made: dict[int, str] = {}  # node id -> one of its outputs that was hashed

    def relabel(self, labels: dict[str, str]) -> None:
        self.labels, self.memo, self.cone, self.made = labels, {}, {}, {}

    def _leaf(self, t: str):
        if t in self.labels:
            return ("L", self.labels[t])
        if t in self.const_hash:
            return self.const_hash[t]
        if t not in self.producer:
            return ("X", t)  # graph input or missing: only equal to itself
        return None

    def hash(self, tensor: str) -> int:
        stack = [tensor]
        while stack:
            t = stack[-1]
            if t in self.memo:
                stack.pop()
                continue
            leaf = self._leaf(t)
            if leaf is not None:
                self.memo[t], self.cone[t] = hash(leaf), frozenset()
                stack.pop()
                continue
            node, index = self.producer[t]
            pending = [i for i in node.input if i and i not in self.memo]
            if pending:
                stack.extend(pending)
                continue
            attrs = tuple(sorted((a.name, a.SerializeToString()) for a in node.attribute))
            key = (node.domain or "", node.op_type, attrs, tuple(self.memo[i] if i else 0 for i in node.input), index)
            self.memo[t] = hash(key)
            self.made.setdefault(id(node), t)
            cone = {id(node)}
            for i in node.input:
                if i:
                    cone |= self.cone[i]
            self.cone[t] = frozenset(cone)
            stack.pop()
        return self.memo[tensor]
