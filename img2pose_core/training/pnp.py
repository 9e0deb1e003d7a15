"""Pose labels by PnP: the pose that projects the reference points onto annotated landmarks.

A numpy solver (no OpenCV) for the authors' box-frame labels; :mod:`img2pose_core.labels` holds the
OpenCV EPnP labels that match the original exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import geometry
from .targets import box_intrinsics

__all__ = ["solve_pnp", "local_pose_from_landmarks"]


def _rodrigues_np(rotvec: "np.ndarray") -> "np.ndarray":
    return geometry.rotvec_to_matrix(torch.from_numpy(np.ascontiguousarray(rotvec, dtype=np.float64))).numpy()


def _project_np(points: "np.ndarray", rot: "np.ndarray", t: "np.ndarray", k: "np.ndarray") -> "np.ndarray":
    cam = np.einsum("bij,pj->bpi", rot, points) + t[:, None, :]
    uvw = np.einsum("bij,bpj->bpi", k, cam)
    return uvw[..., :2] / uvw[..., 2:3]


def _pos_init(points: "np.ndarray", image_pts: "np.ndarray", k: "np.ndarray") -> tuple:
    """Scaled-orthographic (POS) pose estimates from an affine camera fit: rotation and translation (B, ...)."""
    centred = points - points.mean(0)
    a = np.concatenate([centred, np.ones((len(points), 1))], axis=1)  # (P, 4)
    pinv = np.linalg.pinv(a)  # (4, P)
    coef = np.einsum("ip,bpj->bji", pinv, image_pts)  # (B, 2, 4): rows of the affine camera
    r1, r2 = coef[:, 0, :3], coef[:, 1, :3]
    f = k[:, 0, 0]
    s = 0.5 * (np.linalg.norm(r1, axis=1) + np.linalg.norm(r2, axis=1))
    m = np.stack([r1, r2, np.cross(r1, r2) / np.maximum(s, 1e-12)[:, None]], axis=1) / np.maximum(s, 1e-12)[:, None, None]
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    u[:, :, 2] *= d[:, None]
    rot = u @ vt
    tz = f / np.maximum(s, 1e-12)
    tx = (coef[:, 0, 3] - k[:, 0, 2]) * tz / f
    ty = (coef[:, 1, 3] - k[:, 1, 2]) * tz / f
    t = np.stack([tx, ty, tz], axis=1) - np.einsum("bij,j->bi", rot, points.mean(0))
    return rot, t


def solve_pnp(
    points_3d: "np.ndarray", points_2d: "np.ndarray", intrinsics: "np.ndarray", iterations: int = 60
) -> tuple["np.ndarray", "np.ndarray"]:
    """Poses ``(B, 6)`` (rotation vector, translation) that project ``points_3d`` ``(P, 3)`` onto
    ``points_2d`` ``(B, P, 2)`` with cameras ``(B, 3, 3)``, and their RMS reprojection errors ``(B,)``.

    Minimises the reprojection error with Levenberg–Marquardt (numerical Jacobian, multiplicative rotation
    updates) from several starts, keeping the best: the scaled-orthographic (POS) fit and a grid of
    yaw/pitch rotations in front of the camera. Works from 4 points (img2pose labels use 5); OpenCV's
    EPnP gives the same minimum on noise-free points.
    """
    p3 = np.asarray(points_3d, dtype=np.float64).reshape(-1, 3)
    p2 = np.asarray(points_2d, dtype=np.float64).reshape(-1, len(p3), 2)
    k = np.asarray(intrinsics, dtype=np.float64).reshape(-1, 3, 3)
    k = np.broadcast_to(k, (len(p2), 3, 3)).copy()
    b = len(p2)
    if b == 0:
        return np.zeros((0, 6)), np.zeros(0)
    rot0, t0 = _pos_init(p3, p2, k)
    starts = [(rot0, t0)]
    for yaw in (-60.0, -30.0, 0.0, 30.0, 60.0):
        for pitch in (-30.0, 0.0, 30.0):
            rv = np.radians([pitch, yaw, 0.0])
            rot = np.broadcast_to(_rodrigues_np(rv[None])[0], (b, 3, 3)).copy()
            starts.append((rot, np.stack([t0[:, 0], t0[:, 1], np.abs(t0[:, 2])], axis=1)))
    n_s = len(starts)
    rot = np.concatenate([s[0] for s in starts])
    t = np.concatenate([s[1] for s in starts])
    kk = np.concatenate([k] * n_s)
    target = np.concatenate([p2] * n_s).reshape(n_s * b, -1)
    lam = np.full(len(rot), 1e-3)

    def residual(rot_: np.ndarray, t_: np.ndarray) -> np.ndarray:
        return _project_np(p3, rot_, t_, kk).reshape(len(rot_), -1) - target

    res = residual(rot, t)
    cost = (res**2).sum(1)
    eps = 1e-6
    for _ in range(iterations):
        jac = np.empty(res.shape + (6,))
        for j in range(6):
            d = np.zeros((len(rot), 6))
            d[:, j] = eps
            rp = _rodrigues_np(d[:, :3]) @ rot
            rm = _rodrigues_np(-d[:, :3]) @ rot
            jac[..., j] = (residual(rp, t + d[:, 3:]) - residual(rm, t - d[:, 3:])) / (2 * eps)
        jtj = np.einsum("bri,brj->bij", jac, jac)
        jtr = np.einsum("bri,br->bi", jac, res)
        damp = jtj + lam[:, None, None] * np.eye(6) * (np.einsum("bii->bi", jtj)[:, :, None] + 1e-9)
        step = -np.linalg.solve(damp, jtr[..., None])[..., 0]
        new_rot = _rodrigues_np(step[:, :3]) @ rot
        new_t = t + step[:, 3:]
        with np.errstate(all="ignore"):
            new_res = residual(new_rot, new_t)
            new_cost = (new_res**2).sum(1)
        better = np.isfinite(new_cost) & (new_cost < cost) & (new_t[:, 2] > 0)
        rot = np.where(better[:, None, None], new_rot, rot)
        t = np.where(better[:, None], new_t, t)
        res = np.where(better[:, None], new_res, res)
        cost = np.where(better, new_cost, cost)
        lam = np.where(better, lam * 0.3, lam * 10.0).clip(1e-12, 1e12)
    cost = np.where(t[:, 2] > 0, cost, np.inf).reshape(n_s, b)
    best = cost.argmin(0)
    idx = best * b + np.arange(b)
    rotvec = geometry.matrix_to_rotvec(torch.from_numpy(rot[idx])).numpy()
    rms = np.sqrt(cost[best, np.arange(b)] / len(p3))
    return np.concatenate([rotvec, t[idx]], axis=1), rms


def local_pose_from_landmarks(
    landmarks: "np.ndarray", boxes: "np.ndarray", points_3d: "np.ndarray"
) -> tuple["np.ndarray", "np.ndarray"]:
    """The authors' labels: PnP of image landmarks ``(B, P, 2)``, moved into their box ``(B, 4)``, against the
    reference points with the box intrinsics (focal ``bw + bh``, centre ``(bw // 2, bh // 2)``)."""
    lms = np.asarray(landmarks, dtype=np.float64).reshape(len(boxes), -1, 2)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    local = lms - boxes[:, None, :2]
    k = box_intrinsics(torch.from_numpy(boxes)).numpy()
    return solve_pnp(points_3d, local, k)
