"""A training-mode forward of the whole model, returning the original's unweighted loss dictionary.

The inference modules (:mod:`img2pose_core.model`, :mod:`img2pose_core.roi_heads`) stay untouched;
training reuses their weights and torchvision's RPN losses, RoI sampling, and the class and pose
branches. The losses are also computed with the model in eval mode (validation), which the original
could not do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import boxes as box_ops

from .. import geometry
from .losses import pose_losses
from .targets import F64

if TYPE_CHECKING:
    from ..model import Img2Pose

__all__ = ["TrainSettings", "TrainingForward"]


@dataclass
class TrainSettings:
    """RoI sampling of training (torchvision's Faster R-CNN defaults, which the original uses)."""

    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25


class TrainingForward(nn.Module):
    """The original's training losses for an :class:`~img2pose_core.model.Img2Pose`.

    ``forward(images, targets)`` returns ``loss_objectness``, ``loss_rpn_box_reg`` (torchvision's RPN),
    ``loss_classifier`` (cross-entropy of the sampled RoIs), ``loss_dof_reg`` and ``loss_points`` (pose
    losses of positive RoIs matched to a face with a pose). Targets per image: ``boxes`` (K, 4) in the
    input image's pixels, ``dofs`` (K, 6) global poses in the input image's camera, ``has_pose`` (K,).
    The losses are computed whatever the model's mode (the original validates in train mode; in eval mode
    the pose head's batch norm uses its running statistics and the RPN its test-time top-n).
    """

    points_5: Tensor  # the buffer registered in __init__

    def __init__(self, model: Img2Pose, points_5: Tensor, settings: TrainSettings | None = None) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("points_5", torch.as_tensor(points_5, dtype=F64).reshape(5, 3), persistent=False)
        s = settings or TrainSettings()
        self.matcher = det_utils.Matcher(s.fg_iou_thresh, s.bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = det_utils.BalancedPositiveNegativeSampler(s.batch_size_per_image, s.positive_fraction)

    def _rpn(
        self, images: ImageList, features: dict[str, Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """torchvision's RPN in training mode: the proposals, and its objectness and box losses."""
        rpn = self.model.rpn
        feats = list(features.values())
        objectness, deltas = rpn.head(feats)
        anchors = rpn.anchor_generator(images, feats)
        num_images = len(anchors)
        per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(num_images, -1, 4)
        boxes, _ = rpn.filter_proposals(proposals, objectness, images.image_sizes, per_level)
        labels, matched = rpn.assign_targets_to_anchors(anchors, targets)
        regression_targets = rpn.box_coder.encode(matched, anchors)
        loss_obj, loss_box = rpn.compute_loss(objectness, deltas, labels, regression_targets)
        return boxes, {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_box}

    def _pose_of_positives(self, pooled: Tensor) -> Tensor:
        """Class-1 normalised poses of the positive RoIs' pooled features.

        As the original, the pose branch runs on the positive RoIs only, so in training its batch norm takes
        their statistics. The original fails on a batch with a single positive (BatchNorm1d cannot take the
        statistics of one row): that row is run with the running statistics instead.
        """
        heads = self.model.roi_heads
        if len(pooled) == 0:
            return pooled.new_zeros((0, 6))
        norms = [m for m in heads.box_predictor.modules() if isinstance(m, nn.BatchNorm1d) and m.training]
        single = len(pooled) == 1
        if single:
            for m in norms:
                m.eval()
        try:
            return heads.box_predictor(heads.box_head(pooled)).reshape(-1, 2, 6)[:, 1]
        finally:
            if single:
                for m in norms:
                    m.train()

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The five losses (float32) of a batch of ``(3, H, W)`` images and their targets."""
        model = self.model
        originals = [(int(i.shape[-1]), int(i.shape[-2])) for i in images]
        targets = [{"boxes": t["boxes"].float(), "dofs": t["dofs"], "has_pose": t["has_pose"]} for t in targets]
        batch, targets = model.transform(images, targets)
        features = model.backbone(batch.tensors)
        proposals, losses = self._rpn(batch, features, targets)

        heads = model.roi_heads
        sampled, labels, gt_dofs, gt_has, img_hw = [], [], [], [], []
        for props, t, (h, w), (ow, oh) in zip(proposals, targets, batch.image_sizes, originals):
            gt = t["boxes"]
            props = torch.cat([props.detach(), gt])
            if len(gt):
                matched = self.matcher(box_ops.box_iou(gt, props))
                idx = matched.clamp(min=0)
                lab = (matched >= 0).to(torch.int64)
                lab[matched == det_utils.Matcher.BETWEEN_THRESHOLDS] = -1
            else:
                idx = torch.zeros(len(props), dtype=torch.int64, device=props.device)
                lab = torch.zeros(len(props), dtype=torch.int64, device=props.device)
            pos, neg = self.sampler([lab])
            keep = torch.where(pos[0] | neg[0])[0]
            sampled.append(props[keep])
            labels.append(lab[keep].clamp(min=0))
            dofs = t["dofs"].to(F64)
            if len(gt):
                # The poses are labels in the input image's camera; the network sees the resized image.
                dofs = geometry.rescale_pose(dofs, torch.tensor([[ow, oh]]).expand(len(dofs), 2),
                                             torch.tensor([[w, h]]).expand(len(dofs), 2))
                gt_dofs.append(dofs[idx[keep]])
                gt_has.append(t["has_pose"].bool()[idx[keep]])
            else:
                gt_dofs.append(torch.zeros(len(keep), 6, dtype=F64, device=props.device))
                gt_has.append(torch.zeros(len(keep), dtype=torch.bool, device=props.device))
            img_hw.append(torch.tensor([[h, w]], device=props.device).expand(len(keep), 2))

        pooled = heads.roi_pool(features, sampled, batch.image_sizes)
        class_logits = heads.class_predictor(heads.class_head(pooled))
        labels_all = torch.cat(labels)
        losses["loss_classifier"] = F.cross_entropy(class_logits, labels_all)
        positive = (labels_all > 0) & torch.cat(gt_has)
        pred = self._pose_of_positives(pooled[positive])
        losses.update(pose_losses(
            pred, torch.cat(gt_dofs)[positive], torch.cat(sampled)[positive].detach(), torch.cat(img_hw)[positive],
            heads.pose_mean, heads.pose_stddev, self.points_5,
        ))
        return {k: v.float() for k, v in losses.items()}
