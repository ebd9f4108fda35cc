"""``pack``: an edgernn ONNX file -> a deployment folder for another runtime.

Target ``ort``: the model in ORT format (the format of onnxruntime's minimal, mobile and web
builds) and the reduced-operator config that a minimal onnxruntime build takes to include only
the kernels the model needs, both written by onnxruntime's own converter
(``onnxruntime.tools.convert_onnx_models_to_ort``), plus a README.md with the build command,
how to load the file and its state contract. onnxruntime's prebuilt reduced-size packages are
built from a fixed operator list that may leave out the recurrent kernels (LSTM, GRU, RNN and the
quantized DynamicQuantizeLSTM); a minimal build from this config has exactly what the model needs.

The folder is made next to its destination under a temporary name and renamed into place once
every file is written and the ``.ort`` file streams like the ``.onnx`` one: a failure leaves
nothing behind. See docs/deploy.md, "ORT format for mobile and minimal builds".

The ``.ort`` file keeps the ``metadata_props`` of the ONNX file, so an edgernn file's contract
travels with it and ``StreamingSession("model.ort")`` works as on the ``.onnx`` file. A file from
another exporter is packed with its inferred contract stamped in (states renamed
``state_in.<name>`` / ``state_out.<name>``, as ``triton_repository`` does), so its contract
travels too. Stored start values of states (``init: {"initializer": ...}``) do not: onnxruntime
drops them as unused initializers, so they go next to the ``.ort`` file
(``<name>.state_init.npz``), where :class:`~edgernn.modelfile.ModelFile` (and so
``StreamingSession``) reads them. The folder's README is written by
:mod:`edgernn.runtimes.pack_readme`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from edgernn.contract import Contract, ContractError, contract_json_text, read_metadata
from edgernn.errors import EdgernnError
from edgernn.recurrent_kinds import ONNX_OPS
from edgernn.modelfile import CONTRACT_SUFFIX, STATE_INIT_SUFFIX, ModelFile, ModelFileError, is_ort_format
from edgernn.runtimes.ort_convert import ConvertError, convert, ort_format_version, rewrite_config
from edgernn.runtimes.pack_readme import build_command, folder_readme

TARGETS = {"ort": "ORT format and reduced-operator config for onnxruntime mobile and minimal builds"}
OPTIMIZATIONS = ("basic", "extended", "all")

_CHECK_FRAMES = 12  # frames of the streamed parity check
_CHECK_CHUNK = 4  # frames per call in chunk mode (3 calls, state carried)


class PackError(EdgernnError):
    """The model cannot be packed as asked (bad target, input or output folder)."""


@dataclass
class PackReport:
    """What ``pack`` wrote: the folder, each file's size, the operators the model needs, and the
    streamed parity of the packed model with the ONNX file.

    ``onnx_bytes`` is the size of the source ONNX file, ``ort_bytes`` of the ``.ort`` file,
    ``config_bytes`` of the operator config; ``files`` maps every file written to its size.
    ``ops`` holds the config's entries as ``(domain, opset, [op, ...])``. ``metadata_kept``
    says whether the ``.ort`` file carries the edgernn contract in its metadata (always, for an
    edgernn file). ``parity``: the largest abs difference of each output and state over a
    streamed rollout (``None`` when not checked; ``notes`` says why).
    """

    target: str
    source: str
    output_dir: str
    ort_path: str
    config_path: str
    onnx_bytes: int
    ort_bytes: int
    config_bytes: int
    files: dict[str, int]
    ops: list[tuple[str, int, list[str]]]
    optimization: str
    type_reduction: bool
    onnxruntime_version: str
    ort_format_version: str
    contract: Contract
    contract_from: str
    metadata_kept: bool
    build_command: str
    parity: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    # mobile execution providers (NNAPI, CoreML): nodes they take and ops they leave to the CPU
    mobile_eps: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def config_lines(self) -> list[str]:
        """The config's entries as written (``domain;opset;op1,op2``)."""
        return [f"{d};{v};{','.join(ops)}" for d, v, ops in self.ops]

    def to_json(self) -> dict:
        return {
            "target": self.target, "source": self.source, "output_dir": self.output_dir,
            "ort_path": self.ort_path, "config_path": self.config_path,
            "sizes": {"onnx_bytes": self.onnx_bytes, "ort_bytes": self.ort_bytes, "config_bytes": self.config_bytes},
            "files": dict(self.files),
            "ops": [{"domain": d, "opset": v, "ops": list(ops)} for d, v, ops in self.ops],
            "optimization": {"level": self.optimization, "style": "Fixed"},
            "type_reduction": self.type_reduction,
            "onnxruntime_version": self.onnxruntime_version, "ort_format_version": self.ort_format_version,
            "mode": self.contract.mode, "contract_from": self.contract_from, "metadata_kept": self.metadata_kept,
            "build_command": self.build_command, "parity": self.parity, "notes": list(self.notes),
            "mobile_eps": dict(self.mobile_eps),
        }


def pack(model: str | os.PathLike, output_dir: str | os.PathLike | None = None, *, target: str = "ort",
         optimization: str = "all", type_reduction: bool = False, copy_onnx: bool = True, overwrite: bool = False,
         state_pairs: Mapping[str, str] | None = None, verify: bool = True, tolerance: float = 1e-4,
         progress: Callable[[str], None] | None = None, fix: Mapping[str, Any] | None = None) -> PackReport:
    """Pack the ONNX file ``model`` for ``target`` into the folder ``output_dir``.

    Args:
        model: an edgernn ONNX file (or a stateful ONNX file from another exporter: its contract
            is inferred as ``edgernn info`` does, ``state_pairs`` naming pairs the rule misses).
        output_dir: the folder to write (default: ``<name>-ort`` next to the model). It must not
            exist, or be empty, or ``overwrite`` must be given (then the files packed replace
            those of the same names and other files stay).
        target: ``ort`` (see :data:`TARGETS`).
        optimization: onnxruntime graph optimization level baked into the ``.ort`` file:
            ``all`` (default, as onnxruntime's converter: fused CPU kernels, nothing
            machine-specific: the x86-only NCHWc layout is left out), ``extended`` or ``basic``
            (standard ONNX operators only; for an app that hands nodes to NNAPI, CoreML or
            XNNPACK). Always the *Fixed* style: optimizations applied before saving, so the file
            runs as is in a plain minimal build (docs/deploy.md says why not *Runtime*).
        type_reduction: also record the element types each operator needs
            (``<name>.required_operators_and_types.config``; build with
            ``--enable_reduced_operator_type_support`` for a smaller binary).
        copy_onnx: put a copy of the ONNX file in the folder (for full builds and tools that read
            ONNX; the operator config can be made again from it).
        verify: stream random data through the ``.onnx`` and the ``.ort`` file, carrying state
            over several calls, and refuse to write when an output or state differs by more
            than ``tolerance`` (relative to the output's scale, at least 1).
        progress: called with the name of each stage.
        fix: input name -> value (e.g. ``{"sr": 16000}``): pack the graph specialised for those
            values (:func:`edgernn.converters.specialize.specialize`); the inputs leave it, and the
            folder's ``.onnx`` is the specialised graph.

    Raises :class:`PackError` (one sentence) for an unknown target, a missing file, a file that is
    not a stateful ONNX model, or an output folder that cannot be written; nothing is written then.
    """
    step = progress or (lambda _stage: None)
    if target not in TARGETS:
        names = "; ".join(f"{k} ({v})" for k, v in TARGETS.items())
        raise PackError(f"target {target!r} is unknown; the targets are: {names}")
    if optimization not in OPTIMIZATIONS:
        raise PackError(f"optimization {optimization!r} is unknown; expected one of {', '.join(OPTIMIZATIONS)}")
    step("read")
    src = Path(model)
    mf = _open_source(src, None if fix else state_pairs)
    spec = None
    if fix:
        from edgernn.converters.specialize import open_fixed

        try:
            mf, spec = open_fixed(mf, fix, state_pairs=state_pairs)
            mf.contract  # noqa: B018 - resolved here, so that its sentence is a PackError
        except EdgernnError as e:  # a --fix that does not fit, or the contract of what is left
            raise PackError(str(e)) from None
    name = src.name[: -len(".onnx")] if src.name.lower().endswith(".onnx") and len(src.name) > 5 else src.name
    out = Path(output_dir) if output_dir is not None else src.parent / f"{name}-{target}"
    if out.name in ("", ".", ".."):  # "." or "..": name the folder, so that its parent can hold the staging one
        out = Path(os.path.abspath(out))
    _check_output(out, overwrite)

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        report = _pack_ort(mf, name, staging, out,
                           optimization=optimization, type_reduction=type_reduction, copy_onnx=copy_onnx,
                           verify=verify, tolerance=tolerance, step=step)
        if spec is not None:
            report.notes.insert(0, spec.note())
        step("write")
        _move_into_place(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report.files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.name in report.files}
    return report


# ---------------------------------------------------------------------------------------------
# input and output checks
# ---------------------------------------------------------------------------------------------

def _open_source(src: Path, state_pairs: Mapping[str, str] | None) -> ModelFile:
    """The ONNX file to pack, its contract resolved (:class:`~edgernn.modelfile.ModelFile`)."""
    if not src.is_file():
        raise PackError(f"{src} does not exist or is not a file")
    if is_ort_format(src):
        raise PackError(f"{src} is already an ORT-format model; pack the .onnx file it was made from")
    try:
        mf = ModelFile.open(src, state_pairs=state_pairs)
        if not mf.proto.graph.node:
            raise PackError(f"{src} is not an ONNX model (onnx.load could not parse it into a graph)")
        mf.with_weights()
        mf.contract  # noqa: B018 - resolved here, so that its sentence is a PackError
    except ContractError as e:
        raise PackError(str(e)) from None
    except ModelFileError as e:
        raise PackError(str(e).replace("could not parse it)", "could not parse it into a graph)")) from None
    return mf


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise PackError(f"output {out} is a file; pack writes a folder, so give a folder path")
    if not out.parent.is_dir():
        raise PackError(f"cannot write {out}: folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise PackError(f"cannot write {out}: folder {out.parent} is not writable")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise PackError(f"output folder {out} is not empty; choose another folder or allow overwriting")


def _move_into_place(staging: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished staging folder to ``out`` when there is none (all at once); into an
    existing folder (empty, or any with ``overwrite``) move the files one by one, each replaced
    atomically, so that the folder itself (a shell's working directory, its permissions) stays."""
    if not out.exists():
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700; give the folder the usual permissions
        try:
            os.rename(staging, out)
            return
        except OSError as e:
            if not out.is_dir():  # not made meanwhile by someone else
                raise PackError(f"cannot write {out}: {e.strerror or e}") from None
    if any(out.iterdir()) and not overwrite:  # filled meanwhile
        raise PackError(f"output folder {out} is not empty; choose another folder or allow overwriting")
    for f in sorted(staging.iterdir()):
        os.replace(f, out / f.name)
    staging.rmdir()


# ---------------------------------------------------------------------------------------------
# target ort
# ---------------------------------------------------------------------------------------------

def _pack_ort(mf: ModelFile, name: str, staging: Path, out: Path, *, optimization: str, type_reduction: bool, copy_onnx: bool, verify: bool,
              tolerance: float, step: Callable[[str], None]) -> PackReport:
    import onnxruntime as ort

    notes: list[str] = []
    src, contract, external = mf.path or Path(mf.source), mf.contract, mf.uses_external_data
    renamed = mf.contract_from != "metadata"
    if renamed:  # a file from another exporter: packed as an edgernn file, its contract in the metadata
        model = mf.stamped()
        contract = read_metadata(model, str(src))
        notes.append(f"{mf.foreign_note}; the packed model names its states state_in.<name> / state_out.<name>, "
                     "so that its contract travels in the .ort file's metadata")
    else:
        model = mf.with_weights()
    data = model.SerializeToString() if external or renamed else mf.data  # weights inline for the converter
    try:
        stored = mf.stored_initializers()
    except ContractError as e:
        raise PackError(str(e)) from None
    step("convert")
    try:
        ort_tmp, config_tmp = convert(data, model, stored, staging, optimization, type_reduction, str(src))
    except ConvertError as e:
        raise PackError(str(e)) from None
    config_kind = "required_operators_and_types" if type_reduction else "required_operators"
    ort_path, config_path = staging / f"{name}.ort", staging / f"{name}.{config_kind}.config"
    os.replace(ort_tmp, ort_path)
    ops = rewrite_config(config_tmp, config_path, ort_path.name, optimization, ort.__version__)
    shutil.rmtree(staging / ".convert", ignore_errors=True)

    try:
        session = ort.InferenceSession(str(ort_path), _quiet_options(), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise PackError(f"onnxruntime cannot load the ORT-format model made from {src}: "
                        f"{str(e).splitlines()[0][:300]}") from None
    del session
    kept = "edgernn.format" in ModelFile.open(ort_path).metadata
    format_version = ort_format_version(ort_path.read_bytes())

    parity = None
    if verify:
        step("verify")
        parity = _check_parity(data, model, ort_path, contract, tolerance, str(src), notes)

    files = [ort_path.name, config_path.name]
    if copy_onnx:
        target = staging / f"{name}.onnx"
        if not (external or renamed or mf.path is None):
            shutil.copyfile(src, target)
        else:  # weights were in external files, the states were renamed or inputs fixed: the model packed
            target.write_bytes(data)
            if external:
                notes.append(f"{src.name} keeps its weights in external files; {target.name} holds them inline")
        files.append(target.name)
    sidecars = ModelFile.open(model).sidecars(name, stored)  # the stored start values, if any
    if not kept:  # (onnxruntime keeps metadata_props in the ORT format; a guard, should one drop them)
        sidecars[name + CONTRACT_SUFFIX] = contract_json_text(contract).encode()
    for file, content in sidecars.items():
        (staging / file).write_bytes(content)
        files.append(file)
    if not kept:
        notes.append(f"the contract is not in the .ort file's metadata; {name}{CONTRACT_SUFFIX} next to it holds it, "
                     f"and StreamingSession(\"{ort_path.name}\") reads it")
    if stored:
        notes.append(f"onnxruntime drops the stored start values of states ({', '.join(stored)}) from the .ort "
                     f"file as unused initializers; {name}{STATE_INIT_SUFFIX} holds them")
    build = build_command(config_path.name, type_reduction)
    if any(d == "com.microsoft" for d, _, _ in ops):
        notes.append("the model uses onnxruntime contrib operators (com.microsoft): do not build with "
                     "--disable_contrib_ops")
    mobile = mobile_ep_support(model)
    for ep, info in mobile.items():
        if info["unsupported_ops"]:
            hint = (" (a step-mode export with --cells matmul has MatMul cells instead of recurrent ops)"
                    if set(info["unsupported_ops"]) & set(ONNX_OPS) else "")
            notes.append(f"{ep} takes {info['supported_nodes']} of {info['nodes']} nodes; these ops stay on the CPU: "
                         f"{', '.join(info['unsupported_ops'])}{hint}")
    sizes = {f: (staging / f).stat().st_size for f in files}
    report = PackReport(
        target="ort", source=str(src), output_dir=str(out), ort_path=str(out / ort_path.name),
        config_path=str(out / config_path.name), onnx_bytes=mf.size_bytes, ort_bytes=sizes[ort_path.name],
        config_bytes=sizes[config_path.name], files=sizes, ops=ops, optimization=optimization,
        type_reduction=type_reduction, onnxruntime_version=ort.__version__, ort_format_version=format_version,
        contract=contract, contract_from=mf.contract_from, metadata_kept=kept, build_command=build, parity=parity,
        notes=notes, mobile_eps=mobile)
    readme = staging / "README.md"
    readme.write_text(folder_readme(report, name, stored))
    report.files["README.md"] = readme.stat().st_size
    return report


def _quiet_options():
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return opts


def _check_parity(data: bytes, model, ort_path: Path, contract: Contract, tolerance: float, source: str,
                  notes: list[str]) -> dict[str, Any] | None:
    """Stream the same random frames through the .onnx and the .ort model, carrying state over
    several calls from zero states; raise when they differ by more than ``tolerance``."""
    from edgernn.converters.quantize.accuracy import synthetic_streams
    from edgernn.runtimes.session import StreamingSession

    if "edgernn.tree" in contract.extra:
        notes.append("parity of the .ort file not checked: tree models take structure arrays, not streams")
        return None
    zeros = replace(contract, states=tuple(replace(s, init="zeros") for s in contract.states))  # from a known state
    try:
        ref = StreamingSession(data, contract=zeros)
        cand = StreamingSession(str(ort_path), contract=zeros)
    except EdgernnError as e:
        raise PackError(f"the ORT-format model made from {source} cannot be checked: {e}") from None
    chunk = {"step": 1, "chunk": _CHECK_CHUNK}.get(contract.mode, _CHECK_FRAMES)
    runs = 2 if contract.mode == "sequence" else 1  # a sequence model: carry state into a second call
    try:
        streams = synthetic_streams(contract, _CHECK_FRAMES, streams=2, seed=0, model=model)
        outs_ref = [ref.stream(chunk=chunk, **streams[0]) for _ in range(runs)]
    except Exception as e:  # the data does not fit the model (not the .ort file's fault)
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        notes.append(f"parity of the .ort file not checked: random streams do not fit this model ({first})")
        return None
    try:
        outs_cand = [cand.stream(chunk=chunk, **streams[0]) for _ in range(runs)]
    except Exception as e:
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise PackError(f"the ORT-format model made from {source} fails on data the .onnx file takes ({first}); "
                        "nothing was written") from None
    errors: dict[str, float] = {}
    worst = None
    for a, b in zip(outs_ref, outs_cand):
        for k in a:
            err, scale = _max_diff(a[k], b[k])
            errors[k] = max(errors.get(k, 0.0), err)
            if err > tolerance * max(1.0, scale) and worst is None:
                worst = (f"output {k!r}", err)
    state_ref, state_cand = ref.state, cand.state
    state_errors = {}
    for k in state_ref:
        err, scale = _max_diff(state_ref[k], state_cand[k])
        state_errors[k] = err
        if err > tolerance * max(1.0, scale) and worst is None:
            worst = (f"state {k!r}", err)
    calls = runs * -(-_CHECK_FRAMES // chunk)
    if worst is not None:
        raise PackError(f"the ORT-format model made from {source} does not match it: {worst[0]} differs by "
                        f"{worst[1]:.3g} over {calls} streamed calls (tolerance {tolerance:g}); nothing was written")
    return {"frames": _CHECK_FRAMES * runs, "calls": calls, "streams": 2, "tolerance": tolerance,
            "max_abs_error": errors, "state_errors": state_errors, "passed": True}


def _max_diff(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if a.shape != b.shape:
        return float("inf"), 0.0
    if a.size == 0:
        return 0.0, 0.0
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    err = float(d.max()) if np.all(np.isfinite(d)) else float("inf")
    return err, float(np.abs(a.astype(np.float64)).max())


# ---------------------------------------------------------------------------------------------
# what mobile execution providers take
# ---------------------------------------------------------------------------------------------

def mobile_ep_support(model) -> dict[str, dict[str, Any]]:
    """Which nodes of ``model`` (an ``onnx.ModelProto``) onnxruntime's NNAPI (Android) and CoreML
    (iOS, ML Program) providers would take, by onnxruntime's own usability checker
    (``onnxruntime.tools.mobile_helpers``); the ops they do not take run on the CPU provider.
    Empty when the checker is unavailable in this onnxruntime."""
    try:
        from onnxruntime.tools.mobile_helpers import usability_checker as checker
    except ImportError:
        return {}
    out: dict[str, dict[str, Any]] = {}
    probes = {"NNAPI": lambda: checker.check_nnapi_partitions(model, False),
              "CoreML": lambda: checker.check_coreml_partitions(model, False, "coreml_supported_mlprogram_ops.md")}
    for ep, probe in probes.items():
        try:
            info = probe()
        except Exception:  # the checker's own limits (e.g. an op type it cannot read): leave it out
            continue
        ops = sorted({o.split(":", 1)[-1] for o in info.unsupported_ops})
        out[ep] = {"nodes": int(info.num_nodes), "supported_nodes": int(info.num_supported_nodes),
                   "unsupported_ops": ops}
    return out


__all__ = ["pack", "PackReport", "PackError", "TARGETS", "OPTIMIZATIONS", "mobile_ep_support"]
