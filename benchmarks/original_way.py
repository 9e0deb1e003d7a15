"""The released img2pose's way of running the RPN and RoI stages, kept for comparison only (never
in the package).

The original runs torchvision's RPN NMS over every proposal of every level, pools every proposal
twice (once per branch, identical RoIAlign settings), runs the pose branch on all of them,
post-processes every candidate above 0.05 in a per-box Python loop, and leaves the caller's
threshold to the very end. ``original_way(model)`` swaps that in on a model instance, so benchmarks
and tests can compare it with the package's path on the same weights.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torchvision.models.detection.rpn import RegionProposalNetwork

from benchmarks.predictor import postprocess_loop
from img2pose_core.model import Img2Pose
from img2pose_core.roi_heads import PoseRoIHeads, RoIOutputs

__all__ = ["original_roi_forward", "original_way"]


def original_roi_forward(heads: PoseRoIHeads, features, proposals, image_shapes, threshold: float = 0.0):
    """Both branches on every proposal, each with its own pooling; loop post-processing; threshold last."""
    box_features = heads.box_head(heads.roi_pool(features, proposals, image_shapes))
    class_features = heads.class_head(heads.roi_pool(features, proposals, image_shapes))
    dofs = heads.box_predictor(box_features)[:, 6:12]
    scores = F.softmax(heads.class_predictor(class_features), dim=-1)[:, 1]
    device = scores.device
    counts = torch.tensor([len(p) for p in proposals], device=device)
    image_index = torch.repeat_interleave(torch.arange(len(proposals), device=device), counts)
    hw = torch.tensor(image_shapes, dtype=torch.int64, device=device).reshape(-1, 2)[image_index]
    boxes = torch.cat(proposals)
    boxes = torch.stack(
        [
            boxes[:, 0].clamp(0, None).minimum(hw[:, 1].to(boxes.dtype)),
            boxes[:, 1].clamp(0, None).minimum(hw[:, 0].to(boxes.dtype)),
            boxes[:, 2].clamp(0, None).minimum(hw[:, 1].to(boxes.dtype)),
            boxes[:, 3].clamp(0, None).minimum(hw[:, 0].to(boxes.dtype)),
        ],
        dim=1,
    )
    keep = (scores > heads.settings.score_thresh) & ((boxes[:, 2:] - boxes[:, :2]) >= 1e-2).all(dim=1)
    idx = keep.nonzero().squeeze(1)
    outputs = postprocess_loop(heads, dofs[idx], boxes[idx], scores[idx], image_index[idx], hw[idx], len(proposals))
    result = []
    for face_boxes, face_scores, poses in outputs:
        above = face_scores > threshold
        result.append(RoIOutputs(face_boxes[above], face_scores[above], poses[above]))
    return result


@contextmanager
def original_way(model: Img2Pose) -> Iterator[Img2Pose]:
    """Run ``model`` the released implementation's way inside the ``with`` block (RPN included:
    torchvision's NMS over every proposal of every level)."""
    heads = model.roi_heads

    def forward(features, proposals, image_shapes, threshold=0.0):
        return original_roi_forward(heads, features, proposals, image_shapes, threshold)

    heads.forward = forward
    model.rpn.filter_proposals = RegionProposalNetwork.filter_proposals.__get__(model.rpn)
    try:
        yield model
    finally:
        del heads.forward
        del model.rpn.filter_proposals
