"""Make ``docs/images/render_example.png``, the README's picture of ``img2pose render``.

    .venv/bin/python docs/images/make_render_example.py [GOLDEN_DIR]

Left: ``examples/astronaut.jpg`` drawn by the render module with the golden bundle's model (the
golden weights are deterministic stand-ins, not a trained model: the boxes are not real faces, the
picture shows the drawing only). Right: six known poses of the golden geometry cases
(``geometry.npz``: ``global_pose``, ``image_wh``, ``proj_bbox``, ``pitch_yaw_roll``) drawn on blank
canvases with their 68 landmarks, mesh and axes.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
CASES = (19, 20, 41, 13, 31, 46)  # frontal, turned, tilted, nodding ... (golden geometry indices)
TILE = 256


def _golden_bundle(golden: Path, work: Path) -> Path:
    import torch

    from img2pose_core.bundle import create_bundle

    spec = importlib.util.spec_from_file_location("golden_make_checkpoint", golden / "make_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    weights = work / "img2pose_v1.pth"
    torch.save({"fpn_model": module.make_state_dict()}, weights)
    out = work / "bundle"
    create_bundle(weights=weights, pose_mean=golden / "pose_mean.npy", pose_stddev=golden / "pose_stddev.npy",
                  points_68=golden / "reference_3d_68_points_trans.npy",
                  points_5=golden / "reference_3d_5_points_trans.npy", out=out)  # fmt: skip
    return out


def photo_panel(bundle: Path) -> Image.Image:
    from img2pose_core.imageio import read_image_file
    from img2pose_core.predictor import Predictor
    from img2pose_core.render import render_faces

    image = read_image_file(ROOT / "examples" / "astronaut.jpg")
    predictor = Predictor(str(bundle), device="cpu", min_size=400, max_size=1400, threshold=0.9, max_faces=3,
                          landmarks_68=True)  # fmt: skip
    faces = predictor.predict([image.pixels])[0]
    return render_faces(image.pixels, faces, mesh=True)


def pose_tiles(golden: Path) -> Image.Image:
    from img2pose_core.render import Style, faces_from_columns, render_faces

    g = np.load(golden / "geometry.npz")
    points_68 = np.load(golden / "reference_3d_68_points_trans.npy")
    sheet = Image.new("RGB", (TILE * 3, TILE * 2), (40, 40, 40))
    for k, i in enumerate(CASES):
        w, h = (int(v) for v in g["image_wh"][i])
        box = g["proj_bbox"][i]
        pitch, yaw, roll = g["pitch_yaw_roll"][i]
        faces = faces_from_columns(w, h, (w, h), scores=[1.0], boxes=box[None], poses=g["global_pose"][i][None],
                                   yaw_pitch_roll=[[yaw, pitch, roll]], landmarks_5=g["lms5"][i][None])  # fmt: skip
        # A square around the box, with room for the label above it.
        side = 1.5 * max(box[2] - box[0], box[3] - box[1])
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2 - 0.08 * side
        px = side / TILE  # source pixels per tile pixel
        style = Style(line_width=max(1, round(1.5 * px)), point_radius=max(1, round(1.5 * px)),
                      font_size=max(8, round(11 * px)))  # fmt: skip
        canvas = Image.new("RGB", (w, h), (40, 40, 40))
        drawn = render_faces(canvas, faces, points_68=points_68, mesh=True, style=style)
        x0, y0, s = round(cx - side / 2), round(cy - side / 2), round(side)
        tile = Image.new("RGB", (s, s), (40, 40, 40))  # the square may reach past the canvas
        inner = (max(0, x0), max(0, y0), min(w, x0 + s), min(h, y0 + s))
        tile.paste(drawn.crop(inner), (inner[0] - x0, inner[1] - y0))
        sheet.paste(tile.resize((TILE, TILE), Image.Resampling.LANCZOS), ((k % 3) * TILE, (k // 3) * TILE))
    return sheet


def main(argv: list[str]) -> int:
    golden = Path(argv[1]) if len(argv) > 1 else ROOT.parent / "shared" / "golden"
    with tempfile.TemporaryDirectory() as tmp:
        photo = photo_panel(_golden_bundle(golden, Path(tmp)))
    tiles = pose_tiles(golden)
    photo = photo.resize((tiles.height, tiles.height), Image.Resampling.LANCZOS)
    out = Image.new("RGB", (photo.width + 8 + tiles.width, tiles.height), (255, 255, 255))
    out.paste(photo, (0, 0))
    out.paste(tiles, (photo.width + 8, 0))
    target = ROOT / "docs" / "images" / "render_example.png"
    # An adaptive 256-colour palette keeps the file small; the strokes' pure colours survive it.
    out.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(target, optimize=True)
    print(f"{target}: {target.stat().st_size // 1024} KiB, {out.width}x{out.height}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
