"""The job's datasink: both tables of a block written by one task, idempotently.

Each write task turns its rows into one ``faces`` file and one ``images`` file with the same name,
derived from the block's image URIs, so a retried task overwrites its own files instead of adding
new ones. The faces file is written first and the images file last: an images file is the commit
marker of its faces file, and a faces file without its images file (a crash in between) is an orphan
that the next run deletes before it starts (:func:`remove_orphans`).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections import Counter
from datetime import datetime, timezone
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.block import Block, BlockAccessor
from ray.data.datasource.datasink import Datasink, WriteResult

from .inputs import IGNORED
from .schema import FACES_SCHEMA, IMAGES_SCHEMA
from .storage import StorageConfig, join_uri, with_retries

__all__ = ["AnnotationSink", "remove_orphans", "part_name", "explode_faces", "images_table", "is_part_file", "PART_PATTERN"]

# run_id=<run id>/part-<32 hex>.parquet: the only files the job writes under faces/ and images/.
PART_PATTERN = re.compile(r"run_id=[A-Za-z0-9_\-][A-Za-z0-9_.\-]*/part-[0-9a-f]{32}\.parquet")
EXAMPLES = 5  # names of each counted kind kept in the run manifest


def part_name(image_uris: Iterable[str]) -> str:
    """File name of a block's part: a digest of its image URIs (order-independent)."""
    h = hashlib.sha256()
    for uri in sorted(image_uris):
        h.update(uri.encode("utf-8"))
        h.update(b"\0")
    return f"part-{h.hexdigest()[:32]}.parquet"


def images_table(table: pa.Table, run_id: str, model_sha256: str, processed_at: datetime) -> pa.Table:
    """The ``images`` rows of a block (one per image, whatever its status)."""
    n = table.num_rows
    return pa.table(
        {
            "run_id": pa.array([run_id] * n, pa.string()),
            "image_uri": table["image_uri"],
            "image_sha256": table["image_sha256"],
            "width": table["width"],
            "height": table["height"],
            "network_width": table["network_width"],
            "network_height": table["network_height"],
            "num_faces": table["num_faces"],
            "status": table["status"],
            "error": table["error"],
            "model_sha256": pa.array([model_sha256] * n, pa.string()),
            "processed_at": pa.array([processed_at] * n, pa.timestamp("us", tz="UTC")),
        },
        schema=IMAGES_SCHEMA,
    )


def explode_faces(table: pa.Table, run_id: str, model_sha256: str) -> pa.Table:
    """The ``faces`` rows of a block: each image's list of faces, one row per face."""
    faces = table["faces"].combine_chunks()
    parents = pc.list_parent_indices(faces)
    flat = pc.list_flatten(faces)
    n = len(flat)
    columns = {
        "run_id": pa.array([run_id] * n, pa.string()),
        "image_uri": pc.take(table["image_uri"], parents),
        "image_sha256": pc.take(table["image_sha256"], parents),
    }
    for field in FACES_SCHEMA:
        if field.name not in columns and field.name != "model_sha256":
            columns[field.name] = flat.field(field.name)
    columns["model_sha256"] = pa.array([model_sha256] * n, pa.string())
    return pa.table(columns, schema=FACES_SCHEMA)


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


class AnnotationSink(Datasink[dict]):
    """Writes ``faces/run_id=R/part-X.parquet`` then ``images/run_id=R/part-X.parquet`` per task."""

    def __init__(
        self, output: str, storage: StorageConfig, run_id: str, model_sha256: str, rows_per_file: int = 5000
    ) -> None:
        self.output, self.storage, self.run_id, self.model_sha256 = output, storage, run_id, model_sha256
        self.rows_per_file = rows_per_file
        self.totals: dict = _empty_result()

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks: Iterable[Block], ctx) -> dict:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        result = _empty_result()
        if not tables:
            return result
        table = pa.concat_tables(tables, promote_options="permissive")
        # Entries counted in the run manifest instead of the tables (skipped, markers, sidecars ...).
        counted = pc.is_in(table["status"], pa.array(sorted(IGNORED)))
        for status, uri in zip(table.filter(counted)["status"].to_pylist(), table.filter(counted)["image_uri"].to_pylist()):
            entry = result["ignored"].setdefault(status, {"count": 0, "examples": []})
            entry["count"] += 1
            if len(entry["examples"]) < EXAMPLES:
                entry["examples"].append(uri)
        result["skipped"] = result["ignored"].pop("skipped", {}).get("count", 0)
        table = table.filter(pc.invert(counted))
        if table.num_rows == 0:
            return result
        name = part_name(table["image_uri"].to_pylist())
        processed_at = datetime.now(timezone.utc)
        faces = explode_faces(table, self.run_id, self.model_sha256)
        images = images_table(table, self.run_id, self.model_sha256, processed_at)
        partition = f"run_id={self.run_id}"
        if faces.num_rows:
            self.storage.write_bytes(join_uri(self.output, "faces", partition, name), _parquet_bytes(faces))
        # Last: its presence commits the faces file above.
        self.storage.write_bytes(join_uri(self.output, "images", partition, name), _parquet_bytes(images))
        result["statuses"] = dict(Counter(images["status"].to_pylist()))
        result["faces"] = faces.num_rows
        result["files"] = 1
        return result

    def on_write_complete(self, write_result: WriteResult[dict]) -> None:
        totals: dict = _empty_result()
        statuses: Counter = Counter()
        for r in write_result.write_returns:
            if not r:
                continue
            statuses.update(r["statuses"])
            totals["faces"] += r["faces"]
            totals["files"] += r["files"]
            totals["skipped"] += r["skipped"]
            for reason, entry in r.get("ignored", {}).items():
                merged = totals["ignored"].setdefault(reason, {"count": 0, "examples": []})
                merged["count"] += entry["count"]
                merged["examples"] = sorted(merged["examples"] + entry["examples"])[:EXAMPLES]
        totals["statuses"] = dict(statuses)
        self.totals = totals

    def get_name(self) -> str:
        return "WriteFacesAndImages"


def _empty_result() -> dict:
    return {"statuses": {}, "faces": 0, "files": 0, "skipped": 0, "ignored": {}}


def is_part_file(relative: str) -> bool:
    """Whether ``relative`` (below ``faces/`` or ``images/``) names a file this job writes."""
    return PART_PATTERN.fullmatch(relative) is not None


def remove_orphans(output: str, storage: StorageConfig, log=print) -> int:
    """Delete faces files that have no images file of the same name (left by a crash mid-write).

    Only files named as the job names them are considered: anything else under ``faces/`` is not the
    job's to delete.
    """
    fs, root = storage.fs(output)
    faces_root = f"{root.rstrip('/')}/faces"
    images_root = f"{root.rstrip('/')}/images"
    try:
        faces_files = with_retries(lambda: fs.find(faces_root))
    except FileNotFoundError:
        return 0
    if not faces_files:
        return 0
    try:
        images_files = set(with_retries(lambda: fs.find(images_root)))
    except FileNotFoundError:
        images_files = set()
    removed = 0
    for path in faces_files:
        if not is_part_file(path[len(faces_root) :].lstrip("/")):
            continue
        twin = images_root + path[len(faces_root) :]
        if twin not in images_files:
            with_retries(lambda: fs.rm_file(path))
            removed += 1
    if removed:
        log(f"removed {removed} faces file(s) left without their images file by an interrupted run")
    return removed

