"""The argument parser of every command: argument errors in two lines, reported by the command they are about.

argparse answers a wrong argument with the whole usage (25 lines for ``img2pose annotate``) before its
one line of error, and a flag unknown to a subcommand (``img2pose predict --thresold 0.5``) is reported
by the top-level parser, as ``img2pose: error: ...``. :class:`CommandParser` answers instead::

    usage: img2pose annotate --input INPUT --output OUTPUT [options]
    img2pose annotate: error: unrecognized arguments: --inptu (did you mean --input?) (see img2pose annotate --help)

and exits with 2: the required arguments, the error, the closest flag or choice where one is close
(``difflib``; Python 3.11's argparse has no ``suggest_on_error``), where to read more. A subcommand's
parser reports its own unknown arguments. ``--help`` is argparse's, unchanged. Standard library only.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

__all__ = ["CommandParser", "chosen_parser", "close_match"]

# What argparse reads as a negative number, not an option (none of the commands has an option like one).
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")
# argparse's errors that a mistyped flag causes: reported as the unknown flag, with its close match.
_TYPO_ERRORS = ("unrecognized arguments", "the following arguments are required")
# argparse's message for a value outside ``choices`` (3.11: reprs; later versions: the same or bare words).
_INVALID_CHOICE = re.compile(r"invalid choice: (?P<value>.+?) \(choose from (?P<choices>.*)\)")


def close_match(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``word`` (a typo's likely meaning), or None where none is close."""
    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


class _Subcommands(argparse._SubParsersAction):
    """Subcommands whose own parser reports the arguments it does not know (argparse leaves them to the
    top-level parser, which names no subcommand)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:  # fmt: skip
        super().__call__(parser, namespace, values, option_string)
        extras = getattr(namespace, argparse._UNRECOGNIZED_ARGS_ATTR, None)
        if extras and values:
            self._name_parser_map[values[0]].error("unrecognized arguments: " + " ".join(extras))


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose argument errors are two lines (see the module); its subcommands'
    parsers are of the same class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _Subcommands)
        self._arg_strings: list[str] = []

    def _parse_known_args(
        self, arg_strings: list[str], *rest: Any, **kwargs: Any
    ) -> tuple[argparse.Namespace, list[str]]:
        self._arg_strings = list(arg_strings)  # what an error is about
        return super()._parse_known_args(arg_strings, *rest, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Exit with 2 after the short usage and ``PROG: error: MESSAGE (see PROG --help)``."""
        unknown = self.unknown_options(self._arg_strings) if message.startswith(_TYPO_ERRORS) else []
        if unknown:  # a mistyped flag, whatever argparse found first (the --input it then misses)
            message = "unrecognized arguments: " + ", ".join(unknown)
        else:
            message = _with_choice_hint(message)
        self.exit(2, f"usage: {self.short_usage()}\n{self.prog}: error: {message} (see {self.prog} --help)\n")

    def short_usage(self) -> str:
        """``PROG`` with the required arguments, ``[options]`` for the others: one line."""
        formatter = self._get_formatter()
        required, positionals, optional = [], [], False
        for action in self._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            if not action.option_strings:
                positionals.append(formatter._format_args(action, action.dest))
            elif action.required:
                value = formatter._format_args(action, formatter._get_default_metavar_for_optional(action))
                required.append(action.option_strings[0] + (f" {value}" if action.nargs != 0 else ""))
            else:
                optional = True
        return " ".join([self.prog, *required, *(["[options]"] if optional else []), *positionals])

    def unknown_options(self, arg_strings: Sequence[str]) -> list[str]:
        """The options of ``arg_strings`` that this parser does not know, each with its close flag
        (``--inptu (did you mean --input?)``), up to ``--`` or, where it has subcommands, the first
        argument that is not an option (the subcommand's own come after it)."""
        known = self._option_string_actions
        has_subcommands = any(isinstance(a, argparse._SubParsersAction) for a in self._actions)
        found = []
        for text in arg_strings:
            if text == "--":
                break
            if not text.startswith("-") or text == "-" or _NEGATIVE_NUMBER.match(text) or " " in text:
                if has_subcommands:
                    break
                continue  # a value or a positional argument
            name = text.split("=", 1)[0]
            if name in known or (not text.startswith("--") and text[:2] in known):  # -xVALUE
                continue
            if self.allow_abbrev and text.startswith("--") and any(o.startswith(name) for o in known):
                continue  # an abbreviation (argparse itself reports an ambiguous one)
            guess = close_match(name, [o for o in known if o.startswith("--")] if name.startswith("--") else known)
            found.append(f"{name} (did you mean {guess}?)" if guess else name)
        return found


def _with_choice_hint(message: str) -> str:
    """argparse's ``invalid choice`` message with the close choice, if one is."""
    m = _INVALID_CHOICE.search(message)
    if not m:
        return message
    strip = "'\""
    choices = [c.strip().strip(strip) for c in m["choices"].split(",")]
    guess = close_match(m["value"].strip(strip), choices)
    return f"{message}; did you mean {guess}?" if guess else message


def chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command that ``args`` ran: ``img2pose bundle create``'s for ``bundle create``."""
    while True:
        subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subcommands[0].dest, None) if subcommands else None
        if not isinstance(name, str) or name not in subcommands[0].choices:
            return parser
        parser = subcommands[0].choices[name]
