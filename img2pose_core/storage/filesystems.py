"""fsspec filesystems with the options the project uses: S3 endpoints, timeouts, retried operations.

Credentials are never handled here: s3fs/botocore take them from the standard AWS chain
(environment, shared config, instance or workload identity). Only the endpoint URL, which is not a
secret, travels in arguments and manifests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ..uris import scheme_of
from .atomic import write_atomic
from .retry import with_retries

if TYPE_CHECKING:
    import fsspec  # imported where used: importing the package stays cheap

__all__ = ["StorageConfig", "env_s3_endpoint", "is_local_fs", "open_fs", "uri_of", "with_s3_endpoint"]

S3_SCHEMES = ("s3", "s3a")


def env_s3_endpoint() -> str | None:
    """The S3 endpoint (MinIO, Ceph ...) the environment names, or None: ``AWS_ENDPOINT_URL_S3`` first
    (botocore's own order), then ``AWS_ENDPOINT_URL``."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def with_s3_endpoint(uri: str, options: dict | None, endpoint: str | None) -> dict:
    """A copy of ``options``, with ``endpoint_url`` set for an ``s3://`` ``uri`` when ``options`` name none.

    Recent botocore reads the endpoint variables itself; passing the endpoint explicitly keeps
    S3-compatible stores working whatever the botocore version. An endpoint already given, at the top
    level or in ``client_kwargs``, is kept.
    """
    out = dict(options or {})
    if endpoint and scheme_of(uri) in S3_SCHEMES:
        if "endpoint_url" not in out and "endpoint_url" not in (out.get("client_kwargs") or {}):
            out["endpoint_url"] = endpoint
    return out


def open_fs(uri: str, options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of ``uri``, made with ``options``, and the path within it."""
    from fsspec.core import url_to_fs

    return url_to_fs(uri, **(options or {}))


def _protocol(fs: fsspec.AbstractFileSystem) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is this machine's filesystem (its paths are plain local paths)."""
    return _protocol(fs) in ("file", "local")


def uri_of(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A URI for a path of ``fs``: local paths stay plain, others get their scheme."""
    return path if is_local_fs(fs) else fs.unstrip_protocol(path)


@dataclass(frozen=True)
class StorageConfig:
    """How to reach object stores: an S3 endpoint (MinIO, Ceph, moto ...), timeouts and retry counts."""

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
        """The configuration for an ``--s3-endpoint-url`` argument, else the environment's endpoint
        (``$AWS_ENDPOINT_URL_S3``, then ``$AWS_ENDPOINT_URL``: botocore's order, as everywhere)."""
        return cls(s3_endpoint_url=endpoint or env_s3_endpoint())

    def for_checks(self) -> "StorageConfig":
        """The same stores with short timeouts and few retries, for the checks before any work."""
        return replace(self, read_attempts=2, quick=True)

    def options_for(self, uri: str) -> dict:
        """fsspec storage options for ``uri`` (only object-store URLs get any)."""
        protocol = scheme_of(uri)
        if protocol in S3_SCHEMES:
            # botocore's adaptive mode backs off on SlowDown/503 and rate-limits itself. Its default
            # timeouts (60 s each) would let one stalled connection hold a read for minutes per attempt.
            config: dict = {
                "retries": {"max_attempts": 10, "mode": "adaptive"},
                "connect_timeout": self.connect_timeout_s, "read_timeout": self.idle_timeout_s,
            }  # fmt: skip
            if self.quick:
                config = {"retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 5, "read_timeout": 15}
            return with_s3_endpoint(uri, {"config_kwargs": config}, self.s3_endpoint_url)
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
        try:
            return open_fs(uri, self.options_for(uri))
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

        Object stores make a PUT visible atomically; on a local or mounted filesystem the data goes
        through a temporary file beside the target (:func:`~img2pose_core.storage.write_atomic`).
        """
        fs, path = self.fs(uri)
        if is_local_fs(fs):
            write_atomic(path, data)
            return
        with_retries(lambda: fs.pipe_file(path, data), attempts=self.read_attempts)

    def exists(self, uri: str) -> bool:
        """Whether an object or folder is at ``uri``."""
        fs, path = self.fs(uri)
        return bool(with_retries(lambda: fs.exists(path), attempts=self.read_attempts))

    def delete(self, uri: str) -> None:
        """Remove the object at ``uri``; one already gone is no error."""
        fs, path = self.fs(uri)
        try:
            with_retries(lambda: fs.rm_file(path), attempts=self.read_attempts)
        except FileNotFoundError:
            pass

    def glob(self, pattern: str) -> list[str]:
        """The URIs matching ``pattern`` (``**`` spans folders), sorted; none when its folder is missing."""
        fs, path = self.fs(pattern)
        return sorted(uri_of(fs, p) for p in with_retries(lambda: fs.glob(path), attempts=self.read_attempts))
