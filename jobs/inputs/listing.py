"""Listing folders and prefixes into source rows: local folders without following links or opening
special files, object-store prefixes page by page, and the split of an input into its files and its
sub-prefixes (each listed later in a Ray task of its own)."""

from __future__ import annotations

import os
import posixpath
import stat
from typing import Iterator



from img2pose_core.storage import StorageConfig, is_local_fs, uri_of, with_retries
from .specs import InputSpec, classify_directory, source_kind, source_row


_MODE_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISREG, "file"), (stat.S_ISFIFO, "fifo"),
               (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "char_device"), (stat.S_ISBLK, "block_device"))  # fmt: skip


def _mode_kind(mode: int) -> str:
    """The kind of a file that is not a link, from its ``st_mode``."""
    return next((kind for test, kind in _MODE_KINDS if test(mode)), "other")


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
    return _mode_kind(mode)


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


def list_prefix(prefix_uri: str, storage: StorageConfig) -> Iterator[dict]:
    """Every source below ``prefix_uri`` (recursive), folder by folder, in a stable order."""
    fs, path = storage.fs(prefix_uri)
    if is_local_fs(fs):
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


def split_prefix(spec: InputSpec, storage: StorageConfig) -> tuple[list[dict], list[str]]:
    """Direct sources at the top of a prefix, and the sub-prefixes to list in parallel.

    An input that lists nothing now (it held files when checked) is one ``empty_input`` row; a local
    folder that cannot be listed any more (removed, permissions changed) one ``unreadable`` row.
    """
    if spec.kind in ("file", "tar"):
        return [source_row(spec.uri, source_kind(spec.uri))], []
    try:
        rows, subdirs = _split_listing(spec, storage)
    except (FileNotFoundError, NotADirectoryError):
        rows, subdirs = [], []
    except OSError as exc:
        if not is_local_fs(storage.fs(spec.uri)[0]):
            raise  # a store error after retries: the run stops and says so
        return [source_row(spec.uri, "row", "unreadable", f"cannot list the folder: {exc.strerror or exc}")], []
    if not rows and not subdirs:
        what = "the glob matches no file" if spec.kind == "glob" else "the folder or prefix holds nothing"
        return [source_row(spec.uri, "row", "empty_input", f"{what} now (it held files when the inputs were checked)")], []
    return rows, subdirs


def _split_listing(spec: InputSpec, storage: StorageConfig) -> tuple[list[dict], list[str]]:
    fs, path = storage.fs(spec.uri)
    if spec.kind == "glob":
        matches = with_retries(lambda: fs.glob(path, detail=True))
        if is_local_fs(fs):
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
    if is_local_fs(fs):
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
    return _mode_kind(mode)
