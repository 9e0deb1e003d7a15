"""The predictor's inputs: images given as pixels (arrays, tensors, PIL images) or as paths and URLs.

Paths are read and decoded as the annotation job decodes them (:mod:`img2pose_core.imageio`), so a
file gives the predictor the same pixels it gives the job; every image becomes a ``(3, H, W)`` tensor.
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..imageio import ImageDecodeError, decode_image, read_image_bytes, upright_rgb_array
from ..uris import normalise_local, redact_uri, scheme_of

__all__ = ["ImageInput", "stored_uri", "read_path", "to_chw", "load_images"]

# Pixels, or where to read them: a local path, a file:// URI or any fsspec URL.
ImageInput = np.ndarray | Image.Image | Tensor | str | os.PathLike


def stored_uri(uri: str) -> str:
    """``uri`` as the job's tables store it: local paths absolute, URL credentials redacted."""
    return normalise_local(uri) if scheme_of(uri) in ("", "file") else redact_uri(uri)


def read_path(path: str | os.PathLike, max_pixels: int, storage_options: dict | None) -> tuple[np.ndarray, str]:
    """Pixels and SHA-256 of the image at ``path``, read and decoded as the job does; an
    :class:`~img2pose_core.imageio.ImageDecodeError` whose message names the path when it cannot be."""
    text = os.fsdecode(path)
    data = read_image_bytes(text, storage_options=storage_options)  # its errors name the path already
    try:
        decoded = decode_image(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        raise ImageDecodeError(exc.status, f"{redact_uri(text)}: {exc.message}") from None
    return decoded.pixels, hashlib.sha256(data).hexdigest()


def to_chw(image: np.ndarray | Image.Image | Tensor) -> Tensor:
    """Pixels as a ``(3, H, W)`` tensor: uint8 from arrays and PIL images, a given tensor as it is."""
    if isinstance(image, Image.Image):
        image = upright_rgb_array(image)  # as decode_image turns a file: the same picture either way
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 array of shape (H, W, 3), got {image.dtype} {image.shape}")
        pixels = image[..., :3]
        if not pixels.flags.writeable or not pixels.flags.c_contiguous:
            pixels = np.array(pixels, order="C")  # torch wants its own writable memory
        return torch.from_numpy(pixels).permute(2, 0, 1)
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a tensor of shape (3, H, W), got {tuple(image.shape)}")
        return image
    raise TypeError(
        f"unsupported image type {type(image).__name__}; pass a numpy array, PIL image, tensor, path or URL"
    )


def load_images(
    images: Sequence[ImageInput], max_pixels: int, storage_options: dict | None
) -> tuple[list[Tensor | None], dict[int, str], dict[int, ImageDecodeError]]:
    """Every image as a ``(3, H, W)`` tensor (None where a path could not be read or decoded), the
    SHA-256 of each path's bytes, and why each failed path failed; by input index. Paths are read one
    after the other; a badly typed or shaped image raises."""
    tensors: list[Tensor | None] = [None] * len(images)
    hashes: dict[int, str] = {}
    failed: dict[int, ImageDecodeError] = {}
    for i, image in enumerate(images):
        if isinstance(image, (str, os.PathLike)):
            try:
                pixels, hashes[i] = read_path(image, max_pixels, storage_options)
            except ImageDecodeError as exc:
                failed[i] = exc
                continue
            tensors[i] = to_chw(pixels)
        else:
            tensors[i] = to_chw(image)
    return tensors, hashes, failed
