"""The checks of the inputs before any work: each exists, holds something, is readable, and no input
lies inside another."""

from __future__ import annotations

import fsspec

from img2pose_core.uris import redact_text, redact_uri, scheme_of

from img2pose_core.storage import StorageConfig, with_retries
from .manifest_files import check_manifest
from .specs import InputError, InputSpec, classify_input, glob_base, is_inside


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


def _check_address(uri: str) -> None:
    """An http(s) ``--input`` is held to the readers' address policy before the check below contacts it
    (that check goes through fsspec, which the policy does not see): its host, and where it is a name,
    every address it resolves to. A name that does not resolve is left to that check's own error."""
    import socket

    from img2pose_core.storage.netpolicy import AddressNotAllowed, AddressPolicy, host_of

    if scheme_of(uri) not in ("http", "https"):
        return
    try:
        AddressPolicy.from_env().addresses(*host_of(uri))
    except AddressNotAllowed as exc:
        raise InputError(f"--input {redact_uri(uri)}: not allowed: {exc}") from None
    except (ValueError, socket.gaierror, OSError):
        return


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
        _check_address(spec.uri)
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
        check_manifest(fs, path, spec.uri, url_column, keep_columns)


def _lists_anything(fs, path: str, attempts: int) -> bool:
    # Object stores have no folders: a prefix "exists" only through the keys below it.
    try:
        return bool(with_retries(lambda: fs.ls(path), attempts=attempts))
    except FileNotFoundError:
        return False
