"""The output contract of the annotation job: its tables, where they live, its run manifest, how to read them.

This module is the one definition, for the job that writes the tables and for everything that reads
them (``img2pose report``, ``img2pose render --from-output``, the tests). ``docs/schema.md`` describes
every column and tests check that the two agree. Change a column here only with a new ``SCHEMA_VERSION``.

Two forms, one schema:

- **plain Parquet** (the default, embedded): ``OUTPUT/faces/<run_id>/part-<32 hex>.parquet`` and
  ``OUTPUT/images/<run_id>/part-<32 hex>.parquet``. ``run_id`` is a column of every file and the
  folder names hold no ``key=value``, so every reader (pandas, pyarrow, DuckDB, Spark, Athena) reads
  the folders as they are, with one ``run_id`` type. Each images file commits the faces file of the same
  name (written first).
- **Apache Iceberg** (``--catalog``, for production and nightly runs): tables ``faces``, ``images`` and
  ``runs`` in a namespace, partitioned by ``run_id``; each run is committed atomically
  (:mod:`img2pose_core.iceberg`).

Both forms: ``OUTPUT/runs/<run_id>.json`` (the run manifest, :class:`RunManifest`) and
``OUTPUT/crops/<image_sha256>/<face_index>.jpg``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from typing import Any

import pyarrow as pa

from .storage import env_s3_endpoint, open_fs, with_s3_endpoint

__all__ = [
    "SCHEMA_VERSION",
    "FACES_SCHEMA",
    "IMAGES_SCHEMA",
    "RUNS_SCHEMA",
    "STATUSES",
    "NOT_WRITTEN",
    "TABLES",
    "PART_PATTERN",
    "LEGACY_PARTITION",
    "RunManifest",
    "latest_views_sql",
    "queries_sql",
    "part_relative_path",
    "empty_table",
    "OutputError",
    "open_tables",
    "read_run_manifests",
    "filesystem",
    "storage_options",
]

# 2: the run's folder is <run_id>/ (1 wrote run_id=<run_id>/, which made pandas and pyarrow fail to
# merge the column with the folder's partition value).
SCHEMA_VERSION = 2

TABLES = ("faces", "images")
# <run id>/part-<32 hex>.parquet below faces/ or images/: the only files the job writes there.
PART_PATTERN = re.compile(r"(?P<run_id>[A-Za-z0-9_\-][A-Za-z0-9_.\-]*)/part-[0-9a-f]{32}\.parquet")
# How schema version 1 named a run's folder; such outputs must be moved before a new run (docs/schema.md).
LEGACY_PARTITION = re.compile(r"run_id=[^/]+")

# Status classes of the images table ("ok" or why an image has no faces rows).
STATUSES = {
    "ok": "decoded and run through the model (num_faces may be 0)",
    "unreadable": "the bytes could not be read (missing object, permission, unresolvable or refusing host, store error after retries, --read-timeout passed)",
    "not_a_file": "not a regular file: a named pipe, socket or device, a symbolic link to a folder, a link inside a tar shard (never read)",
    "not_allowed": "a manifest row naming what the operator did not allow: a local file without --allow-local-files, a path leaving the manifest's folder, another scheme, a cloud metadata service; or a file inside the output (never read)",
    "not_an_image": "not a format the decoder knows (text, HTML, empty file ...)",
    "corrupt": "an image format whose data is truncated or damaged (also a damaged tar shard or compressed stream)",
    "unsupported": "a valid image in a pixel mode without an RGB meaning",
    "too_large": "declared pixel count above --max-pixels, or a file, tar member or shard above its byte limit (--max-shard-bytes for shards); refused before decoding",
    "not_a_tar": "named .tar but neither a tar nor a gzip, bzip2, xz or Zstandard tar (a ZIP, a picture, text ...)",
    "empty_shard": "a tar shard with no file to read: no byte, zero bytes only, folders only, or only markers, sidecars and copies",
    "empty_input": "an --input folder, prefix or glob that lists nothing when the job lists it (it held files when checked)",
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



# Entries that are counted in the run manifest (``counts.not_written``) instead of the tables.
NOT_WRITTEN = {
    "skipped": "already has an ok row (--skip-existing)",
    "marker": "a writer's completion marker (_SUCCESS, _committed_*, _started_*, .crc) or an object-store folder marker",
    "sidecar": "metadata beside an image or shard of the same stem (.json, .txt, .parquet ...)",
    "empty_url": "a manifest row with an empty URL",
    "duplicate": "the same input again (listed twice, reached through two inputs, or a tar member name repeated)",
}

# The Iceberg ``runs`` table: one row per committed run, the manifest as a row.
RUNS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("started_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("ended_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("images", pa.int64(), nullable=False),
        pa.field("ok", pa.int64(), nullable=False),
        pa.field("faces", pa.int64(), nullable=False),
        pa.field("faces_snapshot_id", pa.int64(), nullable=True),
        pa.field("images_snapshot_id", pa.int64(), nullable=True),
        pa.field("model_sha256", pa.string(), nullable=False),
        pa.field("bundle_digest", pa.string(), nullable=False),
        pa.field("manifest", pa.string(), nullable=False),
    ],
    metadata=_META,
)


def part_relative_path(run_id: str, name: str) -> str:
    """Where a part file of ``run_id`` lives below ``faces/`` or ``images/``."""
    return f"{run_id}/{name}"


def empty_table(schema: pa.Schema) -> pa.Table:
    """A table with ``schema`` and no rows."""
    return schema.empty_table()


@dataclass
class RunManifest:
    """``OUTPUT/runs/<run_id>.json``: what a run was asked to do, with what, and what came out.

    ``pipeline_s`` is the time of the distributed pipeline alone; ``wall_s`` the whole command, from
    the checks before any work to the last commit. ``counts`` holds ``images`` (rows written),
    ``by_status``, ``faces``, ``skipped``, ``not_written`` (by reason: ``count`` and ``examples``),
    ``files`` and ``orphans_removed``. ``iceberg`` (Iceberg form only) names the catalog, the namespace
    and the snapshot id this run committed to each table.
    """

    run_id: str
    status: str  # "succeeded" or "failed"
    started_at: str
    ended_at: str
    schema_version: int = SCHEMA_VERSION
    form: str = "parquet"  # or "iceberg"
    pipeline_s: float | None = None
    wall_s: float | None = None
    arguments: dict = field(default_factory=dict)
    inputs: list = field(default_factory=list)
    output: str = ""
    bundle: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    images_per_s: float | None = None
    iceberg: dict | None = None
    error: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, default=str).encode("utf-8")

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "RunManifest":
        """A manifest from its JSON object; keys it does not know are dropped, missing ones defaulted."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in doc.items() if k in known}
        if "pipeline_s" not in values and "duration_s" in doc:  # schema version 1 called it duration_s
            values["pipeline_s"] = doc["duration_s"]
        values.setdefault("run_id", "")
        values.setdefault("status", "succeeded")
        values.setdefault("started_at", "")
        values.setdefault("ended_at", "")
        return cls(**values)

    @classmethod
    def from_json(cls, raw: bytes | str) -> "RunManifest":
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("a run manifest is a JSON object")
        return cls.from_dict(doc)


def queries_sql() -> str:
    """``docs/queries.sql``: the base views of the plain form and the ``latest_*`` views of both forms."""
    return resources.files("img2pose_core").joinpath("queries.sql").read_text(encoding="utf-8")


def latest_views_sql() -> str:
    """The part of :func:`queries_sql` that defines ``latest_images`` and ``latest_faces`` from the
    ``images`` and ``faces`` views of all rows (whatever form registered them)."""
    text = queries_sql()
    marker = "-- @latest"
    return text[text.index(marker) :]


# --- Reading the output back -------------------------------------------------------------------------
class OutputError(ValueError):
    """An output that cannot be read; the message says what to fix."""


def storage_options(uri: str, s3_endpoint_url: str | None = None) -> dict:
    """fsspec options for ``uri``: an S3 endpoint (argument, else ``$AWS_ENDPOINT_URL``) for s3:// URLs."""
    return with_s3_endpoint(uri, None, s3_endpoint_url or env_s3_endpoint())


def filesystem(uri: str, s3_endpoint_url: str | None = None) -> tuple[Any, str]:
    """``(fsspec filesystem, path)`` of ``uri``."""
    return open_fs(uri, storage_options(uri, s3_endpoint_url))


def _with_extra_columns(base: pa.Schema, schemas: list[pa.Schema]) -> pa.Schema:
    """``base`` plus the columns that some files have beyond it (manifest columns kept with --keep-columns)."""
    out = base
    for schema in schemas:
        for f in schema:
            if f.name not in out.names:
                out = out.append(f.with_nullable(True))
    return out


def _dataset(files: list[str], fs, base: pa.Schema, extra: list[pa.Schema]):
    import pyarrow.dataset as pads

    if not files:
        return _with_extra_columns(base, extra).empty_table()
    return pads.dataset(files, schema=_with_extra_columns(base, extra), filesystem=fs, format="parquet")


def _plain_files(fs, root: str, table: str) -> list[str]:
    try:
        found = fs.find(f"{root}/{table}")
    except (FileNotFoundError, NotADirectoryError):
        return []
    prefix = f"{root}/{table}/"
    legacy = [p for p in found if LEGACY_PARTITION.match(p[len(prefix) :])]
    if legacy:
        raise OutputError(
            f"{table}/ holds folders of schema version 1 ({legacy[0][len(prefix):].split('/')[0]}/...): rename each "
            f"{table}/run_id=<id>/ to {table}/<id>/ (docs/schema.md, 'Schema versions')"
        )
    return sorted(p for p in found if PART_PATTERN.fullmatch(p[len(prefix) :]))


def read_run_manifests(output: str, *, s3_endpoint_url: str | None = None) -> list[RunManifest]:
    """The manifests under ``OUTPUT/runs/`` (``<id>.json`` and ``<id>.failed.json``), oldest first."""
    fs, root = filesystem(str(output).rstrip("/") or "/", s3_endpoint_url)
    root = root.rstrip("/")
    try:
        paths = sorted(fs.glob(f"{root}/runs/*.json"))
    except (OSError, ValueError):
        return []
    manifests = []
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        try:
            manifest = RunManifest.from_json(fs.cat_file(path))
        except (OSError, ValueError, TypeError):
            manifest = RunManifest(run_id=name.split(".", 1)[0], status="unreadable manifest", started_at="", ended_at="")
        if path.endswith(".failed.json"):
            manifest.status = "failed" if manifest.status == "succeeded" else manifest.status
        manifests.append(manifest)
    return sorted(manifests, key=lambda m: (m.started_at, m.run_id))


def _runs_table(manifests: list[RunManifest]) -> pa.Table:
    def count(m: RunManifest, key: str):
        value = (m.counts or {}).get(key)
        return int(value) if isinstance(value, (int, float)) else None

    return pa.table(
        {
            "run_id": pa.array([m.run_id for m in manifests], pa.string()),
            "status": pa.array([m.status for m in manifests], pa.string()),
            "form": pa.array([m.form for m in manifests], pa.string()),
            "started_at": pa.array([m.started_at or None for m in manifests], pa.string()),
            "ended_at": pa.array([m.ended_at or None for m in manifests], pa.string()),
            "images": pa.array([count(m, "images") for m in manifests], pa.int64()),
            "faces": pa.array([count(m, "faces") for m in manifests], pa.int64()),
            "skipped": pa.array([count(m, "skipped") for m in manifests], pa.int64()),
            "pipeline_s": pa.array([m.pipeline_s for m in manifests], pa.float64()),
            "wall_s": pa.array([m.wall_s for m in manifests], pa.float64()),
            "model_sha256": pa.array([(m.bundle or {}).get("model_sha256") for m in manifests], pa.string()),
        }
    )


def open_tables(
    output: str,
    *,
    catalog: str | None = None,
    namespace: str = "img2pose",
    s3_endpoint_url: str | None = None,
):
    """A DuckDB connection over a job's output, in either form, with the views of ``docs/queries.sql``:

    ``images`` and ``faces`` (every row of every run), ``runs`` (one row per run manifest),
    ``latest_images`` (one row per image, its latest state) and ``latest_faces`` (the faces of those
    rows). Files are scanned lazily through pyarrow datasets, so object stores work without DuckDB
    extensions; an Iceberg catalog gives the current snapshot of each table.
    """
    import duckdb

    output = str(output).rstrip("/") or "/"
    con = duckdb.connect()
    schemas = {"images": IMAGES_SCHEMA, "faces": FACES_SCHEMA}
    if catalog:
        from .iceberg import CatalogError, open_catalog, runs_rows, table_files
        from .iceberg import open_tables as open_iceberg

        try:
            tables = open_iceberg(open_catalog(catalog, None, s3_endpoint_url), namespace, create=False)
        except CatalogError as exc:
            raise OutputError(str(exc)) from exc
        for name, base in schemas.items():
            table = getattr(tables, name)
            files = table_files(table)
            fs, _ = filesystem(files[0] if files else output, s3_endpoint_url)
            paths = [filesystem(f, s3_endpoint_url)[1] for f in files]
            con.register(name, _dataset(paths, fs, base, [table.schema().as_arrow()]))
        manifests = [RunManifest.from_dict(d) for d in runs_rows(tables)]
    else:
        import pyarrow.parquet as pq

        try:
            fs, root = filesystem(output, s3_endpoint_url)
        except (ImportError, ValueError) as exc:
            raise OutputError(f"{output}: cannot open ({exc})") from exc
        root = root.rstrip("/")
        if not fs.isdir(f"{root}/images"):
            raise OutputError(f"{output}: no images/ table here; is this the --output of jobs/annotate.py?")
        for name, base in schemas.items():
            files = _plain_files(fs, root, name)
            # One footer per run: the columns a run added (--keep-columns) are the same in all its files.
            first_of_run: dict[str, str] = {}
            for path in files:
                first_of_run.setdefault(path.rsplit("/", 2)[-2], path)
            extra = []
            for path in first_of_run.values():
                with fs.open(path, "rb") as f:
                    extra.append(pq.read_schema(f))
            con.register(name, _dataset(files, fs, base, extra))
        manifests = read_run_manifests(output, s3_endpoint_url=s3_endpoint_url)
    con.register("runs", _runs_table(manifests))
    con.execute(latest_views_sql())
    return con
