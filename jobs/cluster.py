"""The Ray cluster the job runs on: started or joined (failing fast where nothing answers), and waited
for until it can hold the model pool, asking its autoscaler for the nodes meanwhile."""

from __future__ import annotations

import collections
import json
import logging
import os
import time

from .console import log
from .errors import JobError, root_cause
from .resources import ActorPlan, autoscaler_bundles, describe_cluster, unmet_needs

__all__ = ["check_ray_address", "start_ray", "alive_nodes", "wait_for_resources"]


def check_ray_address(address: str, timeout_s: float = 10.0) -> None:
    """Fail at once when ``RAY_ADDRESS`` names a ``host:port`` where nothing answers: Ray itself keeps
    trying to reach the GCS for minutes before it gives up."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not host or "://" in address or not port.isdigit():
        return  # "auto", "ray://...", "local" or unset: Ray's own rules apply
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise JobError(
            f"RAY_ADDRESS={address}: no Ray cluster answers there ({type(exc).__name__}: {exc}). Unset RAY_ADDRESS "
            "to start a local Ray, or check the cluster with `ray status`", exit_code=1,
        ) from None  # fmt: skip


def start_ray(verbose: bool) -> None:
    """Start or join Ray. Unless ``verbose``, Ray's own INFO logs and block-level progress stay out of the
    console (the job shows its own progress in images); a Ray that cannot start is a JobError."""
    import ray
    from ray.data import DataContext

    check_ray_address(os.environ.get("RAY_ADDRESS", ""))
    if not verbose:
        # "Token authentication is enabled ... Set RAY_AUTH_MODE=disabled to opt out": the default of a
        # local cluster, which needs no action.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    try:
        ray.init(ignore_reinit_error=True, logging_level=logging.INFO if verbose else logging.WARNING, log_to_driver=True)
    except Exception as exc:  # noqa: BLE001 - e.g. "The current node timed out during startup"
        raise JobError(
            f"Ray could not start or be reached ({root_cause(exc)}). On a loaded machine, run again; to use a "
            "running cluster, set RAY_ADDRESS (or run through `ray job submit`); `ray status` shows whether "
            "one is up", exit_code=1,
        ) from exc  # fmt: skip
    ctx = DataContext.get_current()
    if not verbose:
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False
        ctx.print_on_execution_start = False
        ctx.enable_auto_log_stats = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        # Its one warning says that the progress bars we turned off are off.
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        # Ray Data's high-memory detector asks for `memory=` in a call the user does not write (ten lines,
        # every 30 s): the job sizes its stages itself (jobs/plan.py), and an actual lack of memory ends
        # the run with a message that says what to change (jobs/errors.py). -1 turns it off.
        ctx.issue_detectors_config.high_memory_detector_config.detection_time_interval_s = -1


def alive_nodes() -> list[dict[str, float]]:
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def wait_for_resources(plan: ActorPlan, wait_s: float) -> None:
    """Fail at once (or after ``wait_s`` seconds of polling, for an autoscaler to add nodes) when the
    cluster cannot hold the smallest model pool: Ray Data would otherwise wait forever.

    While it waits, the job asks the autoscaler for the pool (``request_resources``): nothing of the
    run is pending yet, so a worker group that scales from zero would otherwise never grow. The request
    is withdrawn as soon as the wait ends, so that the nodes can scale down again once the run is over.
    """
    nodes = alive_nodes()
    problems = unmet_needs(plan, nodes)
    if problems and wait_s > 0:
        log(f"waiting up to {wait_s:g} s for the cluster to hold the model actors: needs {'; '.join(problems)}")
        asked = _request_resources(autoscaler_bundles(plan))
        try:
            deadline = time.monotonic() + wait_s
            while problems and time.monotonic() < deadline:
                time.sleep(min(2.0, max(deadline - time.monotonic(), 0.0)))
                nodes = alive_nodes()
                problems = unmet_needs(plan, nodes)
        finally:
            if asked:
                _request_resources([])
    if problems:
        waited = f" after waiting {wait_s:g} s" if wait_s > 0 else ""
        fixes = ("fewer actors (--concurrency MIN,MAX), less per actor (--cpus-per-actor, --num-gpus-per-actor, "
                 "--batch-size, --max-size), or more nodes; on an autoscaling cluster give --wait-for-resources SECONDS")  # fmt: skip
        raise JobError(f"the cluster cannot hold the model actors{waited}: it needs {'; '.join(problems)}. "
                       f"It has {describe_cluster(nodes)}. Ask for {fixes}")  # fmt: skip


def _request_resources(bundles: list[dict[str, float]]) -> bool:
    """Ask the cluster's autoscaler for ``bundles`` (``[]`` withdraws the request); False where it cannot
    be asked. A cluster without an autoscaler keeps the request and ignores it."""
    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=bundles)
    except Exception as exc:  # noqa: BLE001 - asking is a help, never a reason to fail the run
        log(f"could not ask the autoscaler for nodes ({type(exc).__name__}: {exc}); waiting without asking")
        return False
    if bundles:
        shapes = collections.Counter(json.dumps(b, sort_keys=True) for b in bundles)
        log("asked the autoscaler for " + " + ".join(f"{n} x {shape}" for shape, n in shapes.items()))
    return True
