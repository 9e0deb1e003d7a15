"""Bundle files on disk: hashing them and writing them atomically.

Every write goes to a temporary file in the target's folder and is renamed into place, so a reader
sees the old file or the new one, never part of one; that is what lets ``bundle.json`` (written last)
mark a folder as complete.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from .format import BundleError, sha_mismatch

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """sha256 (hex) of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def temp_beside(dest: Path) -> tuple[BinaryIO, Path]:
    """An open temp file in ``dest``'s folder, so that ``os.replace`` onto ``dest`` is atomic."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    return os.fdopen(fd, "wb"), Path(name)


def write_atomic(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` through a synced temp file beside it."""
    f, tmp = temp_beside(dest)
    try:
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def copy_stream_atomic(src: BinaryIO, dest: Path, expected_sha256: str | None, label: str) -> str:
    """Copy ``src`` to ``dest`` through a temp file, hashing on the way; refuse a wrong sha256."""
    f, tmp = temp_beside(dest)
    digest = hashlib.sha256()
    try:
        with f:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                f.write(chunk)
        actual = digest.hexdigest()
        if expected_sha256 is not None and actual != expected_sha256:
            raise BundleError(sha_mismatch(label, expected_sha256, actual))
        os.replace(tmp, dest)
        return actual
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
