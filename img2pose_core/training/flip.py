"""Horizontal flip of a training image with its boxes and global poses."""

from __future__ import annotations

from torch import Tensor

__all__ = ["mirror_pose", "flip_targets"]


def mirror_pose(pose: Tensor, width: int) -> Tensor:
    """Global poses ``(N, 6)`` of the horizontally flipped image: the head reflected in the camera's x axis
    (``S·R·S`` with ``S = diag(−1, 1, 1)`` → rotation vector ``(rx, −ry, −rz)``, ``tx`` negated). Exact for
    even widths; :func:`flip_targets` corrects ``tx`` for the one-pixel shift of ``w // 2`` on odd widths."""
    p = pose.clone()
    p[:, 1] = -p[:, 1]
    p[:, 2] = -p[:, 2]
    p[:, 3] = -p[:, 3]
    return p


def flip_targets(image: Tensor, target: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Flip a ``(3, H, W)`` image and its boxes/poses horizontally."""
    h, w = int(image.shape[-2]), int(image.shape[-1])
    out = dict(target)
    b = target["boxes"].clone()
    b[:, 0], b[:, 2] = w - target["boxes"][:, 2], w - target["boxes"][:, 0]
    out["boxes"] = b
    dofs = mirror_pose(target["dofs"], w)
    # Odd widths: the flipped principal point w - w//2 is one pixel right of w//2.
    dofs[:, 3] = dofs[:, 3] + (w - 2 * (w // 2)) / float(w + h) * dofs[:, 5]
    out["dofs"] = dofs
    return image.flip(-1), out
