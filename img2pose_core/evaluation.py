"""Benchmarks of the img2pose paper: AFLW2000-3D and BIWI pose errors, WIDER FACE val AP.

The evaluators work on plain arrays so that they can be checked without a model: predictions are
:class:`Faces` per image (boxes x1 y1 x2 y2, scores, global poses), ground truth is read from files in
the published layouts (AFLW2000-3D's per-image ``.mat`` or an equivalent ``.json``; BIWI's frame list
and per-frame ``_pose.txt``, or the JSON :func:`write_biwi_json` makes of them; WIDER FACE's ``wider_face_val_bbx_gt.txt`` and its easy/medium/hard lists).

Protocols (the authors' evaluation notebooks, reproduced step by step):

- AFLW2000-3D: ground-truth angles are ``Pose_Para[:3]`` (pitch, yaw, roll, radians) in degrees; faces
  with any of them beyond 99° are skipped. The ground-truth pose is OpenCV's EPnP of the 68 reference
  points to the 68 annotated points (x, y of ``pt3d_68``) with the image camera; its translation is the
  target of the translation error, and its rotation vector's z picks the forehead side of the target box:
  img2pose's box of the 68 points (extent x 1.1, forehead + 0.3, limited to the image). Among the
  predictions scoring above the threshold (0) the one with the highest IoU with that box (+1 pixel
  convention, the first on ties) is evaluated; where none overlaps it, the original keeps the last one
  above the threshold, and so does this. Predicted angles: :func:`geometry.rotvec_to_yaw_pitch_roll`
  (the notebook's ``convert_to_aflw``). Errors are absolute differences; MAE is the mean of the three
  angle errors; the translation MAE the mean of the three translation errors. An image fails only when
  the model returns no box.
- BIWI: the frame list names ``*_rgb.png`` frames; each frame's ground truth is the rotation matrix in
  the first three lines of its ``*_pose.txt``. Angles on both sides are SciPy's extrinsic ``"zxy"`` Euler
  angles (degrees) of the rotation: (roll, pitch, yaw). Among the predictions scoring above 0.9 the one
  whose box centre (``x1 + (x2 - x1) // 2``) is nearest the image centre (``(w // 2, h // 2)``) is
  evaluated; where none scores above 0.9, the top-scoring box. A frame fails only when the model returns
  no box.
- WIDER FACE: per image, predictions by descending score are matched to the ground truth with the highest
  IoU (≥ 0.5, boxes with the official +1 pixel convention); a match to a face outside the setting's list is
  ignored; precision/recall at 1000 thresholds of the min-max normalised scores; VOC AP (all points).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import geometry

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


@dataclass
class Faces:
    """Predictions for one image."""

    boxes: np.ndarray  # (K, 4)
    scores: np.ndarray  # (K,)
    poses: np.ndarray | None = None  # (K, 6) global pose
    width: int | None = None
    height: int | None = None

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if self.poses is not None:
            self.poses = np.asarray(self.poses, dtype=np.float64).reshape(-1, 6)


def iou_matrix(a: np.ndarray, b: np.ndarray, plus_one: bool = False) -> np.ndarray:
    """IoU ``(len(a), len(b))`` of x1 y1 x2 y2 boxes (``plus_one``: the official WIDER pixel convention)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    e = 1.0 if plus_one else 0.0
    area_a = (a[:, 2] - a[:, 0] + e) * (a[:, 3] - a[:, 1] + e)
    area_b = (b[:, 2] - b[:, 0] + e) * (b[:, 3] - b[:, 1] + e)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + e
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + e
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _ypr(poses: np.ndarray) -> np.ndarray:
    return geometry.rotvec_to_yaw_pitch_roll(torch.as_tensor(np.asarray(poses)[:, :3], dtype=torch.float64)).numpy()


# --- Ground truth readers ---------------------------------------------------------------------------
def _read_mat_or_json(path: Path) -> dict:
    if path.suffix == ".json":
        return json.loads(path.read_text())
    from scipy.io import loadmat  # AFLW2000-3D's own .mat files (scipy is optional)

    mat = loadmat(str(path))
    return {k: np.asarray(v).tolist() for k, v in mat.items() if not k.startswith("__")}


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:  # the header only: the size is all the protocol needs here
        return im.size


def _aflw_label_files(source: Path) -> list[Path]:
    """Label files of an AFLW2000-3D folder, or of a list file naming its images (the notebook's
    ``AFLW2000_annotations.txt``: one image path per line, relative to the list)."""
    if source.is_dir():
        return sorted(list(source.glob("*.mat")) + list(source.glob("*.json")))
    labels = []
    for line in source.read_text().splitlines():
        if not line.strip():
            continue
        image = Path(line.split()[0])
        image = image if image.is_absolute() else source.parent / image
        label = next((image.with_suffix(s) for s in (".mat", ".json") if image.with_suffix(s).is_file()), None)
        if label is None:
            raise FileNotFoundError(f"{image}: no .mat or .json beside it (listed in {source})")
        labels.append(label)
    return labels


def load_aflw2000(source: str | Path, points_68: np.ndarray) -> list[dict]:
    """Records of an AFLW2000-3D folder (``imageNNNNN.jpg`` beside ``imageNNNNN.mat`` or ``.json``) or of
    a list file of its images: ``image``, ``width``, ``height``, ``ypr`` (yaw, pitch, roll in degrees
    from ``Pose_Para``), ``target`` (the EPnP pose of the 68 annotated points, image camera) and
    ``box`` (img2pose's box of those points, the box the prediction is matched to)."""
    from .labels import epnp_image_pose

    records = []
    for label in _aflw_label_files(Path(source)):
        image = next((label.with_suffix(s) for s in (".jpg", ".png") if label.with_suffix(s).is_file()), None)
        if image is None:
            continue
        data = _read_mat_or_json(label)
        pose_para = np.asarray(data["Pose_Para"], dtype=np.float64).reshape(-1)
        pitch, yaw, roll = np.degrees(pose_para[:3])
        points = np.asarray(data["pt3d_68"], dtype=np.float64).reshape(3, 68).T[:, :2]
        w, h = _image_size(image)
        target = epnp_image_pose(points, points_68, w, h)
        box = geometry.face_box_from_landmarks(
            torch.from_numpy(points)[None], torch.tensor([target[2]]), torch.tensor([[w, h]])
        )[0].numpy()
        records.append({"image": str(image), "width": w, "height": h, "ypr": np.array([yaw, pitch, roll]),
                        "target": target, "box": box})
    return records


# BIWI: the dataset's own files
def read_biwi_pose(text: str) -> tuple[np.ndarray, np.ndarray]:
    """The rotation matrix (first three lines) and head centre (the next numeric line, millimetres) of a
    BIWI ``frame_NNNNN_pose.txt``."""
    rows = [line.split() for line in text.splitlines() if line.strip()]
    try:
        values = np.asarray([[float(v) for v in r[:3]] for r in rows[:4]], dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"not a BIWI pose file: {e}") from None
    if values.shape != (4, 3) and values.shape != (3, 3):
        raise ValueError(f"not a BIWI pose file: expected 3 rows of a rotation matrix, got {len(rows)} rows")
    centre = values[3] if len(values) == 4 else np.full(3, np.nan)
    return values[:3], centre


def _pose_file(frame: Path) -> Path:
    name = frame.name
    stem = name[: -len("_rgb.png")] if name.endswith("_rgb.png") else frame.stem
    return frame.with_name(f"{stem}_pose.txt")


def biwi_frames(frame_list: str | Path, root: str | Path | None = None) -> list[dict]:
    """Records ``{"image", "rotation" (3, 3), "centre_mm" (3,)}`` of a BIWI frame list (one frame path
    per line, optionally followed by the list's own angles, which the protocol ignores), each read from
    the frame's ``_pose.txt``. Paths are relative to ``root`` (default: the list's folder)."""
    frame_list = Path(frame_list)
    base = Path(root) if root is not None else frame_list.parent
    out = []
    for number, line in enumerate(frame_list.read_text().splitlines(), 1):
        if not line.strip():
            continue
        frame = Path(line.split()[0])
        frame = frame if frame.is_absolute() else base / frame
        pose = _pose_file(frame)
        if not pose.is_file():
            raise FileNotFoundError(f"{frame_list}:{number}: {pose} not found (each frame needs its _pose.txt)")
        rotation, centre = read_biwi_pose(pose.read_text())
        out.append({"image": str(frame), "rotation": rotation, "centre_mm": centre})
    return out


def write_biwi_json(records: list[dict], path: str | Path) -> Path:
    """The evaluator's BIWI input: the frames' records as JSON, image paths relative to the file."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [{"image": os.path.relpath(Path(r["image"]).resolve(), path.parent.resolve()),
                "rotation": np.asarray(r["rotation"]).tolist(),
                "centre_mm": [None if not np.isfinite(v) else float(v) for v in r["centre_mm"]]}
               for r in records]  # fmt: skip
    path.write_text(json.dumps(entries, indent=1))
    return path


def load_biwi(source: str | Path, root: str | Path | None = None) -> list[dict]:
    """BIWI records from :func:`write_biwi_json`'s file, or straight from a frame list (``.txt``)."""
    source = Path(source)
    if source.suffix != ".json":
        return biwi_frames(source, root)
    out = []
    for e in json.loads(source.read_text()):
        image = Path(e["image"])
        out.append({"image": str(image if image.is_absolute() else source.parent / image),
                    "rotation": np.asarray(e["rotation"], dtype=np.float64).reshape(3, 3),
                    "centre_mm": np.asarray([np.nan if v is None else v for v in e.get("centre_mm", [None] * 3)])})
    return out


def biwi_angles(rotations: np.ndarray) -> np.ndarray:
    """Extrinsic ``"zxy"`` Euler angles ``(N, 3)`` in degrees of rotation matrices ``(N, 3, 3)``, as the
    BIWI notebook takes them (SciPy's ``as_euler("zxy")``): R = Ry(c)·Rx(b)·Rz(a) gives (a, b, c), which
    the notebook reports as roll, pitch and yaw. b lies in [-90°, 90°]."""
    m = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    b = np.arcsin(np.clip(-m[:, 1, 2], -1.0, 1.0))
    a = np.arctan2(m[:, 1, 0], m[:, 1, 1])
    c = np.arctan2(m[:, 0, 2], m[:, 2, 2])
    return np.degrees(np.stack([a, b, c], axis=1))


def load_wider_gt(folder_or_txt: str | Path, settings=("easy", "medium", "hard")) -> tuple[dict, dict]:
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


# --- Pose benchmarks ---------------------------------------------------------------------------------
def _summary(errors: np.ndarray, t_errors: list, extra: dict) -> dict:
    errors = np.asarray(errors, dtype=np.float64).reshape(-1, 3)
    out = dict(extra)
    if len(errors):
        yaw, pitch, roll = errors.mean(0)
        out.update(yaw=float(yaw), pitch=float(pitch), roll=float(roll), mae=float(errors.mean()))
    else:
        out.update(yaw=math.nan, pitch=math.nan, roll=math.nan, mae=math.nan)
    if t_errors:
        t = np.asarray(t_errors).reshape(-1, 3).mean(0)
        out.update(tx=float(t[0]), ty=float(t[1]), tz=float(t[2]), translation_mae=float(t.mean()))
    return out


def _by_score(pred: Faces) -> Faces:
    """The model's order (highest score first), which the protocols' tie rules depend on."""
    order = np.argsort(-pred.scores, kind="stable")
    poses = None if pred.poses is None else pred.poses[order]
    return Faces(pred.boxes[order], pred.scores[order], poses, pred.width, pred.height)


def aflw2000_pick(pred: Faces, box: np.ndarray, threshold: float = 0.0) -> int | None:
    """Index (in ``pred``) of the face the AFLW2000-3D protocol evaluates, or None when no face scores
    above ``threshold``."""
    above = np.nonzero(pred.scores > threshold)[0]
    if not len(above):
        return None
    overlap = iou_matrix(pred.boxes[above], np.asarray(box)[None], plus_one=True)[:, 0]
    if overlap.max() > 0:
        return int(above[int(overlap.argmax())])
    return int(above[-1])  # the original's loop leaves the last candidate's pose in place


def evaluate_aflw2000(records: list[dict], predictions: dict[str, Faces], max_angle: float = 99.0,
                      threshold: float = 0.0) -> dict:
    """Yaw/pitch/roll errors (degrees) and MAE, translation errors and their MAE (see the module's text)."""
    errors, t_errors, skipped, missed = [], [], 0, 0
    for rec in records:
        if np.abs(rec["ypr"]).max() > max_angle:
            skipped += 1
            continue
        pred = predictions.get(rec["image"])
        if pred is None or len(pred.scores) == 0:
            missed += 1
            continue
        pred = _by_score(pred)
        j = aflw2000_pick(pred, rec["box"], threshold)
        if j is None:  # boxes, none above the threshold: the original reuses a stale pose here
            missed += 1
            continue
        errors.append(np.abs(_ypr(pred.poses[j : j + 1])[0] - rec["ypr"]))
        t_errors.append(np.abs(pred.poses[j, 3:] - rec["target"][3:]))
    return _summary(errors, t_errors, {"images": len(records), "evaluated": len(errors), "skipped": skipped, "missed": missed})


def biwi_pick(pred: Faces, threshold: float = 0.9) -> int:
    """Index (in ``pred``, highest score first) of the face the BIWI protocol evaluates."""
    above = np.nonzero(pred.scores > threshold)[0]
    if not len(above):
        return 0
    boxes = pred.boxes[above]
    centres = boxes[:, :2] + (boxes[:, 2:] - boxes[:, :2]) // 2
    distance = np.hypot(centres[:, 0] - pred.width // 2, centres[:, 1] - pred.height // 2)
    return int(above[int(distance.argmin())])


def evaluate_biwi(records: list[dict], predictions: dict[str, Faces], threshold: float = 0.9) -> dict:
    """Yaw/pitch/roll errors (degrees, ``"zxy"`` Euler angles) and MAE (see the module's text)."""
    errors, missed = [], 0
    for rec in records:
        pred = predictions.get(rec["image"])
        if pred is None or len(pred.scores) == 0:
            missed += 1
            continue
        pred = _by_score(pred)
        j = biwi_pick(pred, threshold)
        predicted = biwi_angles(geometry.rotvec_to_matrix(torch.from_numpy(pred.poses[j : j + 1, :3])).numpy())[0]
        roll_pitch_yaw = np.abs(predicted - biwi_angles(rec["rotation"])[0])
        errors.append(roll_pitch_yaw[::-1])
    return _summary(errors, [], {"images": len(records), "evaluated": len(errors), "missed": missed})


# --- WIDER FACE ---------------------------------------------------------------------------------------
def _image_eval(pred_boxes: np.ndarray, gt: np.ndarray, keep: np.ndarray, iou_thresh: float):
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


# --- Reports ------------------------------------------------------------------------------------------
def markdown_table(report: dict) -> str:
    """One table per benchmark of a report ``{"aflw2000": {...}, "biwi": {...}, "wider": {...}}``."""
    lines = []
    for name, res in report.items():
        if not isinstance(res, dict):
            continue
        if name == "wider":
            keys = [k for k in ("easy", "medium", "hard") if k in res]
            lines += [f"### {name}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines.append("| " + " | ".join(f"{res[k]:.4f}" for k in keys) + " |")
        else:
            keys = [k for k in ("yaw", "pitch", "roll", "mae", "translation_mae", "evaluated", "skipped", "missed") if k in res]
            fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
            lines += [f"### {name}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines.append("| " + " | ".join(fmt(res[k]) for k in keys) + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict, path: str | Path) -> tuple[Path, Path]:
    """``path`` (JSON) and the Markdown table beside it (same name, ``.md``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=float))
    md = path.with_suffix(".md")
    md.write_text(markdown_table({k: v for k, v in report.items() if k != "settings"}))
    return path, md
