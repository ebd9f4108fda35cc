"""Quantize streaming RNN graphs and measure what it did to them.

``quantize(path, method=...)`` with a method from :data:`METHODS`:

``dynamic``  int8 weights, activations quantized at run time; every cell; step-mode layers in the
             one-frame shapes fastest in onnxruntime (``dynamic.py``, ``stepcells.py``)
``static``   int8 QDQ with stream-aware calibration; state I/O stays float (``static.py``)
``fp16``     float16 weights and compute, float32 graph I/O (``fp16.py``)
``mixed``    fp16, except the recurrent state path, which stays float32 (``fp16.py``)

Every run ends with an accuracy check: held-back streams (the user's data, else the
calibration file, else synthetic data, which the report says) go through the float and the
quantized model side by side, state carried in both, for ``steps`` frames.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import onnx

from edgernn.contract import Contract, read_metadata, write_metadata
from edgernn.converters.optimize import strip_debug_info
from edgernn.converters.quantize.graph import fold_weights, node_weights, small_weights, weight_bytes, work_nodes
from edgernn.converters.quantize.report import AccuracyReport, NodeDecision, QuantizeReport, SizeSplit
from edgernn.errors import EdgernnError
from edgernn.modelfile import ModelFile, ModelFileError, write_checked

METHODS = ("dynamic", "static", "fp16", "mixed")
SUFFIX = {"dynamic": ".int8", "static": ".qdq", "fp16": ".fp16", "mixed": ".mixed"}
CALIBRATION_CALLS = 4000  # calls recorded for static calibration (enough for min/max, bounded memory)
MIN_SIZE = 128
"""Weights of fewer elements stay float in int8 methods (``--min-size``): int8 saves 3 bytes an
element, its quantize/dequantize nodes and scales cost some 400-600 bytes (measured break-even of
a lone MatMul: about 150-200 elements) and about a microsecond per call (onnxruntime, one CPU thread)."""


class QuantizeError(EdgernnError):
    """The model cannot be quantized as asked."""


def default_output(path: str | os.PathLike, method: str) -> Path:
    """``gru.onnx`` -> ``gru.int8.onnx`` (``.qdq``, ``.fp16``, ``.mixed`` for other methods)."""
    p = Path(path)
    return p.with_name(p.stem + SUFFIX.get(method, "." + method) + ".onnx")


def _open(model: str | os.PathLike | onnx.ModelProto | ModelFile,
          state_pairs: Mapping[str, str] | None) -> ModelFile:
    try:
        mf = ModelFile.open(model, state_pairs=state_pairs)
        if not mf.proto.graph.node:
            raise QuantizeError(f"{mf.source} is not an ONNX model with a graph")
        mf.with_weights()
    except ModelFileError as e:
        raise QuantizeError(str(e)) from None
    return mf


def quantize(model: str | os.PathLike | onnx.ModelProto | ModelFile, output: str | os.PathLike | None = None, *,
             method: str = "dynamic", calibration: str | os.PathLike | None = None,
             data: str | os.PathLike | None = None, per_channel: bool = False, exclude: Sequence[str] = (),
             max_error: float | None = None, min_agreement: float | None = None, steps: int = 10_000,
             chunk: int | None = None, state_pairs: Mapping[str, str] | None = None, write: bool = True,
             fix: Mapping[str, Any] | None = None, min_size: int = MIN_SIZE, keep_debug_info: bool = False,
             progress: Callable[[str], None] | None = None) -> QuantizeReport:
    """Quantize an edgernn (or other stateful) ONNX file and check it against the float model.

    Args:
        model: the float ONNX file (a path, ModelProto or :class:`~edgernn.modelfile.ModelFile`).
        output: where to write (default ``IN.int8.onnx`` etc., see :func:`default_output`); the
            file is written only if the accuracy check passes the thresholds given.
        method: one of :data:`METHODS`.
        calibration: ``.npy``/``.npz`` streams in the model's input layout (time along the time
            axis, independent streams along the batch axis), for ``static``; synthetic if absent.
        data: held-back streams for the accuracy check (default: the calibration file, else
            synthetic data of ``steps`` frames).
        per_channel: int8 weights with one scale per output channel.
        exclude: node names to keep in float.
        max_error, min_agreement: thresholds of the accuracy check (largest abs error of any
            output; smallest fraction of frames whose classifier decision agrees).
        steps: frames per synthetic stream (default 10,000).
        chunk: frames per call in the accuracy check (default 1 in step mode, 100 otherwise).
        state_pairs: input -> output names of the states, for files without edgernn metadata.
        fix: input name -> value (e.g. ``{"sr": 16000}``): quantize the graph specialised for
            those values (:func:`edgernn.converters.specialize.specialize`: an ``If`` on them keeps
            its taken branch, whose weights become constants to quantize); the inputs leave the
            quantized file, and sizes compare with the specialised float graph.
        min_size: ``dynamic`` and ``static``: weights of fewer elements stay float (their
            quantize/dequantize overhead costs more than int8 saves; :data:`MIN_SIZE`); 0 quantizes all.
        keep_debug_info: keep the exporter's per-node debug metadata (stack traces, module names)
            in the quantized file; by default it is dropped (names stay).

    Weights computed from constants in the graph (a weight chunked, sliced or transposed in
    forward) are folded to constants first (:func:`~edgernn.converters.quantize.graph.fold_weights`),
    so that they quantize; the accuracy check compares with the unfolded float file.

    Without ``data`` or ``calibration`` the accuracy check makes up streams; an axis of no fixed
    size but batch and time (a window of samples) takes the first size of
    :data:`~edgernn.converters.quantize.accuracy.WINDOW_SIZES` the float model takes (the report
    says which), and when it takes none :class:`QuantizeError` asks for ``data`` before anything
    is quantized.
    """
    from edgernn.converters.quantize import accuracy

    if method not in METHODS:
        raise QuantizeError(f"method {method!r} is unknown; expected one of {', '.join(METHODS)}")
    if steps < 1:
        raise QuantizeError(f"--steps must be at least 1, got {steps}")
    if min_size < 0:
        raise QuantizeError(f"--min-size must be at least 0, got {min_size}")
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise QuantizeError(f"--min-agreement must lie in [0, 1], got {min_agreement}")
    mf = _open(model, None if fix else state_pairs)
    spec = None
    if fix:
        from edgernn.converters.specialize import open_fixed

        file_size = mf.size_bytes
        try:
            mf, spec = open_fixed(mf, fix, state_pairs=state_pairs)
        except EdgernnError as e:  # a --fix that does not fit the file
            raise QuantizeError(str(e)) from None
    float_model, source, size_before = mf.proto, mf.source, mf.size_bytes
    target = None
    if write and (output is not None or source != "the model"):
        target = Path(output) if output is not None else default_output(source, method)
        if source != "the model" and target.exists() and target.resolve() == Path(source).resolve():
            raise QuantizeError(f"output {target} is the input file; choose another path with -o")
        if not target.parent.is_dir():
            raise QuantizeError(f"cannot write {target}: folder {target.parent} does not exist")
    names = {n.name for n, _ in work_nodes(float_model)}
    if not names:  # before the contract: a file with nothing to quantize is told so, not asked for state pairs
        raise QuantizeError(f"{source} has no recurrent, MatMul, Gemm or Conv node to quantize; nothing was written")
    contract, foreign_note = mf.contract, mf.foreign_note
    unknown = [n for n in exclude if n not in names]
    if unknown:
        raise QuantizeError(f"--exclude {unknown[0]!r} is not a quantizable node of {source} "
                            f"(see `edgernn info` or the report's node list)")
    if mf.contract_from != "metadata":  # the output follows the contract: states renamed state_in.<name> / state_out.<name>
        stamped = mf.stamped()
        contract = read_metadata(stamped, source)
        foreign_note += ("; the quantized file names them " +
                         ", ".join(f"{s.input} -> {s.output}" for s in contract.states))
    else:
        stamped = onnx.ModelProto.FromString(float_model.SerializeToString())
    float_bytes = stamped.SerializeToString()
    notes = [foreign_note] if foreign_note else []
    if spec is not None:
        notes.insert(0, spec.note())
        notes.append(f"sizes compare with the specialised float graph ({size_before:,} bytes; the file has "
                     f"{file_size:,})")

    def step(name: str) -> None:
        if progress:
            progress(name)

    calib_streams, calib_source = None, None
    if calibration is not None:
        calib_streams = accuracy.load_streams(calibration, contract)
        calib_source = f"calibration file {calibration}"
    eval_streams, eval_source = None, None
    if data is not None:
        eval_streams, eval_source = accuracy.load_streams(data, contract, what="data"), f"data file {data}"
    elif calib_streams is not None:
        eval_streams, eval_source = calib_streams, calib_source
    synthetic = f"synthetic data ({steps} frames of AR(1) noise per stream; pass --data for real data)"
    calib_chunk = chunk or (1 if contract.mode == "step" else 100)
    free = accuracy.FrameSizes()
    if "edgernn.tree" not in contract.extra and (eval_streams is None or (method == "static" and calib_streams is None)):
        try:  # before anything runs: made-up frames of an input without a fixed size take a size the model takes
            free = accuracy.frame_sizes(contract, float_bytes, source)
        except EdgernnError as e:
            raise QuantizeError(f"{e}; nothing was written") from None
        if free.note:
            notes.append(free.note)
    if spec is not None and eval_streams is not None:
        from edgernn.converters.specialize import verify_on_data

        try:
            verify_on_data(spec, mf.contract, eval_streams[0], whole_scalars=False)
        except EdgernnError as e:
            raise QuantizeError(str(e)) from None
        notes[0] = spec.note()

    if "edgernn.tree" in contract.extra and method != "dynamic":
        raise QuantizeError(f"{source} is a tree-network file: only --method dynamic is supported for it (static "
                            "calibration needs streams, and the float16 converter cannot type the node Loop's body)")
    step("fold constant weights")
    work, fold_note = fold_weights(stamped)  # the float reference stays the file as it was
    if fold_note:
        notes.append(fold_note)
    small = small_weights(work, min_size) if method in ("dynamic", "static") else {}
    small = {k: v for k, v in small.items() if k not in exclude}
    feeds = None
    if method == "static":
        if calib_streams is None:
            calib_streams = accuracy.synthetic_streams(contract, min(steps, 2000), seed=1, model=stamped,
                                                      free_size=free.size)
            calib_source = "synthetic data (no --calibration given)"
            notes.append("static calibration used synthetic data; pass --calibration with real streams")
        step("calibrate on streams")
        from edgernn.converters.quantize.static import stream_feeds

        feeds = stream_feeds(float_bytes, calib_streams, calib_chunk, CALIBRATION_CALLS)
        notes.append(f"calibrated on {len(feeds)} calls of {calib_source}, state carried from call to call")

    def build(float_nodes: Mapping[str, str]) -> tuple[onnx.ModelProto, bytes, list, list]:
        """The quantized file with ``float_nodes`` (name -> why) kept float besides ``exclude``."""
        step(f"quantize ({method})")
        q, done, kept = _quantize(work, method, feeds, per_channel, [*exclude, *float_nodes],
                                  contract.mode == "step" and "edgernn.tree" not in contract.extra)
        kept = [NodeDecision(d.name, d.op_type, d.dtype, float_nodes[d.name]) if d.name in float_nodes else d
                for d in kept]
        if not done and small and all(d.name in small for d in kept):
            raise QuantizeError(f"every weight of {source} is under --min-size {min_size} elements (the largest has "
                                f"{max(small.values())}): int8 would make the file larger and slower, so it stays "
                                "float; pass --min-size 0 to quantize it anyway; nothing was written")
        if not done:
            why = "; ".join(sorted({d.why for d in kept})[:3]) or "no node qualified"
            raise QuantizeError(f"{method} quantization changed no node of {source} ({why}); nothing was written")
        # stored start values (init {"initializer": ...}) are read by runtimes, not by nodes: the
        # quantizers drop them as unused, so put them back as they were
        starts = {s.init["initializer"] for s in contract.states if isinstance(s.init, dict)}
        have = {t.name for t in q.graph.initializer}
        q.graph.initializer.extend(t for t in stamped.graph.initializer if t.name in starts and t.name not in have)
        info = {"method": method, "per_channel": per_channel, "quantized": sorted({d.name for d in done}),
                "kept_float": sorted({d.name for d in kept}), "calibration": calib_source}
        write_metadata(q, Contract(contract.mode, contract.inputs, contract.outputs, contract.states,
                                   {**contract.extra, "edgernn.quantization": json.dumps(info)}))
        if not keep_debug_info:
            strip_debug_info(q)
        return q, q.SerializeToString(), done, kept

    float_nodes = {name: _small_why(n, min_size) for name, n in small.items()}
    q, q_bytes, done, kept = build(float_nodes)
    if method in ("dynamic", "static") and min_size > 0 and len(q_bytes) > size_before:
        # int8 nodes cost graph bytes (quantize/dequantize nodes, scales; a recurrent cell lowered
        # to a Scan body) that small weights do not pay back: keep the smallest float, one by one,
        # until the file is no larger than the float file
        weights = node_weights(work)
        grown = sorted(_origins(done, weights), key=lambda w: weights[w])
        for name in grown:
            if len(q_bytes) <= size_before:
                break
            float_nodes[name] = (f"int8 made the file larger than its float file ({len(q_bytes):,} > "
                                 f"{size_before:,} bytes): its {weights[name]:,} weight elements save less than its "
                                 "int8 nodes cost")
            if len(float_nodes) - len(small) == len(grown):  # nothing would be left to quantize
                raise QuantizeError(
                    f"int8 makes {source} larger than its float file ({len(q_bytes):,} > {size_before:,} bytes) "
                    f"with any of its nodes quantized: its weights are too small for int8 to pay, so it stays float; "
                    "pass --min-size 0 to write the larger file anyway; nothing was written")
            q, q_bytes, done, kept = build(float_nodes)
        notes.append(f"kept {len(float_nodes) - len(small)} node(s) float that made the int8 file larger than the "
                     f"float file (--min-size 0 quantizes them)")
    sizes = SizeSplit(size_before, weight_bytes(float_model), len(q_bytes), weight_bytes(q))
    if len(q_bytes) > size_before:
        notes.append(f"the {method} file is larger than its float file ({len(q_bytes):,} > {size_before:,} bytes): "
                     "its weights are too small for it to pay; keep the float file")

    step("accuracy check")
    if "edgernn.tree" in contract.extra:  # tree files take structure arrays: compare on random forests
        from edgernn.converters.tree import compare_tree_files

        acc = compare_tree_files(float_bytes, q_bytes)
        return _finish(QuantizeReport(method, source, None, size_before, len(q_bytes), done, kept, acc, max_error,
                                      min_agreement, notes, q, sizes), target, q_bytes)
    if eval_streams is None:
        eval_streams = accuracy.synthetic_streams(contract, steps, seed=0, model=stamped, free_size=free.size)
        eval_source = synthetic
    acc: AccuracyReport = accuracy.compare(float_bytes, q_bytes, eval_streams, chunk=chunk,
                                           data_source=eval_source)
    slow = _slower_note(acc, work, done, method)
    report = QuantizeReport(method, source, None, size_before, len(q_bytes), done, kept, acc, max_error,
                            min_agreement, [*notes, *acc.notes, *slow], q, sizes)
    return _finish(report, target, q_bytes)


def _quantize(work: onnx.ModelProto, method: str, feeds: Any, per_channel: bool, exclude: Sequence[str],
              step_mode: bool) -> tuple[onnx.ModelProto, list, list]:
    """``work`` quantized by ``method``: the model, the nodes changed and those kept float."""
    if method == "dynamic":
        from edgernn.converters.quantize.dynamic import quantize_dynamic_int8

        return quantize_dynamic_int8(work, per_channel=per_channel, exclude=exclude, step=step_mode)
    if method == "static":
        from edgernn.converters.quantize.static import quantize_static_int8

        return quantize_static_int8(work, feeds, per_channel=per_channel, exclude=exclude)
    from edgernn.converters.quantize.fp16 import to_fp16

    return to_fp16(work, mixed=method == "mixed", exclude=exclude)


def _origins(done: Sequence[NodeDecision], names: Iterable[str]) -> set[str]:
    """The nodes of ``names`` that ``done`` quantized: by name, or (a recurrent cell lowered for
    int8, which reports the MatMuls of its body) by the "<cell>." their names start with."""
    return {w for w in names if any(d.name == w or d.name.startswith(w + ".") for d in done)}


SLOWER = 1.5
"""A quantized file whose p50 call in the accuracy check takes this many times the float file's
gets a note saying so (and why, where the cause is known)."""


def _slower_note(acc: AccuracyReport, work: onnx.ModelProto, done: Sequence[NodeDecision], method: str) -> list[str]:
    ratio = acc.latency_ratio
    if ratio is None or ratio < SLOWER:
        return []
    note = (f"the {method} file is {ratio:.1f}x slower per call than the float file (p50 in the accuracy check, "
            f"{acc.quantized_call_us:.0f} vs {acc.float_call_us:.0f} us)")
    lowered = sorted(_origins(done, [n.name for n in work.graph.node if n.op_type in ("GRU", "RNN") and n.name]))
    if lowered:
        note += (f": onnxruntime has no int8 {'/'.join(sorted({n.op_type for n in work.graph.node if n.name in lowered}))}"
                 f" kernel, so {', '.join(lowered)} runs as a Scan loop of int8 MatMuls, one step at a time; where "
                 f"latency matters more than size, keep it float with --exclude {lowered[0]}")
    return [note]


def _small_why(elements: int, min_size: int) -> str:
    return (f"its weight has {elements} elements, under --min-size {min_size}: int8 would cost more than it saves "
            "(quantize/dequantize nodes and scales)")


def _finish(report: QuantizeReport, target: Path | None, q_bytes: bytes) -> QuantizeReport:
    """Write the file if the accuracy check passed the user's thresholds; else raise, writing nothing."""
    failure = None if report.passed else QuantizeError(
        "the quantized model fails the accuracy check: " + "; ".join(report.failures) + "; nothing was written")
    return write_checked(report, target, q_bytes, failure)


__all__ = ["quantize", "METHODS", "MIN_SIZE", "QuantizeReport", "QuantizeError", "NodeDecision", "default_output"]
