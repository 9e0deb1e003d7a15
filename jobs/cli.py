"""The ``img2pose`` console command: the library's commands (:mod:`img2pose_core.cli`) and the Ray jobs.

``img2pose annotate ARGS`` is ``python -m jobs.annotate ARGS``, the job's own parser and ``main``
included (likewise ``train``, ``evaluate``, ``prepare``). The jobs sit above the library, so this is
where the two meet; building the parser imports no torch, ray or numpy, and a job's module is imported
only when its command runs.
"""

from __future__ import annotations

import functools
import importlib
import sys

from img2pose_core.cli import PassThrough
from img2pose_core.cli import main as library_main

__all__ = ["JOB_COMMANDS", "main", "build_parser", "run_job"]

# command -> (module of jobs/, one-line help). The module's main(argv, prog=...) runs it.
JOB_COMMANDS = {
    "annotate": ("jobs.annotate", "annotate every face of an image corpus on Ray: Parquet/Iceberg tables (jobs.annotate)"),
    "train": ("jobs.train", "train img2pose with Ray Train on prepared shards (jobs.train)"),
    "evaluate": ("jobs.evaluate", "evaluate a bundle on AFLW2000-3D, BIWI or WIDER FACE, the authors' protocols (jobs.evaluate)"),
    "prepare": ("jobs.prepare_dataset", "make training shards with pose labels from the authors' annotations (jobs.prepare_dataset)"),
}  # fmt: skip


def run_job(command: str, argv: list[str]) -> int:
    """``img2pose COMMAND ARGS``: the job module's ``main(ARGS)``, with ``img2pose COMMAND`` in its messages."""
    module, _ = JOB_COMMANDS[command]
    job = importlib.import_module(module)
    return int(job.main(argv, prog=f"img2pose {command}") or 0)


def _commands() -> dict[str, PassThrough]:
    return {command: (text, functools.partial(run_job, command)) for command, (_, text) in JOB_COMMANDS.items()}


def build_parser():
    """The whole ``img2pose`` parser: the library's commands and the jobs'."""
    from img2pose_core.cli import build_parser as library_parser

    return library_parser(_commands())


def main(argv: list[str] | None = None) -> int:
    """Run ``img2pose ARGV`` (default: ``sys.argv[1:]``) and return its exit code."""
    return library_main(argv, _commands())


if __name__ == "__main__":
    sys.exit(main())
