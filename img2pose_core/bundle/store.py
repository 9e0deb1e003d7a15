"""Creating a bundle folder, and opening and verifying a bundle wherever it is.

A bundle is local when its URI is a plain path or a ``file://`` URL
(:func:`img2pose_core.uris.is_local_uri`); anything else is read through the remote cache (:mod:`.cache`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import numpy as np

from ..settings import ModelSettings
from ..storage import write_atomic
from ..uris import is_local_uri
from .cache import default_cache_dir, sync_remote
from .files import FILE_MODE, copy_stream_atomic, sha256_file
from .format import (
    ARRAY_ROLES,
    MANIFEST_NAME,
    ROLES,
    BundleError,
    load_array,
    manifest_bytes,
    manifest_digest,
    new_manifest,
    parse_manifest,
    sha_mismatch,
)

if TYPE_CHECKING:
    from ..model import Img2Pose

__all__ = ["Bundle", "create_bundle", "open_bundle"]


# --- Creating a bundle -----------------------------------------------------------------------------
def create_bundle(
    weights: str | Path,
    pose_mean: str | Path,
    pose_stddev: str | Path,
    points_68: str | Path,
    points_5: str | Path,
    out: str | Path,
    *,
    settings: ModelSettings | None = None,
    name: str | None = None,
    license: str = "unspecified",
    source: str | Mapping[str, str] = "",
    overwrite: bool = False,
) -> Path:
    """Check the five files, copy them into the local folder ``out`` and write its ``bundle.json``.

    The weights must load strictly into an :class:`Img2Pose` built with these arrays. Files keep their
    base names; ``bundle.json`` is written last and atomically. An ``out`` that already holds the same
    bundle is left as it is; one holding a different bundle is refused unless ``overwrite``.
    """
    from ..builder import model_from_files

    inputs = {
        "weights": Path(weights),
        "pose_mean": Path(pose_mean),
        "pose_stddev": Path(pose_stddev),
        "points_68": Path(points_68),
        "points_5": Path(points_5),
    }
    for role, path in inputs.items():
        if not path.is_file():
            raise BundleError(f"{path}: {role} file not found")
    names = [p.name for p in inputs.values()]
    for role, path in inputs.items():
        if path.name == MANIFEST_NAME or names.count(path.name) > 1:
            raise BundleError(f"{path}: {role}: its file name {path.name!r} clashes with another bundle file; "
                              "rename it (files keep their base names inside the bundle)")
    arrays = {role: load_array(inputs[role], role) for role in ARRAY_ROLES}
    settings = settings or ModelSettings()
    out = Path(out)
    name = name or inputs["weights"].stem
    source = dict(source) if isinstance(source, Mapping) else source
    manifest_path = out / MANIFEST_NAME
    if manifest_path.exists():
        # Settled before the (slow) weights check: re-running a create is cheap, a clash fails fast.
        wanted = new_manifest(
            {r: {"path": p.name, "sha256": sha256_file(p)} for r, p in inputs.items()}, settings, name, license, source
        )
        if _same_bundle(out, wanted):
            return out
        if not overwrite:
            raise BundleError(
                f"{out}: already holds a different bundle; pass overwrite=True (--overwrite) to replace it"
            )
    model_from_files(inputs["weights"], arrays, settings, str(inputs["weights"]))

    # Without bundle.json the folder is not a bundle while its files change.
    manifest_path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for role, src in inputs.items():
        with open(src, "rb") as f:
            digest = copy_stream_atomic(f, out / src.name, None, str(src))
        files[role] = {"path": src.name, "sha256": digest}
    write_atomic(manifest_path, manifest_bytes(new_manifest(files, settings, name, license, source)), mode=FILE_MODE)
    return out


def _same_bundle(out: Path, wanted: dict) -> bool:
    """Whether ``out``'s bundle.json is ``wanted`` and its files still match their sha256."""
    try:
        current = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if current != json.loads(json.dumps(wanted)):
        return False
    return all(
        (out / e["path"]).is_file() and sha256_file(out / e["path"]) == e["sha256"] for e in wanted["files"].values()
    )


# --- Opening a bundle ------------------------------------------------------------------------------
@dataclass
class Bundle:
    """An opened, verified bundle: its arrays in memory, the weights as a local file."""

    uri: str
    root: Path
    manifest: dict
    settings: ModelSettings
    pose_mean: np.ndarray
    pose_stddev: np.ndarray
    points_68: np.ndarray
    points_5: np.ndarray
    weights_path: Path

    @property
    def model_sha256(self) -> str:
        """sha256 (hex) of the weights file, as recorded in ``bundle.json``."""
        return self.manifest["files"]["weights"]["sha256"]

    @property
    def digest(self) -> str:
        """sha256 (hex) of ``bundle.json`` in canonical form: every file's sha256 and every setting.

        Two bundles with the same digest give the same results; the weights' sha256 alone does not
        say that (the pose statistics, reference points and settings matter as much).
        """
        return manifest_digest(self.manifest)

    @property
    def name(self) -> str:
        """The bundle's name from ``bundle.json``."""
        return str(self.manifest.get("name", ""))

    @property
    def license(self) -> str:
        """The licence of the bundle's contents, from ``bundle.json``."""
        return str(self.manifest.get("license", ""))

    def build_model(self, **setting_overrides: Any) -> Img2Pose:
        """A new :class:`Img2Pose` in eval mode with the weights loaded strictly, then ``configure``d.

        Overrides are :class:`ModelSettings` fields; ``None`` keeps the bundle's value (except for
        ``max_faces``, where ``None`` means no cap). See :func:`img2pose_core.builder.build_model`.
        """
        from ..builder import build_model

        return build_model(self, **setting_overrides)


def _local_path(uri: str) -> Path:
    if uri.startswith("file://"):
        return Path(unquote(urlsplit(uri).path))
    return Path(uri).expanduser()


def open_bundle(
    uri: str | Path,
    *,
    cache_dir: str | Path | None = None,
    storage_options: dict | None = None,
    verify: bool = True,
) -> Bundle:
    """Open the bundle at ``uri`` (folder, ``file://`` or any fsspec URL) and check it.

    Local folders are read in place. Remote bundles are copied into ``<cache>/remote/<sha256 of uri>/``
    (atomically, each download checked against ``bundle.json``); a cached file with the right sha256 is
    not downloaded again. With ``verify`` (the default) every file's sha256 is checked before use;
    ``verify=False`` skips re-hashing files already on disk (downloads are always checked). A malformed
    URL raises ValueError.
    """
    text = str(uri)
    if not is_local_uri(text):
        urlsplit(text)  # raises ValueError for a malformed URL (an unclosed IPv6 bracket ...)
        root = sync_remote(text, Path(cache_dir) if cache_dir else default_cache_dir(), storage_options, verify)
        manifest = parse_manifest((root / MANIFEST_NAME).read_bytes(), f"{text.rstrip('/')}/{MANIFEST_NAME}")
        where = text.rstrip("/")
    else:
        root = _local_path(text).absolute()
        if not root.is_dir():
            raise BundleError(f"{root}: no such bundle folder")
        manifest = _read_local_manifest(root)
        where = str(root)
        if verify:
            _verify_local_files(root, manifest)
    files = manifest["files"]
    arrays = {
        role: load_array(root / files[role]["path"], role, f"{where}/{files[role]['path']}") for role in ARRAY_ROLES
    }
    weights = root / files["weights"]["path"]
    if not weights.is_file():
        raise BundleError(f"{where}/{files['weights']['path']}: weights file missing")
    return Bundle(
        uri=text,
        root=root,
        manifest=manifest,
        settings=ModelSettings.from_dict(manifest.get("model", {})),
        pose_mean=arrays["pose_mean"],
        pose_stddev=arrays["pose_stddev"],
        points_68=arrays["points_68"],
        points_5=arrays["points_5"],
        weights_path=weights,
    )


def _read_local_manifest(root: Path) -> dict:
    path = root / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(f"{path}: missing: {root} is not an img2pose bundle "
                          "(make one with `img2pose bundle create` or `img2pose bundle fetch`)") from exc
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc})") from exc
    return parse_manifest(raw, str(path))


def _verify_local_files(root: Path, manifest: dict) -> None:
    for role in ROLES:
        entry = manifest["files"][role]
        path = root / entry["path"]
        if not path.is_file():
            raise BundleError(f"{path}: {role} file missing from the bundle")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise BundleError(sha_mismatch(str(path), entry["sha256"], actual))
