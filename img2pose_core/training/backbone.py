"""The backbone's initial weights for training: torchvision's ImageNet ResNet-18, and the stages the
original freezes."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ..model import Img2Pose

__all__ = ["IMAGENET_RESNET18_URL_ENV", "BACKBONE_LAYERS", "BackboneWeightsError", "imagenet_resnet18_state_dict",
           "init_backbone"]  # fmt: skip

IMAGENET_RESNET18_URL_ENV = "IMG2POSE_IMAGENET_URL"
BACKBONE_LAYERS = ("layer4", "layer3", "layer2", "layer1", "conv1")


class BackboneWeightsError(RuntimeError):
    """The backbone's initial weights cannot be had: says where to get them."""


def imagenet_resnet18_state_dict(cache_dir: str | None = None) -> dict[str, Tensor]:
    """torchvision's ImageNet ResNet-18 (``ResNet18_Weights.IMAGENET1K_V1``), downloaded once into the torch
    hub cache and checked against the hash in its file name. ``$IMG2POSE_IMAGENET_URL`` points elsewhere
    (a mirror); offline, the error says how to pass the file instead."""
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


def init_backbone(model: Img2Pose, weights: str | None = "imagenet", trainable_layers: int = 3) -> list[str]:
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
                loaded = torch.load(weights, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001
                raise BackboneWeightsError(f"--backbone-weights {weights}: not a readable state dict ({exc})") from exc
            state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
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
