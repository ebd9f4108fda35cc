"""How the time per node of tree files grows with the forest: 1,000 to 50,000 nodes.

    .venv/bin/python benchmarks/tree_scaling.py [--sizes 1000,2000,5000,10000,20000,50000] [--rounds 5]
                                                [--plot docs/tree_scaling.png] [--json results.json]

Both shipped models of ``examples/tree_arith`` (Child-Sum Tree-LSTM, hidden 64; TreeRNN, hidden
128; token inputs) on two shapes per size:

- ``forest``: random arithmetic trees of 1-16 leaves (``arith_data.make_batch``), as many as make
  the size (16 nodes a tree on average; 9-12 levels in all);
- ``chain``: one chain expression of the size (``arith_data.chain_expression``): depth = nodes / 2,
  two nodes per level, the worst case for anything that pays per level.

Runtimes, in one process, 1 thread, timed call by call in interleaved rounds (the order rotates
from round to round; the figure is the median call over the nodes): PyTorch's level-batched
forward (``model(tokens, children, roots)``, structure check and levels included), and
``TreeSession.run`` (structure check included) on the file exported with ``--tree-strategy
levels``, on its int8 version (``edgernn.quantize(..., method="dynamic")``), and on the file
exported with ``--tree-strategy nodes``. Prints a markdown table (docs/performance.md quotes a run)
and draws µs per node against nodes, log-log, one panel per model and shape.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import edgernn
from edgernn.architectures.tree import Forest
from edgernn.runtimes import TreeSession

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tree_arith"
sys.path.insert(0, str(EXAMPLE))
import arith_data as data  # noqa: E402
from evaluate import MODELS, interleaved_us_per_node  # noqa: E402  (examples/tree_arith/evaluate.py)

RUNTIMES = {"pytorch": "PyTorch (level-batched)", "levels": "levels", "int8": "levels, int8", "nodes": "nodes"}
NODES_PER_TREE = 16  # mean nodes of a random arithmetic tree of 1-16 leaves (2 leaves - 1)


def make_shape(shape: str, nodes: int, rng: np.random.Generator) -> Forest:
    if shape == "chain":
        return Forest.from_trees([data.chain_expression((nodes + 1) // 2, rng)], vocab=data.VOCAB, max_children=2)
    return data.make_batch(max(1, round(nodes / NODES_PER_TREE)), rng, 1, 16).forest


def depth(children: np.ndarray) -> int:
    level = np.zeros(len(children), dtype=np.int64)
    for i, row in enumerate(children.tolist()):  # children first: one pass settles every level
        kids = [c for c in row if c >= 0]
        if kids:
            level[i] = 1 + max(level[c] for c in kids)
    return int(level.max()) + 1


def measure(sizes: list[int], rounds: int, folder: Path) -> list[dict]:
    torch.set_num_threads(1)
    results = []
    for name, ckpt in MODELS.items():
        model = edgernn.load(ckpt).module.eval()
        files = {s: folder / f"{name}.{s}.onnx" for s in ("levels", "nodes")}
        for strategy, path in files.items():
            edgernn.export(model, path, tree_strategy=strategy)
        files["int8"] = Path(edgernn.quantize(files["levels"], folder / f"{name}.int8.onnx", method="dynamic").path)
        sessions = {k: TreeSession(files[k]) for k in ("levels", "int8", "nodes")}
        for shape in ("forest", "chain"):
            for n in sizes:
                f = make_shape(shape, n, np.random.default_rng(n))
                args = [torch.from_numpy(a) for a in (f.x_or_tokens, f.children, f.roots)]
                runs: dict[str, Callable[[], object]] = {"pytorch": lambda m=model, a=args: m(*a)}
                for key, s in sessions.items():
                    runs[key] = lambda s=s, f=f: s.run(f.x_or_tokens, f.children, f.roots)
                with torch.inference_mode():
                    want = model(*args)[0].numpy()
                    for key, s in sessions.items():  # same numbers first
                        err = float(np.abs(s.run(f.x_or_tokens, f.children, f.roots)["y"] - want).max())
                        if key != "int8" and err > 1e-4:
                            raise AssertionError(f"{name} {key} on the {shape} of {f.n_nodes} nodes differs by {err}")
                    calls = 3 if f.n_nodes <= 5000 else 1
                    us = interleaved_us_per_node(runs, f.n_nodes, rounds, calls)
                results.append({"model": name, "shape": shape, "nodes": f.n_nodes, "trees": f.n_trees,
                                "depth": depth(f.children), "us_per_node": us})
                print(f"{name} {shape} {f.n_nodes}: " + ", ".join(f"{k} {v:.2f}" for k, v in us.items()), file=sys.stderr)
    return results


def table(results: list[dict]) -> str:
    lines = ["| model | shape | nodes | levels | PyTorch µs/node | levels µs/node (vs PyTorch) | int8 µs/node (vs PyTorch) "
             "| nodes µs/node (vs PyTorch) |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        us = r["us_per_node"]
        cells = [f"{us[k]:.2f} ({us[k] / us['pytorch']:.2f}x)" for k in ("levels", "int8", "nodes")]
        lines.append(f"| {r['model']} | {r['shape']} | {r['nodes']:,} | {r['depth']:,} | {us['pytorch']:.2f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in results))
    fig, axes = plt.subplots(len(models), 2, figsize=(10, 4 * len(models)), squeeze=False, sharex=True)
    for i, model in enumerate(models):
        for j, shape in enumerate(("forest", "chain")):
            ax = axes[i][j]
            rows = [r for r in results if r["model"] == model and r["shape"] == shape]
            for key, label in RUNTIMES.items():
                ax.plot([r["nodes"] for r in rows], [r["us_per_node"][key] for r in rows], marker="o", label=label)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{model}, {shape}" + (" (depth = nodes / 2)" if shape == "chain" else " of arithmetic trees"))
            ax.set_xlabel("nodes")
            ax.set_ylabel("µs per node (1 thread)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("Tree files in onnxruntime (TreeSession.run) against PyTorch's level-batched forward")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,2000,5000,10000,20000,50000")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "tree_scaling.png")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = measure([int(s) for s in args.sizes.split(",")], args.rounds, Path(tmp))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
