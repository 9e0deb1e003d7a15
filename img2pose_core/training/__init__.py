"""Training of img2pose: pose targets, the pose losses, and a training-mode forward of the whole model.

The inference modules (:mod:`img2pose_core.model`, :mod:`img2pose_core.roi_heads`) stay untouched;
training reuses their weights. One module per concept:

- :mod:`.targets`: :func:`pose_targets` converts ground-truth global poses (image frame) to the frame of
  each RoI and normalises them with the pose mean/stddev, as the original builds its regression targets;
- :mod:`.losses`: :func:`pose_losses` is the pose MSE (sum over the 6 values / number of positives) and
  the L1 of the 5 reference points projected with the prediction and with the target, in the RoI's own
  camera;
- :mod:`.forward`: :class:`TrainingForward` runs the model in training mode (torchvision's RPN with its
  losses, RoI sampling, class and pose branches) and returns the original's unweighted loss dictionary.
  It also computes the losses with the model in eval mode (validation), which the original could not do;
- :mod:`.pnp`: pose labels from landmarks (:func:`solve_pnp`, :func:`local_pose_from_landmarks`);
- :mod:`.flip`: the horizontal flip of an image with its targets;
- :mod:`.backbone`: the ImageNet initialisation and frozen stages of the ResNet-18.

Every function is vectorised over RoIs; the geometry runs in float64 like the rest of the project.
"""

from __future__ import annotations

from .backbone import (  # noqa: F401 - the constants are public here too, outside __all__
    BACKBONE_LAYERS,
    IMAGENET_RESNET18_URL_ENV,
    BackboneWeightsError,
    imagenet_resnet18_state_dict,
    init_backbone,
)
from .flip import flip_targets, mirror_pose
from .forward import TrainingForward, TrainSettings
from .losses import dof_loss, points_loss, pose_losses
from .pnp import local_pose_from_landmarks, solve_pnp
from .targets import F64, box_intrinsics, pose_image_to_roi, pose_targets

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
