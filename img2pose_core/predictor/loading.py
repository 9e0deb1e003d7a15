"""The network of a predictor: built from its bundle, placed on the device, compiled, and shared.

A model is large and slow to build and compile, so predictors of the same bundle, device and settings
share one per process (a thread-safe cache); a predictor made with ``shared=False`` gets its own.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, TypedDict

import torch

from ..model import Img2Pose

if TYPE_CHECKING:
    from ..bundle import Bundle

__all__ = ["COMPILE_MODES", "ModelChoices", "compile_mode", "load_model"]

COMPILE_MODES = ("off", "dynamic", "reduce-overhead", "max-autotune")

_MODEL_CACHE: dict[tuple, Img2Pose] = {}
_MODEL_CACHE_LOCK = threading.Lock()


def compile_mode(value: bool | str | None) -> str:
    """The backbone's ``torch.compile`` mode: ``off``; ``dynamic`` (one graph for every size, ``True``);
    ``reduce-overhead`` or ``max-autotune`` (a static graph per padded network size, CUDA graphs on GPU)."""
    if value is None or value is False:
        return "off"
    if value is True:
        return "dynamic"
    if value not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, not {value!r}")
    return str(value)


class ModelChoices(TypedDict):
    """The model settings a :class:`~img2pose_core.predictor.Predictor` sets (the others are the bundle's)."""

    min_size: int
    max_size: int
    rpn_pre_nms_top_n: int
    rpn_post_nms_top_n: int
    max_faces: int | None


def load_model(
    bundle: Bundle,
    device: torch.device,
    settings: ModelChoices,
    *,
    channels_last: bool,
    compile: str,
    shared: bool,
) -> Img2Pose:
    """The bundle's model with ``settings`` on ``device`` in eval mode, its backbone channels-last and
    compiled (:func:`compile_mode`) as asked; the process's shared one when ``shared``."""
    key = (
        bundle.model_sha256, str(bundle.root), str(device),
        tuple(sorted(settings.items())), channels_last, compile,
    )  # fmt: skip
    with _MODEL_CACHE_LOCK:
        model = _MODEL_CACHE.get(key) if shared else None
        if model is None:
            model = bundle.build_model(**settings).to(device).eval()
            if channels_last:
                model.backbone.to(memory_format=torch.channels_last)
                model.channels_last = True
            if compile == "dynamic":
                # Image sizes vary: dynamic shapes avoid a recompilation per size.
                model.backbone = torch.compile(model.backbone, dynamic=True)
            elif compile != "off":
                # One graph per padded network size (batches only ever hold one size): on CUDA both
                # modes replay it as a CUDA graph; max-autotune also searches kernel configurations.
                model.backbone = torch.compile(model.backbone, mode=compile, dynamic=False)
            if shared:
                _MODEL_CACHE[key] = model
    return model
