"""Synthetic scenes with exact 6DoF labels: heads placed at known poses in img2pose's camera.

A procedural head (the 68 reference points of the bundle) is placed at a known pose in img2pose's camera
(focal ``w + h``, centre ``(w // 2, h // 2)``), projected, and painted (:mod:`.paint`) over a random
background, far to near. The labels are the pose itself, so they are exact: projected 68/5 points,
img2pose's face box of those points, the global pose, and yaw/pitch/roll in the authors' convention
(``geometry.rotvec_to_yaw_pitch_roll``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import ImageDraw

from .. import geometry
from .paint import background, paint_face

__all__ = ["SyntheticImage", "euler_to_rotvec", "make_scene"]


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
        """(width, height) in pixels."""
        return int(self.image.shape[1]), int(self.image.shape[0])


def _rx(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def euler_to_rotvec(yaw_pitch_roll: np.ndarray) -> np.ndarray:
    """Rotation vectors ``(N, 3)`` of yaw/pitch/roll in degrees ``(N, 3)``: the inverse of
    :func:`geometry.rotvec_to_yaw_pitch_roll` (``Rᵀ = Rz(−roll)·Ry(−yaw)·Rx(pitch)``)."""
    ypr = np.radians(np.asarray(yaw_pitch_roll, dtype=np.float64).reshape(-1, 3))
    mats = np.stack([(_rz(-r) @ _ry(-y) @ _rx(p)).T for y, p, r in ypr])
    return geometry.matrix_to_rotvec(torch.from_numpy(mats)).numpy()


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

    pil = background(rng, w, h)
    draw = ImageDraw.Draw(pil)
    for i in range(n):
        paint_face(draw, lms68[i], rng)
    arr = np.asarray(pil, dtype=np.int16)
    arr = np.clip(arr + rng.normal(0, 4, arr.shape), 0, 255).astype(np.uint8)
    return SyntheticImage(arr, boxes, lms68, lms5, dofs, ypr_out, posed)
