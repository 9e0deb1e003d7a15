"""Decoding untrusted image bytes into RGB arrays, with a status for everything that can go wrong.

Each failure is an :class:`ImageDecodeError` whose ``status`` is a short, stable class that the jobs
write into their tables:

- ``not_an_image``: the bytes are no image format Pillow knows (text, HTML, zero bytes ...);
- ``too_large``: the declared size exceeds the pixel budget (checked *before* decoding, so a
  decompression bomb never allocates its pixels);
- ``corrupt``: a known format whose data is truncated or damaged;
- ``unsupported``: a valid image in a pixel mode that has no sensible RGB meaning;
- ``unreadable``: the bytes could not be read at all (I/O error, missing file or object, store error:
  :func:`read_image_bytes` reads local paths, ``file://`` and fsspec URLs).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .uris import normalise_local, redact_text, redact_uri, scheme_of

__all__ = [
    "IMAGE_EXTENSIONS", "DEFAULT_MAX_PIXELS", "DECODED_FORMATS", "probe_jpeg", "ImageDecodeError", "DecodedImage", "decode_image",
    "read_image_file", "read_image_bytes", "to_rgb_array", "upright_rgb_array",
]  # fmt: skip

# File names taken for images where a folder is listed (the job's listing, `img2pose predict DIR`).
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm", ".pnm",
    ".avif",
)  # fmt: skip

# 100 megapixels: far above any photograph a face model is useful on, far below what exhausts a worker.
DEFAULT_MAX_PIXELS = 100_000_000
# The formats the decoder opens (Pillow plugin ids), and no others: Pillow's full set includes parsers
# that untrusted bytes should never reach (EPS runs Ghostscript where it is installed; PSD, FITS,
# ICNS ... are rarely exercised). JPEG includes MPO, the multi-picture JPEG of cameras.
DECODED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "PPM", "AVIF")


class ImageDecodeError(Exception):
    """An image that cannot be used; ``status`` is its short error class."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class DecodedImage:
    """An RGB image (uint8, height x width x 3), EXIF orientation applied.

    ``width``/``height`` are the picture's full size; ``pixels`` may be smaller when decoding was
    reduced (``reduce_for``), by the factor JPEG's DCT scaling allows (1/2, 1/4 or 1/8).
    """

    pixels: np.ndarray
    format: str | None
    full_size: tuple[int, int] | None = None  # (width, height) when pixels are reduced

    @property
    def width(self) -> int:
        return int(self.full_size[0] if self.full_size else self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.full_size[1] if self.full_size else self.pixels.shape[0])

    @property
    def reduced(self) -> bool:
        return self.full_size is not None and self.full_size != (self.pixels.shape[1], self.pixels.shape[0])


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """RGB uint8 pixels of any Pillow image: 16-bit and float greys scaled, palettes and alpha flattened."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        grey = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        scale = 255.0 if np.nanmax(arr, initial=0.0) <= 1.0 else 1.0
        grey = np.clip(np.nan_to_num(arr) * scale + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    # Alpha is dropped, not composited: the authors feed Image.convert("RGB") to the network.
    return np.asarray(image.convert("RGB"))


def upright_rgb_array(image: Image.Image) -> np.ndarray:
    """RGB uint8 pixels of a Pillow image turned upright by its EXIF orientation, as :func:`decode_image`
    turns a file's: the same picture whether it comes as a file or as an opened image."""
    return to_rgb_array(ImageOps.exif_transpose(image))


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, reduce_for: tuple[int, int] | None = None
) -> DecodedImage:
    """Decode ``data`` to RGB with EXIF orientation applied; the first frame of an animation.

    ``reduce_for=(min_size, max_size)``: a JPEG that the model will shrink by 2x or more is decoded
    directly at 1/2, 1/4 or 1/8 scale (never below the size the model resizes to), which is several
    times faster and smaller; the pixels then differ slightly from a full decode.
    Raises :class:`ImageDecodeError` with a status (see the module docstring) on any failure.
    """
    if not data:
        raise ImageDecodeError("not_an_image", "empty file (0 bytes)")
    with warnings.catch_warnings():
        # Pillow warns (and at 2x errors) on big images by its own global limit; ours is explicit.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=DECODED_FORMATS)
        except UnidentifiedImageError:
            known = _magic_format(data)
            if known:  # the signature of a real format whose header Pillow could not parse
                raise ImageDecodeError("corrupt", f"{known} signature but an unreadable header") from None
            raise ImageDecodeError("not_an_image", f"not a recognised image format ({_sniff(data)})") from None
        except Image.DecompressionBombError as exc:
            raise ImageDecodeError("too_large", f"declared size is a decompression bomb: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any parser failure of untrusted bytes is a status
            raise ImageDecodeError("corrupt", f"cannot parse image header: {_describe(exc)}") from None
        with image:
            width, height = image.size
            if width <= 0 or height <= 0:
                raise ImageDecodeError("corrupt", f"invalid declared size {width}x{height}")
            if width * height > max_pixels:
                raise ImageDecodeError(
                    "too_large",
                    f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}",
                )
            fmt = image.format
            try:
                if getattr(image, "n_frames", 1) > 1:
                    image.seek(0)
                if reduce_for is not None and fmt == "JPEG":
                    image.draft("RGB", _draft_request(image, width, height, *reduce_for))
                image.load()
                pixels = upright_rgb_array(image)
            except Image.DecompressionBombError as exc:
                raise ImageDecodeError("too_large", f"decompression bomb: {exc}") from None
            except MemoryError:
                raise ImageDecodeError("too_large", f"{width}x{height} image does not fit in memory") from None
            except (ValueError, TypeError, KeyError) as exc:
                raise ImageDecodeError("unsupported", f"{fmt} image in mode {image.mode}: {_describe(exc)}") from None
            except Exception as exc:  # noqa: BLE001 - OSError for truncation, SyntaxError, struct.error ...
                raise ImageDecodeError("corrupt", f"{fmt} data is damaged: {_describe(exc)}") from None
    full = (height, width) if _transposed(image) else (width, height)
    return DecodedImage(np.ascontiguousarray(pixels), fmt, full if reduce_for is not None else None)


def probe_jpeg(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int] | None:
    """The (width, height) a JPEG will have once decoded with its EXIF orientation applied, from its
    header alone (no pixels); None when ``data`` is no JPEG. Raises :class:`ImageDecodeError` for a JPEG
    whose header is unusable or declares more than ``max_pixels``: the checks :func:`decode_image`
    makes before decoding, for pixels that another decoder (the GPU's) will make."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=("JPEG",))
        except Image.DecompressionBombError as exc:
            raise ImageDecodeError("too_large", f"declared size is a decompression bomb: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any parser failure of untrusted bytes is a status
            raise ImageDecodeError("corrupt", f"JPEG signature but an unreadable header: {_describe(exc)}") from None
        with image:
            width, height = image.size
            if width <= 0 or height <= 0:
                raise ImageDecodeError("corrupt", f"invalid declared size {width}x{height}")
            if width * height > max_pixels:
                raise ImageDecodeError("too_large", f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}")
            return (height, width) if _transposed(image) else (width, height)


def _transposed(image: Image.Image) -> bool:
    # EXIF orientations 5-8 turn the stored picture by 90 degrees.
    try:
        return image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - unreadable EXIF: exif_transpose ignored it too
        return False


def _draft_request(image: Image.Image, width: int, height: int, min_size: int, max_size: int) -> tuple[int, int]:
    """Smallest stored size that still covers what the model resizes the picture to."""
    scale = min(min_size / min(width, height), max_size / max(width, height), 1.0)
    return max(1, int(np.ceil(width * scale))), max(1, int(np.ceil(height * scale)))


def read_image_file(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Read and decode a local image file (see :func:`decode_image`); unreadable files get ``unreadable``."""
    return decode_image(_read_local(path, str(path)), max_pixels=max_pixels)


def _read_local(path: str | Path, shown: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError("unreadable", f"cannot read {shown}: {exc.strerror or exc}") from None


def read_image_bytes(uri: str | os.PathLike, *, storage_options: dict | None = None) -> bytes:
    """The bytes of a local path, a ``file://`` URI or any fsspec URL (``s3://``, ``gs://``, ``https://`` ...).

    ``storage_options`` go to fsspec (credentials, ``client_kwargs`` ...); for ``s3://`` the endpoint of
    ``AWS_ENDPOINT_URL[_S3]`` is used when they name none, as for bundles. Anything that stops the read
    (missing file or object, permission, unknown scheme, a store error) raises :class:`ImageDecodeError`
    ``unreadable`` whose message names ``uri`` with its credentials redacted.
    """
    text = os.fsdecode(uri)
    shown = redact_uri(text)
    scheme = scheme_of(text)
    if scheme in ("", "file"):
        return _read_local(normalise_local(text) if scheme else text, shown)
    from .storage import env_s3_endpoint, open_fs, with_s3_endpoint

    try:
        fs, path = open_fs(text, with_s3_endpoint(text, storage_options, env_s3_endpoint()))
        return fs.cat_file(path)
    except FileNotFoundError:
        raise ImageDecodeError("unreadable", f"cannot read {shown}: not found") from None
    except Exception as exc:  # noqa: BLE001 - every store raises its own errors (botocore, aiohttp, ...)
        raise ImageDecodeError("unreadable", f"cannot read {shown}: {redact_text(_describe(exc), [text])}") from None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_MAGIC = [
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
]


def _magic_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    return None


def _sniff(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "looks like HTML"
    if head.startswith(b"<?xml") or head.startswith(b"<svg"):
        return "looks like XML/SVG, which is not supported"
    if head.startswith(b"%!ps") or data[:4] == b"\xc5\xd0\xd3\xc6":
        return "looks like PostScript/EPS, which is never decoded"
    if head.startswith(b"%pdf"):
        return "looks like PDF, which is not decoded"
    if data[:4] == b"8BPS":
        return "looks like a Photoshop document, which is not decoded"
    try:
        data[:256].decode("utf-8")
        return "looks like text"
    except UnicodeDecodeError:
        return f"{len(data)} bytes of unknown binary data"
