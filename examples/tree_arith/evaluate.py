"""Arithmetic trees end to end: export both shipped models (level loop and node loop), quantize
the level loop to int8, and compare task accuracy and time per node with PyTorch.

    .venv/bin/python examples/tree_arith/evaluate.py [--trees 440] [--chain 251] [--rounds 7] [--out out/tree_arith]

Accuracy is measured on ``--trees`` fresh trees of 1-16 leaves (440 trees: about 7,000 nodes),
one forest, one call. Time per node is measured on that forest and on one chain expression of
``--chain`` leaves (251: 501 nodes, depth 251), against PyTorch's level-batched forward
(``model(tokens, children, roots)``, which checks the structure and computes the levels, as
``TreeSession.run`` does), in the same process, 1 thread, in interleaved rounds: every round runs
every runtime, in an order that rotates from round to round; the figure is the median call
divided by the nodes. ``vs PyTorch`` is that median over PyTorch's: below 1.00x is faster.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import edgernn
from edgernn.architectures.tree import Forest
from edgernn.runtimes import TreeSession

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import arith_data as data  # noqa: E402  (a unique module name: examples share one process in tests)

MODELS = {"tree_lstm": HERE / "tree_lstm.pt", "tree_rnn": HERE / "tree_rnn.pt"}
RUNTIMES = {"levels": "ONNX, Loop over levels", "int8": "ONNX int8, Loop over levels", "nodes": "ONNX, Loop over nodes"}


def interleaved_us_per_node(runs: dict[str, Callable[[], object]], nodes: int, rounds: int, calls: int
                            ) -> dict[str, float]:
    """Median µs per node of each callable, timed call by call in ``rounds`` interleaved rounds of
    ``calls`` calls each (the order rotates from round to round), after one untimed call each."""
    names = list(runs)
    times: dict[str, list[int]] = {k: [] for k in names}
    for fn in runs.values():
        fn()
    gc.disable()
    try:
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                for _ in range(calls):
                    t0 = time.perf_counter_ns()
                    runs[name]()
                    times[name].append(time.perf_counter_ns() - t0)
    finally:
        gc.enable()
    return {k: float(np.median(v)) / 1e3 / nodes for k, v in times.items()}


def evaluate(trees: int, out: Path, seed: int = 11, chain_leaves: int = 251, rounds: int = 7, calls: int = 3
             ) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    batch = data.make_batch(trees, rng, 1, 16)
    shapes = {"forest": batch.forest,
              "chain": Forest.from_trees([data.chain_expression(chain_leaves, rng)], vocab=data.VOCAB, max_children=2)}
    rows = []
    for name, ckpt in MODELS.items():
        model = edgernn.load(ckpt).module.eval()
        files = {}
        for strategy in ("levels", "nodes"):
            files[strategy] = out / f"{name}.{strategy}.onnx"
            edgernn.export(model, files[strategy], tree_strategy=strategy)
        int8 = edgernn.quantize(files["levels"], out / f"{name}.levels.int8.onnx", method="dynamic")
        files["int8"] = Path(int8.path)
        sessions = {key: TreeSession(path) for key, path in files.items()}
        forest = batch.forest
        args = [torch.from_numpy(a) for a in (forest.x_or_tokens, forest.children, forest.roots)]
        with torch.inference_mode():
            logits = model(*args)[0].numpy()
        row = {"model": name, "forest_nodes": forest.n_nodes, "trees": forest.n_trees,
               "pytorch": {"accuracy": float(np.mean(logits.argmax(-1) == batch.labels))}}
        for key, session in sessions.items():
            y = session.run(forest.x_or_tokens, forest.children, forest.roots)["y"]
            row[key] = {"accuracy": float(np.mean(y.argmax(-1) == batch.labels)),
                        "max_error": float(np.abs(y - logits).max()),
                        "agree": float(np.mean(y.argmax(-1) == logits.argmax(-1))),
                        "size_kib": files[key].stat().st_size / 1024}
        row["speed"] = {}
        for shape, f in shapes.items():
            t_args = [torch.from_numpy(a) for a in (f.x_or_tokens, f.children, f.roots)]
            runs: dict[str, Callable[[], object]] = {"pytorch": lambda m=model, a=t_args: m(*a)}
            for key, session in sessions.items():
                runs[key] = lambda s=session, f=f: s.run(f.x_or_tokens, f.children, f.roots)
            with torch.inference_mode():
                us = interleaved_us_per_node(runs, f.n_nodes, rounds, calls)
            row["speed"][shape] = {"nodes": f.n_nodes, "us_per_node": us,
                                   "vs_pytorch": {k: v / us["pytorch"] for k, v in us.items() if k != "pytorch"}}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", type=int, default=440)
    ap.add_argument("--chain", type=int, default=251, help="leaves of the chain expression timed (2n - 1 nodes)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("out/tree_arith"))
    args = ap.parse_args(argv)
    rows = evaluate(args.trees, args.out, chain_leaves=args.chain, rounds=args.rounds)
    sp = rows[0]["speed"]
    t = Table(title=f"arithmetic trees: accuracy on {rows[0]['trees']} fresh trees of 1-16 leaves "
                    f"({rows[0]['forest_nodes']} nodes, one forest); µs per node on that forest and on a chain of "
                    f"{sp['chain']['nodes']} nodes; 1 thread, interleaved with PyTorch", title_justify="left")
    for col in ("model", "runtime", "accuracy", "decisions = PyTorch", "max |logit error|", "forest µs/node",
                "vs PyTorch", "chain µs/node", "vs PyTorch", "size"):
        t.add_column(col)
    for r in rows:
        f, c = r["speed"]["forest"], r["speed"]["chain"]
        t.add_row(r["model"], "PyTorch (level-batched)", f"{r['pytorch']['accuracy']:.3f}", "", "",
                  f"{f['us_per_node']['pytorch']:.2f}", "", f"{c['us_per_node']['pytorch']:.2f}", "", "")
        for key, label in RUNTIMES.items():
            v = r[key]
            t.add_row("", label, f"{v['accuracy']:.3f}", f"{v['agree']:.2%}", f"{v['max_error']:.2e}",
                      f"{f['us_per_node'][key]:.2f}", f"{f['vs_pytorch'][key]:.2f}x",
                      f"{c['us_per_node'][key]:.2f}", f"{c['vs_pytorch'][key]:.2f}x", f"{v['size_kib']:.0f} KiB")
    Console().print(t)
    ok = all(r[k]["agree"] >= 0.99 for r in rows for k in ("nodes", "levels")) and all(
        r[k]["max_error"] < 1e-4 for r in rows for k in ("nodes", "levels"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
