"""The Iceberg form of the output: catalogs, the ``faces``/``images``/``runs`` tables, and the run commit.

A run writes its Parquet files into the tables' data folders (nothing is visible yet), then the driver
commits them, in this order, each one atomic (:func:`commit_run`):

1. ``faces``: every face row of the run (one snapshot);
2. ``images``: every image row of the run (one snapshot): from this moment a reader sees the whole
   run's images, and their faces were already there;
3. ``runs``: the run manifest as a row, with the two snapshot ids.

A run killed before step 1 leaves only files that no snapshot references (never read; Iceberg's
orphan-file maintenance removes them). The only window that leaves rows visible is between steps 1
and 2 (milliseconds): faces of a run that has no images rows, which the ``latest_faces`` view never
shows, and which the next run removes from the table once that run is clearly dead
(:func:`remove_dead_runs`). Two runs at once both land: commits are optimistic and pyiceberg retries
a commit that lost a race against the new table state; no run deletes another's files.

Catalogs (``--catalog``): ``sqlite:///path/catalog.db`` (pyiceberg's SQL catalog on a local file: the
embedded form), other SQLAlchemy URLs, ``rest+https://host/path`` (an Iceberg REST catalog) and
``glue`` / ``glue://REGION`` (AWS Glue). Credentials come from the environment only: AWS's chain for
S3 and Glue, ``PYICEBERG_CATALOG__IMG2POSE__TOKEN`` or ``__CREDENTIAL`` for REST, the driver's own
variables (``PGPASSWORD``) for SQL databases; a password inside ``--catalog`` is refused.

No Ray here: the job calls these functions from its driver.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pyarrow as pa

from .output import FACES_SCHEMA, IMAGES_SCHEMA, RUNS_SCHEMA
from .uris import redact_uri

if TYPE_CHECKING:
    from pyiceberg.expressions import BooleanExpression

__all__ = [
    "CatalogError",
    "CATALOG_NAME",
    "IcebergTables",
    "catalog_properties",
    "open_catalog",
    "open_tables",
    "commit_run",
    "remove_dead_runs",
    "done_files",
    "run_exists",
]

CATALOG_NAME = "img2pose"
RUN_PROPERTY = "img2pose.run-id"
# A run commits its faces and its images back to back; faces without images this much older are a
# run that died between the two commits.
DEAD_AFTER_S = 600.0


class CatalogError(ValueError):
    """A catalog or table that cannot be used; the message says what to fix."""


@dataclass
class IcebergTables:
    """The three tables of a namespace, loaded."""

    catalog: Any
    namespace: str
    faces: Any
    images: Any
    runs: Any

    def reload(self) -> "IcebergTables":
        for name in ("faces", "images", "runs"):
            setattr(self, name, self.catalog.load_table(f"{self.namespace}.{name}"))
        return self

    def data_folder(self, table: str, run_id: str) -> str:
        """Where this run's files of ``table`` go (inside the table's location, one folder per run)."""
        return f"{getattr(self, table).location().rstrip('/')}/data/run_id={run_id}"


def catalog_properties(uri: str, warehouse: str | None, s3_endpoint_url: str | None = None) -> dict[str, str]:
    """pyiceberg properties for ``--catalog URI`` (no I/O). Raises :class:`CatalogError`."""
    parts = urlsplit(uri)
    scheme = "glue" if uri.strip().lower() == "glue" else parts.scheme.lower()
    props: dict[str, str] = {}
    if scheme.startswith("rest+"):
        props = {"type": "rest", "uri": uri[len("rest+") :]}
    elif scheme in ("glue",):
        props = {"type": "glue"}
        if parts.netloc:
            props["glue.region"] = parts.netloc
    elif scheme.startswith(("sqlite", "postgresql", "mysql")):
        if parts.password:
            raise CatalogError(
                f"--catalog {redact_uri(uri)}: holds a password; give credentials through the environment "
                "(for PostgreSQL: PGPASSWORD or ~/.pgpass), never on the command line"
            )
        if scheme == "sqlite" and not uri.startswith("sqlite:///"):
            raise CatalogError(f"--catalog {uri}: a SQLite catalog is sqlite:///path/to/catalog.db (an absolute path after ///)")
        props = {"type": "sql", "uri": uri, "init_catalog_tables": "true"}
    else:
        raise CatalogError(
            f"--catalog {redact_uri(uri)}: unknown catalog; use sqlite:///path/catalog.db, rest+https://host/path "
            "or glue (glue://REGION)"
        )
    if warehouse:
        props["warehouse"] = warehouse
    if s3_endpoint_url:
        props["s3.endpoint"] = s3_endpoint_url
    # fsspec's s3fs, as the rest of the job: the same endpoint options and credential chain.
    props["py-io-impl"] = "pyiceberg.io.fsspec.FsspecFileIO"
    return props


def open_catalog(uri: str, warehouse: str | None, s3_endpoint_url: str | None = None) -> Any:
    """The catalog of ``--catalog``; raises :class:`CatalogError` with the cause."""
    from pyiceberg.catalog import load_catalog

    props = catalog_properties(uri, warehouse, s3_endpoint_url)
    if uri.startswith("sqlite:///"):
        import os

        # SQLAlchemy's form: sqlite:///relative/path.db, sqlite:////absolute/path.db.
        folder = os.path.dirname(uri[len("sqlite:///") :]) or "."
        if not os.path.isdir(folder):
            raise CatalogError(f"--catalog {uri}: the folder {folder} does not exist")
    from pyiceberg.utils.config import Config

    # The environment as it is now (pyiceberg reads it once, at import): PYICEBERG_CATALOG__IMG2POSE__*.
    env = Config().get_catalog_config(CATALOG_NAME) or {}
    props = {**{k: v for k, v in env.items() if isinstance(v, str)}, **props}
    try:
        return load_catalog(CATALOG_NAME, **props)
    except Exception as exc:  # noqa: BLE001 - every catalog type fails its own way
        raise CatalogError(f"--catalog {redact_uri(uri)}: cannot be opened ({type(exc).__name__}: {exc})") from exc


def _ensure_table(catalog: Any, identifier: str, schema: pa.Schema, partition_by_run: bool) -> Any:
    from pyiceberg.exceptions import CommitFailedException, NoSuchTableError, TableAlreadyExistsError

    try:
        table = catalog.load_table(identifier)
    except NoSuchTableError:
        try:
            table = catalog.create_table(identifier, schema=schema)
        except TableAlreadyExistsError:  # another run created it a moment ago
            table = catalog.load_table(identifier)
    missing = [name for name in schema.names if name not in {f.name for f in table.schema().fields}]
    if missing:
        # A table made by an older version of the job: add the new columns; old snapshots keep theirs.
        with table.update_schema() as update:
            update.union_by_name(schema)
        table = catalog.load_table(identifier)
    if partition_by_run and table.spec().is_unpartitioned():
        try:
            with table.update_spec() as update:
                update.add_identity("run_id")
        except (CommitFailedException, ValueError):
            pass  # another run partitioned it first
        table = catalog.load_table(identifier)
    return table


def open_tables(catalog: Any, namespace: str, *, create: bool = True) -> IcebergTables:
    """The ``faces``, ``images`` and ``runs`` tables of ``namespace`` (created or evolved when ``create``)."""
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    try:
        if create:
            catalog.create_namespace_if_not_exists(namespace)
            tables = {
                "faces": _ensure_table(catalog, f"{namespace}.faces", FACES_SCHEMA, True),
                "images": _ensure_table(catalog, f"{namespace}.images", IMAGES_SCHEMA, True),
                "runs": _ensure_table(catalog, f"{namespace}.runs", RUNS_SCHEMA, False),
            }
        else:
            tables = {name: catalog.load_table(f"{namespace}.{name}") for name in ("faces", "images", "runs")}
    except (NoSuchTableError, NoSuchNamespaceError) as exc:
        raise CatalogError(f"namespace {namespace}: no img2pose tables here ({exc})") from exc
    return IcebergTables(catalog=catalog, namespace=namespace, **tables)


def _snapshots_of(table: Any, run_id: str) -> list[Any]:
    return [s for s in table.metadata.snapshots if (s.summary and s.summary.additional_properties.get(RUN_PROPERTY) == run_id)]


def run_exists(tables: IcebergTables, run_id: str) -> bool:
    """Whether any table holds a commit of ``run_id``."""
    return any(_snapshots_of(getattr(tables, name), run_id) for name in ("faces", "images", "runs"))


def commit_run(
    tables: IcebergTables, run_id: str, faces_files: list[str], images_files: list[str], run_row
) -> dict[str, int | None]:
    """Commit a run's files: faces, then images, then its ``runs`` row. Returns the snapshot ids.

    Each step is one atomic commit that pyiceberg retries against a table that changed meanwhile (two
    runs at once); a step that already landed (a retried call after a lost answer) is not repeated.
    ``run_row(ids)`` makes the ``runs`` row once the faces and images snapshot ids are known.
    """
    props = {RUN_PROPERTY: run_id}
    ids: dict[str, int | None] = {"faces": None, "images": None, "runs": None}
    for name, files in (("faces", faces_files), ("images", images_files)):
        table = getattr(tables, name).refresh()
        done = _snapshots_of(table, run_id)
        if done:
            ids[name] = done[-1].snapshot_id
        elif files:
            table.add_files(sorted(set(files)), snapshot_properties=props)
            ids[name] = _snapshots_of(table.refresh(), run_id)[-1].snapshot_id
    row = dict(run_row(ids), faces_snapshot_id=ids["faces"], images_snapshot_id=ids["images"])
    runs = tables.runs.refresh()
    if not _snapshots_of(runs, run_id):
        runs.append(pa.Table.from_pylist([row], schema=RUNS_SCHEMA), snapshot_properties=props)
    ids["runs"] = _snapshots_of(runs.refresh(), run_id)[-1].snapshot_id
    tables.reload()
    return ids


def _equal_to(column: str, value: str) -> BooleanExpression:
    """The row filter ``column = value``."""
    from pyiceberg.expressions import EqualTo

    return EqualTo(column, value)  # type: ignore[call-arg, arg-type]  # mypy types pyiceberg's pydantic field __init__, not its own (term, literal) one


def remove_dead_runs(tables: IcebergTables, dead_after_s: float = DEAD_AFTER_S, log=None) -> list[str]:
    """Remove the faces of runs that committed faces but never their images, long enough ago to be dead.

    Such rows exist only when a run died between its two commits. The delete touches only that run's
    rows (whole files of its partition: no data of another run is rewritten).
    """
    now_ms = time.time() * 1000
    faces = tables.faces.refresh()
    images = tables.images.refresh()
    committed = {s.summary.additional_properties.get(RUN_PROPERTY) for s in images.metadata.snapshots if s.summary}
    dead = sorted(
        {
            run
            for s in faces.metadata.snapshots
            if s.summary and (run := s.summary.additional_properties.get(RUN_PROPERTY))
            and run not in committed and now_ms - s.timestamp_ms > dead_after_s * 1000
        }
    )  # fmt: skip
    for run in dead:
        faces.delete(_equal_to("run_id", run), snapshot_properties={RUN_PROPERTY + ".removed": run})
        faces = faces.refresh()
        if log:
            log(f"removed the faces of run {run}, which died between its two commits")
    if dead:
        tables.reload()
    return dead


def done_files(tables: IcebergTables) -> list[str]:
    """The data files of ``images`` that may hold ``ok`` rows (the current snapshot; no delete files)."""
    images = tables.images.refresh()
    if images.current_snapshot() is None:
        return []
    tasks = images.scan(row_filter=_equal_to("status", "ok"), selected_fields=("image_uri", "status")).plan_files()
    files = []
    for task in tasks:
        if task.delete_files:
            raise CatalogError(f"{tables.namespace}.images has delete files; compact it before --skip-existing")
        files.append(task.file.file_path)
    return files


def table_files(table: Any, snapshot_id: int | None = None) -> list[str]:
    """The data files of ``table`` at ``snapshot_id`` (default: the current snapshot)."""
    snapshot = table.snapshot_by_id(snapshot_id) if snapshot_id is not None else table.current_snapshot()
    if snapshot is None:
        return []
    return [task.file.file_path for task in table.scan(snapshot_id=snapshot.snapshot_id).plan_files()]


def runs_rows(tables: IcebergTables) -> list[dict]:
    """The ``runs`` table as manifests (parsed JSON), oldest first."""
    runs = tables.runs.refresh()
    if runs.current_snapshot() is None:
        return []
    table = runs.scan(selected_fields=("run_id", "manifest")).to_arrow()
    out = []
    for raw in table["manifest"].to_pylist():
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    return sorted(out, key=lambda d: str(d.get("started_at", "")))
