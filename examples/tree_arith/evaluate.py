"""Arithmetic trees end to end: export both shipped models (node loop and level loop), quantize
to int8, and compare task accuracy and time per node with PyTorch on fresh trees.

    .venv/bin/python examples/tree_arith/evaluate.py [--trees 500] [--out out/tree_arith]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import edgernn
from edgernn.runtimes import TreeSession

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import arith_data as data  # noqa: E402  (a unique module name: examples share one process in tests)

MODELS = {"tree_lstm": HERE / "tree_lstm.pt", "tree_rnn": HERE / "tree_rnn.pt"}


def per_node_us(fn, nodes: int, repeats: int = 5) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats / nodes * 1e6


def evaluate(trees: int, out: Path, seed: int = 11) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    batch = data.make_batch(trees, np.random.default_rng(seed), 1, 16)
    forest = batch.forest
    rows = []
    for name, ckpt in MODELS.items():
        model = edgernn.load(ckpt).module.eval()
        files = {}
        for strategy in ("nodes", "levels"):
            files[strategy] = out / f"{name}.{strategy}.onnx"
            edgernn.export(model, files[strategy], tree_strategy=strategy)
        int8 = edgernn.quantize(files["levels"], out / f"{name}.levels.int8.onnx", method="dynamic")
        files["int8"] = Path(int8.path)
        args = [torch.from_numpy(a) for a in (forest.x_or_tokens, forest.children, forest.roots)]
        with torch.inference_mode():
            logits = model(*args)[0].numpy()
            t_torch = per_node_us(lambda: model(*args), forest.n_nodes)
        row = {"model": name, "nodes": forest.n_nodes, "trees": forest.n_trees,
               "pytorch": {"accuracy": float(np.mean(logits.argmax(-1) == batch.labels)), "us_per_node": t_torch}}
        for key, path in files.items():
            session = TreeSession(path)
            y = session.run(forest.x_or_tokens, forest.children, forest.roots)["y"]
            run = lambda: session.run(forest.x_or_tokens, forest.children, forest.roots)  # noqa: E731
            row[key] = {"accuracy": float(np.mean(y.argmax(-1) == batch.labels)),
                        "max_error": float(np.abs(y - logits).max()),
                        "agree": float(np.mean(y.argmax(-1) == logits.argmax(-1))),
                        "us_per_node": per_node_us(run, forest.n_nodes),
                        "size_kib": path.stat().st_size / 1024}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", type=int, default=500)
    ap.add_argument("--out", type=Path, default=Path("out/tree_arith"))
    args = ap.parse_args(argv)
    rows = evaluate(args.trees, args.out)
    t = Table(title=f"arithmetic trees, {rows[0]['trees']} fresh trees of 1-16 leaves ({rows[0]['nodes']} nodes), "
                    "batch = the whole forest, 1 thread", title_justify="left")
    for col in ("model", "runtime", "accuracy", "decisions = PyTorch", "max |logit error|", "us per node", "size"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["model"], "PyTorch (level-batched)", f"{r['pytorch']['accuracy']:.3f}", "", "",
                  f"{r['pytorch']['us_per_node']:.1f}", "")
        for key, label in (("nodes", "ONNX, Loop over nodes"), ("levels", "ONNX, Loop over levels"),
                           ("int8", "ONNX int8, Loop over levels")):
            v = r[key]
            t.add_row("", label, f"{v['accuracy']:.3f}", f"{v['agree']:.2%}", f"{v['max_error']:.2e}",
                      f"{v['us_per_node']:.1f}", f"{v['size_kib']:.0f} KiB")
    Console().print(t)
    ok = all(r[k]["agree"] >= 0.99 for r in rows for k in ("nodes", "levels")) and all(
        r[k]["max_error"] < 1e-4 for r in rows for k in ("nodes", "levels"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
