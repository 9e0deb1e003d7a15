"""Pictures taken from an output: its aligned crops, and images drawn with their stored poses
(:mod:`img2pose_core.render`)."""

from __future__ import annotations

import io
import re
import tarfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from .queries import OutputTables, sample_rows
from .storage import read_uri_bytes

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["Crop", "RenderedSample", "read_crops", "render_sample"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# --- Rendered samples -------------------------------------------------------------------------------
@dataclass
class RenderedSample:
    """One image of a sample: drawn (``image``) or skipped (``message`` says why)."""

    uri: str
    run_id: str
    key: str  # file name stem: the image's sha256, 16 hex digits
    faces: int
    image: Any = None  # PIL.Image.Image
    message: str | None = None


@dataclass
class _FaceColumns:
    """The sampled faces' columns as arrays, one row per face, in ``uris`` order."""

    uris: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    poses: np.ndarray
    angles: np.ndarray
    landmarks_5: np.ndarray
    align_matrices: np.ndarray

    @classmethod
    def of(cls, faces: "pa.Table") -> "_FaceColumns":
        """The columns of :func:`.queries.sample_rows`' faces table."""
        cols = {name: faces.column(name) for name in faces.column_names}
        uris = np.asarray(cols["image_uri"].to_pylist(), dtype=object)

        def block(names: list[str]) -> np.ndarray:
            return np.stack([cols[n].to_numpy() for n in names], axis=1) if len(uris) else np.zeros((0, len(names)))

        return cls(
            uris=uris, scores=cols["score"].to_numpy(), boxes=block(["box_x1", "box_y1", "box_x2", "box_y2"]),
            poses=block(["rx", "ry", "rz", "tx", "ty", "tz"]), angles=block(["yaw", "pitch", "roll"]),
            landmarks_5=cols["landmarks_5"].combine_chunks().flatten().to_numpy().reshape(-1, 5, 2),
            align_matrices=cols["align_matrix"].combine_chunks().flatten().to_numpy().reshape(-1, 2, 3),
        )  # fmt: skip

    def of_image(self, sel: np.ndarray) -> dict[str, np.ndarray]:
        """The keyword arguments of :func:`img2pose_core.render.faces_from_columns` for rows ``sel``."""
        return dict(scores=self.scores[sel], boxes=self.boxes[sel], poses=self.poses[sel],
                    yaw_pitch_roll=self.angles[sel], landmarks_5=self.landmarks_5[sel],
                    align_matrices=self.align_matrices[sel])  # fmt: skip


def _unique_key(sha: str, used: set[str]) -> str:
    """A file name stem for an image: its sha256's first 16 digits, else a counter; never one in ``used``."""
    key = sha[:16] if _HEX64.match(sha) else f"image-{len(used):06d}"
    while key in used:
        key = f"{key}-{len(used)}"
    used.add(key)
    return key


def _draw(sample: RenderedSample, row: dict, faces: dict[str, np.ndarray], s3_endpoint_url: str | None,
          drawing: dict[str, Any]) -> RenderedSample:  # fmt: skip
    """``sample`` with its image drawn, or with the message of why it could not be."""
    from ..imageio import ImageDecodeError, decode_image
    from ..render import faces_from_columns, render_faces

    try:
        decoded = decode_image(read_uri_bytes(sample.uri, s3_endpoint_url))
    except (OSError, ValueError, tarfile.TarError) as exc:
        sample.message = f"cannot read the image: {exc}"
        return sample
    except ImageDecodeError as exc:
        sample.message = f"cannot decode the image ({exc.status}): {exc.message}"
        return sample
    if (decoded.width, decoded.height) != (row["width"], row["height"]):
        sample.message = (f"the image is now {decoded.width}x{decoded.height}, the run saw "
                          f"{row['width']}x{row['height']}: changed since the run")  # fmt: skip
        return sample
    net = (row["network_width"], row["network_height"])
    image_faces = faces_from_columns(row["width"], row["height"], net, **faces)
    sample.image = render_faces(decoded.pixels, image_faces, **drawing)
    return sample


def render_sample(
    tables: OutputTables,
    count: int,
    *,
    seed: str = "0",
    points_68: np.ndarray | None = None,
    mesh: bool = False,
    axis_length: float | None = None,
    max_side: int | None = None,
    min_side: int | None = None,
    max_labels: int | None = None,
) -> Iterator[RenderedSample]:
    """Draw ``count`` images that have faces (a repeatable pseudo-random sample, varied by ``seed``)
    from the stored rows: box, 5 landmarks (68 with ``points_68``), pose axes, score and angles."""
    from ..render import DEFAULT_AXIS_LENGTH

    sampled = sample_rows(tables, count, seed)
    if sampled is None:
        return
    picked, faces = sampled
    columns = _FaceColumns.of(faces)
    drawing = dict(points_68=points_68, mesh=mesh, axis_length=axis_length or DEFAULT_AXIS_LENGTH,
                   max_side=max_side, min_side=min_side, max_labels=max_labels)  # fmt: skip
    used: set[str] = set()
    for row in picked.to_pylist():
        sel = np.flatnonzero(columns.uris == row["image_uri"])
        key = _unique_key(row["image_sha256"] or "", used)
        sample = RenderedSample(uri=row["image_uri"], run_id=row["run_id"], key=key, faces=int(sel.size))
        yield _draw(sample, row, columns.of_image(sel), tables.s3_endpoint_url, drawing)


# --- Aligned crops ----------------------------------------------------------------------------------
@dataclass
class Crop:
    """An aligned crop ready to embed: its type, bytes and caption (score · yaw pitch roll)."""

    mime: str
    data: bytes
    caption: str


def _as_web_image(data: bytes) -> tuple[str, bytes]:
    """(mime, bytes) of an image to embed: JPEG as is, anything else re-encoded as JPEG."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    with Image.open(io.BytesIO(data)) as im:
        if im.format == "JPEG":
            return "image/jpeg", data
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=90)
        return "image/jpeg", buf.getvalue()


def read_crops(rows: list[tuple], s3_endpoint_url: str | None) -> tuple[list[Crop], list[str]]:
    """The crops of :func:`.queries.crop_sample` rows that could be read, and ``uri: why`` of the others."""
    crops, missing = [], []
    for uri, score, yaw, pitch, roll in rows:
        try:
            mime, data = _as_web_image(read_uri_bytes(uri, s3_endpoint_url))
        except Exception as exc:  # noqa: BLE001 - any unreadable crop is listed, not fatal
            missing.append(f"{uri}: {exc}")
            continue
        crops.append(Crop(mime, data, f"{score:.2f} · y {yaw:+.0f} p {pitch:+.0f} r {roll:+.0f}"))
    return crops, missing
