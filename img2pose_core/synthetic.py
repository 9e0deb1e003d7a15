"""Synthetic faces with exact 6DoF labels, for tests and smoke runs of training and evaluation.

A procedural head (the 68 reference points of the bundle) is placed at a known pose in img2pose's camera
(focal ``w + h``, centre ``(w // 2, h // 2)``), projected, and painted with Pillow over a random
background: a skin-coloured face outline (jaw line closed over the raised eyebrows), dark eyes, a nose
ridge, a red mouth, with some texture noise. Faces are painted far to near. The labels are the pose
itself, so they are exact: projected 68/5 points, img2pose's face box of those points, the global pose,
and yaw/pitch/roll in the authors' convention (``geometry.rotvec_to_yaw_pitch_roll``).

Writers put scenes on disk in the formats the rest of the project reads:

- :func:`write_annotation_dataset`: the authors' training annotation: a list file of per-image JSON paths,
  each JSON ``{"image_path", "bboxes", "landmarks", "dofs"}`` (landmarks all ``-1`` for faces without a
  pose);
- :func:`write_aflw2000_style`: one face per image, ``imageNNNNN.jpg`` + ``imageNNNNN.json`` holding
  ``pt3d_68`` (3 x 68: x row, y row, z row), ``Pose_Para`` (pitch, yaw, roll in radians, tx, ty, tz,
  scale 1) and ``dofs`` (the global pose), as AFLW2000-3D's ``.mat`` files hold them;
- :func:`write_biwi_style`: frames in BIWI's own layout (``NN/frame_NNNNN_rgb.png`` beside
  ``frame_NNNNN_pose.txt``) and a frame list, as the authors' BIWI evaluation reads them;
- :func:`write_wider_style`: ``images/<event>/<name>.jpg``, ``wider_face_val_bbx_gt.txt`` in the official
  format and ``wider_{easy,medium,hard}_val.json`` (per image, the 1-based indices of the faces that
  count in that setting, as the official ``gt_list``).

Everything is deterministic for a given ``seed``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from . import geometry

__all__ = [
    "SyntheticImage",
    "euler_to_rotvec",
    "make_scene",
    "encode_image",
    "write_annotation_dataset",
    "write_aflw2000_style",
    "write_biwi_style",
    "write_wider_style",
]

# 68-point layout (iBUG): jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67.
_JAW, _BROWS = list(range(17)), list(range(26, 16, -1))
_EYES = (list(range(36, 42)), list(range(42, 48)))
_NOSE_RIDGE, _NOSTRILS = list(range(27, 31)), list(range(31, 36))
_MOUTH = list(range(48, 60))


@dataclass
class SyntheticImage:
    """One scene and its exact labels (faces in painting order, far to near)."""

    image: np.ndarray  # (H, W, 3) uint8
    boxes: np.ndarray  # (N, 4) float64, img2pose face box of the projected 68 points
    landmarks_68: np.ndarray  # (N, 68, 2)
    landmarks_5: np.ndarray  # (N, 5, 2)
    dofs: np.ndarray  # (N, 6) global pose (rotation vector, translation)
    yaw_pitch_roll: np.ndarray  # (N, 3) degrees, authors' convention
    posed: np.ndarray  # (N,) bool: False marks a face whose pose is unknown (landmarks -1 in annotations)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.image.shape[0])


def _rx(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def euler_to_rotvec(yaw_pitch_roll: np.ndarray) -> np.ndarray:
    """Rotation vectors ``(N, 3)`` of yaw/pitch/roll in degrees ``(N, 3)``: the inverse of
    :func:`geometry.rotvec_to_yaw_pitch_roll` (``Rᵀ = Rz(−roll)·Ry(−yaw)·Rx(pitch)``)."""
    ypr = np.radians(np.asarray(yaw_pitch_roll, dtype=np.float64).reshape(-1, 3))
    mats = np.stack([(_rz(-r) @ _ry(-y) @ _rx(p)).T for y, p, r in ypr])
    return geometry.matrix_to_rotvec(torch.from_numpy(mats)).numpy()


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A smooth random gradient with blurred blobs and pixel noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx / max(w, 1) + np.sin(angle) * yy / max(h, 1)) % 1.0
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    img += rng.normal(0, 12, (h, w, 3))
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(3, 9))):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.03, 0.2) * min(w, h)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.rectangle([x - r, y - r, x + r, y + r * rng.uniform(0.3, 1.5)], fill=colour)
        else:
            draw.ellipse([x - r, y - r * rng.uniform(0.3, 1.0), x + r, y + r], fill=colour)
    return pil.filter(ImageFilter.GaussianBlur(1.0))


def _paint_face(draw: ImageDraw.ImageDraw, lms: np.ndarray, rng: np.random.Generator) -> None:
    """Paint one face from its projected 68 points (x, y)."""
    pts = [tuple(p) for p in lms.tolist()]
    # Forehead: the brows lifted by a third of the brow-to-chin distance.
    chin, brow_mid = lms[8], lms[17:27].mean(0)
    lift = (brow_mid - chin) * 0.35
    outline = [pts[i] for i in _JAW] + [tuple(lms[i] + lift) for i in _BROWS]
    skin = rng.uniform([150, 95, 70], [245, 205, 175])
    draw.polygon(outline, fill=tuple(int(v) for v in skin), outline=tuple(int(v * 0.6) for v in skin))
    dark = tuple(int(v * 0.45) for v in skin)
    width = max(1, int(np.ptp(lms[:, 0]) / 40))
    draw.line([pts[i] for i in range(17, 22)], fill=dark, width=width)
    draw.line([pts[i] for i in range(22, 27)], fill=dark, width=width)
    for eye in _EYES:
        draw.polygon([pts[i] for i in eye], fill=(245, 245, 245), outline=(20, 20, 20))
        c = lms[eye].mean(0)
        r = max(1.0, np.ptp(lms[eye][:, 0]) / 5)
        draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=(30, 25, 20))
    draw.line([pts[i] for i in _NOSE_RIDGE], fill=dark, width=width)
    draw.line([pts[i] for i in _NOSTRILS], fill=dark, width=width)
    draw.polygon([pts[i] for i in _MOUTH], fill=(170, 40, 50), outline=(90, 20, 25))


def make_scene(
    seed: int | np.random.Generator,
    points_68: np.ndarray,
    points_5: np.ndarray,
    size: tuple[int, int] = (256, 256),
    faces: int | tuple[int, int] = (1, 3),
    face_px: tuple[float, float] = (0.15, 0.5),
    yaw: float = 60.0,
    pitch: float = 30.0,
    roll: float = 25.0,
    unposed_fraction: float = 0.0,
    ypr: np.ndarray | None = None,
) -> SyntheticImage:
    """A ``size`` (w, h) scene of random faces; ``faces`` is a count or a (min, max) range.

    Face widths are drawn as fractions ``face_px`` of the short side; angles uniformly within ±``yaw``,
    ±``pitch``, ±``roll`` degrees (or ``ypr`` (N, 3) fixes them and the count). ``unposed_fraction`` of
    the faces are marked as without a pose.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    w, h = int(size[0]), int(size[1])
    p68 = np.asarray(points_68, dtype=np.float64).reshape(68, 3)
    p5 = np.asarray(points_5, dtype=np.float64).reshape(5, 3)
    if ypr is not None:
        angles = np.asarray(ypr, dtype=np.float64).reshape(-1, 3)
    else:
        n = faces if isinstance(faces, int) else int(rng.integers(faces[0], faces[1] + 1))
        angles = rng.uniform(-1, 1, (n, 3)) * np.array([yaw, pitch, roll])
    n = len(angles)
    rotvecs = euler_to_rotvec(angles) if n else np.zeros((0, 3))
    f = float(w + h)
    cx, cy = w // 2, h // 2
    head = float(np.ptp(p68[:, 0]))
    short = min(w, h)
    px = rng.uniform(face_px[0], face_px[1], n) * short
    tz = f * head / px
    u = rng.uniform(0.5 * px, w - 0.5 * px)
    v = rng.uniform(0.6 * px, h - 0.5 * px)
    t = np.stack([(u - cx) / f * tz, (v - cy) / f * tz, tz], axis=1)
    dofs = np.concatenate([rotvecs, t], axis=1)
    order = np.argsort(-tz)  # far to near: nearer faces are painted over farther ones
    dofs, angles = dofs[order], angles[order]
    k = geometry.image_intrinsics(torch.full((max(n, 1),), w), torch.full((max(n, 1),), h))[:n]
    dofs_t = torch.from_numpy(dofs)
    lms68 = geometry.project_points(torch.from_numpy(p68), dofs_t, k).numpy()
    lms5 = geometry.project_points(torch.from_numpy(p5), dofs_t, k).numpy()
    boxes = geometry.face_box_from_landmarks(
        torch.from_numpy(lms68), dofs_t[:, 2], torch.tensor([w, h]).expand(n, 2)
    ).numpy()
    ypr_out = geometry.rotvec_to_yaw_pitch_roll(dofs_t[:, :3]).numpy()
    posed = rng.random(n) >= unposed_fraction

    pil = _background(rng, w, h)
    draw = ImageDraw.Draw(pil)
    for i in range(n):
        _paint_face(draw, lms68[i], rng)
    arr = np.asarray(pil, dtype=np.int16)
    arr = np.clip(arr + rng.normal(0, 4, arr.shape), 0, 255).astype(np.uint8)
    return SyntheticImage(arr, boxes, lms68, lms5, dofs, ypr_out, posed)


def encode_image(image: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_image(image, "PNG" if path.suffix == ".png" else "JPEG"))


def _sizes(rng: np.random.Generator, size) -> tuple[int, int]:
    """``size`` is (w, h), or ((wmin, wmax), (hmin, hmax)) for random sizes."""
    w, h = size
    if isinstance(w, (tuple, list)):
        w = int(rng.integers(w[0], w[1] + 1))
    if isinstance(h, (tuple, list)):
        h = int(rng.integers(h[0], h[1] + 1))
    return int(w), int(h)


def write_annotation_dataset(
    out: str | Path,
    points_68: np.ndarray,
    points_5: np.ndarray,
    n_images: int = 8,
    seed: int = 0,
    size=(256, 256),
    faces=(1, 3),
    landmark_points: int = 5,
    unposed_fraction: float = 0.0,
    empty_images: int = 0,
    list_name: str = "annotations.txt",
    repeat: int = 1,
    **scene_kwargs,
) -> Path:
    """Scenes in the authors' annotation format; returns the list file (one JSON path per line).

    ``empty_images`` extra images hold only unposed faces (they are skipped by dataset preparation).
    ``image_path`` in each JSON is relative to the JSON's folder. ``repeat`` lists every image that many
    times: a set small enough to memorise, the usual check that training can lower the loss at all.
    """
    out = Path(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n_images + empty_images):
        w, h = _sizes(rng, size)
        frac = 1.0 if i >= n_images else unposed_fraction
        scene = make_scene(rng, points_68, points_5, (w, h), faces, unposed_fraction=frac, **scene_kwargs)
        name = f"img_{i:05d}"
        _save(scene.image, out / "images" / f"{name}.jpg")
        lms = scene.landmarks_5 if landmark_points == 5 else scene.landmarks_68
        landmarks = [l.tolist() if ok else (-np.ones_like(l)).tolist() for l, ok in zip(lms, scene.posed)]
        record = {
            "image_path": f"../images/{name}.jpg",
            "bboxes": scene.boxes.tolist(),
            "landmarks": landmarks,
            "dofs": [d.tolist() if ok else None for d, ok in zip(scene.dofs, scene.posed)],
        }
        path = out / "annotations" / f"{name}.json"
        path.write_text(json.dumps(record))
        lines.append(f"annotations/{name}.json")
    list_file = out / list_name
    list_file.write_text("\n".join(lines * repeat) + "\n")
    return list_file


def write_aflw2000_style(
    out: str | Path, points_68, points_5, n_images: int = 6, seed: int = 0, size=(300, 300), ypr: np.ndarray | None = None
) -> Path:
    """AFLW2000-3D-like folder: ``imageNNNNN.jpg`` with ``imageNNNNN.json`` (``pt3d_68``, ``Pose_Para``, ``dofs``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        angles = None if ypr is None else np.asarray(ypr, dtype=np.float64).reshape(-1, 3)[i : i + 1]
        scene = make_scene(rng, points_68, points_5, size, 1, face_px=(0.3, 0.45), ypr=angles, yaw=75, pitch=35, roll=30)
        name = f"image{i:05d}"
        _save(scene.image, out / f"{name}.jpg")
        lms = scene.landmarks_68[0]
        y, p, r = np.radians(scene.yaw_pitch_roll[0])
        rec = {
            "pt3d_68": [lms[:, 0].tolist(), lms[:, 1].tolist(), [0.0] * 68],
            "Pose_Para": [float(p), float(y), float(r), *scene.dofs[0, 3:].tolist(), 1.0],
            "dofs": scene.dofs[0].tolist(),
        }
        (out / f"{name}.json").write_text(json.dumps(rec))
    return out


def write_biwi_style(out: str | Path, points_68, points_5, n_images: int = 6, seed: int = 0, size=(320, 240)) -> Path:
    """Frames in BIWI's own layout and its frame list; returns the list (``BIWI_annotations.txt``).

    ``NN/frame_NNNNN_rgb.png`` (one head) beside ``NN/frame_NNNNN_pose.txt``: the head's rotation matrix on three lines,
    a blank line, and its centre in millimetres, as the dataset writes them. The list names one frame
    per line followed by three angles, as the authors' list does (the protocol reads the pose files)."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n_images):
        subject = f"{i // 4 + 1:02d}"
        w, h = _sizes(rng, size)
        head = make_scene(rng, points_68, points_5, (w, h), 1, face_px=(0.35, 0.45), yaw=70, pitch=40, roll=30)
        image = head.image
        frame = out / subject / f"frame_{i + 3:05d}_rgb.png"
        _save(image, frame)
        rotation = geometry.rotvec_to_matrix(torch.from_numpy(head.dofs[:1, :3])).numpy()[0]
        centre_mm = head.dofs[0, 3:] * 1000.0
        text = "".join(" ".join(f"{v:g}" for v in row) + " \n" for row in rotation)
        text += "\n" + " ".join(f"{v:g}" for v in centre_mm) + " \n"
        frame.with_name(f"frame_{i + 3:05d}_pose.txt").write_text(text)
        y, p, r = head.yaw_pitch_roll[0]
        lines.append(f"{subject}/{frame.name} {p} {y} {r}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "BIWI_annotations.txt").write_text("\n".join(lines) + "\n")
    return out / "BIWI_annotations.txt"


def write_wider_style(
    out: str | Path, points_68, points_5, n_images: int = 6, seed: int = 0, size=(320, 240), faces=(1, 5)
) -> Path:
    """WIDER FACE val-like ground truth; returns the folder. Difficulty by face height: easy ≥ 50 px,
    medium ≥ 30 px, hard all (a stand-in for the official lists, which come from the annotation)."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    lines = []
    settings = {"easy": {}, "medium": {}, "hard": {}}
    for i in range(n_images):
        scene = make_scene(rng, points_68, points_5, size, faces, face_px=(0.08, 0.5))
        event = f"{i % 2}--Synthetic"
        name = f"{event}/{i % 2}_synthetic_{i:04d}.jpg"
        _save(scene.image, out / "images" / name)
        lines += [name, str(len(scene.boxes))]
        for b in scene.boxes:
            x1, y1, x2, y2 = (int(v) for v in b)
            lines.append(f"{x1} {y1} {x2 - x1} {y2 - y1} 0 0 0 0 0 0 ")
        heights = scene.boxes[:, 3] - scene.boxes[:, 1]
        key = name[:-4]
        settings["easy"][key] = [j + 1 for j, hh in enumerate(heights) if hh >= 50]
        settings["medium"][key] = [j + 1 for j, hh in enumerate(heights) if hh >= 30]
        settings["hard"][key] = [j + 1 for j in range(len(heights))]
    (out / "wider_face_val_bbx_gt.txt").write_text("\n".join(lines) + "\n")
    for setting, gt in settings.items():
        (out / f"wider_{setting}_val.json").write_text(json.dumps(gt))
    return out


# --- Command line: synthetic datasets for the training and evaluation smoke run -------------------------
_WRITERS = {"annotations": write_annotation_dataset, "aflw2000": write_aflw2000_style, "biwi": write_biwi_style,
            "wider": write_wider_style}


def main(argv: list[str] | None = None) -> int:
    """``python -m img2pose_core.synthetic KIND OUT --bundle B [--images N] [--size W H] [--seed S]``."""
    import argparse
    import sys

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
    from .bundle import BundleError, resolve_bundle

    try:
        bundle = resolve_bundle(args.bundle)
    except BundleError as exc:
        p.error(str(exc))
    written = _WRITERS[args.kind](args.out, bundle.points_68, bundle.points_5, n_images=args.images, seed=args.seed,
                                  size=tuple(args.size), **extra)
    print(f"synthetic: wrote {args.images} {args.kind} image(s): {written}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
