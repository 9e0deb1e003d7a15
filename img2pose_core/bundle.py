"""Model bundles: the img2pose weights with everything needed to use them, checked by sha256.

A bundle is a folder (local, or any fsspec URL: ``s3://``, ``gs://``, ``https://`` ...) holding the
weights (``.pth`` in any layout :func:`checkpoint.read_state_dict` reads, or ``.safetensors``), the pose
mean and standard deviation (6 values each), the 68- and 5-point 3D references, and ``bundle.json``,
which names each file with its sha256 and stores the model settings. ``bundle.json`` is written last,
so a folder whose copy was interrupted is never taken for a bundle. Remote bundles are copied into a
local cache once; every file is verified against ``bundle.json`` before use.

The project ships no weights: :func:`fetch_official` downloads the authors' release (CC BY-NC 4.0,
non-commercial) and assembles a bundle from it. See ``docs/bundles.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import unquote, urlencode, urljoin, urlsplit

import numpy as np

from .checkpoint import CheckpointError, load_weights, read_state_dict
from .model import Img2Pose, ModelSettings

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "DEFAULT_CACHE_DIR",
    "DEFAULT_URLS",
    "LICENSE_NOTICE",
    "WEIGHTS_LICENSE",
    "Bundle",
    "BundleError",
    "create_bundle",
    "default_cache_dir",
    "download",
    "fetch_official",
    "official_bundle_dir",
    "open_bundle",
    "resolve_bundle",
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
_CHUNK = 1 << 20

DEFAULT_CACHE_DIR = Path(os.environ.get("IMG2POSE_CACHE") or Path.home() / ".cache" / "img2pose")

# --- The official release -------------------------------------------------------------------------
WEIGHTS_LICENSE = "CC-BY-NC-4.0"
LICENSE_URL = "https://creativecommons.org/licenses/by-nc/4.0/"
LICENSE_NOTICE = (
    "The img2pose weights, pose statistics and reference points are the work of Albiero, Chen, Yin, Pang "
    f"and Hassner (CVPR 2021), licensed CC BY-NC 4.0 ({LICENSE_URL}): non-commercial use only, with "
    "attribution. img2pose-ray ships no weights; by downloading them you accept the authors' licence."
)
VARIANTS = ("v1", "v1_ft_300w_lp")
SOURCES = ("official", "huggingface")

# The authors' model zoo zip on Google Drive (models/img2pose_v1.pth, models/img2pose_v1_ft_300w_lp.pth,
# models/WIDER_train_pose_{mean,stddev}_v1.npy); linked from the img2pose wiki's Model Zoo page.
GDRIVE_ZOO_ID = "1OvnZ7OUQFg2bAgFADhT7UnCkSaXst10O"
ZOO_ZIP_URL = f"https://drive.usercontent.google.com/download?id={GDRIVE_ZOO_ID}&export=download&confirm=t"
# Pinned to a commit of vitoralbiero/img2pose so the bytes cannot change under a bundle.
_AUTHORS_RAW = (
    "https://raw.githubusercontent.com/vitoralbiero/img2pose/dc75baa93fbbd6445979df1a485ae28df8478b95/pose_references/"
)
POINTS_68_URL = _AUTHORS_RAW + "reference_3d_68_points_trans.npy"
POINTS_5_URL = _AUTHORS_RAW + "reference_3d_5_points_trans.npy"
# py-feat's copy on the Hugging Face hub: model.safetensors (keys without "module.") and a config.json
# holding pose_mean, pose_stddev and the 68 reference points (no 5-point reference: that comes from GitHub).
HF_WEIGHTS_URL = "https://huggingface.co/py-feat/img2pose/resolve/main/model.safetensors"
HF_CONFIG_URL = "https://huggingface.co/py-feat/img2pose/resolve/main/config.json"
DEFAULT_URLS = {
    "zoo_zip": ZOO_ZIP_URL,
    "points_68": POINTS_68_URL,
    "points_5": POINTS_5_URL,
    "hf_weights": HF_WEIGHTS_URL,
    "hf_config": HF_CONFIG_URL,
}

DOWNLOAD_TIMEOUT = (30.0, 120.0)  # connect, read (seconds)
DOWNLOAD_RETRIES = 4
DOWNLOAD_BACKOFF_S = 0.5


# --- Small helpers ---------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """The cache folder: ``$IMG2POSE_CACHE`` (read now, not at import) or ``~/.cache/img2pose``."""
    env = os.environ.get("IMG2POSE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "img2pose"


def official_bundle_dir(variant: str = "v1", *, cache_dir: str | Path | None = None) -> Path:
    """Where the official bundle of ``variant`` lives: ``<cache>/bundles/official-<variant>``."""
    return Path(cache_dir or default_cache_dir()) / "bundles" / f"official-{variant}"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _temp_beside(dest: Path) -> tuple[BinaryIO, Path]:
    """An open temp file in ``dest``'s folder, so that ``os.replace`` onto ``dest`` is atomic."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    return os.fdopen(fd, "wb"), Path(name)


def _write_atomic(dest: Path, data: bytes) -> None:
    f, tmp = _temp_beside(dest)
    try:
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _copy_stream_atomic(src: BinaryIO, dest: Path, expected_sha256: str | None, label: str) -> str:
    """Copy ``src`` to ``dest`` through a temp file, hashing on the way; refuse a wrong sha256."""
    f, tmp = _temp_beside(dest)
    digest = hashlib.sha256()
    try:
        with f:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                f.write(chunk)
        actual = digest.hexdigest()
        if expected_sha256 is not None and actual != expected_sha256:
            raise BundleError(_sha_mismatch(label, expected_sha256, actual))
        os.replace(tmp, dest)
        return actual
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _sha_mismatch(label: str, expected: str, actual: str) -> str:
    return (
        f"{label}: sha256 mismatch: bundle.json expects {expected}, the file has {actual} "
        "(the file was changed or corrupted; refusing to use it)"
    )


def _is_plain_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..", MANIFEST_NAME)
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
        and PurePosixPath(name).name == name
    )


# --- Validation of the contents --------------------------------------------------------------------
def _load_array(path: Path, role: str, label: str | None = None) -> np.ndarray:
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


def _build_model(weights: Path, arrays: Mapping[str, np.ndarray], settings: ModelSettings, label: str) -> Img2Pose:
    """An :class:`Img2Pose` with ``weights`` loaded strictly; a checkpoint problem becomes a BundleError."""
    import torch

    model = Img2Pose(
        torch.from_numpy(arrays["pose_mean"]),
        torch.from_numpy(arrays["pose_stddev"]),
        torch.from_numpy(arrays["points_68"]),
        settings=ModelSettings.from_dict(json.loads(json.dumps(settings.to_dict()))),  # a private copy
    )
    try:
        load_weights(model, read_state_dict(weights), source=label)
    except CheckpointError as exc:
        raise BundleError(str(exc)) from exc
    return model.eval()


# --- bundle.json -----------------------------------------------------------------------------------
def _parse_manifest(raw: bytes, label: str) -> dict:
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
        if not _is_plain_name(entry.get("path")):
            raise BundleError(f"{label}: files.{role}.path {entry.get('path')!r} is not a plain file name "
                              "(no '/', '\\' or '..'; files must sit beside bundle.json)")
        if not _SHA256.match(entry["sha256"]):
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


def _manifest_for(files: dict[str, dict], settings: ModelSettings, name: str, license: str, source: Any) -> dict:
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "name": name,
        "license": license,
        "source": source,
        "files": files,
        "model": settings.to_dict(),
    }


def _manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2) + "\n").encode("utf-8")


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
    arrays = {role: _load_array(inputs[role], role) for role in ARRAY_ROLES}
    settings = settings or ModelSettings()
    out = Path(out)
    name = name or inputs["weights"].stem
    source = dict(source) if isinstance(source, Mapping) else source
    manifest_path = out / MANIFEST_NAME
    if manifest_path.exists():
        # Settled before the (slow) weights check: re-running a create is cheap, a clash fails fast.
        wanted = _manifest_for(
            {r: {"path": p.name, "sha256": _sha256_file(p)} for r, p in inputs.items()}, settings, name, license, source
        )
        if _same_bundle(out, wanted):
            return out
        if not overwrite:
            raise BundleError(
                f"{out}: already holds a different bundle; pass overwrite=True (--overwrite) to replace it"
            )
    _build_model(inputs["weights"], arrays, settings, str(inputs["weights"]))

    # Without bundle.json the folder is not a bundle while its files change.
    manifest_path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for role, src in inputs.items():
        with open(src, "rb") as f:
            digest = _copy_stream_atomic(f, out / src.name, None, str(src))
        files[role] = {"path": src.name, "sha256": digest}
    _write_atomic(manifest_path, _manifest_bytes(_manifest_for(files, settings, name, license, source)))
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
        (out / e["path"]).is_file() and _sha256_file(out / e["path"]) == e["sha256"] for e in wanted["files"].values()
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
        canonical = json.dumps(self.manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

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
        ``max_faces``, where ``None`` means no cap).
        """
        known = {f.name for f in fields(ModelSettings)}
        unknown = sorted(set(setting_overrides) - known)
        if unknown:
            raise BundleError(f"{self.uri}: unknown model settings {unknown}; known: {sorted(known)}")
        arrays = {"pose_mean": self.pose_mean, "pose_stddev": self.pose_stddev, "points_68": self.points_68}
        model = _build_model(self.weights_path, arrays, self.settings, str(self.weights_path))
        if setting_overrides:
            model.configure(**setting_overrides)
        return model


def _is_remote(uri: str) -> bool:
    scheme = urlsplit(uri).scheme
    # One-letter "schemes" are Windows drive letters.
    return len(scheme) > 1 and scheme != "file"


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
    ``verify=False`` skips re-hashing files already on disk (downloads are always checked).
    """
    text = str(uri)
    if _is_remote(text):
        root = _sync_remote(text, Path(cache_dir) if cache_dir else default_cache_dir(), storage_options, verify)
        manifest = _parse_manifest((root / MANIFEST_NAME).read_bytes(), f"{text.rstrip('/')}/{MANIFEST_NAME}")
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
        role: _load_array(root / files[role]["path"], role, f"{where}/{files[role]['path']}") for role in ARRAY_ROLES
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
    return _parse_manifest(raw, str(path))


def _verify_local_files(root: Path, manifest: dict) -> None:
    for role in ROLES:
        entry = manifest["files"][role]
        path = root / entry["path"]
        if not path.is_file():
            raise BundleError(f"{path}: {role} file missing from the bundle")
        actual = _sha256_file(path)
        if actual != entry["sha256"]:
            raise BundleError(_sha_mismatch(str(path), entry["sha256"], actual))


def _storage_options(uri: str, storage_options: dict | None) -> dict:
    """``storage_options``, plus the ``AWS_ENDPOINT_URL[_S3]`` endpoint for s3 when none is given.

    Recent botocore reads these variables itself; passing the endpoint explicitly keeps S3-compatible
    stores (MinIO, Ceph ...) working whatever the botocore version.
    """
    options = dict(storage_options or {})
    if urlsplit(uri).scheme in ("s3", "s3a"):
        env = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        client_kwargs = dict(options.get("client_kwargs") or {})
        if env and "endpoint_url" not in options and "endpoint_url" not in client_kwargs:
            options["client_kwargs"] = {**client_kwargs, "endpoint_url": env}
    return options


def _sync_remote(uri: str, cache: Path, storage_options: dict | None, verify: bool) -> Path:
    """Bring the remote bundle at ``uri`` into the cache (only what is missing or stale); its folder."""
    import fsspec

    base_uri = uri.rstrip("/")
    try:
        fs, base = fsspec.core.url_to_fs(base_uri, **_storage_options(uri, storage_options))
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
    manifest = _parse_manifest(raw, manifest_url)

    local = cache / "remote" / hashlib.sha256(base_uri.encode("utf-8")).hexdigest()
    # Plain HTTP(S) servers need not support range requests: read those files as one stream.
    open_options = {"block_size": 0} if urlsplit(uri).scheme in ("http", "https") else {}
    for role in ARRAY_ROLES + ("weights",):  # the small files first: a bad bundle fails before the big download
        entry = manifest["files"][role]
        dest = local / entry["path"]
        if dest.is_file() and (not verify or _sha256_file(dest) == entry["sha256"]):
            continue
        url = f"{base_uri}/{entry['path']}"
        try:
            with fs.open(f"{base}/{entry['path']}", "rb", **open_options) as src:
                _copy_stream_atomic(src, dest, entry["sha256"], url)
        except BundleError:
            raise
        except FileNotFoundError as exc:
            raise BundleError(f"{url}: {role} file missing from the bundle") from exc
        except Exception as exc:
            raise BundleError(f"{url}: download failed ({type(exc).__name__}: {exc})") from exc
    _write_atomic(local / ".source-uri", (base_uri + "\n").encode("utf-8"))
    _write_atomic(local / MANIFEST_NAME, raw)  # last: the cache folder is a bundle only once complete
    return local


# --- Downloads -------------------------------------------------------------------------------------
class _ConfirmPageParser(HTMLParser):
    """Collects the forms of an HTML page (action, method, named inputs) and the links with ``confirm=``."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []
        self.confirm_links: list[str] = []
        self._form: dict | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._form = {"action": a.get("action", ""), "method": a.get("method", "get").lower(), "inputs": {}}
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and a.get("name"):
            self._form["inputs"][a["name"]] = a.get("value", "")
        elif tag == "a" and "confirm=" in a.get("href", ""):
            self.confirm_links.append(a["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None


def _confirm_url(page: str, page_url: str) -> str | None:
    """The URL that Google Drive's "can't scan for viruses" page submits to, or None if it has none."""
    parser = _ConfirmPageParser()
    parser.feed(page)
    for form in parser.forms:
        if form["method"] == "get" and ("confirm" in form["inputs"] or "uuid" in form["inputs"]):
            action = urljoin(page_url, form["action"] or page_url)
            return action + ("&" if "?" in action else "?") + urlencode(form["inputs"])
    if parser.confirm_links:  # the older page: a plain link carrying the confirm token
        return urljoin(page_url, parser.confirm_links[0])
    return None


class _Progress:
    """A one-line download progress report on stderr (redrawn on a terminal, else start and end only)."""

    def __init__(self, label: str, total: int | None, enabled: bool) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.done, self.last = 0, 0.0
        if enabled and not self.tty:
            print(f"img2pose: downloading {label}{self._size(total)}", file=sys.stderr, flush=True)

    @staticmethod
    def _size(n: int | None) -> str:
        return f" ({n / 1e6:.1f} MB)" if n else ""

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty and now - self.last > 0.2:
            self.last = now
            total = f" / {self.total / 1e6:.1f}" if self.total else ""
            print(f"\rimg2pose: downloading {self.label}: {self.done / 1e6:.1f}{total} MB", end="", file=sys.stderr)

    def finish(self) -> None:
        if self.enabled:
            lead = "\r" if self.tty else ""
            print(f"{lead}img2pose: downloaded {self.label}: {self.done / 1e6:.1f} MB", file=sys.stderr, flush=True)


def download(url: str, dest: str | Path, *, progress: bool = True, expect_binary: bool = True) -> Path:
    """Stream ``url`` to ``dest`` through a temp file beside it; retries 5xx and connection errors.

    When ``expect_binary`` and the server answers with an HTML page, the page is taken for Google
    Drive's "can't scan for viruses" warning: its confirm form is submitted and the file fetched from
    there. A 4xx answer, or an HTML page without such a form, raises :class:`BundleError` naming ``url``.
    """
    import requests

    transient = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
    dest = Path(dest)
    target, confirms, attempt = url, 0, 0
    with requests.Session() as session:
        while True:
            try:
                with session.get(target, stream=True, timeout=DOWNLOAD_TIMEOUT) as resp:
                    if resp.status_code >= 500 or resp.status_code == 429:
                        raise _Retry(f"HTTP {resp.status_code} {resp.reason}")
                    if resp.status_code >= 400:
                        raise BundleError(f"{url}: HTTP {resp.status_code} {resp.reason}" + _via(target, url))
                    if expect_binary and "text/html" in resp.headers.get("Content-Type", ""):
                        next_url = _confirm_url(resp.text, resp.url)
                        if next_url is None or confirms >= 2:
                            raise BundleError(_html_instead_of_file(url, target))
                        target, confirms = next_url, confirms + 1
                        continue
                    _stream_to(resp, dest, url, progress)
                    return dest
            except (_Retry, *transient) as exc:
                attempt += 1
                if attempt > DOWNLOAD_RETRIES:
                    message = f"{url}: download failed after {attempt} attempts ({exc})" + _via(target, url)
                    raise BundleError(message) from exc
                delay = DOWNLOAD_BACKOFF_S * 2 ** (attempt - 1)
                if progress:
                    print(f"img2pose: {url}: {exc}; retrying in {delay:.1f} s", file=sys.stderr, flush=True)
                time.sleep(delay)
            except requests.RequestException as exc:  # a malformed URL, too many redirects ...
                raise BundleError(f"{url}: download failed ({exc})" + _via(target, url)) from exc


class _Retry(Exception):
    """A transient server answer (5xx, 429) worth another try."""


def _via(target: str, url: str) -> str:
    return f" (via {target})" if target != url else ""


def _html_instead_of_file(url: str, target: str) -> str:
    return (
        f"{url}: the server sent an HTML page instead of the file{_via(target, url)}. Google Drive does this when "
        "the file's download quota is exceeded or it is no longer shared. Download the model zoo zip in a browser "
        "and build the bundle with `img2pose bundle create`, or point IMG2POSE_URL_ZOO_ZIP at a mirror."
    )


def _stream_to(resp: Any, dest: Path, url: str, progress: bool) -> None:
    """Write a streamed response to ``dest`` atomically; a short body is a transient error."""
    length = resp.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() and not resp.headers.get("Content-Encoding") else None
    bar = _Progress(url.split("?")[0].rsplit("/", 1)[-1] or url, total, progress)
    f, tmp = _temp_beside(dest)
    try:
        with f:
            for chunk in resp.iter_content(_CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
        if total is not None and bar.done != total:
            raise _Retry(f"connection closed after {bar.done} of {total} bytes")
        os.replace(tmp, dest)
        bar.finish()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- Fetching the official release -----------------------------------------------------------------
def _url(key: str, urls: Mapping[str, str] | None) -> str:
    """The URL for ``key``: the ``urls`` argument, else ``$IMG2POSE_URL_<KEY>``, else the default."""
    if urls and urls.get(key):
        return urls[key]
    return os.environ.get(f"IMG2POSE_URL_{key.upper()}") or DEFAULT_URLS[key]


def _extract_member(zip_path: Path, wanted: str, dest: Path, url: str) -> Path:
    """Copy the zip member whose base name is ``wanted`` to ``dest`` (its name in the zip is never used as a path)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = [n for n in zf.namelist() if PurePosixPath(n).name == wanted and not n.endswith("/")]
            if not members:
                held = ", ".join(n for n in zf.namelist() if not n.endswith("/"))
                raise BundleError(f"{url}: the model zoo zip has no {wanted} (it holds: {held})")
            member = sorted(members, key=lambda n: (not n.startswith("models/"), len(n)))[0]
            with zf.open(member) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
    except zipfile.BadZipFile as exc:
        raise BundleError(f"{url}: not a zip file ({exc}); expected the img2pose model zoo zip") from exc
    return dest


def _hf_arrays(config_path: Path, url: str, variant: str, work: Path) -> tuple[Path, Path]:
    """Pose mean and stddev from py-feat's hub ``config.json``, written as .npy files in ``work``."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{url}: bad JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise BundleError(f"{url}: expected a JSON object")
    # py-feat calls the 300W-LP fine-tuned weights "constrained"; without the flag they are img2pose_v1.
    hub_variant = "v1_ft_300w_lp" if config.get("constrained") is True else "v1"
    if hub_variant != variant:
        raise BundleError(f"{url}: the Hugging Face copy holds the {hub_variant} weights, not {variant}; "
                          f"use --variant {hub_variant} or --source official")
    paths = []
    for key in ("pose_mean", "pose_stddev"):
        if key not in config:
            raise BundleError(f"{url}: config.json has no {key!r}")
        try:
            arr = np.asarray(config[key], dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{url}: {key} is not a list of numbers ({exc})") from exc
        path = work / f"WIDER_train_{key}_v1.npy"
        np.save(path, arr)
        paths.append(path)
    return paths[0], paths[1]


def fetch_official(
    out: str | Path,
    *,
    source: str = "official",
    variant: str = "v1",
    urls: Mapping[str, str] | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Download the authors' img2pose release and assemble it into a bundle at ``out``.

    ``source="official"``: the model zoo zip from Google Drive (weights, pose mean and stddev) and the
    reference points from the authors' GitHub repository. ``source="huggingface"``: py-feat's
    ``model.safetensors`` and ``config.json`` (pose statistics) from the hub, reference points from GitHub.
    URLs come from ``urls`` (keys ``zoo_zip``, ``points_68``, ``points_5``, ``hf_weights``, ``hf_config``),
    else ``$IMG2POSE_URL_<KEY>``, else :data:`DEFAULT_URLS`. The weights are CC BY-NC 4.0.
    """
    if source not in SOURCES:
        raise BundleError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    if variant not in VARIANTS:
        raise BundleError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Downloads go beside the bundle, not to /tmp: the zoo zip is hundreds of MB.
    work = Path(tempfile.mkdtemp(prefix=".img2pose-fetch-", dir=out.parent))
    try:
        used: dict[str, str] = {}

        def get(key: str, name: str, *, binary: bool = True) -> Path:
            used[key] = _url(key, urls)
            return download(used[key], work / name, progress=progress, expect_binary=binary)

        if source == "official":
            zip_path = get("zoo_zip", "img2pose_models.zip")
            members = (f"img2pose_{variant}.pth", "WIDER_train_pose_mean_v1.npy", "WIDER_train_pose_stddev_v1.npy")
            weights, mean, stddev = (_extract_member(zip_path, m, work / m, used["zoo_zip"]) for m in members)
            zip_path.unlink()
        else:
            config = get("hf_config", "config.json", binary=False)
            mean, stddev = _hf_arrays(config, used["hf_config"], variant, work)
            weights = get("hf_weights", f"img2pose_{variant}.safetensors")
        points_68 = get("points_68", "reference_3d_68_points_trans.npy")
        points_5 = get("points_5", "reference_3d_5_points_trans.npy")
        return create_bundle(
            weights, mean, stddev, points_68, points_5, out,
            name=f"img2pose_{variant}" + ("" if source == "official" else "-huggingface"),
            license=WEIGHTS_LICENSE,
            source=used,
            overwrite=overwrite,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- Finding the bundle for a job ------------------------------------------------------------------
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
