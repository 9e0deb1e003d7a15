"""What a run keeps under OUTPUT/runs/ beside its manifest: its lease (one run per output at a time,
unless asked) and its console log. The lease on real files and on a real S3 endpoint (moto), then the
job refusing to start beside a live run, before any work.

A lease is live when its heartbeat moves: holders here renew theirs for real (a shorter interval in
this process), and dead ones are files nobody renews."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from jobs import run_files
from jobs.run_files import LeaseError, RunLease, RunLog, read_leases
from img2pose_core.storage import StorageConfig
from s3_fixtures import s3_client, s3_server  # noqa: F401

LOCAL = StorageConfig()


@pytest.fixture
def quick(monkeypatch):
    """Heartbeats every 0.2 s and a 1.5 s watch in this process."""
    monkeypatch.setattr(run_files, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(run_files, "WATCH_S", 1.5)


def _plant(output: Path, run_id: str, heartbeat_age: float, host: str = "node-a", pid: int = 0) -> None:
    runs = output / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    now = time.time()
    (runs / f"{run_id}.lease").write_text(json.dumps(
        {"run_id": run_id, "started_at": now - 600, "heartbeat_at": now - heartbeat_age, "host": host, "pid": pid}))


def test_a_live_run_holds_the_output_until_it_ends(tmp_path, quick):
    out = str(tmp_path / "out")
    holder = RunLease(out, "alive", LOCAL)
    holder.acquire()
    started = time.monotonic()
    with pytest.raises(LeaseError, match=r"run alive \(on .*\), whose lease .* is renewed.*--allow-concurrent-runs"):
        RunLease(out, "mine", LOCAL).acquire()
    assert time.monotonic() - started < 1.5, "a renewed lease is known live before the watch ends"
    assert not (tmp_path / "out" / "runs" / "mine.lease").exists()
    holder.release()
    assert not (tmp_path / "out" / "runs" / "alive.lease").exists()
    mine = RunLease(out, "mine", LOCAL)
    mine.acquire()
    mine.release()


def test_leases_of_dead_runs_are_passed_over(tmp_path, quick):
    """Unrenewed (a run killed on another machine), long stale, or its process gone on this host."""
    out = str(tmp_path / "out")
    _plant(tmp_path / "out", "killed-elsewhere", heartbeat_age=3)
    _plant(tmp_path / "out", "long-ago", heartbeat_age=run_files.STALE_S + 60)
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _plant(tmp_path / "out", "killed-here", heartbeat_age=1, host=socket.gethostname(), pid=int(done.stdout))
    # A file planted to block every run: its heartbeat is far in the future, and never moves.
    _plant(tmp_path / "out", "forever", heartbeat_age=-10 * 365 * 86400)
    (tmp_path / "out" / "runs" / "junk.lease").write_text("{not json")
    said = []
    started = time.monotonic()
    lease = RunLease(out, "mine", LOCAL, log=said.append)
    lease.acquire()
    lease.release()
    took = time.monotonic() - started
    assert 1.4 < took < 5, took  # one watch, for the two unrenewed leases
    text = "\n".join(said)
    assert "killed-here: its process" in text and "long-ago: not renewed for" in text, text
    assert "killed-elsewhere" in text and "forever" in text and "not renewed in 1.5 s" in text, text
    assert "junk.lease" in text


def test_allow_concurrent_runs_starts_beside_a_live_run(tmp_path, quick):
    out = str(tmp_path / "out")
    holder = RunLease(out, "alive", LOCAL)
    holder.acquire()
    lease = RunLease(out, "mine", LOCAL)
    lease.acquire(allow_concurrent=True)
    assert {le.run_id for le in read_leases(out, LOCAL)} == {"alive", "mine"}
    lease.release()
    holder.release()


def test_two_runs_starting_together_leave_exactly_one(tmp_path, quick):
    """Both find no live lease (neither has written yet); after writing, the later start withdraws."""
    out = str(tmp_path / "out")
    first, second = RunLease(out, "b-first", LOCAL), RunLease(out, "a-second", LOCAL)
    second.lease = run_files.Lease("a-second", first.lease.started_at + 1, time.time(), "node-b", 0)
    assert first.live_others() == [] and second.live_others() == []
    first.write()
    second.write()
    first.confirm()  # the earlier start keeps the output
    with pytest.raises(LeaseError, match="run b-first"):
        second.confirm()
    assert {le.run_id for le in read_leases(out, LOCAL)} == {"b-first"}
    # Same start time: the smaller run id wins, whichever confirms first.
    tie = RunLease(out, "a-tie", LOCAL)
    tie.lease = run_files.Lease("a-tie", first.lease.started_at, time.time(), "node-c", 0)
    tie.write()
    with pytest.raises(LeaseError, match="run a-tie"):
        first.confirm()
    tie.confirm()


def test_lease_and_log_on_s3(s3_server, quick):  # noqa: F811
    client = s3_client(s3_server)
    client.create_bucket(Bucket="leases")
    storage = StorageConfig(s3_endpoint_url=s3_server)
    out = "s3://leases/out"
    lease = RunLease(out, "on-s3", storage)
    lease.acquire()
    with pytest.raises(LeaseError, match="run on-s3"):
        RunLease(out, "second", storage).acquire()
    # The run's log, secrets redacted (a URL's credentials), uploaded at close.
    log = RunLog()
    log.upload_to(storage, f"{out}/runs/on-s3.log", ["s3://user:hunter2@bucket/in"])
    log.write("reading s3://user:hunter2@bucket/in\n")
    assert log.close()
    body = client.get_object(Bucket="leases", Key="out/runs/on-s3.log")["Body"].read().decode()
    assert "reading s3://" in body and "hunter2" not in body
    lease.release()
    assert "Contents" not in client.list_objects_v2(Bucket="leases", Prefix="out/runs/on-s3.lease")


def test_the_job_refuses_to_start_beside_a_live_run_before_any_work(tmp_path, golden_bundle, quick):
    images = tmp_path / "in"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"\xff\xd8 never read")
    holder = RunLease(str(tmp_path / "out"), "nightly-1", LOCAL)
    holder.acquire()
    try:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["RAY_ADDRESS"] = "127.0.0.1:1"  # nothing answers: had the job got that far, this would be the error
        proc = subprocess.run([sys.executable, "-m", "jobs.annotate", "--input", str(images),
                               "--output", str(tmp_path / "out"), "--bundle", str(golden_bundle), "--skip-existing"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    finally:
        holder.release()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "annotate.py: error: another run is writing to this output: run nightly-1" in proc.stderr
    assert "Traceback" not in proc.stderr
    # Nothing was done: no table, no log, no lease of its own.
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["runs"]
