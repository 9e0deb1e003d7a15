"""Training augmentation as the original does it: horizontal flip and random crop of the annotations.

Both act on integer boxes and annotated landmarks; the poses are then fitted again from the moved
landmarks (:func:`img2pose_core.labels.face_labels`), as the original's augmenting loader does (it
ignores the stored poses). The golden ``flip.npz`` holds the original's outputs, random draws
recorded as inputs; :class:`RecordedDraws` replays them. Pure numpy, no image I/O: the caller moves
the pixels with the returned geometry (:func:`flip_image`, :func:`crop_image`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["FLIP_ORDER_5", "FLIP_ORDER_68", "Draws", "RecordedDraws", "flip_faces", "random_crop", "CropResult",
           "flip_image", "crop_image"]  # fmt: skip

# Point k of a flipped face is the mirror image of point FLIP_ORDER[k] (left and right swap).
FLIP_ORDER_5 = np.array([1, 0, 2, 4, 3])
FLIP_ORDER_68 = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + list(range(35, 30, -1))
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40] + list(range(54, 47, -1)) + list(range(59, 54, -1))
    + list(range(64, 59, -1)) + [67, 66, 65]
)  # fmt: skip

CROP_ATTEMPTS = 10
CROP_SCALE = (0.7, 1.0)


class Draws(Protocol):
    """The random source of :func:`random_crop`: Python's :mod:`random` API."""

    def uniform(self, a: float, b: float) -> float: ...
    def randint(self, a: int, b: int) -> int: ...


class RecordedDraws:
    """Replays recorded ``uniform`` and ``randint`` results in order (tests against the original's draws)."""

    def __init__(self, uniforms, randints) -> None:
        self._u = [float(v) for v in uniforms if not np.isnan(v)]
        self._r = [int(v) for v in randints if v >= 0]

    def uniform(self, a: float, b: float) -> float:
        return self._u.pop(0)

    def randint(self, a: int, b: int) -> int:
        return self._r.pop(0)


def _has_minus_one(lms: np.ndarray) -> bool:
    return bool((np.asarray(lms)[:, :2] == -1).any())


def flip_faces(width: int, boxes: np.ndarray, landmarks: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Boxes and landmarks of the horizontally flipped image: ``x1' = W - x2``, ``x2' = W - x1``;
    landmarks ``x' = W - x`` re-ordered so that each point keeps its meaning (left eye stays left
    eye); landmarks holding -1 (no pose) are left as they are."""
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    out = boxes.copy()
    out[:, 0], out[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    flipped = []
    for lms in landmarks:
        lms = np.asarray(lms, dtype=np.float64)[:, :2]
        if _has_minus_one(lms):
            flipped.append(lms.copy())
            continue
        mirrored = lms.copy()
        mirrored[:, 0] = width - lms[:, 0]
        order = FLIP_ORDER_5 if len(lms) == 5 else FLIP_ORDER_68
        flipped.append(mirrored[order])
    return out, flipped


@dataclass
class CropResult:
    """What :func:`random_crop` decided: the crop ``(x1, y1, x2, y2)`` (None: the image unchanged), the
    faces kept, and their boxes and landmarks in the crop's coordinates."""

    crop: tuple[int, int, int, int] | None
    kept: np.ndarray
    boxes: np.ndarray
    landmarks: list[np.ndarray]
    attempts: int


def random_crop(width: int, height: int, boxes: np.ndarray, landmarks: list[np.ndarray],
                draws: Draws | None = None) -> CropResult:  # fmt: skip
    """The original's random crop: up to 10 attempts of a crop of scale ``uniform(0.7, 1)`` (width
    ``int(W s)``, height ``int(H s)``), left edge ``randint(0, W - width)``, top edge always 0. A face
    stays when its box centre (integer halves) is strictly inside the crop and none of its landmarks is
    outside it (edges count as inside); the first attempt keeping a face wins. Kept boxes are shifted
    and clipped to the crop, landmarks shifted only. After 10 failures the image stays as it is (an
    11th scale is drawn first, as the original does)."""
    draws = draws or random
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    lms = [np.asarray(l, dtype=np.float64)[:, :2] for l in landmarks]
    centres = np.stack([boxes[:, 0] + (boxes[:, 2] - boxes[:, 0]) // 2, boxes[:, 1] + (boxes[:, 3] - boxes[:, 1]) // 2], 1)
    for attempt in range(1, CROP_ATTEMPTS + 1):
        scale = draws.uniform(*CROP_SCALE)
        cw, ch = int(width * scale), int(height * scale)
        x0 = draws.randint(0, width - cw)
        y0 = (x0 // width) * height  # the original's top edge: always 0
        x1, y1 = x0 + cw, y0 + ch
        inside = (centres[:, 0] > x0) & (centres[:, 0] < x1) & (centres[:, 1] > y0) & (centres[:, 1] < y1)
        for i, face in enumerate(lms):
            if inside[i] and ((face[:, 0] < x0) | (face[:, 0] > x1) | (face[:, 1] < y0) | (face[:, 1] > y1)).any():
                inside[i] = False
        if inside.any():
            shifted = boxes[inside] - np.array([x0, y0, x0, y0])
            shifted[:, [0, 2]] = np.clip(shifted[:, [0, 2]], 0, cw)
            shifted[:, [1, 3]] = np.clip(shifted[:, [1, 3]], 0, ch)
            moved = [lms[i] - np.array([x0, y0], dtype=np.float64) for i in np.nonzero(inside)[0]]
            return CropResult((x0, y0, x1, y1), inside, shifted, moved, attempt)
    draws.uniform(*CROP_SCALE)
    return CropResult(None, np.ones(len(boxes), dtype=bool), boxes, lms, CROP_ATTEMPTS)


def flip_image(image: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` pixels mirrored left to right."""
    return np.ascontiguousarray(image[:, ::-1])


def crop_image(image: np.ndarray, crop: tuple[int, int, int, int] | None) -> np.ndarray:
    """``(H, W, C)`` pixels of ``crop`` (None: unchanged)."""
    if crop is None:
        return image
    x0, y0, x1, y1 = crop
    return np.ascontiguousarray(image[y0:y1, x0:x1])
