"""Reading the job's sources: bounded in time and size, only what the operator allowed, never a hang.

Each source (an image or a tar shard) is read in its own thread, several at a time, and the load
stage decodes whatever arrives first: one slow host never holds up the other sources of its batch.
Every read has a connect timeout and an idle timeout on its sockets, retries only what can succeed
later (throttling, 5xx, resets, timeouts: not a name that does not resolve or a refused connection),
and the whole read of one input, retries included, ends by ``--read-timeout``: a read still running
then is abandoned (its thread ends on its own socket timeouts) and the input gets an ``unreadable``
row that says so.

- Local files are opened without blocking and checked to be regular files before a byte is read: a
  named pipe, a socket or a device gets a ``not_a_file`` row instead of a hang. A file whose real
  location is inside the job's output is not read (``not_allowed``).
- ``http(s)://`` is read with ``requests``: redirects are followed by hand, at most five, each hop
  checked like the first (no cloud metadata service); a body longer than the size cap is cut and the
  input is ``too_large``.
- Other schemes (``s3://``, ``gs://`` ...) go through fsspec with the job's store options.
"""

from __future__ import annotations

import errno
import os
import queue
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from img2pose_core.storage import StorageConfig, exception_chain, is_transient, with_retries
from img2pose_core.uris import normalise_local, redact_text, scheme_of


__all__ = ["ReadFailure", "ReadLimits", "read_source", "read_concurrently"]

_MAX_REDIRECTS = 5
_CHUNK = 1 << 20


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


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
            what = ("a folder" if stat.S_ISDIR(info.st_mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(info.st_mode)
                    else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "not a regular file")  # fmt: skip
            raise ReadFailure("not_a_file", f"{what}: only regular files are read")
        if limits.max_bytes is not None and info.st_size > limits.max_bytes:
            raise ReadFailure("too_large", f"the file is {info.st_size} bytes, above the limit of {limits.max_bytes}")
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            return f.read()
    except OSError as exc:
        raise ReadFailure("unreadable", f"cannot read: {exc.strerror or exc}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def _describe_http(exc: BaseException) -> str:
    """A short cause for a failed HTTP read (requests' own messages repeat the whole URL and pool)."""
    text = " ".join(str(e) for e in exception_chain(exc)).lower()
    if "name or service not known" in text or "failed to resolve" in text or "nodename nor servname" in text:
        return "the host name does not resolve"
    if "connection refused" in text:
        return "the host refused the connection"
    if "connecttimeout" in text or "connect timeout" in text:
        return "no connection within the connect timeout"
    if "readtimeout" in text or "read timed out" in text:
        return "the server sent nothing within the idle timeout"
    if "ssl" in text:
        return f"TLS failed ({type(exc).__name__})"
    return _describe(exc)


def _http_status_failure(code: int, url: str) -> Exception:
    if code in (404, 410):
        return ReadFailure("unreadable", f"HTTP {code}: not found")
    error = OSError(f"HTTP {code}")
    error.status = code  # type: ignore[attr-defined]  # a plain OSError (its name is in messages) with what is_transient reads
    return error


_SESSIONS: queue.SimpleQueue = queue.SimpleQueue()


def _session():
    """A ``requests.Session`` for one read at a time: its connections stay open for the next read of the
    same host (manifests of URLs mostly name a few hosts). Sessions are shared between reads, never
    between two reads at once."""
    import requests

    try:
        return _SESSIONS.get_nowait()
    except queue.Empty:
        from http.cookiejar import DefaultCookiePolicy

        session = requests.Session()
        # Each read stands alone, as a plain GET would: no cookie of one URL is sent with another.
        session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        return session


def _read_http(url: str, storage: StorageConfig, limits: ReadLimits, deadline: float) -> bytes:
    session = _session()
    try:
        return with_retries(lambda: _get_http(url, session, storage, limits, deadline), attempts=storage.read_attempts,
                            deadline=deadline)  # fmt: skip
    finally:
        _SESSIONS.put(session)


def _get_http(url: str, session, storage: StorageConfig, limits: ReadLimits, deadline: float) -> bytes:
    import requests

    from .inputs import http_host_refusal

    current = url
    for _ in range(_MAX_REDIRECTS + 1):
        why = http_host_refusal(current)
        if why:
            raise ReadFailure("not_allowed", why)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the read timeout passed")
        timeout = (min(storage.connect_timeout_s, remaining), min(storage.idle_timeout_s, remaining))
        with session.get(current, stream=True, timeout=timeout, allow_redirects=False) as resp:
            if resp.is_redirect:
                location = resp.headers.get("location", "")
                current = requests.compat.urljoin(current, location)
                if scheme_of(current) not in ("http", "https"):
                    raise ReadFailure("not_allowed", f"redirected to a {scheme_of(current) or 'local'} location")
                continue
            if resp.status_code >= 400:
                raise _http_status_failure(resp.status_code, current)
            declared = resp.headers.get("content-length")
            if limits.max_bytes is not None and declared and declared.isdigit() and int(declared) > limits.max_bytes:
                raise ReadFailure("too_large", f"the server declares {declared} bytes, above the limit of {limits.max_bytes}")
            chunks, size = [], 0
            for chunk in resp.iter_content(_CHUNK):
                size += len(chunk)
                if limits.max_bytes is not None and size > limits.max_bytes:
                    raise ReadFailure("too_large", f"the body exceeds the limit of {limits.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError("the read timeout passed during the transfer")
                chunks.append(chunk)
            return b"".join(chunks)
    raise ReadFailure("unreadable", f"more than {_MAX_REDIRECTS} redirects")


def read_source(uri: str, storage: StorageConfig, limits: ReadLimits, deadline: float | None = None) -> bytes:
    """The bytes of ``uri``, or :class:`ReadFailure` with the status and a message free of secrets."""
    deadline = deadline if deadline is not None else time.monotonic() + limits.timeout_s
    scheme = scheme_of(uri)
    try:
        if scheme in ("", "file"):
            return _read_local(normalise_local(uri), limits)
        if scheme in ("http", "https"):
            return _read_http(uri, storage, limits, deadline)
        fs, path = storage.fs(uri)
        return with_retries(lambda: fs.cat_file(path), attempts=storage.read_attempts, deadline=deadline)
    except ReadFailure:
        raise
    except FileNotFoundError:
        raise ReadFailure("unreadable", "object not found") from None
    except Exception as exc:  # noqa: BLE001 - a store failure after retries is this input's status
        kind = "after retries" if is_transient(exc) else "not retried: it cannot succeed later"
        cause = _describe_http(exc) if scheme in ("http", "https") else _describe(exc)
        raise ReadFailure("unreadable", redact_text(f"{cause} ({kind})", [uri])) from None


def read_concurrently(
    items: Iterable[tuple[int, str, str]],
    read: Callable[[str], bytes],
    timeout_s: float,
    parallel: int = 8,
    parallel_tars: int = 1,
) -> Iterator[tuple[int, bytes | None, ReadFailure | None]]:
    """Read ``(index, uri, kind)`` items several at a time; yields ``(index, data, failure)`` as they end.

    Each read runs in a daemon thread; one that has not ended ``timeout_s`` after it started is given
    up (a ``ReadFailure`` is yielded for it) and its thread is left to end on its own timeouts, so a
    stalled source costs at most ``timeout_s`` and never holds back the others. At most ``parallel``
    reads run at once, of which at most ``parallel_tars`` are tar shards (each may be large).
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
            results.put((index, None, ReadFailure("unreadable", _describe(exc))))

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
                    yield index, None, ReadFailure(
                        "unreadable", f"timed out: not read within --read-timeout ({timeout_s:g} s)"
                    )
            start_more()
            continue
        if index not in running:
            continue  # a read given up earlier that ended after all
        del running[index]
        yield index, data, failure
        start_more()

