"""Reading what the job's rows point at: local paths, fsspec URLs and members of tar shards."""

from __future__ import annotations

import tarfile

from ..output import filesystem

__all__ = ["read_uri_bytes", "split_shard_uri"]


def split_shard_uri(uri: str) -> tuple[str, str | None]:
    """``SHARD.tar#member`` → (shard URI, member); any other URI → (uri, None)."""
    marker = uri.lower().rfind(".tar#")
    if marker < 0:
        return uri, None
    return uri[: marker + 4], uri[marker + 5 :]


def read_uri_bytes(uri: str, s3_endpoint_url: str | None = None) -> bytes:
    """The bytes of ``image_uri`` as the job wrote it: a local path, an fsspec URL, or a tar shard member."""
    shard, member = split_shard_uri(uri)
    fs, path = filesystem(shard, s3_endpoint_url)
    if member is None:
        return fs.cat_file(path)
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        try:
            info = tar.getmember(member)
        except KeyError:
            raise FileNotFoundError(f"no member {member!r} in {shard}") from None
        extracted = tar.extractfile(info) if info.isfile() else None
        if extracted is None:
            raise FileNotFoundError(f"{member!r} in {shard} is not a file")
        return extracted.read()
