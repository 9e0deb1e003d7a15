"""How a synthetic face looks: a random background, and a face painted from its projected 68 points.

A skin-coloured face outline (jaw line closed over the raised eyebrows), dark eyes, a nose ridge, a red
mouth; the caller adds texture noise. Pillow draws everything.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["background", "paint_face"]

# 68-point layout (iBUG): jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67.
_JAW, _BROWS = list(range(17)), list(range(26, 16, -1))
_EYES = (list(range(36, 42)), list(range(42, 48)))
_NOSE_RIDGE, _NOSTRILS = list(range(27, 31)), list(range(31, 36))
_MOUTH = list(range(48, 60))


def background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A smooth random gradient with blurred blobs and pixel noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx / max(w, 1) + np.sin(angle) * yy / max(h, 1)) % 1.0
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    img += rng.normal(0, 12, (h, w, 3))
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(3, 9))):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.03, 0.2) * min(w, h)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.rectangle([x - r, y - r, x + r, y + r * rng.uniform(0.3, 1.5)], fill=colour)
        else:
            draw.ellipse([x - r, y - r * rng.uniform(0.3, 1.0), x + r, y + r], fill=colour)
    return pil.filter(ImageFilter.GaussianBlur(1.0))


def paint_face(draw: ImageDraw.ImageDraw, lms: np.ndarray, rng: np.random.Generator) -> None:
    """Paint one face from its projected 68 points (x, y)."""
    pts = [tuple(p) for p in lms.tolist()]
    # Forehead: the brows lifted by a third of the brow-to-chin distance.
    chin, brow_mid = lms[8], lms[17:27].mean(0)
    lift = (brow_mid - chin) * 0.35
    outline = [pts[i] for i in _JAW] + [tuple(lms[i] + lift) for i in _BROWS]
    skin = rng.uniform([150, 95, 70], [245, 205, 175])
    draw.polygon(outline, fill=tuple(int(v) for v in skin), outline=tuple(int(v * 0.6) for v in skin))
    dark = tuple(int(v * 0.45) for v in skin)
    width = max(1, int(np.ptp(lms[:, 0]) / 40))
    draw.line([pts[i] for i in range(17, 22)], fill=dark, width=width)
    draw.line([pts[i] for i in range(22, 27)], fill=dark, width=width)
    for eye in _EYES:
        draw.polygon([pts[i] for i in eye], fill=(245, 245, 245), outline=(20, 20, 20))
        c = lms[eye].mean(0)
        r = max(1.0, np.ptp(lms[eye][:, 0]) / 5)
        draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=(30, 25, 20))
    draw.line([pts[i] for i in _NOSE_RIDGE], fill=dark, width=width)
    draw.line([pts[i] for i in _NOSTRILS], fill=dark, width=width)
    draw.polygon([pts[i] for i in _MOUTH], fill=(170, 40, 50), outline=(90, 20, 25))

