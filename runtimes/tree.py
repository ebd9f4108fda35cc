"""Running tree-network files (``edgernn export`` of a TreeRNN / Child-Sum Tree-LSTM).

A tree file takes a flattened forest: node features ``x [nodes, F]`` (or ``tokens [nodes]``),
``children [nodes, K]`` (-1 padded) and ``roots [trees]``; the graph orders the nodes by level
itself (``edgernn.converters.tree``). :class:`TreeSession` checks the structure with
:func:`validate_forest` before running, because the graph itself cannot say what is wrong.
Files exported before the graph scheduled itself also take ``levels``, which
:func:`forest_levels` computes here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgernn.errors import EdgernnError
from edgernn.modelfile import ModelFile


class ForestError(EdgernnError):
    """Structure arrays that do not form a forest the tree graphs can run."""


def validate_forest(children: Any, roots: Any, n_nodes: int) -> None:
    """Raise :class:`~edgernn.runtimes.tree.ForestError` (an ``EdgernnError``) with one sentence
    unless ``children [n_nodes, K]`` and ``roots [trees]`` form a forest: indices in range, every
    child before its parent (which rules out cycles), at most one parent per node, roots that are
    nobody's child, and every node in some root's tree. Numpy only, without loops over nodes."""
    arrays = []
    for name, a in (("children", children), ("roots", roots)):
        try:
            arrays.append(np.asarray(a))  # numpy arrays or CPU tensors
        except (TypeError, ValueError):
            raise ForestError(f"{name} cannot be made an array (rows of different lengths?); expected "
                              "integer node indices") from None
    ch, rt = arrays
    if ch.ndim != 2 or ch.shape[0] != n_nodes:
        raise ForestError(f"children has shape {list(ch.shape)}; expected [{n_nodes}, max_children] "
                          f"(one row per node)")
    if rt.ndim != 1:
        raise ForestError(f"roots has shape {list(rt.shape)}; expected [trees]")
    for name, a in (("children", ch), ("roots", rt)):
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise ForestError(f"{name} has dtype {a.dtype}; expected integer node indices (int64)")
    ch = ch if ch.size else ch.astype(np.int64)  # [[], []] (leaves only) reads as float64
    if n_nodes == 0:
        raise ForestError("the forest has no nodes; a tree has at least one (a single leaf)")
    if rt.size == 0:
        raise ForestError(f"roots is empty, so none of the {n_nodes} nodes belongs to a tree")
    bad = np.argwhere((ch < -1) | (ch >= n_nodes))
    if bad.size:
        i, k = bad[0]
        raise ForestError(f"children[{i}, {k}] = {ch[i, k]} is out of range; expected -1 (no child) or a node "
                          f"index from 0 to {n_nodes - 1}")
    bad_root = np.flatnonzero((rt < 0) | (rt >= n_nodes))
    if bad_root.size:
        t = bad_root[0]
        raise ForestError(f"roots[{t}] = {rt[t]} is out of range; expected a node index from 0 to {n_nodes - 1}")
    parent_of = np.broadcast_to(np.arange(n_nodes)[:, None], ch.shape)
    late = np.argwhere(ch >= parent_of)
    if late.size:
        i, k = late[0]
        if ch[i, k] == i:
            raise ForestError(f"node {i} lists itself as its child (children[{i}, {k}]), which is a cycle")
        raise ForestError(f"node {i} lists child {ch[i, k]}, which comes after it (children[{i}, {k}]); every "
                          "child must come before its parent, which also rules out cycles")
    real = ch >= 0
    kids, parents = ch[real], parent_of[real]
    counts = np.bincount(kids, minlength=n_nodes)
    shared = np.flatnonzero(counts > 1)
    if shared.size:
        c = int(shared[0])
        ps = parents[kids == c].tolist()
        if len(set(ps)) < len(ps):
            raise ForestError(f"node {ps[0]} lists child {c} more than once; each child appears once")
        raise ForestError(f"node {c} has {len(ps)} parents (nodes {', '.join(map(str, ps[:-1]))} and {ps[-1]}); "
                          "a tree node has at most one parent")
    parent = np.full(n_nodes, -1, dtype=np.int64)
    parent[kids] = parents
    uniq, first, count = np.unique(rt, return_index=True, return_counts=True)
    if (count > 1).any():
        r = int(uniq[count > 1][0])
        trees = np.flatnonzero(rt == r)
        raise ForestError(f"node {r} is the root of trees {trees[0]} and {trees[1]}; each tree has its own root")
    child_root = np.flatnonzero(parent[rt] >= 0)
    if child_root.size:
        t = int(child_root[0])
        raise ForestError(f"root {rt[t]} (roots[{t}]) is a child of node {parent[rt[t]]}; a root has no parent")
    # with one parent each and parents after children, every node climbs to a parentless node:
    # it is reached exactly when that top node is a root
    is_root = np.zeros(n_nodes, dtype=bool)
    is_root[rt] = True
    orphans = np.flatnonzero((parent < 0) & ~is_root)
    if orphans.size:
        more = f" ({orphans.size} such nodes in all)" if orphans.size > 1 else ""
        raise ForestError(f"node {orphans[0]} has no parent and is not in roots, so no tree reaches it{more}")


def forest_levels(children: np.ndarray) -> np.ndarray:
    """``levels [depth, width]``: node indices per level (leaves at level 0), -1 padded: the extra
    input of tree files exported by earlier versions (today's files schedule the forest in the
    graph). A loop over the nodes in Python: slow on large forests."""
    n = children.shape[0]
    level = np.zeros(n, dtype=np.int64)
    for i in range(n):  # children come first, so one pass in order settles every level
        ch = children[i][children[i] >= 0]
        if ch.size:
            level[i] = level[ch].max() + 1
    depth = int(level.max()) + 1 if n else 0
    width = int(np.bincount(level).max()) if n else 0
    out = np.full((depth, width), -1, dtype=np.int64)
    fill = np.zeros(depth, dtype=np.int64)
    for i in range(n):
        out[level[i], fill[level[i]]] = i
        fill[level[i]] += 1
    return out


class TreeSession:
    """An onnxruntime session over a tree file.

    >>> s = TreeSession("tree.onnx")
    >>> out = s.run(tokens, children, roots)   # {"y": [trees, classes], "root.h": [trees, hidden], ...}
    """

    def __init__(self, model: str | Path | bytes, *, threads: int | None = 1) -> None:
        import onnxruntime as ort

        from edgernn.runtimes.session import session_options

        source = "the model" if isinstance(model, bytes) else str(model)
        if not isinstance(model, bytes) and not Path(model).is_file():
            raise EdgernnError(f"{model} does not exist or is not a file")
        try:
            self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                                session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise EdgernnError(f"onnxruntime cannot load {source}: {str(e).splitlines()[0][:300]}") from None
        meta = ModelFile.open(model).metadata
        if "edgernn.tree" not in meta:
            raise EdgernnError(f"{source} is not an edgernn tree file (metadata 'edgernn.tree' is missing)")
        self.info = json.loads(meta["edgernn.tree"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, x_or_tokens: np.ndarray, children: np.ndarray, roots: np.ndarray) -> dict[str, np.ndarray]:
        """Check the forest, then run it; outputs by name."""
        x_or_tokens = np.asarray(x_or_tokens)
        children = np.asarray(children, dtype=np.int64)
        roots = np.asarray(roots, dtype=np.int64)
        validate_forest(children, roots, len(x_or_tokens))
        want = np.int64 if self.input_names[0] == "tokens" else np.float32
        if x_or_tokens.dtype != want:
            raise ForestError(f"{self.input_names[0]} has dtype {x_or_tokens.dtype}; expected {np.dtype(want)}")
        if children.shape[1] > 2 and self.info.get("kind") == "tree_rnn":
            raise ForestError(f"children has {children.shape[1]} columns; a binary TreeRNN takes at most 2")
        columns = 2 if self.info.get("kind") == "tree_rnn" else 1  # the graph reads 2 (TreeRNN), at least 1
        if children.shape[1] < columns:  # as the PyTorch models do: missing columns are no children
            children = np.pad(children, ((0, 0), (0, columns - children.shape[1])), constant_values=-1)
        feeds = {self.input_names[0]: x_or_tokens, "children": children, "roots": roots}
        if "levels" in self.input_names:
            feeds["levels"] = forest_levels(children)
        return dict(zip(self.output_names, self.session.run(None, feeds)))
