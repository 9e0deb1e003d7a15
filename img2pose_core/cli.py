"""The ``img2pose`` command: ``predict`` on image files, ``bundle create|fetch|verify``."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="img2pose",
        description="img2pose face detection with 6DoF head pose: predict on images, manage model bundles.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from .predict_cli import register as register_predict
    from .bundle_cli import register as register_bundle

    register_predict(sub)
    register_bundle(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
