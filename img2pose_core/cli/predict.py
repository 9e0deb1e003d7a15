"""``img2pose predict``: faces and poses of local image files, one JSON object per line."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..flags import COMMON, HelpFormatter, add_model_flags, positive_int

__all__ = ["register", "run_predict"]


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
    """``img2pose predict``: one JSON line per image on stdout; 1 if an image failed, 2 on a bad bundle or flag."""
    from ..bundle import BundleError, resolve_bundle
    from ..imageio import DEFAULT_MAX_PIXELS, ImageDecodeError, read_image_file
    from ..predictor import Predictor

    try:
        bundle = resolve_bundle(args.bundle)
        predictor = Predictor(
            bundle,
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
        return 2

    try:
        images = expand_folders(args.images)
    except OSError as exc:
        print(f"img2pose: error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    started = time.perf_counter()
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    # Decode a batch, predict it, print it: memory stays bounded however many files are given.
    for start in range(0, len(images), args.batch_size):
        names = images[start : start + args.batch_size]
        decoded = []
        for name in names:
            try:
                decoded.append((name, read_image_file(name, max_pixels=max_pixels)))
            except ImageDecodeError as exc:
                failed += 1
                _emit({"image": name, "error": {"status": exc.status, "message": exc.message}})
        results = predictor.predict([img.pixels for _, img in decoded]) if decoded else []
        for (name, _), faces in zip(decoded, results):
            _emit({"image": name, "width": faces.width, "height": faces.height, "faces": faces.to_json()})
    elapsed = time.perf_counter() - started
    n = len(images)
    rate = f" ({n / elapsed:.2f} images/s)" if n else ""  # no rate of nothing
    print(f"img2pose: {n - failed}/{n} images processed, {failed} failed, {elapsed:.1f} s{rate}", file=sys.stderr)
    return 1 if failed else 0


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
