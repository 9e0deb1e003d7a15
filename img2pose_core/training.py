"""Training of img2pose: pose targets, the pose losses, and a training-mode forward of the whole model.

The inference modules (:mod:`model`, :mod:`roi_heads`) stay untouched; training reuses their weights:

- :func:`pose_targets` converts ground-truth global poses (image frame) to the frame of each RoI and
  normalises them with the pose mean/stddev, as the original builds its regression targets;
- :func:`pose_losses` is the pose MSE (sum over the 6 values / number of positives) and the L1 of the
  5 reference points projected with the prediction and with the target, in the RoI's own camera;
- :class:`TrainingForward` runs the model in training mode (torchvision's RPN with its losses, RoI
  sampling, class and pose branches) and returns the original's unweighted loss dictionary. It also
  computes the losses with the model in eval mode (validation), which the original could not do.

Every function is vectorised over RoIs; the geometry runs in float64 like the rest of the project.
"""

from __future__ import annotations


import numpy as np
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import boxes as box_ops

from . import geometry

__all__ = [
    "F64",
    "box_intrinsics",
    "pose_image_to_roi",
    "pose_targets",
    "dof_loss",
    "points_loss",
    "pose_losses",
    "solve_pnp",
    "init_backbone",
    "imagenet_resnet18_state_dict",
    "BackboneWeightsError",
    "local_pose_from_landmarks",
    "mirror_pose",
    "flip_targets",
    "TrainSettings",
    "TrainingForward",
]

F64 = torch.float64


# --- Targets and pose losses ---------------------------------------------------------------------
def box_intrinsics(boxes: Tensor) -> Tensor:
    """The camera ``(N, 3, 3)`` of each RoI on its own: focal ``bw + bh``, centre ``(bw // 2, bh // 2)``.

    Sizes are the boxes' float sizes; ``//`` is floor division of those floats, as the original does.
    """
    b = torch.as_tensor(boxes)
    bw = b[..., 2] - b[..., 0]
    bh = b[..., 3] - b[..., 1]
    k = torch.zeros(b.shape[:-1] + (3, 3), dtype=F64, device=b.device)
    k[..., 0, 0] = (bw + bh).to(F64)
    k[..., 1, 1] = (bw + bh).to(F64)
    k[..., 0, 2] = torch.floor(bw / 2).to(F64)
    k[..., 1, 2] = torch.floor(bh / 2).to(F64)
    k[..., 2, 2] = 1.0
    return k


def pose_image_to_roi(global_pose: Tensor, proposals: Tensor, image_hw: Tensor) -> Tensor:
    """Image-frame poses ``(N, 6)`` → poses relative to RoIs ``(N, 4)`` (float64), as the original's targets.

    Same frame change as :func:`geometry.pose_image_to_box` except for the box's principal point: the
    original writes the box centre ``x1 + bw // 2`` into a float32 copy of the image intrinsics, so for
    training targets the centre keeps its fraction (inference truncates it to whole pixels).
    """
    pose = torch.as_tensor(global_pose).to(F64)
    boxes = torch.as_tensor(proposals, device=pose.device)
    hw = torch.as_tensor(image_hw, device=pose.device).to(torch.int64).reshape(-1, 2)
    k_image = geometry.image_intrinsics(hw[:, 1], hw[:, 0]).to(pose.device)
    f = k_image[:, 0, 0]
    bw = boxes[:, 2] - boxes[:, 0]
    bh = boxes[:, 3] - boxes[:, 1]
    cx = (boxes[:, 0] + torch.floor(bw / 2)).to(F64)
    cy = (boxes[:, 1] + torch.floor(bh / 2)).to(F64)
    size = (bw + bh).to(F64)
    affine = torch.zeros_like(k_image)  # K_box⁻¹ · K_image
    affine[:, 0, 0] = affine[:, 1, 1] = affine[:, 2, 2] = 1.0
    affine[:, 0, 2] = (k_image[:, 0, 2] - cx) / f
    affine[:, 1, 2] = (k_image[:, 1, 2] - cy) / f
    t = (affine @ pose[:, 3:, None])[:, :, 0]
    t = torch.cat([t[:, :2], (t[:, 2] * size / f)[:, None]], dim=1)
    r = geometry.matrix_to_rotvec(affine @ geometry.rotvec_to_matrix(pose[:, :3]))
    return torch.cat([r, t], dim=-1)


def pose_targets(
    global_pose: Tensor, proposals: Tensor, image_hw: Tensor, pose_mean: Tensor, pose_stddev: Tensor
) -> Tensor:
    """Normalised box-frame targets ``(N, 6)`` (float64) of image-frame poses ``(N, 6)`` for RoIs ``(N, 4)``.

    ``image_hw`` ``(N, 2)`` is each RoI's image size (h, w), the size of the (resized) image the RoI lives in.
    """
    local = pose_image_to_roi(global_pose, proposals, image_hw)
    mean = torch.as_tensor(pose_mean, dtype=F64, device=local.device).reshape(6)
    std = torch.as_tensor(pose_stddev, dtype=F64, device=local.device).reshape(6)
    return (local - mean) / std


def dof_loss(pred_norm: Tensor, target_norm: Tensor) -> Tensor:
    """Sum over the 6 values of the squared error, divided by the number of positives (0 if none)."""
    n = pred_norm.shape[0]
    if n == 0:
        return pred_norm.sum() * 0.0
    diff = pred_norm.to(target_norm.dtype) - target_norm
    return (diff * diff).sum() / n


def points_loss(
    pred_norm: Tensor,
    target_norm: Tensor,
    proposals: Tensor,
    points_5: Tensor,
    pose_mean: Tensor,
    pose_stddev: Tensor,
) -> Tensor:
    """Mean |proj5(prediction) − proj5(target)| in pixels, both in each RoI's own camera.

    Poses are de-normalised with ``pose_mean``/``pose_stddev``; projection in float64. Differentiable
    with respect to ``pred_norm``.
    """
    n = pred_norm.shape[0]
    if n == 0:
        return pred_norm.sum() * 0.0
    mean = torch.as_tensor(pose_mean, dtype=F64, device=pred_norm.device).reshape(6)
    std = torch.as_tensor(pose_stddev, dtype=F64, device=pred_norm.device).reshape(6)
    k = box_intrinsics(proposals).to(pred_norm.device)
    pred = pred_norm.to(F64) * std + mean
    target = target_norm.to(F64) * std + mean
    both = geometry.project_points(points_5, torch.cat([pred, target]), torch.cat([k, k]))
    return (both[:n] - both[n:]).abs().mean()


def pose_losses(
    pred_norm: Tensor,
    global_pose: Tensor,
    proposals: Tensor,
    image_hw: Tensor,
    pose_mean: Tensor,
    pose_stddev: Tensor,
    points_5: Tensor,
) -> dict[str, Tensor]:
    """Both pose losses of positive RoIs (``pred_norm`` is the class-1 output of the pose branch)."""
    target = pose_targets(global_pose, proposals, image_hw, pose_mean, pose_stddev).to(pred_norm.device)
    return {
        "loss_dof_reg": dof_loss(pred_norm, target),
        "loss_points": points_loss(pred_norm, target, proposals, points_5, pose_mean, pose_stddev),
    }


# --- Pose labels: PnP ------------------------------------------------------------------------------
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

    def residual(rot_, t_):
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


# --- Augmentation ---------------------------------------------------------------------------------
def mirror_pose(pose: Tensor, width: int) -> Tensor:
    """Global poses ``(N, 6)`` of the horizontally flipped image: the head reflected in the camera's x axis
    (``S·R·S`` with ``S = diag(−1, 1, 1)`` → rotation vector ``(rx, −ry, −rz)``, ``tx`` negated). Exact for
    even widths; :func:`flip_targets` corrects ``tx`` for the one-pixel shift of ``w // 2`` on odd widths."""
    p = pose.clone()
    p[:, 1] = -p[:, 1]
    p[:, 2] = -p[:, 2]
    p[:, 3] = -p[:, 3]
    return p


def flip_targets(image: Tensor, target: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Flip a ``(3, H, W)`` image and its boxes/poses horizontally."""
    h, w = int(image.shape[-2]), int(image.shape[-1])
    out = dict(target)
    b = target["boxes"].clone()
    b[:, 0], b[:, 2] = w - target["boxes"][:, 2], w - target["boxes"][:, 0]
    out["boxes"] = b
    dofs = mirror_pose(target["dofs"], w)
    # Odd widths: the flipped principal point w - w//2 is one pixel right of w//2.
    dofs[:, 3] = dofs[:, 3] + (w - 2 * (w // 2)) / float(w + h) * dofs[:, 5]
    out["dofs"] = dofs
    return image.flip(-1), out


# --- Backbone initialisation --------------------------------------------------------------------------
IMAGENET_RESNET18_URL_ENV = "IMG2POSE_IMAGENET_URL"
BACKBONE_LAYERS = ("layer4", "layer3", "layer2", "layer1", "conv1")


class BackboneWeightsError(RuntimeError):
    """The backbone's initial weights cannot be had: says where to get them."""


def imagenet_resnet18_state_dict(cache_dir: str | None = None) -> dict[str, Tensor]:
    """torchvision's ImageNet ResNet-18 (``ResNet18_Weights.IMAGENET1K_V1``), downloaded once into the torch
    hub cache and checked against the hash in its file name. ``$IMG2POSE_IMAGENET_URL`` points elsewhere
    (a mirror); offline, the error says how to pass the file instead."""
    import os

    from torchvision.models import ResNet18_Weights

    url = os.environ.get(IMAGENET_RESNET18_URL_ENV) or ResNet18_Weights.IMAGENET1K_V1.url
    try:
        return torch.hub.load_state_dict_from_url(url, model_dir=cache_dir, progress=False, check_hash=True,
                                                  map_location="cpu", weights_only=True)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - network, hash and format errors all end here
        name = url.rsplit("/", 1)[-1]
        raise BackboneWeightsError(
            f"cannot get the ImageNet ResNet-18 weights from {url} ({type(exc).__name__}: {exc}); download {name} "
            "where the network allows and pass it with --backbone-weights PATH, or --backbone-weights none"
        ) from exc


def init_backbone(model: nn.Module, weights: str | None = "imagenet", trainable_layers: int = 3) -> list[str]:
    """Initialise and freeze the ResNet-18 of ``model.backbone`` as the original trains it: ImageNet weights
    (``"imagenet"``, a path to a torchvision ResNet-18 state dict, or None for random), batch norm frozen
    (it is ``FrozenBatchNorm2d`` already), and only the last ``trainable_layers`` of conv1, layer1 … layer4
    trained (the original: 3). The FPN is always trained. Returns the names of the frozen parameters."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be 0..5, not {trainable_layers}")
    body = model.backbone.body
    if weights not in (None, "none"):
        if weights == "imagenet":
            state = imagenet_resnet18_state_dict()
        else:
            try:
                state = torch.load(weights, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001
                raise BackboneWeightsError(f"--backbone-weights {weights}: not a readable state dict ({exc})") from exc
            state = state.get("state_dict", state) if isinstance(state, dict) else state
        wanted = body.state_dict()
        given = {k: v for k, v in state.items() if k in wanted}
        missing = sorted(set(wanted) - set(given))
        if missing or any(given[k].shape != wanted[k].shape for k in given):
            raise BackboneWeightsError(
                f"--backbone-weights {weights}: not a torchvision ResNet-18 state dict "
                f"({len(missing)} missing keys, e.g. {missing[:3]})"
            )
        body.load_state_dict(given)
    train = BACKBONE_LAYERS[:trainable_layers] + (("bn1",) if trainable_layers == 5 else ())
    frozen = []
    for name, param in body.named_parameters():
        keep = any(name.startswith(layer) for layer in train)
        param.requires_grad_(keep)
        if not keep:
            frozen.append(name)
    return frozen


# --- Training-mode forward -----------------------------------------------------------------------
@dataclass
class TrainSettings:
    """RoI sampling of training (torchvision's Faster R-CNN defaults, which the original uses)."""

    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25


class TrainingForward(nn.Module):
    """The original's training losses for an :class:`~img2pose_core.model.Img2Pose`.

    ``forward(images, targets)`` returns ``loss_objectness``, ``loss_rpn_box_reg`` (torchvision's RPN),
    ``loss_classifier`` (cross-entropy of the sampled RoIs), ``loss_dof_reg`` and ``loss_points`` (pose
    losses of positive RoIs matched to a face with a pose). Targets per image: ``boxes`` (K, 4) in the
    input image's pixels, ``dofs`` (K, 6) global poses in the input image's camera, ``has_pose`` (K,).
    The losses are computed whatever the model's mode (the original validates in train mode; in eval mode
    the pose head's batch norm uses its running statistics and the RPN its test-time top-n).
    """

    def __init__(self, model: nn.Module, points_5: Tensor, settings: TrainSettings | None = None) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("points_5", torch.as_tensor(points_5, dtype=F64).reshape(5, 3), persistent=False)
        s = settings or TrainSettings()
        self.matcher = det_utils.Matcher(s.fg_iou_thresh, s.bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = det_utils.BalancedPositiveNegativeSampler(s.batch_size_per_image, s.positive_fraction)

    def _rpn(self, images, features, targets):
        rpn = self.model.rpn
        feats = list(features.values())
        objectness, deltas = rpn.head(feats)
        anchors = rpn.anchor_generator(images, feats)
        num_images = len(anchors)
        per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(num_images, -1, 4)
        boxes, _ = rpn.filter_proposals(proposals, objectness, images.image_sizes, per_level)
        labels, matched = rpn.assign_targets_to_anchors(anchors, targets)
        regression_targets = rpn.box_coder.encode(matched, anchors)
        loss_obj, loss_box = rpn.compute_loss(objectness, deltas, labels, regression_targets)
        return boxes, {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_box}

    def _pose_of_positives(self, pooled: Tensor) -> Tensor:
        """Class-1 normalised poses of the positive RoIs' pooled features.

        As the original, the pose branch runs on the positive RoIs only, so in training its batch norm takes
        their statistics. The original fails on a batch with a single positive (BatchNorm1d cannot take the
        statistics of one row): that row is run with the running statistics instead.
        """
        heads = self.model.roi_heads
        if len(pooled) == 0:
            return pooled.new_zeros((0, 6))
        norms = [m for m in heads.box_predictor.modules() if isinstance(m, nn.BatchNorm1d) and m.training]
        single = len(pooled) == 1
        if single:
            for m in norms:
                m.eval()
        try:
            return heads.box_predictor(heads.box_head(pooled)).reshape(-1, 2, 6)[:, 1]
        finally:
            if single:
                for m in norms:
                    m.train()

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        model = self.model
        originals = [(int(i.shape[-1]), int(i.shape[-2])) for i in images]
        targets = [{"boxes": t["boxes"].float(), "dofs": t["dofs"], "has_pose": t["has_pose"]} for t in targets]
        batch, targets = model.transform(images, targets)
        features = model.backbone(batch.tensors)
        proposals, losses = self._rpn(batch, features, targets)

        heads = model.roi_heads
        sampled, labels, gt_dofs, gt_has, img_hw = [], [], [], [], []
        for props, t, (h, w), (ow, oh) in zip(proposals, targets, batch.image_sizes, originals):
            gt = t["boxes"]
            props = torch.cat([props.detach(), gt])
            if len(gt):
                matched = self.matcher(box_ops.box_iou(gt, props))
                idx = matched.clamp(min=0)
                lab = (matched >= 0).to(torch.int64)
                lab[matched == det_utils.Matcher.BETWEEN_THRESHOLDS] = -1
            else:
                idx = torch.zeros(len(props), dtype=torch.int64, device=props.device)
                lab = torch.zeros(len(props), dtype=torch.int64, device=props.device)
            pos, neg = self.sampler([lab])
            keep = torch.where(pos[0] | neg[0])[0]
            sampled.append(props[keep])
            labels.append(lab[keep].clamp(min=0))
            dofs = t["dofs"].to(F64)
            if len(gt):
                # The poses are labels in the input image's camera; the network sees the resized image.
                dofs = geometry.rescale_pose(dofs, torch.tensor([[ow, oh]]).expand(len(dofs), 2),
                                             torch.tensor([[w, h]]).expand(len(dofs), 2))
                gt_dofs.append(dofs[idx[keep]])
                gt_has.append(t["has_pose"].bool()[idx[keep]])
            else:
                gt_dofs.append(torch.zeros(len(keep), 6, dtype=F64, device=props.device))
                gt_has.append(torch.zeros(len(keep), dtype=torch.bool, device=props.device))
            img_hw.append(torch.tensor([[h, w]], device=props.device).expand(len(keep), 2))

        pooled = heads.roi_pool(features, sampled, batch.image_sizes)
        class_logits = heads.class_predictor(heads.class_head(pooled))
        labels_all = torch.cat(labels)
        losses["loss_classifier"] = F.cross_entropy(class_logits, labels_all)
        positive = (labels_all > 0) & torch.cat(gt_has)
        pred = self._pose_of_positives(pooled[positive])
        losses.update(pose_losses(
            pred, torch.cat(gt_dofs)[positive], torch.cat(sampled)[positive].detach(), torch.cat(img_hw)[positive],
            heads.pose_mean, heads.pose_stddev, self.points_5,
        ))
        return {k: v.float() for k, v in losses.items()}

