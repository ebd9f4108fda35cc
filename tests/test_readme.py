"""README.md cannot rot: its commands name real CLI commands and flags, its ``bash`` and ``python``
blocks run, and its two quick-start commands are what ``.ci/run`` runs.

Code blocks are read by their info string: ``bash`` blocks are run (except the quick-start blocks,
which run ``setup.sh``; ``.ci/run`` runs those), ``python`` blocks are run, ``text`` blocks are
synopses whose commands and flags are only checked against the CLI.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from edgernn._cli_options import option_choices
from edgernn.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def blocks(kind: str | None = None) -> list[str]:
    """Bodies of README's fenced code blocks (of info string ``kind``, if given)."""
    found = [(info.strip(), body) for info, body in FENCE.findall(README.read_text())]
    return [body for info, body in found if kind is None or info == kind]


def shell_lines() -> list[str]:
    """Every command line of the shell-like blocks (bash, text), ``&&`` chains split."""
    lines = []
    for body in blocks("bash") + blocks("text"):
        for line in body.splitlines():
            line = line.strip().removeprefix("$ ")
            if line and not line.startswith("#"):
                lines += [part.strip() for part in line.split("&&")]
    return lines


def edgernn_invocations() -> list[list[str]]:
    """The arguments after ``edgernn`` (or ``python -m edgernn``) of each README command."""
    calls = []
    for line in shell_lines():
        tokens = shlex.split(line, comments=True)
        if tokens and Path(tokens[0]).name == "edgernn":
            calls.append(tokens[1:])
        elif len(tokens) >= 3 and Path(tokens[0]).name.startswith("python") and tokens[1:3] == ["-m", "edgernn"]:
            calls.append(tokens[3:])
    return calls


def _clean(token: str) -> str:
    """``[--mode`` -> ``--mode``, ``--tolerance=1e-4`` -> ``--tolerance``."""
    return token.strip("[]").split("=", 1)[0]


def _options(command) -> set[str]:
    opts = {"--help"}
    for p in command.params:
        opts.update(p.opts)
        opts.update(getattr(p, "secondary_opts", []))
    return opts


CLICK = typer.main.get_command(app)
COMMANDS = CLICK.commands  # name -> click command


def test_readme_mentions_each_command():
    used = {args[0] for args in edgernn_invocations() if args and not args[0].startswith("-")}
    assert used == set(COMMANDS), f"README shows {sorted(used)}; the CLI has {sorted(COMMANDS)}"


@pytest.mark.parametrize("args", edgernn_invocations(), ids=lambda a: " ".join(a)[:60])
def test_readme_edgernn_command_exists(args):
    runner = CliRunner()
    if not args or args[0].startswith("-"):  # `edgernn --help`, `edgernn --version`
        for flag in map(_clean, args):
            assert flag in _options(CLICK), f"edgernn has no option {flag}"
        return
    name, rest = args[0], args[1:]
    assert name in COMMANDS, f"edgernn has no command {name!r} (it has {sorted(COMMANDS)})"
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    known = _options(COMMANDS[name])
    choices = option_choices(COMMANDS[name])
    for k, token in enumerate(rest):
        if not token.strip("[").startswith("-"):
            continue
        flag = _clean(token)
        assert flag in known, f"`edgernn {name}` has no option {flag} (it has {sorted(known)})"
        assert flag in result.output, f"`edgernn {name} --help` does not show {flag}"
        if flag in choices and k + 1 < len(rest):  # `--mode step`, `[--method dynamic|static|fp16|mixed]`
            assert set(_clean(rest[k + 1]).split("|")) <= set(choices[flag]), (flag, rest[k + 1])


def test_readme_inline_flags_exist():
    """Flags quoted in the prose (`--class`, `--batch-first/--time-major`...) exist in some edgernn
    command or example script (argparse flags of examples/)."""
    prose = FENCE.sub("", README.read_text())
    every = set().union(_options(CLICK), *(_options(c) for c in COMMANDS.values()))
    for script in (ROOT / "examples").rglob("*.py"):
        for call in re.findall(r"add_argument\(([^)]*)", script.read_text()):
            every.update(re.findall(r"\"(--?[\w-]+)\"", call))
    for span in re.findall(r"`([^`\n]+)`", prose):
        for flag in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", span):
            if span.startswith(("pip ", "python ", ".venv/")) or flag == "-e":
                continue
            assert flag in every, f"README mentions {flag} (in `{span}`), which no edgernn command or example has"


def quickstart() -> list[str]:
    """The quick-start commands: the blocks that run setup.sh, one command each."""
    cmds = [line.strip() for body in blocks("bash") if "setup.sh" in body
            for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]
    return cmds


def ci_lines() -> list[str]:
    return [line.strip() for line in CI.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_quickstart_commands_are_what_ci_runs():
    cmds = quickstart()
    assert cmds == ["bash setup.sh && .venv/bin/python examples/wakeword/demo.py",
                    "bash setup.sh && .venv/bin/python -m pytest -q"]
    text = README.read_text()
    assert text.index(cmds[0]) < text.index("## What edgernn does"), "the quick start must open the README"
    lines = ci_lines()
    for cmd in cmds:
        for part in (p.strip() for p in cmd.split("&&")):
            assert part in lines, f".ci/run does not run {part!r}"
    assert "set -euo pipefail" in lines
    assert lines.index("rm -rf .venv") < lines.index("bash setup.sh"), ".ci/run must start from a fresh .venv"
    assert CI.stat().st_mode & stat.S_IXUSR, ".ci/run must be executable"


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder that sees the repo's examples/, and a PATH whose `edgernn` and `python` are this
    interpreter's (whatever venv pytest runs in)."""
    (tmp_path / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    shims = tmp_path / ".shims"
    shims.mkdir()
    for name, body in (("edgernn", f'exec "{sys.executable}" -m edgernn "$@"'),
                       ("python", f'exec "{sys.executable}" "$@"')):
        (shims / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (shims / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}{os.pathsep}{os.environ.get('PATH', '')}"}
    return tmp_path, env


def test_readme_bash_blocks_run(sandbox):
    cwd, env = sandbox
    runnable = [body for body in blocks("bash") if "setup.sh" not in body]
    assert runnable, "README has no CLI tour to run"
    for body in runnable:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"README block failed:\n{body}\n{done.stdout}\n{done.stderr}"
    # the tour's chunk and step files streamed the same input: they must agree
    y, y_step = np.load(cwd / "out" / "y.npy"), np.load(cwd / "out" / "y_step.npy")
    assert y.shape == y_step.shape == (1, 500, 2)
    assert np.max(np.abs(y - y_step)) / max(1.0, float(np.max(np.abs(y)))) < 1e-5


def test_readme_python_blocks_run(tmp_path):
    code = blocks("python")
    assert code, "README has no Python example"
    for k, body in enumerate(code):
        script = tmp_path / f"readme_{k}.py"
        script.write_text(body)
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"README Python block {k} failed:\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "gru.onnx").is_file() and (tmp_path / "gru.pt").is_file()
