"""File-level operations behind the CLI: export a model file, describe an ONNX file, stream data.

Each returns a report object; the CLI prints it (a table, or JSON with ``--json``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from edgernn.contract import Contract, ContractError
from edgernn.errors import CheckpointError, EdgernnError, looks_like_torch_file, not_a_torch_file
from edgernn.modelfile import ModelFile

if TYPE_CHECKING:  # numpy loads with the commands that stream data
    import numpy as np


def export_file(model_path: str | os.PathLike, output: str | os.PathLike | None = None, *, mode: str = "chunk",
                opset: int = 18, class_path: str | None = None, config: Any = None, allow_pickle: bool = False,
                nonlinearity: str | None = None, batch_first: bool | None = None, inputs: Sequence[str] = (),
                state_args: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
                verify: bool = True, tolerance: float = 1e-5, tree_strategy: str = "levels", all_nodes: bool = False,
                cells: str = "auto", state_layout: str = "native", keep_debug_info: bool = False,
                progress: Callable[[str], None] | None = None):
    """Load ``model_path`` (see :func:`edgernn.load`), export it to ``output`` (default: the model
    path with suffix ``.onnx``) and return the :class:`~edgernn.ExportReport` (with load notes).
    ``state_layout``: ``native`` or ``batch-major`` (see :func:`edgernn.export`)."""
    src = Path(model_path)
    # before torch loads (seconds): a missing model file is said at once, as edgernn.load says it
    if not src.exists():
        raise CheckpointError(f"{src} does not exist")
    if src.is_file() and not looks_like_torch_file(_head(src)):
        raise not_a_torch_file(src)
    from edgernn.checkpoints import load
    from edgernn.converters.export import export
    from edgernn.converters.passes import ExportOptions

    ExportOptions(mode=mode, cells=cells, state_layout=state_layout)  # the choices, checked before any load
    if progress:
        progress("load")
    # load first: it says what is wrong with a missing file or a folder, of which no default
    # output path can be made
    loaded = load(src, class_path=class_path, config=config, allow_pickle=allow_pickle,
                  nonlinearity=nonlinearity, batch_first=batch_first)
    target = Path(output) if output is not None else src.with_suffix(".onnx")
    if target.exists() and target.resolve() == src.resolve():
        raise EdgernnError(f"output {target} is the input file; choose another path with -o")
    if not target.parent.is_dir():
        raise EdgernnError(f"cannot write {target}: folder {target.parent} does not exist")
    report = export(loaded.module, target, mode=mode, opset=opset, inputs=inputs, state_args=state_args,
                    output_names=output_names, verify=verify, tolerance=tolerance, tree_strategy=tree_strategy,
                    all_nodes=all_nodes, cells=cells, state_layout=state_layout, keep_debug_info=keep_debug_info,
                    progress=progress)
    report.notes[:0] = [f"loaded {loaded.description}", *loaded.notes]
    return report


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(4)
    except OSError:
        return b"PK\x03\x04"  # unreadable: edgernn.load says why


@dataclass
class InfoReport:
    """What an ONNX file declares (its contract, size and graph summary). ``contract_from`` is
    ``"metadata"`` for an edgernn file, ``"inferred"`` for a file from another exporter, whose
    contract :func:`~edgernn.contract.infer_contract` built (``inferred`` then says how)."""

    path: str
    size_bytes: int
    contract: Contract
    opset: int
    producer: str
    op_counts: dict[str, int] = field(default_factory=dict)
    contract_from: str = "metadata"
    inferred: dict | None = None
    providers: list[str] = field(default_factory=list)  # onnxruntime's providers installed here
    fixed: dict[str, Any] = field(default_factory=dict)  # input name -> value folded in (``fix``)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        from edgernn.foreign import INFERRED_KEY

        c = self.contract
        from_metadata = self.contract_from == "metadata"
        metadata = {k: v for k, v in c.extra.items() if from_metadata or k != INFERRED_KEY}
        return {"path": self.path, "size_bytes": self.size_bytes, "format": c.format if from_metadata else None,
                "mode": c.mode, "opset": self.opset, "producer": self.producer,
                "inputs": [t.to_json() for t in c.inputs], "outputs": [t.to_json() for t in c.outputs],
                "states": [s.to_json() for s in c.states], "op_counts": self.op_counts,
                "metadata": metadata, "contract_from": self.contract_from, "inferred": self.inferred,
                "providers_available": self.providers, "fixed": self.fixed, "notes": self.notes}


def info(path: str | os.PathLike | ModelFile, state_pairs: Mapping[str, str] | None = None,
         fix: Mapping[str, Any] | None = None) -> InfoReport:
    """Describe an ONNX file: its contract as :class:`~edgernn.modelfile.ModelFile` resolves it
    (the metadata of an edgernn file; for a stateful file from another exporter, or any file when
    ``state_pairs`` (graph input name -> graph output name) is given, the contract
    :func:`~edgernn.contract.infer_contract` finds in its graph), its size and op counts.
    ``fix`` (input name -> value, e.g. ``{"sr": 16000}``): describe the graph specialised for those
    values (see :func:`edgernn.converters.specialize.specialize`): the fixed inputs are gone."""
    from edgernn.runtimes.providers import available

    mf, spec = _open(path, state_pairs, fix)
    model = mf.proto
    contract = mf.contract
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return InfoReport(mf.source, mf.size_bytes, contract, opset, model.producer_name,
                      dict(sorted(counts.items(), key=lambda kv: -kv[1])), mf.contract_from, mf.inferred, available(),
                      {k: v.tolist() for k, v in spec.fixed.items()} if spec else {}, [spec.note()] if spec else [])


def _open(path: str | os.PathLike | ModelFile, state_pairs: Mapping[str, str] | None,
          fix: Mapping[str, Any] | None) -> tuple[ModelFile, Any]:
    """The file, specialised for ``fix`` when given (and the record of it, else ``None``)."""
    if not fix:
        return ModelFile.open(path, state_pairs=state_pairs), None
    from edgernn.converters.specialize import open_fixed

    return open_fixed(path, fix, state_pairs=state_pairs)


@dataclass
class RunReport:
    """A streamed run: how many frames in how many calls, output shapes, where they went, and the
    execution provider that ran it (with ``notes`` on a fallback)."""

    path: str
    frames: int
    calls: int
    chunk: int
    outputs: dict[str, tuple[int, ...]]
    saved_to: str | None
    final_state: dict[str, tuple[int, ...]]
    provider: str = "CPUExecutionProvider"
    notes: list[str] = field(default_factory=list)
    frame_multiple: int = 1  # the frames of each call are a multiple of this (the model strides over time or works in blocks of frames)
    delays: dict[str, int] = field(default_factory=dict)  # per output: frames of lookahead, as the file produces them
    aligned: bool = False  # outputs with a delay were aligned to the model's frames (``align=True``)
    flushed_frames: int = 0  # zero frames fed at the end to align them

    def to_json(self) -> dict:
        return {"path": self.path, "frames": self.frames, "calls": self.calls, "chunk": self.chunk,
                "outputs": {k: list(v) for k, v in self.outputs.items()}, "saved_to": self.saved_to,
                "final_state": {k: list(v) for k, v in self.final_state.items()}, "provider": self.provider,
                "notes": self.notes, "frame_multiple": self.frame_multiple, "delays": self.delays,
                "aligned": self.aligned, "flushed_frames": self.flushed_frames}


def check_not_an_input(output: str | os.PathLike | None, inputs: Sequence[str | os.PathLike]) -> None:
    """Refuse an output path that is one of the command's input files (it would be overwritten)."""
    if output is None:
        return
    target = Path(output).resolve()
    for given in inputs:
        if Path(given).resolve() == target:
            raise EdgernnError(f"output {output} is the input file {given}; choose another path with -o")


def load_array(path: str | os.PathLike) -> np.ndarray:
    """A ``.npy`` data file (never unpickled)."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise EdgernnError(f"data file {p} does not exist")
    try:
        return np.load(p, allow_pickle=False)
    except Exception:
        raise EdgernnError(f"data file {p} is not a .npy array file") from None


def run(path: str | os.PathLike | ModelFile, inputs: Mapping[str, np.ndarray] | np.ndarray, *, chunk: int | None = None,
        output: str | os.PathLike | None = None, threads: int | None = 1,
        state_pairs: Mapping[str, str] | None = None, providers: str | Sequence[str] | None = None,
        allow_fallback: bool = False, align: bool = False,
        fix: Mapping[str, Any] | None = None, nonfinite: str = "raise") -> tuple[RunReport, dict[str, np.ndarray]]:
    """Stream ``inputs`` through the model ``chunk`` frames per call (default: 1 in step mode, the
    whole stream otherwise), carrying state; optionally save outputs to ``output`` (``.npy`` for
    one output, ``.npz`` for several). Returns the report and the outputs. A file without edgernn
    metadata is read as :func:`info` reads it (``state_pairs`` as there); its inputs with neither a
    batch nor a time axis (a scalar such as silero-vad's ``sr``) are fed whole to every call.
    ``providers``, ``allow_fallback`` and ``nonfinite`` (NaN or infinity in the data or the state:
    ``raise``, ``reset`` or ``ignore``): as for :class:`~edgernn.runtimes.StreamingSession`.
    ``fix`` (input name -> value, e.g. ``{"sr": 16000}``): stream through the graph specialised for
    those values (see :func:`edgernn.converters.specialize.specialize`; not given in ``inputs``),
    compared with the original on the first call when made-up inputs could not be used.

    Outputs without a time axis come one row per call, stacked along a new leading axis (the
    last row is the value after the whole stream); the report's notes say so.

    A model that strides over time takes calls of a multiple of its ``frame_multiple`` frames:
    ``chunk`` and the stream's length must be multiples of it, or :class:`StreamError` says so
    before anything runs or is written. Outputs with lookahead (``delay``) are saved as the file
    produces them (frame ``t`` is the model's frame ``t - delay``; the report says the delay), or
    with ``align=True`` as the model's frames (see :meth:`StreamingSession.stream`)."""
    import numpy as np

    from edgernn.modelfile import write_atomic
    from edgernn.runtimes.session import StreamingSession

    out_path = Path(output) if output is not None else None
    if out_path is not None and not out_path.parent.is_dir():
        raise EdgernnError(f"cannot write {out_path}: folder {out_path.parent} does not exist")
    model, specialized = _open(path, state_pairs, fix) if fix else (path, None)
    session = StreamingSession(model, threads=threads, state_pairs=None if fix else state_pairs, providers=providers,
                               allow_fallback=allow_fallback, nonfinite=nonfinite)
    arrays = dict(inputs) if isinstance(inputs, Mapping) else {session.inputs[0].name: inputs}
    if not isinstance(inputs, Mapping) and len(session.inputs) != 1:
        names = ", ".join(t.name for t in session.inputs)
        raise EdgernnError(f"{session.file.source} takes {len(session.inputs)} inputs ({names}); give each by name")
    spec = next((t for t in session.inputs if t.batch_axis is not None or t.time_axis is not None), session.inputs[0])
    axis = spec.time_axis if spec.time_axis is not None else 0
    first = np.asarray(arrays.get(spec.name, next(iter(arrays.values()))))
    total = first.shape[axis] if first.ndim > axis else 0
    if chunk is None:
        chunk = 1 if session.mode == "step" else max(total, 1)
    if specialized is not None:
        given = sorted(set(arrays) & set(specialized.fixed))
        if given:
            raise EdgernnError(f"input {given[0]!r} is fixed with --fix; give data for the other inputs only")
        from edgernn.converters.specialize import verify_on_data

        verify_on_data(specialized, session.contract, arrays)
    outputs = session.stream(chunk=chunk, align=align, **arrays)
    aligned = bool(align) and session.delay > 0
    notes = ([specialized.note()] if specialized is not None else []) + list(session.notes)
    calls = -(-total // chunk)
    for t in session.outputs:
        if t.time_axis is None and t.name in outputs:
            notes.append(f"output {t.name} has no time axis: its value after each call is one row, stacked along a new "
                         f"leading axis ({calls} call{'s' if calls != 1 else ''}: {list(outputs[t.name].shape)}); "
                         "the last row is its value after the whole stream")
    if session.stats.nonfinite_resets:
        n = session.stats.nonfinite_resets
        notes.append(f"{n} stream{'s' if n != 1 else ''} started over from the start state: NaN or infinity in the "
                     "data or the state (--nonfinite reset)")
    for t in session.inputs:
        if t.frame_multiple != 1:
            notes.append(f"input {t.name} takes a multiple of {t.frame_multiple} frames per call (the model strides "
                         "over time)")
    for t in session.outputs:
        if t.delay:
            frames = f"{t.delay} frame{'s' if t.delay > 1 else ''}"
            notes.append(f"{t.name}: {frames} of lookahead (delay); " + (
                f"aligned: its first {frames} dropped and {session.flushed_frames} zero frames fed at the end, so "
                "frame t is the model's frame t" if aligned else
                f"frame t is the model's frame t - {t.delay} (the first {frames} come before the model's first "
                "output; --align gives the model's frames)"))
    if out_path is not None:
        import io

        buf = io.BytesIO()
        if len(outputs) == 1 and out_path.suffix != ".npz":
            np.save(buf, next(iter(outputs.values())))
        else:
            np.savez(buf, **outputs)
        write_atomic(out_path, buf.getvalue())
    flush_calls = session.flushed_frames // session.frame_multiple if aligned else 0
    report = RunReport(session.file.source, total, calls + flush_calls, chunk,
                       {k: v.shape for k, v in outputs.items()},
                       str(out_path) if out_path else None, {k: v.shape for k, v in session.state.items()},
                       session.provider, notes, session.frame_multiple, session.delays, aligned,
                       session.flushed_frames if aligned else 0)
    return report, outputs


__all__ = ["export_file", "info", "InfoReport", "run", "RunReport", "load_array", "check_not_an_input", "ContractError"]
