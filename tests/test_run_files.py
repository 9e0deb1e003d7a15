"""What a run keeps under OUTPUT/runs/ beside its manifest: its lease (one run per output at a time,
unless asked) and its console log. The lease on real files and on a real S3 endpoint (moto), then the
job refusing to start beside a live run, before any work."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from jobs import run_files
from jobs.run_files import STALE_S, LeaseError, RunLease, RunLog, read_leases
from jobs.storage import StorageConfig
from s3_fixtures import s3_client, s3_server  # noqa: F401

LOCAL = StorageConfig()


def _plant(output: Path, run_id: str, heartbeat_age: float, started_age: float = 600.0, host: str = "node-a") -> None:
    runs = output / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    now = time.time()
    (runs / f"{run_id}.lease").write_text(json.dumps(
        {"run_id": run_id, "started_at": now - started_age, "heartbeat_at": now - heartbeat_age, "host": host}))


def test_a_live_run_holds_the_output_and_a_dead_one_does_not(tmp_path):
    out = str(tmp_path / "out")
    _plant(tmp_path / "out", "alive", heartbeat_age=20)
    with pytest.raises(LeaseError, match=r"run alive \(on node-a, .*last heartbeat 2\d s ago\).*--allow-concurrent-runs"):
        RunLease(out, "mine", LOCAL).acquire()
    assert not (tmp_path / "out" / "runs" / "mine.lease").exists()

    # Stale: the same lease, last renewed longer ago than STALE_S (a run killed outright).
    _plant(tmp_path / "out", "alive", heartbeat_age=STALE_S + 5)
    lease = RunLease(out, "mine", LOCAL)
    lease.acquire()
    assert {le.run_id for le in read_leases(out, LOCAL)} == {"alive", "mine"}
    # Now it is this run that holds the output.
    with pytest.raises(LeaseError, match="run mine"):
        RunLease(out, "third", LOCAL).acquire()
    lease.release()
    assert not (tmp_path / "out" / "runs" / "mine.lease").exists()
    RunLease(out, "third", LOCAL).acquire()


def test_allow_concurrent_runs_starts_beside_a_live_run(tmp_path):
    out = str(tmp_path / "out")
    _plant(tmp_path / "out", "alive", heartbeat_age=1)
    said = []
    lease = RunLease(out, "mine", LOCAL, log=said.append)
    lease.acquire(allow_concurrent=True)
    assert (tmp_path / "out" / "runs" / "mine.lease").is_file()
    assert any("run alive" in line for line in said)
    lease.release()


def test_planted_or_broken_leases_block_nothing(tmp_path):
    """A heartbeat far in the future (planted, or a wild clock) and files that are not leases are ignored, and said."""
    out = str(tmp_path / "out")
    _plant(tmp_path / "out", "forever", heartbeat_age=-10 * 365 * 86400)
    (tmp_path / "out" / "runs" / "junk.lease").write_text("{not json")
    (tmp_path / "out" / "runs" / "fields.lease").write_text(json.dumps({"run_id": "x"}))
    said = []
    lease = RunLease(out, "mine", LOCAL, log=said.append)
    lease.acquire()
    lease.release()
    assert any("forever" in line and "future" in line for line in said), said
    assert any("junk.lease" in line for line in said) and any("fields.lease" in line for line in said), said
    # Negative control: a heartbeat a little ahead (clocks drift) still counts as live.
    _plant(tmp_path / "out", "ahead", heartbeat_age=-30)
    with pytest.raises(LeaseError, match="run ahead"):
        RunLease(out, "late", LOCAL).acquire()


def test_two_runs_starting_together_leave_exactly_one(tmp_path):
    """Both look before either writes (the race acquire() closes): after writing, the later start withdraws."""
    out = str(tmp_path / "out")
    first, second = RunLease(out, "b-first", LOCAL), RunLease(out, "a-second", LOCAL)
    second.lease = run_files.Lease("a-second", first.lease.started_at + 1, time.time(), "node-b")
    assert first.look() == [] and second.look() == []
    first.write()
    second.write()
    first.confirm()  # the earlier start keeps the output
    with pytest.raises(LeaseError, match="run b-first"):
        second.confirm()
    assert {le.run_id for le in read_leases(out, LOCAL)} == {"b-first"}
    # Same start time: the smaller run id wins, whichever confirms first.
    tie = RunLease(out, "a-tie", LOCAL)
    tie.lease = run_files.Lease("a-tie", first.lease.started_at, time.time(), "node-c")
    tie.write()
    with pytest.raises(LeaseError, match="run a-tie"):
        first.confirm()
    tie.confirm()


def test_the_heartbeat_renews_the_lease(tmp_path, monkeypatch):
    monkeypatch.setattr(run_files, "HEARTBEAT_S", 0.2)
    out = str(tmp_path / "out")
    lease = RunLease(out, "mine", LOCAL)
    lease.acquire()
    first = json.loads((tmp_path / "out" / "runs" / "mine.lease").read_text())["heartbeat_at"]
    time.sleep(1.0)
    later = json.loads((tmp_path / "out" / "runs" / "mine.lease").read_text())["heartbeat_at"]
    lease.release()
    assert later > first


def test_lease_and_log_on_s3(s3_server, monkeypatch):  # noqa: F811
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


def test_the_job_refuses_to_start_beside_a_live_run_before_any_work(tmp_path, golden_bundle):
    images = tmp_path / "in"
    images.mkdir()
    (images / "a.jpg").write_bytes((ROOT / "tests").joinpath("conftest.py").read_bytes()[:10])  # never read
    _plant(tmp_path / "out", "nightly-1", heartbeat_age=5)
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "annotate.py"), "--input", str(images), "--output",
                           str(tmp_path / "out"), "--bundle", str(golden_bundle), "--skip-existing"],
                          capture_output=True, text=True, timeout=120, env={"RAY_ADDRESS": "127.0.0.1:1", "PATH": ""})  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "annotate.py: error: another run is writing to this output: run nightly-1" in proc.stderr
    assert "Traceback" not in proc.stderr
    # Nothing was done: no table, no log, no lease of its own (and Ray was never reached: the
    # RAY_ADDRESS above answers nothing, which would have been the error).
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["nightly-1.lease", "runs"]
