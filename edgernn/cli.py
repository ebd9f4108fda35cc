"""The ``edgernn`` command line: a thin typer layer over the library.

Each command parses its arguments, calls one library function and prints the report it returns
(rich tables, or JSON with ``--json``). The options that several commands share are defined once
in :mod:`edgernn._cli_options`, the printing is in :mod:`edgernn._cli_print`. Heavy imports (torch,
onnx, onnxruntime, numpy) happen inside the commands, so ``edgernn --help`` imports none.

Exit status: 0 on success; 1 with one ``error:`` sentence for what is wrong with a file, a model or
the data (the library's errors, nothing written); 2 with one ``error:`` sentence for a malformed
command line (an unknown option or command, a value outside a choice or a range, a malformed
``IN=OUT``), before anything is read.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, List, Optional

import typer
from typer.core import TyperGroup

from edgernn._cli_options import (
    AllowFallback, AllowPickle, BatchFirst, BatcherStrategy, Cells, ClassPath, ConfigFile, InstanceKind, Json, Method,
    Mode, NonFinite, NonlinearityOption, OnnxModel, Optimization, Overwrite, Providers, StateLayout, StatePairs, Target, Threads,
    TorchModel, TreeStrategy, TritonBackend, UsageError, check_input_declarations, check_named_data, check_runtimes, chunk_option,
    fixes, load_options, output_option, split_names, state_pairs, Fixes, KeepDebugInfo,
)


class _Group(TyperGroup):
    """typer's group, with a malformed command line answered like the library's errors: one
    ``error:`` sentence on stderr (naming the command's --help), exit status 2."""

    def make_context(self, *args: Any, **kwargs: Any):
        with _usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _usage_errors():
            return super().invoke(ctx)


@contextmanager
def _usage_errors() -> Iterator[None]:
    try:
        yield
    except UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `edgernn` alone: typer prints the help
            raise
        from edgernn._cli_print import print_error

        # typer words a value outside a Literal as pydantic's "Value error, 'x' is not one of ..."
        message = e.format_message().replace("Value error, ", "").rstrip(".")
        print_error(message + (f"; see '{e.ctx.command_path} --help'" if e.ctx is not None else ""))
        raise typer.Exit(2) from None


app = typer.Typer(
    name="edgernn",
    cls=_Group,
    help="Export recurrent PyTorch models to streaming ONNX with explicit state I/O, verified against "
         "PyTorch, and run them with onnxruntime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show(report, as_json: bool, printer: Callable[..., None], *args: Any, **extra: Any) -> None:
    """Print ``report`` as JSON (with ``extra`` keys) or with ``printer``."""
    if as_json:
        print(json.dumps({**report.to_json(), **extra}, indent=2))
    else:
        printer(report, *args)


def _interactive(as_json: bool) -> bool:
    """Show progress on stderr: a terminal, and not a JSON report."""
    return not as_json and sys.stderr.isatty()


ExportOutput = output_option("ONNX file to write.", "MODEL.onnx")


@app.command()
def export(
    model: TorchModel,
    output: ExportOutput = None,
    mode: Annotated[Mode, typer.Option("--mode", "-m", help=(
        "chunk: any number of frames per call; step: one frame per call; sequence: whole sequences "
        "(bidirectional)."))] = "chunk",
    state_layout: Annotated[StateLayout, typer.Option("--state-layout", help=(
        "native: states in PyTorch's layout, (layers * directions, batch, hidden); batch-major: every state with "
        "the batch axis first, (batch, ...), for runtimes that need it, e.g. Triton's implicit state."))] = "native",
    cells: Annotated[Cells, typer.Option("--cells", help=(
        "Step mode: auto (ONNX GRU/LSTM ops, MatMul cells for Elman RNN: fastest on onnxruntime CPU) or matmul "
        "(MatMul cells only, for runtimes without the recurrent ops, e.g. onnxruntime's mobile package)."))] = "auto",
    opset: Annotated[int, typer.Option("--opset", min=18, help=(
        "ONNX opset: 18 or newer, up to the newest your torch's exporter writes (25 with torch 2.13)."))] = 18,
    class_path: ClassPath = None,
    config: ConfigFile = None,
    inputs: Annotated[Optional[List[str]], typer.Option(
        "--input", metavar="NAME:DTYPE:DIMS", callback=check_input_declarations,
        help="Declare a forward argument as NAME:DTYPE:DIMS, B = batch axis, T = time axis, e.g. x:float32:B,T,40. "
             "Repeatable.")] = None,
    states: Annotated[Optional[List[str]], typer.Option("--state", metavar="NAME", help=(
        "Forward argument that carries state, wherever it sits in the signature (default: names like "
        "state, hidden, memory, cache, buffer, carry, hx, h0, c0, except switches with a bool or number "
        "default). Repeatable."))] = None,
    output_names: Annotated[Optional[str], typer.Option(
        "--output-names", metavar="NAME,...", help="Comma-separated data output names.")] = None,
    batch_first: BatchFirst = None,
    nonlinearity: NonlinearityOption = None,
    allow_pickle: AllowPickle = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help=(
        "Check parity with PyTorch (on by default)."))] = True,
    tolerance: Annotated[float, typer.Option("--tolerance", min=0.0, help=(
        "Largest error allowed, relative to max(1, |output|)."))] = 1e-5,
    tree_strategy: Annotated[TreeStrategy, typer.Option("--tree-strategy", help=(
        "Tree networks: levels (a Loop over depth levels, each level one block; the fastest) or nodes (a Loop "
        "over each level's nodes)."))] = "levels",
    all_nodes: Annotated[bool, typer.Option("--all-nodes", help=(
        "Tree networks: also output every node's state."))] = False,
    keep_debug_info: KeepDebugInfo = False,
    as_json: Json = False,
) -> None:
    """Export MODEL to ONNX with explicit state inputs/outputs, verify it against PyTorch, and report.

    Exits non-zero (and writes nothing) if the export does not match PyTorch.
    """
    from edgernn._cli_print import print_export, status, user_errors
    from edgernn.api import export_file

    with user_errors(), status(_interactive(as_json), "exporting...") as progress:
        report = export_file(model, output, mode=mode, opset=opset, class_path=class_path, config=config,
                             allow_pickle=allow_pickle, nonlinearity=nonlinearity, batch_first=batch_first,
                             inputs=inputs or (), state_args=states or None, output_names=split_names(output_names),
                             verify=verify, tolerance=tolerance, tree_strategy=tree_strategy, all_nodes=all_nodes,
                             cells=cells, state_layout=state_layout, keep_debug_info=keep_debug_info,
                             progress=progress and (lambda name: progress(f"export: {name}")))
    _show(report, as_json, print_export)


@app.command()
def info(model: OnnxModel, state_pair: StatePairs = None, fix: Fixes = None, as_json: Json = False) -> None:
    """Show a file's data inputs/outputs and state pairs, read from its edgernn metadata or inferred from its graph."""
    from edgernn._cli_print import print_info, user_errors
    from edgernn.api import info as info_fn

    with user_errors():
        report = info_fn(model, state_pairs=state_pairs(state_pair), fix=fixes(fix))
    _show(report, as_json, print_info)


RunChunk = chunk_option("Frames per call.", "1 in step mode, the whole stream otherwise")
RunOutput = output_option("Save outputs (.npy for one output, .npz for several).", "")


@app.command()
def run(
    model: OnnxModel,
    data: Annotated[List[str], typer.Option(
        "--data", "-d", metavar="[NAME=]FILE.npy", callback=check_named_data,
        help="A .npy array in the model's input layout (a per-frame model takes a leading time axis). For several "
             "inputs: NAME=FILE.npy, repeated.")],
    chunk: RunChunk = None,
    output: RunOutput = None,
    threads: Threads = 1,
    state_pair: StatePairs = None,
    fix: Fixes = None,
    provider: Providers = None,
    fallback: AllowFallback = False,
    align: Annotated[bool, typer.Option("--align", help=(
        "Outputs with lookahead (delay): drop their first delay frames and feed zero frames at the end, giving "
        "the model's frames on the whole sequence (default: as the file produces them)."))] = False,
    nonfinite: Annotated[NonFinite, typer.Option("--nonfinite", help=(
        "NaN or infinity in the data or the carried state: raise (stop with a sentence naming the input or "
        "state and the frame), reset (that stream starts over from its start state) or ignore (no check)."))
    ] = "raise",
    as_json: Json = False,
) -> None:
    """Stream an array through MODEL, CHUNK frames per call, carrying state between calls."""
    from edgernn._cli_print import print_run, user_errors
    from edgernn.api import check_not_an_input, load_array, run as run_fn
    from edgernn.modelfile import ModelFile

    with user_errors():
        opened = ModelFile.open(model, state_pairs=state_pairs(state_pair))  # a missing model is said first
        check_not_an_input(output, [model, *(item.partition("=")[2] or item for item in data)])
        if "=" in data[0]:  # NAME=FILE.npy for every input (check_named_data saw to it)
            arrays = {name: load_array(file) for name, _, file in (item.partition("=") for item in data)}
        else:
            arrays = load_array(data[0])
        report, _ = run_fn(opened, arrays, chunk=chunk, output=output, threads=threads, providers=split_names(provider),
                           allow_fallback=fallback, align=align, fix=fixes(fix), nonfinite=nonfinite)
    _show(report, as_json, print_run)


QuantizeOutput = output_option("File to write.", "MODEL.int8.onnx, .qdq, .fp16 or .mixed by method")
QuantizeChunk = chunk_option("Frames per call in the accuracy check.", "1 in step mode, 100 otherwise")


@app.command()
def quantize(
    model: OnnxModel,
    output: QuantizeOutput = None,
    method: Annotated[Method, typer.Option("--method", help=(
        "dynamic: int8 weights, activations quantized per call; static: int8 QDQ calibrated on streams; fp16; "
        "mixed: fp16 with the recurrent state path in fp32."))] = "dynamic",
    calibration: Annotated[Optional[Path], typer.Option("--calibration", help=(
        ".npy/.npz streams in the model's input layout, for static calibration (and the accuracy check)."))] = None,
    data: Annotated[Optional[Path], typer.Option(
        "--data", "-d", help="Held-back .npy/.npz streams for the accuracy check (needed when an input has no fixed "
                             "frame size, such as silero-vad's samples axis).",
        show_default="the calibration file, else synthetic data")] = None,
    per_channel: Annotated[bool, typer.Option("--per-channel", help="One int8 scale per output channel.")] = False,
    exclude: Annotated[Optional[List[str]], typer.Option("--exclude", metavar="NODE", help=(
        "Node name to keep in float. Repeatable."))] = None,
    max_error: Annotated[Optional[float], typer.Option("--max-error", min=0.0, help=(
        "Fail if any output differs from the float model by more than this."))] = None,
    min_agreement: Annotated[Optional[float], typer.Option("--min-agreement", min=0.0, max=1.0, help=(
        "Fail if classifier decisions agree on fewer than this fraction of frames (0-1)."))] = None,
    frames: Annotated[int, typer.Option("--frames", min=1, help=(
        "Frames per synthetic stream in the accuracy check."))] = 10_000,
    chunk: QuantizeChunk = None,
    state_pair: StatePairs = None,
    fix: Fixes = None,
    min_size: Annotated[int, typer.Option("--min-size", min=0, metavar="N", help=(
        "int8: weights of fewer elements stay float (their quantize/dequantize nodes would cost more than int8 "
        "saves), and so do layers whose int8 form makes the file larger than the float file; 0 quantizes every "
        "weight, even into a larger file."))] = 128,
    keep_debug_info: KeepDebugInfo = False,
    as_json: Json = False,
) -> None:
    """Quantize MODEL (int8 dynamic or static, fp16, mixed) and check it against the float model.

    Exits non-zero, writing nothing, if the accuracy check misses --max-error or --min-agreement.
    """
    from edgernn._cli_print import print_quantize, status, user_errors
    from edgernn.converters.quantize import quantize as quantize_fn

    with user_errors(), status(_interactive(as_json), "quantizing...") as progress:
        report = quantize_fn(model, output, method=method, calibration=calibration, data=data,
                             per_channel=per_channel, exclude=exclude or (), max_error=max_error,
                             min_agreement=min_agreement, steps=frames, chunk=chunk,
                             state_pairs=state_pairs(state_pair), fix=fixes(fix), min_size=min_size,
                             keep_debug_info=keep_debug_info, progress=progress)
    _show(report, as_json, print_quantize)


BenchChunk = chunk_option("Frames per call (1 for step-mode files).")


@app.command()
def bench(
    model: OnnxModel,
    against: Annotated[Optional[Path], typer.Option("--against", help=(
        "The PyTorch model file it was exported from: timed too, side by side, after a check that both compute "
        "the same."))] = None,
    calls: Annotated[int, typer.Option("--calls", min=1, help="Timed calls per runtime.")] = 1000,
    chunk: BenchChunk = 1,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Streams per call.")] = 1,
    threads: Threads = 1,
    provider: Providers = None,
    fallback: AllowFallback = False,
    state_pair: StatePairs = None,
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help=(
        "Another ONNX file of the same model (e.g. a plain torch.onnx export taking x, h) timed as a plain "
        "onnxruntime loop."))] = None,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed calls per runtime before timing.")] = 100,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Interleaved rounds the calls are spread over.")] = 5,
    plot: Annotated[Optional[Path], typer.Option("--plot", help=(
        "Write the latency distributions side by side to this PNG (needs matplotlib)."))] = None,
    class_path: ClassPath = None,
    config: ConfigFile = None,
    batch_first: BatchFirst = None,
    nonlinearity: NonlinearityOption = None,
    allow_pickle: AllowPickle = False,
    as_json: Json = False,
) -> None:
    """Time MODEL per call and per frame, side by side with a plain onnxruntime loop and PyTorch eager.

    Reports the p50/p90/p99 latency, frames per second and memory of each runtime,
    timed in interleaved rounds; ratios below 1 mean edgernn is faster. PyTorch
    eager runs with --against, whose file --class, --config, --batch-first,
    --nonlinearity and --allow-pickle describe.
    """
    from edgernn._cli_print import bench_progress, print_bench, user_errors
    from edgernn.runtimes.bench import bench as bench_fn, plot as plot_fn

    with user_errors():
        with bench_progress(_interactive(as_json), rounds) as progress:
            report = bench_fn(model, against=against, steps=calls, chunk=chunk, batch=batch, threads=threads,
                              provider=split_names(provider), warmup=warmup, rounds=rounds, progress=progress,
                              baseline_onnx=baseline, allow_fallback=fallback, state_pairs=state_pairs(state_pair),
                              **load_options(class_path, config, allow_pickle, batch_first, nonlinearity))
        plotted = plot_fn(report, plot) if plot is not None else None
    _show(report, as_json, print_bench, plotted, plot=str(plotted) if plotted else None)


CheckChunk = chunk_option("Frames per call.", "1; the file's frame multiple; the whole stream in sequence mode")


@app.command()
def check(
    model: OnnxModel,
    runtimes: Annotated[Optional[str], typer.Option(
        "--runtimes", metavar="NAME,...", callback=check_runtimes, show_default="all",
        help="Runtimes to run, comma-separated: ort (onnxruntime CPU, the reference, always run), openvino, tract, "
             "node (edgernn-web on onnxruntime-node), web (edgernn-web on onnxruntime-web in headless Chromium).")
    ] = None,
    data: Annotated[Optional[Path], typer.Option(
        "--data", "-d", help=".npy/.npz streams in the model's input layout (the stream along the time axis; one "
                             "array per input by name in a .npz) to stream instead of random frames.")] = None,
    frames: Annotated[Optional[int], typer.Option("--frames", min=1, help="Frames streamed.",
                                                  show_default="200, or the whole --data stream")] = None,
    chunk: CheckChunk = None,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help=(
        "Interleaved timing rounds; each streams every call once per runtime."))] = 3,
    tolerance: Annotated[float, typer.Option("--tolerance", min=0.0, help=(
        "Largest difference from onnxruntime allowed, relative to max(1, |value|), for a float32 file."))] = 1e-4,
    against: Annotated[Optional[Path], typer.Option("--against", help=(
        "The PyTorch model file it was exported from: run too, and every runtime compared with it."))] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help=(
        "Intra-op threads of every runtime (and of PyTorch, with --against)."))] = 1,
    state_pair: StatePairs = None,
    class_path: ClassPath = None,
    config: ConfigFile = None,
    batch_first: BatchFirst = None,
    nonlinearity: NonlinearityOption = None,
    allow_pickle: AllowPickle = False,
    as_json: Json = False,
) -> None:
    """Stream the same frames through MODEL in every runtime it will meet and compare them side by side.

    Reports, per runtime, whether it ran (or why not, or how to install it), the
    largest difference from onnxruntime CPU (and from PyTorch with --against) over
    every call's outputs and the final states, and the p50/p99 latency per call,
    timed in interleaved rounds. Exits 1 if a runtime's numbers differ beyond
    --tolerance on a float32 file.
    """
    from edgernn._cli_print import print_check, print_error, status, user_errors
    from edgernn.runtimes.check import check as check_fn

    with user_errors(), status(_interactive(as_json), "checking...") as progress:
        report = check_fn(model, runtimes=runtimes, frames=frames, chunk=chunk, data=data, against=against,
                          threads=threads, rounds=rounds, tolerance=tolerance, state_pairs=state_pairs(state_pair),
                          progress=progress, **load_options(class_path, config, allow_pickle, batch_first,
                                                            nonlinearity))
    _show(report, as_json, print_check)
    if not report.passed:
        worst = report.differing[0]
        print_error(f"{worst.name} differs from onnxruntime by up to {worst.max_deviation:.3g} ({worst.deviation_at}), "
                    f"over the tolerance of {report.tolerance:g} relative to max(1, |value|)")
        raise typer.Exit(1)


PackOutput = output_option("Folder to write.", "MODEL-ort next to the model")


@app.command()
def pack(
    model: OnnxModel,
    target: Annotated[Target, typer.Option("--target", help=(
        "ort: ORT-format model and the reduced-operator config for a minimal onnxruntime build (mobile, "
        "embedded)."))] = "ort",
    output: PackOutput = None,
    optimization: Annotated[Optimization, typer.Option("--optimization", help=(
        "Graph optimizations baked into the .ort: all, extended or basic (basic keeps standard ONNX ops, for "
        "NNAPI/CoreML/XNNPACK)."))] = "all",
    type_reduction: Annotated[bool, typer.Option("--type-reduction", help=(
        "Also record the types each op needs, for a smaller build (--enable_reduced_operator_type_support)."))] = False,
    copy_onnx: Annotated[bool, typer.Option("--onnx/--no-onnx", help="Copy the .onnx into the folder too.")] = True,
    overwrite: Overwrite = False,
    state_pair: StatePairs = None,
    fix: Fixes = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help=(
        "Stream the same frames through the .onnx and the .ort and compare them (on by default)."))] = True,
    as_json: Json = False,
) -> None:
    """Package MODEL for a deployment target, checked against the .onnx on a streamed rollout.

    For --target ort: the ORT-format file, the operator config for a minimal
    onnxruntime build and a README with the build command.
    """
    from edgernn._cli_print import print_pack, status, user_errors
    from edgernn.runtimes.pack import pack as pack_fn

    with user_errors(), status(_interactive(as_json), "packing...") as progress:
        report = pack_fn(model, output, target=target, optimization=optimization, type_reduction=type_reduction,
                         copy_onnx=copy_onnx, overwrite=overwrite, state_pairs=state_pairs(state_pair),
                         fix=fixes(fix), verify=verify, progress=progress)
    _show(report, as_json, print_pack)


@app.command()
def serve(
    model: OnnxModel,
    triton: Annotated[Path, typer.Option("--triton", help=(
        "Triton model repository folder to write the model into (created if missing)."))],
    name: Annotated[Optional[str], typer.Option("--name", help="Model name in the repository.",
                                                show_default="the file's stem")] = None,
    model_version: Annotated[int, typer.Option("--model-version", min=1, help="Model version folder.")] = 1,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", min=0, help=(
        "Streams Triton may batch into one call (0: no batching, any state layout)."))] = 64,
    strategy: Annotated[BatcherStrategy, typer.Option("--strategy", help=(
        "Sequence batcher strategy: oldest (batches the oldest pending requests) or direct (one batch slot per "
        "sequence)."))] = "oldest",
    idle_us: Annotated[int, typer.Option("--max-sequence-idle-us", min=1, help=(
        "Idle time after which Triton ends a sequence and frees its state."))] = 5_000_000,
    instances: Annotated[int, typer.Option("--instances", min=1, help="Model instances.")] = 1,
    kind: Annotated[InstanceKind, typer.Option("--kind", help="Instance kind: cpu, gpu or auto.")] = "cpu",
    controls: Annotated[bool, typer.Option("--controls/--no-controls", help=(
        "Add START/END/READY/CORRID control inputs to the model (START resets the state in the graph)."))] = True,
    backend: Annotated[TritonBackend, typer.Option("--backend", help=(
        "Triton backend: onnxruntime (Triton keeps the states as implicit state) or python (Triton's Python "
        "backend runs StreamBatcher, which keeps each sequence's state by CORRID; any state layout)."))] = "onnxruntime",
    overwrite: Overwrite = False,
    state_pair: StatePairs = None,
    as_json: Json = False,
) -> None:
    """Write a Triton Inference Server model repository entry that streams MODEL, state carried.

    --backend onnxruntime: the model and a config.pbtxt whose sequence batcher keeps
    every state pair as implicit state. Every state needs its batch axis first (export
    with --state-layout batch-major), unless --max-batch-size 0.

    --backend python: the model, a model.py that streams it through StreamBatcher in
    Triton's Python backend, and a config.pbtxt with the sequence batcher's controls.
    The model keeps each sequence's state (any layout), keyed by its correlation id.
    """
    from edgernn._cli_print import print_serve, status, user_errors
    from edgernn.runtimes.triton import triton_repository

    with user_errors(), status(_interactive(as_json), "writing the Triton model...") as progress:
        report = triton_repository(model, triton, name=name, version=model_version, max_batch_size=max_batch_size,
                                   strategy=strategy, max_sequence_idle_microseconds=idle_us,
                                   instance_count=instances, instance_kind=kind, controls=controls,
                                   overwrite=overwrite, state_pairs=state_pairs(state_pair), backend=backend,
                                   progress=progress)
    _show(report, as_json, print_serve)


def _print_version(value: bool) -> None:
    if value:
        from edgernn import __version__

        print(__version__)
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                                help="Print edgernn's version and exit.")] = False) -> None:
    pass


class Interrupted(BaseException):
    """Ctrl-C, raised in place of KeyboardInterrupt: click turns that into "Aborted!" and exit 1,
    and library code that catches ``Exception`` (torch's exporter does) cannot swallow this one."""


def _on_sigint(signum: int, frame: Any) -> None:
    raise Interrupted


def main() -> None:
    """The console script: ``app``, with Ctrl-C said as one word and the shell's status 130. Files
    being written are temporary until complete and are removed on the way out (nothing half-written)."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        app()
    except Interrupted:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
