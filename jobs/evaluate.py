"""Evaluate an img2pose bundle on AFLW2000-3D, BIWI or WIDER FACE val with the authors' protocols.

    python -m jobs.evaluate --bundle B --benchmark aflw2000 --data AFLW2000/ --output reports/aflw.json
    python -m jobs.evaluate --bundle B --benchmark biwi --data BIWI_annotations.txt --root BIWI/hpdb/ --output reports/biwi.json
    python -m jobs.evaluate --bundle B --benchmark wider --data WIDER_val/ --output reports/wider.json [--multiscale]

Writes a JSON report and a Markdown table beside it (same name, ``.md``). Protocol defaults: AFLW2000-3D
min size 400, RPN 500/10, threshold 0; BIWI min size 700, RPN 500/10, threshold 0.9 (used to pick the
face, not to drop frames); WIDER FACE the bundle's sizes, threshold 0 (``--multiscale``: min sizes
200…1700 with horizontal flips and box voting). The protocols are the authors' notebooks'; see
``img2pose_core/evaluation/`` and docs/training.md. Unlike every other command, the threshold is the
protocol's, never the bundle's: it is part of the benchmark's definition (``--threshold`` overrides it).

``--data`` for AFLW2000-3D: the folder of ``.jpg`` + ``.mat`` files (or a list file of its images); for
BIWI: the frame list (``frame_NNNNN_rgb.png`` paths, relative to ``--root``), each frame read with its
``_pose.txt``, or the ``biwi_gt.json`` that ``python -m jobs.prepare_dataset --format biwi`` makes of them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from img2pose_core.cli.parser import CommandParser
from img2pose_core.flags import RawDescriptionHelpFormatter, add_model_flags, model_flag_error

PROTOCOLS: dict[str, dict[str, int | float | None]] = {
    "aflw2000": {"min_size": 400, "max_size": 1400, "rpn_pre_nms_top_n": 500, "rpn_post_nms_top_n": 10, "threshold": 0.0},
    "biwi": {"min_size": 700, "max_size": 1400, "rpn_pre_nms_top_n": 500, "rpn_post_nms_top_n": 10, "threshold": 0.9},
    "wider": {"min_size": None, "max_size": None, "rpn_pre_nms_top_n": None, "rpn_post_nms_top_n": None, "threshold": 0.0},
}
MULTISCALE = (200, 300, 500, 800, 1100, 1400, 1700)


_THRESHOLD_HELP = (
    "face score threshold (default: the protocol's: aflw2000 0, biwi 0.9 to pick the face, wider 0; not the "
    "bundle's, as the benchmarks define it)"
)


def build_parser(prog: str = "evaluate.py") -> argparse.ArgumentParser:
    """The script's flags; the model flags come from img2pose_core.flags, defaulting to the protocol's values."""
    p = CommandParser(prog=prog, description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    add_model_flags(p, ("bundle",))
    p.add_argument("--benchmark", required=True, choices=sorted(PROTOCOLS))
    p.add_argument("--data", required=True,
                   help="AFLW2000-3D folder or image list; BIWI frame list or biwi_gt.json; WIDER val folder (images/ + gt)")
    p.add_argument("--root", default=None, help="BIWI: the folder the frame list's paths are relative to (default: the list's folder)")
    p.add_argument("--output", required=True, help="report .json (a .md table is written beside it)")
    protocol = "(default: the protocol's; the bundle's where the protocol leaves it open)"
    add_model_flags(
        p, ("min_size", "max_size", "rpn_pre_nms_top_n", "rpn_post_nms_top_n", "threshold"),
        help={
            "min_size": f"short side after resize {protocol}",
            "max_size": f"cap of the long side after resize {protocol}",
            "rpn_pre_nms_top_n": f"RPN proposals per level before NMS {protocol}",
            "rpn_post_nms_top_n": f"RPN proposals per image after NMS {protocol}",
            "threshold": _THRESHOLD_HELP,
        },
    )  # fmt: skip
    p.add_argument("--multiscale", action="store_true", help="WIDER: min sizes 200..1700, flips, box voting")
    p.add_argument("--scales", default=None, help="comma-separated min sizes for --multiscale")
    p.add_argument("--vote-iou", type=float, default=0.6, help="--multiscale: IoU that joins a voting group (the original's --nms_threshold)")
    add_model_flags(p, ("device",))
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    return p


def _image(path: str):
    """An image file as an RGB numpy array."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def main(argv: list[str] | None = None, prog: str = "evaluate.py") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    problem = model_flag_error(args)
    if problem:
        parser.error(problem)
    import numpy as np

    from img2pose_core import evaluation as ev
    from img2pose_core.bundle import resolve_bundle
    from img2pose_core.predictor import Predictor

    bundle = resolve_bundle(args.bundle)
    proto: dict[str, Any] = dict(PROTOCOLS[args.benchmark])  # then the flags given (argparse's values)
    for key in ("min_size", "max_size", "rpn_pre_nms_top_n", "rpn_post_nms_top_n", "threshold"):
        if getattr(args, key) is not None:
            proto[key] = getattr(args, key)

    def predictor(**over) -> Predictor:
        s = {**proto, **over}
        return Predictor(bundle, device=args.device, min_size=s["min_size"], max_size=s["max_size"],
                         rpn_pre_nms_top_n=s["rpn_pre_nms_top_n"], rpn_post_nms_top_n=s["rpn_post_nms_top_n"],
                         # The pose protocols choose among all boxes; their threshold is applied when picking.
                         threshold=s["threshold"] if args.benchmark == "wider" else 0.0, shared=s.get("shared", True))

    def run(paths: list[str], keys: list[str], integer_boxes: bool = False) -> dict:
        out, model = {}, predictor()
        for path, key in zip(paths, keys):
            img = _image(path)
            f = model.predict([img])[0]
            # The original WIDER evaluation writes integer boxes (truncated toward zero).
            boxes = np.trunc(f.boxes.astype(np.float64)) if integer_boxes else f.boxes
            out[key] = ev.Faces(boxes, f.scores, f.poses, img.shape[1], img.shape[0])
        return out

    started = time.perf_counter()
    if args.benchmark == "aflw2000":
        records = ev.load_aflw2000(args.data, bundle.points_68)[: args.limit]
        preds = run([r["image"] for r in records], [r["image"] for r in records])
        result = ev.evaluate_aflw2000(records, preds, threshold=proto["threshold"])
    elif args.benchmark == "biwi":
        records = ev.load_biwi(args.data, args.root)[: args.limit]
        preds = run([r["image"] for r in records], [r["image"] for r in records])
        result = ev.evaluate_biwi(records, preds, threshold=proto["threshold"])
    else:
        gt, keep = ev.load_wider_gt(args.data)
        names = sorted(gt)[: args.limit]
        gt = {n: gt[n] for n in names}
        root = Path(args.data) if Path(args.data).is_dir() else Path(args.data).parent
        paths = [str(root / "images" / f"{n}.jpg") for n in names]
        if not args.multiscale:
            preds = run(paths, names, integer_boxes=True)
        else:
            scales = [int(v) for v in args.scales.split(",")] if args.scales else list(MULTISCALE)
            model = predictor(shared=False)
            preds = {}
            for path, name in zip(paths, names):
                img = _image(path)
                h, w = img.shape[:2]
                boxes, scores = [], []
                for flip in (False, True):  # as the original: every scale unflipped, then every scale flipped
                    for size in scales:
                        # The image is scaled so its short side is `size`, with no cap on the long side.
                        scale = size / min(w, h)
                        new_w, new_h = int(w * scale), int(h * scale)
                        model.resize(max(1, min(new_w, new_h)), max(1, new_w, new_h))
                        f = model.predict([img[:, ::-1].copy() if flip else img])[0]
                        b = np.trunc(f.boxes.astype(np.float64))  # integer boxes, then mirrored back
                        if flip:
                            b[:, [0, 2]] = w - b[:, [2, 0]]
                        boxes.append(b)
                        scores.append(f.scores)
                vb, vs = ev.box_vote(np.concatenate(boxes), np.concatenate(scores), iou=args.vote_iou)
                preds[name] = ev.Faces(vb, vs, None, w, h)
        result = ev.evaluate_wider(gt, keep, preds)
        result["images"] = len(names)
    elapsed = time.perf_counter() - started
    report = {
        args.benchmark: result,
        "settings": {**proto, "bundle": bundle.uri, "multiscale": bool(args.multiscale), "seconds": elapsed},
    }
    js, md = ev.write_report(report, args.output)
    print(md.read_text())
    print(f"{prog}: wrote {js} and {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
