"""Storage for the whole project, Ray-free: fsspec filesystems with options, retries, atomic writes, listing.

The bundle code, the report, the jobs and training all read and write through here:

- :mod:`.filesystems`: :class:`StorageConfig` (S3 endpoint, timeouts, retried reads, writes, listing)
  and the plain helpers under it (:func:`open_fs`, :func:`with_s3_endpoint`, :func:`env_s3_endpoint`,
  :func:`is_local_fs`, :func:`uri_of`);
- :mod:`.retry`: which errors are transient (:func:`is_transient`) and :func:`with_retries`;
- :mod:`.atomic`: local files written through a temporary file and renamed (:func:`write_atomic`,
  :func:`atomic_file`).

URIs themselves (schemes, which are local, joining, redaction) are in :mod:`img2pose_core.uris`.
"""

from __future__ import annotations

from .atomic import atomic_file, temp_beside, write_atomic
from .filesystems import StorageConfig, env_s3_endpoint, is_local_fs, open_fs, uri_of, with_s3_endpoint
from .retry import exception_chain, is_transient, with_retries

__all__ = [
    "StorageConfig",
    "atomic_file",
    "env_s3_endpoint",
    "exception_chain",
    "is_local_fs",
    "is_transient",
    "open_fs",
    "temp_beside",
    "uri_of",
    "with_retries",
    "with_s3_endpoint",
    "write_atomic",
]
