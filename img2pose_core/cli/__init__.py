"""The ``img2pose`` command: ``predict`` and ``render`` on image files, ``report`` on a job's output,
``bundle create|fetch|verify``, and the Ray jobs ``annotate``, ``train``, ``evaluate``, ``prepare``.

One module per command group (:mod:`.bundle`, :mod:`.predict`, :mod:`.render`, :mod:`.report`), each
adding its subcommand with ``register``; :func:`main` here is the only entry point (the console script
``img2pose`` and ``python -m img2pose_core.cli``).

The job commands are the modules of ``jobs/`` (what ``ray job submit ... -- python -m jobs.annotate``
runs): ``img2pose annotate ARGS`` is ``python -m jobs.annotate ARGS``, the job's own parser and ``main``
included. ``img2pose_core`` is the library under the jobs, so it imports ``jobs`` only when such a
command runs, never when the parser is built.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..flags import HelpFormatter, model_flag_error

__all__ = ["main", "build_parser", "JOB_COMMANDS"]

# command -> (module of jobs/, one-line help). The module's main(argv, prog=...) runs it.
JOB_COMMANDS = {
    "annotate": ("jobs.annotate", "annotate every face of an image corpus on Ray: Parquet/Iceberg tables (jobs.annotate)"),
    "train": ("jobs.train", "train img2pose with Ray Train on prepared shards (jobs.train)"),
    "evaluate": ("jobs.evaluate", "evaluate a bundle on AFLW2000-3D, BIWI or WIDER FACE, the authors' protocols (jobs.evaluate)"),
    "prepare": ("jobs.prepare_dataset", "make training shards with pose labels from the authors' annotations (jobs.prepare_dataset)"),
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The ``img2pose`` parser with every command (imports no torch, ray or numpy)."""
    parser = argparse.ArgumentParser(
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
    for command, (module, text) in JOB_COMMANDS.items():
        _register_job(sub, command, module, text)
    return parser


def _register_job(sub: argparse._SubParsersAction, command: str, module: str, text: str) -> None:
    """List a job command; :func:`main` hands its arguments to the job's own parser, untouched."""
    p = sub.add_parser(command, help=text, add_help=False, description=f"Runs {module}.main; see --help.")
    # Reached only by parse_args([command]) outside main: runs the job with no arguments (its usage).
    p.set_defaults(run=lambda args: run_job(command, []))


def run_job(command: str, argv: list[str]) -> int:
    """``img2pose COMMAND ARGS``: the job module's ``main(ARGS)``, with ``img2pose COMMAND`` in its messages."""
    module, _ = JOB_COMMANDS[command]
    try:
        job = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name not in ("jobs", module):
            raise
        print(f"img2pose: error: `img2pose {command}` needs the jobs package of img2pose-ray beside img2pose_core "
              f"(install the project, or run python -m {module} from the repository)",
              file=sys.stderr)  # fmt: skip
        return 2
    return int(job.main(argv, prog=f"img2pose {command}") or 0)


def main(argv: list[str] | None = None) -> int:
    """Run ``img2pose ARGV`` (default: ``sys.argv[1:]``) and return its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in JOB_COMMANDS:
        # The job's flags have one definition, its own parser: argparse cannot pass options through a
        # subparser untouched, so the job command is recognised here, before any parsing.
        return run_job(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = model_flag_error(args)
    if problem:
        parser.error(problem)
    return int(args.run(args) or 0)

