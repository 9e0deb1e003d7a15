"""The ``img2pose`` command's library part: ``predict`` and ``render`` on image files, ``report`` on a
job's output, ``bundle create|fetch|verify``.

One module per command group (:mod:`.bundle`, :mod:`.predict`, :mod:`.render`, :mod:`.report`), each
adding its subcommand with ``register``; :func:`main` here is the one entry point. Every parser, the
jobs' included, is a :class:`~.parser.CommandParser`: an argument error is two lines naming its command. The Ray jobs
(``annotate``, ``train``, ``evaluate``, ``prepare``) live in ``jobs/``, above this library: the console
script ``img2pose`` is :func:`jobs.cli.main`, which hands them to :func:`main` as pass-through
``commands``, so ``img2pose_core`` never imports ``jobs``. ``python -m img2pose_core.cli`` has the
library's commands only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping

from ..flags import HelpFormatter, model_flag_error
from .parser import CommandParser, chosen_parser

__all__ = ["main", "build_parser", "CommandParser", "PassThrough"]

# A command whose arguments go untouched to its own parser: (one-line help, run(argv) -> exit code).
PassThrough = tuple[str, Callable[[list[str]], int]]


def build_parser(commands: Mapping[str, PassThrough] | None = None) -> argparse.ArgumentParser:
    """The ``img2pose`` parser with the library's commands and the pass-through ``commands`` (imports no
    torch, ray or numpy)."""
    parser = CommandParser(
        prog="img2pose",
        description=(
            "img2pose face detection with 6DoF head pose: predict and render on images, report on a job's "
            "output, manage model bundles, and run the Ray jobs (annotate, train, evaluate, prepare). Model "
            "settings (sizes, --threshold ...) are the bundle's unless a flag says otherwise; a new bundle's "
            "threshold is 0.8. `img2pose COMMAND --help` tells each command's flags."
        ),
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from .bundle import register as register_bundle
    from .predict import register as register_predict
    from .render import register as register_render
    from .report import register as register_report

    register_predict(sub)
    register_bundle(sub)
    register_render(sub)
    register_report(sub)
    for command, (text, run) in (commands or {}).items():
        _register_pass_through(sub, command, text, run)
    return parser


def _register_pass_through(sub: argparse._SubParsersAction, command: str, text: str,
                           run: Callable[[list[str]], int]) -> None:  # fmt: skip
    """List a pass-through command; :func:`main` hands its arguments to its own parser, untouched."""
    p = sub.add_parser(command, help=text, add_help=False, description="See --help.")
    # Reached only by parse_args([command]) outside main: runs it with no arguments (its usage).
    p.set_defaults(run=lambda args: run([]))


def main(argv: list[str] | None = None, commands: Mapping[str, PassThrough] | None = None) -> int:
    """Run ``img2pose ARGV`` (default: ``sys.argv[1:]``) and return its exit code; ``commands`` are the
    pass-through commands (the jobs')."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and commands and argv[0] in commands:
        # A job's flags have one definition, its own parser: argparse cannot pass options through a
        # subparser untouched, so the command is recognised here, before any parsing.
        return int(commands[argv[0]][1](argv[1:]) or 0)
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    problem = model_flag_error(args)
    if problem:
        chosen_parser(parser, args).error(problem)  # named by its command: "img2pose predict: error: ..."
    return int(args.run(args) or 0)

