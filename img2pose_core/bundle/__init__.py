"""Model bundles: the img2pose weights with everything needed to use them, checked by sha256.

A bundle is a folder (local, or any fsspec URL: ``s3://``, ``gs://``, ``https://`` ...) holding the
weights (``.pth`` in any layout :func:`checkpoint.read_state_dict` reads, or ``.safetensors``), the pose
mean and standard deviation (6 values each), the 68- and 5-point 3D references, and ``bundle.json``,
which names each file with its sha256 and stores the model settings. ``bundle.json`` is written last,
so a folder whose copy was interrupted is never taken for a bundle. Remote bundles are copied into a
local cache once; every file is verified against ``bundle.json`` before use.

The project ships no weights: :func:`fetch_official` downloads the authors' release (CC BY-NC 4.0,
non-commercial) and assembles a bundle from it. See ``docs/bundles.md``.

One concept per module: :mod:`.format` (the layout of ``bundle.json`` and its files), :mod:`.files`
(hashing, atomic copies), :mod:`.store` (create, open, verify), :mod:`.cache` (remote bundles'
local copies), :mod:`.fetch` (HTTP downloads), :mod:`.official` (the authors' release),
:mod:`.resolve` (which bundle to use) and :mod:`.ref` (handing a bundle to another process). The
model is built from a bundle in :mod:`img2pose_core.builder`.
"""

from __future__ import annotations

from typing import Any

from ..uris import is_local_uri
from .cache import DEFAULT_CACHE_DIR, default_cache_dir
from .fetch import download
from .format import (
    ARRAY_ROLES,
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    MANIFEST_NAME,
    ROLES,
    BundleError,
    manifest_digest,
)
from .official import (
    DEFAULT_URLS,
    LICENSE_NOTICE,
    SOURCES,
    VARIANTS,
    WEIGHTS_LICENSE,
    fetch_official,
    official_bundle_dir,
)
from .ref import BundleRef, bundle_files, bundle_ref, materialise_bundle, open_ref
from .resolve import resolve_bundle
from .store import Bundle, create_bundle, open_bundle

__all__ = [
    "ARRAY_ROLES",
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "DEFAULT_CACHE_DIR",
    "DEFAULT_URLS",
    "LICENSE_NOTICE",
    "MANIFEST_NAME",
    "ROLES",
    "SOURCES",
    "VARIANTS",
    "WEIGHTS_LICENSE",
    "Bundle",
    "BundleError",
    "BundleRef",
    "bundle_files",
    "bundle_ref",
    "create_bundle",
    "default_cache_dir",
    "download",
    "fetch_official",
    "is_local_uri",
    "manifest_digest",
    "materialise_bundle",
    "official_bundle_dir",
    "open_bundle",
    "open_ref",
    "resolve_bundle",
]

# The model builder lives in img2pose_core.builder, which imports this package; it is looked up on
# first use so that importing either one first works.
_BUILDER_NAMES = {"build_model": "build_model", "_build_model": "model_from_files"}


def __getattr__(name: str) -> Any:
    """``build_model`` (and the older ``_build_model``), from :mod:`img2pose_core.builder`."""
    if name in _BUILDER_NAMES:
        from .. import builder

        return getattr(builder, _BUILDER_NAMES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
