"""The job's datasink: both tables of a block written by one task, idempotently.

Each write task turns its rows into one ``faces`` file and one ``images`` file with the same name,
derived from the block's image URIs, so a retried task overwrites its own files instead of adding
new ones. Where they go is the :class:`TableFolders` of the run:

- plain Parquet: ``OUTPUT/faces/<run_id>/`` and ``OUTPUT/images/<run_id>/``. The faces file is written
  first and the images file last: an images file is the commit marker of its faces file. A faces file
  without its images file (a crash in between) is an orphan, which a later run deletes once it is
  older than any live write could leave it (:func:`remove_orphans`), so a run never deletes the
  unfinished files of another run that is still going.
- Iceberg: the tables' data folders. Nothing is visible until the driver commits the files that the
  write tasks report (:func:`img2pose_core.iceberg.commit_run`).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.block import Block, BlockAccessor

from img2pose_core.face_rows import face_rows
from img2pose_core.output import IMAGES_SCHEMA, NOT_WRITTEN, PART_PATTERN
from img2pose_core.storage import StorageConfig, with_retries
from img2pose_core.uris import join_uri


__all__ = [
    "AnnotationSink", "TableFolders", "merge_write_results", "remove_orphans", "part_name", "explode_faces", "images_table", "is_part_file",
]  # fmt: skip

EXAMPLES = 5  # names of each counted kind kept in the run manifest
# A faces file is followed by its images file within seconds; one alone for this long is an orphan.
ORPHAN_AFTER_S = 3600.0


@dataclass(frozen=True)
class TableFolders:
    """The folders a run's ``faces`` and ``images`` files go to."""

    faces: str
    images: str

    @classmethod
    def plain(cls, output: str, run_id: str) -> "TableFolders":
        return cls(join_uri(output, "faces", run_id), join_uri(output, "images", run_id))


def part_name(image_uris: Iterable[str]) -> str:
    """File name of a block's part: a digest of its image URIs (order-independent)."""
    h = hashlib.sha256()
    for uri in sorted(image_uris):
        h.update(uri.encode("utf-8"))
        h.update(b"\0")
    return f"part-{h.hexdigest()[:32]}.parquet"


def images_table(
    table: pa.Table, run_id: str, model_sha256: str, processed_at: datetime, kept: pa.Schema | None = None
) -> pa.Table:
    """The ``images`` rows of a block (one per image, whatever its status), with the manifest columns
    of ``kept`` (``--keep-columns``) after the contract's own, decoded from each row's ``kept`` JSON."""
    n = table.num_rows
    base = pa.table(
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
    if not kept:
        return base
    raw = table["kept"].to_pylist() if "kept" in table.column_names else [None] * n
    values = [json.loads(r) if r else {} for r in raw]
    for f in kept:
        base = base.append_column(f, pa.array([v.get(f.name) for v in values], f.type))
    return base


def explode_faces(table: pa.Table, run_id: str, model_sha256: str) -> pa.Table:
    """The ``faces`` rows of a block: each image's list of faces, one row per face."""
    return face_rows(table["faces"], {"run_id": run_id, "image_uri": table["image_uri"],
                                      "image_sha256": table["image_sha256"], "model_sha256": model_sha256})


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


class AnnotationSink:
    """Writes ``<faces folder>/part-X.parquet`` then ``<images folder>/part-X.parquet`` per task, and
    reports the files it wrote (the Iceberg form commits them) and what it counted. The driver groups
    the rows and runs the tasks (:func:`jobs.writer.write_streaming`): files hold at most
    ``rows_per_file`` rows, and are written at least every ``--flush-interval``."""

    def __init__(
        self,
        folders: TableFolders,
        storage: StorageConfig,
        run_id: str,
        model_sha256: str,
        rows_per_file: int = 5000,
        kept: pa.Schema | None = None,
    ) -> None:
        self.folders, self.storage, self.run_id, self.model_sha256 = folders, storage, run_id, model_sha256
        self.rows_per_file = rows_per_file
        self.kept = kept
        self.totals: dict = _empty_result()

    def write(self, blocks: Iterable[Block], ctx) -> dict:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        result = _empty_result()
        if not tables:
            return result
        table = pa.concat_tables(tables, promote_options="permissive")
        # Entries counted in the run manifest instead of the tables (skipped, markers, sidecars ...).
        counted = pc.is_in(table["status"], pa.array(sorted(NOT_WRITTEN)))
        for status, uri in zip(table.filter(counted)["status"].to_pylist(), table.filter(counted)["image_uri"].to_pylist()):
            entry = result["ignored"].setdefault(status, {"count": 0, "examples": []})
            entry["count"] += 1
            if len(entry["examples"]) < EXAMPLES:
                entry["examples"].append(uri)
        result["skipped"] = result["ignored"].pop("skipped", {}).get("count", 0)
        table = table.filter(pc.invert(counted))
        statuses: Counter = Counter()
        # A file pair per rows_per_file images at most: one block may hold more (a whole model call).
        for start in range(0, table.num_rows, self.rows_per_file):
            chunk = table.slice(start, self.rows_per_file)
            faces_uri, images_uri, chunk_statuses, faces = self._write_pair(chunk)
            if faces_uri:
                result["faces_files"].append(faces_uri)
            result["images_files"].append(images_uri)
            statuses.update(chunk_statuses)
            result["faces"] += faces
            result["files"] += 1
        result["statuses"] = dict(statuses)
        return result

    def _write_pair(self, table: pa.Table) -> tuple[str | None, str, dict, int]:
        """The faces file (where there are faces), then the images file of ``table``'s images."""
        name = part_name(table["image_uri"].to_pylist())
        processed_at = datetime.now(timezone.utc)
        faces = explode_faces(table, self.run_id, self.model_sha256)
        images = images_table(table, self.run_id, self.model_sha256, processed_at, self.kept)
        faces_uri = None
        if faces.num_rows:
            faces_uri = join_uri(self.folders.faces, name)
            self.storage.write_bytes(faces_uri, _parquet_bytes(faces))
        # Last: its presence commits the faces file above.
        images_uri = join_uri(self.folders.images, name)
        self.storage.write_bytes(images_uri, _parquet_bytes(images))
        return faces_uri, images_uri, dict(Counter(images["status"].to_pylist())), faces.num_rows

    def finish(self, write_returns: list[dict]) -> dict:
        """The run's totals from its write tasks' results (kept in ``self.totals``)."""
        self.totals = merge_write_results(write_returns)
        return self.totals


def _empty_result() -> dict:
    return {"statuses": {}, "faces": 0, "files": 0, "skipped": 0, "ignored": {}, "faces_files": [], "images_files": []}


def merge_write_results(write_returns: list[dict]) -> dict:
    """The totals of write tasks' results (:meth:`AnnotationSink.write`): a whole run's, or a failed
    run's so far."""
    totals = _empty_result()
    statuses: Counter = Counter()
    for r in write_returns:
        if not r:
            continue
        statuses.update(r["statuses"])
        totals["faces"] += r["faces"]
        totals["files"] += r["files"]
        totals["skipped"] += r["skipped"]
        totals["faces_files"] += r.get("faces_files", [])
        totals["images_files"] += r.get("images_files", [])
        for reason, entry in r.get("ignored", {}).items():
            merged = totals["ignored"].setdefault(reason, {"count": 0, "examples": []})
            merged["count"] += entry["count"]
            merged["examples"] = sorted(merged["examples"] + entry["examples"])[:EXAMPLES]
    totals["statuses"] = dict(statuses)
    return totals


def is_part_file(relative: str) -> bool:
    """Whether ``relative`` (below ``faces/`` or ``images/``) names a file this job writes."""
    return PART_PATTERN.fullmatch(relative) is not None


def _age_s(info: dict) -> float | None:
    """Seconds since ``info`` (an fsspec listing entry) was last modified, None when unknown."""
    stamp = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if isinstance(stamp, datetime):
        stamp = stamp.timestamp()
    if stamp is None:
        return None
    try:
        return time.time() - float(stamp)
    except (TypeError, ValueError):
        return None


def remove_orphans(
    output: str, storage: StorageConfig, log=print, older_than_s: float = ORPHAN_AFTER_S, run_id: str | None = None
) -> int:
    """Delete faces files that have no images file of the same name (a crash between a task's two writes).

    A run that is writing now has such a file for a moment only, so one is deleted only when its run
    is over (its ``runs/<id>.json`` or ``<id>.failed.json`` exists), when it is older than
    ``older_than_s`` (a run killed without a word), or when it belongs to ``run_id`` (a failing run
    cleaning up after itself): no run deletes the unfinished files of another run that is still going.
    Only files named as the job names them are considered: anything else under ``faces/`` is not the job's.
    """
    fs, root = storage.fs(output)
    root = root.rstrip("/")
    faces_root, images_root = f"{root}/faces", f"{root}/images"
    where = f"{faces_root}/{run_id}" if run_id else faces_root
    try:
        faces_files = with_retries(lambda: fs.find(where, detail=True))
    except FileNotFoundError:
        return 0
    if not faces_files:
        return 0
    try:
        images_files = set(with_retries(lambda: fs.find(images_root if not run_id else f"{images_root}/{run_id}")))
    except FileNotFoundError:
        images_files = set()
    try:
        # Only a manifest (<id>.json) or a failure record (<id>.failed.json) says a run is over; its lease and
        # its log (<id>.lease, <id>.log) are there while it runs.
        names = [p.rsplit("/", 1)[-1] for p in with_retries(lambda: fs.find(f"{root}/runs"))]
        finished = {n.removesuffix(".json").removesuffix(".failed") for n in names if n.endswith(".json")}
    except FileNotFoundError:
        finished = set()
    removed = 0
    for path, info in faces_files.items():
        relative = path[len(faces_root) :].lstrip("/")
        if not is_part_file(relative) or images_root + "/" + relative in images_files:
            continue
        age = _age_s(info)
        owner = relative.split("/", 1)[0]
        if owner == run_id or owner in finished or (age is not None and age > older_than_s):
            with_retries(lambda: fs.rm_file(path))
            removed += 1
    if removed:
        log(f"removed {removed} faces file(s) left without their images file by an interrupted run")
    return removed
