"""Synthetic scenes written to disk in the formats the rest of the project reads.

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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import geometry
from .scene import make_scene

__all__ = ["encode_image", "write_annotation_dataset", "write_aflw2000_style", "write_biwi_style", "write_wider_style"]

# An image size (w, h); a (min, max) pair in place of either draws it at random per image.
Size = tuple[int | tuple[int, int], int | tuple[int, int]]


def encode_image(image: np.ndarray, fmt: str = "JPEG") -> bytes:
    """An ``(H, W, 3)`` uint8 image as file bytes of Pillow's ``fmt`` (JPEG at quality 95)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_image(image, "PNG" if path.suffix == ".png" else "JPEG"))


def _sizes(rng: np.random.Generator, size: Size) -> tuple[int, int]:
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
    size: Size = (256, 256),
    faces: int | tuple[int, int] = (1, 3),
    landmark_points: int = 5,
    unposed_fraction: float = 0.0,
    empty_images: int = 0,
    list_name: str = "annotations.txt",
    repeat: int = 1,
    **scene_kwargs: Any,
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
    out: str | Path,
    points_68: np.ndarray,
    points_5: np.ndarray,
    n_images: int = 6,
    seed: int = 0,
    size: tuple[int, int] = (300, 300),
    ypr: np.ndarray | None = None,
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


def write_biwi_style(
    out: str | Path, points_68: np.ndarray, points_5: np.ndarray, n_images: int = 6, seed: int = 0, size: Size = (320, 240)
) -> Path:
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
    out: str | Path,
    points_68: np.ndarray,
    points_5: np.ndarray,
    n_images: int = 6,
    seed: int = 0,
    size: tuple[int, int] = (320, 240),
    faces: int | tuple[int, int] = (1, 5),
) -> Path:
    """WIDER FACE val-like ground truth; returns the folder. Difficulty by face height: easy ≥ 50 px,
    medium ≥ 30 px, hard all (a stand-in for the official lists, which come from the annotation)."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    lines = []
    settings: dict[str, dict[str, list[int]]] = {"easy": {}, "medium": {}, "hard": {}}
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
