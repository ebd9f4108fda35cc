"""How the ``edgernn`` commands print the library's reports: rich tables on stdout, progress and
errors on stderr. Names from files (tensors, nodes, paths) are escaped, since rich would take
``[batch, time, 10]`` for markup."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Print library errors as one sentence on stderr and exit 1 (no traceback); an error that
    carries its report (a failed export or accuracy check) prints the report first."""
    from edgernn.errors import EdgernnError

    try:
        yield
    except EdgernnError as e:
        report = getattr(e, "report", None)
        if report is not None:
            (print_quantize if hasattr(report, "method") else print_export)(report)
        print_error(str(e))
        raise typer.Exit(1) from None


def print_error(message: str) -> None:
    """``error: MESSAGE``, one line on stderr."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


@contextmanager
def status(enabled: bool, text: str) -> Iterator[Optional[Callable[[str], None]]]:
    """A spinner on stderr (when ``enabled``) and the ``progress`` callback that names each stage."""
    if not enabled:
        yield None
        return
    with err.status(text) as spinner:
        yield lambda name: spinner.update(f"{name}...")


@contextmanager
def bench_progress(enabled: bool, rounds: int) -> Iterator[Optional[Callable[[str], None]]]:
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


def _line(text: str) -> None:
    out.print(text, highlight=False)


def _notes(notes) -> None:
    for note in notes:
        _line(f"note: {escape(note)}")


def _table(title: str, *columns: str, right: tuple[str, ...] = ()):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col, justify="right" if col in right else "left")
    return t


def fmt_shape(shape) -> str:
    return escape("[" + ", ".join(str(d) for d in shape) + "]")


def size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def io_table(title: str, contract):
    """A contract's inputs, outputs and states, one row each."""
    t = _table(title, "kind", "name", "shape", "dtype", "batch axis", "time axis / output")
    for spec in contract.inputs:
        time = str(spec.time_axis) + (f" (multiple of {spec.frame_multiple})" if spec.frame_multiple != 1 else "")
        t.add_row("input", spec.name, fmt_shape(spec.shape), spec.dtype, str(spec.batch_axis), time)
    for spec in contract.outputs:
        time = str(spec.time_axis) + (f" (delay {spec.delay})" if spec.delay else "")
        t.add_row("output", spec.name, fmt_shape(spec.shape), spec.dtype, str(spec.batch_axis), time)
    for s in contract.states:
        t.add_row("state", s.name, fmt_shape(s.shape), s.dtype, str(s.batch_axis), f"{s.input} -> {s.output}")
    return t


def print_timing(contract) -> None:
    """The strides and lookahead over time that a contract declares (nothing for most files)."""
    for t in contract.inputs:
        if t.frame_multiple != 1:
            _line(escape(f"{t.name}: takes a multiple of {t.frame_multiple} frames per call (the model strides over "
                         "time or works in blocks of frames)"))
    for t in contract.outputs:
        if t.delay:
            _line(escape(f"{t.name}: {t.delay} frame{'s' if t.delay > 1 else ''} of lookahead (delay): its frame t "
                         f"is the model's frame t - {t.delay}"))


def print_export(report) -> None:
    out.print(io_table(f"edgernn export ({report.contract.mode} mode)", report.contract))
    print_timing(report.contract)
    if report.parity is not None:
        t = _table("parity with PyTorch", "tensor", "kind", "max abs error", "scale", "error / max(1, scale)", "ok")
        for e in report.parity.errors:
            ok = e.rel <= report.parity.tolerance
            t.add_row(e.name, e.kind, f"{e.max_abs:.2e}", f"{e.scale:.3g}", f"{e.rel:.2e}",
                      "[green]yes[/]" if ok else "[red]NO[/]")
        out.print(t)
        for case in report.parity.cases:
            _line(f"  checked: {case}")
        _line(f"parity {report.parity.summary()}")
    if report.passes:
        _line("passes: " + ", ".join(f"{p.name} {p.seconds:.1f}s" for p in report.passes))
    _notes(report.notes)
    _line(f"wrote {report.path} ({size(report.size_bytes)})" if report.path else "file: (not written)")


def print_info(report) -> None:
    from edgernn.runtimes.providers import describe

    c = report.contract
    where = (f"edgernn format {c.format}" if report.contract_from == "metadata"
             else "no edgernn metadata, contract inferred from the graph")
    out.print(io_table(f"{report.path}: {where}, {c.mode} mode, opset {report.opset}, {size(report.size_bytes)}", c))
    print_timing(c)
    if report.inferred is not None:
        for pair in report.inferred.get("pairs", []):
            rule = "given with --state-pair" if pair["rule"] == "given" else f"rule {pair['rule']}"
            _line(f"inferred: state {pair['name']} = {pair['input']} -> {pair['output']} ({rule})")
        _line(f"inferred: batch axis: {report.inferred.get('batch')}")
        _line(f"inferred: time axis: {report.inferred.get('time')}")
    _notes(getattr(report, "notes", ()))  # e.g. what --fix did
    _line("ops: " + ", ".join(f"{k} x{v}" for k, v in report.op_counts.items()))
    _line(f"execution providers on this machine: {describe(report.providers)}")


def print_run(report) -> None:
    _line(f"streamed {report.frames} frames through {report.path} in {report.calls} calls of {report.chunk} "
          f"frame(s) on {report.provider}")
    _notes(report.notes)
    for name, shape in report.outputs.items():
        _line(f"  output {name}: {fmt_shape(shape)}")
    for name, shape in report.final_state.items():
        _line(f"  final state {name}: {fmt_shape(shape)}")
    if report.saved_to:
        _line(f"saved outputs to {report.saved_to}")


def print_quantize(report) -> None:
    t = _table(f"edgernn quantize ({report.method})", "node", "op", "now", "why")
    for d in [*report.quantized, *report.kept_float]:
        t.add_row(escape(d.name), d.op_type, d.dtype, escape(d.why))
    out.print(t)
    acc = report.accuracy
    if acc is not None:
        a = _table(f"accuracy against the float model: {acc.streams} stream(s) x {acc.steps} frames, {acc.chunk} "
                   f"frame(s) per call, {escape(acc.data_source)}",
                   "output / state", "max abs error", "mean abs error", "scale", "decision", "agreement")
        for o in acc.outputs:
            a.add_row(escape(o.name), f"{o.max_abs:.3g}", f"{o.mean_abs:.3g}", f"{o.scale:.3g}", o.decision or "-",
                      "-" if o.agreement is None else f"{o.agreement:.2%}")
        for name, e in acc.state_errors.items():
            a.add_row(escape(f"{name} (final state)"), f"{e:.3g}", "", "", "", "")
        out.print(a)
    sizes = report.sizes
    split = (f" (graph {size(sizes.graph_before)} -> {size(sizes.graph_after)}, weights {size(sizes.weights_before)} "
             f"-> {size(sizes.weights_after)})" if sizes else "")
    _line(f"size: {size(report.size_before)} -> {size(report.size_after)} ({report.size_ratio:.2f}x){split}")
    if acc is not None and acc.latency_ratio is not None:
        _line(f"latency per call (p50 in the accuracy check, side by side): float {acc.float_call_us:.1f} us, "
              f"{report.method} {acc.quantized_call_us:.1f} us ({acc.latency_ratio:.2f}x)")
    _notes(report.notes)
    if report.path:
        _line(f"wrote {escape(report.path)}")


def print_bench(report, plotted) -> None:
    columns = ("runtime", "p50 us", "p90 us", "p99 us", "us/frame p50", "frames/s", "peak MiB", "load MiB",
               "edgernn / it")
    t = _table(f"edgernn bench {escape(report.model)} ({report.mode} mode, {size(report.model_bytes)}): "
               f"{report.chunk} frame(s) x {report.batch} stream(s) per call, {report.threads} thread(s), "
               f"{report.provider}, {report.steps} calls per runtime in {report.rounds} interleaved rounds",
               *columns, right=columns[1:])
    mine = report.runtime("edgernn").p50_us
    for r in report.runtimes:
        mib = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        t.add_row(r.name, f"{r.p50_us:.1f}", f"{r.p90_us:.1f}", f"{r.p99_us:.1f}", f"{r.per_frame_p50_us:.2f}",
                  f"{r.fps:,.0f}", mib(r.peak_memory_mib), mib(r.load_memory_mib),
                  "" if r.name == "edgernn" else f"{mine / r.p50_us:.2f}x")
    out.print(t)
    for name, dev in report.deviations.items():
        _line(f"max |difference| from {name}: {dev:.2g}")
    _line(f"memory: {escape(report.memory_scope)}")
    _notes(report.notes)
    if plotted:
        _line(f"wrote {escape(str(plotted))}")


def print_check(report) -> None:
    torch = report.against is not None
    columns = ("runtime", "status", "max diff", *(("vs pytorch",) if torch else ()), "p50 us", "p99 us")
    t = _table(f"edgernn check {escape(report.model)} ({report.mode} mode): {report.calls} calls of {report.chunk} "
               f"frame(s) x {report.batch} stream(s), {report.threads} thread(s), {report.rounds} interleaved rounds; "
               "max diff: largest |difference| from onnxruntime CPU", *columns, right=columns[2:])
    colors = {"reference": "green", "ok": "green", "reported": "yellow", "differs": "red", "failed": "red",
              "not installed": "yellow"}
    dev = lambda v: "-" if v is None else f"{v:.2g}"  # noqa: E731
    us = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    for r in report.runtimes:
        t.add_row(r.name, f"[{colors.get(r.status, 'white')}]{r.status}[/]", dev(r.max_deviation),
                  *((dev(r.pytorch_deviation),) if torch else ()), us(r.p50_us), us(r.p99_us))
    out.print(t)
    _line(f"data: {escape(report.data_source)}")
    for r in report.runtimes:
        if r.ran:
            where = (f"; largest difference in {escape(r.deviation_at)} ({r.relative_deviation:.2g} relative to max(1, "
                     "|value|))" if r.max_deviation and r.deviation_at else "")
            _line(f"{r.name}: {escape(r.label)}{where}")
        else:
            _line(f"{r.name}: {escape(r.reason or '')}")
            if r.install:
                _line(f"  install: {escape(r.install)}")
        if r.hint:
            _line(f"  what avoids it: {escape(r.hint)}")
        for note in r.notes:
            _line(f"  {escape(note)}")
    _notes(report.notes)


def print_pack(report) -> None:
    t = _table(f"edgernn pack --target {report.target}: {escape(report.output_dir)}", "file", "size", right=("size",))
    for name, n in report.files.items():
        t.add_row(escape(name), size(n))
    out.print(t)
    _line(f".onnx {size(report.onnx_bytes)} -> .ort {size(report.ort_bytes)} (optimization {report.optimization}, "
          f"onnxruntime {report.onnxruntime_version})")
    for line in report.config_lines:
        _line(f"ops: {escape(line)}")
    if report.parity is not None:
        worst = max([*report.parity.get("max_abs_error", {}).values(), *report.parity.get("state_errors", {}).values()],
                    default=0.0)
        _line(f"parity with the .onnx: max abs difference {worst:.2g} over {report.parity.get('calls')} calls")
    _line(f"build: {escape(report.build_command)}")
    _notes(report.notes)


def print_serve(report) -> None:
    kept = "implicit state" if report.backend == "onnxruntime" else "Python backend, states kept by CORRID"
    t = _table(f"Triton model {escape(report.name)} (version {report.version}, max_batch_size "
               f"{report.max_batch_size}, {report.strategy} sequence batcher): {kept}",
               "input", "output", "type", "dims", "start")
    for st in report.states:
        init = st["initial_state"]
        start = "zeros" if init.get("zero_data") else f"file {init['data_file']}" if init.get("data_file") else \
            "the file's start value"
        t.add_row(escape(st["input_name"]), escape(st["output_name"]), st["data_type"], fmt_shape(st["dims"]),
                  escape(start))
    out.print(t)
    for f in report.files:
        _line(f"wrote {escape(str(f))}")
    _notes(report.notes)
