"""The output contract of the annotation job: the Arrow schemas of the ``faces`` and ``images`` tables.

This module is the one definition; ``docs/schema.md`` describes every column and tests check that
the two agree. Change a column here only with a new ``SCHEMA_VERSION``.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["SCHEMA_VERSION", "FACES_SCHEMA", "IMAGES_SCHEMA", "STATUSES", "empty_table"]

SCHEMA_VERSION = 1

# Status classes of the images table ("ok" or why an image has no faces rows).
STATUSES = {
    "ok": "decoded and run through the model (num_faces may be 0)",
    "unreadable": "the bytes could not be read (missing object, permission, unresolvable or refusing host, store error after retries, --read-timeout passed)",
    "not_a_file": "not a regular file: a named pipe, socket or device, a symbolic link to a folder, a link inside a tar shard (never read)",
    "not_allowed": "a manifest row naming what the operator did not allow: a local file without --allow-local-files, a path leaving the manifest's folder, another scheme, a cloud metadata service; or a file inside the output (never read)",
    "not_an_image": "not a format the decoder knows (text, HTML, empty file ...)",
    "corrupt": "an image format whose data is truncated or damaged",
    "unsupported": "a valid image in a pixel mode without an RGB meaning",
    "too_large": "declared pixel count above --max-pixels (refused before decoding)",
    "too_small": "so elongated that the model's resize leaves no pixel on one side",
    "inference_error": "the model failed on this image (the message says why)",
}

_META = {b"img2pose.schema_version": str(SCHEMA_VERSION).encode()}

FACES_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("image_uri", pa.string(), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("face_index", pa.int32(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("box_x1", pa.float32(), nullable=False),
        pa.field("box_y1", pa.float32(), nullable=False),
        pa.field("box_x2", pa.float32(), nullable=False),
        pa.field("box_y2", pa.float32(), nullable=False),
        pa.field("rx", pa.float64(), nullable=False),
        pa.field("ry", pa.float64(), nullable=False),
        pa.field("rz", pa.float64(), nullable=False),
        pa.field("tx", pa.float64(), nullable=False),
        pa.field("ty", pa.float64(), nullable=False),
        pa.field("tz", pa.float64(), nullable=False),
        pa.field("yaw", pa.float64(), nullable=False),
        pa.field("pitch", pa.float64(), nullable=False),
        pa.field("roll", pa.float64(), nullable=False),
        # List items are named "element", as Parquet names them, so files read back to this schema.
        pa.field("landmarks_5", pa.list_(pa.field("element", pa.float32(), nullable=False), 10), nullable=False),
        pa.field("align_matrix", pa.list_(pa.field("element", pa.float64(), nullable=False), 6), nullable=False),
        pa.field("crop_uri", pa.string(), nullable=True),
        pa.field("model_sha256", pa.string(), nullable=False),
    ],
    metadata=_META,
)

IMAGES_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("image_uri", pa.string(), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=True),
        pa.field("width", pa.int32(), nullable=True),
        pa.field("height", pa.int32(), nullable=True),
        pa.field("network_width", pa.int32(), nullable=True),
        pa.field("network_height", pa.int32(), nullable=True),
        pa.field("num_faces", pa.int32(), nullable=True),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=True),
        pa.field("model_sha256", pa.string(), nullable=False),
        pa.field("processed_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata=_META,
)


def empty_table(schema: pa.Schema) -> pa.Table:
    """A table with ``schema`` and no rows."""
    return schema.empty_table()
