"""Bundle files on disk: hashing them and writing them atomically (through :mod:`img2pose_core.storage`).

Every write goes to a temporary file in the target's folder and is renamed into place, so a reader
sees the old file or the new one, never part of one; that is what lets ``bundle.json`` (written last)
mark a folder as complete.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

from ..storage import atomic_file
from .format import BundleError, sha_mismatch

CHUNK = 1 << 20
# Bundle files and downloads are readable and writable by their owner only.
FILE_MODE = 0o600


def sha256_file(path: Path) -> str:
    """sha256 (hex) of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def copy_stream_atomic(src: BinaryIO, dest: Path, expected_sha256: str | None, label: str) -> str:
    """Copy ``src`` to ``dest`` through a temp file, hashing on the way; refuse a wrong sha256."""
    digest = hashlib.sha256()
    with atomic_file(dest, fsync=False, mode=FILE_MODE) as f:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            f.write(chunk)
        actual = digest.hexdigest()
        if expected_sha256 is not None and actual != expected_sha256:
            raise BundleError(sha_mismatch(label, expected_sha256, actual))
    return actual
