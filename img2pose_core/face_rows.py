"""The face row: the one place that turns detections into rows of the ``faces`` table.

A face row is the image's identity (``run_id``, ``image_uri``, ``image_sha256``, ``model_sha256``)
and the per-face columns of :data:`FACE_FIELDS`, in the order and types of
:data:`img2pose_core.output.FACES_SCHEMA` (docs/schema.md). The job carries each image's faces as one
list cell of :data:`FACE_STRUCT` through its pipeline (so that an image and its faces stay one row
until the write) and unpacks them when it writes; the Python API builds the same rows at once. Both
go through :func:`face_columns`, so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .output import FACES_SCHEMA

__all__ = ["IMAGE_FIELDS", "FACE_FIELDS", "FACE_STRUCT", "face_columns", "face_lists", "face_rows"]

# The columns a face row takes from its image and its run; the rest describe the face itself.
IMAGE_FIELDS = ("run_id", "image_uri", "image_sha256", "model_sha256")
FACE_FIELDS = [f for f in FACES_SCHEMA if f.name not in IMAGE_FIELDS]
FACE_STRUCT = pa.struct(FACE_FIELDS)


def _typed(values: Any, field: pa.Field) -> pa.Array:
    """``values`` as an Arrow array of ``field``'s type; numpy does the narrowing casts (float64 scores to
    float32), which pyarrow would refuse as truncation."""
    if pa.types.is_fixed_size_list(field.type):
        item = field.type.value_type
        flat = np.ascontiguousarray(values, dtype=item.to_pandas_dtype()).reshape(-1)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat, item), type=field.type)
    return pa.array(np.asarray(values, dtype=field.type.to_pandas_dtype()), field.type)


def face_columns(results: Sequence[Any | None]) -> tuple[np.ndarray, dict[str, pa.Array]]:
    """Faces per image, and the :data:`FACE_FIELDS` columns of all faces of ``results`` in order.

    Each result is an :class:`~img2pose_core.predictor.ImageFaces` (or anything with its arrays:
    ``scores``, ``boxes``, ``poses``, ``yaw_pitch_roll``, ``landmarks_5``, ``align_matrices``), or None
    for an image that has no faces to report (it did not run). ``crop_uri`` is null: crops are written
    later, by the job's crop stage.
    """
    counts = np.array([len(r) if r is not None else 0 for r in results], dtype=np.int32)
    present = [r for r in results if r is not None and len(r)]
    total = int(counts.sum())

    def cat(attr: str, width: int) -> np.ndarray:
        arrays = [np.asarray(getattr(r, attr)).reshape(len(r), width) for r in present]
        return np.concatenate(arrays) if arrays else np.zeros((0, width))

    boxes, poses, angles = cat("boxes", 4), cat("poses", 6), cat("yaw_pitch_roll", 3)
    raw = {
        "face_index": np.concatenate([np.arange(c) for c in counts]) if total else np.zeros(0),
        "score": cat("scores", 1)[:, 0],
        "box_x1": boxes[:, 0], "box_y1": boxes[:, 1], "box_x2": boxes[:, 2], "box_y2": boxes[:, 3],
        "rx": poses[:, 0], "ry": poses[:, 1], "rz": poses[:, 2],
        "tx": poses[:, 3], "ty": poses[:, 4], "tz": poses[:, 5],
        "yaw": angles[:, 0], "pitch": angles[:, 1], "roll": angles[:, 2],
        "landmarks_5": cat("landmarks_5", 10),
        "align_matrix": cat("align_matrices", 6),
    }  # fmt: skip
    columns = {f.name: _typed(raw[f.name], f) for f in FACE_FIELDS if f.name in raw}
    columns["crop_uri"] = pa.nulls(total, pa.string())
    return counts, columns


def face_lists(results: Sequence[Any | None]) -> tuple[np.ndarray, pa.ListArray]:
    """Faces per image, and one list cell of :data:`FACE_STRUCT` per image (empty for None)."""
    counts, columns = face_columns(results)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int32())
    struct = pa.StructArray.from_arrays([columns[f.name] for f in FACE_FIELDS], fields=FACE_FIELDS)
    return counts, pa.ListArray.from_arrays(offsets, struct, type=pa.list_(FACE_STRUCT))


def face_rows(faces: pa.Array | pa.ChunkedArray, image_columns: dict[str, Any]) -> pa.Table:
    """The ``faces`` table rows of per-image face lists: one row per face, :data:`FACE_STRUCT` unpacked,
    each image's ``image_columns`` (per image: an Arrow array; per run: a str or None) repeated on its
    faces. A null given for a non-nullable image column makes that column nullable (the Python API's
    results may not know their run or checksum)."""
    lists = faces.combine_chunks() if isinstance(faces, pa.ChunkedArray) else faces
    parents = pc.list_parent_indices(lists)
    flat = pc.list_flatten(lists)
    n = len(flat)
    schema, arrays = FACES_SCHEMA, []
    for i, field in enumerate(FACES_SCHEMA):
        if field.name not in IMAGE_FIELDS:
            arrays.append(flat.field(field.name))
            continue
        value = image_columns.get(field.name)
        column = pc.take(value, parents) if isinstance(value, (pa.Array, pa.ChunkedArray)) else pa.array([value] * n, field.type)
        if not field.nullable and (value is None or column.null_count):
            schema = schema.set(i, field.with_nullable(True))
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=schema)
