"""Small graph queries shared by the quantizers (walking subgraphs, naming decisions)."""

from __future__ import annotations

from typing import Iterator

import onnx

from edgernn.converters.quantize.report import NodeDecision

QUANTIZABLE = ("MatMul", "Gemm", "Conv", "LSTM", "GRU", "RNN")


def walk(graph: onnx.GraphProto, scope: tuple[str, ...] = ()) -> Iterator[tuple[onnx.NodeProto, onnx.GraphProto, tuple[str, ...]]]:
    """Every node of ``graph`` and of its subgraphs (Scan/Loop/If bodies), with its graph."""
    for node in graph.node:
        yield node, graph, scope
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from walk(attr.g, (*scope, node.name))
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from walk(g, (*scope, node.name))


def constant_names(graph: onnx.GraphProto, outer: set[str] = frozenset()) -> set[str]:
    return set(outer) | {t.name for t in graph.initializer} | {
        n.output[0] for n in graph.node if n.op_type == "Constant"}


def work_nodes(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, bool]]:
    """Nodes a quantizer could act on (MatMul/Gemm/Conv/recurrent ops), and whether their weight
    input is a constant (a MatMul of two activations has no weight to quantize)."""
    out = []
    consts_by_graph: dict[int, set[str]] = {}

    def visit(graph: onnx.GraphProto, outer: set[str]) -> None:
        consts = constant_names(graph, outer)
        consts_by_graph[id(graph)] = consts
        for node in graph.node:
            if node.op_type in QUANTIZABLE:
                out.append((node, len(node.input) > 1 and node.input[1] in consts))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g, consts)
    visit(model.graph, set())
    return out


def node_keys(model: onnx.ModelProto) -> set[tuple[str, str]]:
    return {(n.name, n.op_type) for n, _, _ in walk(model.graph)}


def decisions(candidates: list[tuple[onnx.NodeProto, bool]], exclude, how, left_in_float: str,
              skip: tuple[str, ...] = ()) -> tuple[list[NodeDecision], list[NodeDecision]]:
    """Sort ``candidates`` into int8 and float decisions. ``how(node)`` says how a node was made
    int8, or None when it was not; the reason for float is the first that holds: excluded by the
    user, no constant weight, or ``left_in_float``. Op types in ``skip`` are recorded elsewhere."""
    done, kept = [], []
    for node, const_weight in candidates:
        if node.op_type in skip:
            continue
        made = how(node)
        if made:
            done.append(NodeDecision(node.name, node.op_type, "int8", made))
        elif node.name in exclude:
            kept.append(NodeDecision(node.name, node.op_type, "float32", "excluded by the user"))
        elif not const_weight:
            kept.append(NodeDecision(node.name, node.op_type, "float32", "its second input is not a constant weight"))
        else:
            kept.append(NodeDecision(node.name, node.op_type, "float32", left_in_float))
    return done, kept
