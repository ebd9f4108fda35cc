"""Random arithmetic expressions as trees, shared by ``train.py`` and the tests.

An expression is a binary tree: leaves are digits ``0``-``9``, internal nodes the operators
``+`` and ``*``, both taken mod 10; the label is the expression's value mod 10 (10 classes).
For example ``("+", "7", ("*", "4", "5"))`` is 7 + 4 * 5 = 27, label 7.

Both operators are commutative on purpose: the Child-Sum Tree-LSTM sums its children's states,
so it cannot tell ``a - b`` from ``b - a``; with ``+`` and ``*`` both models can solve the task
exactly. A tree with ``n`` leaves has ``2n - 1`` nodes; its shape is drawn by splitting the
leaves at a uniformly random point, recursively (so shapes range from chains to balanced trees).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgernn.architectures.tree import Forest

DIGITS = [str(d) for d in range(10)]
OPS = {"+": lambda a, b: (a + b) % 10, "*": lambda a, b: (a * b) % 10}
VOCAB = {label: i for i, label in enumerate(DIGITS + list(OPS))}  # token ids: digits 0-9, then + and *
N_CLASSES = 10

TRAIN_LEAVES = (1, 8)  # training trees have 1-8 leaves; the last two buckets are larger than any of them
# leaf counts of the size buckets reported by train.py (nodes = 2 * leaves - 1)
BUCKETS = {"1 leaf (1 node)": (1, 1), "2 leaves (3 nodes)": (2, 2), "3-4 leaves (5-7 nodes)": (3, 4),
           "5-8 leaves (9-15 nodes)": (5, 8), "9-16 leaves (17-31 nodes)": (9, 16),
           "17-32 leaves (33-63 nodes)": (17, 32)}


def random_expression(n_leaves: int, rng: np.random.Generator) -> Any:
    """A random expression tree with ``n_leaves`` digits (nested tuples ``(op, left, right)``)."""
    if n_leaves == 1:
        return DIGITS[int(rng.integers(10))]
    split = int(rng.integers(1, n_leaves))
    op = "+*"[int(rng.integers(2))]
    return (op, random_expression(split, rng), random_expression(n_leaves - split, rng))


def chain_expression(n_leaves: int, rng: np.random.Generator) -> Any:
    """A left-leaning chain ``((d op d) op d) op ...`` of ``n_leaves`` digits (``2 n - 1`` nodes,
    depth ``n``): the deepest tree of its size, one level per operator."""
    tree: Any = DIGITS[int(rng.integers(10))]
    for _ in range(n_leaves - 1):
        tree = ("+*"[int(rng.integers(2))], tree, DIGITS[int(rng.integers(10))])
    return tree


def evaluate(tree: Any) -> int:
    """The value of an expression tree, mod 10."""
    if not isinstance(tree, tuple):
        return int(tree)
    op, left, right = tree
    return OPS[op](evaluate(left), evaluate(right))


def depth(tree: Any) -> int:
    """Levels from the root to the deepest leaf (a leaf has depth 1)."""
    return 1 if not isinstance(tree, tuple) else 1 + max(depth(t) for t in tree[1:])


@dataclass
class Batch:
    """Trees flattened into a forest (token ids, 2 children per node), their labels and leaf counts."""

    forest: Forest
    labels: np.ndarray
    leaves: np.ndarray
    trees: list[Any]


def make_batch(n_trees: int, rng: np.random.Generator, min_leaves: int = TRAIN_LEAVES[0],
               max_leaves: int = TRAIN_LEAVES[1]) -> Batch:
    """``n_trees`` random expressions with ``min_leaves``-``max_leaves`` leaves (uniform)."""
    leaves = rng.integers(min_leaves, max_leaves + 1, size=n_trees)
    trees = [random_expression(int(n), rng) for n in leaves]
    forest = Forest.from_trees(trees, vocab=VOCAB, max_children=2)
    return Batch(forest, np.asarray([evaluate(t) for t in trees], dtype=np.int64), leaves, trees)
