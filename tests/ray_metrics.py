"""Reading a real Ray cluster's Prometheus metrics in tests: the scrape targets from the service-discovery
file Ray's head writes (what a Prometheus on the head reads through file_sd_configs), every node's
/metrics parsed by prometheus_client (a dependency of ray[default]), and a bounded poll."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

# ray/_private/ray_constants.py: PROMETHEUS_SERVICE_DISCOVERY_FILE. Ray 2.60 writes it in the session
# folder and links it from the temp folder (the path of older Rays, /tmp/ray/... by default).
DISCOVERY_FILE = "prom_metrics_service_discovery.json"


def discovery_targets(temp_dir: Path) -> list[str]:
    """host:port of every node's metrics endpoint, from the head's service-discovery file ([] before
    the head has written it)."""
    path = Path(temp_dir) / DISCOVERY_FILE
    try:
        groups = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [target for group in groups for target in group.get("targets", [])]


def scrape(targets: list[str]) -> list:
    """Every sample of every target's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = []
    for target in targets:
        with urllib.request.urlopen(f"http://{target}/metrics", timeout=10) as resp:
            text = resp.read().decode("utf-8")
        for family in text_string_to_metric_families(text):
            samples.extend(family.samples)
    return samples


def run_values(samples: list, name: str, run_id: str, key: str | None = None) -> dict:
    """{tag value: sample value} (or {None: value} without ``key``) of one metric of one run."""
    return {(s.labels.get(key) if key else None): s.value for s in samples
            if s.name == name and s.labels.get("run_id") == run_id}  # fmt: skip


def poll(what: str, check, timeout_s: float = 90.0, every_s: float = 1.0):
    """``check()`` until it returns something other than None; fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got is not None:
            return got
        time.sleep(every_s)
    raise AssertionError(f"{what} within {timeout_s:g} s")
