"""The img2pose network: Faster R-CNN (ResNet-18 FPN) whose second RoI branch regresses a 6DoF pose.

Assembled from torchvision's detection components so that the authors' checkpoints load unchanged:
the module names below (``backbone``, ``rpn``, ``roi_heads.box_head`` ...) are the released keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.misc import FrozenBatchNorm2d

from .roi_heads import PoseHeadSettings, PoseRoIHeads, RoIOutputs
from .rpn import TopNRegionProposalNetwork
from .settings import ModelSettings  # re-exported: its historical home

__all__ = ["ModelSettings", "Img2Pose", "ImageDetections", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# One anchor size per FPN level (the original lists a sixth, 512, that no level uses).
ANCHOR_SIZES = ((16,), (32,), (64,), (128,), (256,))
ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * len(ANCHOR_SIZES)


@dataclass
class ImageDetections:
    """The network's detections for one image, boxes in original pixels, poses in the resized camera."""

    boxes: Tensor  # (K, 4) float32, original image pixels
    scores: Tensor  # (K,)
    dofs: Tensor  # (K, 6) global pose in the camera of the resized image
    resized_hw: tuple[int, int]
    original_hw: tuple[int, int]


class Img2Pose(nn.Module):
    """img2pose for inference: images in, per-image faces (box, score, global pose) out."""

    def __init__(
        self,
        pose_mean: Tensor,
        pose_stddev: Tensor,
        points_68: Tensor,
        settings: ModelSettings | None = None,
    ) -> None:
        super().__init__()
        s = settings or ModelSettings()
        self.settings = s
        # Feed the backbone NHWC tensors (faster convolutions on GPUs); weights follow in ``to()``.
        self.channels_last = False
        self.transform = GeneralizedRCNNTransform(s.min_size, s.max_size, list(IMAGENET_MEAN), list(IMAGENET_STD))
        self.backbone = resnet_fpn_backbone(
            backbone_name="resnet18", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=5
        )
        anchors = AnchorGenerator(ANCHOR_SIZES, ASPECT_RATIOS)
        self.rpn = TopNRegionProposalNetwork(
            anchors,
            RPNHead(self.backbone.out_channels, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=256,
            positive_fraction=0.5,
            pre_nms_top_n={"training": 2000, "testing": s.rpn_pre_nms_top_n},
            post_nms_top_n={"training": 2000, "testing": s.rpn_post_nms_top_n},
            nms_thresh=s.rpn_nms_thresh,
        )
        self.roi_heads = PoseRoIHeads(
            pose_mean,
            pose_stddev,
            points_68,
            PoseHeadSettings(
                score_thresh=s.box_score_thresh,
                nms_thresh=s.box_nms_thresh,
                bbox_x_factor=s.bbox_x_factor,
                bbox_y_factor=s.bbox_y_factor,
                expand_forehead=s.expand_forehead,
                max_faces=s.max_faces,
            ),
        )

    def configure(self, **changes) -> None:
        """Change inference settings in place (sizes, RPN top-n, thresholds, ``max_faces``)."""
        s = self.settings
        for key, value in changes.items():
            if value is None and key != "max_faces":
                continue
            if not hasattr(s, key):
                raise ValueError(f"unknown model setting {key!r}")
            setattr(s, key, value)
        self.transform.min_size = (s.min_size,)
        self.transform.max_size = s.max_size
        self.rpn._pre_nms_top_n["testing"] = s.rpn_pre_nms_top_n
        self.rpn._post_nms_top_n["testing"] = s.rpn_post_nms_top_n
        self.rpn.nms_thresh = s.rpn_nms_thresh
        h = self.roi_heads.settings
        h.score_thresh, h.nms_thresh = s.box_score_thresh, s.box_nms_thresh
        h.bbox_x_factor, h.bbox_y_factor, h.expand_forehead = s.bbox_x_factor, s.bbox_y_factor, s.expand_forehead
        h.max_faces = s.max_faces

    def forward(self, images: list[Tensor], threshold: float = 0.0) -> list[ImageDetections]:
        """Detect faces in float RGB images ``(3, H, W)`` in [0, 1]; keeps faces scoring above ``threshold``."""
        original = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch, _ = self.transform(images)
        x = batch.tensors.contiguous(memory_format=torch.channels_last) if self.channels_last else batch.tensors
        features = self.backbone(x)
        proposals, _ = self.rpn(batch, features)
        outputs: list[RoIOutputs] = self.roi_heads(features, proposals, batch.image_sizes, threshold)
        results = []
        for out, resized, orig in zip(outputs, batch.image_sizes, original):
            ratio_h = torch.tensor(orig[0], dtype=torch.float32) / torch.tensor(resized[0], dtype=torch.float32)
            ratio_w = torch.tensor(orig[1], dtype=torch.float32) / torch.tensor(resized[1], dtype=torch.float32)
            scale = torch.stack([ratio_w, ratio_h, ratio_w, ratio_h]).to(out.boxes.device)
            results.append(
                ImageDetections(out.boxes * scale, out.scores, out.dofs, (int(resized[0]), int(resized[1])), orig)
            )
        return results
