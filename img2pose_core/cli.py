"""The ``img2pose`` command: ``predict`` and ``render`` on image files, ``report`` on a job's output,
``bundle create|fetch|verify``."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="img2pose",
        description=(
            "img2pose face detection with 6DoF head pose: predict and render on images, report on a job's "
            "output, manage model bundles."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from .bundle_cli import register as register_bundle
    from .predict_cli import register as register_predict
    from .render_cli import register as register_render
    from .report_cli import register as register_report

    register_predict(sub)
    register_bundle(sub)
    register_render(sub)
    register_report(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
