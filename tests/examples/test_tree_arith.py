"""The arithmetic-tree example end to end: the shipped models, exported (level loop and node
loop) and quantized, reach PyTorch's task accuracy on fresh trees in onnxruntime (its timing runs
too, one call each, and is not checked: speed is measured by the example and the benchmarks)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tree_arith" / "evaluate.py"


def test_exported_trees_match_pytorch_accuracy(tmp_path):
    spec = importlib.util.spec_from_file_location("tree_arith_evaluate", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.evaluate(trees=60, out=tmp_path, chain_leaves=51, rounds=1, calls=1)  # timing: one call each
    assert {r["model"] for r in rows} == {"tree_lstm", "tree_rnn"}
    for r in rows:
        assert r["pytorch"]["accuracy"] >= 0.95  # measured 1.000 on 500 trees of 1-16 leaves
        for key in ("nodes", "levels"):
            assert r[key]["max_error"] < 1e-4 and r[key]["agree"] == 1.0, (r["model"], key)
            assert r[key]["accuracy"] == r["pytorch"]["accuracy"]
        assert r["int8"]["accuracy"] >= r["pytorch"]["accuracy"] - 0.05  # measured equal (1.000)
        assert r["int8"]["size_kib"] < 0.5 * r["levels"]["size_kib"]
        assert r["speed"]["chain"]["nodes"] == 101 and set(r["speed"]["forest"]["vs_pytorch"]) == {"levels", "int8", "nodes"}
