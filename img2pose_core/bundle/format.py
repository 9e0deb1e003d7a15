"""The bundle layout: ``bundle.json``'s fields, the five file roles and what each file must hold.

The contract itself is written out in ``docs/bundles.md``; this module is its one implementation:
parsing and checking a manifest, writing one, loading and checking the arrays, and the canonical
digest that names a bundle.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..settings import ModelSettings

__all__ = [
    "ARRAY_ROLES",
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "MANIFEST_NAME",
    "ROLES",
    "BundleError",
    "manifest_digest",
]


class BundleError(ValueError):
    """A bundle that cannot be created, read or trusted; the message names the file or URL and the problem."""


BUNDLE_FORMAT = "img2pose-bundle"
BUNDLE_FORMAT_VERSION = 1
MANIFEST_NAME = "bundle.json"
ROLES = ("weights", "pose_mean", "pose_stddev", "points_68", "points_5")
ARRAY_ROLES = ("pose_mean", "pose_stddev", "points_68", "points_5")
_POINT_SHAPES = {"points_68": (68, 3), "points_5": (5, 3)}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def manifest_digest(manifest: dict) -> str:
    """sha256 (hex) of ``manifest`` in canonical form: every file's sha256 and every setting.

    Two bundles with the same digest give the same results; the weights' sha256 alone does not say
    that (the pose statistics, reference points and settings matter as much).
    """
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def is_sha256(text: Any) -> bool:
    """Whether ``text`` is a sha256 digest as ``bundle.json`` writes them: 64 lower-case hex digits."""
    return isinstance(text, str) and bool(_SHA256.match(text))


def sha_mismatch(label: str, expected: str, actual: str) -> str:
    """The message for a file whose sha256 is not the one ``bundle.json`` records."""
    return (
        f"{label}: sha256 mismatch: bundle.json expects {expected}, the file has {actual} "
        "(the file was changed or corrupted; refusing to use it)"
    )


def is_plain_name(name: Any) -> bool:
    """Whether ``name`` may name a bundle file: a plain base name, never ``bundle.json`` or a path."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..", MANIFEST_NAME)
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
        and PurePosixPath(name).name == name
    )


# --- The arrays ------------------------------------------------------------------------------------
def load_array(path: Path, role: str, label: str | None = None) -> np.ndarray:
    """``role``'s array from ``path`` as float32 of the shape the model needs; refuses anything else."""
    label = label or str(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise BundleError(f"{label}: {role} file not found") from exc
    except (ValueError, OSError, EOFError) as exc:
        raise BundleError(f"{label}: {role}: not a readable .npy array ({exc})") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise BundleError(f"{label}: {role}: expected a numeric array, found dtype {getattr(arr, 'dtype', None)}")
    if role in _POINT_SHAPES:
        if arr.shape != _POINT_SHAPES[role]:
            raise BundleError(f"{label}: {role}: expected shape {_POINT_SHAPES[role]}, found {arr.shape}")
    elif arr.size != 6 or max(arr.shape, default=0) != 6:
        # (6,), (1, 6) and (6, 1) all hold the 6 values rx, ry, rz, tx, ty, tz.
        raise BundleError(f"{label}: {role}: expected 6 values (rx, ry, rz, tx, ty, tz), found shape {arr.shape}")
    out = np.ascontiguousarray(arr, dtype=np.float32).reshape(_POINT_SHAPES.get(role, (6,)))
    if not np.isfinite(out).all():
        raise BundleError(f"{label}: {role}: holds NaN or infinite values")
    if role == "pose_stddev" and not (out > 0).all():
        raise BundleError(f"{label}: {role}: standard deviations must be positive, found {out.tolist()}")
    return out


# --- bundle.json -----------------------------------------------------------------------------------
def parse_manifest(raw: bytes, label: str) -> dict:
    """The checked contents of a ``bundle.json`` (``label`` names it in errors)."""
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{label}: bad JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{label}: bad bundle manifest: expected a JSON object, found {type(manifest).__name__}")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{label}: not an img2pose bundle manifest (format is {manifest.get('format')!r}, "
                          f"expected {BUNDLE_FORMAT!r})")
    version = manifest.get("format_version")
    if version != BUNDLE_FORMAT_VERSION or isinstance(version, bool):
        raise BundleError(f"{label}: unsupported format_version {version!r} (this img2pose-ray reads "
                          f"format_version {BUNDLE_FORMAT_VERSION}; a newer bundle needs a newer img2pose-ray)")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{label}: 'files' must be an object naming {', '.join(ROLES)}")
    missing = [r for r in ROLES if r not in files]
    unexpected = sorted(set(files) - set(ROLES))
    if missing or unexpected:
        raise BundleError(f"{label}: 'files' is missing {missing} / has unexpected entries {unexpected} "
                          f"(expected exactly {list(ROLES)})")
    seen: set[str] = set()
    for role in ROLES:
        entry = files[role]
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise BundleError(f"{label}: files.{role} must be an object with 'path' and 'sha256'")
        if not is_plain_name(entry.get("path")):
            raise BundleError(f"{label}: files.{role}.path {entry.get('path')!r} is not a plain file name "
                              "(no '/', '\\' or '..'; files must sit beside bundle.json)")
        if not is_sha256(entry["sha256"]):
            raise BundleError(f"{label}: files.{role}.sha256 {entry['sha256']!r} is not 64 lower-case hex digits")
        if entry["path"] in seen:
            raise BundleError(f"{label}: files.{role}.path {entry['path']!r} is used twice")
        seen.add(entry["path"])
    model = manifest.get("model", {})
    try:
        if not isinstance(model, dict):
            raise ValueError("expected an object")
        ModelSettings.from_dict(model)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{label}: bad 'model' settings: {exc}") from exc
    return manifest


def new_manifest(files: dict[str, dict], settings: ModelSettings, name: str, license: str, source: Any) -> dict:
    """A ``bundle.json`` for ``files`` (role -> path and sha256) and ``settings``."""
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "name": name,
        "license": license,
        "source": source,
        "files": files,
        "model": settings.to_dict(),
    }


def manifest_bytes(manifest: dict) -> bytes:
    """``manifest`` as ``bundle.json`` stores it: indented JSON ending in a newline."""
    return (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
