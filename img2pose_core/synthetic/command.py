"""``python -m img2pose_core.synthetic``: synthetic datasets for the training and evaluation smoke run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from .datasets import write_aflw2000_style, write_annotation_dataset, write_biwi_style, write_wider_style

__all__ = ["main"]

# Each writer takes (out, points_68, points_5, n_images=, seed=, size=) and its own keywords (see main).
_WRITERS: dict[str, Callable[..., Path]] = {
    "annotations": write_annotation_dataset, "aflw2000": write_aflw2000_style, "biwi": write_biwi_style,
    "wider": write_wider_style,
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m img2pose_core.synthetic KIND OUT --bundle B [--images N] [--size W H] [--seed S]``."""
    p = argparse.ArgumentParser(
        prog="python -m img2pose_core.synthetic",
        description="Write a small synthetic dataset with exact pose labels, in the layout the project reads: "
        "annotations (the authors' training format, for jobs/prepare_dataset.py), aflw2000, biwi or wider "
        "(for jobs/evaluate.py). Only the bundle's 3D reference points are used.",
    )
    p.add_argument("kind", choices=sorted(_WRITERS))
    p.add_argument("out", help="folder to write")
    p.add_argument("--bundle", default=None, help="bundle giving the 3D reference points (default: $IMG2POSE_BUNDLE / the official one)")
    p.add_argument("--images", type=int, default=8, help="number of images")
    p.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("W", "H"), help="image size in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--faces", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="annotations, wider: faces per image (default: 1 3 and 1 5)")
    p.add_argument("--face-size", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="annotations: face width as a fraction of the short side (default: 0.15 0.5)")
    p.add_argument("--repeat", type=int, default=1,
                   help="annotations: list every image this many times (a set to memorise: the loss must fall)")
    args = p.parse_args(argv)
    if args.images < 1 or min(args.size) < 32 or args.repeat < 1:
        p.error("--images and --repeat must be at least 1, --size at least 32 32")
    if args.faces and not 1 <= args.faces[0] <= args.faces[1]:
        p.error("--faces MIN MAX needs 1 <= MIN <= MAX")
    if args.face_size and not 0 < args.face_size[0] <= args.face_size[1] <= 1:
        p.error("--face-size MIN MAX needs 0 < MIN <= MAX <= 1")
    extra = {}
    if args.kind in ("annotations", "wider") and args.faces:
        extra["faces"] = tuple(args.faces)
    if args.kind == "annotations":
        extra["repeat"] = args.repeat
        if args.face_size:
            extra["face_px"] = tuple(args.face_size)
    from ..bundle import BundleError, resolve_bundle

    try:
        bundle = resolve_bundle(args.bundle)
    except BundleError as exc:
        p.error(str(exc))
    written = _WRITERS[args.kind](args.out, bundle.points_68, bundle.points_5, n_images=args.images, seed=args.seed,
                                  size=tuple(args.size), **extra)
    print(f"synthetic: wrote {args.images} {args.kind} image(s): {written}", file=sys.stderr)
    return 0
