"""Tree-structured recursive networks: a binary TreeRNN and a Child-Sum Tree-LSTM.

One cell with shared weights runs at every node of a tree, children before parents. A batch of
trees is a flattened forest (:class:`Forest`):

- ``x [nodes, F]`` float32 node features, or ``tokens [nodes]`` int64 when the model has an
  embedding (``vocab_size`` in its config);
- ``children [nodes, K]`` int64: row ``i`` lists node ``i``'s children, padded with -1 (a leaf's
  row is all -1); every child index is smaller than its parent's;
- ``roots [trees]`` int64: each tree's root.

``forward(x_or_tokens, children, roots)`` returns ``(root_logits [trees, output_size],
node_h [nodes, hidden])``. It checks the structure first (:func:`validate_forest`), then runs
one step per depth level (a node's level is one more than its highest child's; leaves are level
0), all nodes of a level at once; ``forward_nodes`` computes the same node by node (slow, for
tests). The parameter names and layouts are what ``edgernn.converters.tree`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from edgernn.runtimes.tree import ForestError, validate_forest

__all__ = ["Forest", "validate_forest", "node_levels", "TreeRNN", "ChildSumTreeLSTM"]


# ---------------------------------------------------------------------------------------------
# the forest: structure arrays, built from nested tuples, and checked
# ---------------------------------------------------------------------------------------------


@dataclass
class Forest:
    """A flattened batch of trees: ``x_or_tokens`` ([nodes, F] float32 or [nodes] int64),
    ``children`` ([nodes, K] int64, -1 padded, children before parents) and ``roots`` ([trees]).

    Build one from nested trees with :meth:`from_trees`; run it with ``model(*forest.torch())``.
    """

    x_or_tokens: np.ndarray
    children: np.ndarray
    roots: np.ndarray

    @property
    def n_nodes(self) -> int:
        return int(self.children.shape[0])

    @property
    def n_trees(self) -> int:
        return int(self.roots.shape[0])

    def validate(self) -> None:
        """Raise :class:`~edgernn.runtimes.tree.ForestError` unless the arrays form a forest."""
        rows = np.shape(self.x_or_tokens)[:1]  # () for a 0-d array
        if rows != (self.n_nodes,):
            have = f"{rows[0]} rows" if rows else "no rows (a 0-d array)"
            raise ForestError(f"x_or_tokens has {have} but children has {self.n_nodes}")
        validate_forest(self.children, self.roots, self.n_nodes)

    def torch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_or_tokens, children, roots)`` as tensors, ready for a model's ``forward``."""
        return (torch.as_tensor(self.x_or_tokens), torch.as_tensor(self.children, dtype=torch.int64),
                torch.as_tensor(self.roots, dtype=torch.int64))

    @classmethod
    def from_trees(cls, trees: Sequence[Any], *, vocab: Mapping[Hashable, int] | None = None,
                   max_children: int | None = None) -> Forest:
        """Flatten nested trees into one forest.

        A tree is a tuple ``(value, child, child, ...)`` whose children are trees; anything that
        is not a tuple is a leaf holding its value (``(value,)`` is a leaf too). A value is a
        token id (an int), a feature vector (a list or array of F floats), or any label that
        ``vocab`` maps to a token id. For example, with ``vocab={"+": 10, "3": 3, "4": 4}``,
        ``("+", "3", ("+", "4", "4"))`` is the expression 3 + (4 + 4).

        Nodes are numbered in post-order (each tree's children left to right, then the node), one
        tree after another, so every child comes before its parent and column ``k`` of
        ``children`` is a node's ``k``-th child. ``max_children`` fixes K (pass 2 for a TreeRNN,
        which reads column 0 as the left and column 1 as the right child); by default K is the
        most children any node has (at least 1).
        """
        values: list[Any] = []
        rows: list[list[int]] = []
        roots: list[int] = []
        for tree in trees:
            stack: list[tuple[Any, list[int]]] = [(tree, [])]  # (subtree, indices of its children so far)
            while stack:  # post-order without recursion, so deep chains are fine
                node, done = stack[-1]
                kids = node[1:] if isinstance(node, tuple) else ()
                if len(done) < len(kids):
                    stack.append((kids[len(done)], []))
                    continue
                stack.pop()
                if isinstance(node, tuple) and not node:
                    raise ForestError("a tree node is an empty tuple; expected (value, child, ...)")
                values.append(node[0] if isinstance(node, tuple) else node)
                rows.append(done)
                (stack[-1][1] if stack else roots).append(len(values) - 1)
        if not values:
            raise ForestError("from_trees got no trees; a forest needs at least one (a single leaf will do)")
        widest = max(len(r) for r in rows)
        k = max(widest, 1) if max_children is None else max_children
        if widest > k:
            raise ForestError(f"a node has {widest} children but max_children is {k}")
        children = np.full((len(rows), k), -1, dtype=np.int64)
        for i, r in enumerate(rows):
            children[i, :len(r)] = r
        return cls(_node_values(values, vocab), children, np.asarray(roots, dtype=np.int64))


def _node_values(values: list[Any], vocab: Mapping[Hashable, int] | None) -> np.ndarray:
    """Token ids [nodes] (int64) or features [nodes, F] (float32) from the nodes' values."""
    if vocab is not None:
        for v in values:
            try:
                known = v in vocab
            except TypeError:  # an unhashable value (a list) is no label
                known = False
            if not known:
                raise ForestError(f"node value {v!r} is not in the vocabulary ({len(vocab)} entries)")
        try:
            return np.asarray([vocab[v] for v in values], dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            raise ForestError("vocab maps a label to something that is not an int64 token id") from None
    is_token = [isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values]
    if all(is_token):
        try:
            return np.asarray(values, dtype=np.int64)
        except OverflowError:
            raise ForestError("a token id is outside the int64 range (-2**63 to 2**63 - 1)") from None
    if any(is_token):
        raise ForestError("some nodes hold token ids and others feature vectors; a forest holds one kind")
    try:
        feats = [np.asarray(v, dtype=np.float32) for v in values]
    except (TypeError, ValueError, OverflowError):
        raise ForestError("node values must be token ids, feature vectors or labels in `vocab`") from None
    sizes = {f.shape for f in feats}
    if len(sizes) != 1 or len(next(iter(sizes))) != 1:
        raise ForestError(f"node feature vectors must all be 1-D of one length, got shapes {sorted(sizes)[:3]}")
    return np.stack(feats)


def node_levels(children: torch.Tensor) -> torch.Tensor:
    """Each node's level [nodes] (int64): 0 for leaves, else 1 + the highest level of its children.

    Vectorized relaxation: each pass recomputes every level from its children's; after ``d``
    passes every node of level below ``d`` is settled, so it stops after depth + 1 passes.
    """
    n = children.shape[0]
    level = torch.zeros(n + 1, dtype=torch.int64, device=children.device)
    level[n] = -1  # padded children (-1) read this row
    idx = torch.where(children < 0, n, children)
    while True:
        new = level[idx].amax(dim=1) + 1 if children.shape[1] else torch.zeros_like(level[:n])
        if torch.equal(new, level[:n]):
            return new
        level[:n] = new


def _level_groups(children: torch.Tensor) -> list[torch.Tensor]:
    """Node indices of each level, leaves first (ascending within a level)."""
    level = node_levels(children)
    order = torch.argsort(level, stable=True)
    counts = torch.bincount(level).tolist()
    return list(torch.split(order, counts))


# ---------------------------------------------------------------------------------------------
# the models
# ---------------------------------------------------------------------------------------------


class _TreeModel(nn.Module):
    """Shared input handling: node features or embedded tokens, the structure check, the head."""

    max_children: int | None = None  # None: any number

    def _init_inputs(self, input_size: int | None, vocab_size: int | None, embed_size: int | None) -> int:
        if (input_size is None) == (vocab_size is None) or (vocab_size is None) != (embed_size is None):
            raise ValueError(f"give input_size (node features x) or vocab_size and embed_size (token ids), not "
                             f"both; got input_size={input_size}, vocab_size={vocab_size}, embed_size={embed_size}")
        if vocab_size is None:
            self.embed = None
            return input_size
        self.embed = nn.Embedding(vocab_size, embed_size)
        return embed_size

    def _prepare(self, x_or_tokens: torch.Tensor, children: torch.Tensor, roots: torch.Tensor,
                 validate: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Check shapes and structure; return the node inputs [nodes, F] and children [nodes, K]."""
        x_or_tokens, children, roots = (torch.as_tensor(t) for t in (x_or_tokens, children, roots))
        n = children.shape[0] if children.dim() else 0
        if self.embed is not None:
            if x_or_tokens.dim() != 1 or x_or_tokens.dtype not in (torch.int64, torch.int32):
                raise ForestError(f"tokens has shape {list(x_or_tokens.shape)} and dtype {x_or_tokens.dtype}; this "
                                  "model embeds token ids, expected int64 [nodes]")
            vocab = self.embed.num_embeddings
            if x_or_tokens.numel() and (x_or_tokens.min() < 0 or x_or_tokens.max() >= vocab):
                bad = int(torch.nonzero((x_or_tokens < 0) | (x_or_tokens >= vocab))[0])
                raise ForestError(f"tokens[{bad}] = {int(x_or_tokens[bad])} is not a token id; the vocabulary has "
                                  f"{vocab} (0 to {vocab - 1})")
        elif x_or_tokens.dim() != 2 or x_or_tokens.shape[1] != self.features:
            raise ForestError(f"x has shape {list(x_or_tokens.shape)}; expected [nodes, {self.features}]")
        if x_or_tokens.shape[0] != n:
            raise ForestError(f"{'tokens' if self.embed is not None else 'x'} has {x_or_tokens.shape[0]} nodes "
                              f"but children has {n} rows")
        if self.max_children is not None and children.dim() == 2 and children.shape[1] > self.max_children:
            raise ForestError(f"children has shape {list(children.shape)}; a {type(self).__name__} takes at "
                              f"most {self.max_children} children per node")
        if validate:
            validate_forest(children, roots, n)
        x = self.embed(x_or_tokens.long()) if self.embed is not None else x_or_tokens
        children = children.to(device=x.device, dtype=torch.int64)
        if self.max_children is not None and children.shape[1] < self.max_children:
            children = nn.functional.pad(children, (0, self.max_children - children.shape[1]), value=-1)
        return x, children

    def _head(self, node_h: torch.Tensor, roots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        root_h = node_h[torch.as_tensor(roots, dtype=torch.int64, device=node_h.device)]
        return (self.head(root_h) if self.head is not None else root_h), node_h


class TreeRNN(_TreeModel):
    """Binary recursive network: at every node ``h = tanh(W [h_left; h_right] + U x + b)``.

    A missing child contributes zeros, so a leaf is ``tanh(U x + b)``. ``children`` has two
    columns: column 0 is the left child, column 1 the right (fewer columns are padded with -1).

    Args:
        input_size: size F of the node features ``x [nodes, F]``; None with ``vocab_size``.
        hidden_size: size H of each node's state.
        output_size: logits per tree from the root's state (``head``); None returns the root's
            state itself.
        vocab_size, embed_size: the model takes token ids ``tokens [nodes]`` and embeds them
            (``embed``) into vectors of ``embed_size``.

    Parameters: ``W = Linear(2H, H, bias=False)``, ``U = Linear(F, H)``, ``embed =
    Embedding(vocab_size, F)`` (optional), ``head = Linear(H, output_size)``.
    """

    max_children = 2

    def __init__(self, input_size: int | None, hidden_size: int, output_size: int | None = None, *,
                 vocab_size: int | None = None, embed_size: int | None = None) -> None:
        super().__init__()
        self.config = {"input_size": input_size, "hidden_size": hidden_size, "output_size": output_size,
                       "vocab_size": vocab_size, "embed_size": embed_size}
        self.features = self._init_inputs(input_size, vocab_size, embed_size)
        self.hidden_size = hidden_size
        self.W = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        self.U = nn.Linear(self.features, hidden_size)
        self.head = nn.Linear(hidden_size, output_size) if output_size is not None else None

    def forward(self, x_or_tokens: torch.Tensor, children: torch.Tensor, roots: torch.Tensor, *,
                validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(root_logits [trees, output_size], node_h [nodes, hidden])``, one step per depth level.
        ``validate=False`` skips the structure check (for forests already checked)."""
        x, children = self._prepare(x_or_tokens, children, roots, validate)
        n, hsz = x.shape[0], self.hidden_size
        ux = self.U(x)
        # row n stays zero: padded children read it. Rows are written in place, one level at a
        # time; reads (indexing) keep only indices for backward, so autograd allows this.
        table = ux.new_zeros(n + 1, hsz)
        pad = torch.where(children < 0, n, children)
        for idx in _level_groups(children):
            hk = table[pad[idx]].reshape(-1, 2 * hsz)  # [level nodes, 2H]: h_left; h_right
            table[idx] = torch.tanh(self.W(hk) + ux[idx])
        return self._head(table[:n], roots)

    def forward_nodes(self, x_or_tokens: torch.Tensor, children: torch.Tensor, roots: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same as :meth:`forward`, computed one node at a time in index order (slow; a
        reference for tests)."""
        x, children = self._prepare(x_or_tokens, children, roots, True)
        zero = x.new_zeros(self.hidden_size)
        h: list[torch.Tensor] = []
        for i in range(x.shape[0]):
            left, right = (h[c] if c >= 0 else zero for c in children[i].tolist())
            h.append(torch.tanh(self.W(torch.cat([left, right])) + self.U(x[i])))
        return self._head(torch.stack(h), roots)


class ChildSumTreeLSTM(_TreeModel):
    """Child-Sum Tree-LSTM (Tai et al. 2015, arXiv 1503.00075, eq. 2-8), any number of children.

    With ``x`` the node's input, ``h_k, c_k`` its children's states and ``h~ = sum_k h_k``::

        i = sigmoid(W_i x + U_i h~ + b_i)      f_k = sigmoid(W_f x + U_f h_k + b_f)   (per child)
        o = sigmoid(W_o x + U_o h~ + b_o)      u   = tanh(W_u x + U_u h~ + b_u)
        c = i * u + sum_k f_k * c_k            h   = o * tanh(c)

    Children are summed, so their order does not matter. Arguments as for :class:`TreeRNN`.

    Parameters: ``W_iou = Linear(F, 3H)`` (rows i, o, u; its bias is b_iou), ``U_iou =
    Linear(H, 3H, bias=False)``, ``W_f = Linear(F, H)`` (bias b_f), ``U_f = Linear(H, H,
    bias=False)``, ``embed`` (optional), ``head = Linear(H, output_size)``.
    """

    def __init__(self, input_size: int | None, hidden_size: int, output_size: int | None = None, *,
                 vocab_size: int | None = None, embed_size: int | None = None) -> None:
        super().__init__()
        self.config = {"input_size": input_size, "hidden_size": hidden_size, "output_size": output_size,
                       "vocab_size": vocab_size, "embed_size": embed_size}
        self.features = self._init_inputs(input_size, vocab_size, embed_size)
        self.hidden_size = hidden_size
        self.W_iou = nn.Linear(self.features, 3 * hidden_size)
        self.U_iou = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.W_f = nn.Linear(self.features, hidden_size)
        self.U_f = nn.Linear(hidden_size, hidden_size, bias=False)
        self.head = nn.Linear(hidden_size, output_size) if output_size is not None else None

    def forward(self, x_or_tokens: torch.Tensor, children: torch.Tensor, roots: torch.Tensor, *,
                validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(root_logits [trees, output_size], node_h [nodes, hidden])``, one step per depth level.
        ``validate=False`` skips the structure check (for forests already checked)."""
        node_h, _ = self.node_states(x_or_tokens, children, roots, validate=validate)
        return self._head(node_h, roots)

    def node_states(self, x_or_tokens: torch.Tensor, children: torch.Tensor, roots: torch.Tensor, *,
                    validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Every node's ``(h, c)``, each [nodes, hidden] (level-batched, as :meth:`forward`)."""
        x, children = self._prepare(x_or_tokens, children, roots, validate)
        n, hsz = x.shape[0], self.hidden_size
        wx_iou, wx_f = self.W_iou(x), self.W_f(x)
        # row n stays zero for padded children; rows are written in place, level by level
        h_table, c_table = wx_iou.new_zeros(n + 1, hsz), wx_iou.new_zeros(n + 1, hsz)
        pad = torch.where(children < 0, n, children)
        for idx in _level_groups(children):
            ch = pad[idx]  # [level nodes, K]
            hk, ck = h_table[ch], c_table[ch]  # [level nodes, K, H]
            i, o, u = (wx_iou[idx] + self.U_iou(hk.sum(1))).chunk(3, dim=-1)
            f = torch.sigmoid(wx_f[idx].unsqueeze(1) + self.U_f(hk))
            c = torch.sigmoid(i) * torch.tanh(u) + (f * ck).sum(1)
            h_table[idx] = torch.sigmoid(o) * torch.tanh(c)
            c_table[idx] = c
        return h_table[:n], c_table[:n]

    def forward_nodes(self, x_or_tokens: torch.Tensor, children: torch.Tensor, roots: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same as :meth:`forward`, computed one node at a time in index order, over each
        node's real children only (slow; a reference for tests)."""
        x, children = self._prepare(x_or_tokens, children, roots, True)
        hsz = self.hidden_size
        h: list[torch.Tensor] = []
        c: list[torch.Tensor] = []
        for j in range(x.shape[0]):
            kids = [k for k in children[j].tolist() if k >= 0]
            h_k = torch.stack([h[k] for k in kids]) if kids else x.new_zeros(0, hsz)
            c_k = torch.stack([c[k] for k in kids]) if kids else x.new_zeros(0, hsz)
            w_i, w_o, w_u = self.W_iou(x[j]).chunk(3)
            u_i, u_o, u_u = self.U_iou(h_k.sum(0)).chunk(3)
            i, o, u = torch.sigmoid(w_i + u_i), torch.sigmoid(w_o + u_o), torch.tanh(w_u + u_u)
            f = torch.sigmoid(self.W_f(x[j]) + self.U_f(h_k))  # [children, H]
            c.append(i * u + (f * c_k).sum(0))
            h.append(o * torch.tanh(c[-1]))
        return self._head(torch.stack(h), roots)
