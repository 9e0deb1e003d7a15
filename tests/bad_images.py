"""A corpus of malformed, hostile and unusual image files, each with the status it must get.

Used by the decoder's tests and by the job's tests. Everything is generated here, from Pillow and
from hand-made bytes; nothing is downloaded.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["make_bad_images", "png_with_declared_size", "face_like_image"]


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width x height``: a decompression bomb's signature."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def face_like_image(w: int = 160, h: int = 120, seed: int = 0) -> Image.Image:
    """A small RGB picture (smooth gradients and noise) that decodes fine."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) % 256], axis=-1)
    arr = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def make_bad_images(folder: Path) -> dict[str, str]:
    """Write the corpus into ``folder``; returns ``{file name: expected status}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    good = _noise(64, 48, 1)
    jpeg = _encode(good, "JPEG", quality=90)
    png = _encode(good, "PNG")
    webp = _encode(good, "WEBP", quality=80)
    gif = _encode(good.convert("P"), "GIF")
    tiff = _encode(good, "TIFF")

    cmyk = _encode(_noise(40, 30, 2).convert("CMYK"), "JPEG")
    palette_alpha = good.convert("P")
    palette_alpha.info["transparency"] = 0
    pal = io.BytesIO()
    palette_alpha.save(pal, format="PNG", transparency=0)
    frames = [_noise(32, 32, s).convert("P") for s in range(3)]
    anim = io.BytesIO()
    frames[0].save(anim, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    sixteen = Image.fromarray((np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20).astype(np.uint16))
    exif_rotated = good.copy()
    exif = exif_rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise for display
    jpeg_rotated = _encode(exif_rotated, "JPEG", exif=exif.tobytes())

    corrupt_jpeg = bytearray(jpeg)
    corrupt_jpeg[200:260] = b"\xff\xd9" * 30  # end-of-image markers inside the scan

    files: dict[str, tuple[bytes, str]] = {
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "corrupt"),
        "corrupt_header.jpg": (jpeg[:2] + b"\xff\xc0\x00\x02" + jpeg[6:40], "corrupt"),
        "truncated.png": (png[: len(png) // 2], "corrupt"),
        "bad_crc.png": (png[:30] + bytes([png[30] ^ 0xFF]) + png[31:], "corrupt"),
        "truncated.webp": (webp[: len(webp) // 2], "corrupt"),
        "truncated.gif": (gif[: len(gif) // 3], "corrupt"),
        "truncated.tiff": (tiff[: len(tiff) // 3], "corrupt"),
        "zero_bytes.jpg": (b"", "not_an_image"),
        "text.jpg": (b"this is not an image, just some text\n" * 5, "not_an_image"),
        "page.jpg": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "not_an_image"),
        "random_bytes.png": (np.random.default_rng(3).integers(0, 256, 500, dtype=np.uint8).tobytes(), "not_an_image"),
        "svg_named.png": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "not_an_image"),
        "bomb_100k_square.png": (png_with_declared_size(100_000, 100_000), "too_large"),
        "bomb_wide.png": (png_with_declared_size(2_000_000, 60), "too_large"),
        "one_pixel.png": (_encode(_noise(1, 1, 4), "PNG"), "ok"),
        "wide_30000x20.png": (_encode(_noise(30000, 20, 5), "PNG"), "ok"),
        "sixteen_bit.png": (_encode(sixteen, "PNG"), "ok"),
        "cmyk.jpg": (cmyk, "ok"),
        "palette_alpha.png": (pal.getvalue(), "ok"),
        "rgba.png": (_encode(_noise(40, 30, 6).convert("RGBA"), "PNG"), "ok"),
        "grey_alpha.png": (_encode(_noise(40, 30, 7).convert("LA"), "PNG"), "ok"),
        "animated.gif": (anim.getvalue(), "ok"),
        "exif_rotated.jpg": (jpeg_rotated, "ok"),
        "greyscale.jpg": (_encode(_noise(40, 30, 8).convert("L"), "JPEG"), "ok"),
        "bmp_image.bmp": (_encode(good, "BMP"), "ok"),
        "misnamed_png.jpg": (png, "ok"),
        "corrupt_scan.jpg": (bytes(corrupt_jpeg), "corrupt_or_ok"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: status for name, (_, status) in files.items()}
