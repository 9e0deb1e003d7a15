"""jobs/annotate.py over hostile inputs and stale state, end to end on the shared test Ray cluster.

One run carries every kind of hostile input at once (a folder with a named pipe, links, camera and
hidden names, sidecars and markers; a tar shard with repeated names, links and devices; a CSV manifest
with a byte order mark naming dead, silent, unresolvable and forbidden hosts, local files, credentials
and copies; a glob that overlaps the manifest): exactly one row per distinct input, everything else
counted in the run manifest, no secret anywhere, bounded in time. Then the stale-state cases: a reused
run id, two bundles with the same weights, weights that do not load. Stage-level tests of the same
cases: tests/test_hostile_inputs.py.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, needs_golden
from hostile_hosts import UNRESOLVABLE_HOST, ImageServer, SilentHost, refused_url
from ray_fixtures import ray_head  # noqa: F401
from s3_fixtures import s3_server  # noqa: F401
from test_annotate import JOB, _check_consistency, _job, _picture, _read_tables
from test_reliability import _files_containing

pytestmark = [needs_golden]

SMALL = ["--min-size", "32", "--max-size", "64", "--threshold", "0.5"]
SECRET, SIGNATURE, TOKEN = "PwInUrl7f3a9c", "SigInUrl2b8d41", "TokInUrl9e0c77"


def _avif(golden_dir: Path) -> bytes:
    buf = io.BytesIO()
    with Image.open(golden_dir / "images" / "astronaut.jpg") as im:
        im.convert("RGB").resize((64, 64)).save(buf, format="AVIF")
    return buf.getvalue()


def _hostile_tar(golden_dir: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name, data=b"", **kind):
            info = tarfile.TarInfo(name)
            for key, value in kind.items():
                setattr(info, key, value)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("000.jpg", _picture(golden_dir, "teaser.jpg", 64, 40))
        add("000.json", b'{"caption": "x"}')
        add("001.jpg", _picture(golden_dir, "teaser.jpg", 64, 41))
        add("001.jpg", _picture(golden_dir, "astronaut.jpg", 64, 42))
        add("002.avif", _avif(golden_dir))
        add("shadow.jpg", type=tarfile.SYMTYPE, linkname="/etc/shadow")
        add("hard.jpg", type=tarfile.LNKTYPE, linkname="000.jpg")
        add("pipe.jpg", type=tarfile.FIFOTYPE)
        add("null.jpg", type=tarfile.CHRTYPE)
    return buf.getvalue()


def test_hostile_inputs_each_get_one_row_and_nothing_leaks(ray_head, golden_bundle, golden_dir, tmp_path):  # noqa: F811
    corpus, lists, elsewhere, out = tmp_path / "corpus", tmp_path / "lists", tmp_path / "elsewhere", tmp_path / "out"
    for folder in (corpus, lists, elsewhere, out / "crops" / "x"):
        folder.mkdir(parents=True)
    pictures = iter(_picture(golden_dir, ("teaser.jpg", "astronaut.jpg")[i % 2], 64, 3000 + i) for i in range(50))
    expected: dict[str, str] = {}
    for name in ("p0.jpg", "p1.jpg", "_DSC0001.JPG", ".hidden.jpg"):
        (corpus / name).write_bytes(next(pictures))
        expected[str(corpus / name)] = "ok"
    (corpus / "p0.json").write_text('{"caption": "sidecar of p0.jpg"}')
    (corpus / "notes.txt").write_text("not an image, but a file the user pointed the job at")
    expected[str(corpus / "notes.txt")] = "not_an_image"
    os.mkfifo(corpus / "pipe.jpg")
    expected[str(corpus / "pipe.jpg")] = "not_a_file"
    (elsewhere / "never.jpg").write_bytes(next(pictures))
    (corpus / "linkdir").symlink_to(elsewhere)
    expected[str(corpus / "linkdir")] = "not_a_file"
    # The job's own output, reached through links inside the input: never read.
    (out / "crops" / "x" / "0.jpg").write_bytes(next(pictures))
    (corpus / "results").symlink_to(out)
    expected[str(corpus / "results")] = "not_a_file"
    (corpus / "crop.jpg").symlink_to(out / "crops" / "x" / "0.jpg")
    expected[str(corpus / "crop.jpg")] = "not_allowed"
    (corpus / "shard-000.tar").write_bytes(_hostile_tar(golden_dir))
    (corpus / "shard-000.json").write_text("{}")
    (corpus / "_SUCCESS").write_text("")
    shard = str(corpus / "shard-000.tar")
    expected |= {f"{shard}#000.jpg": "ok", f"{shard}#001.jpg": "ok", f"{shard}#002.avif": "ok",
                 f"{shard}#shadow.jpg": "not_a_file", f"{shard}#hard.jpg": "not_a_file",
                 f"{shard}#pipe.jpg": "not_a_file", f"{shard}#null.jpg": "not_a_file"}  # fmt: skip
    (lists / "a.jpg").write_bytes(next(pictures))
    expected[str(lists / "a.jpg")] = "ok"

    with ImageServer() as server, SilentHost() as silent:
        for i in range(3):
            server.routes[f"/img/h{i}.jpg"] = server.body(next(pictures))
        dead, silent_url = refused_url("/dead.jpg"), silent.url("/stall.jpg")
        host = server.url.split("://", 1)[1]
        rows = [
            ("a.jpg", "ok"), ("./a.jpg", None), ("../elsewhere/never.jpg", "not_allowed"), ("/etc/passwd", "not_allowed"),
            # Refused from a manifest, but an input of its own: read once, the manifest's mention a copy.
            ("../corpus/p1.jpg", None),
            ("file:///etc/shadow", "not_allowed"), ("", None),
            (f"{server.url}/img/h0.jpg", "ok"), (f"{server.url}/img/h0.jpg", None),
            (f"http://alice:{SECRET}@{host}/img/h1.jpg", "ok"),
            (f"{server.url}/img/h2.jpg?X-Amz-Signature={SIGNATURE}&X-Amz-Security-Token={TOKEN}", "ok"),
            (f"{server.url}/img/missing.jpg", "unreadable"), (dead, "unreadable"),
            (f"http://{UNRESOLVABLE_HOST}/x.jpg", "unreadable"), (silent_url, "unreadable"),
            ("http://169.254.169.254/latest/meta-data/iam/", "not_allowed"), ("ftp://127.0.0.1/x.jpg", "not_allowed"),
        ]  # fmt: skip
        text = "url,caption\n" + "".join(f"{u},row {i}\n" for i, (u, _) in enumerate(rows))
        (lists / "m.csv").write_bytes(text.encode("utf-8-sig"))  # as spreadsheets save CSV: with a BOM
        from img2pose_core.uris import normalise_local, redact_uri

        for cell, status in rows:
            if status is None:
                continue
            if cell.startswith("file://"):
                expected[normalise_local(cell)] = status
            elif "://" in cell:
                expected[redact_uri(cell)] = status
            else:
                expected[normalise_local(str(lists / cell))] = status

        env = dict(ray_head.env, IMG2POSE_CACHE=str(tmp_path / "cache"))
        args = ["--input", str(corpus), "--input", str(lists / "m.csv"), "--input", str(lists / "*.jpg"),
                "--output", str(out), "--bundle", str(golden_bundle), "--read-timeout", "4", "--crops", "112",
                "--run-id", "hostile", *SMALL]  # fmt: skip
        started = time.monotonic()
        proc = _job(args, env)
        elapsed = time.monotonic() - started
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert any("Authorization" in h for h in server.headers["/img/h1.jpg"]), "credentials in the URL were not used"

    faces, images = _read_tables(str(out))
    got = dict(zip(images["image_uri"].to_pylist(), images["status"].to_pylist()))
    assert len(got) == images.num_rows, "an input has two rows"
    assert got == expected, {k: (got.get(k), expected.get(k)) for k in set(got) | set(expected) if got.get(k) != expected.get(k)}
    errors = dict(zip(images["image_uri"].to_pylist(), images["error"].to_pylist()))
    assert "timed out" in errors[silent_url] and "refused" in errors[dead]
    assert "does not resolve" in errors[f"http://{UNRESOLVABLE_HOST}/x.jpg"]
    _check_consistency(faces, images)
    # Nothing of the output or of the folder behind the link was read.
    assert not [u for u, s in got.items() if s == "ok" and (str(out) in u or str(elsewhere) in u)]

    manifest = json.loads((out / "runs" / "hostile.json").read_text())
    counted = {reason: entry["count"] for reason, entry in manifest["counts"]["not_written"].items()}
    assert counted == {"duplicate": 5, "sidecar": 3, "marker": 1, "empty_url": 1}, manifest["counts"]["not_written"]
    assert str(corpus / "_SUCCESS") in manifest["counts"]["not_written"]["marker"]["examples"]
    assert manifest["counts"]["images"] == len(expected)
    # The stalled host cost one read timeout, not minutes: the whole run, Ray start included, is short.
    print(f"\nhostile run: {elapsed:.1f} s wall, {manifest['pipeline_s']:.1f} s pipeline, {len(expected)} rows")
    assert manifest["pipeline_s"] < 120

    # No secret of any URL in the tables, the run manifest, the crops, the job's output or Ray's logs.
    needles = [SECRET, SIGNATURE, TOKEN]
    leaks = _files_containing(out, needles) + _files_containing(ray_head.temp_dir, needles)
    assert not leaks, leaks
    assert not any(n in proc.stdout + proc.stderr for n in needles)

    # The same run id again (with another --rows-per-file, which would have split the rows differently):
    # refused before any work, with what to do.
    again = _job([*args, "--rows-per-file", "3"], dict(env, RAY_ADDRESS="127.0.0.1:1"), timeout=120)
    assert again.returncode == 2 and "--run-id hostile already exists" in again.stderr, again.stderr[-2000:]
    faces2, images2 = _read_tables(str(out))
    assert images2.num_rows == images.num_rows and faces2.num_rows == faces.num_rows


def test_inputs_that_overlap_or_carry_secrets_fail_fast(golden_bundle, tmp_path):
    corpus = tmp_path / "d"
    corpus.mkdir()
    Image.new("RGB", (8, 8)).save(corpus / "a.jpg")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "crops").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "out" / "crops" / "earlier.jpg")
    (tmp_path / "out-link").symlink_to(tmp_path / "out")
    (corpus / "to-out").symlink_to(tmp_path / "out")
    env = dict(os.environ, RAY_ADDRESS="127.0.0.1:1")  # any attempt to reach Ray would fail loudly
    cases = [
        (["--input", str(corpus), "--input", str(corpus / "*.jpg"), "--output", str(tmp_path / "o")], "inside --input"),
        (["--input", str(corpus / "to-out" / "crops"), "--output", str(tmp_path / "out")], "inside --output"),
        (["--input", str(tmp_path / "out"), "--output", str(tmp_path / "out-link" / "sub")], "inside --input"),
        (["--input", f"https://alice:{SECRET}@127.0.0.1:9/photos/", "--output", str(tmp_path / "o")], "cannot be reached"),
    ]
    for args, words in cases:
        started = time.monotonic()
        proc = _job([*args, "--bundle", str(golden_bundle)], env, timeout=120)
        assert proc.returncode == 2 and words in proc.stderr, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and SECRET not in proc.stderr + proc.stdout
        assert time.monotonic() - started < 60


def test_weights_that_do_not_load_fail_before_ray_with_the_users_path(golden_bundle, tmp_path):
    """The files match bundle.json (so every sha256 check passes), but the weights are no checkpoint."""
    import hashlib
    import shutil

    bad = tmp_path / "my-bundle"
    shutil.copytree(golden_bundle, bad)
    manifest = json.loads((bad / "bundle.json").read_text())
    weights = bad / manifest["files"]["weights"]["path"]
    weights.write_bytes(b"PK\x03\x04 this is not a torch checkpoint" + os.urandom(64))
    manifest["files"]["weights"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (bad / "bundle.json").write_text(json.dumps(manifest))
    (tmp_path / "d").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "d" / "a.jpg")
    started = time.monotonic()
    proc = _job(["--input", str(tmp_path / "d"), "--output", str(tmp_path / "o"), "--bundle", str(bad)],
                dict(os.environ, RAY_ADDRESS="127.0.0.1:1"), timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"--bundle {bad}: the model cannot be loaded" in proc.stderr, proc.stderr[-2000:]
    assert "--skip-existing" not in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - started < 60


def test_two_bundles_with_the_same_weights_give_each_its_own_results(ray_head, golden_bundle, golden_dir, tmp_path):  # noqa: F811
    """The actors' bundle cache is keyed on the whole bundle: a second bundle with the same weights and
    another pose mean must give that bundle's poses, not the cached first bundle's."""
    from img2pose_core.bundle import create_bundle, open_bundle
    from img2pose_core.imageio import decode_image
    from img2pose_core.predictor import Predictor

    files = open_bundle(golden_bundle).manifest["files"]
    np.save(tmp_path / "mean.npy", np.load(golden_bundle / files["pose_mean"]["path"]) + np.array([0, 0, 0, 0.1, 0.1, 2.0]))
    other = create_bundle(
        weights=golden_bundle / files["weights"]["path"], pose_mean=tmp_path / "mean.npy",
        pose_stddev=golden_bundle / files["pose_stddev"]["path"], points_68=golden_bundle / files["points_68"]["path"],
        points_5=golden_bundle / files["points_5"]["path"], out=tmp_path / "other",
    )  # fmt: skip
    corpus = tmp_path / "d"
    corpus.mkdir()
    picture = _picture(golden_dir, "teaser.jpg", 96, 77)
    (corpus / "a.jpg").write_bytes(picture)
    env = dict(ray_head.env, IMG2POSE_CACHE=str(tmp_path / "cache"))
    tz = {}
    for name, bundle in (("first", golden_bundle), ("second", other)):
        proc = _job(["--input", str(corpus), "--output", str(tmp_path / name), "--bundle", str(bundle), *SMALL], env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        faces, _ = _read_tables(str(tmp_path / name))
        assert faces.num_rows > 0
        tz[name] = sorted(faces["tz"].to_pylist())
        run = json.loads(next((tmp_path / name / "runs").glob("*.json")).read_text())
        assert run["bundle"]["digest"] == open_bundle(bundle).digest
    direct = Predictor(str(other), device="cpu", min_size=32, max_size=64, threshold=0.5).predict([decode_image(picture).pixels])[0]
    np.testing.assert_allclose(tz["second"], sorted(direct.poses[:, 5]), rtol=1e-4)
    assert not np.allclose(tz["first"], tz["second"])


def test_job_flags_for_hostile_inputs_are_documented():
    help_text = subprocess.run([sys.executable, *JOB, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    assert "--read-timeout" in help_text and "--allow-local-files" in help_text
