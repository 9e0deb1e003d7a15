"""Synthetic faces with exact 6DoF labels, for tests and smoke runs of training and evaluation.

:mod:`.scene` places procedural heads at known poses and labels them exactly; :mod:`.paint` draws them;
:mod:`.datasets` writes scenes in the layouts the rest of the project reads (the authors' training
annotation, AFLW2000-3D, BIWI, WIDER FACE val); :mod:`.command` is ``python -m img2pose_core.synthetic``.
Everything is deterministic for a given ``seed``.
"""

from __future__ import annotations

from .command import main  # noqa: F401 - the command, callable in-process
from .datasets import encode_image, write_aflw2000_style, write_annotation_dataset, write_biwi_style, write_wider_style
from .scene import SyntheticImage, euler_to_rotvec, make_scene

__all__ = [
    "SyntheticImage",
    "euler_to_rotvec",
    "make_scene",
    "encode_image",
    "write_annotation_dataset",
    "write_aflw2000_style",
    "write_biwi_style",
    "write_wider_style",
]
