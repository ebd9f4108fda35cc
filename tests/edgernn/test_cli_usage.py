"""The `edgernn` command line as a command line: docs/cli.md equals `--help`, `--help` shows every
help text whole, fixed choices are the library's, a malformed command line exits 2 with one
sentence before anything is read, and `--help` imports nothing heavy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from edgernn._cli_options import option_choices
from edgernn.cli import app
from conftest import invoke

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
COMMANDS = typer.main.get_command(app).commands
HEAVY = ("torch", "onnx", "onnxruntime", "numpy", "onnxscript", "onnx_ir")
runner = CliRunner()


# ---------------------------------------------------------------- docs/cli.md and --help


def _default_cell(param) -> str:
    """The default column of docs/cli.md: what --help shows as the default, in words for flags."""
    if param.required:
        return "(required)"
    if isinstance(param.show_default, str):
        return param.show_default
    if param.show_default is False or param.default is None:
        return ""
    if getattr(param, "is_flag", False):
        if param.secondary_opts:
            return param.opts[0] if param.default else param.secondary_opts[0]
        return "on" if param.default else "off"
    return str(param.default)


def doc_rows(command) -> list[str]:
    """The rows of a command's table in docs/cli.md, made from its parameters."""
    rows = []
    for param in command.params:
        if param.param_type_name == "argument":
            names = f"`{param.metavar or param.name.upper()}`"
        else:
            names = ", ".join(f"`{o}`" for o in param.opts) + "".join(f" / `{o}`" for o in param.secondary_opts)
        help_text = " ".join((param.help or "").split()).replace("|", "\\|")
        rows.append(f"| {names} | {_default_cell(param)} | {help_text} |")
    return rows


def _section(docs: str, name: str) -> str:
    return docs.split(f"## `edgernn {name}`", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_cli_docs_table_is_the_commands_help(name):
    docs = DOCS.read_text()
    assert f"## `edgernn {name}`" in docs, name
    section = _section(docs, name)
    command = COMMANDS[name]
    paragraphs = [" ".join(p.split()) for p in command.help.split("\n\n")]
    assert f"| `{name}` | {paragraphs[0]} |" in docs  # the table of commands
    for paragraph in paragraphs:  # the section repeats the whole help text
        assert paragraph in " ".join(section.split()), paragraph
    lines = section.splitlines()
    start = lines.index("| argument / option | default | help |")
    table = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        table.append(line)
    assert table == doc_rows(command), "\n".join(["docs/cli.md should have:", *doc_rows(command)])
    for opt, values in option_choices(command).items():  # the help names each choice
        help_text = next(p.help for p in command.params if opt in p.opts)
        assert all(v in help_text for v in values), (opt, values, help_text)


def shown_help(target: typer.Typer, *args: str) -> str:
    """``--help`` as a wide terminal shows it, one space between words, the panels' borders dropped."""
    result = runner.invoke(target, [*args, "--help"], env={"COLUMNS": "4000"})
    assert result.exit_code == 0, result.output
    return " ".join(re.sub("[│╭╮╰╯─]", " ", result.stdout).split())


def lost_help(target: typer.Typer, *args: str) -> list[str]:
    """The help texts of a command that ``--help`` does not show whole (rich markup swallows
    ``[...]``)."""
    command = typer.main.get_command(target)
    for name in args:
        command = command.commands[name]
    shown = shown_help(target, *args)
    texts = [" ".join(p.help.split()) for p in command.params if p.help]
    texts += [" ".join(paragraph.split()) for paragraph in command.help.split("\n\n")]
    return [t for t in texts if t not in shown]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_shows_every_help_text_whole(name):
    assert lost_help(app, name) == []


def test_lost_help_catches_text_swallowed_as_markup():
    toy = typer.Typer()

    @toy.command()
    def cmd(layout: str = typer.Option("native", help="states as [layers, batch, hidden]")) -> None:
        """Do it."""

    @toy.command()
    def other() -> None:
        """Another."""

    assert lost_help(toy, "cmd") == ["states as [layers, batch, hidden]"]


def test_fixed_choices_are_the_librarys():
    from converters.passes import STATE_LAYOUTS
    from converters.quantize import METHODS
    from converters.recurrent import CELLS
    from converters.tree import STRATEGIES as TREE_STRATEGIES
    from edgernn.contract import MODES
    from runtimes.pack import OPTIMIZATIONS, TARGETS
    from runtimes.session import NONFINITE_POLICIES
    from runtimes.triton import BACKENDS, INSTANCE_KINDS, STRATEGIES

    library = {("export", "--mode"): MODES, ("export", "--state-layout"): STATE_LAYOUTS,
               ("export", "--cells"): CELLS, ("export", "--tree-strategy"): TREE_STRATEGIES,
               ("export", "--nonlinearity"): ("tanh", "relu"), ("bench", "--nonlinearity"): ("tanh", "relu"),
               ("check", "--nonlinearity"): ("tanh", "relu"),
               ("quantize", "--method"): METHODS, ("pack", "--target"): tuple(TARGETS),
               ("pack", "--optimization"): OPTIMIZATIONS, ("serve", "--strategy"): STRATEGIES,
               ("serve", "--kind"): tuple(INSTANCE_KINDS), ("serve", "--backend"): BACKENDS,
               ("run", "--nonfinite"): NONFINITE_POLICIES}
    cli = {(name, opt): values for name, command in COMMANDS.items()
           for opt, values in option_choices(command).items() if opt.startswith("--")}
    assert cli.keys() == library.keys()
    for key, values in cli.items():
        assert set(values) == set(library[key]), key


# ---------------------------------------------------------------- malformed command lines: exit 2

READS_ONNX = ["info", "run", "quantize", "bench", "check", "pack", "serve"]
MINIMAL = {"run": ["-d", "x.npy"], "serve": ["--triton", "repo"]}  # what each needs besides MODEL

USAGE_ERRORS = [  # (id, args, what the one sentence says)
    ("opset below 18", ["export", "m.pt", "--opset", "7"], "Invalid value for '--opset'"),
    ("unknown command", ["convert", "m.pt"], "No such command 'convert'"),
    ("unknown option", ["--verbose"], "No such option: --verbose"),
    ("missing model", ["export"], "Missing argument 'MODEL'"),
    ("bad mode", ["export", "m.pt", "--mode", "stream"], "'stream' is not one of 'chunk', 'step', 'sequence'"),
    ("bad state layout", ["export", "m.pt", "--state-layout", "nchw"], "'nchw' is not one of 'native', 'batch-major'"),
    ("bad cells", ["export", "m.pt", "--cells", "fused"], "'fused' is not one of 'auto', 'matmul'"),
    ("bad tree strategy", ["export", "m.pt", "--tree-strategy", "depth"], "'depth' is not one of 'levels', 'nodes'"),
    ("bad nonlinearity", ["export", "m.pt", "--nonlinearity", "sigmoid"], "'sigmoid' is not one of 'tanh', 'relu'"),
    ("negative tolerance", ["export", "m.pt", "--tolerance", "-1e-5"], "Invalid value for '--tolerance'"),
    ("opset zero", ["export", "m.pt", "--opset", "0"], "Invalid value for '--opset'"),
    ("malformed --input", ["export", "m.pt", "--input", "x:float32"], "--input 'x:float32' is not NAME:DTYPE:DIMS"),
    ("tolerance not a number", ["export", "m.pt", "--tolerance", "small"], "Invalid value for '--tolerance'"),
    ("run without data", ["run", "m.onnx"], "Missing option '--data'"),
    ("run with named and unnamed data", ["run", "m.onnx", "-d", "x.npy", "-d", "h=h.npy"],
     "give either one unnamed FILE.npy or NAME=FILE.npy for every input"),
    ("run chunk zero", ["run", "m.onnx", "-d", "x.npy", "--chunk", "0"], "Invalid value for '--chunk'"),
    ("run threads zero", ["run", "m.onnx", "-d", "x.npy", "--threads", "0"], "Invalid value for '--threads'"),
    ("run's old --input", ["run", "m.onnx", "--input", "x.npy"], "No such option: --input"),
    ("bad nonfinite policy", ["run", "m.onnx", "-d", "x.npy", "--nonfinite", "zero"],
     "'zero' is not one of 'raise', 'reset', 'ignore'"),
    ("bad method", ["quantize", "m.onnx", "--method", "int4"],
     "'int4' is not one of 'dynamic', 'static', 'fp16', 'mixed'"),
    ("agreement above 1", ["quantize", "m.onnx", "--min-agreement", "2"], "Invalid value for '--min-agreement'"),
    ("negative max error", ["quantize", "m.onnx", "--max-error", "-1"], "Invalid value for '--max-error'"),
    ("no frames", ["quantize", "m.onnx", "--frames", "0"], "Invalid value for '--frames'"),
    ("quantize's old --steps", ["quantize", "m.onnx", "--steps", "10"], "No such option: --steps"),
    ("no calls", ["bench", "m.onnx", "--calls", "0"], "Invalid value for '--calls'"),
    ("bench's old --steps", ["bench", "m.onnx", "--steps", "10"], "No such option: --steps"),
    ("no rounds", ["bench", "m.onnx", "--rounds", "0"], "Invalid value for '--rounds'"),
    ("negative warmup", ["bench", "m.onnx", "--warmup", "-1"], "Invalid value for '--warmup'"),
    ("bench batch zero", ["bench", "m.onnx", "--batch", "0"], "Invalid value for '--batch'"),
    ("check: unknown runtime", ["check", "m.onnx", "--runtimes", "ort,tflite"],
     "Invalid value for '--runtimes': unknown runtime 'tflite'; choose from ort, openvino, tract, node, web"),
    ("check: no runtime", ["check", "m.onnx", "--runtimes", ","], "no runtime given"),
    ("check: no frames", ["check", "m.onnx", "--frames", "0"], "Invalid value for '--frames'"),
    ("check: no rounds", ["check", "m.onnx", "--rounds", "0"], "Invalid value for '--rounds'"),
    ("check: chunk zero", ["check", "m.onnx", "--chunk", "0"], "Invalid value for '--chunk'"),
    ("check: negative tolerance", ["check", "m.onnx", "--tolerance", "-1"], "Invalid value for '--tolerance'"),
    ("bad target", ["pack", "m.onnx", "--target", "tflite"], "'tflite' is not one of 'ort'"),
    ("bad optimization", ["pack", "m.onnx", "--optimization", "max"], "'max' is not one of 'all', 'extended', 'basic'"),
    ("bad strategy", ["serve", "m.onnx", "--triton", "repo", "--strategy", "newest"],
     "'newest' is not one of 'oldest', 'direct'"),
    ("bad kind", ["serve", "m.onnx", "--triton", "repo", "--kind", "tpu"], "'tpu' is not one of 'cpu', 'gpu', 'auto'"),
    ("model version zero", ["serve", "m.onnx", "--triton", "repo", "--model-version", "0"],
     "Invalid value for '--model-version'"),
    ("serve's old --version", ["serve", "m.onnx", "--triton", "repo", "--version", "2"], "No such option: --version"),
    ("negative max batch size", ["serve", "m.onnx", "--triton", "repo", "--max-batch-size", "-1"],
     "Invalid value for '--max-batch-size'"),
    ("serve without --triton", ["serve", "m.onnx"], "Missing option '--triton'"),
    *[(f"{name}: state pair without =", [name, "m.onnx", *MINIMAL.get(name, []), "--state-pair", "h"],
       "Invalid value for '--state-pair': 'h' is not IN=OUT (a graph input and the output it pairs with)")
      for name in READS_ONNX],
    *[(f"{name}: state pair without output", [name, "m.onnx", *MINIMAL.get(name, []), "--state-pair", "h="],
       "'h=' is not IN=OUT") for name in READS_ONNX],
    *[(f"{name}: unknown option", [name, "m.onnx", "--quick"], "No such option: --quick") for name in COMMANDS],
]


@pytest.mark.parametrize("args, message", [e[1:] for e in USAGE_ERRORS], ids=[e[0] for e in USAGE_ERRORS])
def test_malformed_command_line_exits_2_with_one_sentence(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)  # no file named in args exists: the command line is refused before any is read
    result = invoke(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    err = result.stderr.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    command = args[0] if args[0] in COMMANDS else None
    assert err.endswith(f"see 'edgernn{' ' + command if command else ''} --help'"), err
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


def test_a_file_that_is_missing_is_the_librarys_error_exit_1(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("info", "missing.onnx")
    assert result.exit_code == 1 and result.stderr.startswith("error: ") and "missing.onnx" in result.stderr


# ---------------------------------------------------------------- light imports


def _modules_after(*args: str) -> tuple[int, list[str]]:
    """Run the CLI in a fresh interpreter; its exit status and the heavy modules it imported."""
    code = ("import sys\nfrom edgernn.cli import app\ncode = 0\ntry:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    code = e.code\nprint(code, *[m for m in %r if m in sys.modules])" % (HEAVY,))
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "120"})
    status, *heavy = proc.stdout.strip().splitlines()[-1].split()
    return int(status), heavy


@pytest.mark.parametrize("args", [["--help"], ["--version"], *[[name, "--help"] for name in COMMANDS],
                                  ["quantize", "m.onnx", "--method", "int4"], ["run", "m.onnx", "--state-pair", "h"],
                                  ["bench", "m.onnx", "--calls", "0"], ["check", "m.onnx", "--runtimes", "tflite"]],
                         ids=" ".join)
def test_help_and_usage_errors_import_nothing_heavy(args):
    status, heavy = _modules_after(*args)
    assert status in (0, 2) and heavy == [], heavy



@pytest.mark.parametrize("args", [["export", "missing.pt"], ["export", "junk.pt"], ["quantize", "missing.onnx"],
                                  ["quantize", "junk.onnx"], ["info", "junk.onnx"], ["run", "missing.onnx", "-d", "x.npy"],
                                  ["bench", "junk.onnx"], ["check", "missing.onnx"], ["check", "junk.onnx"],
                                  ["pack", "missing.onnx"], ["serve", "junk.onnx", "--triton", "r"]],
                         ids=" ".join)
def test_a_missing_or_malformed_file_is_said_without_torch(args, tmp_path, monkeypatch):
    """torch takes seconds to import: a command that cannot start says so before it loads."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    status, heavy = _modules_after(*args)
    assert status == 1 and "torch" not in heavy, heavy


def test_an_output_that_is_an_input_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    import numpy as np
    import torch

    import edgernn

    monkeypatch.chdir(tmp_path)
    assert edgernn.export(torch.nn.GRU(3, 4), tmp_path / "g.onnx", verify=False).path
    np.save("x.npy", np.zeros((5, 1, 3), np.float32))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for args in (["-d", "x.npy", "-o", "x.npy"], ["-d", "x=x.npy", "-o", "./g.onnx"]):
        result = invoke("run", "g.onnx", *args)
        assert result.exit_code == 1 and "is the input file" in result.stderr, result.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_ctrl_c_says_interrupted_and_exits_130(monkeypatch, capsys):
    """main() answers SIGINT with Interrupted (a BaseException: nothing on the way can swallow it,
    and the temporary files being written are removed as it passes)."""
    import signal

    from edgernn import cli

    monkeypatch.setattr(cli, "app", lambda: signal.raise_signal(signal.SIGINT))
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert exit_info.value.code == 130 and capsys.readouterr().err == "interrupted\n"


def test_library_opset_below_18_is_one_sentence():
    import torch

    import edgernn
    from edgernn.errors import ExportError

    with pytest.raises(ExportError, match="^opset 7 is not supported; the exporter writes opset 18 or newer"):
        edgernn.export(torch.nn.GRU(3, 4), None, opset=7)
