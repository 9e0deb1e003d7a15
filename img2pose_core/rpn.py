"""Region proposals: torchvision's RPN, with the per-level NMS stopped once the top-n is settled.

After its per-level top-k, the RPN runs greedy NMS over every level (about 6000 boxes each at
test time) and then keeps only the ``post_nms_top_n`` (1000) best survivors of all levels. On CPU
that NMS took about a tenth of an image's time. Greedy NMS over the first ``m`` boxes of a level
(in score order) keeps exactly the boxes the full NMS keeps among those ``m``: a box's fate depends
only on the survivors before it. So each level is suppressed over a prefix, and the prefix grows
(doubling; the new boxes go through NMS with the survivors so far) until every box left out scores
strictly below the ``n``-th best survivor, with no tie across that cut. The kept set is then the one
of the full NMS. Survivors with exactly equal scores may come out in another order, as they already
do between torchvision's CPU and CUDA sorts.

The prefix loop decides on the host after each step (how many survived, where the cut is): cheap on
CPU, but on a GPU each decision waits for the device. There the full ``batched_nms`` runs as one
kernel per image instead, with no host decision inside the levels (``prefix_nms=None``: the loop on
CPU only).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import batched_nms, boxes as box_ops, nms

__all__ = ["batched_nms_top_n", "TopNRegionProposalNetwork"]


def _level_runs(levels: Tensor, scores: Tensor) -> list[tuple[int, int]] | None:
    """``(start, end)`` of each level's run if the levels are contiguous and sorted by score, else None."""
    if levels.numel() == 0:
        return []
    change = (levels[1:] != levels[:-1]).nonzero().squeeze(1) + 1
    starts = [0, *change.tolist()]
    ends = [*change.tolist(), int(levels.numel())]
    if len(set(levels[starts].tolist())) != len(starts):
        return None  # a level appears in more than one run
    if bool((scores[1:] > scores[:-1])[(levels[1:] == levels[:-1])].any()):
        return None  # a level's scores are not in descending order
    return list(zip(starts, ends))


def batched_nms_top_n(
    boxes: Tensor, scores: Tensor, levels: Tensor, iou_threshold: float, top_n: int, first: int | None = None
) -> Tensor:
    """The same kept set as ``batched_nms(boxes, scores, levels, iou_threshold)[:top_n]``, sorted by score.

    Each level must be one contiguous run in descending score order (what the RPN's per-level top-k
    produces); otherwise, and for small inputs, this is torchvision's ``batched_nms``. ``first`` is
    the initial prefix per level (default ``top_n``).
    """
    runs = _level_runs(levels, scores) if boxes.numel() > 4000 else None
    if runs is None:
        return batched_nms(boxes, scores, levels, iou_threshold)[:top_n]
    empty = torch.zeros(0, dtype=torch.int64, device=boxes.device)
    kept = [empty] * len(runs)  # per level: survivors so far, in processing order
    done = [0] * len(runs)  # per level: how many boxes of the run have been through NMS
    size = [min(end - start, first or top_n) for start, end in runs]
    while True:
        for i, (start, _) in enumerate(runs):
            if done[i] < size[i]:
                # Only the survivors so far can suppress a later box: NMS over them and the new
                # boxes gives the survivors of the longer prefix without redoing the first part.
                new = torch.arange(start + done[i], start + size[i], device=boxes.device)
                candidates = torch.cat([kept[i], new])
                kept[i] = candidates[nms(boxes[candidates], scores[candidates], iou_threshold)]
                done[i] = size[i]
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        keep_mask[torch.cat(kept)] = True
        keep = keep_mask.nonzero().squeeze(1)
        keep = keep[scores[keep].sort(descending=True)[1]]
        if len(keep) >= top_n:
            cut = scores[keep[top_n - 1]]
            clean_cut = len(keep) == top_n or bool(scores[keep[top_n]] < cut)
        else:
            cut, clean_cut = None, True
        grown = False
        for i, (start, end) in enumerate(runs):
            # The best box left out of this level must not be able to enter the top n.
            if size[i] < end - start and (cut is None or not clean_cut or bool(scores[start + size[i]] >= cut)):
                size[i] = min(end - start, 2 * size[i])
                grown = True
        if not grown:
            return keep[:top_n]


class TopNRegionProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN; at inference on CPU its NMS stops once the ``post_nms_top_n`` best are settled.

    ``prefix_nms``: True/False forces the prefix loop on or off; None (the default) uses it on CPU only.
    """

    prefix_nms: bool | None = None

    def filter_proposals(
        self,
        proposals: Tensor,
        objectness: Tensor,
        image_shapes: list[tuple[int, int]],
        num_anchors_per_level: list[int],
    ) -> tuple[list[Tensor], list[Tensor]]:
        if self.training:
            return super().filter_proposals(proposals, objectness, image_shapes, num_anchors_per_level)
        num_images, device = proposals.shape[0], proposals.device
        objectness = objectness.detach().reshape(num_images, -1)
        levels = torch.cat(
            [torch.full((n,), i, dtype=torch.int64, device=device) for i, n in enumerate(num_anchors_per_level)]
        ).reshape(1, -1).expand_as(objectness)
        # Per-level top-k, each level's run in descending score order.
        top = self._get_top_n_idx(objectness, num_anchors_per_level)
        rows = torch.arange(num_images, device=device)[:, None]
        probabilities = torch.sigmoid(objectness[rows, top])
        levels, proposals = levels[rows, top], proposals[rows, top]
        final_boxes, final_scores = [], []
        for boxes, scores, level, shape in zip(proposals, probabilities, levels, image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            keep = box_ops.remove_small_boxes(boxes, self.min_size)
            boxes, scores, level = boxes[keep], scores[keep], level[keep]
            keep = torch.where(scores >= self.score_thresh)[0]
            boxes, scores, level = boxes[keep], scores[keep], level[keep]
            prefix = self.prefix_nms if self.prefix_nms is not None else not boxes.is_cuda
            if prefix:
                keep = batched_nms_top_n(boxes, scores, level, self.nms_thresh, self.post_nms_top_n())
            else:
                keep = batched_nms(boxes, scores, level, self.nms_thresh)[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores
