"""Inputs of the annotation job: folders/prefixes, globs, WebDataset tar shards and URL manifests.

Every ``--input`` becomes a stream of *sources*: rows ``{"source_uri", "kind"}`` where ``kind`` is
``"file"`` (one image) or ``"tar"`` (a shard of many). Folders are listed in parallel Ray tasks, one
per sub-prefix, so the driver never holds the listing of a huge prefix; manifests are read by Ray Data
itself. Validation (does it exist, is there anything in it) happens before any work starts.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Iterator

import fsspec

from .storage import StorageConfig, with_retries

__all__ = [
    "InputError",
    "InputSpec",
    "IMAGE_EXTENSIONS",
    "classify_input",
    "validate_inputs",
    "uri_of",
    "list_prefix",
    "source_kind",
    "is_inside",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif", ".pgm", ".ppm")
# Files that sit beside images in datasets (img2dataset writes .json/.txt/.parquet per shard).
SIDECAR_EXTENSIONS = (".json", ".txt", ".parquet", ".csv", ".md", ".npy", ".idx", ".crc", ".log", ".yaml", ".yml")
_GLOB_CHARS = ("*", "?", "[")


class InputError(ValueError):
    """An ``--input`` that cannot be used; raised before any work starts."""


@dataclass(frozen=True)
class InputSpec:
    """One ``--input`` after classification."""

    uri: str
    kind: str  # "prefix", "glob", "tar", "file", "manifest"


def uri_of(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A stable URI for a path of ``fs``: absolute local paths stay plain, others get their scheme."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return path
    return fs.unstrip_protocol(path)


def source_kind(name: str) -> str | None:
    """``"tar"`` for a shard, ``"file"`` for anything that may be an image, None for sidecar files."""
    lower = name.lower()
    base = posixpath.basename(lower)
    if base.startswith(".") or base.startswith("_"):
        return None  # hidden files, _SUCCESS markers
    if lower.endswith(".tar"):
        return "tar"
    if lower.endswith(SIDECAR_EXTENSIONS):
        return None
    # Anything else is offered to the decoder, so an unknown format gets a status row, not silence.
    return "file"


def classify_input(uri: str) -> InputSpec:
    """What kind of input ``uri`` is, from its form alone (no I/O)."""
    lower = uri.lower()
    if any(c in uri.split("://", 1)[-1] for c in _GLOB_CHARS):
        return InputSpec(uri, "glob")
    if lower.endswith((".parquet", ".csv")):
        return InputSpec(uri, "manifest")
    if lower.endswith(".tar"):
        return InputSpec(uri, "tar")
    if lower.endswith(IMAGE_EXTENSIONS):
        return InputSpec(uri, "file")
    return InputSpec(uri, "prefix")


def is_inside(child: str, parent: str) -> bool:
    """Whether location ``child`` is ``parent`` or below it (same scheme, path prefix by segments)."""

    def norm(u: str) -> tuple[str, str]:
        scheme, _, rest = u.rpartition("://") if "://" in u else ("file", "", u)
        if scheme == "file":
            rest = posixpath.abspath(rest)
        return scheme, rest.rstrip("/")

    cs, cp = norm(child)
    ps, pp = norm(parent)
    return cs == ps and (cp == pp or cp.startswith(pp + "/"))


def _first_file(fs: fsspec.AbstractFileSystem, path: str, attempts: int, budget: int = 50) -> str | None:
    """Some usable file under ``path`` (depth-first, a bounded number of listings), or None."""
    stack = [path]
    while stack and budget > 0:
        budget -= 1
        current = stack.pop()
        try:
            entries = with_retries(lambda: fs.ls(current, detail=True), attempts=attempts)
        except FileNotFoundError:
            continue
        dirs = []
        for entry in entries:
            if entry.get("type") == "directory":
                dirs.append(entry["name"])
            elif source_kind(entry["name"]):
                return entry["name"]
        stack.extend(reversed(dirs))
    return None


def validate_inputs(uris: list[str], storage: StorageConfig, url_column: str) -> list[InputSpec]:
    """Classify and check every input; raises :class:`InputError` with what to fix."""
    if not uris:
        raise InputError("no --input given: pass a folder, prefix, glob, .tar shard or .parquet/.csv manifest")
    specs = [classify_input(u) for u in uris]
    for a in specs:
        for b in specs:
            if a is not b and a.kind in ("prefix", "file", "tar") and b.kind == "prefix" and is_inside(a.uri, b.uri):
                raise InputError(f"--input {a.uri} is inside --input {b.uri}: its images would be annotated twice")
    for spec in specs:
        try:
            fs, path = storage.fs(spec.uri)
        except (ImportError, ValueError) as exc:
            raise InputError(f"--input {spec.uri}: unsupported location ({exc})") from exc
        try:
            _check_input(spec, fs, path, url_column, storage.read_attempts)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - network, credentials, permissions: all say "unreachable"
            raise InputError(f"--input {spec.uri}: cannot be reached ({type(exc).__name__}: {exc})") from exc
    return specs


def _check_input(spec: InputSpec, fs, path: str, url_column: str, attempts: int) -> None:
    def retry(fn):
        return with_retries(fn, attempts=attempts)

    if spec.kind == "glob":
        if not retry(lambda: fs.glob(path)):
            raise InputError(f"--input {spec.uri}: the glob matches no files")
        return
    if spec.kind == "prefix":
        if not retry(lambda: fs.exists(path)) and not _lists_anything(fs, path, attempts):
            raise InputError(f"--input {spec.uri}: no such folder or prefix")
        if retry(lambda: fs.isfile(path)):
            return  # a single file without a known extension
        if _first_file(fs, path, attempts) is None:
            raise InputError(f"--input {spec.uri}: no images found (the folder holds no image files or .tar shards)")
        return
    if not retry(lambda: fs.exists(path)):
        raise InputError(f"--input {spec.uri}: no such file")
    if spec.kind == "manifest":
        columns = _manifest_columns(fs, path, spec.uri)
        if url_column not in columns:
            raise InputError(
                f"--input {spec.uri}: manifest has no column {url_column!r} (columns: {', '.join(columns)}); "
                f"name the column of image URLs with --url-column"
            )


def _lists_anything(fs, path: str, attempts: int) -> bool:
    # Object stores have no folders: a prefix "exists" only through the keys below it.
    try:
        return bool(with_retries(lambda: fs.ls(path), attempts=attempts))
    except FileNotFoundError:
        return False


def _manifest_columns(fs, path: str, uri: str) -> list[str]:
    if uri.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            return list(pq.read_schema(f).names)
    with fs.open(path, "rb") as f:
        header = f.readline().decode("utf-8", errors="replace").strip()
    return [c.strip().strip('"') for c in header.split(",")]


def split_prefix(spec: InputSpec, storage: StorageConfig) -> tuple[list[dict], list[str]]:
    """Direct sources at the top of a prefix, and the sub-prefixes to list in parallel."""
    fs, path = storage.fs(spec.uri)
    if spec.kind in ("file", "tar"):
        return [{"source_uri": spec.uri, "kind": source_kind(spec.uri) or "file"}], []
    if spec.kind == "glob":
        matches = with_retries(lambda: fs.glob(path, detail=True))
        rows = [
            {"source_uri": uri_of(fs, name), "kind": source_kind(name)}
            for name, info in sorted(matches.items())
            if info.get("type") != "directory" and source_kind(name)
        ]
        return rows, []
    if with_retries(lambda: fs.isfile(path)):
        return [{"source_uri": spec.uri, "kind": source_kind(spec.uri) or "file"}], []
    rows, subdirs = [], []
    for entry in with_retries(lambda: fs.ls(path, detail=True)):
        if entry.get("type") == "directory":
            subdirs.append(uri_of(fs, entry["name"]))
        elif source_kind(entry["name"]):
            rows.append({"source_uri": uri_of(fs, entry["name"]), "kind": source_kind(entry["name"])})
    return sorted(rows, key=lambda r: r["source_uri"]), sorted(subdirs)


def list_prefix(prefix_uri: str, storage: StorageConfig) -> Iterator[dict]:
    """Every source below ``prefix_uri`` (recursive), in a stable order."""
    fs, path = storage.fs(prefix_uri)
    for name in sorted(with_retries(lambda: fs.find(path))):
        kind = source_kind(name)
        if kind:
            yield {"source_uri": uri_of(fs, name), "kind": kind}
