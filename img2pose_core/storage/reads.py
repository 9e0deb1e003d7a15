"""The bounded reader of images and shards, for the annotation job and the Python API alike: bounded in
time and size, only what the operator allowed, never a hang.

:func:`read_source` reads one path or URL, or raises :class:`ReadFailure` whose ``status`` is the
images table's status for it (``not_a_file``, ``too_large``, ``not_allowed``, ``unreadable``):

- Local files are opened without blocking and checked to be regular files before a byte is read: a
  named pipe, a socket or a device is ``not_a_file`` instead of a hang or an endless read. A file whose
  real location is inside ``ReadLimits.output_root`` is not read (``not_allowed``). At most
  ``max_bytes`` are read, whatever size the file claims.
- ``http(s)://`` is read with ``requests`` (:mod:`.http_reads`): connect and idle timeouts, redirects
  followed by hand (at most five, each hop checked like the first), every address checked against the
  :class:`~img2pose_core.storage.netpolicy.AddressPolicy` before and when connecting, the body cut at
  ``max_bytes`` (``too_large``) and at the read's deadline.
- Other schemes (``s3://``, ``gs://`` ...) go through fsspec with the store's options and retries.

The whole read of one input, retries included, ends by ``ReadLimits.timeout_s``.
:func:`read_concurrently` reads several at a time and gives up a read still running past its time, so
a source that stalls where no timeout reaches (a hung mount, a TLS handshake that trickles) costs at
most that time and holds up nothing else.
"""

from __future__ import annotations

import errno
import os
import queue
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from ..uris import normalise_local, redact_text, scheme_of
from .netpolicy import AddressPolicy
from .retry import is_transient, with_retries

if TYPE_CHECKING:
    from .filesystems import StorageConfig

__all__ = ["ReadFailure", "ReadLimits", "read_source", "read_concurrently", "describe_error"]


class ReadFailure(Exception):
    """A source that gives no bytes; ``status`` is the images table's status for it."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ReadLimits:
    """Bounds of one read."""

    timeout_s: float = 180.0  # the whole read of one input, retries included (--read-timeout)
    max_bytes: int | None = None  # larger sources are too_large (None: no cap)
    output_root: str | None = None  # local files that resolve into it are not read
    # Which addresses http(s) reads may reach (private ranges: $IMG2POSE_BLOCK_PRIVATE_ADDRESSES).
    addresses: AddressPolicy = field(default_factory=AddressPolicy.from_env)


def describe_error(exc: BaseException) -> str:
    """``Type: message`` of an exception, or its type alone when it says nothing."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"


def _read_local(path: str, limits: ReadLimits) -> bytes:
    if limits.output_root and not scheme_of(limits.output_root):
        real, root = os.path.realpath(path), os.path.realpath(limits.output_root)
        if real == root or real.startswith(root.rstrip("/") + "/"):
            raise ReadFailure("not_allowed", "the file is inside the job's own output (through a symbolic link): not read")
    try:
        # O_NONBLOCK: opening a named pipe must not wait for a writer; regular files ignore the flag.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        if os.path.islink(path):
            raise ReadFailure("unreadable", "a symbolic link whose target does not exist") from None
        raise ReadFailure("unreadable", "no such file") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise ReadFailure("not_a_file", "a socket: only regular files are read") from None
        raise ReadFailure("unreadable", f"cannot open: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ReadFailure("not_a_file", f"{_kind_of(info.st_mode)}: only regular files are read")
        if limits.max_bytes is not None and info.st_size > limits.max_bytes:
            raise ReadFailure("too_large", f"the file is {info.st_size} bytes, above the limit of {limits.max_bytes}")
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            if limits.max_bytes is None:
                return f.read()
            # The stated size, then one byte past the cap: a file that grows, or claims size 0 (/proc,
            # /sys), is still cut. Never read(cap + 1) at once: it reserves the whole cap for a small file.
            chunks = [f.read(info.st_size)] if info.st_size else []
            total = sum(len(c) for c in chunks)
            while total <= limits.max_bytes:
                chunk = f.read(min(1 << 20, limits.max_bytes + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            if total > limits.max_bytes:
                raise ReadFailure("too_large", f"the file holds more than the limit of {limits.max_bytes} bytes")
            return b"".join(chunks)
    except OSError as exc:
        raise ReadFailure("unreadable", f"cannot read: {exc.strerror or exc}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def _open_store(uri: str, storage: StorageConfig, options: dict | None):
    if options is None:
        return storage.fs(uri)
    from .filesystems import env_s3_endpoint, open_fs, with_s3_endpoint

    # The caller's options over the store's defaults (timeouts, retries); the environment's S3 endpoint
    # when neither names one, as for bundles.
    merged = {**storage.options_for(uri), **options}
    return open_fs(uri, with_s3_endpoint(uri, merged, storage.s3_endpoint_url or env_s3_endpoint()))


def read_source(
    uri: str,
    storage: StorageConfig,
    limits: ReadLimits,
    deadline: float | None = None,
    *,
    storage_options: dict | None = None,
) -> bytes:
    """The bytes of ``uri``, or :class:`ReadFailure` with the status and a message free of secrets.

    ``storage_options`` (the Python API's): fsspec options for object-store URLs, over the store's
    own; for http(s), only their ``headers`` are sent.
    """
    deadline = deadline if deadline is not None else time.monotonic() + limits.timeout_s
    scheme = scheme_of(uri)
    try:
        if scheme in ("", "file"):
            return _read_local(normalise_local(uri), limits)
        if scheme in ("http", "https"):
            from .http_reads import read_http  # requests is imported only by a process that reads the web

            return read_http(uri, storage, limits, deadline, (storage_options or {}).get("headers"))
        fs, path = _open_store(uri, storage, storage_options)
        return with_retries(lambda: fs.cat_file(path), attempts=storage.read_attempts, deadline=deadline)
    except ReadFailure:
        raise
    except FileNotFoundError:
        raise ReadFailure("unreadable", "object not found") from None
    except Exception as exc:  # noqa: BLE001 - a store failure after retries is this input's status
        if time.monotonic() >= deadline:
            raise ReadFailure("unreadable", f"timed out: not read within the read timeout ({limits.timeout_s:g} s)") from None
        kind = "after retries" if is_transient(exc) else "not retried: it cannot succeed later"
        if scheme in ("http", "https"):
            from .http_reads import describe_http_error

            cause = describe_http_error(exc)
        else:
            cause = describe_error(exc)
        raise ReadFailure("unreadable", redact_text(f"{cause} ({kind})", [uri])) from None


def read_concurrently(
    items: Iterable[tuple[int, str, str]],
    read: Callable[[str], bytes],
    timeout_s: float,
    parallel: int = 8,
    parallel_tars: int = 1,
    timeout_name: str = "--read-timeout",
) -> Iterator[tuple[int, bytes | None, ReadFailure | None]]:
    """Read ``(index, uri, kind)`` items several at a time; yields ``(index, data, failure)`` as they end.

    Each read runs in a daemon thread; one that has not ended ``timeout_s`` after it started is given
    up (a ``ReadFailure`` naming ``timeout_name`` is yielded for it) and its thread is left to end on its
    own timeouts, so a stalled source costs at most ``timeout_s`` and never holds back the others. At
    most ``parallel`` reads run at once, of which at most ``parallel_tars`` are tar shards (each may be
    large).
    """
    pending = deque(items)
    results: queue.Queue = queue.Queue()
    running: dict[int, tuple[float, str]] = {}

    def worker(index: int, uri: str) -> None:
        try:
            results.put((index, read(uri), None))
        except ReadFailure as failure:
            results.put((index, None, failure))
        except BaseException as exc:  # noqa: BLE001 - reported as this input's failure
            results.put((index, None, ReadFailure("unreadable", describe_error(exc))))

    def start_more() -> None:
        held: list[tuple[int, str, str]] = []
        while pending and len(running) < parallel:
            index, uri, kind = pending.popleft()
            if kind == "tar" and sum(1 for _, k in running.values() if k == "tar") >= parallel_tars:
                held.append((index, uri, kind))
                continue
            running[index] = (time.monotonic(), kind)
            threading.Thread(target=worker, args=(index, uri), daemon=True, name=f"read-{index}").start()
        pending.extendleft(reversed(held))

    start_more()
    while running:
        nearest = min(started for started, _ in running.values()) + timeout_s
        try:
            index, data, failure = results.get(timeout=max(0.0, nearest - time.monotonic()) + 0.01)
        except queue.Empty:
            now = time.monotonic()
            for index, (started, _) in list(running.items()):
                if now - started >= timeout_s:
                    del running[index]
                    yield index, None, ReadFailure("unreadable", f"timed out: not read within {timeout_name} ({timeout_s:g} s)")
            start_more()
            continue
        if index not in running:
            continue  # a read given up earlier that ended after all
        del running[index]
        yield index, data, failure
        start_more()
