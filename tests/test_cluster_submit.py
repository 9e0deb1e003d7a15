"""The documented cluster submission, run: `ray job submit --runtime-env cluster/runtime_env.yaml --
python -m jobs.annotate ...` exactly as docs/operations.md writes it for a standing cluster, against a
real local `ray start --head` cluster (its dashboard's job API) over a real S3 endpoint (moto).

Only what a 2-CPU test cluster cannot match is changed: the dashboard address (the docs' is a
port-forward), the GPU pool flags (this cluster has no GPU), the S3 endpoint (the docs' cluster reads
AWS_ENDPOINT_URL from its Secret, if any) and small model sizes; the runtime environment file, the
URIs and --skip-existing are the docs'. The run's tables, manifest and log are read back from S3.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from conftest import ROOT, needs_golden
from doc_commands import shell_lines
from test_annotate import _check_consistency
from ray_fixtures import RAY, ray_head  # noqa: F401
from s3_fixtures import s3_client, s3_server  # noqa: F401

OPERATIONS = ROOT / "docs" / "operations.md"
# Flags that size the GPU pool of the docs' cluster; this one has 2 CPUs and no GPU.
GPU_POOL_FLAGS = {"--num-gpus-per-actor", "--concurrency", "--cpus-per-actor", "--batch-size", "--wait-for-resources"}


def documented_submission() -> list[str]:
    """The first `ray job submit` of docs/operations.md that runs `python -m jobs.annotate`, as argv."""
    for line in shell_lines(OPERATIONS):
        if line.startswith("ray job submit") and "python -m jobs.annotate" in line:
            return shlex.split(line)
    raise AssertionError("docs/operations.md has no `ray job submit ... python -m jobs.annotate` command")


def adapted(argv: list[str], dashboard: str, endpoint: str) -> list[str]:
    out, skip = [], False
    for i, token in enumerate(argv):
        if skip:
            skip = False
            continue
        if token in GPU_POOL_FLAGS:
            skip = True
            continue
        if token == "--address":
            out += ["--address", dashboard]
            skip = True
            continue
        out.append(token)
    assert out[0] == "ray" and "--runtime-env" in out and out[out.index("--runtime-env") + 1] == "cluster/runtime_env.yaml"
    out[0] = RAY
    return out + ["--s3-endpoint-url", endpoint, "--min-size", "32", "--max-size", "64", "--threshold", "0.5"]


def _upload_bundle(client, bundle: Path, bucket: str, prefix: str) -> None:
    for path in sorted(bundle.rglob("*")):
        if path.is_file():
            client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(bundle).as_posix()}", Body=path.read_bytes())


@needs_golden
def test_documented_ray_job_submit_runs_on_a_real_cluster(ray_head, s3_server, golden_bundle, golden_dir, tmp_path):  # noqa: F811
    argv = documented_submission()
    uris = [t for t in argv if t.startswith("s3://")]
    inputs, output, bundle_uri = (argv[argv.index(flag) + 1] for flag in ("--input", "--output", "--bundle"))
    assert {inputs, output, bundle_uri} <= set(uris) and "--skip-existing" in argv
    client = s3_client(s3_server)
    for uri in (inputs, output, bundle_uri):
        bucket = uri.split("/")[2]
        if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=bucket)
    in_bucket, _, in_prefix = inputs.removeprefix("s3://").partition("/")
    with Image.open(golden_dir / "images" / "teaser.jpg") as im:
        im = im.convert("RGB")
        for i in range(4):
            buf = io.BytesIO()
            im.crop((i * 9, 0, i * 9 + 400, 300)).resize((96, 72)).save(buf, format="JPEG", quality=90)
            client.put_object(Bucket=in_bucket, Key=f"{in_prefix.rstrip('/')}/{i:02d}.jpg", Body=buf.getvalue())
    client.put_object(Bucket=in_bucket, Key=f"{in_prefix.rstrip('/')}/broken.jpg", Body=b"\xff\xd8 not a jpeg")
    b_bucket, _, b_prefix = bundle_uri.removeprefix("s3://").partition("/")
    _upload_bundle(client, Path(golden_bundle), b_bucket, b_prefix.rstrip("/"))

    command = adapted(argv, ray_head.dashboard_url, s3_server)
    env = dict(ray_head.env)
    env.pop("RAY_ADDRESS", None)  # `ray job submit` talks to the dashboard given by --address
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-3000:])
    assert re.search(r"Job 'raysubmit_\w+' succeeded", proc.stdout + proc.stderr), proc.stdout[-2000:]
    # The driver ran the uploaded checkout (working_dir: .) with the file's environment.
    assert "run " in proc.stdout and "images   5 (ok 4, not_an_image 1)" in proc.stdout, proc.stdout[-3000:]

    out_bucket, _, out_prefix = output.removeprefix("s3://").partition("/")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=out_bucket, Prefix=out_prefix).get("Contents", [])]
    (manifest_key,) = [k for k in keys if re.fullmatch(rf"{re.escape(out_prefix.rstrip('/'))}/runs/[^/]+\.json", k)]
    manifest = json.loads(client.get_object(Bucket=out_bucket, Key=manifest_key)["Body"].read())
    assert manifest["status"] == "succeeded" and manifest["counts"]["images"] == 5
    log_key = manifest_key.removesuffix(".json") + ".log"
    assert log_key in keys and not [k for k in keys if k.endswith(".lease")]
    log = client.get_object(Bucket=out_bucket, Key=log_key)["Body"].read().decode()
    assert f"run {manifest['run_id']} done" in log
    images = [pq.read_table(io.BytesIO(client.get_object(Bucket=out_bucket, Key=k)["Body"].read()))
              for k in keys if "/images/" in k and k.endswith(".parquet")]  # fmt: skip
    con = duckdb.connect()
    con.register("images", pa.concat_tables(images))
    by_status = dict(con.sql("SELECT status, count(*) FROM images GROUP BY status").fetchall())
    assert by_status == {"ok": 4, "not_an_image": 1}
    faces = [pq.read_table(io.BytesIO(client.get_object(Bucket=out_bucket, Key=k)["Body"].read()))
             for k in keys if "/faces/" in k and k.endswith(".parquet")]  # fmt: skip
    _check_consistency(pa.concat_tables(faces), pa.concat_tables(images))
