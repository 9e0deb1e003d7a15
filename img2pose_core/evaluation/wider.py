"""WIDER FACE val: its ground truth, the multi-scale box voting, and the average precision per setting.

The official protocol: per image, predictions by descending score are matched to the ground truth with
the highest IoU (≥ 0.5, boxes with the official +1 pixel convention); a match to a face outside the
setting's list is ignored; precision/recall at 1000 thresholds of the min-max normalised scores; VOC AP
(all points). Ground truth is ``wider_face_val_bbx_gt.txt`` and the easy/medium/hard lists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .metrics import Faces, iou_matrix

__all__ = ["load_wider_gt", "wider_ap", "evaluate_wider", "box_vote"]


def load_wider_gt(folder_or_txt: str | Path, settings: Sequence[str] = ("easy", "medium", "hard")) -> tuple[dict, dict]:
    """``(boxes, keep)``: per image name (``event/name`` without extension) its ground-truth boxes (x1 y1 x2 y2)
    and, per setting, the 0-based indices of the faces that count. Reads ``wider_face_val_bbx_gt.txt`` and
    ``wider_<setting>_val.json`` (or the official ``wider_<setting>_val.mat`` when scipy is installed)."""
    p = Path(folder_or_txt)
    txt = p if p.is_file() else p / "wider_face_val_bbx_gt.txt"
    folder = txt.parent
    lines = [l.strip() for l in txt.read_text().splitlines()]
    boxes: dict[str, np.ndarray] = {}
    i = 0
    while i < len(lines):
        if not lines[i]:
            i += 1
            continue
        name = lines[i].rsplit(".", 1)[0]
        n = int(lines[i + 1])
        rows = [list(map(float, lines[i + 2 + j].split()[:4])) for j in range(n)]
        i += 2 + max(n, 1)  # an image with 0 faces still has one line of zeros
        b = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
        boxes[name] = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
    keep: dict[str, dict[str, np.ndarray]] = {}
    for setting in settings:
        js, mat = folder / f"wider_{setting}_val.json", folder / f"wider_{setting}_val.mat"
        if js.is_file():
            lists = {k: np.asarray(v, dtype=np.int64) - 1 for k, v in json.loads(js.read_text()).items()}
        elif mat.is_file():
            lists = _wider_mat_lists(mat)
        else:
            lists = {k: np.arange(len(v)) for k, v in boxes.items()}
        keep[setting] = lists
    return boxes, keep


def _wider_mat_lists(mat_path: Path) -> dict[str, np.ndarray]:
    from scipy.io import loadmat

    m = loadmat(str(mat_path))
    out = {}
    for ev, files, gts in zip(m["event_list"], m["file_list"], m["gt_list"]):
        event = str(ev[0][0])
        for f, g in zip(files[0], gts[0]):
            out[f"{event}/{f[0][0]}"] = np.asarray(g[0], dtype=np.int64).reshape(-1) - 1
    return out


def _image_eval(pred_boxes: np.ndarray, gt: np.ndarray, keep: np.ndarray, iou_thresh: float) -> tuple[np.ndarray, np.ndarray]:
    """Per prediction (descending score): faces recalled so far, and whether it is a proposal that counts."""
    n = len(pred_boxes)
    recalled = np.zeros(len(gt))  # 1 recalled, -1 matched an ignored face
    counts = np.ones(n)
    pred_recall = np.zeros(n)
    if len(gt):
        ignore = np.ones(len(gt), dtype=bool)
        ignore[keep] = False
        overlaps = iou_matrix(pred_boxes, gt, plus_one=True)
        for h in range(n):
            j = int(overlaps[h].argmax())
            if overlaps[h, j] >= iou_thresh:
                if ignore[j]:
                    recalled[j] = -1
                    counts[h] = -1
                elif recalled[j] == 0:
                    recalled[j] = 1
            pred_recall[h] = (recalled == 1).sum()
    return pred_recall, counts


def wider_ap(gt_boxes: dict, keep: dict, predictions: dict[str, Faces], iou_thresh: float = 0.5, thresh_num: int = 1000) -> float:
    """VOC AP of one setting (``keep``: per image the 0-based indices of the faces that count)."""
    all_scores = np.concatenate([p.scores for p in predictions.values()] + [np.zeros(0)])
    lo, hi = (all_scores.min(), all_scores.max()) if len(all_scores) else (0.0, 1.0)
    pr = np.zeros((thresh_num, 2))
    count_face = 0
    for name, gt in gt_boxes.items():
        k = keep.get(name, np.zeros(0, dtype=np.int64))
        count_face += len(k)
        pred = predictions.get(name)
        if pred is None or len(pred.scores) == 0 or len(gt) == 0:
            continue
        order = np.argsort(-pred.scores, kind="stable")
        scores = (pred.scores[order] - lo) / (hi - lo) if hi > lo else np.ones(len(order))
        pred_recall, counts = _image_eval(pred.boxes[order], gt, k, iou_thresh)
        for t in range(thresh_num):
            above = np.nonzero(scores >= 1 - (t + 1) / thresh_num)[0]
            if len(above):
                r = above[-1]
                pr[t, 0] += (counts[: r + 1] == 1).sum()
                pr[t, 1] += pred_recall[r]
    precision = np.divide(pr[:, 1], pr[:, 0], out=np.zeros(thresh_num), where=pr[:, 0] > 0)
    recall = pr[:, 1] / max(count_face, 1)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def evaluate_wider(gt_boxes: dict, keep: dict, predictions: dict[str, Faces]) -> dict:
    """AP of every setting of ``keep`` (``{"easy": ..., "medium": ..., "hard": ...}``)."""
    return {s: wider_ap(gt_boxes, keep[s], predictions) for s in keep}


def box_vote(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Multi-scale box voting as the original WIDER evaluation does it (``bbox_voting``, ``--nms_threshold``
    0.6 by default); ``wider_vote.npz`` of the golden files holds its outputs.

    Highest score first, the top remaining box and every remaining box whose IoU with it (``+1`` pixel
    convention) is ``>= iou`` form a group and leave the pool. Each member weighs (score / the group's
    best score) x its IoU with the top box; the group gives the weighted mean of the corners and the
    *unnormalised* score sum(score x weight), which exceeds 1 where several boxes vote. A box of
    non-positive ``+1`` width or height overlaps nothing, itself included: it joins no group, and as the
    top box it is dropped without output. No box at all gives no box (where the original raises).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    out_b, out_s = [], []
    while len(scores):
        with np.errstate(invalid="ignore", divide="ignore"):
            overlap = _iou_plus_one(boxes[0], boxes)
        group = overlap >= iou  # NaN (an empty box against itself) is not
        if group.any():
            weights = scores[group] / scores[group].max() * overlap[group]
            out_b.append((boxes[group] * weights[:, None]).sum(0) / weights.sum())
            out_s.append(float((scores[group] * weights).sum()))
        group[0] = True  # the top box leaves the pool in every case
        boxes, scores = boxes[~group], scores[~group]
    return np.asarray(out_b, dtype=np.float64).reshape(-1, 4), np.asarray(out_s, dtype=np.float64)


def _iou_plus_one(top: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with many, +1 convention, without the guards of :func:`iou_matrix`: a degenerate
    box gives 0 or NaN as in the original, never a positive overlap."""
    area_top = (top[2] - top[0] + 1) * (top[3] - top[1] + 1)
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    iw = np.maximum(0.0, np.minimum(top[2], boxes[:, 2]) - np.maximum(top[0], boxes[:, 0]) + 1)
    ih = np.maximum(0.0, np.minimum(top[3], boxes[:, 3]) - np.maximum(top[1], boxes[:, 1]) + 1)
    inter = iw * ih
    return inter / (area_top + areas - inter)
