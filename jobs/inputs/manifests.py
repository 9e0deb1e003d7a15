"""URL manifests (Parquet or CSV): what each entry may name (``ManifestPolicy``: remote stores and the
web by default, local files only when allowed, never a cloud metadata service), and the Ray dataset of
source rows a manifest becomes."""

from __future__ import annotations

import json
import ipaddress
import posixpath
import uuid
from typing import Iterable

import numpy as np
import pyarrow as pa

from img2pose_core.uris import is_url, normalise_local, redact_uri, scheme_of

from img2pose_core.storage import StorageConfig
from .specs import SOURCE_COLUMNS, InputSpec, ManifestPolicy, source_kind, source_row


# Cloud metadata services hand out the node's credentials: never read, whatever a manifest says.
_METADATA_HOSTS = ("metadata.google.internal", "metadata", "instance-data", "metadata.azure.com")


# --- manifests -------------------------------------------------------------------------------------
def _is_metadata_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in _METADATA_HOSTS:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_link_local or address == ipaddress.ip_address("fd00:ec2::254")


def http_host_refusal(uri: str) -> str | None:
    """Why an http(s) URL must not be fetched (a cloud metadata service), or None."""
    from urllib.parse import urlsplit

    try:
        host = urlsplit(uri).hostname or ""
    except ValueError:
        return "not a valid URL"
    if _is_metadata_host(host):
        return f"host {host} is a cloud metadata service (it hands out the node's credentials): never read"
    return None


def resolve_manifest_entry(raw: object, manifest_uri: str, policy: ManifestPolicy) -> dict:
    """The source row of one manifest cell: relative entries resolved against the manifest's folder,
    entries that the policy does not allow turned into ``not_allowed`` rows (nothing is read for them)."""
    text = "" if raw is None else str(raw).strip()
    if not text:
        return source_row(f"{redact_uri(manifest_uri)}#empty-{uuid.uuid4().hex[:12]}", "row", "empty_url")
    base = manifest_uri.rsplit("/", 1)[0]
    local_manifest = not is_url(manifest_uri) or scheme_of(manifest_uri) == "file"

    def refuse(uri: str, why: str) -> dict:
        return source_row(uri, "row", "not_allowed", why)

    if "::" in text:
        return refuse(text, "chained fsspec URLs are not accepted in manifests")
    scheme = scheme_of(text)
    if not scheme and not text.startswith("/"):
        # Relative: below the manifest's own folder, never above it.
        if local_manifest:
            uri = normalise_local(posixpath.join(normalise_local(base), text))
            inside = uri.startswith(normalise_local(base).rstrip("/") + "/")
        else:
            scheme_part, rest = base.split("://", 1)
            joined = posixpath.normpath(posixpath.join("/" + rest, text)).lstrip("/")
            uri = f"{scheme_part}://{joined}"
            inside = ("/" + joined).startswith("/" + rest.rstrip("/") + "/")
        if not inside and not policy.allow_local_files:
            return refuse(uri, "a relative path that leaves the manifest's folder")
        return source_row(uri, source_kind(uri))
    if not scheme or scheme == "file":
        uri = normalise_local(text)
        if not policy.allow_local_files:
            return refuse(uri, "a local file of the worker named by a manifest; pass --allow-local-files to allow it")
        return source_row(uri, source_kind(uri))
    if scheme not in policy.schemes:
        return refuse(text, f"scheme {scheme}:// is not allowed in manifests (allowed: {', '.join(policy.schemes)})")
    if scheme in ("http", "https"):
        why = http_host_refusal(text)
        if why:
            return refuse(text, why)
    return source_row(text, source_kind(text))


def resolve_manifest_entries(
    values: Iterable[object], manifest_uri: str, policy: ManifestPolicy, kept: list[str] | None = None
) -> dict[str, np.ndarray]:
    """A numpy batch of source rows for a column of manifest cells; ``kept`` holds each row's
    ``--keep-columns`` values as JSON."""
    rows = [resolve_manifest_entry(v, manifest_uri, policy) for v in values]
    for row, extra in zip(rows, kept or []):
        row["kept"] = extra
    return {key: np.array([r[key] for r in rows], dtype=object) for key in SOURCE_COLUMNS}


def manifest_dataset(spec: InputSpec, storage: StorageConfig, url_column: str, policy: ManifestPolicy, keep: list[str]):
    """The source rows of one URL manifest, read by Ray Data: the URL column resolved under ``policy``,
    the ``keep`` columns carried as one JSON text per row."""
    import pyarrow.csv as pacsv
    import ray.data

    fs, path = storage.fs(spec.uri)
    columns = [url_column] + [c for c in keep if c != url_column]
    if spec.uri.lower().endswith(".parquet"):
        ds = ray.data.read_parquet(path, filesystem=fs, columns=columns, partitioning=None)
    else:
        # Every kept column as text, the URL column too: numbers or dates must not change how a cell reads.
        convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in columns}, include_columns=columns)
        ds = ray.data.read_csv(path, filesystem=fs, convert_options=convert)
    manifest_uri = spec.uri

    def to_sources(batch: pa.Table) -> dict:
        kept = None
        if keep:
            values = {c: batch[c].to_pylist() for c in keep}
            kept = [json.dumps({c: values[c][i] for c in keep}, default=str) for i in range(batch.num_rows)]
        return resolve_manifest_entries(batch[url_column].to_pylist(), manifest_uri, policy, kept)

    return ds.map_batches(to_sources, batch_format="pyarrow", batch_size=4096)
