"""A real local Ray cluster for tests: ``ray start --head`` on 127.0.0.1, one per test session.

Import with ``from ray_fixtures import ray_head  # noqa: F401``. Jobs started by tests join it through
``RAY_ADDRESS``; token authentication (on by default in Ray 2.60) is disabled for this local cluster.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from s3_fixtures import s3_server  # noqa: F401

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayHead:
    address: str  # GCS address for drivers (RAY_ADDRESS)
    dashboard_url: str  # for `ray job submit --address`
    env: dict  # environment for processes that use this cluster
    temp_dir: Path | None = None  # the cluster's session files and logs


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory, s3_server) -> Iterator[RayHead]:
    """The cluster's workers inherit the environment of ``ray start``: started after the S3 server,
    they see its (fake) credentials, as a real cluster's workers see theirs."""
    gcs_port, dash_port, client_port, agent_port = free_port(), free_port(), free_port(), free_port()
    temp_dir = tmp_path_factory.mktemp("ray")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    # A submitted job's "python" is the first on the cluster's PATH: make it this environment's, as a
    # cluster image's python is the one with the project installed.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("RAY_ADDRESS", None)
    cmd = [
        RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
        "--num-cpus=2", "--num-gpus=0", "--object-store-memory=1000000000", f"--temp-dir={temp_dir}",
        # Ports Ray would otherwise fix (10001, 52365): free ones let two test clusters share a machine.
        f"--ray-client-server-port={client_port}", f"--dashboard-agent-listen-port={agent_port}",
        "--disable-usage-stats",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        raise RuntimeError(f"ray start failed:\n{proc.stdout}\n{proc.stderr}")
    head = RayHead(
        address=f"127.0.0.1:{gcs_port}",
        dashboard_url=f"http://127.0.0.1:{dash_port}",
        env=dict(env, RAY_ADDRESS=f"127.0.0.1:{gcs_port}"),
        temp_dir=Path(temp_dir),
    )
    _wait_for_dashboard(head.dashboard_url)
    try:
        yield head
    finally:
        # The session is over: nothing of this cluster needs more than a few seconds to end gracefully.
        _stop_cluster([str(temp_dir), f"--port={client_port}"], timeout_s=5.0)


def _stop_cluster(markers: list[str], timeout_s: float = 20.0, gentle: bool = True) -> None:
    """Stop this cluster's processes only (``ray stop`` would stop every Ray cluster on the machine).

    The head's daemons carry the cluster's temp dir (or the client server's port) on their command
    line; workers and agents exit when their raylet does.
    """
    import signal

    def ours() -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if any(m in cmdline for m in markers):
                pids.append(int(entry.name))
        return pids

    for sig in (signal.SIGTERM, signal.SIGKILL) if gentle else (signal.SIGKILL,):
        for pid in ours():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and ours():
            time.sleep(0.2)


def _wait_for_dashboard(url: str, timeout_s: float = 90.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the Ray dashboard at {url} did not answer within {timeout_s} s")


@dataclass
class FakeAutoscalingHead:
    address: str  # GCS address
    env: dict  # environment for drivers of this cluster


@pytest.fixture(scope="module")
def fake_autoscaling_head(tmp_path_factory) -> Iterator[FakeAutoscalingHead]:
    """A head with Ray's own autoscaler (v1) and its fake-multinode provider, which starts worker nodes as
    local processes when the autoscaler decides to: one worker type ``gpu`` (2 CPU, 1 GPU, 0 to 1 node)
    that the head (1 CPU) lacks. Real Ray and a real autoscaler; only the cloud is local."""
    gcs_port, client_port = free_port(), free_port()
    temp_dir = tmp_path_factory.mktemp("ras")
    config = {
        "cluster_name": "img2pose-fake", "max_workers": 1, "upscaling_speed": 1.0, "idle_timeout_minutes": 1,
        "provider": {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{gcs_port}", "use_node_id_as_ip": True,
                     "disable_launch_config_check": True, "disable_node_updaters": True},
        "auth": {"ssh_user": "ray"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "gpu": {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 1},
        },
        "head_node_type": "ray.head.default", "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }  # fmt: skip
    config_path = temp_dir / "autoscaling.json"
    config_path.write_text(json.dumps(config))
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_FAKE_CLUSTER="1",
               AUTOSCALER_UPDATE_INTERVAL_S="1")  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    cmd = [
        RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}", f"--autoscaling-config={config_path}",
        "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false", "--object-store-memory=200000000",
        f"--temp-dir={temp_dir}", f"--ray-client-server-port={client_port}", "--disable-usage-stats",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        raise RuntimeError(f"ray start (fake autoscaling) failed:\n{proc.stdout}\n{proc.stderr}")
    driver_env = {k: v for k, v in env.items() if k not in ("RAY_FAKE_CLUSTER", "AUTOSCALER_UPDATE_INTERVAL_S")}
    try:
        yield FakeAutoscalingHead(address=f"127.0.0.1:{gcs_port}", env=dict(driver_env, RAY_ADDRESS=f"127.0.0.1:{gcs_port}"))
    finally:
        # The fake provider's worker nodes outlive a SIGTERM of the head for many seconds: nothing of
        # this throwaway cluster needs a graceful end.
        _stop_cluster([str(temp_dir), f"--port={client_port}"], gentle=False)
