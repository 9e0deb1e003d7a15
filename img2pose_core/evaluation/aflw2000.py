"""AFLW2000-3D: its ground truth, the face the protocol evaluates, and the pose errors.

The protocol of the authors' evaluation notebook, step by step: ground-truth angles are
``Pose_Para[:3]`` (pitch, yaw, roll, radians) in degrees; faces with any of them beyond 99° are skipped.
The ground-truth pose is OpenCV's EPnP of the 68 reference points to the 68 annotated points (x, y of
``pt3d_68``) with the image camera; its translation is the target of the translation error, and its
rotation vector's z picks the forehead side of the target box: img2pose's box of the 68 points (extent
x 1.1, forehead + 0.3, limited to the image). Among the predictions scoring above the threshold (0) the
one with the highest IoU with that box (+1 pixel convention, the first on ties) is evaluated; where none
overlaps it, the original keeps the last one above the threshold, and so does this. Predicted angles:
:func:`geometry.rotvec_to_yaw_pitch_roll` (the notebook's ``convert_to_aflw``). Errors are absolute
differences; MAE is the mean of the three angle errors; the translation MAE the mean of the three
translation errors. An image fails only when the model returns no box.

Ground truth comes as the dataset's per-image ``.mat`` files or an equivalent ``.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .. import geometry
from .metrics import Faces, by_score, iou_matrix, pose_summary

__all__ = ["load_aflw2000", "aflw2000_pick", "evaluate_aflw2000"]


def _ypr(poses: np.ndarray) -> np.ndarray:
    """Yaw, pitch and roll ``(N, 3)`` in degrees of global poses ``(N, 6)``, as the notebook converts them."""
    return geometry.rotvec_to_yaw_pitch_roll(torch.as_tensor(np.asarray(poses)[:, :3], dtype=torch.float64)).numpy()


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
    from ..labels import epnp_image_pose

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
        pred = by_score(pred)
        j = aflw2000_pick(pred, rec["box"], threshold)
        if j is None:  # boxes, none above the threshold: the original reuses a stale pose here
            missed += 1
            continue
        if pred.poses is None:
            raise ValueError(f"{rec['image']}: the AFLW2000-3D protocol needs the predicted poses")
        errors.append(np.abs(_ypr(pred.poses[j : j + 1])[0] - rec["ypr"]))
        t_errors.append(np.abs(pred.poses[j, 3:] - rec["target"][3:]))
    return pose_summary(errors, t_errors, {"images": len(records), "evaluated": len(errors), "skipped": skipped, "missed": missed})
