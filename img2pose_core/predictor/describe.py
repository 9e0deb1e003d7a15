"""Every face's derived geometry: angles, landmarks and alignment, from the network's detections.

The whole batch is computed at once in float64, each face in the camera of the resized image the network
saw, then scaled to the pixels the result reports.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .. import alignment, geometry
from ..model import ImageDetections
from .faces import ImageFaces

__all__ = ["describe_faces"]


def describe_faces(
    detections: Sequence[ImageDetections],
    report_sizes: Sequence[tuple[int, int]],
    *,
    points_5: Tensor,
    points_68: Tensor | None,
    crop_size: int,
    align_mode: alignment.AlignMode,
    device: torch.device,
) -> list[ImageFaces]:
    """One :class:`ImageFaces` per image of the batch, its coordinates in pixels of ``report_sizes``
    ((width, height) per image). ``points_5`` / ``points_68`` are the 3D references (float64 on
    ``device``); without ``points_68`` no 68 landmarks are projected."""
    counts = [len(d.scores) for d in detections]
    dev = device
    poses = torch.cat([d.dofs for d in detections]).to(dev, torch.float64) if detections else torch.zeros(0, 6)
    net_wh = torch.tensor([[d.resized_hw[1], d.resized_hw[0]] for d in detections], dtype=torch.int64, device=dev)
    orig_wh = torch.tensor(report_sizes, dtype=torch.float64, device=dev).reshape(-1, 2)
    index = torch.repeat_interleave(torch.arange(len(detections), device=dev), torch.tensor(counts, device=dev))
    face_net_wh = net_wh[index]
    k = geometry.image_intrinsics(face_net_wh[:, 0], face_net_wh[:, 1])
    scale = (orig_wh / net_wh.to(torch.float64))[index][:, None, :]
    lms5 = geometry.project_points(points_5, poses, k) * scale
    lms68 = geometry.project_points(points_68, poses, k) * scale if points_68 is not None else None
    angles = geometry.rotvec_to_yaw_pitch_roll(poses[:, :3])
    matrices, _ = alignment.align_matrix(lms5, crop_size, align_mode)

    def split(t: Tensor | None) -> list[np.ndarray | None]:
        """Per image: its rows of ``t`` on the CPU, or None for each image where ``t`` is None."""
        return [None] * len(counts) if t is None else [x.cpu().numpy() for x in torch.split(t, counts)]

    per = zip(detections, report_sizes, split(poses), split(angles), split(lms5), split(matrices), split(lms68))
    out = []
    for d, (rw, rh), pose, ang, l5, mat, l68 in per:
        boxes = d.boxes.float().cpu().numpy()
        if (rw, rh) != (d.original_hw[1], d.original_hw[0]):  # a reduced copy: back to the picture's pixels
            sx, sy = rw / d.original_hw[1], rh / d.original_hw[0]
            boxes = (boxes * np.array([sx, sy, sx, sy], dtype=np.float64)).astype(np.float32)
        out.append(
            ImageFaces(
                width=rw,
                height=rh,
                network_size=(d.resized_hw[1], d.resized_hw[0]),
                scores=d.scores.float().cpu().numpy(),
                boxes=boxes,
                poses=pose,
                yaw_pitch_roll=ang,
                landmarks_5=l5,
                align_matrices=mat,
                landmarks_68=l68,
            )
        )
    return out
