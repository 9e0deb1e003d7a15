"""``img2pose predict``: faces and poses of local image files, one JSON object per line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

from ..flags import COMMON, HelpFormatter, add_model_flags, positive_int

if TYPE_CHECKING:  # both import numpy or torch: the parser (img2pose --help) imports neither
    from ..imageio import ImageDecodeError
    from ..predictor import Predictor

__all__ = ["register", "run_predict", "check_files", "expand_folders", "summary"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``predict`` command."""
    p = subparsers.add_parser(
        "predict",
        help="detect faces and their 6DoF poses in image files (JSON lines on stdout)",
        description=(
            "Detect faces in IMAGE files and print one JSON object per image: "
            '{"image", "width", "height", "faces": [{"score", "box": [x1,y1,x2,y2], '
            '"pose": [rx,ry,rz,tx,ty,tz], "yaw", "pitch", "roll", "landmarks_5"}]}. '
            "An image that cannot be read gets {\"image\", \"error\": {\"status\", \"message\"}} and the "
            "exit code is 1; the other images are still processed. Every model setting is the bundle's "
            "unless its flag is given; the threshold of a new bundle is 0.8."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (JPEG, PNG, WebP, TIFF, GIF, BMP ...) or folders (their image files, recursively, "
                   "in name order)")
    add_model_flags(p, (*COMMON, "rpn_pre_nms_top_n", "rpn_post_nms_top_n", "device", "precision"))
    p.add_argument("--batch-size", type=positive_int, default=4, help="images per forward pass (default 4)")
    p.add_argument("--landmarks-68", action="store_true", help="also print the 68 projected landmarks")
    p.add_argument(
        "--max-pixels", type=int, default=None, help="refuse images above this many pixels, before decoding"
    )
    p.set_defaults(run=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    """``img2pose predict``: one JSON line per image on stdout; 1 if an image failed, 2 on a bad bundle or flag.

    Files that are missing or not regular files are reported before the model loads; when no file is
    left, the command ends there (exit 1) without loading it."""
    from ..imageio import DEFAULT_MAX_PIXELS, ImageDecodeError, read_image_file

    try:
        images = expand_folders(args.images)
    except OSError as exc:
        print(f"img2pose: error: {exc}", file=sys.stderr)
        return 2
    problems = check_files(images)
    predictor = None
    if len(problems) < len(images):  # a file to run: only now load the model (seconds, a download at first)
        predictor = _predictor(args)
        if predictor is None:
            return 2
    failed = 0
    started = time.perf_counter()
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    # Decode a batch, predict it, print it: memory stays bounded however many files are given.
    for start in range(0, len(images), args.batch_size):
        decoded = []
        for i in range(start, min(start + args.batch_size, len(images))):
            name = images[i]
            try:
                if i in problems:
                    raise problems[i]
                decoded.append((name, read_image_file(name, max_pixels=max_pixels)))
            except ImageDecodeError as exc:
                failed += 1
                _emit({"image": name, "error": {"status": exc.status, "message": exc.message}})
        results = predictor.predict([img.pixels for _, img in decoded]) if decoded and predictor else []
        for (name, _), faces in zip(decoded, results):
            _emit({"image": name, "width": faces.width, "height": faces.height, "faces": faces.to_json()})
    print(f"img2pose: {summary(len(images), failed, time.perf_counter() - started)}", file=sys.stderr)
    return 1 if failed else 0


def _predictor(args: argparse.Namespace) -> Predictor | None:
    """The command's :class:`~img2pose_core.predictor.Predictor`, or None after saying why there is none."""
    from ..bundle import BundleError, resolve_bundle
    from ..predictor import Predictor

    try:
        return Predictor(
            resolve_bundle(args.bundle),
            device=args.device,
            precision=args.precision,
            min_size=args.min_size,
            max_size=args.max_size,
            threshold=args.threshold,
            max_faces=args.max_faces,
            rpn_pre_nms_top_n=args.rpn_pre_nms_top_n,
            rpn_post_nms_top_n=args.rpn_post_nms_top_n,
            landmarks_68=args.landmarks_68,
            batch_size=args.batch_size,
        )
    except (BundleError, ValueError) as exc:
        print(f"img2pose: error: {exc}", file=sys.stderr)
        return None


def check_files(paths: list[str]) -> dict[int, ImageDecodeError]:
    """By index, why each of ``paths`` cannot be read as an image file, found without reading or
    loading anything: an :class:`~img2pose_core.imageio.ImageDecodeError` ``unreadable`` (missing, not
    allowed to look) or ``not_a_file`` (a folder, named pipe, socket or device: reading one would fail
    or block)."""
    import os
    import stat

    from ..imageio import ImageDecodeError

    problems: dict[int, ImageDecodeError] = {}
    for i, path in enumerate(paths):
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            problems[i] = ImageDecodeError("unreadable", f"cannot read {path}: {exc.strerror or exc}")
            continue
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "a socket or device"
            problems[i] = ImageDecodeError("not_a_file", f"{path}: not a regular file ({kind}); never read")
    return problems


def summary(total: int, failed: int, seconds: float) -> str:
    """The closing line: images processed of those given, failures, time, and the rate of the images
    processed (none when none was)."""
    done = total - failed
    rate = f" ({done / seconds:.2f} images/s)" if done and seconds > 0 else ""
    return f"{done}/{total} images processed, {failed} failed, {seconds:.1f} s{rate}"


def expand_folders(paths: list[str]) -> list[str]:
    """``paths`` with every folder replaced by its image files (by extension, recursively, in name order,
    hidden entries and links to folders left out); files are kept as given, whatever their name."""
    import os

    from ..imageio import IMAGE_EXTENSIONS

    out: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            out.append(path)
            continue
        found = []
        for root, dirs, files in os.walk(path):  # os.walk does not follow links to folders
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [os.path.join(root, f) for f in files if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise OSError(f"{path}: a folder without image files ({', '.join(IMAGE_EXTENSIONS[:4])} ...)")
        out += sorted(found)
    return out


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
