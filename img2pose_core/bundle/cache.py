"""The local cache of remote bundles: ``<cache>/remote/<sha256 of the URL>/``.

A remote bundle (any fsspec URL) is copied here once, each file checked against ``bundle.json`` on the
way in; ``bundle.json`` itself is read from the store on every open and written into the cache last,
so many processes on one machine share one copy and a changed remote file is never used unchecked.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..storage import env_s3_endpoint, open_fs, with_s3_endpoint, write_atomic
from ..uris import scheme_of
from .files import FILE_MODE, copy_stream_atomic, sha256_file
from .format import ARRAY_ROLES, MANIFEST_NAME, BundleError, parse_manifest

__all__ = ["DEFAULT_CACHE_DIR", "default_cache_dir", "sync_remote"]

DEFAULT_CACHE_DIR = Path(os.environ.get("IMG2POSE_CACHE") or Path.home() / ".cache" / "img2pose")


def default_cache_dir() -> Path:
    """The cache folder: ``$IMG2POSE_CACHE`` (read now, not at import) or ``~/.cache/img2pose``."""
    env = os.environ.get("IMG2POSE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "img2pose"


def sync_remote(uri: str, cache: Path, storage_options: dict | None, verify: bool) -> Path:
    """Bring the remote bundle at ``uri`` into the cache (only what is missing or stale); its folder.

    ``storage_options`` go to fsspec; for ``s3://`` the endpoint of ``AWS_ENDPOINT_URL[_S3]`` is used
    when they name none.
    """
    base_uri = uri.rstrip("/")
    try:
        fs, base = open_fs(base_uri, with_s3_endpoint(uri, storage_options, env_s3_endpoint()))
    except (ImportError, ValueError) as exc:
        raise BundleError(f"{uri}: cannot open this URL ({exc})") from exc
    base = base.rstrip("/")
    manifest_url = f"{base_uri}/{MANIFEST_NAME}"
    try:
        fs.invalidate_cache(base)  # a file listing cached from an earlier open may be stale
        raw = fs.cat_file(f"{base}/{MANIFEST_NAME}")
    except FileNotFoundError as exc:
        raise BundleError(f"{manifest_url}: missing: {uri} is not an img2pose bundle") from exc
    except Exception as exc:  # every filesystem raises its own errors (botocore, aiohttp, ...)
        raise BundleError(f"{manifest_url}: cannot read ({type(exc).__name__}: {exc})") from exc
    manifest = parse_manifest(raw, manifest_url)

    local = cache / "remote" / hashlib.sha256(base_uri.encode("utf-8")).hexdigest()
    # Plain HTTP(S) servers need not support range requests: read those files as one stream.
    open_options = {"block_size": 0} if scheme_of(uri) in ("http", "https") else {}
    for role in ARRAY_ROLES + ("weights",):  # the small files first: a bad bundle fails before the big download
        entry = manifest["files"][role]
        dest = local / entry["path"]
        if dest.is_file() and (not verify or sha256_file(dest) == entry["sha256"]):
            continue
        url = f"{base_uri}/{entry['path']}"
        try:
            with fs.open(f"{base}/{entry['path']}", "rb", **open_options) as src:
                copy_stream_atomic(src, dest, entry["sha256"], url)
        except BundleError:
            raise
        except FileNotFoundError as exc:
            raise BundleError(f"{url}: {role} file missing from the bundle") from exc
        except Exception as exc:
            raise BundleError(f"{url}: download failed ({type(exc).__name__}: {exc})") from exc
    write_atomic(local / ".source-uri", (base_uri + "\n").encode("utf-8"), mode=FILE_MODE)
    # Last: the cache folder is a bundle only once complete.
    write_atomic(local / MANIFEST_NAME, raw, mode=FILE_MODE)
    return local
