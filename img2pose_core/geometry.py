"""Pose geometry of img2pose: intrinsics, rotations, frame changes, projection, face boxes, angles.

Every function is vectorised over a leading batch dimension and works on any torch device. Inputs
are promoted to float64, the precision the original computes its geometry in (it calls NumPy and
SciPy), so that results agree with it to ~1e-12 rather than to float32 rounding.

Conventions (see docs/poses.md):
- A pose is 6 numbers: a rotation vector (radians, axis * angle) and a translation, in an OpenCV
  camera (x right, y down, z forward).
- The camera of a ``w x h`` image has focal length ``w + h`` and principal point ``(w // 2, h // 2)``.
- A pose relative to a box (the network's output) uses the image's focal length and the box centre
  ``(x1 + bw // 2, y1 + bh // 2)`` truncated to whole pixels as principal point, and its depth is
  expressed for a focal length of ``bw + bh``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "image_intrinsics",
    "rotvec_to_matrix",
    "matrix_to_rotvec",
    "pose_box_to_image",
    "pose_image_to_box",
    "transform_points",
    "project_points",
    "face_box_from_landmarks",
    "rotvec_to_yaw_pitch_roll",
    "rescale_pose",
]

F64 = torch.float64


def _f64(x, device=None) -> Tensor:
    return torch.as_tensor(x, dtype=F64, device=device)


def image_intrinsics(width: Tensor, height: Tensor) -> Tensor:
    """Camera matrices ``(N, 3, 3)`` of images of integer sizes ``width``/``height`` ``(N,)``.

    Focal length ``w + h`` and principal point ``(w // 2, h // 2)`` with integer division, exactly as
    the original builds them.
    """
    w = torch.as_tensor(width).to(torch.int64)
    h = torch.as_tensor(height).to(torch.int64)
    k = torch.zeros(w.shape + (3, 3), dtype=F64, device=w.device)
    k[..., 0, 0] = (w + h).to(F64)
    k[..., 1, 1] = (w + h).to(F64)
    k[..., 0, 2] = torch.div(w, 2, rounding_mode="floor").to(F64)
    k[..., 1, 2] = torch.div(h, 2, rounding_mode="floor").to(F64)
    k[..., 2, 2] = 1.0
    return k


def rotvec_to_matrix(rotvec: Tensor) -> Tensor:
    """Rotation matrices ``(N, 3, 3)`` of rotation vectors ``(N, 3)`` (Rodrigues' formula)."""
    r = _f64(rotvec)
    theta = torch.linalg.vector_norm(r, dim=-1, keepdim=True)
    small = theta < 1e-8
    safe = torch.where(small, torch.ones_like(theta), theta)
    # Taylor terms keep the small-angle case exact to float64 without dividing by ~0.
    t2 = theta * theta
    sin_over = torch.where(small, 1.0 - t2 / 6.0, torch.sin(theta) / safe)
    one_minus_cos_over = torch.where(small, 0.5 - t2 / 24.0, (1.0 - torch.cos(theta)) / (safe * safe))
    x, y, z = r.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(r.shape[:-1] + (3, 3))
    eye = torch.eye(3, dtype=F64, device=r.device).expand_as(skew)
    return eye + sin_over[..., None] * skew + one_minus_cos_over[..., None] * (skew @ skew)


def _orthogonalise(matrix: Tensor) -> Tensor:
    """Nearest rotation (polar factor ``U Vᵀ``) of each 3x3 matrix, as SciPy's ``from_matrix`` does."""
    u, _, vt = torch.linalg.svd(matrix)
    return u @ vt


def _matrix_to_quaternion(m: Tensor) -> Tensor:
    """Quaternions ``(x, y, z, w)`` of rotation matrices, choosing the best-conditioned branch."""
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    decision = torch.stack([m[..., 0, 0], m[..., 1, 1], m[..., 2, 2], trace], dim=-1)
    choice = decision.argmax(dim=-1)
    candidates = []
    for i in range(3):
        j, k = (i + 1) % 3, (i + 2) % 3
        q = {
            i: 1.0 - trace + 2.0 * m[..., i, i],
            j: m[..., j, i] + m[..., i, j],
            k: m[..., k, i] + m[..., i, k],
            3: m[..., k, j] - m[..., j, k],
        }
        candidates.append(torch.stack([q[n] for n in range(4)], dim=-1))
    candidates.append(
        torch.stack(
            [m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1], 1.0 + trace],
            dim=-1,
        )
    )
    stacked = torch.stack(candidates, dim=-2)  # (..., 4 choices, 4)
    quat = torch.gather(stacked, -2, choice[..., None, None].expand(choice.shape + (1, 4))).squeeze(-2)
    return quat / torch.linalg.vector_norm(quat, dim=-1, keepdim=True)


def matrix_to_rotvec(matrix: Tensor) -> Tensor:
    """Rotation vectors ``(N, 3)`` of 3x3 matrices, orthogonalising matrices that are not rotations.

    The frame changes of img2pose produce matrices that are only nearly orthogonal; the nearest
    rotation (polar decomposition) is the one the reference implementation takes.
    """
    m = _orthogonalise(_f64(matrix))
    q = _matrix_to_quaternion(m)
    q = torch.where(q[..., 3:4] < 0, -q, q)  # w >= 0 keeps the angle in [0, pi]
    xyz, w = q[..., :3], q[..., 3]
    norm = torch.linalg.vector_norm(xyz, dim=-1)
    angle = 2.0 * torch.atan2(norm, w)
    small = angle <= 1e-3
    a2 = angle * angle
    series = 2.0 + a2 / 12.0 + 7.0 * a2 * a2 / 2880.0
    scale = torch.where(small, series, angle / torch.sin(torch.where(small, torch.ones_like(angle), angle / 2.0)))
    return scale[..., None] * xyz


def _box_principal_point(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Box size ``bw + bh`` and the box centre truncated to whole pixels.

    Computed in the boxes' own dtype (float32 for the network's proposals) and the centre written
    into an integer camera matrix, which truncates it, as the original does; the same rounding keeps
    poses equal to ~1e-12 rather than shifting the principal point by a pixel now and then.
    """
    b = torch.as_tensor(boxes)
    bw = b[..., 2] - b[..., 0]
    bh = b[..., 3] - b[..., 1]
    cx = torch.trunc(b[..., 0] + torch.floor(bw / 2))
    cy = torch.trunc(b[..., 1] + torch.floor(bh / 2))
    return (bw + bh).to(F64), cx.to(F64), cy.to(F64)


def _box_to_image_affine(boxes: Tensor, k_image: Tensor) -> Tensor:
    """``K_image⁻¹ · K_box``: moves a point's projection from the box camera to the image camera."""
    _, cx, cy = _box_principal_point(boxes)
    f = k_image[..., 0, 0]
    a = torch.zeros_like(k_image)
    a[..., 0, 0] = 1.0
    a[..., 1, 1] = 1.0
    a[..., 2, 2] = 1.0
    a[..., 0, 2] = (cx - k_image[..., 0, 2]) / f
    a[..., 1, 2] = (cy - k_image[..., 1, 2]) / f
    return a


def pose_box_to_image(local_pose: Tensor, boxes: Tensor, image_wh: Tensor) -> Tensor:
    """Poses relative to ``boxes`` ``(N, 4)`` → poses in the frame of their ``w x h`` images ``(N, 2)``."""
    raw = torch.as_tensor(local_pose)
    pose = _f64(raw)
    boxes = torch.as_tensor(boxes, device=pose.device)
    k_image = image_intrinsics(image_wh[..., 0], image_wh[..., 1]).to(pose.device)
    size, _, _ = _box_principal_point(boxes)
    affine = _box_to_image_affine(boxes, k_image)
    t = pose[..., 3:].clone()
    # The rescaled depth is stored back in the pose's own dtype, as the original's in-place update does.
    t[..., 2] = (t[..., 2] * (k_image[..., 0, 0] / size)).to(raw.dtype).to(F64)
    t = (affine @ t[..., None])[..., 0]
    r = matrix_to_rotvec(affine @ rotvec_to_matrix(pose[..., :3]))
    return torch.cat([r, t], dim=-1)


def pose_image_to_box(global_pose: Tensor, boxes: Tensor, image_wh: Tensor) -> Tensor:
    """Inverse of :func:`pose_box_to_image`: image-frame poses → poses relative to ``boxes``."""
    pose = _f64(global_pose)
    boxes = torch.as_tensor(boxes, device=pose.device)
    k_image = image_intrinsics(image_wh[..., 0], image_wh[..., 1]).to(pose.device)
    size, _, _ = _box_principal_point(boxes)
    inverse = torch.linalg.inv(_box_to_image_affine(boxes, k_image))
    t = (inverse @ pose[..., 3:, None])[..., 0]
    t[..., 2] = t[..., 2] / (k_image[..., 0, 0] / size)
    r = matrix_to_rotvec(inverse @ rotvec_to_matrix(pose[..., :3]))
    return torch.cat([r, t], dim=-1)


def transform_points(points: Tensor, poses: Tensor) -> Tensor:
    """3D ``points`` ``(P, 3)`` moved by each pose ``(N, 6)`` → camera coordinates ``(N, P, 3)``."""
    pose = _f64(poses)
    p = _f64(points, pose.device)
    rot = rotvec_to_matrix(pose[..., :3])
    return p @ rot.transpose(-1, -2) + pose[..., None, 3:]


def project_points(points: Tensor, poses: Tensor, intrinsics: Tensor) -> Tensor:
    """Pixel positions ``(N, P, 2)`` of 3D ``points`` ``(P, 3)`` under ``poses`` and cameras ``(N, 3, 3)``."""
    cam = transform_points(points, poses)
    uvw = cam @ _f64(intrinsics, cam.device).transpose(-1, -2)
    return uvw[..., :2] / uvw[..., 2:3]


def face_box_from_landmarks(
    landmarks: Tensor,
    roll: Tensor,
    image_wh: Tensor,
    x_factor: float = 1.1,
    y_factor: float = 1.1,
    expand_forehead: float = 0.3,
) -> Tensor:
    """img2pose's face box ``(N, 4)`` (whole pixels, clipped to the image) from projected 68 landmarks.

    The landmarks' extent is scaled by the factors (truncated to whole pixels) and the box is grown
    by ``expand_forehead`` times the face height on the side of the forehead, which the original
    picks from the rotation vector's z component ``roll`` (radians): beyond ±2.5 the bottom, above 1
    the right, below -1 the left, otherwise the top.
    """
    lms = _f64(landmarks)
    roll = _f64(roll, lms.device)
    wh = torch.as_tensor(image_wh, device=lms.device).to(F64)
    lo = lms.amin(dim=-2)
    hi = lms.amax(dim=-2)
    extent = hi - lo
    size_x = torch.trunc(extent[..., 0] * x_factor)
    size_y = torch.trunc(extent[..., 1] * y_factor)
    centre = 0.5 * lo + 0.5 * hi
    x1 = centre[..., 0] - size_x * 0.5
    x2 = centre[..., 0] + size_x * 0.5
    y1 = centre[..., 1] - size_y * 0.5
    y2 = centre[..., 1] + size_y * 0.5
    grow_y = expand_forehead * extent[..., 1]
    grow_x = expand_forehead * extent[..., 0]
    bottom = roll.abs() > 2.5
    right = ~bottom & (roll > 1)
    left = ~bottom & ~right & (roll < -1)
    top = ~bottom & ~right & ~left
    y2 = y2 + torch.where(bottom, grow_y, 0.0)
    x2 = x2 + torch.where(right, grow_x, 0.0)
    x1 = x1 - torch.where(left, grow_x, 0.0)
    y1 = y1 - torch.where(top, grow_y, 0.0)
    box = torch.trunc(torch.stack([x1, y1, x2, y2], dim=-1))
    zero = torch.zeros_like(box[..., 0])
    box = torch.stack(
        [
            torch.maximum(box[..., 0], zero),
            torch.maximum(box[..., 1], zero),
            torch.minimum(box[..., 2], wh[..., 0]),
            torch.minimum(box[..., 3], wh[..., 1]),
        ],
        dim=-1,
    )
    return box


def rotvec_to_yaw_pitch_roll(rotvec: Tensor) -> Tensor:
    """Yaw, pitch and roll ``(N, 3)`` in degrees, with the authors' evaluation convention.

    ``(a, b, c)`` are the extrinsic x-y-z Euler angles of ``Rᵀ`` (``Rᵀ = Rz(c)·Ry(b)·Rx(a)``); then
    pitch = a, yaw = -b, roll = -c. Yaw lies in [-90°, 90°]; near ±90° yaw, pitch and roll are not
    separable (gimbal lock) and only their sum/difference is meaningful.
    """
    m = rotvec_to_matrix(rotvec).transpose(-1, -2)
    b = -torch.asin(torch.clamp(m[..., 2, 0], -1.0, 1.0))
    a = torch.atan2(m[..., 2, 1], m[..., 2, 2])
    c = torch.atan2(m[..., 1, 0], m[..., 0, 0])
    deg = 180.0 / math.pi
    return torch.stack([-b * deg, a * deg, -c * deg], dim=-1)


def rescale_pose(pose: Tensor, from_wh: Tensor, to_wh: Tensor) -> Tensor:
    """Re-express image-frame poses of a ``from_wh`` image in the camera of the same picture resized
    to ``to_wh``, so that every 3D point keeps its image position (up to the resize).

    Used to report poses in the original image's camera when the model ran on a resized copy.
    """
    pose = _f64(pose)
    k_from = image_intrinsics(from_wh[..., 0], from_wh[..., 1]).to(pose.device)
    k_to = image_intrinsics(to_wh[..., 0], to_wh[..., 1]).to(pose.device)
    scale = torch.zeros_like(k_from)
    scale[..., 0, 0] = _f64(to_wh[..., 0], pose.device) / _f64(from_wh[..., 0], pose.device)
    scale[..., 1, 1] = _f64(to_wh[..., 1], pose.device) / _f64(from_wh[..., 1], pose.device)
    scale[..., 2, 2] = 1.0
    affine = torch.linalg.inv(k_to) @ scale @ k_from
    t = (affine @ pose[..., 3:, None])[..., 0]
    r = matrix_to_rotvec(affine @ rotvec_to_matrix(pose[..., :3]))
    return torch.cat([r, t], dim=-1)
