"""The pose losses: the pose MSE (sum over the 6 values / number of positives) and the L1 of the 5
reference points projected with the prediction and with the target, in the RoI's own camera."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import geometry
from .targets import F64, box_intrinsics, pose_targets

__all__ = ["dof_loss", "points_loss", "pose_losses"]


def dof_loss(pred_norm: Tensor, target_norm: Tensor) -> Tensor:
    """Sum over the 6 values of the squared error, divided by the number of positives (0 if none)."""
    n = pred_norm.shape[0]
    if n == 0:
        return pred_norm.sum() * 0.0
    diff = pred_norm.to(target_norm.dtype) - target_norm
    return (diff * diff).sum() / n


def points_loss(
    pred_norm: Tensor,
    target_norm: Tensor,
    proposals: Tensor,
    points_5: Tensor,
    pose_mean: Tensor,
    pose_stddev: Tensor,
) -> Tensor:
    """Mean |proj5(prediction) − proj5(target)| in pixels, both in each RoI's own camera.

    Poses are de-normalised with ``pose_mean``/``pose_stddev``; projection in float64. Differentiable
    with respect to ``pred_norm``.
    """
    n = pred_norm.shape[0]
    if n == 0:
        return pred_norm.sum() * 0.0
    mean = torch.as_tensor(pose_mean, dtype=F64, device=pred_norm.device).reshape(6)
    std = torch.as_tensor(pose_stddev, dtype=F64, device=pred_norm.device).reshape(6)
    k = box_intrinsics(proposals).to(pred_norm.device)
    pred = pred_norm.to(F64) * std + mean
    target = target_norm.to(F64) * std + mean
    both = geometry.project_points(points_5, torch.cat([pred, target]), torch.cat([k, k]))
    return (both[:n] - both[n:]).abs().mean()


def pose_losses(
    pred_norm: Tensor,
    global_pose: Tensor,
    proposals: Tensor,
    image_hw: Tensor,
    pose_mean: Tensor,
    pose_stddev: Tensor,
    points_5: Tensor,
) -> dict[str, Tensor]:
    """Both pose losses of positive RoIs (``pred_norm`` is the class-1 output of the pose branch)."""
    target = pose_targets(global_pose, proposals, image_hw, pose_mean, pose_stddev).to(pred_norm.device)
    return {
        "loss_dof_reg": dof_loss(pred_norm, target),
        "loss_points": points_loss(pred_norm, target, proposals, points_5, pose_mean, pose_stddev),
    }
