"""Benchmarks of the img2pose paper: AFLW2000-3D and BIWI pose errors, WIDER FACE val AP.

The evaluators work on plain arrays so that they can be checked without a model: predictions are
:class:`Faces` per image (boxes x1 y1 x2 y2, scores, global poses), ground truth is read from files in
the published layouts (AFLW2000-3D's per-image ``.mat`` or an equivalent ``.json``; BIWI's frame list
and per-frame ``_pose.txt``, or the JSON :func:`write_biwi_json` makes of them; WIDER FACE's
``wider_face_val_bbx_gt.txt`` and its easy/medium/hard lists). Each protocol is the authors' evaluation
notebook reproduced step by step; its module says how.

One module per protocol: :mod:`.aflw2000`, :mod:`.biwi` and :mod:`.wider` (with the multi-scale box
voting), over what they share in :mod:`.metrics` (the predictions, box overlap, the error summary);
:mod:`.report` writes the results.
"""

from __future__ import annotations

# _ypr: tests make ground-truth angles with the protocol's own conversion of predicted poses.
from .aflw2000 import _ypr, aflw2000_pick, evaluate_aflw2000, load_aflw2000  # noqa: F401
from .biwi import biwi_angles, biwi_frames, biwi_pick, evaluate_biwi, load_biwi, read_biwi_pose, write_biwi_json
from .metrics import Faces, iou_matrix
from .report import markdown_table, write_report
from .wider import box_vote, evaluate_wider, load_wider_gt, wider_ap

__all__ = [
    "Faces",
    "iou_matrix",
    "load_aflw2000",
    "load_biwi",
    "read_biwi_pose",
    "biwi_frames",
    "write_biwi_json",
    "biwi_angles",
    "load_wider_gt",
    "evaluate_aflw2000",
    "evaluate_biwi",
    "aflw2000_pick",
    "biwi_pick",
    "evaluate_wider",
    "wider_ap",
    "box_vote",
    "markdown_table",
    "write_report",
]
