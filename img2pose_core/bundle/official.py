"""The authors' img2pose release (CC BY-NC 4.0): where it is, and assembling it into a bundle.

The project ships no weights. :func:`fetch_official` downloads them, from the authors' model zoo on
Google Drive or py-feat's copy on the Hugging Face hub, with the reference points from the authors'
GitHub repository, and makes a bundle of them with :func:`create_bundle`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import numpy as np

from .cache import default_cache_dir
from .fetch import download
from .files import CHUNK
from .format import BundleError
from .store import create_bundle

__all__ = [
    "DEFAULT_URLS",
    "LICENSE_NOTICE",
    "WEIGHTS_LICENSE",
    "fetch_official",
    "official_bundle_dir",
]

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


def official_bundle_dir(variant: str = "v1", *, cache_dir: str | Path | None = None) -> Path:
    """Where the official bundle of ``variant`` lives: ``<cache>/bundles/official-<variant>``."""
    return Path(cache_dir or default_cache_dir()) / "bundles" / f"official-{variant}"


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
                shutil.copyfileobj(src, out, CHUNK)
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
