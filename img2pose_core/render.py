"""Drawing faces and their 6DoF poses on images: box, landmarks, pose axes, score and angles.

The geometry of a drawing (where the axes, landmarks and mesh lines land) is computed by pure,
vectorised functions of the poses, separate from the pixels:

- :func:`project_to_image` projects 3D points of the reference head with each pose in the camera of
  the image the network saw (``network_wh``: focal ``w + h``, principal point ``(w // 2, h // 2)``)
  and scales them to the original image's pixels, exactly as the predictor computes its landmarks
  (see ``docs/poses.md``, "Which image the pose belongs to");
- :func:`axis_endpoints` projects the head's origin and the ends of its three axes;
- :func:`mesh_polylines` groups 68 projected landmarks into contours (jaw, brows, nose, eyes, lips).

The axes are the reference head's own x, y, z axes (x red, y green, z blue). The reference head uses
the camera's convention, so for an upright face looking into the camera x points to the image's
right, y down and z away from the camera (into the head).

:func:`render_faces` draws all of it with Pillow's ``ImageDraw`` (no anti-aliasing: every drawn pixel
has exactly its layer's colour).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import geometry

__all__ = [
    "AXIS_COLOURS",
    "BOX_COLOUR",
    "LANDMARK_68_COLOUR",
    "LANDMARK_5_COLOUR",
    "MESH_COLOUR",
    "LABEL_COLOUR",
    "MESH_GROUPS",
    "DEFAULT_AXIS_LENGTH",
    "Style",
    "project_to_image",
    "axis_endpoints",
    "mesh_polylines",
    "clip_segments",
    "style_for",
    "face_label",
    "render_faces",
    "faces_from_columns",
]

# Layer colours (RGB). Axes: x red, y green, z blue.
AXIS_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))
BOX_COLOUR = (255, 200, 0)
LANDMARK_68_COLOUR = (0, 255, 255)
LANDMARK_5_COLOUR = (255, 0, 255)
MESH_COLOUR = (0, 180, 255)
LABEL_COLOUR = (255, 255, 255)
LABEL_BACKGROUND = (0, 0, 0)

# Axis length in units of the 3D reference head (whose 68 points span about 1.5 units across).
DEFAULT_AXIS_LENGTH = 0.8

# Contours of the 68-point (iBUG 300-W) layout: (first, last, closed).
MESH_GROUPS: tuple[tuple[str, int, int, bool], ...] = (
    ("jaw", 0, 16, False),
    ("right_brow", 17, 21, False),
    ("left_brow", 22, 26, False),
    ("nose_bridge", 27, 30, False),
    ("nose_base", 30, 35, False),
    ("right_eye", 36, 41, True),
    ("left_eye", 42, 47, True),
    ("outer_lips", 48, 59, True),
    ("inner_lips", 60, 67, True),
)

_MIN_DEPTH = 1e-6
_COORD_LIMIT = 1e7  # pixels; beyond this a coordinate is not drawable


# --- Geometry (pure) --------------------------------------------------------------------------------
def _wh_rows(wh, n: int) -> np.ndarray:
    """``(n, 2)`` int64 sizes from one ``(w, h)`` or one per face."""
    arr = np.asarray(wh, dtype=np.int64)
    if arr.ndim == 1:
        arr = np.broadcast_to(arr, (n, 2)).copy()
    if arr.shape != (n, 2):
        raise ValueError(f"expected (w, h) or ({n}, 2) sizes, got shape {arr.shape}")
    return arr


def project_to_image(points, poses, network_wh, original_wh) -> np.ndarray:
    """Pixel positions ``(K, P, 2)`` in the original image of 3D reference ``points`` ``(P, 3)`` under
    ``poses`` ``(K, 6)``.

    Projected in the camera of the network's resized image (``network_wh``: one ``(w, h)`` or ``(K, 2)``)
    and scaled by ``original_wh / network_wh``, as the predictor does. Points at or behind the camera
    plane (depth <= 0) are NaN.
    """
    import torch

    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 6)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    k = poses.shape[0]
    if k == 0:
        return np.zeros((0, pts.shape[0], 2))
    net = _wh_rows(network_wh, k)
    orig = _wh_rows(original_wh, k).astype(np.float64)
    pose_t = torch.from_numpy(poses)
    intrinsics = geometry.image_intrinsics(torch.from_numpy(net[:, 0]), torch.from_numpy(net[:, 1]))
    uv = geometry.project_points(torch.from_numpy(pts), pose_t, intrinsics).numpy()
    depth = geometry.transform_points(torch.from_numpy(pts), pose_t)[..., 2].numpy()
    scale = (orig / net.astype(np.float64))[:, None, :]
    uv = uv * scale
    uv[depth <= _MIN_DEPTH] = np.nan
    return uv


def axis_endpoints(poses, network_wh, original_wh, length: float = DEFAULT_AXIS_LENGTH) -> np.ndarray:
    """``(K, 4, 2)`` pixels of the head's origin and of the ends of its x, y and z axes (``length``
    units of the reference head), in the original image (see :func:`project_to_image`)."""
    points = np.vstack([np.zeros((1, 3)), np.eye(3) * float(length)])
    return project_to_image(points, poses, network_wh, original_wh)


def mesh_polylines(landmarks_68) -> list[tuple[str, np.ndarray]]:
    """The 68 landmarks ``(K, 68, 2)`` as named contours ``(K, n, 2)``; closed contours repeat their
    first point at the end."""
    lms = np.asarray(landmarks_68, dtype=np.float64)
    if lms.shape[-2:] != (68, 2):
        raise ValueError(f"expected (K, 68, 2) landmarks, got {lms.shape}")
    out = []
    for name, first, last, closed in MESH_GROUPS:
        idx = list(range(first, last + 1)) + ([first] if closed else [])
        out.append((name, lms[:, idx, :]))
    return out


def clip_segments(p0, p1, width: float, height: float, margin: float = 0.0):
    """Segments ``p0 → p1`` ``(..., 2)`` clipped to the rectangle ``[-margin, width - 1 + margin] ×
    [-margin, height - 1 + margin]`` (Liang-Barsky). Returns clipped ``(q0, q1, visible)``;
    segments with a NaN end are invisible."""
    p0 = np.asarray(p0, dtype=np.float64)
    p1 = np.asarray(p1, dtype=np.float64)
    d = p1 - p0
    lo = np.array([-margin, -margin])
    hi = np.array([width - 1 + margin, height - 1 + margin])
    t0 = np.zeros(p0.shape[:-1])
    t1 = np.ones(p0.shape[:-1])
    visible = np.isfinite(p0).all(-1) & np.isfinite(p1).all(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis in range(2):
            for p, q in ((-d[..., axis], p0[..., axis] - lo[axis]), (d[..., axis], hi[axis] - p0[..., axis])):
                parallel = p == 0
                visible &= ~(parallel & (q < 0))
                r = np.where(parallel, 0.0, q / np.where(parallel, 1.0, p))
                entering = ~parallel & (p < 0)
                leaving = ~parallel & (p > 0)
                t0 = np.where(entering, np.maximum(t0, r), t0)
                t1 = np.where(leaving, np.minimum(t1, r), t1)
    visible &= t0 <= t1
    q0 = p0 + t0[..., None] * d
    q1 = p0 + t1[..., None] * d
    return q0, q1, visible


@dataclass(frozen=True)
class Style:
    """Sizes of a drawing, in pixels of the drawn image."""

    line_width: int
    point_radius: int
    font_size: int


def style_for(width: int, height: int) -> Style:
    """Line width, landmark radius and font size that read well on a ``width x height`` image."""
    side = max(int(width), int(height), 1)
    line = max(1, round(side / 500))
    return Style(line_width=line, point_radius=max(1, round(side / 400)), font_size=max(10, round(side / 60)))


def face_label(score: float, yaw_pitch_roll: Sequence[float]) -> str:
    """The text drawn with a face: its score and yaw / pitch / roll in degrees."""
    y, p, r = (int(round(float(v))) for v in yaw_pitch_roll)  # whole degrees; never "-0"
    return f"{float(score):.2f}  yaw {y:+d}  pitch {p:+d}  roll {r:+d}"


# --- Faces from table columns -----------------------------------------------------------------------
def faces_from_columns(
    width: int,
    height: int,
    network_wh: tuple[int, int] | None,
    *,
    scores,
    boxes,
    poses,
    yaw_pitch_roll,
    landmarks_5=None,
    align_matrices=None,
):
    """An :class:`~img2pose_core.predictor.ImageFaces` from stored columns (e.g. the faces table).

    Without the network's size (older rows, or a failed read) the original size is used: the pose then
    describes the face up to the rounding of the resize (docs/poses.md).
    """
    from .predictor import ImageFaces

    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    k = scores.shape[0]
    net = (int(width), int(height)) if not network_wh or None in network_wh else (int(network_wh[0]), int(network_wh[1]))
    lms5 = np.zeros((k, 5, 2)) if landmarks_5 is None else np.asarray(landmarks_5, dtype=np.float64).reshape(k, 5, 2)
    mats = np.zeros((k, 2, 3)) if align_matrices is None else np.asarray(align_matrices, dtype=np.float64).reshape(k, 2, 3)
    return ImageFaces(
        width=int(width),
        height=int(height),
        network_size=net,
        scores=scores,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(k, 4),
        poses=np.asarray(poses, dtype=np.float64).reshape(k, 6),
        yaw_pitch_roll=np.asarray(yaw_pitch_roll, dtype=np.float64).reshape(k, 3),
        landmarks_5=lms5,
        align_matrices=mats,
    )


# --- Drawing ----------------------------------------------------------------------------------------
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # noqa: BLE001 - Pillow without FreeType: the bitmap font, fixed size
        return ImageFont.load_default()


def _draw_segments(draw: ImageDraw.ImageDraw, p0, p1, colour, width: int, size: tuple[int, int]) -> None:
    q0, q1, visible = clip_segments(p0, p1, size[0], size[1], margin=width + 2)
    for a, b in zip(q0[visible], q1[visible]):
        draw.line([(float(a[0]), float(a[1])), (float(b[0]), float(b[1]))], fill=colour, width=width)


def _draw_points(draw: ImageDraw.ImageDraw, points, colour, radius: int, size: tuple[int, int]) -> None:
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    ok = np.isfinite(pts).all(1)
    ok &= (pts[:, 0] > -radius - 1) & (pts[:, 0] < size[0] + radius) & (pts[:, 1] > -radius - 1) & (pts[:, 1] < size[1] + radius)
    for x, y in np.rint(pts[ok]).astype(np.int64):
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)


def render_faces(
    image: Image.Image | np.ndarray,
    faces,
    *,
    points_68=None,
    mesh: bool = False,
    box: bool = True,
    landmarks: bool = True,
    axes: bool = True,
    labels: bool = True,
    axis_length: float = DEFAULT_AXIS_LENGTH,
    max_side: int | None = None,
    min_side: int | None = None,
    max_labels: int | None = None,
    style: Style | None = None,
) -> Image.Image:
    """A copy of ``image`` (RGB) with every face of ``faces`` (an ``ImageFaces``) drawn on it.

    Per face: the box; the 68 landmarks (``faces.landmarks_68``, else projected from ``points_68``, the
    bundle's 3D reference, when given) or else the 5 landmarks; the pose axes; the score and angles.
    ``mesh`` also joins the 68 landmarks into contours. ``max_side`` shrinks the picture first and
    ``min_side`` enlarges a small one (the geometry is scaled, not the strokes). ``max_labels`` writes
    the text of the first faces only (faces come in order of decreasing score). The layers can be
    switched off one by one.
    """
    canvas = image.convert("RGB") if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image)).convert("RGB")
    if canvas.size != (faces.width, faces.height):
        raise ValueError(
            f"the image is {canvas.size[0]}x{canvas.size[1]} but the faces belong to a "
            f"{faces.width}x{faces.height} image"
        )
    scale = 1.0
    if max_side and max(canvas.size) > max_side:
        scale = max_side / max(canvas.size)
    elif min_side and max(canvas.size) < min_side:
        scale = min_side / max(canvas.size)
        if max_side:
            scale = min(scale, max_side / max(canvas.size))
    if scale != 1.0:
        new = (max(1, round(canvas.width * scale)), max(1, round(canvas.height * scale)))
        canvas = canvas.resize(new, Image.Resampling.LANCZOS)
    else:
        canvas = canvas.copy()
    size = canvas.size
    st = style or style_for(*size)
    draw = ImageDraw.Draw(canvas)
    n = len(faces)
    if n == 0:
        return canvas

    # All the geometry, for every face at once.
    net, orig = faces.network_size, (faces.width, faces.height)
    lms68 = faces.landmarks_68
    if lms68 is None and points_68 is not None:
        lms68 = project_to_image(points_68, faces.poses, net, orig)
    lms68 = None if lms68 is None else np.asarray(lms68, dtype=np.float64) * scale
    lms5 = np.asarray(faces.landmarks_5, dtype=np.float64) * scale
    ends = axis_endpoints(faces.poses, net, orig, axis_length) * scale
    boxes = np.asarray(faces.boxes, dtype=np.float64) * scale
    polylines = mesh_polylines(lms68) if (mesh and lms68 is not None) else []
    font = _font(st.font_size) if labels else None

    for i in range(n):
        if box:
            x1, y1, x2, y2 = boxes[i]
            if np.isfinite(boxes[i]).all():
                draw.rectangle([x1, y1, x2, y2], outline=BOX_COLOUR, width=st.line_width)
        for _, line in polylines:
            _draw_segments(draw, line[i, :-1], line[i, 1:], MESH_COLOUR, max(1, st.line_width // 2), size)
        if landmarks:
            if lms68 is not None:
                _draw_points(draw, lms68[i], LANDMARK_68_COLOUR, st.point_radius, size)
            else:
                _draw_points(draw, lms5[i], LANDMARK_5_COLOUR, st.point_radius + 1, size)
        if axes:
            origin = np.broadcast_to(ends[i, 0], (3, 2))
            for axis in range(3):
                _draw_segments(draw, origin[axis : axis + 1], ends[i, axis + 1 : axis + 2], AXIS_COLOURS[axis],
                               st.line_width + 1, size)  # fmt: skip
    if labels:
        # Labels last, so no face's strokes cover another's text.
        for i in range(n if max_labels is None else min(n, max(0, max_labels))):
            if not np.isfinite(boxes[i]).all():
                continue
            _draw_label(draw, face_label(faces.scores[i], faces.yaw_pitch_roll[i]), boxes[i], font, size)
    return canvas


def _draw_label(draw: ImageDraw.ImageDraw, text: str, box, font, size: tuple[int, int]) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left, bottom - top
    pad = max(1, th // 5)
    x = float(np.clip(box[0], 0, max(0, size[0] - tw - 2 * pad)))
    y = float(box[1]) - th - 2 * pad - 1
    if y < 0:  # no room above the box: inside it, at the top
        y = max(0.0, float(box[1]) + 1)
    y = min(y, max(0.0, size[1] - th - 2 * pad))
    draw.rectangle([x, y, x + tw + 2 * pad, y + th + 2 * pad], fill=LABEL_BACKGROUND)
    draw.text((x + pad - left, y + pad - top), text, fill=LABEL_COLOUR, font=font)
