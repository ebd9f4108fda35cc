"""The per-node decision of every quantizer is made in one function (decisions.decide), which the
report names, and its rules apply in the order its docstring gives."""

from __future__ import annotations

import importlib

import onnx_ir as ir

from edgernn.converters.quantize.decisions import EXCLUDED, NO_WEIGHT, decide
from edgernn.converters.quantize.report import QuantizeReport


def test_the_report_names_the_function_that_decides():
    report = QuantizeReport("dynamic", "m.onnx", None, 10, 5)
    module, _, name = report.decided_by.rpartition(".")
    assert getattr(importlib.import_module(module), name) is decide
    assert report.to_json()["decided_by"] == report.decided_by
    assert "stays float32 for the first reason that holds" in decide.__doc__


def test_rules_apply_in_order():
    nodes = [ir.Node("", "MatMul", [], name=n) for n in ("made", "excluded", "activations", "other")]
    done, kept = decide([(n, n.name != "activations") for n in nodes],
                        lambda n: ("int8", "how") if n.name == "made" else None, lambda n: "the method's reason",
                        exclude=["excluded", "activations"])
    assert [(d.name, d.dtype, d.why) for d in done] == [("made", "int8", "how")]
    assert [(d.name, d.why) for d in kept] == [("excluded", EXCLUDED), ("activations", EXCLUDED),
                                               ("other", "the method's reason")]
    done, kept = decide([(nodes[2], False)], lambda n: None, lambda n: "the method's reason")
    assert [d.why for d in kept] == [NO_WEIGHT]
