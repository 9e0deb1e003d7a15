"""BIWI: its frames and pose files, the face the protocol evaluates, and the pose errors.

The protocol of the authors' evaluation notebook, step by step: the frame list names ``*_rgb.png``
frames; each frame's ground truth is the rotation matrix in the first three lines of its
``*_pose.txt``. Angles on both sides are SciPy's extrinsic ``"zxy"`` Euler angles (degrees) of the
rotation: (roll, pitch, yaw). Among the predictions scoring above 0.9 the one whose box centre
(``x1 + (x2 - x1) // 2``) is nearest the image centre (``(w // 2, h // 2)``) is evaluated; where none
scores above 0.9, the top-scoring box. A frame fails only when the model returns no box.

Ground truth is read from the dataset's own files (the frame list and per-frame ``_pose.txt``), or from
the JSON :func:`write_biwi_json` makes of them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .. import geometry
from .metrics import Faces, by_score, pose_summary

__all__ = ["read_biwi_pose", "biwi_frames", "write_biwi_json", "load_biwi", "biwi_angles", "biwi_pick", "evaluate_biwi"]


def read_biwi_pose(text: str) -> tuple[np.ndarray, np.ndarray]:
    """The rotation matrix (first three lines) and head centre (the next numeric line, millimetres) of a
    BIWI ``frame_NNNNN_pose.txt``."""
    rows = [line.split() for line in text.splitlines() if line.strip()]
    try:
        values = np.asarray([[float(v) for v in r[:3]] for r in rows[:4]], dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"not a BIWI pose file: {e}") from None
    if values.shape != (4, 3) and values.shape != (3, 3):
        raise ValueError(f"not a BIWI pose file: expected 3 rows of a rotation matrix, got {len(rows)} rows")
    centre = values[3] if len(values) == 4 else np.full(3, np.nan)
    return values[:3], centre


def _pose_file(frame: Path) -> Path:
    name = frame.name
    stem = name[: -len("_rgb.png")] if name.endswith("_rgb.png") else frame.stem
    return frame.with_name(f"{stem}_pose.txt")


def biwi_frames(frame_list: str | Path, root: str | Path | None = None) -> list[dict]:
    """Records ``{"image", "rotation" (3, 3), "centre_mm" (3,)}`` of a BIWI frame list (one frame path
    per line, optionally followed by the list's own angles, which the protocol ignores), each read from
    the frame's ``_pose.txt``. Paths are relative to ``root`` (default: the list's folder)."""
    frame_list = Path(frame_list)
    base = Path(root) if root is not None else frame_list.parent
    out = []
    for number, line in enumerate(frame_list.read_text().splitlines(), 1):
        if not line.strip():
            continue
        frame = Path(line.split()[0])
        frame = frame if frame.is_absolute() else base / frame
        pose = _pose_file(frame)
        if not pose.is_file():
            raise FileNotFoundError(f"{frame_list}:{number}: {pose} not found (each frame needs its _pose.txt)")
        rotation, centre = read_biwi_pose(pose.read_text())
        out.append({"image": str(frame), "rotation": rotation, "centre_mm": centre})
    return out


def write_biwi_json(records: list[dict], path: str | Path) -> Path:
    """The evaluator's BIWI input: the frames' records as JSON, image paths relative to the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [{"image": os.path.relpath(Path(r["image"]).resolve(), path.parent.resolve()),
                "rotation": np.asarray(r["rotation"]).tolist(),
                "centre_mm": [None if not np.isfinite(v) else float(v) for v in r["centre_mm"]]}
               for r in records]  # fmt: skip
    path.write_text(json.dumps(entries, indent=1))
    return path


def load_biwi(source: str | Path, root: str | Path | None = None) -> list[dict]:
    """BIWI records from :func:`write_biwi_json`'s file, or straight from a frame list (``.txt``)."""
    source = Path(source)
    if source.suffix != ".json":
        return biwi_frames(source, root)
    out = []
    for e in json.loads(source.read_text()):
        image = Path(e["image"])
        out.append({"image": str(image if image.is_absolute() else source.parent / image),
                    "rotation": np.asarray(e["rotation"], dtype=np.float64).reshape(3, 3),
                    "centre_mm": np.asarray([np.nan if v is None else v for v in e.get("centre_mm", [None] * 3)])})
    return out


def biwi_angles(rotations: np.ndarray) -> np.ndarray:
    """Extrinsic ``"zxy"`` Euler angles ``(N, 3)`` in degrees of rotation matrices ``(N, 3, 3)``, as the
    BIWI notebook takes them (SciPy's ``as_euler("zxy")``): R = Ry(c)·Rx(b)·Rz(a) gives (a, b, c), which
    the notebook reports as roll, pitch and yaw. b lies in [-90°, 90°]."""
    m = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    b = np.arcsin(np.clip(-m[:, 1, 2], -1.0, 1.0))
    a = np.arctan2(m[:, 1, 0], m[:, 1, 1])
    c = np.arctan2(m[:, 0, 2], m[:, 2, 2])
    return np.degrees(np.stack([a, b, c], axis=1))


def biwi_pick(pred: Faces, threshold: float = 0.9) -> int:
    """Index (in ``pred``, highest score first) of the face the BIWI protocol evaluates."""
    above = np.nonzero(pred.scores > threshold)[0]
    if not len(above):
        return 0
    if pred.width is None or pred.height is None:
        raise ValueError("the BIWI protocol picks the face nearest the image's centre: Faces needs width and height")
    boxes = pred.boxes[above]
    centres = boxes[:, :2] + (boxes[:, 2:] - boxes[:, :2]) // 2
    distance = np.hypot(centres[:, 0] - pred.width // 2, centres[:, 1] - pred.height // 2)
    return int(above[int(distance.argmin())])


def evaluate_biwi(records: list[dict], predictions: dict[str, Faces], threshold: float = 0.9) -> dict:
    """Yaw/pitch/roll errors (degrees, ``"zxy"`` Euler angles) and MAE (see the module's text)."""
    errors, missed = [], 0
    for rec in records:
        pred = predictions.get(rec["image"])
        if pred is None or len(pred.scores) == 0:
            missed += 1
            continue
        pred = by_score(pred)
        if pred.poses is None:
            raise ValueError(f"{rec['image']}: the BIWI protocol needs the predicted poses")
        j = biwi_pick(pred, threshold)
        predicted = biwi_angles(geometry.rotvec_to_matrix(torch.from_numpy(pred.poses[j : j + 1, :3])).numpy())[0]
        roll_pitch_yaw = np.abs(predicted - biwi_angles(rec["rotation"])[0])
        errors.append(roll_pitch_yaw[::-1])
    return pose_summary(errors, [], {"images": len(records), "evaluated": len(errors), "missed": missed})
