"""Object-store access for the job: fsspec filesystems, reads that retry transient errors, atomic writes.

Credentials are never handled here: s3fs/botocore take them from the standard AWS chain
(environment, shared config, instance or workload identity). Only the endpoint URL, which is not a
secret, travels in the job's arguments and manifests.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Callable, TypeVar

import fsspec
from fsspec.core import url_to_fs

__all__ = ["StorageConfig", "is_transient", "with_retries", "join_uri", "exception_chain"]

T = TypeVar("T")

# Messages of errors worth retrying, from botocore/s3fs/aiohttp/pyarrow (lower case).
_TRANSIENT_MARKERS = (
    "slowdown",
    "slow down",
    "throttl",
    "503",
    "500 internal",
    "internalerror",
    "service unavailable",
    "serviceunavailable",
    "requesttimeout",
    "timed out",
    "timeout",
    "connection reset",
    "connection aborted",
    "connectionerror",
    "httpclienterror",
    "server disconnected",
    "broken pipe",
    "temporarily unavailable",
    "try again",
    "incompleteread",
    "response ended prematurely",
    "responsestreamingerror",
    # s3fs keeps only the server's message: SlowDown says this, a 500 answer to HEAD (no body) the reason.
    "reduce your request rate",
    "internal server error",
    "too many requests",
    "bad gateway",
    "gateway timeout",
)
# s3fs turns S3 error codes into OSError errnos (s3fs/errors.py): SlowDown, ServiceUnavailable, 503 and
# OperationAborted -> EBUSY; InternalError and 500 -> EREMOTEIO. The errno is the reliable signal.
_TRANSIENT_ERRNOS = frozenset(
    {errno.EBUSY, getattr(errno, "EREMOTEIO", errno.EIO), errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET,
     errno.ECONNABORTED, errno.EPIPE}
)  # fmt: skip


# Errors that no retry mends: a name that does not resolve, a host that refuses connections.
_PERMANENT_MARKERS = (
    "name or service not known",
    "nodename nor servname",
    "no address associated",
    "name resolution",
    "failed to resolve",
    "getaddrinfo failed",
    "dnserror",
    "connection refused",
    "connectionrefused",
    "certificate verify failed",
    "sslerror",
    "wrong version number",
)


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or during, innermost last."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen and len(seen) < 8:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` looks like throttling or a passing network/store fault (worth a retry).

    Retried: throttling, server errors (5xx, 429), resets, cut transfers, timeouts. Not retried: a
    name that does not resolve, a refused connection, a missing object, a refused permission.
    """
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    chain = exception_chain(exc)
    if any(isinstance(e, socket.gaierror) or isinstance(e, ConnectionRefusedError) for e in chain):
        return False
    described = " ".join(f"{' '.join(c.__name__ for c in type(e).__mro__)} {e}" for e in chain).lower()
    if any(marker in described for marker in _PERMANENT_MARKERS):
        return False
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    if isinstance(status, int) and 400 <= status < 600:
        return status == 429 or status in (500, 502, 503, 504)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    # s3fs turns some answers into bare OSErrors by errno: a 503 SlowDown on PUT into
    # OSError(EBUSY, "Please reduce your request rate.") and a 500 on HEAD into OSError(EREMOTEIO,
    # "Internal Server Error"); no text marker below matches them.
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    # Class names along the MRO: botocore's ConnectionClosedError ("Connection was closed before we
    # received a valid response", a reset or half a body on a listing) is an HTTPClientError by class only.
    names = " ".join(cls.__name__ for cls in type(exc).__mro__)
    text = f"{names} {exc}".lower()
    return any(marker in text for marker in _TRANSIENT_MARKERS)


def with_retries(
    fn: Callable[[], T],
    *,
    attempts: int = 8,
    base_delay: float = 0.2,
    max_delay: float = 20.0,
    deadline: float | None = None,
) -> T:
    """Call ``fn``, retrying transient failures with jittered exponential backoff.

    ``deadline`` (a ``time.monotonic()`` value): no attempt starts, and no wait lasts, past it.
    """
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if attempt == attempts or not is_transient(exc):
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * (0.5 + random.random())
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


def join_uri(base: str, *parts: str) -> str:
    """``base`` with ``parts`` appended by ``/`` (works for local paths and URLs alike)."""
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])


@dataclass(frozen=True)
class StorageConfig:
    """How to reach object stores: an S3 endpoint (MinIO, Ceph, moto ...) and retry counts."""

    s3_endpoint_url: str | None = None
    read_attempts: int = 8
    extra: dict = field(default_factory=dict)
    # Checks before any work (inputs, output, bundle) give up within about a minute: an unreachable
    # or mistyped store is a bad argument there, not a transient fault worth the run's full budget.
    quick: bool = False
    connect_timeout_s: float = 10.0  # to open a connection
    idle_timeout_s: float = 30.0  # without a byte received, once connected

    @classmethod
    def from_args(cls, endpoint: str | None) -> "StorageConfig":
        return cls(s3_endpoint_url=endpoint or os.environ.get("AWS_ENDPOINT_URL") or None)

    def for_checks(self) -> "StorageConfig":
        """The same stores with short timeouts and few retries, for the checks before any work."""
        return replace(self, read_attempts=2, quick=True)

    def options_for(self, uri: str) -> dict:
        """fsspec storage options for ``uri`` (only object-store URLs get any)."""
        protocol = uri.split("://", 1)[0] if "://" in uri else "file"
        if protocol in ("s3", "s3a"):
            opts: dict = {
                # botocore's adaptive mode backs off on SlowDown/503 and rate-limits itself. Its
                # default timeouts (60 s each) would let one stalled connection hold a read for
                # minutes per attempt; the job bounds each input's whole read anyway (--read-timeout).
                "config_kwargs": {
                    "retries": {"max_attempts": 10, "mode": "adaptive"},
                    "connect_timeout": self.connect_timeout_s, "read_timeout": self.idle_timeout_s,
                },
            }
            if self.quick:
                opts["config_kwargs"] = {
                    "retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 5, "read_timeout": 15,
                }  # fmt: skip
            if self.s3_endpoint_url:
                opts["endpoint_url"] = self.s3_endpoint_url
            return opts
        if protocol in ("http", "https"):
            import aiohttp

            # aiohttp's default is 300 s per request: a host that accepts and never answers would
            # hold a listing or a check for minutes per attempt.
            connect, idle = (5.0, 15.0) if self.quick else (self.connect_timeout_s, self.idle_timeout_s)
            return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=idle)}}
        return {}

    def fs(self, uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """The filesystem of ``uri`` and the path within it.

        Raises ValueError when the filesystem cannot even be created: some fsspec filesystems (ftp,
        sftp, smb) connect in their constructor, where an unknown host raises a bare OSError; callers
        report ValueError as an unusable location.
        """
        options = self.options_for(uri)
        try:
            return url_to_fs(uri, **options)
        except (FileNotFoundError, PermissionError):
            raise
        except OSError as exc:
            raise ValueError(f"cannot connect: {type(exc).__name__}: {exc}") from exc

    def read_bytes(self, uri: str) -> bytes:
        """The whole object at ``uri``, retrying throttling and transient errors."""
        fs, path = self.fs(uri)
        return with_retries(lambda: fs.cat_file(path), attempts=self.read_attempts)

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write ``data`` so that readers see the old object or the whole new one, never a part.

        Object stores make a PUT visible atomically; on a local or mounted filesystem the data is
        written to a temporary name beside the target and renamed over it.
        """
        fs, path = self.fs(uri)
        if _is_local(fs):
            directory = os.path.dirname(path)
            os.makedirs(directory, exist_ok=True)
            tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            return
        with_retries(lambda: fs.pipe_file(path, data), attempts=self.read_attempts)

    def exists(self, uri: str) -> bool:
        fs, path = self.fs(uri)
        return bool(with_retries(lambda: fs.exists(path), attempts=self.read_attempts))

    def delete(self, uri: str) -> None:
        fs, path = self.fs(uri)
        try:
            with_retries(lambda: fs.rm_file(path), attempts=self.read_attempts)
        except FileNotFoundError:
            pass


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")
