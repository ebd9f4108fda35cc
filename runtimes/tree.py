"""Running tree-network files (``edgernn export`` of a TreeRNN / Child-Sum Tree-LSTM).

A tree file takes a flattened forest: node features ``x [nodes, F]`` (or ``tokens [nodes]``),
``children [nodes, K]`` (-1 padded) and ``roots [trees]`` (plus ``levels``, computed here, for
files exported with ``--tree-strategy levels``). :class:`TreeSession` checks the structure with
:func:`check_forest` before running, because the graph itself cannot say what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgernn.errors import EdgernnError


class ForestError(EdgernnError):
    """Structure arrays that do not form a forest the tree graphs can run."""


def check_forest(children: np.ndarray, roots: np.ndarray, n_nodes: int | None = None) -> None:
    """Raise :class:`ForestError` with one sentence unless ``children``/``roots`` form a forest in
    which every child comes before its parent, each node has at most one parent, roots are nobody's
    child and every node belongs to the tree of some root."""
    children = np.asarray(children)
    roots = np.asarray(roots)
    if children.ndim != 2:
        raise ForestError(f"children has shape {list(children.shape)}; expected [nodes, max_children]")
    if roots.ndim != 1:
        raise ForestError(f"roots has shape {list(roots.shape)}; expected [trees]")
    if not np.issubdtype(children.dtype, np.integer) or not np.issubdtype(roots.dtype, np.integer):
        raise ForestError(f"children and roots must be integer arrays, got {children.dtype} and {roots.dtype}")
    n = children.shape[0] if n_nodes is None else n_nodes
    if children.shape[0] != n:
        raise ForestError(f"children has {children.shape[0]} rows but there are {n} nodes")
    bad = np.argwhere((children < -1) | (children >= n))
    if bad.size:
        i, k = bad[0]
        raise ForestError(f"children[{i}][{k}] = {children[i, k]} is out of range; expected -1 or a node index "
                          f"below {n}")
    rows = np.arange(n)[:, None]
    late = np.argwhere((children >= 0) & (children >= rows))
    if late.size:
        i, k = late[0]
        raise ForestError(f"node {i} lists child {children[i, k]}, which does not come before it: children must "
                          "come before their parents (this also rules out cycles)")
    parent = np.full(n, -1, dtype=np.int64)
    for i, k in np.argwhere(children >= 0):
        c = children[i, k]
        if parent[c] >= 0:
            raise ForestError(f"node {c} has two parents ({parent[c]} and {i}); a tree node has at most one")
        parent[c] = i
    bad_roots = [r for r in roots.tolist() if not 0 <= r < n]
    if bad_roots:
        raise ForestError(f"root index {bad_roots[0]} is out of range; expected a node index below {n}")
    child_roots = [r for r in roots.tolist() if parent[r] >= 0]
    if child_roots:
        raise ForestError(f"root {child_roots[0]} is a child of node {parent[child_roots[0]]}; a root has no parent")
    if len(set(roots.tolist())) != len(roots):
        raise ForestError("a node is listed as a root twice")
    reached = np.zeros(n, dtype=bool)
    reached[roots] = True
    for i in range(n - 1, -1, -1):  # parents come after children: one backward pass marks every tree
        if reached[i]:
            ch = children[i][children[i] >= 0]
            reached[ch] = True
    if not reached.all():
        raise ForestError(f"node {int(np.argmin(reached))} belongs to no root's tree; list its tree's root in roots")


def forest_levels(children: np.ndarray) -> np.ndarray:
    """``levels [depth, width]``: node indices per level (leaves at level 0), -1 padded."""
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
        meta = self.session.get_modelmeta().custom_metadata_map
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
        check_forest(children, roots, len(x_or_tokens))
        want = np.int64 if self.input_names[0] == "tokens" else np.float32
        if x_or_tokens.dtype != want:
            raise ForestError(f"{self.input_names[0]} has dtype {x_or_tokens.dtype}; expected {np.dtype(want)}")
        if children.shape[1] > 2 and self.info.get("kind") == "tree_rnn":
            raise ForestError(f"children has {children.shape[1]} columns; a binary TreeRNN takes at most 2")
        feeds = {self.input_names[0]: x_or_tokens, "children": children, "roots": roots}
        if "levels" in self.input_names:
            feeds["levels"] = forest_levels(children)
        return dict(zip(self.output_names, self.session.run(None, feeds)))
