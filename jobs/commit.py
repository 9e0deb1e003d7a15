"""The run's Iceberg tables (``--catalog``): opened (created or evolved) before any work, and the run's
files committed once the pipeline has written them, faces then images then the run's row."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

from img2pose_core.output import RunManifest
from img2pose_core.storage import StorageConfig
from img2pose_core.uris import join_uri, redact_text, redact_uri, scheme_of

from .errors import JobError

if TYPE_CHECKING:
    from img2pose_core.iceberg import IcebergTables

__all__ = ["open_iceberg", "commit_iceberg"]


def open_iceberg(catalog_uri: str, namespace: str, output: str, storage: StorageConfig) -> IcebergTables:
    """The run's Iceberg tables (created or evolved), before any work; exit 2 with the cause."""
    from img2pose_core.iceberg import CatalogError, open_catalog, open_tables

    warehouse = join_uri(output, "warehouse")
    if scheme_of(warehouse) == "":
        warehouse = "file://" + warehouse
    try:
        catalog = open_catalog(catalog_uri, warehouse, storage.s3_endpoint_url)
        return open_tables(catalog, namespace)
    except CatalogError as exc:
        raise JobError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - every catalog fails its own way
        raise JobError(f"--catalog {redact_uri(catalog_uri)}: the tables cannot be opened or created "
                       f"({type(exc).__name__}: {redact_text(str(exc), [catalog_uri])})") from exc  # fmt: skip


def commit_iceberg(tables: IcebergTables, manifest: RunManifest, totals: dict, catalog_uri: str) -> None:
    """Commit the run's files to the Iceberg tables: faces, images, then the run's row (atomic each)."""
    from img2pose_core.iceberg import commit_run

    ok = int(manifest.counts["by_status"].get("ok", 0))
    snapshots: dict[str, int | None] = {}  # the manifest's, completed with the runs snapshot after the commit

    def row(ids: dict) -> dict:
        snapshots.update(faces=ids.get("faces"), images=ids.get("images"))
        manifest.iceberg = {"catalog": redact_uri(catalog_uri), "namespace": tables.namespace, "snapshots": snapshots}
        return {
            "run_id": manifest.run_id, "status": manifest.status,
            "started_at": datetime.fromisoformat(manifest.started_at), "ended_at": datetime.now(timezone.utc),
            "images": int(manifest.counts["images"]), "ok": ok, "faces": int(manifest.counts["faces"]),
            "model_sha256": manifest.bundle["model_sha256"], "bundle_digest": manifest.bundle["digest"],
            "manifest": manifest.to_json().decode("utf-8"),
        }  # fmt: skip

    try:
        ids = commit_run(tables, manifest.run_id, totals["faces_files"], totals["images_files"], row)
    except Exception as exc:  # noqa: BLE001 - the catalog refused: nothing of the run is half visible
        raise JobError(f"run {manifest.run_id}: its files are written but the commit failed "
                       f"({type(exc).__name__}: {redact_text(str(exc), [catalog_uri])}); run the same command "
                       "again with --skip-existing and a new --run-id", exit_code=1) from exc  # fmt: skip
    snapshots["runs"] = ids.get("runs")
