"""Training labels as the original makes them: poses fitted to annotated landmarks, boxes, statistics.

The original fits each face's pose with OpenCV's EPnP (``cv2.solvePnP(..., SOLVEPNP_EPNP)``) on float32
inputs in the box frame, and its rules for odd annotations decide which faces train the model; the
golden ``labels.npz`` and ``labels_300wlp.npz`` hold its outputs, reproduced here exactly:

- the box is the annotation's first four numbers truncated toward zero; a face whose integer box has
  ``x1 >= x2`` or ``y1 >= y2`` is dropped (no box, no pose, not in the statistics);
- a face with the value -1 anywhere in its landmarks keeps its box but gets no pose (:data:`NO_POSE` in
  both frames): it is not a positive example, and the loader blacks out its box region;
- otherwise the landmarks minus the box corner, in float64 then cast to float32, are fitted to the 5 or
  68 reference points (float32) with the box intrinsics (focal ``bw + bh``, centre ``(bw // 2, bh // 2)``):
  that is the box-frame pose, converted to the image frame with the image intrinsics.

5-point EPnP is ill-conditioned (1e-3 px of landmark noise moves the rotation by 0.01 rad and more), so
the arithmetic of the solver's inputs follows the original's exactly. OpenCV is imported only here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import geometry

__all__ = ["NO_POSE", "FaceLabels", "integer_boxes", "epnp_box_pose", "face_labels", "pose_statistics",
           "projected_boxes", "rotvec_from_300wlp", "epnp_image_pose", "face_labels_300wlp"]  # fmt: skip

NO_POSE = -9.0  # the original's pose of a kept face without one, in all six values


class LabelError(RuntimeError):
    """Labels cannot be made (OpenCV missing, malformed annotation): says what to fix."""


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise LabelError("pose labels need OpenCV's EPnP: pip install opencv-python-headless") from exc
    return cv2


@dataclass
class FaceLabels:
    """Labels of the faces of one image, in annotation order (dropped faces included, ``kept`` False)."""

    kept: np.ndarray  # (F,) bool
    has_pose: np.ndarray  # (F,) bool: kept, and no -1 landmark
    boxes: np.ndarray  # (F, 4) int64 integer boxes (0 where not kept)
    pose_local: np.ndarray  # (F, 6) float64 box-frame pose; NO_POSE where kept without pose, NaN where dropped
    pose_global: np.ndarray  # (F, 6) float64 image-frame pose, likewise


def integer_boxes(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes truncated toward zero as int64, kept)``: kept unless ``x1 >= x2`` or ``y1 >= y2`` after truncation."""
    ints = np.trunc(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[:, :4]).astype(np.int64)
    kept = (ints[:, 0] < ints[:, 2]) & (ints[:, 1] < ints[:, 3])
    return ints, kept


def box_intrinsics_matrix(box: np.ndarray) -> np.ndarray:
    """The original's integer camera matrix of a box: focal ``bw + bh``, centre ``(bw // 2, bh // 2)``."""
    bw, bh = int(box[2] - box[0]), int(box[3] - box[1])
    return np.array([[bw + bh, 0, bw // 2], [0, bw + bh, bh // 2], [0, 0, 1]], dtype=np.float64)


def epnp_box_pose(landmarks: np.ndarray, box: np.ndarray, points_3d: np.ndarray) -> np.ndarray:
    """Box-frame pose (rotation vector, translation) of one face by OpenCV's EPnP, inputs formed as the
    original forms them: landmarks minus the integer box corner in float64, then float32."""
    cv2 = _cv2()
    image_points = (np.asarray(landmarks, dtype=np.float64)[:, :2] - np.asarray(box[:2], dtype=np.float64)).astype(np.float32)
    object_points = np.asarray(points_3d, dtype=np.float32)
    ok, rvec, tvec = cv2.solvePnP(object_points, image_points, box_intrinsics_matrix(box), None,
                                  flags=cv2.SOLVEPNP_EPNP)  # fmt: skip
    if not ok:
        raise LabelError(f"EPnP found no pose for the landmarks of box {list(map(int, box))}")
    return np.concatenate([rvec.reshape(3), tvec.reshape(3)]).astype(np.float64)


def face_labels(
    boxes: np.ndarray,
    landmarks: list[np.ndarray],
    width: int,
    height: int,
    points_68: np.ndarray,
    points_5: np.ndarray,
) -> FaceLabels:
    """Labels of one image's annotated faces (``landmarks[i]``: the face's 5 or 68 points, ``(K, 2+)``)."""
    ints, kept = integer_boxes(boxes)
    n = len(ints)
    has_pose = np.zeros(n, dtype=bool)
    local = np.full((n, 6), np.nan)
    for i in range(n):
        if not kept[i]:
            continue
        lms = np.asarray(landmarks[i], dtype=np.float64)
        if (lms[:, :2] == -1).any():
            local[i] = NO_POSE
            continue
        refs = points_5 if len(lms) == 5 else points_68
        local[i] = epnp_box_pose(lms, ints[i], refs)
        has_pose[i] = True
    glob = local.copy()
    if has_pose.any():
        wh = torch.tensor([[width, height]], dtype=torch.float64).expand(int(has_pose.sum()), 2)
        glob[has_pose] = geometry.pose_box_to_image(
            torch.from_numpy(local[has_pose]), torch.from_numpy(ints[has_pose].astype(np.float64)), wh
        ).numpy()
    out_boxes = np.where(kept[:, None], ints, 0)
    return FaceLabels(kept, has_pose, out_boxes, local, glob)


def projected_boxes(global_poses: np.ndarray, points_68: np.ndarray, width: int, height: int) -> np.ndarray:
    """Training boxes: the 68 reference points projected with each image-frame pose, img2pose's box rule."""
    poses = torch.as_tensor(np.asarray(global_poses, dtype=np.float64).reshape(-1, 6))
    if not len(poses):
        return np.zeros((0, 4))
    wh = torch.tensor([[width, height]], dtype=torch.float64).expand(len(poses), 2)
    k = geometry.image_intrinsics(wh[:, 0], wh[:, 1])
    lms = geometry.project_points(torch.as_tensor(points_68, dtype=torch.float64), poses, k)
    return geometry.face_box_from_landmarks(lms, poses[:, 2], wh).numpy()


def pose_statistics(local_poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population standard deviation of the box-frame poses of every face with a pose."""
    poses = np.asarray(local_poses, dtype=np.float64).reshape(-1, 6)
    return poses.mean(axis=0), poses.std(axis=0)


# --- 300W-LP --------------------------------------------------------------------------------------------
def rotvec_from_300wlp(pose_para: np.ndarray) -> np.ndarray:
    """Rotation vectors ``(N, 3)`` of 300W-LP's ``pose_para`` (pitch, yaw, roll in radians, then values the
    original ignores): R = Rx(-pitch) Ry(yaw) Rz(roll), as the original builds it."""
    para = np.asarray(pose_para, dtype=np.float64).reshape(-1, np.shape(pose_para)[-1])
    pitch, yaw, roll = para[:, 0], para[:, 1], para[:, 2]
    one, zero = np.ones_like(pitch), np.zeros_like(pitch)

    def stack(rows):
        return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)

    c, s_ = np.cos(-pitch), np.sin(-pitch)
    rx = stack([[one, zero, zero], [zero, c, -s_], [zero, s_, c]])
    c, s_ = np.cos(yaw), np.sin(yaw)
    ry = stack([[c, zero, s_], [zero, one, zero], [-s_, zero, c]])
    c, s_ = np.cos(roll), np.sin(roll)
    rz = stack([[c, -s_, zero], [s_, c, zero], [zero, zero, one]])
    return geometry.matrix_to_rotvec(torch.from_numpy(rx @ ry @ rz)).numpy()


def epnp_image_pose(landmarks: np.ndarray, points_3d: np.ndarray, width: int, height: int) -> np.ndarray:
    """Image-frame pose of one face by OpenCV's EPnP with the image intrinsics, on float32 landmarks."""
    cv2 = _cv2()
    k = np.array([[width + height, 0, width // 2], [0, width + height, height // 2], [0, 0, 1]], dtype=np.float64)
    ok, rvec, tvec = cv2.solvePnP(np.asarray(points_3d, dtype=np.float32),
                                  np.asarray(landmarks, dtype=np.float64)[:, :2].astype(np.float32), k, None,
                                  flags=cv2.SOLVEPNP_EPNP)  # fmt: skip
    if not ok:
        raise LabelError("EPnP found no pose for a 300W-LP face")
    return np.concatenate([rvec.reshape(3), tvec.reshape(3)]).astype(np.float64)


@dataclass
class FaceLabels300WLP(FaceLabels):
    """300W-LP labels; ``pnp_pose``: the EPnP fit whose translation the pose keeps (its rotation is not used)."""

    pnp_pose: np.ndarray  # (F, 6) float64


def face_labels_300wlp(
    boxes: np.ndarray, landmarks: list[np.ndarray], pose_para: np.ndarray, width: int, height: int, points_68: np.ndarray
) -> FaceLabels300WLP:
    """Labels of one 300W-LP image's faces as the original fine-tuning labels them: rotation from the
    dataset's ``pose_para``, translation from EPnP of the 68 landmarks with the image intrinsics, box by
    img2pose's rule from the annotated landmarks (limited to the image), box-frame pose from that box.

    Where the original fails, this does what it meant (docs/training.md): an image with several faces
    gives each face its own ``pose_para`` row (the original keeps only the first face's), and a face with
    a -1 landmark keeps its box and gets no pose, as in WIDER labels (the original raises)."""
    ints, kept = integer_boxes(boxes)
    n = len(ints)
    para = np.asarray(pose_para, dtype=np.float64).reshape(n, -1)
    rotvec = rotvec_from_300wlp(para) if n else np.zeros((0, 3))
    has_pose = np.zeros(n, dtype=bool)
    pnp = np.full((n, 6), np.nan)
    glob = np.full((n, 6), np.nan)
    local = np.full((n, 6), np.nan)
    out_boxes = np.zeros((n, 4), dtype=np.int64)
    wh = torch.tensor([[width, height]], dtype=torch.float64)
    for i in range(n):
        if not kept[i]:
            continue
        lms = np.asarray(landmarks[i], dtype=np.float64)[:, :2]
        box = geometry.face_box_from_landmarks(torch.from_numpy(lms)[None], torch.tensor([rotvec[i, 2]]), wh)[0]
        out_boxes[i] = box.numpy().astype(np.int64)
        if (lms == -1).any():
            glob[i] = local[i] = NO_POSE
            continue
        pnp[i] = epnp_image_pose(lms, points_68, width, height)
        glob[i] = np.concatenate([rotvec[i], pnp[i, 3:]])
        local[i] = geometry.pose_image_to_box(torch.from_numpy(glob[i][None]), box[None].to(torch.float64), wh)[0].numpy()
        has_pose[i] = True
    return FaceLabels300WLP(kept, has_pose, out_boxes, local, glob, pnp_pose=pnp)
