"""What an input is: its kind (folder or prefix, glob, tar shard, manifest), the source rows every file
and entry becomes, and the classification of a listing by names alone (no file is read)."""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import Iterable

from img2pose_core.imageio import IMAGE_EXTENSIONS
from img2pose_core.uris import is_url, normalise_local, scheme_of



# Schemes a manifest may name without --allow-local-files: remote object stores and the web.
MANIFEST_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "http", "https")

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
_GLOB_CHARS = ("*", "?", "[")


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
