"""Reliability and security of jobs/annotate.py: faults injected into the object store, the workers and
the output store, hostile and oversized input, secrets in the environment. Every test checks that
nothing is lost or duplicated: each input has exactly one row per run, faces rows match num_faces.

The object store is moto's server behind tests/fault_proxy.py (503 SlowDown, 500 InternalError, TCP
resets, truncated bodies, latency, refused writes). The figures of these tests and of
benchmarks/load.py are in docs/reliability.md.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bad_images import make_bad_images
from conftest import ROOT, needs_golden
from fault_proxy import FaultProxy
from ray_fixtures import ray_head  # noqa: F401
from s3_fixtures import s3_client, s3_server  # noqa: F401
from test_annotate import JOB, _check_consistency, _job, _picture, _read_tables, _tar

pytestmark = [needs_golden]

# Small pictures at a small network size: the model is fast and still finds faces (about 10 an image).
SMALL = ["--min-size", "32", "--max-size", "64", "--threshold", "0.5"]


# --- processes, from /proc (Linux; psutil is only Ray's vendored copy, not a dependency) -------------
def _processes() -> dict[int, tuple[int, str, int]]:
    """``{pid: (parent pid, command line, resident bytes)}`` of every process we may read."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # gone, or not ours to read
        ppid, rss_pages = int(stat[1]), int(stat[21])
        out[int(entry)] = (ppid, cmd, rss_pages * os.sysconf("SC_PAGE_SIZE"))
    return out


def _descendants(procs: dict, roots: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    seen, stack = set(), list(roots)
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        stack.extend(children.get(pid, []))
    return seen


def _cluster_workers(head, procs: dict | None = None) -> dict[int, tuple[str, int]]:
    """``{pid: (title, rss)}`` of the Ray worker processes of the test cluster ``head`` only.

    Workers are the children of that cluster's raylet (found by its GCS address on its command
    line), titled ``ray::IDLE``, ``ray::MapWorker(MapBatches(ModelStage))``, ``ray::MapBatches(_load_udf)``:
    other people's Ray processes on the same machine are never touched.
    """
    procs = procs or _processes()
    gcs = head.address.rsplit(":", 1)[1]
    on_gcs = re.compile(rf":{gcs}(?!\d)")
    raylets = {pid for pid, (_, cmd, _) in procs.items() if "/raylet" in cmd.split(" ", 1)[0] and on_gcs.search(cmd)}
    assert raylets, "the test cluster's raylet was not found"
    return {
        pid: (procs[pid][1], procs[pid][2])
        for pid in _descendants(procs, raylets) - raylets
        if procs[pid][1].startswith("ray::")
    }


def _s3fs(endpoint: str):
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)


def _bucket(endpoint: str, name: str, objects: dict[str, bytes]):
    client = s3_client(endpoint)
    client.create_bucket(Bucket=name)
    for key, data in objects.items():
        client.put_object(Bucket=name, Key=key, Body=data)
    return client


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _statuses(images: pa.Table) -> dict[str, str]:
    return dict(zip(images["image_uri"].to_pylist(), images["status"].to_pylist()))


def _check_exactly_once(faces: pa.Table, images: pa.Table, inputs: set[str]) -> dict[str, str]:
    """Across all runs: every input has rows, none other; at most one ``ok`` row each; each run consistent.

    Returns each input's latest status.
    """
    _check_consistency(faces, images)
    con = duckdb.connect()
    con.register("images", images)
    latest = dict(con.execute("select image_uri, arg_max(status, run_id) from images group by 1").fetchall())
    assert set(latest) == inputs, (sorted(inputs - set(latest))[:5], sorted(set(latest) - inputs)[:5])
    dup = con.execute("select image_uri, count(*) c from images where status = 'ok' group by 1 having c > 1").fetchall()
    assert not dup, f"images with several ok rows: {dup[:5]}"
    return latest


# --- object store faults -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fault, plan",
    [
        ("503", {"error_share": 1.0, "error_statuses": (503,)}),
        ("500", {"error_share": 1.0, "error_statuses": (500,)}),
        ("reset", {"reset_share": 1.0}),
        ("truncate", {"truncate_share": 1.0}),
    ],
    ids=["503", "500", "reset", "truncate"],
)
def test_injected_store_faults_are_classified_transient(s3_server, fault, plan):  # noqa: F811
    """What s3fs raises once botocore and s3fs gave up must be retried by img2pose_core.storage.with_retries.

    Regression: a 503 SlowDown on PUT came out as OSError(EBUSY, "Please reduce your request rate.")
    and a 500 on HEAD as OSError(EREMOTEIO, "Internal Server Error"), and were taken as permanent.
    """
    import s3fs

    from img2pose_core.storage import is_transient

    _bucket(s3_server, f"classify-{fault}", {"k.jpg": os.urandom(20_000)})
    seen = []
    with FaultProxy(s3_server, seed=7, **plan) as proxy:
        fs = s3fs.S3FileSystem(
            endpoint_url=proxy.url, skip_instance_cache=True,
            config_kwargs={"retries": {"max_attempts": 1, "mode": "standard"}},
        )  # fmt: skip
        fs.retries = 1  # s3fs's own retry loop: once
        operations = {
            "GET": lambda: fs.cat_file(f"classify-{fault}/k.jpg"),
            "HEAD": lambda: fs.info(f"classify-{fault}/k.jpg"),
            "PUT": lambda: fs.pipe_file(f"classify-{fault}/w.parquet", b"x" * 5000),
            "LIST": lambda: fs.ls(f"classify-{fault}", refresh=True),
        }
        for name, op in operations.items():
            try:
                op()
            except Exception as exc:  # noqa: BLE001 - what we want to look at
                seen.append((name, exc))
        assert proxy.injected() > 0
    assert seen, "no operation failed"
    if fault in ("503", "500", "reset"):
        assert {name for name, _ in seen} == set(operations)
    wrong = [(name, repr(exc)) for name, exc in seen if not is_transient(exc)]
    assert not wrong, f"store faults taken as permanent: {wrong}"


# 16 % of all requests fail: 5 % 503 SlowDown, 5 % 500 InternalError, 3 % reset, 3 % half a body; 10 % slow.
FAULTS = {"error_share": 0.1, "reset_share": 0.03, "truncate_share": 0.03, "latency_share": 0.1, "latency_s": (0.01, 0.1)}


def test_job_through_a_faulty_object_store_loses_nothing(ray_head, s3_server, golden_bundle, golden_dir, tmp_path):  # noqa: F811
    """Reads, listings and writes all go through FAULTS, with the default retry settings: every good
    image ends ok, every input has one row, and the crops and tables are complete."""
    objects = {f"images/p{i:03d}.jpg": _picture(golden_dir, ("teaser.jpg", "astronaut.jpg")[i % 2], 64, 1000 + i) for i in range(12)}
    bad_dir = tmp_path / "bad"
    bad = make_bad_images(bad_dir)
    for name in ("truncated.jpg", "text.jpg", "bomb_wide.png"):
        objects[f"images/bad/{name}"] = (bad_dir / name).read_bytes()
    objects["shards/000000.tar"] = _tar({f"{i:06d}.jpg": _picture(golden_dir, "teaser.jpg", 64, 1100 + i) for i in range(3)})
    objects["lists/m.parquet"] = _parquet(pa.table({"url": ["s3://faulty/loose/a.jpg", "s3://faulty/loose/b.jpg", "s3://faulty/loose/missing.jpg"]}))
    objects["loose/a.jpg"] = _picture(golden_dir, "astronaut.jpg", 64, 1200)
    objects["loose/b.jpg"] = _picture(golden_dir, "teaser.jpg", 64, 1201)
    _bucket(s3_server, "faulty", objects)
    expected = {f"s3://faulty/{k}": "ok" for k in objects if k.startswith(("images/p", "loose/"))}
    expected |= {f"s3://faulty/images/bad/{n}": bad[n] for n in ("truncated.jpg", "text.jpg", "bomb_wide.png")}
    expected |= {f"s3://faulty/shards/000000.tar#{i:06d}.jpg": "ok" for i in range(3)}
    expected["s3://faulty/loose/missing.jpg"] = "unreadable"

    env = dict(ray_head.env, IMG2POSE_CACHE=str(tmp_path / "cache"))
    # On top of the random faults, one of each kind is sure to hit a read of an image's bytes, and a
    # write of a part gets a 500.
    forced = (
        (r"^GET /faulty/images/p000\.jpg", "reset"), (r"^GET /faulty/images/p001\.jpg", "truncated"),
        (r"^GET /faulty/loose/a\.jpg", "503 SlowDown"), (r"^GET /faulty/shards/000000\.tar", "500 InternalError"),
        (r"^PUT /faulty/out/images/", "500 InternalError"),
    )  # fmt: skip
    with FaultProxy(s3_server, seed=11, forced=forced, **FAULTS) as proxy:
        args = [
            "--input", "s3://faulty/images", "--input", "s3://faulty/shards/000000.tar", "--input", "s3://faulty/lists/m.parquet",
            "--output", "s3://faulty/out", "--s3-endpoint-url", proxy.url, "--bundle", str(golden_bundle),
            "--run-id", "faulty", "--crops", "112", "--max-faces", "1", "--sources-per-task", "4", "--rows-per-file", "4",
            "--batch-size", "4", *SMALL,
        ]  # fmt: skip
        started = time.monotonic()
        proc = _job(args, env)
        elapsed = time.monotonic() - started
        counts = proxy.counts
    print(f"\nfaulty store: {elapsed:.1f} s, proxy {counts}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert counts.get("forced") == len(forced), counts
    assert proxy.injected() >= 15, counts

    fs = _s3fs(s3_server)  # read back directly, not through the faults
    faces, images = _read_tables("faulty/out", fs)
    got = _statuses(images)
    assert images.num_rows == len(got) == len(expected)
    assert got == expected, {u: (got.get(u), s) for u, s in expected.items() if got.get(u) != s}
    _check_exactly_once(faces, images, set(expected))
    manifest = json.loads(fs.cat_file("faulty/out/runs/faulty.json"))
    assert manifest["counts"]["images"] == images.num_rows and manifest["counts"]["faces"] == faces.num_rows
    crops = fs.find("faulty/out/crops")
    assert len(crops) == faces.num_rows == len(set(faces["crop_uri"].to_pylist()))


# --- output store refusing writes ----------------------------------------------------------------
def _corpus(golden_dir: Path, folder: Path, n: int, seed: int) -> set[str]:
    """``n`` small pictures and one broken file in ``folder``; returns the input URIs."""
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"p{i:04d}.jpg").write_bytes(_picture(golden_dir, ("teaser.jpg", "astronaut.jpg")[i % 2], 64, seed + i))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return {str(p) for p in folder.iterdir()}


def test_output_store_refusing_writes_fails_clearly_and_a_rerun_repairs(ray_head, s3_server, golden_bundle, golden_dir, tmp_path):  # noqa: F811
    """The store takes the run's first 2 images files, then answers 403 to every faces or images file.

    What is refused is chosen by object: the write probe, the lease renewals and the log uploads
    (``runs/``) go through, so however many of them a slow machine makes, exactly 2 images files are
    committed before the run fails. 12 pictures and a broken file, 2 rows a file: 7 files to commit.
    """
    inputs = _corpus(golden_dir, tmp_path / "corpus", 12, 2000)
    _bucket(s3_server, "refusing", {})
    env = dict(ray_head.env, IMG2POSE_CACHE=str(tmp_path / "cache"))
    fs = _s3fs(s3_server)
    data_writes = r"^(PUT|POST) /refusing/out/(faces|images)/"
    with FaultProxy(s3_server, refuse_writes_after=2, refuse_counting=r"^PUT /refusing/out/images/refused/",
                    refuse_writes_to=data_writes) as proxy:  # fmt: skip
        base = [
            "--input", str(tmp_path / "corpus"), "--output", "s3://refusing/out", "--s3-endpoint-url", proxy.url,
            "--bundle", str(golden_bundle), *SMALL, "--sources-per-task", "2", "--rows-per-file", "2", "--batch-size", "2",
            "--concurrency", "1,1",  # one model actor: a second one only adds its start to each run
        ]  # fmt: skip
        started = time.monotonic()
        first = _job([*base, "--run-id", "refused"], env)
        first_s = time.monotonic() - started
        refused = proxy.counts.get("refused write", 0)
        assert first.returncode == 1, (first.returncode, first.stderr[-3000:])
        message = first.stderr.strip().splitlines()[-1]
        assert message.startswith("annotate.py: error: run refused failed: PermissionError: Access Denied. "), first.stderr[-3000:]
        assert "--skip-existing" in message, message
        assert refused >= 1
        images_before = fs.find("refusing/out/images/refused")
        faces_before = fs.find("refusing/out/faces/refused")
        # The failed run removed its own faces files whose images file was refused.
        orphans = {p.split("/")[-1] for p in faces_before} - {p.split("/")[-1] for p in images_before}
        assert not orphans, orphans
        assert len(images_before) == 2, "the run should commit its first 2 files, then fail"
        assert not fs.exists("refusing/out/runs/refused.json")
        assert fs.exists("refusing/out/runs/refused.failed.json")

        proxy.configure(refuse_writes_after=None)  # the store is healthy again
        started = time.monotonic()
        second = _job([*base, "--run-id", "repaired", "--skip-existing"], env)
        second_s = time.monotonic() - started
    assert second.returncode == 0, second.stderr[-3000:]
    faces, images = _read_tables("refusing/out", fs)
    latest = _check_exactly_once(faces, images, inputs)
    assert latest == {u: "corrupt" if u.endswith("broken.jpg") else "ok" for u in inputs}
    manifest = json.loads(fs.cat_file("refusing/out/runs/repaired.json"))
    ok_before = sum(1 for s, r in zip(images["status"].to_pylist(), images["run_id"].to_pylist()) if r == "refused" and s == "ok")
    assert manifest["counts"]["skipped"] == ok_before > 0
    assert ok_before <= 4 and manifest["counts"]["images"] == len(inputs) - ok_before  # the rest, once each
    assert manifest["counts"]["orphans_removed"] == 0
    print(f"\nrefused writes: {refused} refused, {len(images_before)} parts committed before the failure "
          f"({ok_before} ok images); the failed run left no faces file without its images file; "
          f"runs {first_s:.1f} s and {second_s:.1f} s")


@pytest.fixture()
def small_disk(tmp_path):
    """A 96 KiB tmpfs: room for the output probe, the lease and a few parts, then ENOSPC. Needs the right
    to mount (root, as in CI); skipped, saying so, without it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.strip() or made.returncode}): needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_named_in_the_last_line_the_log_and_the_record(ray_head, golden_bundle, golden_dir, small_disk, tmp_path):  # noqa: F811
    """Output on a disk that fills mid-run: exit 1, and "No space left on device" (not Ray's wrapper) in the
    console's last line and in the failure record, where the record fits once the run removed its own
    unfinished files."""
    inputs = _corpus(golden_dir, tmp_path / "corpus", 24, 3100)
    env = dict(ray_head.env, IMG2POSE_CACHE=str(tmp_path / "cache"))
    out = small_disk / "out"
    proc = _job(["--input", str(tmp_path / "corpus"), "--output", str(out), "--bundle", str(golden_bundle), *SMALL,
                 "--rows-per-file", "1", "--flush-interval", "0", "--concurrency", "1,1", "--run-id", "full"], env)  # fmt: skip
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("annotate.py: error: run full failed: the disk is full (") and "No space left on device" in last, last
    assert "UserCodeException" not in last and "SystemException" not in last
    record = out / "runs" / "full.failed.json"
    if record.exists():  # written only if the space freed by the cleanup holds it
        assert "No space left on device" in json.loads(record.read_text())["error"]
    assert len(inputs) == 25


def test_failure_message_names_the_error():
    """Ray 2.60 appends two lines to every error raised in a map or write task (ray/data/_internal/util.py,
    _annotate_exception_with_retry_context); the job's one-line message must still say what failed."""
    from ray.data._internal.util import _annotate_exception_with_retry_context

    from jobs.errors import root_cause as _root_cause

    exc = _annotate_exception_with_retry_context(
        PermissionError("Access Denied"), description="run the task", attempts=1, max_attempts=1,
        total_backoff_s=0.0, exception_str="Access Denied",
    )  # fmt: skip
    assert _root_cause(exc) == "PermissionError: Access Denied"


# --- workers killed ------------------------------------------------------------------------------
def test_killed_workers_lose_nothing(ray_head, golden_bundle, golden_dir, tmp_path):
    """SIGKILL a decode (load) task, the model actor and a write task while the job runs.

    ``--load-in tasks`` keeps decoding in load tasks of its own, as on GPU clusters (on a CPU-only cluster
    the model actors read and decode their sources themselves by default).
    """
    inputs = _corpus(golden_dir, tmp_path / "corpus", 120, 3000)
    out = tmp_path / "out"
    env = dict(ray_head.env, IMG2POSE_CACHE=str(tmp_path / "cache"))
    args = [
        "--input", str(tmp_path / "corpus"), "--output", str(out), "--bundle", str(golden_bundle), *SMALL,
        "--run-id", "killed", "--sources-per-task", "4", "--batch-size", "4", "--rows-per-file", "8", "--load-in", "tasks",
    ]  # fmt: skip
    parts = out / "images" / "killed"
    killed: dict[str, tuple[int, str, int]] = {}
    with open(tmp_path / "job.err", "w") as err, open(tmp_path / "job.out", "w") as stdout:
        proc = subprocess.Popen([sys.executable, *JOB, *args], cwd=ROOT, env=env, stdout=stdout, stderr=err)
        deadline = time.monotonic() + 400
        while proc.poll() is None and time.monotonic() < deadline:
            written = len(list(parts.glob("*.parquet"))) if parts.exists() else 0
            for pid, (title, _) in _cluster_workers(ray_head).items():
                kind = None
                if "load" not in killed and title.startswith("ray::MapBatches(_load_udf)"):
                    kind = "load"
                elif "model" not in killed and "ModelStage" in title and written >= 3:
                    kind = "model"
                elif "write" not in killed and title.startswith("ray::Write") and "model" in killed:
                    kind = "write"
                if kind:
                    os.kill(pid, signal.SIGKILL)
                    killed[kind] = (pid, title, written)
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    stderr = (tmp_path / "job.err").read_text()
    total_parts = len(list(parts.glob("*.parquet")))
    print(f"\nkilled (pid, title, parts written then): {killed}; {total_parts} parts in all")
    assert proc.returncode == 0, stderr[-4000:]
    assert {"load", "model"} <= set(killed), f"not every kind of worker was caught running: {killed}"
    assert killed["model"][2] < total_parts, "the model actor was killed after the last part: not mid-way"

    faces, images = _read_tables(str(out))
    latest = _check_exactly_once(faces, images, inputs)
    assert images.num_rows == len(inputs)
    assert latest == {u: "corrupt" if u.endswith("broken.jpg") else "ok" for u in inputs}
    manifest = json.loads((out / "runs" / "killed.json").read_text())
    assert manifest["counts"]["images"] == images.num_rows and manifest["counts"]["faces"] == faces.num_rows > 0


# --- bad input: memory -------------------------------------------------------------------------------
def _png_of_zeros(width: int, height: int) -> bytes:
    """A real PNG of ``width x height`` black pixels: a few hundred KB that decode to width*height*3 bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header is patched to declare ``width x height``."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 150)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def _gzip_tar_bomb(member_bytes: int, good: bytes) -> bytes:
    """A gzip-compressed tar (named .tar) declaring one member of ``member_bytes`` zeros, then a good picture.

    Built from concatenated gzip members (one 64 MiB block of zeros compressed once, repeated), so a
    2 GiB member costs about 2 MB here.
    """
    import gzip
    import tarfile

    info = tarfile.TarInfo("000000.jpg")
    info.size = member_bytes
    block = 64 << 20
    n, rest = divmod(member_bytes, block)
    zeros = gzip.compress(b"\0" * block, compresslevel=9)
    pad = (512 - member_bytes % 512) % 512
    tail = io.BytesIO()
    with tarfile.open(fileobj=tail, mode="w", format=tarfile.GNU_FORMAT) as tar:
        member = tarfile.TarInfo("000001.jpg")
        member.size = len(good)
        tar.addfile(member, io.BytesIO(good))
    return (
        gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT)) + zeros * n
        + gzip.compress(b"\0" * (rest + pad) + tail.getvalue())
    )  # fmt: skip


def _status_kib(pid: int, fields: tuple[str, ...]) -> dict[str, int]:
    """Fields of /proc/PID/status and Pss of /proc/PID/smaps_rollup, in bytes (missing ones absent)."""
    out = {}
    for path in (f"/proc/{pid}/status", f"/proc/{pid}/smaps_rollup"):
        try:
            with open(path) as f:
                for line in f:
                    key = line.split(":", 1)[0]
                    if key in fields:
                        out[key] = int(line.split()[1]) * 1024
        except OSError:
            pass
    return out


class _MemorySampler(threading.Thread):
    """Memory of the test cluster's workers and of the job's driver, sampled every 0.2 s from /proc.

    Per worker process it keeps the high-water mark of its resident memory (VmHWM: the kernel's own
    peak, so nothing between samples is missed) and the kinds of task it was seen running; for the
    workers together, the peak of the sum of PSS (shared pages, such as the object store's, divided
    among the processes mapping them) and of the sum of RSS (each process counting them in full).
    """

    def __init__(self, head, driver_pid: int) -> None:
        super().__init__(daemon=True)
        self.head, self.driver_pid = head, driver_pid
        self.hwm: dict[int, int] = {}
        self.kinds: dict[int, set[str]] = {}
        self.peak_pss = self.peak_rss = self.peak_driver = self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            procs = _processes()
            try:
                workers = _cluster_workers(self.head, procs)
            except AssertionError:  # the cluster is gone: the job's own result will say so
                workers = {}
            pss = rss = 0
            for pid, (title, _) in workers.items():
                m = _status_kib(pid, ("VmHWM", "VmRSS", "Pss"))
                self.hwm[pid] = max(self.hwm.get(pid, 0), m.get("VmHWM", 0))
                self.kinds.setdefault(pid, set()).add(title.split(".")[0].removeprefix("ray::"))
                pss, rss = pss + m.get("Pss", m.get("VmRSS", 0)), rss + m.get("VmRSS", 0)
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            driver = _descendants(procs, {self.driver_pid}) & set(procs)
            self.peak_driver = max(self.peak_driver, sum(_status_kib(p, ("VmHWM",)).get("VmHWM", 0) for p in driver))
            self.samples += 1
            self._halt.wait(0.2)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def peak_of(self, kind: str) -> int:
        """Largest high-water mark of the workers seen running ``kind`` (0 if none was seen)."""
        return max((self.hwm[p] for p, k in self.kinds.items() if any(kind in x for x in k)), default=0)


GIB = 1 << 30


def test_bad_input_and_bombs_stay_within_memory(ray_head, golden_bundle, golden_dir, tmp_path):
    corpus = tmp_path / "corpus"
    expected = {str(corpus / n): s for n, s in make_bad_images(corpus).items()}
    expected[str(corpus / "wide_30000x20.png")] = "too_small"
    (corpus / "bomb_zeros_12000x12000.png").write_bytes(_png_of_zeros(12_000, 12_000))  # 430 MB of pixels
    (corpus / "bomb_header_65000x65000.jpg").write_bytes(_jpeg_declaring(65_000, 65_000))
    (corpus / "bomb_gzip.tar").write_bytes(_gzip_tar_bomb(2 * GIB, _picture(golden_dir, "teaser.jpg", 64, 4000)))
    expected |= {
        str(corpus / "bomb_zeros_12000x12000.png"): "too_large",
        str(corpus / "bomb_header_65000x65000.jpg"): "too_large",
        f"{corpus / 'bomb_gzip.tar'}#000000.jpg": "too_large",
        f"{corpus / 'bomb_gzip.tar'}#000001.jpg": "ok",
    }
    input_bytes = sum(p.stat().st_size for p in corpus.iterdir())
    out = tmp_path / "out"
    env = dict(ray_head.env, IMG2POSE_CACHE=str(tmp_path / "cache"))
    # --load-in tasks: decoding runs in load tasks of its own, as on GPU clusters, so that its memory is
    # seen apart from the model actors' (on CPU they read and decode their sources by default).
    args = ["--input", str(corpus), "--output", str(out), "--bundle", str(golden_bundle), *SMALL, "--run-id", "bad",
            "--load-in", "tasks", "--sources-per-task", "4"]  # fmt: skip
    with open(tmp_path / "job.err", "w") as err:
        proc = subprocess.Popen([sys.executable, *JOB, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        sampler = _MemorySampler(ray_head, proc.pid)
        sampler.start()
        try:
            proc.wait(timeout=400)
        finally:
            sampler.stop()
    load, model = sampler.peak_of("_load_udf"), sampler.peak_of("ModelStage")
    print(f"\nbad input ({len(expected)} images, {input_bytes / 1e6:.1f} MB on disk, {sampler.samples} samples): "
          f"peak RSS of a decode (load) worker {load / GIB:.2f} GiB, of the model actor {model / GIB:.2f} GiB; "
          f"workers together PSS {sampler.peak_pss / GIB:.2f} GiB (RSS {sampler.peak_rss / GIB:.2f} GiB); "
          f"driver {sampler.peak_driver / GIB:.2f} GiB")  # fmt: skip
    assert proc.returncode == 0, (tmp_path / "job.err").read_text()[-4000:]
    faces, images = _read_tables(str(out))
    got = _statuses(images)
    assert set(got) == set(expected)
    for uri, status in expected.items():
        assert got[uri] in ({"ok", "corrupt"} if status == "corrupt_or_ok" else {status}), (uri, got[uri])
    _check_exactly_once(faces, images, set(expected))
    assert sampler.samples >= 10 and load and model, "the decode and model workers were not both seen"
    # The bounds (docs/reliability.md, "Memory"): a decode worker is a Ray worker (about 0.2 GiB) plus
    # at most --sources-per-task files and one block of decoded pixels: all small here, since every
    # bomb must be refused before its pixels or its tar member exist (decoding the 12000x12000 PNG
    # would take 0.4 GiB for the pixels alone, reading the tar member 2 GiB). The model actor's own
    # start (torch, the weights, the bundle shipped by the driver) peaks near 2.3 GiB on this machine
    # on good images too (benchmarks/load.py); the bad files must not add to it.
    assert load < 0.75 * GIB
    assert model < 3 * GIB
    assert sampler.peak_pss < 3.5 * GIB


# --- security: secrets, hostile names, URLs -------------------------------------------------------
OUTPUT_NAMES = [
    re.compile(r"faces/sec/part-[0-9a-f]{32}\.parquet"),
    re.compile(r"images/sec/part-[0-9a-f]{32}\.parquet"),
    re.compile(r"runs/sec\.json"),
    re.compile(r"runs/sec\.log"),  # the driver's console, scanned for the secrets like every other file
    re.compile(r"crops/[0-9a-f]{64}/[0-9]+\.jpg"),
]


def _files_containing(root: Path, needles: list[str]) -> list[str]:
    """Files under ``root`` holding any needle: in their bytes, or in any value or metadata of a Parquet file."""
    raw = [n.encode() for n in needles]
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_socket()):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        hit = any(n in data for n in raw)
        if not hit and path.suffix == ".parquet":
            table = pq.read_table(path)
            text = str(table.schema.metadata) + json.dumps(table.to_pylist(), default=str)
            hit = any(n in text for n in needles)
        if hit:
            found.append(str(path))
    return found


def test_secrets_stay_secret_and_hostile_names_write_nothing_outside_output(s3_server, golden_bundle, golden_dir, tmp_path):  # noqa: F811
    """One job on its own local Ray cluster, so that the driver *and every worker* have the planted
    credentials in their environment; its inputs have hostile names on S3, on disk and inside a tar shard."""
    secret = "RelSecret" + secrets.token_hex(16)
    token = "RelToken" + secrets.token_hex(24)
    escape_dir = Path(tempfile.gettempdir()) / f"relsec-{secrets.token_hex(4)}"
    s3_keys = ["in/../../etc/x.jpg", "in/with space.jpg", "in/ünï 顔.jpg", "in/%2e%2e%2fescape.jpg", "in/-rf .jpg",
               "in/semi;colon&amp?.jpg", "in/back\\slash.jpg", "in/hash#frag.jpg", "in/./dot.jpg", "in/a/../b.jpg"]  # fmt: skip
    members = [f"../../../../..{escape_dir}/evil.jpg", f"{escape_dir}/abs.jpg", "new\nline.jpg", "dir/../../up.jpg"]
    local_names = ["new\nline.jpg", "with space.jpg", "ünï 顔.jpg", "-rf .jpg", "$(touch pwned).jpg", "'quote\".jpg"]
    pictures = iter(_picture(golden_dir, ("teaser.jpg", "astronaut.jpg")[i % 2], 64, 5000 + i) for i in range(100))
    _bucket(s3_server, "hostile", {k: next(pictures) for k in s3_keys} | {"shards/000000.tar": _tar({m: next(pictures) for m in members})})
    local = tmp_path / "local"
    local.mkdir()
    for name in local_names:
        (local / name).write_bytes(next(pictures))
    expected = {f"s3://hostile/{k}" for k in s3_keys} | {str(local / n) for n in local_names}
    expected |= {f"s3://hostile/shards/000000.tar#{m}" for m in members}

    ray_tmp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: Ray's socket paths live under it
    out = tmp_path / "nested" / "out"
    before = {p for p in tmp_path.rglob("*")}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"AWS_SECRET_ACCESS_KEY": secret, "AWS_SESSION_TOKEN": token, "RAY_TMPDIR": str(ray_tmp),
            "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "IMG2POSE_CACHE": str(ray_tmp / "cache")}  # fmt: skip
    args = [
        "--input", "s3://hostile/in", "--input", "s3://hostile/shards/000000.tar", "--input", str(local),
        "--output", str(out), "--s3-endpoint-url", s3_server, "--bundle", str(golden_bundle), "--crops", "112",
        "--max-faces", "2", "--run-id", "sec", *SMALL,
    ]  # fmt: skip
    try:
        proc = _job(args, env)
        logs = [p for p in ray_tmp.rglob("*") if p.is_file() and "/logs/" in str(p)]
        leaks = _files_containing(ray_tmp, [secret, token]) + _files_containing(out, [secret, token])
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert len(logs) >= 10, f"the job's Ray session logs are missing: {logs}"
        assert not leaks, f"a credential was written to {leaks}"
        assert secret not in proc.stdout + proc.stderr and token not in proc.stdout + proc.stderr
        print(f"\nsecrets: scanned {len(logs)} Ray log files, {sum(1 for p in out.rglob('*') if p.is_file())} output files, stdout/stderr: clean")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    # Every input got its row, under its name exactly; all of them are pictures.
    faces, images = _read_tables(str(out))
    assert _check_exactly_once(faces, images, expected) == {u: "ok" for u in expected}
    # Everything written is under --output, with a name made of digests, never of an input's name.
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written and all(any(r.fullmatch(w) for r in OUTPUT_NAMES) for w in written), written
    assert len([w for w in written if w.startswith("crops/")]) == faces.num_rows > 0
    created = {p for p in tmp_path.rglob("*")} - before
    assert all(p == out or out in p.parents or p in out.parents for p in created), sorted(map(str, created))
    assert not escape_dir.exists()
    assert not (Path.cwd() / "pwned").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (["--input", "ftp://127.0.0.1:9/images"], "--input ftp://127.0.0.1:9/images: unsupported location (cannot connect"),
        (["--input", "http://[bad"], "--input http://[bad: cannot be reached"),
        (["--input", "gopher://example.org/x"], "--input gopher://example.org/x: unsupported location"),
        (["--input", "s3://bucket/x", "--s3-endpoint-url", "not-a-url"], "Invalid endpoint: not-a-url"),
        (["--output", "http://[bad"], "--output http://[bad is not writable"),
        (["--output", "ftp://127.0.0.1:9/out"], "--output ftp://127.0.0.1:9/out is not writable"),
        (["--bundle", "http://[bad"], "--bundle http://[bad: cannot be opened"),
    ],
    ids=["ftp-unreachable", "bad-ipv6-url", "unknown-scheme", "bad-endpoint", "bad-output-url", "ftp-output", "bad-bundle-url"],
)  # fmt: skip
def test_bad_urls_fail_fast_with_a_clear_message(tmp_path, golden_bundle, change, message, capsys, monkeypatch):
    """In-process (main() returns the exit code): an unexpected exception fails the test with its traceback."""
    from jobs.annotate import main

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    args = {"--input": str(tmp_path / "imgs"), "--output": str(tmp_path / "o"), "--bundle": str(golden_bundle)}
    extra = []
    for flag, value in zip(change[::2], change[1::2]):
        if flag in args:
            args[flag] = value
        else:
            extra += [flag, value]
    for key, value in {"RAY_ADDRESS": "127.0.0.1:1", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}.items():
        monkeypatch.setenv(key, value)  # any attempt to reach Ray would fail loudly
    started = time.monotonic()
    code = main([a for kv in args.items() for a in kv] + extra)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert message in err and err.startswith("annotate.py: error: "), err[-2000:]
    assert time.monotonic() - started < 30
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.parquet"))
