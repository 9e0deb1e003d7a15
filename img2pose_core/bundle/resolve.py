"""Which bundle a command or job uses when it names one, and when it names none."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .format import MANIFEST_NAME, BundleError
from .official import LICENSE_NOTICE, fetch_official, official_bundle_dir
from .store import Bundle, open_bundle

__all__ = ["resolve_bundle"]


def _how_to_provide(where: Path) -> str:
    return (
        "give a bundle with --bundle PATH_OR_URL or the IMG2POSE_BUNDLE environment variable, or download the "
        f"official weights (CC BY-NC 4.0, non-commercial) with `img2pose bundle fetch` (into {where})"
    )


def resolve_bundle(
    uri: str | Path | None,
    *,
    fetch_if_missing: bool = True,
    cache_dir: str | Path | None = None,
    storage_options: dict | None = None,
) -> Bundle:
    """The bundle a job should use: ``uri``, else ``$IMG2POSE_BUNDLE``, else the official one in the cache.

    The official bundle is downloaded on first use when ``fetch_if_missing``; when no bundle can be had,
    the :class:`BundleError` says how to provide one.
    """
    chosen = uri or os.environ.get("IMG2POSE_BUNDLE")
    if chosen:
        return open_bundle(chosen, cache_dir=cache_dir, storage_options=storage_options)
    official = official_bundle_dir("v1", cache_dir=cache_dir)
    if (official / MANIFEST_NAME).is_file():
        return open_bundle(official)
    if not fetch_if_missing:
        raise BundleError(f"no img2pose bundle: {_how_to_provide(official)}")
    try:
        print(f"img2pose: no bundle given; fetching the official one. {LICENSE_NOTICE}", file=sys.stderr)
        fetch_official(official)
    except (BundleError, OSError) as exc:
        raise BundleError(f"no img2pose bundle: fetching the official one failed ({exc}); "
                          f"{_how_to_provide(official)}") from exc
    return open_bundle(official)
