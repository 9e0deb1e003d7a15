"""URL manifests (Parquet or CSV): what each entry may name (``ManifestPolicy``: remote stores and the
web by default, local files only when allowed, never a cloud metadata service), and the Ray dataset of
source rows a manifest becomes."""

from __future__ import annotations

import json
import posixpath
import uuid
from typing import Iterable

import numpy as np
import pyarrow as pa

from img2pose_core.storage.netpolicy import url_refusal
from img2pose_core.uris import is_chained_url, is_url, normalise_local, redact_uri, scheme_of

from img2pose_core.storage import StorageConfig
from .manifest_files import csv_convert_options, url_type_problem
from .specs import SOURCE_COLUMNS, InputError, InputSpec, ManifestPolicy, source_kind, source_row


# --- manifests -------------------------------------------------------------------------------------
def http_host_refusal(uri: str) -> str | None:
    """Why an http(s) URL must not be fetched, judged on its host as the HTTP client reads it (any
    spelling of a cloud metadata address or name: :mod:`img2pose_core.storage.netpolicy`), or None. No
    name is resolved here: the reader checks the resolved addresses before and when it connects."""
    return url_refusal(uri)


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

    if is_chained_url(text):  # fsspec's syntax; the "::" of an IPv6 literal ([::1]) is no chain
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
    import ray.data

    fs, path = storage.fs(spec.uri)
    columns = [url_column] + [c for c in keep if c != url_column]
    if spec.uri.lower().endswith(".parquet"):
        ds = ray.data.read_parquet(path, filesystem=fs, columns=columns, partitioning=None)
    else:
        # The options the check before any work used (jobs.inputs.manifest_files): every column as text.
        ds = ray.data.read_csv(path, filesystem=fs, convert_options=csv_convert_options(columns))
    manifest_uri = spec.uri

    def to_sources(batch: pa.Table) -> dict:
        problem = url_type_problem(url_column, batch.schema.field(url_column).type)
        if problem:  # checked before any work; here only if the file was replaced since
            raise InputError(f"--input {redact_uri(manifest_uri)}: {problem}")
        kept = None
        if keep:
            values = {c: batch[c].to_pylist() for c in keep}
            kept = [json.dumps({c: values[c][i] for c in keep}, default=str) for i in range(batch.num_rows)]
        return resolve_manifest_entries(batch[url_column].to_pylist(), manifest_uri, policy, kept)

    return ds.map_batches(to_sources, batch_format="pyarrow", batch_size=4096)
