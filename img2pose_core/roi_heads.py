"""img2pose's RoI stage: a class branch and a pose branch over the same pooled proposals, and the
post-processing that turns the pose of each proposal into a face box in the image.

The original pools every proposal twice (identical RoIAlign settings for both branches) and runs
the pose branch on all of them. Here the proposals are pooled once and the pose branch runs only for
proposals whose face score can still survive: greedy NMS never lets a lower score suppress a higher
one, so dropping proposals below the caller's threshold before NMS leaves the detections above it
unchanged. On CPU the pooling itself is the weighted-gather form of the same RoIAlign (``pooling.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign, batched_nms

from . import geometry
from .pooling import multiscale_roi_align_gather, multiscale_roi_align_rois, rois_of

__all__ = ["PoseHeadSettings", "ClassPredictor", "PosePredictor", "PoseRoIHeads", "RoIOutputs"]


@dataclass
class PoseHeadSettings:
    """Post-processing settings of the RoI stage (the original's defaults)."""

    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    bbox_x_factor: float = 1.1
    bbox_y_factor: float = 1.1
    expand_forehead: float = 0.3
    # The original passes a per-image cap that never takes effect; None keeps that behaviour.
    max_faces: int | None = None


class ClassPredictor(nn.Module):
    """Face/background logits of each pooled proposal."""

    def __init__(self, in_channels: int = 1024, num_classes: int = 2) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.cls_score(x.flatten(start_dim=1))


class PosePredictor(nn.Module):
    """Normalised box-frame pose (6 values per class) of each pooled proposal."""

    def __init__(self, in_channels: int = 1024, num_classes: int = 2, hidden: int = 256) -> None:
        super().__init__()
        self.dof_pred = nn.Sequential(
            nn.Linear(in_channels, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes * 6),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.dof_pred(x.flatten(start_dim=1))


@dataclass
class RoIOutputs:
    """Detections of one image in the frame of the resized image the network saw."""

    boxes: Tensor  # (K, 4) float32, face boxes derived from the pose
    scores: Tensor  # (K,) float32
    dofs: Tensor  # (K, 6) float32, global pose in the resized image's camera


class PoseRoIHeads(nn.Module):
    """The two RoI branches of img2pose and their post-processing (inference)."""

    CPU_SLICE = 256  # proposals pooled and scored together on CPU (see _pooled_slices)
    # The buffers registered in __init__ (declared so that they type as tensors, not Tensor | Module).
    pose_mean: Tensor
    pose_stddev: Tensor
    points_68: Tensor

    def __init__(
        self,
        pose_mean: Tensor,
        pose_stddev: Tensor,
        points_68: Tensor,
        settings: PoseHeadSettings | None = None,
        representation_size: int = 1024,
        out_channels: int = 256,
    ) -> None:
        super().__init__()
        self.settings = settings or PoseHeadSettings()
        self.roi_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
        # CPU inference pools with the gather form of the same RoIAlign; False forces torchvision's op.
        self.gather_pooling = True
        resolution = self.roi_pool.output_size[0]
        self.box_head = TwoMLPHead(out_channels * resolution**2, representation_size)
        self.box_predictor = PosePredictor(representation_size, 2)
        self.class_head = TwoMLPHead(out_channels * resolution**2, representation_size)
        self.class_predictor = ClassPredictor(representation_size, 2)
        # Statistics and reference points are bundle data, not learned weights: kept out of state_dict.
        self.register_buffer("pose_mean", torch.as_tensor(pose_mean, dtype=torch.float32).reshape(6), persistent=False)
        self.register_buffer(
            "pose_stddev", torch.as_tensor(pose_stddev, dtype=torch.float32).reshape(6), persistent=False
        )
        self.register_buffer(
            "points_68", torch.as_tensor(points_68, dtype=torch.float64).reshape(68, 3), persistent=False
        )

    def pool(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """RoIAlign of every proposal on its pyramid level: ``(N, C, 7, 7)``.

        On CPU without gradients this is the weighted-gather form (``pooling.py``), several times
        faster than torchvision's CPU kernel and equal up to float rounding; elsewhere torchvision's op.
        """
        if self._gathers(features):
            return multiscale_roi_align_gather(self._levels(features), proposals, image_shapes, *self._pool_shape())
        return self.roi_pool(features, proposals, image_shapes)

    def _gathers(self, features: dict[str, Tensor]) -> bool:
        first = features[self.roi_pool.featmap_names[0]]
        return self.gather_pooling and first.device.type == "cpu" and not torch.is_grad_enabled()

    def _levels(self, features: dict[str, Tensor]) -> list[Tensor]:
        return [features[name] for name in self.roi_pool.featmap_names]

    def _pool_shape(self) -> tuple[int, int]:
        return self.roi_pool.output_size[0], self.roi_pool.sampling_ratio

    def _pooled_slices(self, features, proposals, image_shapes, rois: Tensor) -> Iterator[tuple[slice, Tensor]]:
        """Pooled features of the proposals, a slice of them at a time on CPU (all at once elsewhere).

        Slices of ``CPU_SLICE`` proposals keep each buffer (~12 MB) small enough to be reused from
        the heap; the whole set at once (~50 MB per buffer) is mapped afresh, and page-faulted,
        on every image. Each proposal's pooling and scores depend on that proposal alone. ``rois``
        are the ``proposals`` as one ``(N, 5)`` tensor (``pooling.rois_of``).
        """
        total = rois.shape[0]
        if not self._gathers(features):
            yield slice(0, total), self.roi_pool(features, proposals, image_shapes)
            return
        levels = self._levels(features)
        for start in range(0, total, self.CPU_SLICE):
            rows = slice(start, min(start + self.CPU_SLICE, total))
            yield rows, multiscale_roi_align_rois(levels, rois[rows], image_shapes, *self._pool_shape())

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        threshold: float = 0.0,
    ) -> list[RoIOutputs]:
        """Detections per image for ``proposals`` on ``features`` of images of ``image_shapes`` (h, w).

        ``threshold`` is the caller's score threshold: proposals at or below it are dropped before
        the pose branch runs (the result above it is exactly the same).
        """
        device = features[self.roi_pool.featmap_names[0]].device
        rois = rois_of(proposals).to(device)
        image_index = rois[:, 0].to(torch.int64)
        shapes = torch.tensor(image_shapes, dtype=torch.int64, device=device).reshape(-1, 2)
        hw = shapes[image_index]
        boxes = rois[:, 1:]
        boxes = torch.stack(
            [
                boxes[:, 0].clamp(min=0).minimum(hw[:, 1].to(boxes.dtype)),
                boxes[:, 1].clamp(min=0).minimum(hw[:, 0].to(boxes.dtype)),
                boxes[:, 2].clamp(min=0).minimum(hw[:, 1].to(boxes.dtype)),
                boxes[:, 3].clamp(min=0).minimum(hw[:, 0].to(boxes.dtype)),
            ],
            dim=1,
        )
        wh_box = boxes[:, 2:] - boxes[:, :2]
        usable = (wh_box >= 1e-2).all(dim=1)
        min_score = max(self.settings.score_thresh, float(threshold))

        score_parts, keep_parts, kept_pooled = [], [], []
        for rows, pooled in self._pooled_slices(features, proposals, image_shapes, rois):
            part = F.softmax(self.class_predictor(self.class_head(pooled)), dim=-1)[:, 1]
            keep_part = (part > min_score) & usable[rows]
            score_parts.append(part)
            keep_parts.append(keep_part)
            kept_pooled.append(pooled[keep_part])  # only these reach the pose branch
        if not score_parts:
            return [RoIOutputs(boxes[:0], boxes.new_zeros(0), boxes.new_zeros((0, 6))) for _ in proposals]
        scores = torch.cat(score_parts)
        keep_idx = torch.cat(keep_parts).nonzero().squeeze(1)

        dofs = self.box_predictor(self.box_head(torch.cat(kept_pooled)))[:, 6:12]
        return self.postprocess(dofs, boxes[keep_idx], scores[keep_idx], image_index[keep_idx], hw[keep_idx], len(proposals))

    def postprocess(
        self,
        dofs: Tensor,
        boxes: Tensor,
        scores: Tensor,
        image_index: Tensor,
        image_hw: Tensor,
        num_images: int,
    ) -> list[RoIOutputs]:
        """Pose → image frame → projected face box → NMS, for all candidates of a batch at once."""
        s = self.settings
        # De-normalised in float32, as the original does before its float64 geometry.
        local = dofs.float() * self.pose_stddev + self.pose_mean
        image_wh = image_hw.flip(-1)
        global_pose = geometry.pose_box_to_image(local, boxes.float(), image_wh)
        k = geometry.image_intrinsics(image_wh[:, 0], image_wh[:, 1])
        lms = geometry.project_points(self.points_68, global_pose, k)
        face_boxes = geometry.face_box_from_landmarks(
            lms, global_pose[:, 2], image_wh, s.bbox_x_factor, s.bbox_y_factor, s.expand_forehead
        ).float()
        global_pose = global_pose.float()

        keep = batched_nms(face_boxes, scores, image_index, s.nms_thresh)  # sorted by descending score
        outputs = []
        kept_image = image_index[keep]
        for i in range(num_images):
            mine = keep[kept_image == i]
            if s.max_faces is not None:
                mine = mine[: s.max_faces]
            outputs.append(RoIOutputs(face_boxes[mine], scores[mine], global_pose[mine]))
        return outputs
