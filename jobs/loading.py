"""The load stage: each source read (retried, bounded in time and size) and decoded into pixels, tar
shards opened member by member, every input image leaving with a ``status`` (one row per image)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator, cast

import numpy as np

from img2pose_core.imageio import ImageDecodeError, decode_image, probe_jpeg
from img2pose_core.storage import StorageConfig
from img2pose_core.uris import redact_text, redact_uri, scheme_of

from .done import done_member_names, is_done
from .inputs import source_kind
from .inputs.shards import Shard, open_shard, tar_rows
from .reading import ReadFailure, ReadLimits, read_concurrently, read_source

__all__ = ["LoadSettings", "load_images", "object_column"]

_EMPTY = np.zeros((0, 0, 3), np.uint8)


def object_column(values: list) -> np.ndarray:
    """A 1-D object array holding ``values`` as they are (numpy would stack equal-shaped arrays)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


@dataclass(frozen=True)
class LoadSettings:
    storage: StorageConfig
    max_pixels: int
    keep_bytes: bool  # the crops stage re-decodes the original bytes
    rows_per_batch: int = 16
    reduce_for: tuple[int, int] | None = None  # (min_size, max_size): JPEG draft-scale decoding
    read_timeout_s: float = 180.0  # the whole read of one source, retries included
    device_decode: bool = False  # JPEGs travel as bytes and are decoded by the model stage (--gpu-decode)
    output_root: str | None = None  # local files resolving into the output are not read
    parallel_reads: int = 8
    # A tar shard is read whole into memory, and a compressed one's members to read kept there (--max-shard-bytes).
    max_shard_bytes: int = 1 << 30

    @property
    def max_file_bytes(self) -> int:
        """Largest image file read: 8 bytes a pixel of --max-pixels (16-bit RGBA, uncompressed), at least 64 MiB."""
        return max(64 << 20, 8 * self.max_pixels)


def _row(uri: str, status: str, error: str | None = None, data: bytes | None = None, kept: str | None = None) -> dict:
    return {"image_uri": uri, "status": status, "error": error, "data": data, "kept": kept}


def _decode_rows(rows: list[dict], settings: LoadSettings) -> dict[str, np.ndarray]:
    uris, shas, widths, heights, statuses, errors, pixels, datas, kept, encoded = [], [], [], [], [], [], [], [], [], []
    for r in rows:
        kept.append(r.get("kept"))
        data = r.get("data")
        sha = hashlib.sha256(data).hexdigest() if data is not None else None
        px, status, error, size, bytes_only = _EMPTY, r["status"], r["error"], (-1, -1), False
        if status == "pending":
            assert data is not None, "a pending row carries the bytes read"
            try:
                probed = probe_jpeg(data, max_pixels=settings.max_pixels) if settings.device_decode else None
                if probed is not None:
                    # Checked from the header; the model stage decodes (the bytes travel, not the pixels).
                    status, size, bytes_only = "ok", probed, True
                else:
                    img = decode_image(data, max_pixels=settings.max_pixels, reduce_for=settings.reduce_for)
                    px, status, size = img.pixels, "ok", (img.width, img.height)
            except ImageDecodeError as exc:
                status, error = exc.status, exc.message
        encoded.append(bytes_only)
        uris.append(r["image_uri"])
        shas.append(sha)
        # The picture's full size, even when its pixels were decoded at a reduced scale.
        widths.append(size[0])
        heights.append(size[1])
        statuses.append(status)
        errors.append(error)
        pixels.append(px)
        datas.append(data if (status == "ok" and (settings.keep_bytes or bytes_only)) else None)
    return {
        "image_uri": np.array(uris, dtype=object),
        "image_sha256": np.array(shas, dtype=object),
        "width": np.array(widths, dtype=np.int32),
        "height": np.array(heights, dtype=np.int32),
        "status": np.array(statuses, dtype=object),
        "error": np.array(errors, dtype=object),
        "pixels": object_column(pixels),
        "data": object_column(datas),
        "kept": np.array(kept, dtype=object),
        "encoded": np.array(encoded, dtype=bool),
    }


def _object_size(uri: str, storage: StorageConfig) -> int | None:
    """The size an object store declares for ``uri``; None for local files and the web (their reads check
    the size themselves) and where the store does not say (the read then reports any failure)."""
    if scheme_of(uri) in ("", "file", "http", "https"):
        return None
    try:
        fs, path = storage.fs(uri)
        size = fs.size(path)
    except Exception:  # noqa: BLE001 - the read that follows fails the same way and says why
        return None
    return int(size) if size is not None else None


def _read_shard(uri: str, settings: LoadSettings, deadline: float) -> Shard:
    """A shard's entries: at most ``--max-shard-bytes`` read (refused before the body where the size is
    declared: a file's, an object's or a server's), its codec told by its first bytes, listed by
    ``deadline`` (:func:`jobs.inputs.shards.open_shard`). Raises :class:`ReadFailure`."""
    cap = settings.max_shard_bytes
    try:
        size = _object_size(uri, settings.storage)
        if size is not None and size > cap:
            raise ReadFailure("too_large", f"the object is {size} bytes, above the limit of {cap}")
        data = read_source(uri, settings.storage, ReadLimits(settings.read_timeout_s, cap, settings.output_root), deadline)
        if len(data) > cap:
            raise ReadFailure("too_large", f"the shard is {len(data)} bytes, above the limit of {cap}")
        return open_shard(data, cap, settings.max_file_bytes, deadline)
    except ReadFailure as failure:
        if failure.status == "too_large" and "--max-shard-bytes" not in failure.message:
            raise ReadFailure("too_large", f"{failure.message} (--max-shard-bytes)") from None
        raise


def load_images(batch: dict[str, np.ndarray], settings: LoadSettings) -> Iterator[dict]:
    """Read and decode a batch of sources; yields rows for every input, counted ones included.

    Sources are read several at a time (:func:`jobs.reading.read_concurrently`), each bounded by
    ``settings.read_timeout_s``, and decoded as they arrive. A source's ``done_members``
    (``--skip-existing``, :mod:`jobs.done`) says what already has an ``ok`` row: a done file is not read,
    and done members of a shard are not decoded; both pass on as ``skipped``. A source's ``kept`` (the
    manifest columns of ``--keep-columns``, as JSON) goes with its rows. URIs are stored with their
    secrets redacted.
    """
    pending: list[dict] = []

    def flush(final: bool = False) -> Iterator[dict]:
        nonlocal pending
        while len(pending) >= settings.rows_per_batch or (final and pending):
            chunk, pending = pending[: settings.rows_per_batch], pending[settings.rows_per_batch :]
            yield _decode_rows(chunk, settings)

    n = len(batch["source_uri"])
    column = lambda name, default: batch[name] if name in batch else [default] * n  # noqa: E731
    to_read: list[tuple[int, str, str]] = []
    shown: dict[int, str] = {}
    kept = [str(k) if k else None for k in column("kept", None)]
    done = list(column("done_members", None))
    for index, (uri, kind, status, error) in enumerate(zip(batch["source_uri"], batch["kind"], column("status", ""), column("error", ""))):
        uri, kind = str(uri), str(kind)
        shown[index] = redact_uri(uri)
        if kind == "row":
            pending.append(_row(shown[index], str(status), redact_text(str(error or ""), [uri]) or None, kept=kept[index]))
        elif kind == "file" and is_done(done[index]):
            pending.append(_row(shown[index], "skipped"))
        else:
            to_read.append((index, uri, kind))
    yield from flush()

    limits = ReadLimits(settings.read_timeout_s, settings.max_file_bytes, settings.output_root)
    kinds = {index: kind for index, _, kind in to_read}

    def read(uri: str) -> bytes | Shard:
        # A shard is read, and its entries listed, in the read's thread and within its --read-timeout.
        if source_kind(uri) != "tar":
            return read_source(uri, settings.storage, limits)
        return _read_shard(uri, settings, time.monotonic() + settings.read_timeout_s)

    # read_concurrently passes on whatever a read returns: bytes for a file, a Shard for a tar.
    reads = read_concurrently(to_read, cast(Callable[[str], bytes], read), settings.read_timeout_s, settings.parallel_reads)
    for index, data, failure in reads:
        if failure is not None:
            pending.append(_row(shown[index], failure.status, failure.message, kept=kept[index]))
        elif kinds[index] == "tar":
            shard = cast(Shard, data)
            skip = done_member_names(done[index])
            for row in tar_rows(shown[index], shard, settings.max_file_bytes):
                member = row["image_uri"][len(shown[index]) + 1 :]
                if row["status"] == "pending" and member in skip:
                    row = _row(row["image_uri"], "skipped")
                row["kept"] = kept[index]
                pending.append(row)
                yield from flush()
            del data, shard
        else:
            pending.append(_row(shown[index], "pending", data=data, kept=kept[index]))
        yield from flush()
    yield from flush(final=True)

