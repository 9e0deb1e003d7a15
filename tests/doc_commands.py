"""Shell commands as the docs write them: fenced blocks, backslash continuations, one script's arguments."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

_NOT_SHELL = ("sql", "python", "py", "json", "yaml", "text")
_OPERATORS = ("&&", "||", ";", "|", "&")


def logical_lines(text: str) -> list[str]:
    """Lines of shell text with backslash continuations joined, comments and blanks left out."""
    out, buf = [], ""
    for line in text.splitlines():
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += line
        if buf.strip() and not buf.strip().startswith("#"):
            out.append(buf.strip())
        buf = ""
    if buf.strip() and not buf.strip().startswith("#"):
        out.append(buf.strip())
    return out


def shell_lines(path: Path) -> list[str]:
    """Every logical command line of the shell-like fenced code blocks of a Markdown file."""
    out = []
    text = path.read_text(encoding="utf-8")
    for lang, block in re.findall(r"^```([^\n`]*)\n(.*?)^```", text, flags=re.S | re.M):
        if lang.strip().lower() not in _NOT_SHELL:
            out += logical_lines(block)
    return out


def module_args_start(tokens: list[str], module: str) -> int | None:
    """Index of the first argument of ``python -m MODULE`` in ``tokens``, or of ``img2pose COMMAND`` where
    MODULE is a job with a console command (``jobs.cli.JOB_COMMANDS``); None when neither runs."""
    from jobs.cli import JOB_COMMANDS

    command = next((c for c, (m, _) in JOB_COMMANDS.items() if m == module), None)
    for i, token in enumerate(tokens):
        if token == module and i > 0 and tokens[i - 1] == "-m":
            return i + 1
        if command and Path(token).name == "img2pose" and tokens[i + 1 : i + 2] == [command]:
            return i + 2
    return None


def script_argv(command: str, module: str, env: dict[str, str] | None = None) -> list[str] | None:
    """The arguments of ``module`` (e.g. ``jobs.train``, run as ``python -m jobs.train`` or ``img2pose
    train``) in a command, up to a shell operator, with ``$VAR`` / ``${VAR}`` replaced from ``env``; None
    when the command does not run that module."""
    for name, value in (env or {}).items():
        command = command.replace("${" + name + "}", value).replace("$" + name, value)
    tokens = shlex.split(command, comments=True)
    start = module_args_start(tokens, module)
    if start is None:
        return None
    argv = []
    for t in tokens[start:]:
        if t in _OPERATORS or t.startswith((">", "<", "2>")):
            break
        argv.append(t)
    return argv


# A module of jobs/ or benchmarks/ run by its file name: `python jobs/annotate.py`, `python3
# benchmarks/speed.py`, a Dockerfile's ["python", "jobs/annotate.py"], "$PYTHON" benchmarks/x.py, or
# the file name given with flags as a command (`benchmarks/speed.py --device cuda`).
# Run so, Python puts jobs/ (not the repository root) first on sys.path, and what the file imports comes
# from whatever `jobs` / `img2pose_core` is installed; `python -m jobs.annotate` is the form.
SCRIPT_FORM = re.compile(r"""(?:\bpython[0-9.]*|\$\{?PYTHON\}?)["']?,?\s+["']?(?:-\S+\s+)*(?:\S*/)?(?:jobs|benchmarks)/\w+\.py\b|\b(?:jobs|benchmarks)/\w+\.py\s+--?\w""")


def script_form_lines(path: Path) -> list[str]:
    """The lines of ``path`` that run a module of jobs/ or benchmarks/ as a file (:data:`SCRIPT_FORM`)."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if SCRIPT_FORM.search(line)]
