"""What every benchmark shares: the predictions of one image, box overlap, and the pose error summary."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Faces", "iou_matrix", "by_score", "pose_summary"]


@dataclass
class Faces:
    """Predictions for one image."""

    boxes: np.ndarray  # (K, 4)
    scores: np.ndarray  # (K,)
    poses: np.ndarray | None = None  # (K, 6) global pose
    width: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if self.poses is not None:
            self.poses = np.asarray(self.poses, dtype=np.float64).reshape(-1, 6)


def iou_matrix(a: np.ndarray, b: np.ndarray, plus_one: bool = False) -> np.ndarray:
    """IoU ``(len(a), len(b))`` of x1 y1 x2 y2 boxes (``plus_one``: the official WIDER pixel convention)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    e = 1.0 if plus_one else 0.0
    area_a = (a[:, 2] - a[:, 0] + e) * (a[:, 3] - a[:, 1] + e)
    area_b = (b[:, 2] - b[:, 0] + e) * (b[:, 3] - b[:, 1] + e)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + e
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + e
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def by_score(pred: Faces) -> Faces:
    """The model's order (highest score first), which the protocols' tie rules depend on."""
    order = np.argsort(-pred.scores, kind="stable")
    poses = None if pred.poses is None else pred.poses[order]
    return Faces(pred.boxes[order], pred.scores[order], poses, pred.width, pred.height)


def pose_summary(errors: np.ndarray | list, t_errors: list, extra: dict) -> dict:
    """``extra`` with the mean yaw, pitch and roll errors (``errors`` ``(N, 3)``), their mean (``mae``; NaN
    for no image), and where given the mean translation errors and their mean (``translation_mae``)."""
    errors = np.asarray(errors, dtype=np.float64).reshape(-1, 3)
    out = dict(extra)
    if len(errors):
        yaw, pitch, roll = errors.mean(0)
        out.update(yaw=float(yaw), pitch=float(pitch), roll=float(roll), mae=float(errors.mean()))
    else:
        out.update(yaw=math.nan, pitch=math.nan, roll=math.nan, mae=math.nan)
    if t_errors:
        t = np.asarray(t_errors).reshape(-1, 3).mean(0)
        out.update(tx=float(t[0]), ty=float(t[1]), tz=float(t[2]), translation_mae=float(t.mean()))
    return out
