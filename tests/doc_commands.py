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


def script_argv(command: str, script: str, env: dict[str, str] | None = None) -> list[str] | None:
    """The arguments after ``script`` (e.g. ``jobs/train.py``) in a command, up to a shell operator, with
    ``$VAR`` / ``${VAR}`` replaced from ``env``; None when the command does not run that script."""
    for name, value in (env or {}).items():
        command = command.replace("${" + name + "}", value).replace("$" + name, value)
    tokens = shlex.split(command, comments=True)
    for i, token in enumerate(tokens):
        if token.endswith(script):
            argv = []
            for t in tokens[i + 1 :]:
                if t in _OPERATORS or t.startswith((">", "<", "2>")):
                    break
                argv.append(t)
            return argv
    return None
