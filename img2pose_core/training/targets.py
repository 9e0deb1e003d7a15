"""Pose targets: ground-truth global poses (image frame) in the frame of each RoI, normalised.

The original builds its regression targets so: each RoI is a camera of its own (focal ``bw + bh``,
centre ``(bw // 2, bh // 2)``), the image-frame pose is moved into it and normalised with the pose
mean/stddev. Vectorised over RoIs; the geometry runs in float64 like the rest of the project.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import geometry

__all__ = ["F64", "box_intrinsics", "pose_image_to_roi", "pose_targets"]

F64 = torch.float64


def box_intrinsics(boxes: Tensor) -> Tensor:
    """The camera ``(N, 3, 3)`` of each RoI on its own: focal ``bw + bh``, centre ``(bw // 2, bh // 2)``.

    Sizes are the boxes' float sizes; ``//`` is floor division of those floats, as the original does.
    """
    b = torch.as_tensor(boxes)
    bw = b[..., 2] - b[..., 0]
    bh = b[..., 3] - b[..., 1]
    k = torch.zeros(b.shape[:-1] + (3, 3), dtype=F64, device=b.device)
    k[..., 0, 0] = (bw + bh).to(F64)
    k[..., 1, 1] = (bw + bh).to(F64)
    k[..., 0, 2] = torch.floor(bw / 2).to(F64)
    k[..., 1, 2] = torch.floor(bh / 2).to(F64)
    k[..., 2, 2] = 1.0
    return k


def pose_image_to_roi(global_pose: Tensor, proposals: Tensor, image_hw: Tensor) -> Tensor:
    """Image-frame poses ``(N, 6)`` → poses relative to RoIs ``(N, 4)`` (float64), as the original's targets.

    Same frame change as :func:`geometry.pose_image_to_box` except for the box's principal point: the
    original writes the box centre ``x1 + bw // 2`` into a float32 copy of the image intrinsics, so for
    training targets the centre keeps its fraction (inference truncates it to whole pixels).
    """
    pose = torch.as_tensor(global_pose).to(F64)
    boxes = torch.as_tensor(proposals, device=pose.device)
    hw = torch.as_tensor(image_hw, device=pose.device).to(torch.int64).reshape(-1, 2)
    k_image = geometry.image_intrinsics(hw[:, 1], hw[:, 0]).to(pose.device)
    f = k_image[:, 0, 0]
    bw = boxes[:, 2] - boxes[:, 0]
    bh = boxes[:, 3] - boxes[:, 1]
    cx = (boxes[:, 0] + torch.floor(bw / 2)).to(F64)
    cy = (boxes[:, 1] + torch.floor(bh / 2)).to(F64)
    size = (bw + bh).to(F64)
    affine = torch.zeros_like(k_image)  # K_box⁻¹ · K_image
    affine[:, 0, 0] = affine[:, 1, 1] = affine[:, 2, 2] = 1.0
    affine[:, 0, 2] = (k_image[:, 0, 2] - cx) / f
    affine[:, 1, 2] = (k_image[:, 1, 2] - cy) / f
    t = (affine @ pose[:, 3:, None])[:, :, 0]
    t = torch.cat([t[:, :2], (t[:, 2] * size / f)[:, None]], dim=1)
    r = geometry.matrix_to_rotvec(affine @ geometry.rotvec_to_matrix(pose[:, :3]))
    return torch.cat([r, t], dim=-1)


def pose_targets(
    global_pose: Tensor, proposals: Tensor, image_hw: Tensor, pose_mean: Tensor, pose_stddev: Tensor
) -> Tensor:
    """Normalised box-frame targets ``(N, 6)`` (float64) of image-frame poses ``(N, 6)`` for RoIs ``(N, 4)``.

    ``image_hw`` ``(N, 2)`` is each RoI's image size (h, w), the size of the (resized) image the RoI lives in.
    """
    local = pose_image_to_roi(global_pose, proposals, image_hw)
    mean = torch.as_tensor(pose_mean, dtype=F64, device=local.device).reshape(6)
    std = torch.as_tensor(pose_stddev, dtype=F64, device=local.device).reshape(6)
    return (local - mean) / std
