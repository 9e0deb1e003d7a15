"""The predictor's inputs: images given as pixels (arrays, tensors, PIL images) or as paths and URLs.

Paths and URLs are read by the annotation job's bounded reader (:mod:`img2pose_core.storage.reads`:
regular files only, a byte cap, connect and idle timeouts, a time budget per input, no cloud metadata
address) and decoded as the job decodes them (:mod:`img2pose_core.imageio`), so a file gives the
predictor the same pixels and the same status it gives the job; every image becomes a ``(3, H, W)`` tensor.
:func:`as_input_list` says what one call's inputs are (a lone path or picture is one input, never split),
:func:`input_name` how each is named in results and tables.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..imageio import ImageDecodeError, decode_image, upright_rgb_array
from ..storage.filesystems import StorageConfig
from ..storage.reads import ReadFailure, ReadLimits, read_concurrently, read_source
from ..uris import normalise_local, redact_uri, scheme_of

__all__ = ["ImageInput", "as_input_list", "input_name", "local_file_error", "stored_uri", "read_path", "to_chw",
           "load_images", "file_byte_cap"]  # fmt: skip

# Pixels, or where to read them: a local path, a file:// URI or any fsspec URL.
ImageInput = np.ndarray | Image.Image | Tensor | str | os.PathLike

_BYTES_HINT = (
    "encoded image bytes are not an input: pass the file's path or URL, or decode them first "
    "(img2pose_core.imageio.decode_image(data).pixels)"
)


def as_input_list(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """The inputs of one call, in order. A lone image is one input: a path or URL (``str`` or
    ``os.PathLike``), a PIL image, an array of shape ``(H, W)`` or ``(H, W, 3|4)``, a ``(3, H, W)`` tensor.
    A stack (an ``(N, H, W, 3)`` array, an ``(N, 3, H, W)`` tensor) is its N images; any other iterable
    (list, tuple, generator, pandas Series ...) is its items. Bytes raise ``TypeError`` (they are not a
    path), an array or tensor of another shape ``ValueError``: nothing is split silently."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, (bytes, bytearray, memoryview)):
        raise TypeError(f"unsupported image type {type(images).__name__}: {_BYTES_HINT}")
    if isinstance(images, np.ndarray) and images.dtype != object:
        if images.ndim in (2, 3):
            return [images]
        if images.ndim == 4:
            return list(images)
        raise ValueError(f"expected an image (H, W, 3) or a stack of images (N, H, W, 3), got an array of shape {images.shape}")
    if isinstance(images, Tensor):
        if images.ndim == 3:
            return [images]
        if images.ndim == 4:
            return list(images)
        raise ValueError(f"expected a tensor (3, H, W) or a stack (N, 3, H, W), got shape {tuple(images.shape)}")
    if not isinstance(images, Iterable):
        raise TypeError(
            f"unsupported image type {type(images).__name__}; pass a path, URL, numpy array, PIL image or tensor, "
            "or a list of them"
        )
    return list(images)


def input_name(image: ImageInput, index: int) -> str:
    """How results and tables name input ``index``: a path or URL as given (credentials redacted), an
    in-memory picture ``<array 3>``, ``<PIL 0>`` or ``<tensor 1>`` (its kind and input index)."""
    if isinstance(image, (str, os.PathLike)):
        return redact_uri(os.fsdecode(image))
    kind = "array" if isinstance(image, np.ndarray) else "PIL" if isinstance(image, Image.Image) else "tensor" if isinstance(image, Tensor) else "image"
    return f"<{kind} {index}>"


def stored_uri(uri: str) -> str:
    """``uri`` as the job's tables store it: local paths absolute, URL credentials redacted."""
    return normalise_local(uri) if scheme_of(uri) in ("", "file") else redact_uri(uri)


def local_file_error(path: str, shown: str | None = None) -> ImageDecodeError | None:
    """Why the local ``path`` cannot be read as an image file, found without reading it: ``unreadable``
    (missing, no permission to look) or ``not_a_file`` (a folder, named pipe, socket or device, which
    reading would fail on or block on); None for a regular file (or a link to one). Messages name the
    file as ``shown`` (default: ``path``)."""
    shown = path if shown is None else shown
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return ImageDecodeError("unreadable", f"cannot read {shown}: {exc.strerror or exc}")
    if stat.S_ISREG(mode):
        return None
    kind = "a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return ImageDecodeError("not_a_file", f"{shown}: not a regular file ({kind}); never read")


def file_byte_cap(max_pixels: int) -> int:
    """The job's cap on an image file: 8 bytes a pixel of ``max_pixels`` (16-bit RGBA, uncompressed), at
    least 64 MiB."""
    return max(64 << 20, 8 * max_pixels)


def _read_bytes(text: str, limits: ReadLimits, storage_options: dict | None) -> bytes:
    """The bytes at ``text`` through the job's reader; a ReadFailure whose message names it (redacted)."""
    shown = redact_uri(text)
    scheme = scheme_of(text)
    if scheme in ("", "file"):
        # A look before the reader's own check only for the words: the reader opens the file
        # without blocking and checks what it opened, so a file swapped for a pipe meanwhile is still refused.
        problem = local_file_error(normalise_local(text) if scheme else text, shown)
        if problem is not None:
            raise ReadFailure(problem.status, problem.message)
    try:
        return read_source(text, StorageConfig.from_args(None), limits, storage_options=storage_options)
    except ReadFailure as failure:
        raise ReadFailure(failure.status, f"cannot read {shown}: {failure.message}") from None


def read_path(
    path: str | os.PathLike, max_pixels: int, storage_options: dict | None, limits: ReadLimits | None = None
) -> tuple[np.ndarray, str]:
    """Pixels and SHA-256 of the image at ``path``, read and decoded as the job does (``limits``: the
    reader's, default the job's: :func:`file_byte_cap` and 180 s); an
    :class:`~img2pose_core.imageio.ImageDecodeError` whose message names the path when it cannot be."""
    text = os.fsdecode(path)
    try:
        data = _read_bytes(text, limits or ReadLimits(max_bytes=file_byte_cap(max_pixels)), storage_options)
    except ReadFailure as failure:
        raise ImageDecodeError(failure.status, failure.message) from None
    return _decode(text, data, max_pixels)


def _decode(text: str, data: bytes, max_pixels: int) -> tuple[np.ndarray, str]:
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
    hint = _BYTES_HINT if isinstance(image, (bytes, bytearray, memoryview)) else "pass a numpy array, PIL image, tensor, path or URL"
    raise TypeError(f"unsupported image type {type(image).__name__}; {hint}")


def load_images(
    images: Sequence[ImageInput], max_pixels: int, storage_options: dict | None, limits: ReadLimits | None = None,
    parallel: int = 8,
) -> tuple[list[Tensor | None], dict[int, str], dict[int, ImageDecodeError]]:
    """Every image as a ``(3, H, W)`` tensor (None where a path could not be read or decoded), the
    SHA-256 of each path's bytes, and why each failed path failed; by input index. Paths are read
    ``parallel`` at a time by the job's reader under ``limits`` (default: :func:`file_byte_cap` of
    ``max_pixels``, 180 s an input), a read past its time given up as the job gives it up, and decoded
    as they arrive; a badly typed or shaped image raises."""
    limits = limits or ReadLimits(max_bytes=file_byte_cap(max_pixels))
    tensors: list[Tensor | None] = [None] * len(images)
    hashes: dict[int, str] = {}
    failed: dict[int, ImageDecodeError] = {}
    paths: dict[int, str] = {}
    for i, image in enumerate(images):
        if isinstance(image, (str, os.PathLike)):
            paths[i] = os.fsdecode(image)
        else:
            tensors[i] = to_chw(image)

    named: set[int] = set()  # inputs whose failure message names them already (all but those given up)

    def read(index: str) -> bytes:
        try:
            return _read_bytes(paths[int(index)], limits, storage_options)
        except ReadFailure:
            named.add(int(index))
            raise

    items = [(i, str(i), "file") for i in paths]
    for i, data, failure in read_concurrently(items, read, limits.timeout_s, parallel, timeout_name="read_timeout"):
        try:
            if failure is not None:
                shown = "" if i in named else f"cannot read {redact_uri(paths[i])}: "
                raise ImageDecodeError(failure.status, shown + failure.message)
            assert data is not None, "read_concurrently yields the bytes of every read without a failure"
            pixels, hashes[i] = _decode(paths[i], data, max_pixels)
        except ImageDecodeError as exc:
            failed[i] = exc
            continue
        tensors[i] = to_chw(pixels)
    return tensors, hashes, failed
