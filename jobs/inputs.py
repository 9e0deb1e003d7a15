"""Inputs of the annotation job: folders/prefixes, globs, WebDataset tar shards and URL manifests.

Every ``--input`` becomes a stream of *sources*, rows ``{"source_uri", "kind", "status", "error"}``:

- ``kind="file"``: one file to read and decode; ``kind="tar"``: a shard of many;
- ``kind="row"``: an entry that is not read, with the ``status`` it gets and why (``error``): a named
  pipe, socket or device (``not_a_file``), a symbolic link to a folder (``not_a_file``: not followed),
  a manifest entry the operator did not allow (``not_allowed``), or an entry that is counted in the
  run manifest instead of the tables (``NOT_WRITTEN`` of :mod:`img2pose_core.output`: markers, sidecars, empty manifest cells, copies).

So every file under an input and every manifest row is accounted for. Which file is what is decided
from names and listings alone (:func:`classify_directory`), without reading anything. Folders are
listed in parallel Ray tasks, one per sub-prefix, so the driver never holds the listing of a huge
prefix; manifests are read by Ray Data itself. Validation (does it exist, is there anything in it,
do inputs overlap) happens before any work starts.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import os
import posixpath
import stat
import uuid
from dataclasses import dataclass
from typing import Iterable, Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from img2pose_core.imageio import IMAGE_EXTENSIONS
from img2pose_core.uris import is_url, normalise_local, redact_text, redact_uri, scheme_of

from .storage import StorageConfig, with_retries

__all__ = [
    "InputError",
    "InputSpec",
    "IMAGE_EXTENSIONS",
    "SIDECAR_EXTENSIONS",
    "MANIFEST_SCHEMES",
    "ManifestPolicy",
    "classify_input",
    "classify_directory",
    "validate_inputs",
    "uri_of",
    "list_prefix",
    "split_prefix",
    "source_kind",
    "is_inside",
    "resolve_manifest_entries",
    "expand_groups",
    "with_choice",
    "needs_dedupe",
    "source_row",
    "SOURCE_COLUMNS",
]

# Files that datasets keep beside their images and shards (img2dataset writes .json/.txt per image and
# .parquet/_stats.json per shard; WebDataset shards hold .json/.txt/.cls beside each image). They are
# skipped only where an image or shard of the same stem sits beside them; anywhere else they are
# offered to the decoder like every other file, and get a row.
SIDECAR_EXTENSIONS = (
    ".json", ".txt", ".parquet", ".csv", ".md", ".npy", ".idx", ".log", ".yaml", ".yml", ".cls", ".cls2",
    ".caption", ".xml",
)  # fmt: skip
# Completion markers of Spark/Hadoop/img2dataset writers: never images.
_MARKER_NAMES = ("_SUCCESS", "_FAILURE")
_MARKER_PREFIXES = ("_committed_", "_started_")


# Schemes a manifest may name without --allow-local-files: remote object stores and the web.
MANIFEST_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "http", "https")
_GLOB_CHARS = ("*", "?", "[")
# Cloud metadata services hand out the node's credentials: never read, whatever a manifest says.
_METADATA_HOSTS = ("metadata.google.internal", "metadata", "instance-data", "metadata.azure.com")


class InputError(ValueError):
    """An ``--input`` that cannot be used; raised before any work starts."""


@dataclass(frozen=True)
class InputSpec:
    """One ``--input`` after classification."""

    uri: str
    kind: str  # "prefix", "glob", "tar", "file", "manifest"


@dataclass(frozen=True)
class ManifestPolicy:
    """What the rows of a manifest may name (the operator's choice, from the job's flags)."""

    allow_local_files: bool = False
    schemes: tuple[str, ...] = MANIFEST_SCHEMES


SOURCE_COLUMNS = ("source_uri", "kind", "status", "error", "kept")


def source_row(uri: str, kind: str, status: str = "", error: str = "", kept: str = "") -> dict:
    """One source: ``kind`` "file"/"tar" to read, or "row" with the ``status`` it gets without reading.

    ``kept``: the manifest columns of ``--keep-columns`` for this source, as JSON ("" for none).
    """
    return {"source_uri": uri, "kind": kind, "status": status, "error": error, "kept": kept}


def uri_of(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A stable URI for a path of ``fs``: absolute local paths stay plain, others get their scheme."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return path
    return fs.unstrip_protocol(path)


def _stem(name: str) -> str:
    base = posixpath.basename(name.rstrip("/"))
    return base.split(".", 1)[0] if not base.startswith(".") else base


def _is_marker(name: str) -> bool:
    base = posixpath.basename(name)
    return base in _MARKER_NAMES or base.startswith(_MARKER_PREFIXES) or (base.startswith(".") and base.endswith(".crc"))


def source_kind(name: str) -> str:
    """``"tar"`` for a WebDataset shard, else ``"file"``: anything else is offered to the decoder."""
    return "tar" if name.lower().endswith(".tar") else "file"


def classify_directory(entries: Iterable[tuple[str, str]], uri_for=lambda name: name) -> list[dict]:
    """Source rows for the entries of one folder, ``(name, type)`` with type ``file``, ``directory``,
    ``fifo``, ``socket``, ``char_device``, ``block_device``, ``link_to_directory``, ``marker`` (an
    object-store folder marker) or ``other``. Directories are not returned (they are listed themselves).

    Siblings matter: ``x.json`` is a sidecar where ``x.jpg`` or ``x.tar`` sits beside it, and an input
    otherwise. ``uri_for`` maps a name to the URI stored in the tables.
    """
    entries = list(entries)
    stems = {
        _stem(n) for n, t in entries if t == "file" and n.lower().endswith(IMAGE_EXTENSIONS + (".tar",))
    }
    rows = []
    for name, kind in entries:
        uri = uri_for(name)
        lower = name.lower()
        if kind == "directory":
            continue
        if kind == "marker" or (kind == "file" and _is_marker(name)):
            rows.append(source_row(uri, "row", "marker"))
        elif kind == "file":
            stem = _stem(name)
            is_sidecar = lower.endswith(SIDECAR_EXTENSIONS) and (
                stem in stems or (stem.endswith("_stats") and stem[: -len("_stats")] in stems)
            )
            rows.append(source_row(uri, "row", "sidecar") if is_sidecar else source_row(uri, source_kind(name)))
        elif kind == "link_to_directory":
            rows.append(source_row(uri, "row", "not_a_file",
                                   "a symbolic link to a folder: not followed (give its target as an --input)"))  # fmt: skip
        else:
            what = {"fifo": "a named pipe (FIFO)", "socket": "a socket", "char_device": "a character device",
                    "block_device": "a block device"}.get(kind, "not a regular file")  # fmt: skip
            rows.append(source_row(uri, "row", "not_a_file", f"{what}: only regular files are read"))
    return sorted(rows, key=lambda r: r["source_uri"])


def _local_entry_type(entry: os.DirEntry) -> str:
    try:
        if entry.is_symlink():
            # Links to files are followed when read (datasets kept by DVC or git-annex are links);
            # links to folders are not (cycles, escapes, the same files listed twice).
            try:
                return "link_to_directory" if stat.S_ISDIR(os.stat(entry.path).st_mode) else "file"
            except OSError:
                return "file"  # dangling: the read says so, in a row
        mode = entry.stat(follow_symlinks=False).st_mode
    except OSError:
        return "file"  # vanished or unreadable: the read says so
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "char_device"
    if stat.S_ISBLK(mode):
        return "block_device"
    return "other"


def _scan_local(path: str) -> tuple[list[tuple[str, str]], list[str]]:
    """``(entries, subfolders)`` of one local folder."""
    entries, subdirs = [], []
    with os.scandir(path) as it:
        for entry in it:
            kind = _local_entry_type(entry)
            if kind == "directory":
                subdirs.append(entry.path)
            entries.append((entry.path, kind))
    return entries, sorted(subdirs)


def _remote_entry_type(name: str, info: dict) -> str:
    kind = info.get("type")
    if kind == "directory":
        return "directory"
    if name.endswith("/") or (info.get("size") == 0 and str(info.get("Key", "")).endswith("/")):
        return "marker"
    return "file"


def _is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def list_prefix(prefix_uri: str, storage: StorageConfig) -> Iterator[dict]:
    """Every source below ``prefix_uri`` (recursive), folder by folder, in a stable order."""
    fs, path = storage.fs(prefix_uri)
    if _is_local_fs(fs):
        stack = [path]
        while stack:
            current = stack.pop()
            try:
                entries, subdirs = _scan_local(current)
            except OSError as exc:
                yield source_row(current, "row", "unreadable", f"cannot list the folder: {exc.strerror or exc}")
                continue
            yield from classify_directory(entries)
            stack.extend(reversed(subdirs))
        return
    found = with_retries(lambda: fs.find(path, detail=True, withdirs=True), attempts=storage.read_attempts)
    by_folder: dict[str, list[tuple[str, str]]] = {}
    for name, info in sorted(found.items()):
        kind = _remote_entry_type(name, info)
        by_folder.setdefault(posixpath.dirname(name.rstrip("/")), []).append((name, kind))
    for folder in sorted(by_folder):
        yield from classify_directory(by_folder[folder], lambda n: uri_of(fs, n))


def classify_input(uri: str) -> InputSpec:
    """What kind of input ``uri`` is, from its form alone (no I/O). Local paths become absolute."""
    if not is_url(uri) or scheme_of(uri) == "file":
        uri = normalise_local(uri)
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


def _split(u: str) -> tuple[str, str]:
    if is_url(u) and scheme_of(u) != "file":
        scheme, rest = u.split("://", 1)
        return scheme.lower(), rest.rstrip("/")
    return "file", os.path.realpath(normalise_local(u))


def is_inside(child: str, parent: str) -> bool:
    """Whether location ``child`` is ``parent`` or below it (same scheme, path prefix by segments).

    Local paths are compared after resolving symbolic links, so a link inside an input that leads to
    the output (or the reverse) is seen for what it is.
    """
    cs, cp = _split(child)
    ps, pp = _split(parent)
    return cs == ps and (cp == pp or cp.startswith(pp.rstrip("/") + "/"))


def glob_base(uri: str) -> str:
    """The fixed folder a glob starts from (``s3://b/x/*.jpg`` -> ``s3://b/x``)."""
    start = uri.find("://") + 3 if is_url(uri) else 0
    cut = min(pos for pos in (uri.find(c, start) for c in _GLOB_CHARS) if pos != -1)
    return uri[:cut].rsplit("/", 1)[0] or "/"


def _first_file(fs: fsspec.AbstractFileSystem, path: str, attempts: int, budget: int = 50) -> str | None:
    """Some entry under ``path`` that becomes a source (depth-first, a bounded number of listings)."""
    stack = [path]
    while stack and budget > 0:
        budget -= 1
        current = stack.pop()
        try:
            entries = with_retries(lambda: fs.ls(current, detail=True), attempts=attempts)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        dirs = []
        for entry in entries:
            if entry.get("type") == "directory":
                dirs.append(entry["name"])
            elif not entry["name"].endswith("/"):
                return entry["name"]
        stack.extend(reversed(dirs))
    return None


def validate_inputs(
    uris: list[str], storage: StorageConfig, url_column: str, keep_columns: list[str] | tuple = ()
) -> list[InputSpec]:
    """Classify and check every input; raises :class:`InputError` with what to fix (secrets redacted).

    ``keep_columns`` (``--keep-columns``) must exist in every manifest input, and there must be one.
    """
    if not uris:
        raise InputError("no --input given: pass a folder, prefix, glob, .tar shard or .parquet/.csv manifest")
    specs = [classify_input(u) for u in uris]
    if keep_columns and not any(s.kind == "manifest" for s in specs):
        raise InputError("--keep-columns copies columns of a manifest: give a .parquet or .csv manifest as --input")
    for i, a in enumerate(specs):
        for b in specs[i + 1 :]:
            if a.uri == b.uri:
                raise InputError(f"--input {redact_uri(a.uri)} is given twice")
    for a in specs:
        for b in specs:
            # Inputs inside a prefix are refused; overlaps with globs and manifests (which need not
            # contain one another to overlap) are removed as duplicates instead (expand_groups).
            if a is b or b.kind != "prefix" or a.kind == "manifest":
                continue
            if is_inside(glob_base(a.uri) if a.kind == "glob" else a.uri, b.uri):
                raise InputError(
                    f"--input {redact_uri(a.uri)} is inside --input {redact_uri(b.uri)}: its images would be "
                    "annotated twice; give only the outer one"
                )
    for spec in specs:
        try:
            fs, path = storage.fs(spec.uri)
        except (ImportError, ValueError) as exc:
            raise InputError(f"--input {redact_uri(spec.uri)}: unsupported location ({redact_text(str(exc), [spec.uri])})") from exc
        try:
            _check_input(spec, fs, path, url_column, storage.read_attempts, keep_columns)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - network, credentials, permissions: all say "unreachable"
            cause = redact_text(f"{type(exc).__name__}: {exc}", [spec.uri])
            raise InputError(f"--input {redact_uri(spec.uri)}: cannot be reached ({cause})") from exc
    return specs


def _check_input(spec: InputSpec, fs, path: str, url_column: str, attempts: int, keep_columns=()) -> None:
    def retry(fn):
        return with_retries(fn, attempts=attempts)

    shown = redact_uri(spec.uri)
    if spec.kind == "glob":
        if not retry(lambda: fs.glob(path)):
            raise InputError(f"--input {shown}: the glob matches no files")
        return
    if spec.kind == "prefix":
        if not retry(lambda: fs.exists(path)) and not _lists_anything(fs, path, attempts):
            raise InputError(f"--input {shown}: no such folder or prefix")
        if retry(lambda: fs.isfile(path)):
            return  # a single file without a known extension
        if _first_file(fs, path, attempts) is None:
            raise InputError(f"--input {shown}: no images found (the folder holds no files or .tar shards)")
        return
    if not retry(lambda: fs.exists(path)):
        raise InputError(f"--input {shown}: no such file")
    if spec.kind == "manifest":
        columns = _manifest_columns(fs, path, spec.uri)
        if url_column not in columns:
            raise InputError(
                f"--input {shown}: manifest has no column {url_column!r} (columns: {', '.join(columns)}); "
                f"name the column of image URLs with --url-column"
            )
        missing = [c for c in keep_columns if c not in columns]
        if missing:
            raise InputError(
                f"--input {shown}: manifest has no column {', '.join(map(repr, missing))} of --keep-columns "
                f"(columns: {', '.join(columns)})"
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
        header = f.readline(1 << 20).decode("utf-8-sig", errors="replace")  # spreadsheets write a BOM
    return [c.strip() for c in next(csv.reader(io.StringIO(header)), [])]


def split_prefix(spec: InputSpec, storage: StorageConfig) -> tuple[list[dict], list[str]]:
    """Direct sources at the top of a prefix, and the sub-prefixes to list in parallel."""
    fs, path = storage.fs(spec.uri)
    if spec.kind in ("file", "tar"):
        return [source_row(spec.uri, source_kind(spec.uri))], []
    if spec.kind == "glob":
        matches = with_retries(lambda: fs.glob(path, detail=True))
        if _is_local_fs(fs):
            entries = []
            for name in sorted(matches):
                kind = _local_path_type(name)
                if kind != "directory":
                    entries.append((name, kind))
        else:
            entries = [(n, _remote_entry_type(n, i)) for n, i in sorted(matches.items()) if i.get("type") != "directory"]
        by_folder: dict[str, list[tuple[str, str]]] = {}
        for name, kind in entries:
            by_folder.setdefault(posixpath.dirname(name), []).append((name, kind))
        rows = []
        for folder in sorted(by_folder):
            rows.extend(classify_directory(by_folder[folder], lambda n: uri_of(fs, n)))
        return rows, []
    if with_retries(lambda: fs.isfile(path)):
        return [source_row(spec.uri, source_kind(spec.uri))], []
    if _is_local_fs(fs):
        entries, subdirs = _scan_local(path)
        return classify_directory(entries), subdirs
    entries, subdirs = [], []
    for entry in with_retries(lambda: fs.ls(path, detail=True)):
        kind = _remote_entry_type(entry["name"], entry)
        if kind == "directory":
            subdirs.append(uri_of(fs, entry["name"]))
        entries.append((entry["name"], kind))
    return classify_directory(entries, lambda n: uri_of(fs, n)), sorted(subdirs)


def _local_path_type(path: str) -> str:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "file"
    if stat.S_ISLNK(mode):
        try:
            return "link_to_directory" if stat.S_ISDIR(os.stat(path).st_mode) else "file"
        except OSError:
            return "file"
    for test, kind in ((stat.S_ISDIR, "directory"), (stat.S_ISREG, "file"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "char_device"), (stat.S_ISBLK, "block_device")):  # fmt: skip
        if test(mode):
            return kind
    return "other"


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


# --- one row per distinct input --------------------------------------------------------------------
def needs_dedupe(specs: list[InputSpec]) -> bool:
    """Whether the inputs can name one file twice: manifests can, globs next to other inputs can.

    Prefixes, files and shards cannot (nested ones are refused, and a listing names each file once).
    """
    kinds = [s.kind for s in specs]
    return "manifest" in kinds or ("glob" in kinds and len(kinds) > 1)


_SEP = "\x1f"  # joins a source's fields into one value that sorts readable copies first


def with_choice(table: pa.Table) -> pa.Table:
    """The sources with a ``choice`` column: ``0|kind|status|error|kept`` for a source to read, ``1|...``
    for one that is not read. Grouped by URI, the smallest choice wins: a file that one input reads is
    read, even where another input names it in a way that is refused."""
    rank = pc.if_else(pc.is_in(table["kind"], pa.array(["file", "tar"])), "0", "1")
    kept = table["kept"] if "kept" in table.column_names else pa.array([""] * table.num_rows, pa.string())
    fields = [pc.fill_null(table[c].cast(pa.string()), "") for c in ("kind", "status", "error")] + [pc.fill_null(kept.cast(pa.string()), "")]
    choice = pc.binary_join_element_wise(rank, *fields, _SEP)
    return pa.table({"source_uri": table["source_uri"], "choice": choice})


def expand_groups(table: pa.Table) -> pa.Table:
    """Source rows from sources grouped by URI (``count()`` and ``min(choice)``, see :func:`with_choice`):
    one row per URI, and a ``duplicate`` row for each further copy."""
    counts = table["count()"].to_numpy()
    parts = [c.split(_SEP, 4) for c in table["min(choice)"].to_pylist()]
    extra = np.repeat(np.arange(table.num_rows), np.maximum(counts - 1, 0))
    n = len(extra)
    schema = pa.schema([(name, pa.string()) for name in SOURCE_COLUMNS])
    kept = pa.table(
        [table["source_uri"]] + [pa.array([p[i] for p in parts], pa.string()) for i in range(1, 5)], schema=schema
    )
    copies = pa.table(
        [table["source_uri"].take(pa.array(extra, pa.int64())), pa.array(["row"] * n, pa.string()),
         pa.array(["duplicate"] * n, pa.string()), pa.array([""] * n, pa.string()), pa.array([""] * n, pa.string())],
        schema=schema,
    )  # fmt: skip
    return pa.concat_tables([kept, copies])
