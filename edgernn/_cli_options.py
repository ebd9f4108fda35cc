"""The options of the ``edgernn`` command line, each defined once: fixed choices as ``Literal``
types (``--help`` lists them, a value outside them is a usage error), options that several
commands take as ``Annotated`` types, and the parsers of structured values (``IN=OUT``,
``NAME=FILE.npy``).

Every malformed command line is a usage error, exit status 2 (:class:`UsageError`); what is
wrong with a file or a model is the library's error, exit status 1 (see :mod:`edgernn.cli`).
This module imports nothing heavy: ``edgernn --help`` reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Literal, NamedTuple, Optional, get_args, get_origin, get_type_hints

import typer

# typer re-exports BadParameter but not its base, click's UsageError (a malformed command line
# that names no single parameter); take it from there, whichever click typer runs on
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

# ---------------------------------------------------------------- fixed choices
# The library defines each list (tests/edgernn/test_cli_usage.py checks that these equal them); the CLI
# spells them out so that --help does not import the library.

Mode = Literal["chunk", "step", "sequence"]  # edgernn.contract.MODES
StateLayout = Literal["native", "batch-major"]  # converters.passes.STATE_LAYOUTS
Cells = Literal["auto", "matmul"]  # converters.recurrent.CELLS
TreeStrategy = Literal["levels", "nodes"]  # converters.tree.STRATEGIES
Nonlinearity = Literal["tanh", "relu"]  # nn.RNN's nonlinearity
Method = Literal["dynamic", "static", "fp16", "mixed"]  # converters.quantize.METHODS
Target = Literal["ort"]  # runtimes.pack.TARGETS
Optimization = Literal["all", "extended", "basic"]  # runtimes.pack.OPTIMIZATIONS
BatcherStrategy = Literal["oldest", "direct"]  # runtimes.triton.STRATEGIES
InstanceKind = Literal["cpu", "gpu", "auto"]  # runtimes.triton.INSTANCE_KINDS
TritonBackend = Literal["onnxruntime", "python"]  # runtimes.triton.BACKENDS
NonFinite = Literal["raise", "reset", "ignore"]  # runtimes.session.NONFINITE_POLICIES
CHECK_RUNTIMES = ("ort", "openvino", "tract", "node", "web")  # runtimes.check.RUNTIMES (a comma list, not a Literal)


# ---------------------------------------------------------------- structured values


class StatePair(NamedTuple):
    """One ``--state-pair IN=OUT``: a graph input and the graph output it pairs with."""

    input: str
    output: str


def parse_state_pair(text: str) -> StatePair:
    name_in, sep, name_out = text.partition("=")
    if not sep or not name_in or not name_out:
        raise typer.BadParameter(f"{text!r} is not IN=OUT (a graph input and the output it pairs with)")
    return StatePair(name_in, name_out)


def state_pairs(items: Optional[List[StatePair]]) -> Optional[dict[str, str]]:
    """The library's ``state_pairs`` mapping (``None`` when none were given)."""
    return dict(items) if items else None


class Fix(NamedTuple):
    """One ``--fix NAME=VALUE``: a graph input and the value to fold it to (parsed by the library,
    which knows the input's dtype: a value that does not fit is the file's error, exit 1)."""

    name: str
    value: str


def parse_fix(text: str) -> Fix:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise typer.BadParameter(f"{text!r} is not NAME=VALUE (a graph input and the value to fix it to, e.g. "
                                 "sr=16000)")
    return Fix(name.strip(), value.strip())


def check_fixes(items: Optional[List[Fix]]) -> Optional[List[Fix]]:
    """``--fix``: each input once."""
    names = [f.name for f in items or ()]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise typer.BadParameter(f"input {twice!r} is fixed twice; give each input once")
    return items


def fixes(items: Optional[List[Fix]]) -> Optional[dict[str, str]]:
    """The library's ``fix`` mapping, input name -> value text (``None`` when none were given)."""
    return {f.name: f.value for f in items} if items else None


def check_named_data(items: Optional[List[str]]) -> Optional[List[str]]:
    """``run --data``: one unnamed FILE.npy, or NAME=FILE.npy for every input."""
    if items and len(items) > 1 and not all("=" in item for item in items):
        raise typer.BadParameter("give either one unnamed FILE.npy or NAME=FILE.npy for every input")
    return items


def check_runtimes(text: Optional[str]) -> Optional[str]:
    """``check --runtimes``: a comma-separated list of :data:`CHECK_RUNTIMES`."""
    if text is None:
        return text
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in CHECK_RUNTIMES]
    if not names or unknown:
        given = f"unknown runtime {unknown[0]!r}" if unknown else "no runtime given"
        raise typer.BadParameter(f"{given}; choose from {', '.join(CHECK_RUNTIMES)} (comma-separated)")
    return ",".join(names)


def split_names(text: Optional[str]) -> Optional[list[str]]:
    """``cuda,cpu`` -> ``["cuda", "cpu"]`` (``None`` stays ``None``)."""
    return [part.strip() for part in text.split(",")] if text else None


def check_input_declarations(items: Optional[List[str]]) -> Optional[List[str]]:
    """``export --input``: each NAME:DTYPE:DIMS parsed by the exporter's own parser, so that a
    malformed one is a usage error (it imports torch, which the export needs anyway)."""
    if not items:
        return items
    from edgernn.converters.io import parse_input
    from edgernn.errors import EdgernnError

    for item in items:
        try:
            parse_input(item)
        except EdgernnError as e:
            raise UsageError(str(e)) from None
    return items


# ---------------------------------------------------------------- arguments

OnnxModel = Annotated[Path, typer.Argument(
    metavar="MODEL", help="An ONNX file: an edgernn export, or a stateful file from another exporter.")]
TorchModel = Annotated[Path, typer.Argument(
    metavar="MODEL", help="Model file: edgernn checkpoint, state_dict of nn.RNN/LSTM/GRU, a state_dict with "
                          "--class, TorchScript, or a pickle with --allow-pickle.")]


def output_option(help: str, default: str) -> object:
    """``-o``/``--output``: where the command writes (``default`` says where without it; empty:
    nowhere)."""
    return Annotated[Optional[Path], typer.Option("-o", "--output", help=help, show_default=default or False)]


def chunk_option(help: str, default: str | None = None) -> object:
    """``-c``/``--chunk``: frames per call (``default`` says how many without it, when that
    depends on the file)."""
    return Annotated[Optional[int], typer.Option("--chunk", "-c", min=1, help=help,
                                                 show_default=default if default is not None else True)]


# ---------------------------------------------------------------- options shared by commands

Json = Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]
StatePairs = Annotated[Optional[List[StatePair]], typer.Option(
    "--state-pair", metavar="IN=OUT", parser=parse_state_pair,
    help="IN=OUT: a graph input and the output it pairs with, for files without edgernn metadata (default: found by "
         "name, see docs/state-contract.md). Repeatable.")]
Fixes = Annotated[Optional[List[Fix]], typer.Option(
    "--fix", metavar="NAME=VALUE", parser=parse_fix, callback=check_fixes,
    help="Fold graph input NAME to the constant VALUE (a number, a list 1,2 or JSON [[1,2]]) and simplify the graph "
         "for it: an If on it keeps only its taken branch, and the input leaves the file's inputs (e.g. sr=16000 for "
         "silero-vad). Repeatable.")]
KeepDebugInfo = Annotated[bool, typer.Option(
    "--keep-debug-info", help="Keep the exporter's per-node debug metadata (stack traces, module names) in the file "
                              "written; by default it is dropped (node names stay).")]
Threads = Annotated[int, typer.Option(
    "--threads", min=1, help="Intra-op threads of onnxruntime (and of PyTorch, for bench --against).")]
Providers = Annotated[Optional[str], typer.Option(
    "--provider", show_default="cpu",
    help="onnxruntime execution provider(s), in the order to try: cpu, cuda, tensorrt, openvino, coreml, nnapi, "
         "xnnpack, ..., onnxruntime's names, or auto (all installed); comma-separated.")]
AllowFallback = Annotated[bool, typer.Option(
    "--fallback", help="Run on the CPU if the provider cannot start (else it is an error).")]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="Write over an output that exists already (else that is an error).")]

# reading a PyTorch model file: export's MODEL, bench's --against (see edgernn.load)
ClassPath = Annotated[Optional[str], typer.Option(
    "--class", metavar="PKG.MODULE:NAME", help="pkg.module:Name of the model class of a state_dict (imported from "
                                               "the current folder or installed packages).")]
ConfigFile = Annotated[Optional[Path], typer.Option(
    "--config", help="JSON file of constructor arguments for --class.")]
AllowPickle = Annotated[bool, typer.Option(
    "--allow-pickle", help="Allow unpickling a whole nn.Module. This RUNS CODE FROM THE FILE: use only for files "
                           "you trust.")]
BatchFirst = Annotated[Optional[bool], typer.Option(
    "--batch-first/--time-major", show_default="time-major",
    help="For bare layer state_dicts, which do not record it.")]
NonlinearityOption = Annotated[Optional[Nonlinearity], typer.Option(
    "--nonlinearity", help="tanh or relu, for bare nn.RNN state_dicts, which do not record it.",
    show_default="tanh")]


def option_choices(command) -> dict[str, tuple[str, ...]]:
    """The values each fixed-choice option of a click ``command`` takes, by option name (for
    ``--help``, the docs and their tests): read from the ``Literal`` types of its callback."""
    hints = get_type_hints(command.callback, include_extras=True)
    found = {}
    for param in command.params:
        values = _literal_values(hints.get(param.name))
        if values:
            found.update({opt: values for opt in param.opts})
    return found


def _literal_values(kind: object) -> tuple[str, ...]:
    """The values of the ``Literal`` in ``kind`` (inside ``Annotated``, ``Optional``), or ``()``."""
    if get_origin(kind) is Literal:
        return get_args(kind)
    return next((v for v in map(_literal_values, get_args(kind)) if v), ())


def load_options(class_path: str | None, config: Path | None, allow_pickle: bool, batch_first: bool | None,
                 nonlinearity: str | None) -> dict:
    """The options given for reading a PyTorch model file, as :func:`edgernn.load` takes them."""
    given = {"class_path": class_path, "config": config, "batch_first": batch_first, "nonlinearity": nonlinearity,
             "allow_pickle": allow_pickle or None}
    return {k: v for k, v in given.items() if v is not None}


__all__ = [
    "UsageError", "Mode", "StateLayout", "Cells", "TreeStrategy", "Nonlinearity", "Method", "Target", "Optimization",
    "BatcherStrategy", "InstanceKind", "TritonBackend", "StatePair", "parse_state_pair", "state_pairs", "check_named_data",
    "split_names", "check_input_declarations", "OnnxModel", "TorchModel", "output_option", "chunk_option", "Json",
    "StatePairs", "Threads", "Providers", "AllowFallback", "Overwrite", "ClassPath", "ConfigFile", "AllowPickle",
    "NonFinite", "CHECK_RUNTIMES", "check_runtimes", "Fix", "parse_fix", "check_fixes", "fixes", "Fixes", "BatchFirst", "NonlinearityOption", "option_choices", "load_options",
]
