"""``export``: PyTorch module -> verified streaming ONNX file (the pipeline in ``passes.py``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import onnx
from torch import nn

from edgernn.converters.io import InputSpec, parse_input
from edgernn.converters.passes import PIPELINE, ExportContext, ExportOptions, PassRecord, run_pipeline
from edgernn.converters.torchscript import check_scripted, is_scripted
from edgernn.converters.verify import ParityReport
from edgernn.architectures import RecurrentLayer
from edgernn.contract import Contract
from edgernn.errors import EdgernnError, ExportError, ParityError
from edgernn.modelfile import write_checked


@dataclass
class ExportReport:
    """What an export produced: the contract, parity with PyTorch, size, and what each pass did."""

    contract: Contract
    parity: ParityReport | None
    path: str | None
    size_bytes: int
    passes: list[PassRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    model: onnx.ModelProto | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return self.parity is None or self.parity.passed

    def to_json(self) -> dict:
        c = self.contract
        return {
            "path": self.path,
            "mode": c.mode,
            "size_bytes": self.size_bytes,
            "inputs": [t.to_json() for t in c.inputs],
            "outputs": [t.to_json() for t in c.outputs],
            "states": [s.to_json() for s in c.states],
            "parity": self.parity.to_json() if self.parity else None,
            "passes": [{"name": p.name, "detail": p.detail, "seconds": round(p.seconds, 3)} for p in self.passes],
            "notes": self.notes,
        }


def export(model: nn.Module, output: str | os.PathLike | None = None, *, mode: str = "chunk", opset: int = 18,
           inputs: Sequence[InputSpec | str] = (), state_args: Sequence[str] | None = None,
           output_names: Sequence[str] | None = None, verify: bool = True, tolerance: float = 1e-5,
           tree_strategy: str = "levels", all_nodes: bool = False, cells: str = "auto",
           state_layout: str = "native", keep_debug_info: bool = False,
           progress: Callable[[str], None] | None = None) -> ExportReport:
    """Export ``model`` to ONNX with explicit state I/O and check it against PyTorch.

    Args:
        model: the PyTorch module (not modified; a copy is exported in eval mode). A TorchScript
            module (``torch.jit.script``) whose forward takes and returns its state is exported
            with torch.onnx's TorchScript exporter (see ``converters/torchscript.py``); one that
            keeps its state in module attributes is refused.
        output: where to write the ``.onnx`` file (``None``: keep it in the report only). The file
            is written only if parity passes, through a temporary file and a rename.
        mode: ``chunk`` (any number of frames per call), ``step`` (one frame per call) or
            ``sequence`` (whole sequences; needed for bidirectional layers).
        opset: ONNX opset of the graph.
        inputs: data inputs as ``NAME:DTYPE:DIMS`` (e.g. ``"x:float32:B,T,40"``) or
            :class:`InputSpec`; inferred from the model's first layer when empty. A forward
            argument that is a state may be declared the same way to give its shape.
        state_args: forward arguments that carry state, wherever they sit in the signature;
            default: arguments named like a state (state, hidden, memory, cache, buffer, carry,
            hx, h0, c0...; the first argument only by a state's own name), except switches
            whose default is a bool or number (see ``docs/state-contract.md``). A tuple or dict
            state can be declared part by part in ``inputs`` as its contract names them
            (``"hidden.0:float32:B,5"``, ``"state.h:float32:B,6"``).
        output_names: names of the data outputs (default ``y`` or ``y.0``, ``y.1``...).
        verify: run the parity check (on by default).
        tolerance: largest allowed error relative to each tensor's scale.
        tree_strategy: for tree networks (TreeRNN, Child-Sum Tree-LSTM): ``nodes`` (a Loop over
            each level's nodes) or ``levels`` (a Loop over depth levels, each level one block; the graph orders
            the nodes by level itself, so the file takes only the forest).
        all_nodes: for tree networks, also output every node's state (``node.h``, ``node.c``).
        cells: step mode: ``auto`` (ONNX GRU/LSTM ops, MatMul cells for Elman RNN: the fastest
            measured on onnxruntime CPU) or ``matmul`` (MatMul cells only, for runtimes without
            the recurrent ops, e.g. onnxruntime's prebuilt mobile package).
        state_layout: ``native`` (states in PyTorch's layout: ``[layers * directions, batch,
            hidden]`` for recurrent layers) or ``batch-major`` (every state with a batch axis has
            it first: ``[batch, layers * directions, hidden]``), for runtimes that need the batch
            first, such as Triton's sequence batcher with implicit state. The graph transposes at
            its state inputs and outputs; the contract's ``batch_axis`` says where the batch is.
            Tree networks have no state pairs: the option changes nothing there.
        keep_debug_info: keep torch.onnx's per-node debug metadata (stack traces, module names,
            class hierarchies) in the file; by default it is dropped (node names stay).
        progress: called with each pass's name as it starts.

    Raises:
        ExportError: the model cannot be exported as asked (the message says why).
        ParityError: the export does not match PyTorch; ``error.report`` holds the numbers.
    """
    # the options check mode, cells and state layout, once, before anything runs
    options = ExportOptions(mode=mode, opset=opset, state_args=state_args, output_names=output_names, verify=verify,
                            tolerance=tolerance, cells=cells, state_layout=state_layout)
    target = Path(output) if output is not None else None
    if target is not None and not target.parent.is_dir():
        raise ExportError(f"cannot write {target}: folder {target.parent} does not exist")
    if _is_tree_model(model):  # one graph for any tree: written from the weights, not traced
        from edgernn.converters.tree import export_tree

        if progress:
            progress("tree graph")
        report = export_tree(model, target, strategy=tree_strategy, all_nodes=all_nodes, opset=opset,
                             verify=verify, tolerance=tolerance)
        if state_layout != "native":  # a tree file has no state pairs: any layout describes it
            report.notes.append(f"state layout {state_layout} changes nothing: a tree network's file has no state pairs")
        return report
    if is_scripted(model):  # captured by torch.onnx's TorchScript exporter (converters/torchscript.py)
        check_scripted(model, mode, opset, state_args)
    if isinstance(model, nn.RNNBase):
        model = RecurrentLayer(model)
    options.inputs = [parse_input(i) if isinstance(i, str) else i for i in inputs]
    ctx = run_pipeline(ExportContext(model, options), PIPELINE, progress)
    if not keep_debug_info:
        from edgernn.converters.optimize import strip_debug_info

        strip_debug_info(ctx.onnx_model)  # after verification: it changes no number
    data = ctx.onnx_model.SerializeToString()
    report = ExportReport(ctx.contract, ctx.parity, None, len(data), ctx.records, ctx.notes, ctx.onnx_model)
    return write_if_passed(report, target, data, "the export")


def write_if_passed(report: ExportReport, target: Path | None, data: bytes, what: str) -> ExportReport:
    """Write ``data`` to ``target`` (when given) if parity passed; else raise a :class:`ParityError`
    whose ``report`` holds the numbers, writing nothing. ``what`` names the export in the message."""
    failure = None if report.passed else ParityError(
        f"{what} does not match PyTorch: {report.parity.summary()}; no file was written")
    return write_checked(report, target, data, failure)


def _is_tree_model(model: nn.Module) -> bool:
    try:
        from edgernn.architectures.tree import ChildSumTreeLSTM, TreeRNN
    except ImportError:
        return False
    return isinstance(model, (TreeRNN, ChildSumTreeLSTM))


__all__ = ["export", "ExportReport", "EdgernnError", "write_if_passed"]
