"""The output tables in both forms, as their users read them: plain Parquet and Iceberg (a real SQLite
catalog, a warehouse on moto's S3), read back with pandas, pyarrow, pyiceberg and DuckDB; two runs at
once; a run killed mid-way; a table whose schema evolved; time travel to a run; the latest views.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from conftest import ROOT, needs_golden
from ray_fixtures import ray_head  # noqa: F401
from s3_fixtures import s3_client, s3_server  # noqa: F401
from test_annotate import JOB, _job, _picture, _tar

pytestmark = [needs_golden]

SMALL = ["--min-size", "32", "--max-size", "64", "--threshold", "0.5"]
# One model actor a run: these runs prove nothing about the actor pool, and on the 2-CPU test cluster a
# second actor adds its start (torch, the weights) to every run, and keeps two runs from running at once.
ONE_ACTOR = ["--concurrency", "1,1"]


def _catalog(path: Path) -> str:
    return f"sqlite:///{path}"  # path is absolute: sqlite:////abs/path


def _iceberg(catalog: str, endpoint: str | None = None):
    from img2pose_core.iceberg import open_catalog, open_tables

    return open_tables(open_catalog(catalog, None, endpoint), "img2pose", create=False)


def _check_latest(con, inputs: set[str]) -> dict[str, str]:
    """One latest row per input and none else; latest faces are exactly those of the latest rows."""
    latest = dict(con.execute("select image_uri, status from latest_images").fetchall())
    assert set(latest) == inputs, (sorted(inputs - set(latest))[:3], sorted(set(latest) - inputs)[:3])
    assert con.execute("select count(*) from latest_images").fetchone()[0] == len(inputs)
    dup = con.execute("select image_uri, face_index, count(*) from latest_faces group by all having count(*) > 1").fetchall()
    assert not dup, dup[:3]
    mismatch = con.execute(
        "select i.image_uri from latest_images i left join latest_faces f using (image_uri, run_id) "
        "where i.status = 'ok' group by i.image_uri, i.num_faces having count(f.face_index) != i.num_faces"
    ).fetchall()
    assert not mismatch, mismatch[:3]
    return latest


@pytest.fixture(scope="module")
def s3_corpus(s3_server, golden_dir):  # noqa: F811
    client = s3_client(s3_server)
    client.create_bucket(Bucket="tables")
    keys = {f"in/p{i}.jpg": _picture(golden_dir, ("teaser.jpg", "astronaut.jpg")[i % 2], 64, 4000 + i) for i in range(5)}
    keys["in/shard.tar"] = _tar({f"{i:03d}.jpg": _picture(golden_dir, "teaser.jpg", 64, 4100 + i) for i in range(3)})
    keys["in/broken.jpg"] = b"\xff\xd8\xff\xe0 not a jpeg"
    for key, data in keys.items():
        client.put_object(Bucket="tables", Key=key, Body=data)
    inputs = {f"s3://tables/in/p{i}.jpg" for i in range(5)} | {f"s3://tables/in/shard.tar#{i:03d}.jpg" for i in range(3)}
    return {"endpoint": s3_server, "inputs": inputs | {"s3://tables/in/broken.jpg"}}


def test_iceberg_on_s3_runs_commit_whole_and_read_everywhere(ray_head, s3_corpus, golden_bundle, tmp_path):  # noqa: F811
    """Two runs over the same S3 inputs into Iceberg tables (SQLite catalog, warehouse on S3), with a
    column added to ``images`` between them; read with pyiceberg, pandas, pyarrow and DuckDB; time
    travel to the first run; the README's queries give exact counts."""
    endpoint = s3_corpus["endpoint"]
    catalog = _catalog(tmp_path / "catalog.db")
    env = dict(ray_head.env, IMG2POSE_CACHE=str(tmp_path / "cache"))
    base = ["--input", "s3://tables/in", "--output", "s3://tables/out", "--s3-endpoint-url", endpoint,
            "--catalog", catalog, "--bundle", str(golden_bundle), *SMALL, *ONE_ACTOR]  # fmt: skip
    first = _job([*base, "--run-id", "first"], env)
    assert first.returncode == 0, first.stderr[-4000:]
    tables = _iceberg(catalog, endpoint)
    assert tables.images.location().startswith("s3://tables/out/warehouse/")
    first_images = tables.images.scan().to_arrow()
    assert first_images.num_rows == len(s3_corpus["inputs"]) and set(first_images["run_id"].to_pylist()) == {"first"}
    manifest = json.loads(_s3_read(endpoint, "tables/out/runs/first.json"))
    assert manifest["form"] == "iceberg" and manifest["iceberg"]["snapshots"]["images"] == tables.images.current_snapshot().snapshot_id

    # A later version of the job adds a column: old snapshots must still read.
    with tables.images.update_schema() as update:
        from pyiceberg.types import StringType

        update.add_column("reviewer", StringType())
    second = _job([*base, "--run-id", "second"], env)
    assert second.returncode == 0, second.stderr[-4000:]
    tables = _iceberg(catalog, endpoint)
    now = tables.images.scan().to_pandas()
    assert len(now) == 2 * len(s3_corpus["inputs"]) and "reviewer" in now.columns and now["reviewer"].isna().all()
    back = tables.images.scan(snapshot_id=manifest["iceberg"]["snapshots"]["images"]).to_arrow()
    assert back.num_rows == first_images.num_rows and set(back["run_id"].to_pylist()) == {"first"}
    runs = tables.runs.scan().to_arrow()
    assert sorted(runs["run_id"].to_pylist()) == ["first", "second"]
    assert json.loads(runs.filter(pa.compute.equal(runs["run_id"], "second"))["manifest"][0].as_py())["run_id"] == "second"
    faces = tables.faces.scan().to_arrow()
    assert faces.num_rows == 2 * first_images.to_pandas()["num_faces"].fillna(0).sum()

    from img2pose_core.output import open_tables

    con = open_tables("s3://tables/out", catalog=catalog, s3_endpoint_url=endpoint)
    latest = _check_latest(con, s3_corpus["inputs"])
    assert latest["s3://tables/in/broken.jpg"] == "corrupt"
    assert {r for (r,) in con.execute("select distinct run_id from latest_images").fetchall()} == {"second"}
    run_readme_queries(con, images=len(s3_corpus["inputs"]), runs=2)


def _s3_read(endpoint: str, key: str) -> bytes:
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True).cat_file(key)


def run_readme_queries(con, images: int, runs: int) -> dict[str, list]:
    """Every ```sql block of the README, on an output of ``runs`` runs over the same ``images`` inputs:
    the counts they give are exact (each image once), not once per run."""
    import re

    from conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", readme, flags=re.S)
    assert len(blocks) >= 5
    results = {sql: con.execute(sql).fetchall() for sql in blocks}
    assert con.execute("select count(*) from images").fetchone()[0] == images * runs  # what the views correct
    latest_faces = con.execute("select count(*) from latest_faces").fetchone()[0]
    assert latest_faces == con.execute("select sum(num_faces) from latest_images").fetchone()[0]
    assert con.execute("select count(*) from faces").fetchone()[0] == runs * latest_faces
    for sql, rows in results.items():
        if "GROUP BY status" in sql:
            assert sum(row[1] for row in rows) == images, rows
        elif "yaw_bin" in sql:
            assert sum(row[1] for row in rows) == latest_faces, rows
        elif "FROM runs" in sql:
            assert len(rows) == runs, rows
    return results


def test_iceberg_two_runs_at_once_both_land(ray_head, golden_bundle, golden_dir, tmp_path):  # noqa: F811
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(10):
        (corpus / f"c{i}.jpg").write_bytes(_picture(golden_dir, ("teaser.jpg", "astronaut.jpg")[i % 2], 64, 4200 + i))
    catalog = _catalog(tmp_path / "catalog.db")
    out = tmp_path / "out"
    env = dict(ray_head.env, IMG2POSE_CACHE=str(tmp_path / "cache"))
    # Overlapping inputs: all ten, and the first six through a glob; the second run is allowed to start
    # beside the first (refused by default: tests/test_run_files.py).
    common = ["--output", str(out), "--catalog", catalog, "--bundle", str(golden_bundle), *SMALL, *ONE_ACTOR,
              "--rows-per-file", "3", "--allow-concurrent-runs"]
    procs = [
        subprocess.Popen([sys.executable, *JOB, "--input", str(corpus), *common, "--run-id", "nightly"], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        subprocess.Popen([sys.executable, *JOB, "--input", str(corpus / "c[0-5].jpg"), *common, "--run-id", "manual"],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    ]  # fmt: skip
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    tables = _iceberg(catalog)
    images = tables.images.scan().to_arrow().to_pandas()
    assert sorted(images.groupby("run_id").size().to_dict().items()) == [("manual", 6), ("nightly", 10)]
    assert sorted(tables.runs.scan().to_arrow()["run_id"].to_pylist()) == ["manual", "nightly"]
    from img2pose_core.output import open_tables

    con = open_tables(str(out), catalog=catalog)
    _check_latest(con, {str(p) for p in corpus.iterdir()})
    # Each run's faces are all there, once: no run removed or doubled the other's.
    faces = tables.faces.scan().to_arrow().to_pandas()
    for run in ("manual", "nightly"):
        mine = images[images.run_id == run]
        assert len(faces[faces.run_id == run]) == mine.num_faces.sum()
        assert not faces[faces.run_id == run].duplicated(["image_uri", "face_index"]).any()


def test_iceberg_run_killed_mid_way_leaves_nothing_visible_and_resumes(ray_head, golden_bundle, golden_dir, tmp_path):  # noqa: F811
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    n = 12  # 6 files of 2 rows: killed once 2 are written
    for i in range(n):
        (corpus / f"k{i:02d}.jpg").write_bytes(_picture(golden_dir, ("teaser.jpg", "astronaut.jpg")[i % 2], 64, 4300 + i))
    catalog = _catalog(tmp_path / "catalog.db")
    out = tmp_path / "out"
    env = dict(ray_head.env, IMG2POSE_CACHE=str(tmp_path / "cache"))
    base = ["--input", str(corpus), "--output", str(out), "--catalog", catalog, "--bundle", str(golden_bundle), *SMALL,
            *ONE_ACTOR, "--sources-per-task", "2", "--rows-per-file", "2", "--batch-size", "2"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, *JOB, *base, "--run-id", "killed"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    data = out / "warehouse" / "img2pose" / "images" / "data" / "run_id=killed"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if data.exists() and len(list(data.glob("*.parquet"))) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list(data.glob("*.parquet"))) >= 2
    tables = _iceberg(catalog)
    # Files were written, none is visible: no commit happened.
    assert tables.images.current_snapshot() is None and tables.faces.current_snapshot() is None
    assert tables.runs.current_snapshot() is None

    resumed = _job([*base, "--run-id", "resumed", "--skip-existing"], env)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    tables = _iceberg(catalog)
    images = tables.images.scan().to_arrow()
    assert images.num_rows == n and set(images["run_id"].to_pylist()) == {"resumed"}
    assert set(images["image_uri"].to_pylist()) == {str(p) for p in corpus.iterdir()}
    faces = tables.faces.scan().to_arrow()
    assert faces.num_rows == sum(images["num_faces"].to_pylist())
    # A third run with --skip-existing finds everything done.
    again = _job([*base, "--run-id", "third", "--skip-existing"], env)
    assert again.returncode == 0, again.stderr[-4000:]
    manifest = json.loads((out / "runs" / "third.json").read_text())
    assert manifest["counts"]["skipped"] == n and manifest["counts"]["images"] == 0


def test_faces_of_a_run_that_died_between_its_commits_are_removed(tmp_path):
    """The one window where rows of a dead run are visible: its faces committed, its images not."""
    import pyarrow.parquet as pq

    from img2pose_core.iceberg import open_catalog, open_tables, remove_dead_runs
    from img2pose_core.output import FACES_SCHEMA

    tables = open_tables(open_catalog(_catalog(tmp_path / "c.db"), f"file://{tmp_path}/wh"), "img2pose")
    rows = [{f.name: 0.0 for f in FACES_SCHEMA} | {"run_id": "dead", "image_uri": "/x.jpg", "image_sha256": "ab" * 32,
             "face_index": 0, "landmarks_5": [0.0] * 10, "align_matrix": [0.0] * 6, "crop_uri": None,
             "model_sha256": "cd" * 32}]  # fmt: skip
    folder = tables.data_folder("faces", "dead")[len("file://"):]
    os.makedirs(folder)
    pq.write_table(pa.Table.from_pylist(rows, schema=FACES_SCHEMA), f"{folder}/part-{'0' * 32}.parquet")
    # Commit the faces step only, as a run killed right after it would have.
    tables.faces.add_files([f"file://{folder}/part-{'0' * 32}.parquet"], snapshot_properties={"img2pose.run-id": "dead"})
    tables.reload()
    assert tables.faces.scan().to_arrow().num_rows == 1
    assert remove_dead_runs(tables) == []  # young: it might still be committing
    assert remove_dead_runs(tables, dead_after_s=0.0) == ["dead"]
    assert tables.faces.scan().to_arrow().num_rows == 0


def test_plain_output_of_schema_version_1_is_refused_with_what_to_do(golden_bundle, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "out" / "images" / "run_id=20260101T000000Z-aaaaaa").mkdir(parents=True)
    proc = _job(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--bundle", str(golden_bundle)],
                dict(os.environ, RAY_ADDRESS="127.0.0.1:1"), timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "schema version 1" in proc.stderr and "rename" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize(
    "catalog, words",
    [("sqlite:///no/such/folder/c.db", "does not exist"), ("postgresql://u:pw@h/db", "holds a password"),
     ("mongodb://x", "unknown catalog")],
)  # fmt: skip
def test_bad_catalogs_fail_before_any_work(golden_bundle, tmp_path, catalog, words):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(b"\xff\xd8\xff")
    proc = _job(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--bundle", str(golden_bundle),
                 "--catalog", catalog], dict(os.environ, RAY_ADDRESS="127.0.0.1:1"), timeout=120)  # fmt: skip
    assert proc.returncode == 2 and words in proc.stderr and "pw@" not in proc.stderr, proc.stderr[-2000:]


def test_queries_file_is_the_packaged_one():
    from conftest import ROOT
    from img2pose_core.output import latest_views_sql, queries_sql

    assert (ROOT / "docs" / "queries.sql").read_text() == queries_sql()
    assert "latest_images" in latest_views_sql() and "read_parquet" not in latest_views_sql()


def test_done_keys_key_files_by_themselves_and_members_by_their_shard():
    from jobs.done import done_keys, is_done, with_source_key

    table = pa.table({
        "image_uri": ["s3://b/a.jpg", "s3://b/s.tar#0001.jpg", "s3://b/odd#name.jpg", "s3://b/bad.jpg", "s3://b/k.tar#x.tar#y.jpg"],
        "status": ["ok", "ok", "ok", "corrupt", "ok"],
    })  # fmt: skip
    pairs = set(zip(*done_keys(table).to_pydict().values()))
    assert ("s3://b/a.jpg", "") in pairs and ("s3://b/s.tar", "0001.jpg") in pairs
    assert ("s3://b/odd#name.jpg", "") in pairs and ("s3://b/k.tar", "x.tar#y.jpg") in pairs
    assert not any(k == "s3://b/bad.jpg" for k, _ in pairs)  # only ok rows are done
    keyed = with_source_key(pa.table({"source_uri": ["https://u:pw@h/x.jpg?X-Amz-Signature=s"]}))
    assert keyed["key"][0].as_py() == "https://REDACTED-" + keyed["key"][0].as_py().split("REDACTED-")[1]
    assert is_done([""]) and is_done(["x", ""]) and not is_done(["x"]) and not is_done(None)


def test_run_manifest_round_trip_and_version_1():
    from img2pose_core.output import RunManifest

    m = RunManifest(run_id="r", status="succeeded", started_at="2026-11-30T00:00:00+00:00", ended_at="x",
                    counts={"images": 3}, iceberg={"namespace": "img2pose"})  # fmt: skip
    assert RunManifest.from_json(m.to_json()) == m
    old = RunManifest.from_json(json.dumps({"run_id": "old", "duration_s": 4.5, "schema_version": 1, "unknown": 1}))
    assert old.pipeline_s == 4.5 and old.schema_version == 1 and old.status == "succeeded"


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("sqlite:////data/c.db", {"type": "sql", "uri": "sqlite:////data/c.db"}),
        ("rest+https://cat.example.com/api", {"type": "rest", "uri": "https://cat.example.com/api"}),
        ("glue://eu-west-1", {"type": "glue", "glue.region": "eu-west-1"}),
        ("glue", {"type": "glue"}),
    ],
)  # fmt: skip
def test_catalog_uris(uri, expected):
    from img2pose_core.iceberg import catalog_properties

    props = catalog_properties(uri, "s3://b/wh", "http://127.0.0.1:9000")
    assert expected.items() <= props.items() and props["warehouse"] == "s3://b/wh"
    assert props["s3.endpoint"] == "http://127.0.0.1:9000"


def test_rest_and_glue_catalogs_with_credentials_from_the_environment(ray_head, s3_corpus, golden_bundle, tmp_path, monkeypatch):  # noqa: F811
    """The job into an Iceberg REST catalog (a real one on 127.0.0.1 that wants a bearer token), and the
    same commit into AWS Glue (moto's), warehouses on S3; the token comes from the environment and is
    found in no output."""
    from rest_catalog import RestCatalogServer

    from img2pose_core.output import open_tables

    endpoint = s3_corpus["endpoint"]
    token = "RestToken" + os.urandom(8).hex()
    io = {"py-io-impl": "pyiceberg.io.fsspec.FsspecFileIO", "s3.endpoint": endpoint}
    with RestCatalogServer("s3://tables/rest-warehouse", token, str(tmp_path / "rest.db"), **io) as server:
        env = dict(ray_head.env, IMG2POSE_CACHE=str(tmp_path / "cache"), PYICEBERG_CATALOG__IMG2POSE__TOKEN=token)
        args = ["--input", "s3://tables/in", "--output", "s3://tables/rest-out", "--s3-endpoint-url", endpoint,
                "--catalog", server.uri, "--bundle", str(golden_bundle), *SMALL, "--run-id", "rest"]  # fmt: skip
        proc = _job(args, env)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert server.refused == 0 and ("POST", "/v1/namespaces/img2pose/tables/images") in server.requests
        monkeypatch.setenv("PYICEBERG_CATALOG__IMG2POSE__TOKEN", token)
        con = open_tables("s3://tables/rest-out", catalog=server.uri, s3_endpoint_url=endpoint)
        _check_latest(con, s3_corpus["inputs"])
        assert token not in _s3_read(endpoint, "tables/rest-out/runs/rest.json").decode() + proc.stdout + proc.stderr
        # Without the token the catalog refuses, and the job says so before any work.
        no_token = {k: v for k, v in env.items() if k != "PYICEBERG_CATALOG__IMG2POSE__TOKEN"}
        refused = _job([*args[:-1], "again"], dict(no_token, RAY_ADDRESS="127.0.0.1:1"), timeout=120)
        assert refused.returncode == 2 and "--catalog" in refused.stderr, refused.stderr[-2000:]

    # AWS Glue (moto's), through the same functions the job's driver calls, on this S3: tables made,
    # a run's files committed, read back through the views.
    import boto3
    import pyarrow.parquet as pq

    from img2pose_core.iceberg import commit_run, open_catalog
    from img2pose_core.iceberg import open_tables as open_iceberg
    from img2pose_core.output import IMAGES_SCHEMA

    monkeypatch.setenv("PYICEBERG_CATALOG__IMG2POSE__GLUE__ENDPOINT", endpoint)
    tables = open_iceberg(open_catalog("glue", "s3://tables/glue-warehouse", endpoint), "annotations")
    rows = [{f.name: None for f in IMAGES_SCHEMA} | {"run_id": "g", "image_uri": f"s3://x/{i}.jpg", "status": "ok",
            "num_faces": 0, "model_sha256": "ab" * 32, "processed_at": datetime.now(timezone.utc)} for i in range(3)]  # fmt: skip
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    path = f"{tables.data_folder('images', 'g')}/part-{'0' * 32}.parquet"
    with fs.open(path, "wb") as f:
        pq.write_table(pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA), f)
    now = datetime.now(timezone.utc)
    ids = commit_run(tables, "g", [], [path], lambda ids: {
        "run_id": "g", "status": "succeeded", "started_at": now, "ended_at": now, "images": 3, "ok": 3, "faces": 0,
        "model_sha256": "ab" * 32, "bundle_digest": "cd" * 32, "manifest": "{}"})  # fmt: skip
    assert ids["images"] is not None and ids["faces"] is None
    con = open_tables("s3://tables/glue-out", catalog="glue", namespace="annotations", s3_endpoint_url=endpoint)
    assert con.execute("select count(*) from latest_images").fetchone()[0] == 3
    glue = boto3.client("glue", endpoint_url=endpoint, region_name="us-east-1")
    assert {t["Name"] for t in glue.get_tables(DatabaseName="annotations")["TableList"]} == {"faces", "images", "runs"}


def test_orphan_faces_files_are_removed_only_when_no_live_run_can_own_them(tmp_path):
    """Plain form: a faces file without its images file is another run's unfinished write unless its run
    is over (manifest written), it is old, or it is the caller's own (a failing run cleaning up)."""
    from jobs.sink import remove_orphans
    from img2pose_core.storage import StorageConfig

    out = tmp_path / "out"
    names = {run: out / "faces" / run / f"part-{'a' * 32}.parquet" for run in ("live", "over", "killed", "mine")}
    for path in names.values():
        path.parent.mkdir(parents=True)
        path.write_bytes(b"PAR1")
    (out / "images" / "live").mkdir(parents=True)
    (out / "runs").mkdir()
    (out / "runs" / "over.failed.json").write_text("{}")
    os.utime(names["killed"], (time.time() - 7200, time.time() - 7200))
    (out / "faces" / "live" / "notes.parquet").write_bytes(b"not the job's")
    removed = remove_orphans(str(out), StorageConfig(), log=lambda m: None)
    assert removed == 2 and names["live"].exists() and names["mine"].exists()
    assert not names["over"].exists() and not names["killed"].exists()
    assert remove_orphans(str(out), StorageConfig(), log=lambda m: None, run_id="mine") == 1
    assert names["live"].exists() and (out / "faces" / "live" / "notes.parquet").exists()
