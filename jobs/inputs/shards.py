"""WebDataset tar shards: the format told from the first bytes, the entries listed within the read's time
and memory, and every entry made a row or a count (the shard itself a row when no entry is).

A shard is read whole (``jobs.reading``, at most ``--max-shard-bytes``); :func:`open_shard` then looks at
its first bytes, in the read's own thread and before its ``--read-timeout``:

- a tar header (a valid header checksum: ustar, GNU, pax and v7 tars): a plain tar, listed in memory;
- the magic of gzip, bzip2, xz or Zstandard: that codec alone, streamed once; the members to read are
  kept (at most ``--max-shard-bytes`` of them, ``too_large`` beyond) and the others skipped without
  being held, so a member declaring gigabytes of zeros costs time, not memory;
- no byte, or zero bytes only (an archive of end-of-archive blocks): ``empty_shard``;
- anything else (a ZIP, a picture, text): ``not_a_tar``.

``tarfile.open(mode="r:*")`` instead tried every codec on any bytes (20 s for 50 MB of zeros), and read an
archive of zero blocks as one without members, which then had no row.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

from ..reading import ReadFailure
from .specs import classify_directory

__all__ = ["Shard", "open_shard", "tar_rows", "shard_format"]

_BLOCK = tarfile.BLOCKSIZE
_CHUNK = 1 << 20
_CODECS = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))
_OTHER = ((b"PK\x03\x04", "a ZIP archive"), (b"PK\x05\x06", "an empty ZIP archive"), (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
          (b"Rar!", "a RAR archive"), (b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"),
          (b"<", "text or HTML"))  # fmt: skip
_COUNTED = ("duplicate", "marker", "sidecar")  # entries counted in the run manifest, not rows
_TAR_ERRORS = (tarfile.TarError, EOFError, OSError)


def shard_format(head: bytes) -> str:
    """``gzip``, ``bzip2``, ``xz`` or ``zstd`` from a stream's magic bytes, else ``tar`` (to be checked)."""
    return next((name for magic, name in _CODECS if head.startswith(magic)), "tar")


@dataclass
class Shard:
    """The entries of a tar shard, folders included, in order; ``damage`` says why the listing ended early."""

    entries: list[tarfile.TarInfo]
    damage: str | None = None
    tar: tarfile.TarFile | None = None  # a plain shard: members are read from it (in memory) on demand
    held: dict[int, bytes | str] = field(default_factory=dict)  # a compressed one: bytes read, or why not

    def member_bytes(self, index: int) -> bytes:
        """The bytes of ``entries[index]`` (a file); ``tarfile.ReadError`` if they cannot be read."""
        if self.tar is not None:
            f = self.tar.extractfile(self.entries[index])
            return f.read() if f else b""
        found = self.held.get(index, "not kept")
        if isinstance(found, str):
            raise tarfile.ReadError(found)
        return found


def _codec_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (*_TAR_ERRORS, ValueError, zlib.error, lzma.LZMAError)
    try:
        import zstandard
    except ImportError:
        return errors
    return errors + (zstandard.ZstdError,)


def _what_it_is(head: bytes) -> str:
    found = next((what for magic, what in _OTHER if head.lstrip()[: len(magic)] == magic), None)
    return found or "no tar header at its start (nor a gzip, bzip2, xz or Zstandard stream)"


def _check_head(head: bytes, what: str, zeros_after: Callable[[], tuple[bool, int]]) -> None:
    """Nothing if ``head`` (a shard's first block) is a valid tar header, else :class:`ReadFailure`.
    ``zeros_after()`` says whether the whole stream is zeros, and its size (asked only for a zero head)."""
    if not head:
        raise ReadFailure("empty_shard", f"{what} is empty (0 bytes): no member")
    if head.count(0) == len(head):
        only_zeros, size = zeros_after()
        if only_zeros:
            raise ReadFailure("empty_shard", f"{what} holds only zero bytes ({size}: end-of-archive blocks): no member")
        raise ReadFailure("corrupt", f"{what} begins with an end-of-archive block and holds other bytes after it "
                                     "(a damaged or concatenated tar): not read")  # fmt: skip
    if len(head) < _BLOCK:
        raise ReadFailure("not_a_tar", f"{what} is {len(head)} bytes, shorter than one tar header ({_BLOCK} bytes)")
    try:
        tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        if head[257:262] == b"ustar":
            raise ReadFailure("corrupt", f"{what}: its first tar header is damaged ({exc})") from None
        raise ReadFailure("not_a_tar", f"{what} is not a tar archive: {_what_it_is(head)}") from None


class _Timed:
    """A binary stream read against a deadline (a ``time.monotonic()`` value), with bytes put back in front."""

    def __init__(self, raw: BinaryIO, what: str, deadline: float) -> None:
        self.raw, self.what, self.deadline, self.front = raw, what, deadline, b""

    def read(self, size: int = _CHUNK) -> bytes:
        if time.monotonic() > self.deadline:
            raise ReadFailure("unreadable", f"timed out: {self.what} was not read within --read-timeout")
        if self.front:
            out, self.front = self.front[:size], self.front[size:]
            return out
        return self.raw.read(size if size >= 0 else _CHUNK)

    def read_full(self, size: int) -> bytes:
        out = b""
        while len(out) < size and (chunk := self.read(size - len(out))):
            out += chunk
        return out

    def zeros_to_end(self) -> tuple[bool, int]:
        size = 0
        while chunk := self.read(_CHUNK):
            size += len(chunk)
            if chunk.count(0) != len(chunk):
                return False, size
        return True, size


def _open_codec(codec: str, data: bytes) -> BinaryIO:
    buf = io.BytesIO(data)
    if codec == "gzip":
        return gzip.GzipFile(fileobj=buf)  # type: ignore[return-value]  # a GzipFile reads as a binary file
    if codec == "bzip2":
        return bz2.BZ2File(buf)  # type: ignore[return-value]  # as above
    if codec == "xz":
        return lzma.LZMAFile(buf)  # type: ignore[return-value]  # as above
    try:
        import zstandard
    except ImportError:
        raise ReadFailure("not_a_tar", "a Zstandard stream, which this installation cannot unpack (no zstandard "
                                       "module): give the shard as a plain, gzip, bzip2 or xz tar") from None  # fmt: skip
    return zstandard.ZstdDecompressor().stream_reader(buf, read_across_frames=True)


def _plain(data: bytes, deadline: float) -> Shard:
    _check_head(data[:_BLOCK], "the shard", lambda: (data.count(0) == len(data), len(data)))
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    except _TAR_ERRORS as exc:
        raise ReadFailure("corrupt", f"tar shard is damaged: {type(exc).__name__}: {exc}") from None
    shard = Shard([], tar=tar)
    try:
        for member in tar:
            shard.entries.append(member)
            if time.monotonic() > deadline:
                raise ReadFailure("unreadable", "timed out: the shard's entries were not listed within --read-timeout")
    except _TAR_ERRORS as exc:  # the entries before the damage are read; the shard itself gets a row
        shard.damage = f"tar shard is damaged: {type(exc).__name__}: {exc}"
    return shard


def _compressed(data: bytes, codec: str, max_bytes: int, member_limit: int, deadline: float) -> Shard:
    what = f"the shard's {codec} stream"
    with _open_codec(codec, data) as raw:
        stream = _Timed(raw, f"the {codec} shard", deadline)
        head = stream.read_full(_BLOCK)
        _check_head(head, what, stream.zeros_to_end)
        stream.front = head
        tar = tarfile.open(fileobj=stream, mode="r|", bufsize=_CHUNK)  # type: ignore[call-overload]  # any object with read()
        shard, kept = Shard([]), 0
        try:
            for member in tar:
                shard.entries.append(member)
                if not member.isfile() or member.size > member_limit:
                    continue  # skipped while streaming, never held
                try:
                    f = tar.extractfile(member)
                    body = f.read() if f else b""
                except _codec_errors() as exc:
                    shard.held[len(shard.entries) - 1] = f"{type(exc).__name__}: {exc}"
                    raise
                kept += len(body)
                if kept > max_bytes:
                    raise ReadFailure("too_large", f"the members of the {codec} shard to read hold more than {max_bytes} "
                                                   "bytes (--max-shard-bytes)")  # fmt: skip
                shard.held[len(shard.entries) - 1] = body
        except _codec_errors() as exc:
            shard.damage = f"{what} is damaged: {type(exc).__name__}: {exc}"
    return shard


def open_shard(data: bytes, max_bytes: int, member_limit: int, deadline: float) -> Shard:
    """The entries of a shard's bytes, its codec told by its first bytes and used alone (module docstring).

    Raises :class:`ReadFailure`: ``empty_shard`` (no byte, or zeros only), ``not_a_tar``, ``corrupt`` (a
    damaged stream or first header), ``too_large`` (a compressed shard's members to read above
    ``max_bytes``), ``unreadable`` (``deadline``, a ``time.monotonic()`` value, passed).
    """
    codec = shard_format(data[:8])
    if codec == "tar":
        return _plain(data, deadline)
    try:
        return _compressed(data, codec, max_bytes, member_limit, deadline)
    except ReadFailure:
        raise
    except _codec_errors() as exc:
        raise ReadFailure("corrupt", f"the shard's {codec} stream is damaged: {type(exc).__name__}: {exc}") from None


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link to {member.linkname!r} inside the shard: not followed"
    if member.islnk():
        return f"a hard link to {member.linkname!r} inside the shard: not followed"
    if member.ischr() or member.isblk():
        return "a device entry inside the shard: not read"
    if member.isfifo():
        return "a named pipe (FIFO) entry inside the shard: not read"
    return "not a regular file inside the shard: not read"


def _row(uri: str, status: str, error: str | None = None, data: bytes | None = None) -> dict:
    return {"image_uri": uri, "status": status, "error": error, "data": data, "kept": None}


def tar_rows(shown: str, shard: Shard, member_limit: int) -> Iterator[dict]:
    """Rows for every entry of a shard (folders aside): images to decode (``pending``, with their bytes)
    and rows or counts for the rest; then one row for the shard itself when it was damaged part-way
    (``corrupt``) or no entry made a row (``empty_shard``).

    A name that occurs twice is taken once, from its last entry (what extracting the shard leaves); the
    earlier entries are ``duplicate``. Sidecars (``x.json`` beside ``x.jpg``) and markers are counted,
    links, devices and pipes get a ``not_a_file`` row, a member above ``member_limit`` bytes ``too_large``,
    and every other entry is offered to the decoder, whatever its extension.
    """
    entries = [(i, m) for i, m in enumerate(shard.entries) if not m.isdir()]
    last = {m.name: i for i, m in entries}
    listing = classify_directory([(m.name, "file") for _, m in entries if m.isfile()])
    ignored = {r["source_uri"]: r["status"] for r in listing if r["kind"] == "row"}
    made = 0
    for i, member in entries:
        uri = f"{shown}#{member.name}"
        if last[member.name] != i:
            row = _row(uri, "duplicate")
        elif not member.isfile():
            row = _row(uri, "not_a_file", _member_kind(member))
        elif member.name in ignored:
            row = _row(uri, ignored[member.name])
        elif member.size > member_limit:
            row = _row(uri, "too_large", f"tar member declares {member.size} bytes, above the limit of {member_limit}")
        else:
            try:
                row = _row(uri, "pending", data=shard.member_bytes(i))
            except _TAR_ERRORS as exc:
                row = _row(uri, "corrupt", f"tar member cannot be read: {type(exc).__name__}: {exc}")
        made += row["status"] not in _COUNTED
        yield row
    if shard.damage:
        yield _row(shown, "corrupt", shard.damage)
    elif not made:
        folders = len(shard.entries) - len(entries)
        held = f"folders: {folders}; markers, sidecars or copies, counted: {len(entries)}" if shard.entries else "no entry"
        yield _row(shown, "empty_shard", f"the shard holds no file to read ({held})")
