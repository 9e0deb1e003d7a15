"""Building the img2pose model from a bundle's files.

Kept beside the model rather than in :mod:`img2pose_core.bundle` (as torchvision keeps its model
builders apart from its weights handling): the bundle package finds, fetches, checks and caches the
files without importing torch; this module turns checked files into an :class:`Img2Pose`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .bundle.format import BundleError
from .checkpoint import CheckpointError, load_weights, read_state_dict
from .model import Img2Pose, ModelSettings

if TYPE_CHECKING:
    from .bundle import Bundle

__all__ = ["build_model", "model_from_files"]


def model_from_files(weights: Path, arrays: Mapping[str, np.ndarray], settings: ModelSettings, label: str) -> Img2Pose:
    """An :class:`Img2Pose` with ``weights`` loaded strictly; a checkpoint problem becomes a BundleError.

    ``arrays`` holds ``pose_mean``, ``pose_stddev`` and ``points_68`` as the bundle checked them;
    ``label`` names the weights in errors.
    """
    import torch

    model = Img2Pose(
        torch.from_numpy(arrays["pose_mean"]),
        torch.from_numpy(arrays["pose_stddev"]),
        torch.from_numpy(arrays["points_68"]),
        settings=ModelSettings.from_dict(json.loads(json.dumps(settings.to_dict()))),  # a private copy
    )
    try:
        load_weights(model, read_state_dict(weights), source=label)
    except CheckpointError as exc:
        raise BundleError(str(exc)) from exc
    return model.eval()


def build_model(bundle: Bundle, **setting_overrides: Any) -> Img2Pose:
    """A new :class:`Img2Pose` from ``bundle``, in eval mode with the weights loaded strictly, then ``configure``d.

    Overrides are :class:`ModelSettings` fields; ``None`` keeps the bundle's value (except for
    ``max_faces``, where ``None`` means no cap).
    """
    known = {f.name for f in fields(ModelSettings)}
    unknown = sorted(set(setting_overrides) - known)
    if unknown:
        raise BundleError(f"{bundle.uri}: unknown model settings {unknown}; known: {sorted(known)}")
    arrays = {"pose_mean": bundle.pose_mean, "pose_stddev": bundle.pose_stddev, "points_68": bundle.points_68}
    model = model_from_files(bundle.weights_path, arrays, bundle.settings, str(bundle.weights_path))
    if setting_overrides:
        model.configure(**setting_overrides)
    return model
