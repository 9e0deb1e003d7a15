"""Object-store access for the job: fsspec filesystems, reads that retry transient errors, atomic writes.

Credentials are never handled here: s3fs/botocore take them from the standard AWS chain
(environment, shared config, instance or workload identity). Only the endpoint URL, which is not a
secret, travels in the job's arguments and manifests.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import fsspec
from fsspec.core import url_to_fs

__all__ = ["StorageConfig", "is_transient", "with_retries", "join_uri"]

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
    "connection refused",
    "connectionerror",
    "server disconnected",
    "broken pipe",
    "temporarily unavailable",
    "try again",
    "incompleteread",
    "response ended prematurely",
    "responsestreamingerror",
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` looks like throttling or a passing network/store fault (worth a retry)."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = f"{type(exc).__name__} {exc}".lower()
    return any(marker in text for marker in _TRANSIENT_MARKERS)


def with_retries(fn: Callable[[], T], *, attempts: int = 8, base_delay: float = 0.2, max_delay: float = 20.0) -> T:
    """Call ``fn``, retrying transient failures with jittered exponential backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if attempt == attempts or not is_transient(exc):
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1))
            time.sleep(delay * (0.5 + random.random()))
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

    @classmethod
    def from_args(cls, endpoint: str | None) -> "StorageConfig":
        return cls(s3_endpoint_url=endpoint or os.environ.get("AWS_ENDPOINT_URL") or None)

    def options_for(self, uri: str) -> dict:
        """fsspec storage options for ``uri`` (only object-store URLs get any)."""
        protocol = uri.split("://", 1)[0] if "://" in uri else "file"
        if protocol in ("s3", "s3a"):
            opts: dict = {
                # botocore's adaptive mode backs off on SlowDown/503 and rate-limits itself.
                "config_kwargs": {"retries": {"max_attempts": 10, "mode": "adaptive"}},
            }
            if self.s3_endpoint_url:
                opts["endpoint_url"] = self.s3_endpoint_url
            return opts
        return {}

    def fs(self, uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """The filesystem of ``uri`` and the path within it."""
        return url_to_fs(uri, **self.options_for(uri))

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
