"""jobs/annotate.py end to end: a real local Ray cluster, a real S3 endpoint (moto), real Parquet.

The model is the golden img2pose checkpoint (deterministic weights) at a small input size; its
detections on these pictures are not faces, but they are real outputs of the real model, which is
what the job must carry into the tables unchanged.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bad_images import make_bad_images
from conftest import ROOT, needs_golden
from img2pose_core.output import FACES_SCHEMA, IMAGES_SCHEMA
from ray_fixtures import ray_head  # noqa: F401
from s3_fixtures import s3_server  # noqa: F401

pytestmark = [needs_golden]

# Run as a module from the root, as documented: the checkout's code, whatever is installed.
JOB = ["-m", "jobs.annotate"]
MODEL_ARGS = ["--min-size", "128", "--max-size", "256", "--threshold", "0.5"]


def _job(args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *JOB, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _picture(golden_dir: Path, name: str, size: int, seed: int) -> bytes:
    """A small JPEG: a crop of a golden photograph, so each image has its own content."""
    with Image.open(golden_dir / "images" / name) as im:
        im = im.convert("RGB")
        rng = np.random.default_rng(seed)
        w, h = im.size
        side = int(min(w, h) * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = im.crop((x, y, x + side, y + side)).resize((size, int(size * rng.uniform(0.6, 1.0))))
    buf = io.BytesIO()
    crop.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _read_tables(root: str, filesystem=None) -> tuple[pa.Table, pa.Table]:
    def read(name: str, schema: pa.Schema) -> pa.Table:
        path = f"{root}/{name}"
        exists = filesystem.exists(path) if filesystem else Path(path).exists()
        if not exists:
            return schema.empty_table()
        dataset = pads.dataset(path, format="parquet", filesystem=filesystem, partitioning="hive")
        return dataset.to_table()

    return read("faces", FACES_SCHEMA), read("images", IMAGES_SCHEMA)


def _check_consistency(faces: pa.Table, images: pa.Table) -> None:
    """Within one run: one row per image; faces rows match num_faces, no duplicates or gaps."""
    con = duckdb.connect()
    con.register("faces", faces)
    con.register("images", images)
    dup = con.execute("select image_uri, run_id, count(*) c from images group by all having c > 1").fetchall()
    assert not dup, f"images with several rows in one run: {dup[:3]}"
    mismatch = con.execute(
        """
        select i.image_uri, i.num_faces, count(f.face_index) n, count(distinct f.face_index) d,
               coalesce(max(f.face_index), -1) mx
        from images i left join faces f on f.image_uri = i.image_uri and f.run_id = i.run_id
        where i.status = 'ok' group by all
        having n != i.num_faces or d != n or mx != i.num_faces - 1
        """
    ).fetchall()
    assert not mismatch, f"faces rows disagree with num_faces: {mismatch[:3]}"
    orphans = con.execute(
        "select count(*) from faces f anti join images i on f.image_uri = i.image_uri and f.run_id = i.run_id"
    ).fetchone()[0]
    assert orphans == 0


@pytest.fixture(scope="module")
def bucket(s3_server, golden_dir, tmp_path_factory):
    """A bucket with images (good and bad), a tar shard and a manifest."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket="corpus")
    keys = {}
    for i in range(6):
        name = ("teaser.jpg", "astronaut.jpg")[i % 2]
        keys[f"images/2026/11/img{i:02d}.jpg"] = _picture(golden_dir, name, 200, i)
    bad_dir = tmp_path_factory.mktemp("bad")
    expected_bad = make_bad_images(bad_dir)
    for name in expected_bad:
        keys[f"images/bad/{name}"] = (bad_dir / name).read_bytes()
    keys["images/2026/11/img00.json"] = b'{"caption": "a sidecar, not an image"}'
    keys["images/2026/"] = b""  # a folder marker, as the S3 console's "Create folder" makes
    shard = {}
    for i in range(3):
        shard[f"{i:06d}.jpg"] = _picture(golden_dir, "teaser.jpg", 180, 100 + i)
        shard[f"{i:06d}.json"] = json.dumps({"key": f"{i:06d}"}).encode()
    keys["shards/000000.tar"] = _tar(shard)
    for i in range(2):
        keys[f"loose/photo{i}.jpg"] = _picture(golden_dir, "astronaut.jpg", 160, 200 + i)
    manifest = pa.table({"url": ["s3://corpus/loose/photo0.jpg", "s3://corpus/loose/photo1.jpg", "s3://corpus/loose/missing.jpg"]})
    buf = io.BytesIO()
    pq.write_table(manifest, buf)
    keys["manifests/batch1.parquet"] = buf.getvalue()
    for key, data in keys.items():
        s3.put_object(Bucket="corpus", Key=key, Body=data)
    expected = {f"s3://corpus/images/2026/11/img{i:02d}.jpg": "ok" for i in range(6)}
    for name, status in expected_bad.items():
        expected[f"s3://corpus/images/bad/{name}"] = status
    for i in range(3):
        expected[f"s3://corpus/shards/000000.tar#{i:06d}.jpg"] = "ok"
    expected["s3://corpus/loose/photo0.jpg"] = "ok"
    expected["s3://corpus/loose/photo1.jpg"] = "ok"
    expected["s3://corpus/loose/missing.jpg"] = "unreadable"
    return {"client": s3, "endpoint": s3_server, "expected": expected, "keys": keys}


def _s3fs(endpoint: str):
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)


S3_INPUTS = ["--input", "s3://corpus/images", "--input", "s3://corpus/shards/000000.tar", "--input", "s3://corpus/manifests/batch1.parquet"]  # fmt: skip


def test_job_over_s3_writes_both_tables(ray_head, bucket, golden_bundle, golden_dir):
    env = dict(ray_head.env, IMG2POSE_CACHE=str(golden_bundle.parent / "cache"))
    args = [
        *S3_INPUTS, "--output", "s3://corpus/out", "--s3-endpoint-url", bucket["endpoint"],
        "--bundle", str(golden_bundle), "--crops", "112", "--run-id", "first", *MODEL_ARGS,
    ]  # fmt: skip
    proc = _job(args, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "faces" in proc.stdout and "images/s" in proc.stdout and "s3://corpus/out" in proc.stdout

    fs = _s3fs(bucket["endpoint"])
    faces, images = _read_tables("corpus/out", fs)
    # pandas and pyarrow read the tables on S3 as they are (one run_id type: the files' own column).
    import pandas as pd

    options = {"endpoint_url": bucket["endpoint"]}
    assert len(pd.read_parquet("s3://corpus/out/images", storage_options=options)) == images.num_rows
    assert pq.read_table("corpus/out/faces", filesystem=fs).num_rows == faces.num_rows
    for table, schema in (("images", IMAGES_SCHEMA), ("faces", FACES_SCHEMA)):
        files = fs.find(f"corpus/out/{table}")
        assert files and all("/first/part-" in f for f in files)
        with fs.open(files[0], "rb") as f:
            assert pq.read_schema(f).equals(schema, check_metadata=True), table

    con = duckdb.connect()
    con.register("images", images)
    con.register("faces", faces)
    got = dict(con.execute("select image_uri, status from images").fetchall())
    expected = bucket["expected"]
    assert set(got) == set(expected), (set(expected) - set(got), set(got) - set(expected))
    for uri, status in expected.items():
        allowed = {"ok", "corrupt"} if status == "corrupt_or_ok" else {status}
        if uri.endswith("wide_30000x20.png"):
            allowed = {"too_small"}  # decodes, but the model's resize leaves it no height
        assert got[uri] in allowed, (uri, got[uri])
    assert con.execute("select count(*) from images where status != 'ok' and error is null").fetchone()[0] == 0
    assert con.execute("select count(*) from images where status = 'ok' and image_sha256 is null").fetchone()[0] == 0
    assert con.execute("select sum(num_faces) from images").fetchone()[0] == faces.num_rows > 0
    _check_consistency(faces, images)

    # Every face's crop exists and is a 112x112 JPEG named by content hash and face index.
    crops = con.execute("select crop_uri, image_sha256, face_index from faces").fetchall()
    for uri, sha, idx in crops[:20]:
        assert uri == f"s3://corpus/out/crops/{sha}/{idx}.jpg"
        with fs.open(uri, "rb") as f, Image.open(f) as im:
            assert im.size == (112, 112) and im.format == "JPEG"
    assert len(fs.find("corpus/out/crops")) == faces.num_rows

    # The run manifest counts what the tables hold.
    manifest = json.loads(fs.cat_file("corpus/out/runs/first.json"))
    assert manifest["counts"]["images"] == images.num_rows
    assert manifest["counts"]["faces"] == faces.num_rows
    # The sidecar and the folder marker have no row and are counted, by name.
    not_written = manifest["counts"]["not_written"]
    assert {k: v["count"] for k, v in not_written.items()} == {"sidecar": 4, "marker": 1}, not_written
    assert not_written["marker"]["examples"] == ["s3://corpus/images/2026/"]
    assert not_written["sidecar"]["examples"] == ["s3://corpus/images/2026/11/img00.json"] + [
        f"s3://corpus/shards/000000.tar#{i:06d}.json" for i in range(3)]
    assert manifest["bundle"]["model_sha256"] == faces["model_sha256"][0].as_py()

    # The job's faces are the predictor's faces for the same picture and settings.
    from img2pose_core.imageio import decode_image
    from img2pose_core.predictor import Predictor

    predictor = Predictor(str(golden_bundle), device="cpu", min_size=128, max_size=256, threshold=0.5)
    key = "images/2026/11/img01.jpg"
    direct = predictor.predict([decode_image(bucket["keys"][key]).pixels])[0]
    rows = con.execute(f"select score, box_x1, box_y1, box_x2, box_y2, rx, ry, rz, tx, ty, tz from faces where image_uri = 's3://corpus/{key}' order by face_index").fetchnumpy()  # noqa: E501
    assert len(rows["score"]) == len(direct)
    np.testing.assert_allclose(rows["score"], direct.scores, atol=1e-4)
    np.testing.assert_allclose(np.stack([rows[k] for k in ("box_x1", "box_y1", "box_x2", "box_y2")], 1), direct.boxes, atol=1.0)
    np.testing.assert_allclose(np.stack([rows[k] for k in ("rx", "ry", "rz", "tx", "ty", "tz")], 1), direct.poses, atol=1e-3)


def test_skip_existing_processes_only_new_images(ray_head, bucket, golden_bundle, golden_dir):
    env = dict(ray_head.env, IMG2POSE_CACHE=str(golden_bundle.parent / "cache"))
    fs = _s3fs(bucket["endpoint"])
    if not fs.exists("corpus/out/runs/first.json"):
        pytest.fail("needs the output of test_job_over_s3_writes_both_tables (run the module as a whole)")
    new_keys = [f"images/2026/12/new{i}.jpg" for i in range(2)]
    for i, key in enumerate(new_keys):
        bucket["client"].put_object(Bucket="corpus", Key=key, Body=_picture(golden_dir, "teaser.jpg", 200, 300 + i))
    # Files that are not the job's, under its tables: ignored by --skip-existing (and named), never deleted.
    foreign = {"corpus/out/images/notes.parquet": pa.table({"note": ["mine"]}),
               "corpus/out/faces/mine/analysis.parquet": pa.table({"x": [1.0]})}  # fmt: skip
    for key, table in foreign.items():
        buf = io.BytesIO()
        pq.write_table(table, buf)
        fs.pipe_file(key, buf.getvalue())
    args = [
        *S3_INPUTS, "--output", "s3://corpus/out", "--s3-endpoint-url", bucket["endpoint"],
        "--bundle", str(golden_bundle), "--run-id", "second", "--skip-existing", *MODEL_ARGS,
    ]  # fmt: skip
    proc = _job(args, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "notes.parquet" in proc.stderr and "ignored" in proc.stderr
    assert all(fs.exists(key) for key in foreign)
    for key in foreign:
        fs.rm_file(key)
    faces, images = _read_tables("corpus/out", fs)
    con = duckdb.connect()
    con.register("images", images)
    second = dict(con.execute("select image_uri, status from images where run_id = 'second'").fetchall())
    ok_before = {u for (u,) in con.execute("select image_uri from images where run_id = 'first' and status = 'ok'").fetchall()}
    # New images are processed; images that were ok are not touched again; failures are retried.
    assert {f"s3://corpus/{k}" for k in new_keys} <= {u for u, s in second.items() if s == "ok"}
    assert not (set(second) & ok_before)
    failed_before = {u for (u,) in con.execute("select image_uri from images where run_id = 'first' and status != 'ok'").fetchall()}
    assert set(second) == failed_before | {f"s3://corpus/{k}" for k in new_keys}
    assert con.execute("select count(*) from (select image_uri from images where status = 'ok' group by 1 having count(*) > 1)").fetchone()[0] == 0  # noqa: E501
    _check_consistency(faces, images)
    assert "skipped" in proc.stdout


def test_killed_run_resumes_exactly_once(ray_head, golden_bundle, golden_dir, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"p{i:03d}.jpg").write_bytes(_picture(golden_dir, ("teaser.jpg", "astronaut.jpg")[i % 2], 128, 500 + i))
    (corpus / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    env = dict(ray_head.env, IMG2POSE_CACHE=str(tmp_path / "cache"))
    # The default --rows-per-file (5000) is more than the run: only the flush by time writes before its end.
    base = ["--input", str(corpus), "--output", str(out), "--bundle", str(golden_bundle), *MODEL_ARGS,
            "--sources-per-task", "2", "--batch-size", "2", "--flush-interval", "1"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, *JOB, *base, "--run-id", "crashed"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    images_dir = out / "images" / "crashed"

    def rows_written() -> int:
        total = 0
        for f in images_dir.glob("*.parquet") if images_dir.exists() else []:
            try:
                total += pq.read_metadata(f).num_rows
            except (OSError, pa.ArrowInvalid):  # being renamed into place
                pass
        return total

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and rows_written() < 0.7 * 41:
        time.sleep(0.2)
    assert proc.poll() is None, "the job finished before it wrote 70% of its images: the flush by time failed"
    os.killpg(proc.pid, signal.SIGKILL)  # at about 70 %, as a host that kills the job would
    proc.wait()
    written_before = pq.ParquetDataset(images_dir).read()
    assert written_before.num_rows >= 0.7 * 41
    assert not (out / "runs" / "crashed.json").exists()
    # Simulate the worst moment of a crash: a faces file written, its images file not yet.
    # It is removed once older than a live run could leave one (an hour): this one is two hours old.
    orphan = out / "faces" / "crashed" / "part-00000000000000000000000000000000.parquet"
    pq.write_table(FACES_SCHEMA.empty_table(), orphan)
    fresh = out / "faces" / "crashed" / "part-11111111111111111111111111111111.parquet"
    pq.write_table(FACES_SCHEMA.empty_table(), fresh)  # as another run's file a moment before its images file
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))

    resumed = _job([*base, "--run-id", "resumed", "--skip-existing"], env)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert not orphan.exists() and fresh.exists()
    fresh.unlink()
    faces, images = _read_tables(str(out))
    con = duckdb.connect()
    con.register("images", images)
    inputs = {str(p) for p in corpus.iterdir()}
    latest = dict(con.execute("select image_uri, arg_max(status, run_id) from images group by 1").fetchall())
    assert set(latest) == inputs
    ok_rows = dict(con.execute("select image_uri, count(*) from images where status = 'ok' group by 1").fetchall())
    assert all(n == 1 for n in ok_rows.values()), ok_rows
    assert set(ok_rows) == inputs - {str(corpus / "broken.jpg")}
    assert latest[str(corpus / "broken.jpg")] == "corrupt"
    _check_consistency(faces, images)
    # The resumed run redid only what the killed run had not written: every ok image written before the
    # kill was skipped, none was annotated twice.
    ok_before = {u for u, s in zip(written_before["image_uri"].to_pylist(), written_before["status"].to_pylist())
                 if s == "ok"}  # fmt: skip
    manifest = json.loads((out / "runs" / "resumed.json").read_text())
    assert manifest["counts"]["skipped"] == len(ok_before) > 0


def test_a_run_stopped_by_sigterm_records_why_and_resumes(ray_head, golden_bundle, golden_dir, tmp_path):
    """SIGTERM (Kubernetes, a scheduler, ``kill``) ends the run through its failure path: exit 143, a last line
    that says how to resume, a failure record with the arguments and what was written; the resume is exact."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(24):
        (corpus / f"t{i:03d}.jpg").write_bytes(_picture(golden_dir, ("teaser.jpg", "astronaut.jpg")[i % 2], 128, 900 + i))
    out = tmp_path / "out"
    env = dict(ray_head.env, IMG2POSE_CACHE=str(tmp_path / "cache"))
    base = ["--input", str(corpus), "--output", str(out), "--bundle", str(golden_bundle), *MODEL_ARGS,
            "--sources-per-task", "2", "--batch-size", "2", "--rows-per-file", "2"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, *JOB, *base, "--run-id", "stopped"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    images_dir = out / "images" / "stopped"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if images_dir.exists() and list(images_dir.glob("*.parquet")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the job finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)  # the driver alone, as Kubernetes signals a container's main process
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, stderr[-3000:])
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("annotate.py: error: run stopped failed: stopped by SIGTERM.") and "--skip-existing" in last, stderr[-2000:]
    assert "Traceback" not in stderr
    record = json.loads((out / "runs" / "stopped.failed.json").read_text())
    assert record["error"] == "stopped by SIGTERM" and record["arguments"]["rows_per_file"] == 2
    written = pq.ParquetDataset(images_dir).read()
    # What it says it wrote is there (a write still finishing as the run stopped may add to it).
    assert 0 < record["counts"]["images"] <= written.num_rows
    resumed = _job([*base, "--run-id", "resumed", "--skip-existing"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    faces, images = _read_tables(str(out))
    _check_consistency(faces, images)
    con = duckdb.connect()
    con.register("images", images)
    ok = dict(con.execute("select image_uri, count(*) from images where status = 'ok' group by 1").fetchall())
    assert set(ok) == {str(p) for p in corpus.iterdir()} and set(ok.values()) == {1}


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda t, b: ["--input", str(t / "nope"), "--output", str(t / "o"), "--bundle", b], "no such folder"),
        (lambda t, b: ["--input", str(t / "empty"), "--output", str(t / "o"), "--bundle", b], "no images found"),
        (lambda t, b: ["--input", str(t / "imgs"), "--output", str(t / "imgs" / "out"), "--bundle", b], "inside --input"),
        (lambda t, b: ["--input", str(t / "imgs"), "--output", str(t / "afile" / "out"), "--bundle", b], "not writable"),
        (lambda t, b: ["--input", str(t / "imgs"), "--output", str(t / "o"), "--bundle", str(t / "nobundle")], "bundle"),
        (lambda t, b: ["--input", str(t / "imgs"), "--output", str(t / "o"), "--bundle", b, "--concurrency", "3,1"], "MIN,MAX"),
        (lambda t, b: ["--input", str(t / "imgs"), "--output", str(t / "o"), "--bundle", b, "--threshold", "1.5"], "[0, 1)"),
        (lambda t, b: ["--input", str(t / "imgs"), "--output", str(t / "o"), "--bundle", b, "--crops", "100"], "invalid choice"),
        (lambda t, b: ["--input", str(t / "m.csv"), "--output", str(t / "o"), "--bundle", b], "--url-column"),
        # An object store that refuses connections is a bad argument too: reported within the minute.
        (lambda t, b: ["--input", "s3://photos/day1/", "--output", str(t / "o"), "--bundle", b,
                       "--s3-endpoint-url", "http://127.0.0.1:9"], "cannot be reached"),
        (lambda t, b: ["--input", str(t / "imgs"), "--output", "s3://annotations/out", "--bundle", b,
                       "--s3-endpoint-url", "http://127.0.0.1:9"], "not writable"),
    ],
)  # fmt: skip
def test_bad_arguments_fail_fast_with_a_clear_message(tmp_path, golden_bundle, make_args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    (tmp_path / "afile").write_text("a file where a folder is needed")
    (tmp_path / "m.csv").write_text("path,label\n/x.jpg,1\n")
    env = dict(os.environ, RAY_ADDRESS="127.0.0.1:1")  # any attempt to reach Ray would fail loudly
    started = time.monotonic()
    proc = _job(make_args(tmp_path, str(golden_bundle)), env, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.parquet"))
    # A refused run leaves no trace in the output: no run log, no lease, no manifest.
    assert not (tmp_path / "o").exists() or not any(p.is_file() for p in (tmp_path / "o").rglob("*"))
    assert time.monotonic() - started < 60


def test_an_unwritable_cache_fails_before_any_work(tmp_path, golden_bundle):
    """IMG2POSE_CACHE where nothing can be written (below a file: root ignores permission bits) is found
    before any work, named, with the variable to change; not minutes later inside a Ray worker."""
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    (tmp_path / "afile").write_text("a file where the cache's folder would be")
    env = dict(os.environ, IMG2POSE_CACHE=str(tmp_path / "afile" / "cache"), RAY_ADDRESS="127.0.0.1:1")
    proc = _job(["--input", str(tmp_path / "imgs"), "--output", str(tmp_path / "o"), "--bundle", str(golden_bundle)],
                env, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert f"the cache {tmp_path / 'afile' / 'cache'} cannot be written (Not a directory)" in last, last
    assert "IMG2POSE_CACHE" in last and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_missing_bundle_says_how_to_provide_one(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    env = dict(os.environ, IMG2POSE_CACHE=str(tmp_path / "cache"), RAY_ADDRESS="127.0.0.1:1")
    env.pop("IMG2POSE_BUNDLE", None)
    # Every official URL points at a closed local port: the fetch fails fast, as offline.
    for key in ("ZOO_ZIP", "POINTS_68", "POINTS_5", "HF_WEIGHTS"):
        env[f"IMG2POSE_URL_{key}"] = "http://127.0.0.1:9/unreachable"
    proc = _job(["--input", str(tmp_path / "imgs"), "--output", str(tmp_path / "o")], env, timeout=300)
    assert proc.returncode == 2
    assert "--bundle" in proc.stderr and "IMG2POSE_BUNDLE" in proc.stderr, proc.stderr[-2000:]
    # Offline: one attempt per host, no retries ("cannot connect"), and no run log left in the output.
    assert "cannot connect to 127.0.0.1:9" in proc.stderr and "retrying" not in proc.stderr, proc.stderr[-2000:]
    assert not any(p.is_file() for p in (tmp_path / "o").rglob("*"))


def test_readme_queries_run_on_a_job_output(ray_head, golden_bundle, golden_dir, tmp_path):
    """Two runs over the same inputs (a folder, a CSV manifest with a caption kept, a glob), plain
    Parquet: every reader reads the tables as they are, and the README's queries count each image once."""
    import pandas as pd

    from img2pose_core.output import open_tables, queries_sql
    from test_tables import run_readme_queries

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"q{i}.jpg").write_bytes(_picture(golden_dir, "teaser.jpg", 200, 700 + i))
    # A CSV manifest with paths relative to itself, and a glob: the other two kinds of input.
    listed = tmp_path / "listed"
    listed.mkdir()
    for i in range(2):
        (listed / f"m{i}.jpg").write_bytes(_picture(golden_dir, "astronaut.jpg", 150, 800 + i))
    (listed / "manifest.csv").write_text("url,caption,id\nm0.jpg,first,7\nm1.jpg,second,8\n")
    globbed = tmp_path / "globbed"
    globbed.mkdir()
    for i in range(3):
        (globbed / f"g{i}.{'png' if i < 2 else 'txt'}").write_bytes(_picture(golden_dir, "teaser.jpg", 120, 850 + i))
    out = tmp_path / "output"
    env = dict(ray_head.env, IMG2POSE_CACHE=str(tmp_path / "cache"))
    inputs = ["--input", str(corpus), "--input", str(listed / "manifest.csv"), "--input", str(globbed / "*.png")]
    for _ in range(2):
        proc = _job([*inputs, "--output", str(out), "--bundle", str(golden_bundle), "--keep-columns", "caption",
                     *MODEL_ARGS], env)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    expected = {str(p) for p in corpus.iterdir()} | {str(listed / "m0.jpg"), str(listed / "m1.jpg")}
    expected |= {str(globbed / "g0.png"), str(globbed / "g1.png")}

    # Every reader reads both tables as they are, with one run_id type.
    frame = pd.read_parquet(out / "images")
    assert len(frame) == 2 * len(expected) and frame["run_id"].nunique() == 2
    assert pq.read_table(out / "faces").schema.field("run_id").type == pa.string()
    assert pads.dataset(out / "images").to_table().num_rows == len(frame)
    faces_sql = f"select count(*) from read_parquet('{out}/faces/*/*.parquet', hive_partitioning = true)"
    assert duckdb.sql(faces_sql).fetchall()[0][0] == len(pd.read_parquet(out / "faces")) > 0
    captions = dict(zip(frame["image_uri"], frame["caption"]))
    assert captions[str(listed / "m0.jpg")] == "first" and captions[str(listed / "m1.jpg")] == "second"
    assert pd.isna(captions[str(corpus / "q0.jpg")])

    con = open_tables(str(out))
    assert {u for (u,) in con.execute("select image_uri from latest_images").fetchall()} == expected
    run_readme_queries(con, images=len(expected), runs=2)
    # The DuckDB command line's way: the whole of docs/queries.sql, on the folder set by a variable.
    cli = duckdb.connect()
    cli.execute(f"SET VARIABLE img2pose_output = '{out}'")
    cli.execute(queries_sql())
    assert cli.execute("select count(*) from latest_images").fetchone()[0] == len(expected)
    assert cli.execute("select count(*) from latest_faces").fetchone()[0] == con.execute("select count(*) from latest_faces").fetchone()[0]
