"""Face alignment from img2pose's five projected points: similarity transforms and crop warping.

The five points are the 3D references (eye centres, nose tip, mouth corners) projected with a face's
pose. A 2x3 similarity (rotation, uniform scale, translation; Umeyama's least squares) maps them onto
a template of a square crop:

- ``"pose"`` (default): the best fitting of five pose-dependent templates (left profile, left,
  frontal, right, right profile: the InsightFace set) for 112 or 224 px crops, as img2pose aligns;
- ``"arcface"``: the single standard ArcFace 112x112 template that face-recognition models expect.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["ALIGN_MODES", "template_for", "similarity_to_templates", "align_matrix", "warp_crop"]

AlignMode = Literal["pose", "arcface"]
ALIGN_MODES: tuple[str, ...] = ("pose", "arcface")

# Template coordinates (x, y) in a 112x112 crop, in the order left eye, right eye, nose, left mouth,
# right mouth. Published constants of the InsightFace alignment templates.
_POSE_TEMPLATES_112 = np.array(
    [
        [[51.642, 50.115], [57.617, 49.990], [35.740, 69.007], [51.157, 89.050], [57.025, 89.702]],
        [[45.031, 50.118], [65.568, 50.872], [39.677, 68.111], [45.177, 86.190], [64.246, 86.758]],
        [[39.730, 51.138], [72.270, 51.138], [56.000, 68.493], [42.463, 87.010], [69.537, 87.010]],
        [[46.845, 50.872], [67.382, 50.118], [72.737, 68.111], [48.167, 86.758], [67.236, 86.190]],
        [[54.796, 49.990], [60.771, 50.115], [76.673, 69.007], [55.388, 89.702], [61.257, 89.050]],
    ],
    dtype=np.float32,
)
_ARCFACE_TEMPLATE_112 = np.array(
    [[[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]],
    dtype=np.float32,
)


def template_for(size: int, mode: AlignMode = "pose") -> np.ndarray:
    """The templates ``(T, 5, 2)`` (float32, as published) for crops of ``size`` pixels."""
    if mode == "arcface":
        if size != 112:
            raise ValueError(f"the ArcFace template is defined for 112 px crops only, not {size}")
        return _ARCFACE_TEMPLATE_112
    if mode != "pose":
        raise ValueError(f"unknown alignment mode {mode!r}; choose one of {ALIGN_MODES}")
    if size not in (112, 224):
        raise ValueError(f"pose-dependent templates exist for 112 and 224 px crops, not {size}")
    return _POSE_TEMPLATES_112 * np.float32(size // 112)


def _template_stats(templates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # The reference computes the templates' mean and centred coordinates in float32 (they are
    # float32 arrays); doing the same keeps the transforms equal to ~1e-13 instead of ~4e-6.
    mean = templates.mean(axis=1)
    centred = templates - mean[:, None, :]
    return mean.astype(np.float64), centred.astype(np.float64)


def similarity_to_templates(points: Tensor, templates: np.ndarray) -> Tensor:
    """Least-squares similarities ``(N, T, 2, 3)`` from ``points`` ``(N, 5, 2)`` to each template."""
    src = torch.as_tensor(points, dtype=torch.float64)
    dst_mean_np, dst_centred_np = _template_stats(templates)
    dst_mean = torch.as_tensor(dst_mean_np, device=src.device)  # (T, 2)
    dst_centred = torch.as_tensor(dst_centred_np, device=src.device)  # (T, 5, 2)
    n = src.shape[-2]
    src_mean = src.mean(dim=-2)  # (N, 2)
    src_centred = src - src_mean[..., None, :]
    # Cross-covariance of every (face, template) pair: (N, T, 2, 2).
    cov = torch.einsum("tpi,npj->ntij", dst_centred, src_centred) / n
    u, s, vt = torch.linalg.svd(cov)
    det = torch.linalg.det(cov)
    d = torch.ones(cov.shape[:-1], dtype=torch.float64, device=src.device)
    d[..., -1] = torch.where(det < 0, -1.0, 1.0)
    rot = u @ torch.diag_embed(d) @ vt
    # The population variance written out: torch's var() warns on an empty batch (no faces).
    src_var = src_centred.square().mean(dim=-2).sum(dim=-1)  # (N,)
    scale = (s * d).sum(dim=-1) / src_var[:, None]
    lin = scale[..., None, None] * rot
    trans = dst_mean[None] - scale[..., None] * (rot @ src_mean[:, None, :, None])[..., 0]
    return torch.cat([lin, trans[..., None]], dim=-1)


def align_matrix(points: Tensor, size: int = 112, mode: AlignMode = "pose") -> tuple[Tensor, Tensor]:
    """The 2x3 similarity ``(N, 2, 3)`` of each face to its best template, and that template's index.

    "Best" is the smallest sum of point-to-template distances after the transform.
    """
    templates = template_for(size, mode)
    src = torch.as_tensor(points, dtype=torch.float64)
    mats = similarity_to_templates(src, templates)  # (N, T, 2, 3)
    ones = torch.ones(src.shape[:-1] + (1,), dtype=torch.float64, device=src.device)
    homog = torch.cat([src, ones], dim=-1)  # (N, 5, 3)
    mapped = torch.einsum("ntij,npj->ntpi", mats, homog)
    target = torch.as_tensor(templates.astype(np.float64), device=src.device)[None]
    error = torch.linalg.vector_norm(mapped - target[:, :, :, :], dim=-1).sum(dim=-1)  # (N, T)
    best = error.argmin(dim=-1)
    chosen = mats[torch.arange(mats.shape[0], device=src.device), best]
    return chosen, best


def warp_crop(image: Image.Image, matrix: np.ndarray, size: int) -> Image.Image:
    """Cut the ``size x size`` aligned crop that ``matrix`` (2x3, image → crop) defines, bilinearly."""
    m = np.vstack([np.asarray(matrix, dtype=np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(m)
    # PIL maps each output pixel centre back into the input with the inverse transform.
    coeffs = tuple(inv[:2].reshape(-1).tolist())
    return image.convert("RGB").transform((size, size), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)
