"""The model's settings (:class:`ModelSettings`), apart from the network so that reading them imports no torch.

``bundle.json`` stores one set as the bundle's defaults; every command line and the Python API use
them unless a flag or an argument says otherwise (:mod:`img2pose_core.flags`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["ModelSettings", "DEFAULT_THRESHOLD"]

# The face score a new bundle keeps faces above (what the annotation job always used): at 0.0 one
# photo yields hundreds of low-scoring boxes that are not faces.
DEFAULT_THRESHOLD = 0.8


@dataclass
class ModelSettings:
    """Everything that configures a built model; stored in ``bundle.json`` as the bundle's defaults."""

    min_size: int = 640
    max_size: int = 1400
    rpn_pre_nms_top_n: int = 6000
    rpn_post_nms_top_n: int = 1000
    rpn_nms_thresh: float = 0.4
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    bbox_x_factor: float = 1.1
    bbox_y_factor: float = 1.1
    expand_forehead: float = 0.3
    max_faces: int | None = None
    threshold: float = DEFAULT_THRESHOLD
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSettings":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model settings {unknown}; known: {sorted(known)}")
        return cls(**data)
