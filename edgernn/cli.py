"""The ``edgernn`` command line: a thin typer layer over :mod:`edgernn.api`.

Each command parses its arguments, calls one library function and prints the report it returns
(rich tables, or JSON with ``--json``). Heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="edgernn",
    help="Export recurrent PyTorch models to streaming ONNX with explicit state I/O, verified against "
         "PyTorch, and run them with onnxruntime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Print library errors as one sentence on stderr and exit 1 (no traceback)."""
    from rich.markup import escape

    from edgernn.errors import EdgernnError

    try:
        yield
    except EdgernnError as e:
        report = getattr(e, "report", None)
        if report is not None:
            (_print_quantize if hasattr(report, "method") else _print_export)(report)
        # escaped: messages quote shapes such as "[batch, time, 10]", which rich would take for markup
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _fmt_shape(shape) -> str:
    from rich.markup import escape

    return escape("[" + ", ".join(str(d) for d in shape) + "]")


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def _io_table(title: str, contract) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("kind", "name", "shape", "dtype", "batch axis", "time axis / output"):
        t.add_column(col)
    for spec in contract.inputs:
        time = str(spec.time_axis) + (f" (multiple of {spec.frame_multiple})" if spec.frame_multiple != 1 else "")
        t.add_row("input", spec.name, _fmt_shape(spec.shape), spec.dtype, str(spec.batch_axis), time)
    for spec in contract.outputs:
        time = str(spec.time_axis) + (f" (delay {spec.delay})" if spec.delay else "")
        t.add_row("output", spec.name, _fmt_shape(spec.shape), spec.dtype, str(spec.batch_axis), time)
    for s in contract.states:
        t.add_row("state", s.name, _fmt_shape(s.shape), s.dtype, str(s.batch_axis), f"{s.input} -> {s.output}")
    return t


def _timing_lines(contract) -> list[str]:
    """The strides and lookahead over time that a contract declares (nothing for most files), as
    rich markup (names escaped)."""
    from rich.markup import escape

    lines = [f"{t.name}: takes a multiple of {t.frame_multiple} frames per call (the model strides over time or works in blocks of frames)"
             for t in contract.inputs if t.frame_multiple != 1]
    lines += [f"{t.name}: {t.delay} frame{'s' if t.delay > 1 else ''} of lookahead (delay): its frame t is the "
              f"model's frame t - {t.delay}" for t in contract.outputs if t.delay]
    return [escape(line) for line in lines]


def _print_export(report) -> None:
    from rich.markup import escape
    out.print(_io_table(f"edgernn export ({report.contract.mode} mode)", report.contract))
    for line in _timing_lines(report.contract):
        out.print(line, highlight=False)
    if report.parity is not None:
        t = Table(title="parity with PyTorch", title_justify="left")
        for col in ("tensor", "kind", "max abs error", "scale", "error / max(1, scale)", "ok"):
            t.add_column(col)
        for e in report.parity.errors:
            ok = e.rel <= report.parity.tolerance
            t.add_row(e.name, e.kind, f"{e.max_abs:.2e}", f"{e.scale:.3g}", f"{e.rel:.2e}",
                      "[green]yes[/]" if ok else "[red]NO[/]")
        out.print(t)
        for case in report.parity.cases:
            out.print(f"  checked: {case}", highlight=False)
        out.print(f"parity {report.parity.summary()}", highlight=False)
    if report.passes:
        steps = ", ".join(f"{p.name} {p.seconds:.1f}s" for p in report.passes)
        out.print(f"passes: {steps}", highlight=False)
    for note in report.notes:
        out.print(f"note: {escape(note)}", highlight=False)
    where = report.path or "(not written)"
    out.print(f"wrote {where} ({_size(report.size_bytes)})" if report.path else f"file: {where}", highlight=False)


@contextmanager
def _progress(enabled: bool) -> Iterator:
    if not enabled:
        yield None
        return
    with err.status("exporting...") as status:
        yield lambda name: status.update(f"export: {name}...")


@app.command()
def export(
    model: Path = typer.Argument(..., help="Model file: edgernn checkpoint, state_dict of nn.RNN/LSTM/GRU, a "
                                           "state_dict with --class, TorchScript, or a pickle with --allow-pickle."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="ONNX file to write.",
                                          show_default="MODEL.onnx"),
    mode: str = typer.Option("chunk", "--mode", "-m", help="chunk: any number of frames per call; step: one frame "
                             "per call; sequence: whole sequences (bidirectional)."),
    state_layout: str = typer.Option("native", "--state-layout", help="native: states in PyTorch's layout "
                                     "([layers*directions, batch, hidden]); batch-major: every state with the batch "
                                     "axis first ([batch, ...]), for runtimes that need it, e.g. Triton's implicit "
                                     "state."),
    cells: str = typer.Option("auto", "--cells", help="Step mode: auto (ONNX GRU/LSTM ops, MatMul cells for "
                              "Elman RNN: fastest on onnxruntime CPU) or matmul (MatMul cells only, for runtimes "
                              "without the recurrent ops, e.g. onnxruntime's mobile package)."),
    opset: int = typer.Option(18, help="ONNX opset."),
    class_path: Optional[str] = typer.Option(None, "--class", help="pkg.module:Name of the model class for a "
                                             "state_dict (imported from the current folder or installed packages)."),
    config: Optional[Path] = typer.Option(None, "--config", help="JSON file of constructor arguments for --class."),
    inputs: Optional[List[str]] = typer.Option(None, "--input", help="Declare a forward argument as NAME:DTYPE:DIMS, "
                                               "B = batch axis, T = time axis, e.g. x:float32:B,T,40. Repeatable."),
    states: Optional[List[str]] = typer.Option(None, "--state", help="Forward argument that carries state "
                                               "(default: names with state/hidden/memory, hx, h0, c0). Repeatable."),
    output_names: Optional[str] = typer.Option(None, "--output-names", help="Comma-separated data output names."),
    batch_first: Optional[bool] = typer.Option(None, "--batch-first/--time-major", help="For bare layer "
                                               "state_dicts, which do not record it.",
                                               show_default="time-major"),
    nonlinearity: Optional[str] = typer.Option(None, help="tanh or relu, for bare nn.RNN state_dicts."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow unpickling a whole nn.Module. This "
                                      "RUNS CODE FROM THE FILE: use only for files you trust."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check parity with PyTorch (on by default)."),
    tolerance: float = typer.Option(1e-5, help="Largest error allowed, relative to max(1, |output|)."),
    tree_strategy: str = typer.Option("levels", "--tree-strategy", help="Tree networks: levels (a Loop over depth "
                                      "levels; the file takes a levels input) or nodes (a Loop over nodes)."),
    all_nodes: bool = typer.Option(False, "--all-nodes", help="Tree networks: also output every node's state."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Export MODEL to ONNX with explicit state inputs/outputs, verify it against PyTorch, and report.

    Exits non-zero (and writes nothing) if the export does not match PyTorch.
    """
    from edgernn.api import export_file

    if nonlinearity is not None and nonlinearity not in ("tanh", "relu"):
        err.print(f"[bold red]error:[/] --nonlinearity {nonlinearity!r} is unknown; expected tanh or relu")
        raise typer.Exit(2)
    with _user_errors(), _progress(not as_json and sys.stderr.isatty()) as progress:
        report = export_file(model, output, mode=mode, opset=opset, class_path=class_path, config=config,
                             allow_pickle=allow_pickle, nonlinearity=nonlinearity, batch_first=batch_first,
                             inputs=inputs or (), state_args=states or None,
                             output_names=output_names.split(",") if output_names else None,
                             verify=verify, tolerance=tolerance, tree_strategy=tree_strategy,
                             all_nodes=all_nodes, cells=cells,
                             state_layout=state_layout, progress=progress)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        _print_export(report)


_PROVIDER_HELP = ("onnxruntime execution provider(s), in the order to try: cpu, cuda, tensorrt, openvino, coreml, "
                  "nnapi, xnnpack, ..., onnxruntime's names, or auto (all installed); comma-separated.")
_FALLBACK_HELP = "Run on the CPU if the provider cannot start (else it is an error)."
_STATE_PAIR_HELP = ("IN=OUT: a graph input and the output it pairs with, for files without edgernn metadata "
                    "(default: found by name, see docs/state-contract.md). Repeatable.")


@app.command()
def info(
    model: Path = typer.Argument(..., help="An ONNX file: an edgernn export, or a stateful file from another "
                                           "exporter."),
    state_pair: Optional[List[str]] = typer.Option(None, "--state-pair", help=_STATE_PAIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Show a file's data inputs/outputs and state pairs, read from its edgernn metadata or inferred from its graph."""
    from edgernn.api import info as info_fn

    with _user_errors():
        report = info_fn(model, state_pairs=_parse_pairs(state_pair))
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return
    c = report.contract
    where = (f"edgernn format {c.format}" if report.contract_from == "metadata"
             else "no edgernn metadata, contract inferred from the graph")
    out.print(_io_table(f"{report.path}: {where}, {c.mode} mode, opset {report.opset}, "
                        f"{_size(report.size_bytes)}", c))
    for line in _timing_lines(c):
        out.print(line, highlight=False)
    if report.inferred is not None:
        for pair in report.inferred.get("pairs", []):
            rule = "given with --state-pair" if pair["rule"] == "given" else f"rule {pair['rule']}"
            out.print(f"inferred: state {pair['name']} = {pair['input']} -> {pair['output']} ({rule})",
                      highlight=False)
        out.print(f"inferred: batch axis: {report.inferred.get('batch')}", highlight=False)
        out.print(f"inferred: time axis: {report.inferred.get('time')}", highlight=False)
    ops = ", ".join(f"{k} x{v}" for k, v in report.op_counts.items())
    out.print(f"ops: {ops}", highlight=False)
    from edgernn.runtimes.providers import describe

    out.print(f"execution providers on this machine: {describe(report.providers)}", highlight=False)


@app.command()
def run(
    model: Path = typer.Argument(..., help="An ONNX file: an edgernn export, or a stateful file from another "
                                           "exporter."),
    input: List[Path] = typer.Option(..., "--input", "-i", help="A .npy array in the model's input layout (a "
                                     "per-frame model takes a leading time axis). For several inputs: "
                                     "NAME=FILE.npy, repeated."),
    chunk: Optional[int] = typer.Option(None, "--chunk", "-c", help="Frames per call.",
                                        show_default="1 in step mode, the whole stream otherwise"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Save outputs (.npy for one output, .npz "
                                          "for several)."),
    threads: int = typer.Option(1, help="onnxruntime intra-op threads."),
    state_pair: Optional[List[str]] = typer.Option(None, "--state-pair", help=_STATE_PAIR_HELP),
    provider: Optional[str] = typer.Option(None, "--provider", help=_PROVIDER_HELP, show_default="cpu"),
    fallback: bool = typer.Option(False, "--fallback", help=_FALLBACK_HELP),
    align: bool = typer.Option(False, "--align", help="Outputs with lookahead (delay): drop their first delay "
                               "frames and feed zero frames at the end, giving the model's frames on the whole "
                               "sequence (default: as the file produces them)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Stream an array through MODEL, CHUNK frames per call, carrying state between calls."""
    from rich.markup import escape
    from edgernn.api import load_array, run as run_fn

    with _user_errors():
        pairs = _parse_pairs(state_pair)
        arrays = {}
        for item in input:
            text = str(item)
            if "=" in text:
                name, _, file = text.partition("=")
                arrays[name] = load_array(file)
            else:
                arrays[""] = load_array(item)
        if "" in arrays:
            if len(arrays) > 1:
                from edgernn.errors import EdgernnError

                raise EdgernnError("give either one unnamed --input or NAME=FILE.npy for every input")
            arrays = arrays[""]
        report, _ = run_fn(model, arrays, chunk=chunk, output=output, threads=threads, state_pairs=pairs,
                           providers=provider.split(",") if provider else None, allow_fallback=fallback,
                           align=align)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return
    out.print(f"streamed {report.frames} frames through {report.path} in {report.calls} calls of "
              f"{report.chunk} frame(s) on {report.provider}", highlight=False)
    for note in report.notes:
        out.print(f"note: {escape(note)}", highlight=False)
    for name, shape in report.outputs.items():
        out.print(f"  output {name}: {_fmt_shape(shape)}", highlight=False)
    for name, shape in report.final_state.items():
        out.print(f"  final state {name}: {_fmt_shape(shape)}", highlight=False)
    if report.saved_to:
        out.print(f"saved outputs to {report.saved_to}", highlight=False)


def _print_quantize(report) -> None:
    from rich.markup import escape

    t = Table(title=f"edgernn quantize ({report.method})", title_justify="left")
    for col in ("node", "op", "now", "why"):
        t.add_column(col)
    for d in [*report.quantized, *report.kept_float]:
        t.add_row(escape(d.name), d.op_type, d.dtype, escape(d.why))
    out.print(t)
    acc = report.accuracy
    if acc is not None:
        a = Table(title=f"accuracy against the float model: {acc.streams} stream(s) x {acc.steps} frames, "
                        f"{acc.chunk} frame(s) per call, {escape(acc.data_source)}", title_justify="left")
        for col in ("output / state", "max abs error", "mean abs error", "scale", "decision", "agreement"):
            a.add_column(col)
        for o in acc.outputs:
            a.add_row(escape(o.name), f"{o.max_abs:.3g}", f"{o.mean_abs:.3g}", f"{o.scale:.3g}", o.decision or "-",
                      "-" if o.agreement is None else f"{o.agreement:.2%}")
        for name, e in acc.state_errors.items():
            a.add_row(escape(f"{name} (final state)"), f"{e:.3g}", "", "", "", "")
        out.print(a)
    out.print(f"size: {_size(report.size_before)} -> {_size(report.size_after)} ({report.size_ratio:.2f}x)",
              highlight=False)
    for note in report.notes:
        out.print(f"note: {escape(note)}", highlight=False)
    if report.path:
        out.print(f"wrote {escape(report.path)}", highlight=False)


@app.command()
def quantize(
    model: Path = typer.Argument(..., help="A float ONNX file (from edgernn export, or another stateful file)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="File to write.",
                                          show_default="MODEL.int8.onnx, .qdq, .fp16 or .mixed by method"),
    method: str = typer.Option("dynamic", "--method", help="dynamic: int8 weights, activations quantized per "
                               "call; static: int8 QDQ calibrated on streams; fp16; mixed: fp16 with the "
                               "recurrent state path in fp32."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help=".npy/.npz streams in the model's "
                                               "input layout, for static calibration (and the accuracy check)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Held-back .npy/.npz streams for the accuracy check.",
                                        show_default="the calibration file, else synthetic data"),
    per_channel: bool = typer.Option(False, "--per-channel", help="One int8 scale per output channel."),
    exclude: Optional[List[str]] = typer.Option(None, "--exclude", help="Node name to keep in float. Repeatable."),
    max_error: Optional[float] = typer.Option(None, "--max-error", help="Fail if any output differs from the "
                                              "float model by more than this."),
    min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="Fail if classifier decisions "
                                                  "agree on fewer than this fraction of frames (0-1)."),
    steps: int = typer.Option(10_000, "--steps", help="Frames per synthetic stream in the accuracy check."),
    chunk: Optional[int] = typer.Option(None, "--chunk", help="Frames per call in the accuracy check.",
                                        show_default="1 in step mode, 100 otherwise"),
    state_pair: Optional[List[str]] = typer.Option(None, "--state-pair", help="IN=OUT state names, for files "
                                                   "without edgernn metadata. Repeatable."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Quantize MODEL (int8 dynamic or static, fp16, mixed) and check it against the float model.

    Exits non-zero, writing nothing, if the accuracy check misses --max-error or --min-agreement.
    """
    from edgernn.converters.quantize import quantize as quantize_fn

    with _user_errors():
        pairs = _parse_pairs(state_pair)
        with _status(not as_json and sys.stderr.isatty(), "quantizing...") as progress:
            report = quantize_fn(model, output, method=method, calibration=calibration, data=data,
                                 per_channel=per_channel, exclude=exclude or (), max_error=max_error,
                                 min_agreement=min_agreement, steps=steps, chunk=chunk, state_pairs=pairs,
                                 progress=progress)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        _print_quantize(report)


def _print_bench(report) -> None:
    from rich.markup import escape

    t = Table(title=f"edgernn bench {escape(report.model)} ({report.mode} mode, {_size(report.model_bytes)}): "
                    f"{report.chunk} frame(s) x {report.batch} stream(s) per call, {report.threads} thread(s), "
                    f"{report.provider}, {report.steps} calls per runtime in {report.rounds} interleaved rounds",
              title_justify="left")
    for col in ("runtime", "p50 us", "p90 us", "p99 us", "us/frame p50", "frames/s", "peak MiB", "load MiB",
                "edgernn / it"):
        t.add_column(col, justify="left" if col == "runtime" else "right")
    mine = report.runtime("edgernn").p50_us
    for r in report.runtimes:
        mib = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        t.add_row(r.name, f"{r.p50_us:.1f}", f"{r.p90_us:.1f}", f"{r.p99_us:.1f}", f"{r.per_frame_p50_us:.2f}",
                  f"{r.fps:,.0f}", mib(r.peak_memory_mib), mib(r.load_memory_mib),
                  "" if r.name == "edgernn" else f"{mine / r.p50_us:.2f}x")
    out.print(t)
    for name, dev in report.deviations.items():
        out.print(f"max |difference| from {name}: {dev:.2g}", highlight=False)
    out.print(f"memory: {escape(report.memory_scope)}", highlight=False)
    for note in report.notes:
        out.print(f"note: {escape(note)}", highlight=False)


@contextmanager
def _bench_progress(enabled: bool, rounds: int) -> Iterator:
    """A progress bar over the warm-up and the rounds (bench calls back once per stage)."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("bench {task.description}"), BarColumn(), TimeElapsedColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task("loading", total=rounds + 1)
        seen = [False]

        def advance(stage: str) -> None:
            bar.update(task, description=stage, advance=1 if seen[0] else 0)
            seen[0] = True

        yield advance


@app.command()
def bench(
    model: Path = typer.Argument(..., help="An edgernn ONNX file to time."),
    against: Optional[Path] = typer.Option(None, "--against", help="The PyTorch model file it was exported from: "
                                           "timed too, side by side, after a check that both compute the same."),
    steps: int = typer.Option(1000, "--steps", help="Timed calls per runtime."),
    chunk: int = typer.Option(1, "--chunk", help="Frames per call (1 for step-mode files)."),
    batch: int = typer.Option(1, "--batch", help="Streams per call."),
    threads: int = typer.Option(1, "--threads", help="Intra-op threads (onnxruntime and PyTorch)."),
    provider: Optional[str] = typer.Option(None, "--provider", help=_PROVIDER_HELP, show_default="cpu"),
    fallback: bool = typer.Option(False, "--fallback", help=_FALLBACK_HELP),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Another ONNX file of the same model (e.g. a "
                                            "plain torch.onnx export taking x, h) timed as a plain onnxruntime "
                                            "loop."),
    warmup: int = typer.Option(100, "--warmup", help="Untimed calls per runtime before timing."),
    rounds: int = typer.Option(5, "--rounds", help="Interleaved rounds the calls are spread over."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write the latency distributions side by side to "
                                        "this PNG (needs matplotlib)."),
    class_path: Optional[str] = typer.Option(None, "--class", help="pkg.module:Name for an --against state_dict."),
    config: Optional[Path] = typer.Option(None, "--config", help="JSON constructor arguments for --class."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow unpickling an --against file you "
                                      "trust."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Time MODEL per call and per frame (p50/p90/p99), frames per second and memory, side by side with a
    plain onnxruntime loop and, with --against, PyTorch eager, in interleaved rounds; ratios below 1
    mean edgernn is faster."""
    from edgernn.runtimes.bench import bench as bench_fn, plot as plot_fn

    load = {k: v for k, v in (("class_path", class_path), ("config", config)) if v is not None}
    if allow_pickle:
        load["allow_pickle"] = True
    with _user_errors():
        with _bench_progress(not as_json and sys.stderr.isatty(), rounds) as progress:
            report = bench_fn(model, against=against, steps=steps, chunk=chunk, batch=batch, threads=threads,
                              provider=provider.split(",") if provider else None, warmup=warmup, rounds=rounds, progress=progress,
                              baseline_onnx=baseline, allow_fallback=fallback, **load)
        plotted = plot_fn(report, plot) if plot is not None else None
    if as_json:
        data = report.to_json()
        data["plot"] = str(plotted) if plotted else None
        print(json.dumps(data, indent=2))
        return
    _print_bench(report)
    if plotted:
        out.print(f"wrote {plotted}", highlight=False)


@app.command()
def pack(
    model: Path = typer.Argument(..., help="An edgernn ONNX file (or a stateful file from another exporter)."),
    target: str = typer.Option("ort", "--target", help="ort: ORT-format model and the reduced-operator config for "
                               "a minimal onnxruntime build (mobile, embedded)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Folder to write.",
                                          show_default="MODEL-ort next to the model"),
    optimization: str = typer.Option("all", "--optimization", help="Graph optimizations baked into the .ort: all, "
                                     "extended or basic (basic keeps standard ONNX ops, for NNAPI/CoreML/XNNPACK)."),
    type_reduction: bool = typer.Option(False, "--type-reduction", help="Also record the types each op needs, for "
                                        "a smaller build (--enable_reduced_operator_type_support)."),
    copy_onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="Copy the .onnx into the folder too."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a folder that has files already."),
    state_pair: Optional[List[str]] = typer.Option(None, "--state-pair", help=_STATE_PAIR_HELP),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Stream the same frames through the .onnx and "
                                "the .ort and compare them (on by default)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Package MODEL for a deployment target: the ORT-format file, the operator config for a minimal build, a
    README with the build command; checked against the .onnx on a streamed rollout."""
    from rich.markup import escape

    from edgernn.runtimes.pack import pack as pack_fn

    with _user_errors():
        with _status(not as_json and sys.stderr.isatty(), "packing...") as progress:
            report = pack_fn(model, output, target=target, optimization=optimization, type_reduction=type_reduction,
                             copy_onnx=copy_onnx, overwrite=overwrite, state_pairs=_parse_pairs(state_pair),
                             verify=verify, progress=progress)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return
    t = Table(title=f"edgernn pack --target {report.target}: {escape(report.output_dir)}", title_justify="left")
    t.add_column("file")
    t.add_column("size", justify="right")
    for name, size in report.files.items():
        t.add_row(escape(name), _size(size))
    out.print(t)
    out.print(f".onnx {_size(report.onnx_bytes)} -> .ort {_size(report.ort_bytes)} (optimization "
              f"{report.optimization}, onnxruntime {report.onnxruntime_version})", highlight=False)
    for line in report.config_lines:
        out.print(f"ops: {escape(line)}", highlight=False)
    if report.parity is not None:
        worst = max([*report.parity.get("max_abs_error", {}).values(), *report.parity.get("state_errors", {}).values()],
                    default=0.0)
        out.print(f"parity with the .onnx: max abs difference {worst:.2g} over {report.parity.get('calls')} calls",
                  highlight=False)
    out.print(f"build: {escape(report.build_command)}", highlight=False)
    for note in report.notes:
        out.print(f"note: {escape(note)}", highlight=False)


@app.command()
def serve(
    model: Path = typer.Argument(..., help="An edgernn ONNX file with batch-major states (export with "
                                           "--state-layout batch-major)."),
    triton: Path = typer.Option(..., "--triton", help="Triton model repository folder to write the model into "
                                "(created if missing)."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name in the repository.",
                                       show_default="the file's stem"),
    version: int = typer.Option(1, "--version", help="Model version folder."),
    max_batch_size: int = typer.Option(64, "--max-batch-size", help="Streams Triton may batch into one call (0: "
                                       "no batching, any state layout)."),
    strategy: str = typer.Option("oldest", "--strategy", help="Sequence batcher strategy: oldest or direct."),
    idle_us: int = typer.Option(5_000_000, "--max-sequence-idle-us", help="Idle time after which Triton ends a "
                                "sequence and frees its state."),
    instances: int = typer.Option(1, "--instances", help="Model instances."),
    kind: str = typer.Option("cpu", "--kind", help="Instance kind: cpu, gpu or auto."),
    controls: bool = typer.Option(True, "--controls/--no-controls", help="Add START/END/READY/CORRID control inputs "
                                  "to the model (START resets the state in the graph)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing model folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Write a Triton Inference Server model repository entry for MODEL: the model and a config.pbtxt whose
    sequence batcher keeps every state pair as implicit state."""
    from rich.markup import escape

    from edgernn.runtimes.triton import triton_repository

    with _user_errors():
        with _status(not as_json and sys.stderr.isatty(), "writing the Triton model...") as progress:
            report = triton_repository(model, triton, name=name, version=version, max_batch_size=max_batch_size,
                                       strategy=strategy, max_sequence_idle_microseconds=idle_us,
                                       instance_count=instances, instance_kind=kind, controls=controls,
                                       overwrite=overwrite, progress=progress)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return
    t = Table(title=f"Triton model {escape(report.name)} (version {report.version}, max_batch_size "
                    f"{report.max_batch_size}, {report.strategy} sequence batcher): implicit state",
              title_justify="left")
    for col in ("input", "output", "type", "dims", "start"):
        t.add_column(col)
    for st in report.states:
        init = st["initial_state"]
        start = "zeros" if init.get("zero_data") else f"file {init.get('data_file')}"
        t.add_row(escape(st["input_name"]), escape(st["output_name"]), st["data_type"], _fmt_shape(st["dims"]),
                  escape(start))
    out.print(t)
    for f in report.files:
        out.print(f"wrote {escape(str(f))}", highlight=False)
    for note in report.notes:
        out.print(f"note: {escape(note)}", highlight=False)


def _parse_pairs(items: Optional[List[str]]) -> Optional[dict]:
    if not items:
        return None
    from edgernn.errors import EdgernnError

    pairs = {}
    for item in items:
        name_in, sep, name_out = item.partition("=")
        if not sep or not name_in or not name_out:
            raise EdgernnError(f"--state-pair {item!r} is not IN=OUT (a graph input and the output it pairs with)")
        pairs[name_in] = name_out
    return pairs


@contextmanager
def _status(enabled: bool, text: str) -> Iterator:
    if not enabled:
        yield None
        return
    with err.status(text) as status:
        yield lambda name: status.update(f"{name}...")


@app.callback(invoke_without_command=True)
def _main(ctx: typer.Context,
          version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        from edgernn import __version__

        print(__version__)
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        print(ctx.get_help())
        raise typer.Exit()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
