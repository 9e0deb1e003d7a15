"""Handing an opened bundle to another process, possibly on another machine.

The one way to do it: :func:`bundle_ref` makes a small picklable :class:`BundleRef` from the opened
bundle, and the other process turns it back into a verified :class:`Bundle` with :func:`open_ref`.
A remote bundle (any fsspec URL) is opened again from its URI. A local one may exist on this machine
only, so its files travel instead: :func:`bundle_files` reads them for a holder that the caller keeps
alive (a Ray actor, for instance; this module knows nothing of Ray), and ``open_ref`` asks the holder
for them through the ``fetch_files`` callable it is given. Either way the receiving side checks the
bundle once against the digest the sender opened.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..storage import write_atomic
from ..uris import is_local_uri
from .cache import default_cache_dir
from .format import MANIFEST_NAME, ROLES, BundleError, is_sha256, manifest_digest, parse_manifest, sha_mismatch
from .store import Bundle, open_bundle

__all__ = ["BundleRef", "bundle_files", "bundle_ref", "materialise_bundle", "open_ref"]

FetchFiles = Callable[[str], Mapping[str, bytes]]


@dataclass(frozen=True)
class BundleRef:
    """What another process needs to open the same bundle: where it is and which bundle it must be.

    ``holder`` is None when ``uri`` can be opened anywhere (a remote bundle); otherwise it names
    whatever holds the bundle's files (see :func:`bundle_files`), and ``uri`` serves only in messages.
    """

    uri: str
    digest: str
    holder: str | None = None

    def __post_init__(self) -> None:
        if not is_sha256(self.digest):
            raise BundleError(f"{self.uri}: a bundle reference needs the bundle's digest (64 lower-case hex "
                              f"digits), not {self.digest!r}")


def bundle_ref(bundle: Bundle, holder: str) -> BundleRef:
    """The reference to hand ``bundle`` on by: its URI if remote, else the ``holder`` of its files.

    When the returned reference has a ``holder``, the caller must keep one alive under that name
    holding :func:`bundle_files` of ``bundle`` for as long as other processes may open the reference.
    """
    uri = str(bundle.uri)
    return BundleRef(uri=uri, digest=bundle.digest, holder=holder if is_local_uri(uri) else None)


def bundle_files(bundle: Bundle) -> dict[str, bytes]:
    """The bytes a holder keeps for a local bundle: the files ``bundle.json`` names, and ``bundle.json``."""
    names = [entry["path"] for entry in bundle.manifest["files"].values()] + [MANIFEST_NAME]
    return {name: (bundle.root / name).read_bytes() for name in names}


def open_ref(
    ref: BundleRef,
    *,
    fetch_files: FetchFiles | None = None,
    storage_options: dict | None = None,
    cache_dir: str | Path | None = None,
) -> Bundle:
    """The verified bundle ``ref`` names; a bundle whose digest is not ``ref.digest`` is refused.

    A remote ``ref`` is opened from its URI (through the cache, with ``storage_options``). A held one
    gets its files from ``fetch_files(ref.holder)``, checks them in memory and writes them into this
    user's private cache (:func:`materialise_bundle`), from which the bundle is opened without
    hashing its files a second time.
    """
    if ref.holder is None:
        bundle = open_bundle(ref.uri, cache_dir=cache_dir, storage_options=storage_options)
        _check_digest(ref, bundle.digest)
        return bundle
    if fetch_files is None:
        raise BundleError(f"{ref.uri}: its files are held by {ref.holder!r}; open_ref needs fetch_files to get them")
    files = _checked_files(ref, fetch_files(ref.holder))
    root = materialise_bundle(files, ref.digest, Path(cache_dir) if cache_dir else None)
    # Every file there is now byte for byte one just checked, in a folder only this user can write.
    return open_bundle(root, verify=False)


def _check_digest(ref: BundleRef, actual: str) -> None:
    if actual != ref.digest:
        raise BundleError(f"it now holds bundle {actual[:12]}, not the {ref.digest[:12]} that was checked when it "
                          "was handed on (changed since?)")


def _checked_files(ref: BundleRef, files: Mapping[str, bytes]) -> dict[str, bytes]:
    """``files`` reduced to the bundle's own, each checked against ``bundle.json`` and ``ref.digest``."""
    label = f"{ref.uri} (held by {ref.holder})"
    if MANIFEST_NAME not in files:
        raise BundleError(f"{label}: the holder has no {MANIFEST_NAME}")
    manifest = parse_manifest(files[MANIFEST_NAME], f"{label}/{MANIFEST_NAME}")
    _check_digest(ref, manifest_digest(manifest))
    out = {MANIFEST_NAME: files[MANIFEST_NAME]}
    for role in ROLES:
        entry = manifest["files"][role]
        data = files.get(entry["path"])
        if data is None:
            raise BundleError(f"{label}/{entry['path']}: {role} file missing from the held files")
        actual = hashlib.sha256(data).hexdigest()
        if actual != entry["sha256"]:
            raise BundleError(sha_mismatch(f"{label}/{entry['path']}", entry["sha256"], actual))
        out[entry["path"]] = data
    return out


# --- The private cache of shipped bundles ----------------------------------------------------------
def _private_dir(path: Path) -> Path:
    """``path`` as a folder that only this user can write (created 0700); refuses one that others can."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise RuntimeError(f"{path} is not a plain folder (a symbolic link?): refusing to keep model files there")
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise RuntimeError(f"{path} belongs to another user or others may write it: refusing to keep model files there")
    return path


def materialise_bundle(files: Mapping[str, bytes], bundle_digest: str, cache_dir: Path | None = None) -> Path:
    """Write a shipped bundle's files into this user's cache, keyed by its digest; the folder.

    The folder is per user (``<cache>/shipped/<bundle digest>``, mode 0700, owned by this user) and
    every file is compared with the shipped bytes on every use, so neither an earlier bundle with the
    same weights nor a folder planted by someone else can stand in for this one. A cache folder that
    others may write raises RuntimeError: the machine, not the bundle, is at fault.
    """
    root = _private_dir(Path(cache_dir or default_cache_dir()) / "shipped") / bundle_digest
    root.mkdir(mode=0o700, exist_ok=True)
    _private_dir(root)
    # bundle.json last: until it matches, the folder is not this bundle.
    for name, data in sorted(files.items(), key=lambda kv: kv[0] == MANIFEST_NAME):
        target = root / name
        # Byte for byte: as exact as comparing digests, without hashing the weights again.
        same_size = target.is_file() and not target.is_symlink() and target.stat().st_size == len(data)
        if same_size and target.read_bytes() == data:
            continue
        write_atomic(target, data, fsync=False)
    return root
