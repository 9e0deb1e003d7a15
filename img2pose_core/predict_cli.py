"""``img2pose predict``: faces and poses of local image files, one JSON object per line."""

from __future__ import annotations

import argparse
import json
import sys
import time

__all__ = ["register", "run_predict"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="detect faces and their 6DoF poses in image files (JSON lines on stdout)",
        description=(
            "Detect faces in IMAGE files and print one JSON object per image: "
            '{"image", "width", "height", "faces": [{"score", "box": [x1,y1,x2,y2], '
            '"pose": [rx,ry,rz,tx,ty,tz], "yaw", "pitch", "roll", "landmarks_5"}]}. '
            "An image that cannot be read gets {\"image\", \"error\": {\"status\", \"message\"}} and the "
            "exit code is 1; the other images are still processed."
        ),
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, WebP, TIFF, GIF, BMP ...)")
    p.add_argument(
        "--bundle",
        default=None,
        help="model bundle: folder or URL (default: $IMG2POSE_BUNDLE, else the official bundle in the cache)",
    )
    p.add_argument("--min-size", type=int, default=None, help="resize so the short side is this (default: bundle's)")
    p.add_argument("--max-size", type=int, default=None, help="cap for the long side after resize (default: bundle's)")
    p.add_argument("--threshold", type=float, default=0.0, help="keep faces scoring above this (default 0.0)")
    p.add_argument("--max-faces", type=int, default=None, help="keep at most this many faces per image")
    p.add_argument("--rpn-pre-nms-top-n", type=int, default=None, help="RPN proposals per level before NMS")
    p.add_argument("--rpn-post-nms-top-n", type=int, default=None, help="RPN proposals per image after NMS")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast on CUDA")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    p.add_argument("--landmarks-68", action="store_true", help="also print the 68 projected landmarks")
    p.add_argument(
        "--max-pixels", type=int, default=None, help="refuse images above this many pixels, before decoding"
    )
    p.set_defaults(run=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from .bundle import BundleError, resolve_bundle
    from .imageio import DEFAULT_MAX_PIXELS, ImageDecodeError, read_image_file
    from .predictor import Predictor

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

    failed = 0
    started = time.perf_counter()
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    # Decode a batch, predict it, print it: memory stays bounded however many files are given.
    for start in range(0, len(args.images), args.batch_size):
        names = args.images[start : start + args.batch_size]
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
    n = len(args.images)
    print(
        f"img2pose: {n - failed}/{n} images processed, {failed} failed, {elapsed:.1f} s ({n / elapsed:.2f} images/s)",
        file=sys.stderr,
    )
    return 1 if failed else 0


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
