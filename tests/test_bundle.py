"""Model bundles: creation, verification, every refusal, weight layouts, S3 caching and fetching.

Real files and servers only: the golden checkpoint, a moto S3 server and a local HTTP server that
stands in for Google Drive, GitHub and the Hugging Face hub.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import torch

import img2pose_core.bundle.fetch as bundle_mod
from img2pose_core.bundle import (
    BundleError,
    create_bundle,
    download,
    fetch_official,
    official_bundle_dir,
    open_bundle,
    resolve_bundle,
)
from img2pose_core.checkpoint import canonical_state_dict, read_state_dict
from img2pose_core.model import ModelSettings

from s3_fixtures import s3_client, s3_server  # noqa: F401  (s3_server is a fixture)

ROLES = ("weights", "pose_mean", "pose_stddev", "points_68", "points_5")
ARRAY_FILES = {
    "pose_mean": "pose_mean.npy",
    "pose_stddev": "pose_stddev.npy",
    "points_68": "reference_3d_68_points_trans.npy",
    "points_5": "reference_3d_5_points_trans.npy",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def arrays(golden_dir: Path, **replace: Path) -> dict[str, Path]:
    """The golden array files as create_bundle keywords, some replaced."""
    return {role: replace.get(role, golden_dir / name) for role, name in ARRAY_FILES.items()}


def flip_byte(path: Path, offset: int = -1) -> None:
    """Change one byte of ``path``; a symlink is replaced by a changed copy, never written through."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.unlink()
    path.write_bytes(bytes(data))


def linked_copy(src: Path, dst: Path) -> Path:
    """A bundle folder whose files link to ``src``'s (bundle.json is copied): cheap to damage safely."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name == "bundle.json":
            shutil.copy(f, dst / f.name)
        else:
            os.symlink(f, dst / f.name)
    return dst


# --- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def golden_state(golden_checkpoint) -> dict[str, torch.Tensor]:
    """The golden checkpoint's tensors in the released layout (``module.`` prefix, old FPN names)."""
    return read_state_dict(golden_checkpoint)


@pytest.fixture(scope="module")
def canonical_safetensors(golden_state, tmp_path_factory) -> Path:
    """The golden weights as the hub publishes them: safetensors, no ``module.`` prefix."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in canonical_state_dict(golden_state).items()}, str(path))
    return path


@pytest.fixture()
def bundle_copy(golden_bundle, tmp_path) -> Path:
    """A private copy of the golden bundle that a test may damage (replace files, never write through)."""
    return linked_copy(golden_bundle, tmp_path / "copy")


def rewrite_manifest(root: Path, change: Callable[[dict], object]) -> None:
    manifest = json.loads((root / "bundle.json").read_text())
    change(manifest)
    (root / "bundle.json").write_text(json.dumps(manifest))


# --- creating and opening --------------------------------------------------------------------------
def test_create_open_and_build(golden_bundle, golden_checkpoint, golden_dir, golden_state):
    manifest = json.loads((golden_bundle / "bundle.json").read_text())
    assert manifest["format"] == "img2pose-bundle" and manifest["format_version"] == 1
    assert manifest["name"] == "img2pose_v1"
    assert manifest["model"] == ModelSettings().to_dict()
    sources = {"weights": golden_checkpoint, **arrays(golden_dir)}
    for role in ROLES:
        entry = manifest["files"][role]
        assert entry["path"] == sources[role].name
        assert entry["sha256"] == sha256(sources[role]) == sha256(golden_bundle / entry["path"])
    assert not list(golden_bundle.glob("*.part"))

    b = open_bundle(golden_bundle)
    assert b.root == golden_bundle and b.uri == str(golden_bundle)
    assert b.model_sha256 == sha256(golden_checkpoint)
    assert b.weights_path == golden_bundle / golden_checkpoint.name
    for role, name in ARRAY_FILES.items():
        value = getattr(b, role)
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, np.load(golden_dir / name).reshape(value.shape))
    assert b.pose_mean.shape == (6,) and b.points_68.shape == (68, 3) and b.points_5.shape == (5, 3)

    model = b.build_model()
    assert not model.training
    expected = canonical_state_dict(golden_state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key

    tuned = b.build_model(min_size=480, max_faces=3, threshold=None)
    assert (tuned.settings.min_size, tuned.settings.max_faces) == (480, 3)
    assert tuned.transform.min_size == (480,)
    assert b.settings == ModelSettings()  # overrides never leak into the bundle
    with pytest.raises(BundleError, match="unknown model settings"):
        b.build_model(min_sise=480)


def test_file_url_opens_in_place(golden_bundle):
    b = open_bundle(golden_bundle.as_uri())
    assert b.root == golden_bundle


def test_create_stores_settings_and_refuses_to_overwrite(golden_checkpoint, golden_dir, tmp_path):
    out = tmp_path / "b"
    create_bundle(golden_checkpoint, **arrays(golden_dir), out=out, settings=ModelSettings(min_size=480), name="n")
    assert open_bundle(out).settings.min_size == 480
    before = (out / "bundle.json").stat().st_mtime_ns
    # The same bundle again is a no-op ...
    create_bundle(golden_checkpoint, **arrays(golden_dir), out=out, settings=ModelSettings(min_size=480), name="n")
    assert (out / "bundle.json").stat().st_mtime_ns == before
    # ... a different one is refused unless asked for.
    with pytest.raises(BundleError, match=r"already holds a different bundle.*overwrite"):
        create_bundle(golden_checkpoint, **arrays(golden_dir), out=out, settings=ModelSettings(min_size=512), name="n")
    assert open_bundle(out).settings.min_size == 480
    create_bundle(golden_checkpoint, **arrays(golden_dir), out=out, settings=ModelSettings(min_size=512), overwrite=True)
    assert open_bundle(out).settings.min_size == 512


# --- refusals when opening -------------------------------------------------------------------------
def test_missing_folder_manifest_and_file(bundle_copy, tmp_path):
    with pytest.raises(BundleError, match="no such bundle folder") as exc:
        open_bundle(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(exc.value)

    (bundle_copy / "reference_3d_5_points_trans.npy").unlink()
    with pytest.raises(BundleError, match="points_5 file missing") as exc:
        open_bundle(bundle_copy)
    assert str(bundle_copy / "reference_3d_5_points_trans.npy") in str(exc.value)

    (bundle_copy / "bundle.json").unlink()
    with pytest.raises(BundleError, match="bundle.json: missing") as exc:
        open_bundle(bundle_copy)
    assert "img2pose bundle create" in str(exc.value)


@pytest.mark.parametrize("role", ROLES)
def test_tampered_file_is_refused(golden_bundle, tmp_path, role):
    root = linked_copy(golden_bundle, tmp_path / "copy")
    entry = json.loads((root / "bundle.json").read_text())["files"][role]
    target = root / entry["path"]
    flip_byte(target)
    with pytest.raises(BundleError) as exc:
        open_bundle(root)
    message = str(exc.value)
    assert str(target) in message and "sha256 mismatch" in message
    assert entry["sha256"] in message and sha256(target) in message


MANIFEST_DAMAGE = {
    "bad JSON": (lambda root: (root / "bundle.json").write_text('{"format": "img2pose-bundle",'), "bad JSON"),
    "not an object": (lambda root: (root / "bundle.json").write_text("[]"), "expected a JSON object"),
    "wrong format": (lambda root: rewrite_manifest(root, lambda m: m.update(format="zip")), "not an img2pose bundle"),
    "format_version 2": (
        lambda root: rewrite_manifest(root, lambda m: m.update(format_version=2)),
        "unsupported format_version 2",
    ),
    "format_version as text": (
        lambda root: rewrite_manifest(root, lambda m: m.update(format_version="1")),
        "unsupported format_version '1'",
    ),
    "missing role": (lambda root: rewrite_manifest(root, lambda m: m["files"].pop("points_5")), r"missing \['points_5'\]"),
    "unexpected role": (
        lambda root: rewrite_manifest(root, lambda m: m["files"].update(extra=m["files"]["points_5"])),
        r"unexpected entries \['extra'\]",
    ),
    "parent traversal": (
        lambda root: rewrite_manifest(root, lambda m: m["files"]["weights"].update(path="../img2pose_v1.pth")),
        "'../img2pose_v1.pth' is not a plain file name",
    ),
    "sub folder": (
        lambda root: rewrite_manifest(root, lambda m: m["files"]["pose_mean"].update(path="sub/pose_mean.npy")),
        "'sub/pose_mean.npy' is not a plain file name",
    ),
    "absolute path": (
        lambda root: rewrite_manifest(root, lambda m: m["files"]["points_68"].update(path="/etc/passwd")),
        "'/etc/passwd' is not a plain file name",
    ),
    "bad sha256": (
        lambda root: rewrite_manifest(root, lambda m: m["files"]["pose_mean"].update(sha256="abc")),
        "is not 64 lower-case hex digits",
    ),
    "unknown setting": (
        lambda root: rewrite_manifest(root, lambda m: m["model"].update(min_sise=3)),
        "bad 'model' settings",
    ),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_DAMAGE))
def test_bad_manifest_is_refused(golden_bundle, tmp_path, case):
    root = linked_copy(golden_bundle, tmp_path / "b")
    damage, expected = MANIFEST_DAMAGE[case]
    damage(root)
    with pytest.raises(BundleError, match=expected) as exc:
        open_bundle(root)
    assert str(root / "bundle.json") in str(exc.value)


# --- refusals when creating ------------------------------------------------------------------------
def _npy(path: Path, value) -> Path:
    np.save(path, value, allow_pickle=True)
    return path


@pytest.mark.parametrize(
    "role,value,expected",
    [
        ("pose_mean", np.zeros(5, np.float32), r"expected 6 values .* found shape \(5,\)"),
        ("pose_mean", np.zeros((2, 6), np.float32), r"found shape \(2, 6\)"),
        ("pose_stddev", np.zeros(6, np.float32), "must be positive"),
        ("pose_mean", np.array([0, 0, 0, 0, 0, np.nan], np.float32), "NaN or infinite"),
        ("points_68", np.zeros((67, 3), np.float32), r"expected shape \(68, 3\), found \(67, 3\)"),
        ("points_5", np.zeros((5, 2), np.float32), r"expected shape \(5, 3\)"),
        ("points_5", np.array([{"a": 1}] * 15, dtype=object).reshape(5, 3), "not a readable .npy"),
    ],
)
def test_bad_array_is_refused(golden_checkpoint, golden_dir, tmp_path, role, value, expected):
    bad = _npy(tmp_path / f"bad_{role}.npy", value)
    with pytest.raises(BundleError, match=expected) as exc:
        create_bundle(golden_checkpoint, **arrays(golden_dir, **{role: bad}), out=tmp_path / "out")
    assert str(bad) in str(exc.value) and role in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_missing_input_file(golden_dir, tmp_path):
    with pytest.raises(BundleError, match="weights file not found") as exc:
        create_bundle(tmp_path / "none.pth", **arrays(golden_dir), out=tmp_path / "out")
    assert str(tmp_path / "none.pth") in str(exc.value)


def _drop_one(sd: dict) -> str:
    key = next(k for k in sd if "box_predictor" in k)
    del sd[key]
    return "1 missing keys"


def _add_one(sd: dict) -> str:
    sd["module.roi_heads.surplus.weight"] = torch.zeros(3)
    return "1 unexpected keys (roi_heads.surplus.weight)"


def _reshape_one(sd: dict) -> str:
    key = next(k for k in sd if k.endswith("cls_score.weight"))
    sd[key] = torch.zeros(3, sd[key].shape[1])
    return "1 tensors of the wrong shape"


@pytest.mark.parametrize("damage", [_drop_one, _add_one, _reshape_one], ids=["missing", "unexpected", "shape"])
def test_wrong_weights_are_refused(golden_state, golden_dir, tmp_path, damage):
    sd = dict(golden_state)
    expected = damage(sd)
    bad = tmp_path / "bad.pth"
    torch.save({"fpn_model": sd}, bad)
    with pytest.raises(BundleError) as exc:
        create_bundle(bad, **arrays(golden_dir), out=tmp_path / "out")
    message = str(exc.value)
    assert str(bad) in message and "not img2pose ResNet-18 FPN weights" in message and expected in message
    assert not (tmp_path / "out").exists()


def test_wrong_weights_in_an_existing_bundle(bundle_copy, golden_state):
    """A bundle whose manifest matches wrong weights opens, but build_model refuses them."""
    sd = dict(golden_state)
    _drop_one(sd)
    weights = bundle_copy / "img2pose_v1.pth"
    weights.unlink()  # a link to the golden bundle's file: replace it, do not write through it
    torch.save({"fpn_model": sd}, weights)
    rewrite_manifest(bundle_copy, lambda m: m["files"]["weights"].update(sha256=sha256(weights)))
    b = open_bundle(bundle_copy)
    with pytest.raises(BundleError, match="1 missing keys") as exc:
        b.build_model()
    assert str(weights) in str(exc.value)


class _RunsCode:
    """Pickles as a call to os.system: loading it with plain pickle would run the command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_and_not_run(golden_dir, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"fpn_model": _RunsCode(marker)}, evil)
    with pytest.raises(BundleError, match="refused: the file holds pickled code") as exc:
        create_bundle(evil, **arrays(golden_dir), out=tmp_path / "out")
    assert str(evil) in str(exc.value)
    assert not marker.exists()


# --- weight layouts --------------------------------------------------------------------------------
def test_every_layout_loads_the_same_parameters(golden_bundle, golden_state, golden_dir, canonical_safetensors, tmp_path):
    assert all(k.startswith("module.") for k in golden_state)
    assert any(k.startswith("module.backbone.fpn.inner_blocks.0.weight") for k in golden_state)  # old names
    plain = tmp_path / "plain" / "img2pose_plain.pt"
    plain.parent.mkdir()
    torch.save(dict(canonical_state_dict(golden_state)), plain)

    models = [open_bundle(golden_bundle).build_model()]
    for name, weights in [("plain", plain), ("st", canonical_safetensors)]:
        out = create_bundle(weights, **arrays(golden_dir), out=tmp_path / f"bundle_{name}")
        models.append(open_bundle(out).build_model())
    reference = models[0].state_dict()
    for model in models[1:]:
        state = model.state_dict()
        assert state.keys() == reference.keys()
        for key in reference:
            assert torch.equal(state[key], reference[key]), key


# --- remote bundles on S3 --------------------------------------------------------------------------
def _upload(endpoint: str, bucket: str, prefix: str, folder: Path) -> None:
    client = s3_client(endpoint)
    client.create_bucket(Bucket=bucket)
    for f in folder.iterdir():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{f.name}", Body=f.read_bytes())


def _stats(folder: Path) -> dict[str, tuple[int, int]]:
    return {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in folder.iterdir()}


def test_s3_bundle_is_cached_once_and_checked(s3_server, golden_bundle, tmp_path, monkeypatch):  # noqa: F811
    _upload(s3_server, "img2pose-bundles", "golden/v1", golden_bundle)
    uri = "s3://img2pose-bundles/golden/v1"
    options = {"client_kwargs": {"endpoint_url": s3_server}}
    cache = tmp_path / "cache"

    first = open_bundle(uri, cache_dir=cache, storage_options=options)
    assert first.uri == uri
    assert first.root == cache / "remote" / hashlib.sha256(uri.encode()).hexdigest()
    for role in ROLES:
        name = first.manifest["files"][role]["path"]
        assert sha256(first.root / name) == sha256(golden_bundle / name)
    assert first.model_sha256 == open_bundle(golden_bundle).model_sha256
    assert not list(first.root.glob("*.part"))
    cached = _stats(first.root)

    # The second open finds every file in the cache: nothing is downloaded or replaced.
    second = open_bundle(uri + "/", cache_dir=cache, storage_options=options)
    assert second.root == first.root
    assert {k: v for k, v in _stats(second.root).items() if k != "bundle.json" and not k.startswith(".")} == {
        k: v for k, v in cached.items() if k != "bundle.json" and not k.startswith(".")
    }
    assert not second.build_model().training

    # The endpoint may also come from AWS_ENDPOINT_URL.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    assert open_bundle(uri, cache_dir=cache).model_sha256 == first.model_sha256
    monkeypatch.delenv("AWS_ENDPOINT_URL")

    # A file changed on the store no longer matches bundle.json: a fresh cache refuses it.
    points_5 = bytearray((golden_bundle / "reference_3d_5_points_trans.npy").read_bytes())
    points_5[-1] ^= 0xFF
    s3_client(s3_server).put_object(
        Bucket="img2pose-bundles", Key="golden/v1/reference_3d_5_points_trans.npy", Body=bytes(points_5)
    )
    fresh = tmp_path / "fresh"
    with pytest.raises(BundleError, match="sha256 mismatch") as exc:
        open_bundle(uri, cache_dir=fresh, storage_options=options)
    assert f"{uri}/reference_3d_5_points_trans.npy" in str(exc.value)
    local = fresh / "remote" / hashlib.sha256(uri.encode()).hexdigest()
    assert not (local / "reference_3d_5_points_trans.npy").exists()
    assert not (local / "bundle.json").exists() and not list(local.glob("*.part"))
    # The verified copy already in the first cache is still good: it matches bundle.json.
    assert open_bundle(uri, cache_dir=cache, storage_options=options).root == first.root


def test_s3_missing_bundle(s3_server, tmp_path):  # noqa: F811
    s3_client(s3_server).create_bucket(Bucket="img2pose-empty")
    with pytest.raises(BundleError, match="bundle.json: missing") as exc:
        open_bundle(
            "s3://img2pose-empty/none", cache_dir=tmp_path, storage_options={"client_kwargs": {"endpoint_url": s3_server}}
        )
    assert "s3://img2pose-empty/none/bundle.json" in str(exc.value)


# --- downloads and fetching ------------------------------------------------------------------------
Reply = tuple[int, dict[str, str], "bytes | Path"]


@dataclass
class FileServer:
    """A local HTTP server whose routes are functions of (query, number of earlier hits)."""

    url: str
    routes: dict[str, Callable[[dict[str, str], int], Reply]] = field(default_factory=dict)
    hits: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def file(self, path: Path, content_type: str = "application/octet-stream") -> Callable:
        return lambda query, n: (200, {"Content-Type": content_type}, path)


def _handler(server: FileServer) -> type:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802  (fsspec asks for the size first; not counted as a hit)
            self.do_GET(head=True)

        def do_GET(self, head: bool = False) -> None:  # noqa: N802
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            seen = server.hits.setdefault(parts.path, [])
            route = server.routes.get(parts.path)
            status, headers, body = route(query, len(seen)) if route else (404, {}, b"not found")
            if not head:
                seen.append(query)
            size = body.stat().st_size if isinstance(body, Path) else len(body)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if head:
                return
            if isinstance(body, Path):
                with open(body, "rb") as f:
                    shutil.copyfileobj(f, self.wfile, 1 << 20)
            else:
                self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return Handler


@pytest.fixture()
def http_server() -> Iterator[FileServer]:
    state = FileServer(url="")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def zoo_zip(golden_checkpoint, golden_dir, tmp_path_factory) -> Path:
    """The model zoo zip's layout, with the golden checkpoint and pose statistics."""
    path = tmp_path_factory.mktemp("zoo") / "models.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.write(golden_checkpoint, "models/img2pose_v1.pth")
        zf.write(golden_dir / "pose_mean.npy", "models/WIDER_train_pose_mean_v1.npy")
        zf.write(golden_dir / "pose_stddev.npy", "models/WIDER_train_pose_stddev_v1.npy")
    return path


DRIVE_WARNING = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<p>Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="/download" method="get">
<input type="submit" id="uc-download-link" class="goog-inline-block" value="Download anyway"/>
<input type="hidden" name="id" value="ZOO"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="u-123"></form>
</body></html>"""


def _drive(zip_path: Path) -> Callable:
    """Google Drive's behaviour for big files: a warning page until the confirm form is submitted."""

    def route(query: dict[str, str], n: int) -> Reply:
        if query.get("uuid") == "u-123" and query.get("confirm") == "t" and query.get("id") == "ZOO":
            return 200, {"Content-Type": "application/octet-stream"}, zip_path
        return 200, {"Content-Type": "text/html; charset=utf-8"}, DRIVE_WARNING.encode()

    return route


def _serve_points(server: FileServer, golden_dir: Path) -> dict[str, str]:
    server.routes["/refs/68.npy"] = server.file(golden_dir / "reference_3d_68_points_trans.npy")
    server.routes["/refs/5.npy"] = server.file(golden_dir / "reference_3d_5_points_trans.npy")
    return {"points_68": server.url + "/refs/68.npy", "points_5": server.url + "/refs/5.npy"}


def test_fetch_official_through_drive_warning(http_server, zoo_zip, golden_checkpoint, golden_dir, tmp_path, monkeypatch):
    http_server.routes["/download"] = _drive(zoo_zip)
    urls = {"zoo_zip": http_server.url + "/download?id=ZOO&export=download", **_serve_points(http_server, golden_dir)}
    cache = tmp_path / "cache"
    out = fetch_official(official_bundle_dir("v1", cache_dir=cache), urls=urls, progress=False)

    assert [q.get("uuid") for q in http_server.hits["/download"]] == [None, "u-123"]
    b = open_bundle(out)
    assert b.model_sha256 == sha256(golden_checkpoint)
    assert b.manifest["license"] == "CC-BY-NC-4.0" and b.manifest["name"] == "img2pose_v1"
    assert b.manifest["source"] == urls
    np.testing.assert_array_equal(b.pose_mean, np.load(golden_dir / "pose_mean.npy"))
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".img2pose-fetch-")]

    # resolve_bundle finds the official bundle in the cache without fetching again.
    monkeypatch.delenv("IMG2POSE_BUNDLE", raising=False)
    monkeypatch.setenv("IMG2POSE_CACHE", str(cache))
    assert resolve_bundle(None).root == out
    assert len(http_server.hits["/download"]) == 2


def test_fetch_refuses_a_zip_without_the_variant(http_server, zoo_zip, golden_dir, tmp_path):
    http_server.routes["/zoo.zip"] = http_server.file(zoo_zip)
    urls = {"zoo_zip": http_server.url + "/zoo.zip", **_serve_points(http_server, golden_dir)}
    with pytest.raises(BundleError, match="has no img2pose_v1_ft_300w_lp.pth") as exc:
        fetch_official(tmp_path / "out", variant="v1_ft_300w_lp", urls=urls, progress=False)
    assert urls["zoo_zip"] in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_cli_fetch_huggingface(http_server, canonical_safetensors, golden_dir, tmp_path):
    config = {
        "pose_mean": np.load(golden_dir / "pose_mean.npy").tolist(),
        "pose_stddev": np.load(golden_dir / "pose_stddev.npy").tolist(),
        "threed_points": np.load(golden_dir / "reference_3d_68_points_trans.npy").tolist(),
        "min_size": 640,
        "max_size": 1400,
    }
    http_server.routes["/hf/config.json"] = lambda q, n: (200, {"Content-Type": "application/json"},
                                                          json.dumps(config).encode())
    http_server.routes["/hf/model.safetensors"] = http_server.file(canonical_safetensors)
    urls = _serve_points(http_server, golden_dir)
    env = {
        **os.environ,
        "IMG2POSE_URL_HF_WEIGHTS": http_server.url + "/hf/model.safetensors",
        "IMG2POSE_URL_HF_CONFIG": http_server.url + "/hf/config.json",
        "IMG2POSE_URL_POINTS_68": urls["points_68"],
        "IMG2POSE_URL_POINTS_5": urls["points_5"],
    }
    out = tmp_path / "hf"
    proc = subprocess.run(
        [sys.executable, "-m", "img2pose_core.cli", "bundle", "fetch", "--source", "huggingface", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "CC BY-NC 4.0" in proc.stdout and f"bundle written to {out}" in proc.stdout
    assert "downloaded model.safetensors" in proc.stderr  # the progress report

    b = open_bundle(out)
    assert b.weights_path.name == "img2pose_v1.safetensors"
    assert b.manifest["source"]["hf_weights"] == env["IMG2POSE_URL_HF_WEIGHTS"]
    np.testing.assert_array_equal(b.pose_stddev, np.load(golden_dir / "pose_stddev.npy"))
    assert b.model_sha256 == sha256(canonical_safetensors)  # create_bundle loaded it strictly already


def test_download_retries_server_errors(http_server, tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_mod, "DOWNLOAD_BACKOFF_S", 0.05)
    http_server.routes["/flaky"] = lambda q, n: (503, {}, b"busy") if n < 2 else (200, {}, b"payload")
    dest = download(http_server.url + "/flaky", tmp_path / "f.bin", progress=False)
    assert dest.read_bytes() == b"payload" and len(http_server.hits["/flaky"]) == 3

    http_server.routes["/down"] = lambda q, n: (503, {}, b"busy")
    with pytest.raises(BundleError, match=r"/down: download failed after 5 attempts \(HTTP 503"):
        download(http_server.url + "/down", tmp_path / "g.bin", progress=False)
    assert not list(tmp_path.glob("*.part")) and not (tmp_path / "g.bin").exists()


def test_download_from_an_unreachable_host_fails_at_once(tmp_path):
    """Offline (nothing listens; a name that does not resolve is treated alike): one attempt and a clear error, not minutes of
    retries; a server error is still retried (above)."""
    import socket

    with socket.socket() as s:  # a port with nothing listening: the connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BundleError, match=r"cannot connect to 127\.0\.0\.1:\d+ \(connection refused\)") as exc:
        download(f"http://127.0.0.1:{port}/w.pth", tmp_path / "w.pth", progress=False)
    assert "attempts" not in str(exc.value)


def test_download_html_without_form_is_explained(http_server, tmp_path):
    http_server.routes["/quota"] = lambda q, n: (200, {"Content-Type": "text/html"}, b"<html>Quota exceeded</html>")
    with pytest.raises(BundleError, match="HTML page instead of the file") as exc:
        download(http_server.url + "/quota", tmp_path / "z.zip", progress=False)
    assert http_server.url + "/quota" in str(exc.value) and "img2pose bundle create" in str(exc.value)


def test_fetch_404_names_the_url(http_server, golden_dir, tmp_path):
    urls = {"zoo_zip": http_server.url + "/gone.zip", **_serve_points(http_server, golden_dir)}
    with pytest.raises(BundleError, match=r"/gone.zip: HTTP 404") as exc:
        fetch_official(tmp_path / "out", urls=urls, progress=False)
    assert urls["zoo_zip"] in str(exc.value)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".img2pose-fetch-")]


def test_http_bundle_is_cached(http_server, golden_bundle, tmp_path):
    """A bundle on a plain web server (no range requests) downloads once into the cache."""
    for f in golden_bundle.iterdir():
        http_server.routes[f"/b/{f.name}"] = http_server.file(f)
    uri = http_server.url + "/b"
    first = open_bundle(uri, cache_dir=tmp_path)
    assert first.model_sha256 == sha256(golden_bundle / "img2pose_v1.pth")
    assert sha256(first.weights_path) == first.model_sha256
    assert len(http_server.hits["/b/img2pose_v1.pth"]) == 1
    second = open_bundle(uri, cache_dir=tmp_path)
    assert second.root == first.root
    assert len(http_server.hits["/b/img2pose_v1.pth"]) == 1  # not downloaded again
    assert len(http_server.hits["/b/bundle.json"]) == 2


# --- resolve_bundle --------------------------------------------------------------------------------
def test_resolve_uses_argument_then_environment(golden_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("IMG2POSE_CACHE", str(tmp_path))
    monkeypatch.setenv("IMG2POSE_BUNDLE", str(golden_bundle))
    assert resolve_bundle(None, fetch_if_missing=False).root == golden_bundle
    monkeypatch.setenv("IMG2POSE_BUNDLE", str(tmp_path / "elsewhere"))
    assert resolve_bundle(str(golden_bundle)).root == golden_bundle


def test_resolve_without_any_bundle_says_how_to_get_one(http_server, tmp_path, monkeypatch):
    monkeypatch.delenv("IMG2POSE_BUNDLE", raising=False)
    monkeypatch.setenv("IMG2POSE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(BundleError) as exc:
        resolve_bundle(None, fetch_if_missing=False)
    for hint in ("--bundle", "IMG2POSE_BUNDLE", "img2pose bundle fetch"):
        assert hint in str(exc.value)

    monkeypatch.setenv("IMG2POSE_URL_ZOO_ZIP", http_server.url + "/no-such.zip")
    with pytest.raises(BundleError) as exc:
        resolve_bundle(None)
    message = str(exc.value)
    assert "HTTP 404" in message and "--bundle" in message and "IMG2POSE_BUNDLE" in message
    assert not (official_bundle_dir("v1") / "bundle.json").exists()


# --- the command line ------------------------------------------------------------------------------
def test_cli_create_verify_and_errors(golden_checkpoint, golden_dir, tmp_path, capsys):
    from img2pose_core.cli import main

    out = tmp_path / "cli"
    a = arrays(golden_dir)
    rc = main([
        "bundle", "create", "--weights", str(golden_checkpoint), "--pose-mean", str(a["pose_mean"]),
        "--pose-stddev", str(a["pose_stddev"]), "--points-68", str(a["points_68"]), "--points-5", str(a["points_5"]),
        "--out", str(out), "--name", "mine", "--min-size", "480", "--threshold", "0.5", "--license", "CC-BY-NC-4.0",
    ])
    assert rc == 0
    b = open_bundle(out)
    assert (b.name, b.license, b.settings.min_size, b.settings.threshold) == ("mine", "CC-BY-NC-4.0", 480, 0.5)
    capsys.readouterr()

    assert main(["bundle", "verify", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "sha256 verified" in shown and "load: ok" in shown and b.model_sha256 in shown

    flip_byte(out / "pose_mean.npy")
    assert main(["bundle", "verify", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("img2pose: error: ") and "sha256 mismatch" in err and "Traceback" not in err
