"""Handing a bundle to another process: BundleRef, bundle_ref and open_ref, without Ray.

A local bundle's reference names a holder of its files; the receiving side gets them through a
callable, checks them once and opens them from its private cache. A remote bundle's reference is
opened from its URI (here fsspec's in-process ``memory://`` store). Either way a bundle other than
the one referred to is refused.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from img2pose_core.bundle import (
    BundleError,
    BundleRef,
    bundle_files,
    bundle_ref,
    is_local_uri,
    open_bundle,
    open_ref,
)


@pytest.fixture()
def memory_bundle(golden_bundle):
    """The golden bundle copied into fsspec's memory store; its URI. Removed afterwards."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = "/img2pose-ref-test/golden"
    for f in Path(golden_bundle).iterdir():
        fs.pipe_file(f"{root}/{f.name}", f.read_bytes())
    yield f"memory://{root}"
    fs.rm(root, recursive=True)


def test_local_and_remote_uris():
    for uri in ("/srv/bundles/v1", "bundles/v1", "file:///srv/bundles/v1", "C:\\bundles\\v1"):
        assert is_local_uri(uri), uri
    for uri in ("s3://b/bundles/v1", "https://host/bundles/v1", "gs://b/v1", "memory://b/v1"):
        assert not is_local_uri(uri), uri


def test_local_bundle_travels_through_its_holder(golden_bundle, tmp_path):
    bundle = open_bundle(golden_bundle)
    ref = bundle_ref(bundle, holder="holder-1")
    assert ref == BundleRef(str(golden_bundle), bundle.digest, "holder-1")
    assert pickle.loads(pickle.dumps(ref)) == ref
    held = {"holder-1": bundle_files(bundle)}
    assert sorted(held["holder-1"]) == sorted([e["path"] for e in bundle.manifest["files"].values()] + ["bundle.json"])
    asked: list[str] = []

    def fetch(holder: str) -> dict[str, bytes]:
        asked.append(holder)
        return held[holder]

    cache = tmp_path / "cache"
    opened = open_ref(ref, fetch_files=fetch, cache_dir=cache)
    assert asked == ["holder-1"]
    assert opened.root == cache / "shipped" / bundle.digest
    assert opened.digest == bundle.digest and opened.model_sha256 == bundle.model_sha256
    for role in ("pose_mean", "pose_stddev", "points_68", "points_5"):
        np.testing.assert_array_equal(getattr(opened, role), getattr(bundle, role))
    assert sorted(p.name for p in opened.root.iterdir()) == sorted(held["holder-1"])
    # Opened a second time (a restarted actor): the same folder, nothing left over.
    assert open_ref(ref, fetch_files=fetch, cache_dir=cache).root == opened.root
    assert not [p for p in opened.root.iterdir() if p.name.startswith(".")]


def test_held_files_are_checked_before_anything_is_written(golden_bundle, tmp_path):
    bundle = open_bundle(golden_bundle)
    ref = bundle_ref(bundle, holder="h")
    files = bundle_files(bundle)
    name = bundle.manifest["files"]["pose_mean"]["path"]
    damaged = dict(files, **{name: files[name][:-1] + bytes([files[name][-1] ^ 0xFF])})
    cache = tmp_path / "cache"
    with pytest.raises(BundleError, match="sha256 mismatch") as exc:
        open_ref(ref, fetch_files=lambda h: damaged, cache_dir=cache)
    assert name in str(exc.value)
    assert not (cache / "shipped" / bundle.digest).exists()

    missing = {k: v for k, v in files.items() if k != name}
    with pytest.raises(BundleError, match="pose_mean file missing"):
        open_ref(ref, fetch_files=lambda h: missing, cache_dir=cache)

    # The holder holds another bundle (its bundle.json differs): refused by digest.
    manifest = json.loads(files["bundle.json"])
    manifest["model"]["min_size"] = 123
    other = dict(files, **{"bundle.json": json.dumps(manifest).encode()})
    with pytest.raises(BundleError, match=f"not the {bundle.digest[:12]}"):
        open_ref(ref, fetch_files=lambda h: other, cache_dir=cache)

    with pytest.raises(BundleError, match="needs fetch_files"):
        open_ref(ref, cache_dir=cache)


def test_remote_bundle_is_opened_from_its_uri(memory_bundle, tmp_path):
    import fsspec

    cache = tmp_path / "cache"
    bundle = open_bundle(memory_bundle, cache_dir=cache)
    ref = bundle_ref(bundle, holder="never-used")
    assert ref == BundleRef(memory_bundle, bundle.digest, None)

    def no_holder(holder: str) -> dict[str, bytes]:
        raise AssertionError("a remote bundle needs no holder")

    other_cache = tmp_path / "elsewhere"
    opened = open_ref(ref, fetch_files=no_holder, cache_dir=other_cache)
    assert opened.uri == memory_bundle and opened.digest == bundle.digest
    assert other_cache in opened.root.parents

    # The bundle at the URI changed since the reference was made: refused.
    fs = fsspec.filesystem("memory")
    path = memory_bundle.removeprefix("memory://") + "/bundle.json"
    manifest = json.loads(fs.cat_file(path))
    manifest["model"]["min_size"] = 123
    fs.pipe_file(path, json.dumps(manifest).encode())
    with pytest.raises(BundleError, match="changed since"):
        open_ref(ref, cache_dir=other_cache)


def test_a_reference_needs_a_digest():
    with pytest.raises(BundleError, match="digest"):
        BundleRef("/srv/bundles/v1", "", "h")
    with pytest.raises(BundleError, match="digest"):
        BundleRef("/srv/bundles/v1", "ABC" * 20, None)
