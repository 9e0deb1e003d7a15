"""``img2pose render``: draw the faces and poses of images, from the model or from a run's tables.

Two sources:

- ``img2pose render --bundle B IMAGE... --out DIR`` runs the model on local image files;
- ``img2pose render --from-output OUTPUT [--run-id R] [--sample N] --out DIR`` draws what a run of
  ``jobs.annotate`` stored (the faces table's poses, boxes and 5 landmarks; with ``--bundle`` also the
  68 landmarks projected from the stored poses) on a sample of its images, re-read by ``image_uri``.

Each PNG is named by the image's SHA-256 (first 16 hex digits), never by its path; one JSON line per
image on stdout says which input went where.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from ..flags import HelpFormatter, add_model_flags

__all__ = ["register", "run_render"]

_BUNDLE_HELP = (
    "model bundle (folder or URL). IMAGE mode: the model (default: $IMG2POSE_BUNDLE, else the official bundle). "
    "--from-output: optional, its 3D reference adds the 68 landmarks and --mesh"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``render`` command."""
    p = subparsers.add_parser(
        "render",
        help="draw faces with box, landmarks, pose axes, score and angles into PNG files",
        description=(
            "Draw every face of each image: its box, landmarks (68 projected points, or the 5 of a run's "
            "table without --bundle), the three pose axes (x red, y green, z blue), the score and yaw/pitch/"
            "roll. From IMAGE files (runs the model) or from a run's output (--from-output: the stored "
            "poses, no model run). PNGs are named <sha256 of the image bytes, 16 hex>.png; stdout gets one "
            'JSON line per image: {"image", "render", "faces"} or {"image", "error"}.'
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="local image files (runs the model)")
    p.add_argument("--out", required=True, help="folder for the PNG files (created)")
    p.add_argument("--from-output", default=None, metavar="OUTPUT",
                   help="draw from a run's output (folder or URL with faces/ and images/) instead of IMAGE files")  # fmt: skip
    p.add_argument("--run-id", default=None, help="with --from-output: only this run (default: latest state of each image)")
    p.add_argument("--sample", type=int, default=16, help="with --from-output: how many images with faces to draw (default 16)")
    p.add_argument("--seed", default="0", help="with --from-output: changes which images the sample picks (default 0)")
    p.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint for s3:// URLs (default $AWS_ENDPOINT_URL)")
    p.add_argument("--catalog", default=None, metavar="URI", help="the job's --catalog, for Iceberg tables (default: plain Parquet under OUTPUT)")
    p.add_argument("--namespace", default="img2pose", help="the job's --namespace (Iceberg)")
    add_model_flags(p, ("bundle",), help={"bundle": _BUNDLE_HELP})
    p.add_argument("--mesh", action="store_true", help="also join the 68 landmarks into face contours")
    p.add_argument("--axis-length", type=float, default=None, help="axis length in reference-head units (default 0.8)")
    p.add_argument("--max-side", type=int, default=None, help="shrink renders so the long side is at most this")
    add_model_flags(p, ("min_size", "max_size", "threshold", "max_faces", "device"), scope="IMAGE mode: ")
    p.add_argument("--max-pixels", type=int, default=None, help="refuse images above this many pixels, before decoding")
    p.set_defaults(run=run_render)


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def run_render(args: argparse.Namespace) -> int:
    """``img2pose render``: PNGs into ``--out``, one JSON line per image; 1 if an image failed, 2 on bad flags."""
    from ..render import DEFAULT_AXIS_LENGTH

    if bool(args.images) == bool(args.from_output):
        print("img2pose: error: give IMAGE files or --from-output OUTPUT (one of the two)", file=sys.stderr)
        return 2
    if args.sample < 1:
        print("img2pose: error: --sample must be at least 1", file=sys.stderr)
        return 2
    if args.axis_length is None:
        args.axis_length = DEFAULT_AXIS_LENGTH
    if args.axis_length <= 0 or (args.max_side is not None and args.max_side < 16):
        print("img2pose: error: --axis-length must be positive and --max-side at least 16", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"img2pose: error: cannot create --out {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if args.from_output:
        return _render_from_output(args, out)
    return _render_images(args, out)


def _render_images(args: argparse.Namespace, out: Path) -> int:
    from ..bundle import BundleError, resolve_bundle
    from ..imageio import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
    from ..render import render_faces
    from .predict import check_files

    problems = check_files(args.images)  # missing files are told before the model loads, or instead
    predictor = None
    if len(problems) < len(args.images):
        from ..predictor import Predictor

        try:
            bundle = resolve_bundle(args.bundle)
            predictor = Predictor(
                bundle, device=args.device, min_size=args.min_size, max_size=args.max_size, threshold=args.threshold,
                max_faces=args.max_faces, landmarks_68=True, batch_size=1,
            )  # fmt: skip
        except (BundleError, ValueError) as exc:
            print(f"img2pose: error: {exc}", file=sys.stderr)
            return 2
    failed = 0
    started = time.perf_counter()
    for i, name in enumerate(args.images):
        if i in problems:
            failed += 1
            _emit({"image": name, "error": {"status": problems[i].status, "message": problems[i].message}})
            continue
        assert predictor is not None  # loaded: this file passed the check
        try:
            data = Path(name).read_bytes()
            image = decode_image(data, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
        except OSError as exc:
            failed += 1
            _emit({"image": name, "error": {"status": "unreadable", "message": f"cannot read: {exc.strerror or exc}"}})
            continue
        except ImageDecodeError as exc:
            failed += 1
            _emit({"image": name, "error": {"status": exc.status, "message": exc.message}})
            continue
        faces = predictor.predict([image.pixels])[0]
        drawn = render_faces(image.pixels, faces, mesh=args.mesh, axis_length=args.axis_length, max_side=args.max_side)
        target = out / f"{hashlib.sha256(data).hexdigest()[:16]}.png"
        drawn.save(target, format="PNG", optimize=True)
        _emit({"image": name, "render": str(target), "faces": len(faces)})
    n = len(args.images)
    elapsed = time.perf_counter() - started
    print(f"img2pose: rendered {n - failed}/{n} images into {out}, {failed} failed, {elapsed:.1f} s", file=sys.stderr)
    return 1 if failed else 0


def _render_from_output(args: argparse.Namespace, out: Path) -> int:
    from ..bundle import BundleError, resolve_bundle
    from ..report import OutputTables, ReportError, render_sample

    points_68 = None
    if args.bundle:
        try:
            points_68 = resolve_bundle(args.bundle, fetch_if_missing=False).points_68
        except BundleError as exc:
            print(f"img2pose: error: {exc}", file=sys.stderr)
            return 2
    elif args.mesh:
        print("img2pose: note: --mesh needs the 68 landmarks, i.e. --bundle; drawing without it", file=sys.stderr)
    try:
        tables = OutputTables.open(args.from_output, run_id=args.run_id, s3_endpoint_url=args.s3_endpoint_url,
                                   catalog=args.catalog, namespace=args.namespace)  # fmt: skip
    except ReportError as exc:
        print(f"img2pose: error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    done = 0
    for item in render_sample(tables, args.sample, seed=str(args.seed), points_68=points_68, mesh=args.mesh,
                              axis_length=args.axis_length, max_side=args.max_side):  # fmt: skip
        if item.image is None:
            failed += 1
            _emit({"image": item.uri, "error": {"status": "skipped", "message": item.message}})
            print(f"img2pose: skipped {item.uri}: {item.message}", file=sys.stderr)
            continue
        target = out / f"{item.key}.png"
        item.image.save(target, format="PNG", optimize=True)
        done += 1
        _emit({"image": item.uri, "render": str(target), "faces": item.faces, "run_id": item.run_id})
    if done + failed == 0:
        print(f"img2pose: no image with faces in {args.from_output}" + (f" (run {args.run_id})" if args.run_id else ""),
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"img2pose: rendered {done} images from {args.from_output} into {out}, {failed} skipped", file=sys.stderr)
    return 1 if failed else 0
