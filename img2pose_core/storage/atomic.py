"""Atomic writes of local files: a temporary file beside the target, renamed over it when complete.

``os.replace`` within one folder is atomic, so a reader sees the old file or the whole new one, never
part of one; a failed write leaves neither a partial target nor its temporary file behind.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

__all__ = ["atomic_file", "temp_beside", "write_atomic"]


def temp_beside(dest: str | os.PathLike, mode: int = 0o666) -> tuple[BinaryIO, Path]:
    """A new temporary file ``.<name>.<hex>.part`` in ``dest``'s folder (created), open for writing; and its path.

    ``mode`` is the file's permission bits before the umask, as for :func:`os.open`.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:16]}.part")
    # O_EXCL: never write through a file or link that someone else put there.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    return os.fdopen(fd, "wb"), tmp


@contextmanager
def atomic_file(dest: str | os.PathLike, *, fsync: bool = True, mode: int = 0o666) -> Iterator[BinaryIO]:
    """A file to write ``dest``'s new content into, renamed over ``dest`` when the block ends without error.

    An exception in the block (a check of the content, a cut download) removes the temporary file and
    leaves ``dest`` as it was. ``fsync``: the data reaches the disk before the rename, so that a crash
    cannot leave the new name with missing data.
    """
    dest = Path(dest)
    f, tmp = temp_beside(dest, mode)
    try:
        with f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(dest: str | os.PathLike, data: bytes, *, fsync: bool = True, mode: int = 0o666) -> None:
    """Write ``data`` to ``dest`` through a temporary file beside it (see :func:`atomic_file`)."""
    with atomic_file(dest, fsync=fsync, mode=mode) as f:
        f.write(data)
