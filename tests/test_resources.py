"""The model actor pool: its layout from the cluster's resources, and the check that it fits.

Unit tests of :mod:`jobs.resources` (pure), then the job on a real fixed-size local Ray cluster
(2 CPUs, no GPU): a pool that cannot fit ends in exit 2 within seconds with what to change, instead
of Ray Data's wait that "may hang forever"; and the CPU layout (one actor per CPU, decoding in the
actors) gives the same rows as decoding in tasks of its own. Last, on a head with Ray's autoscaler
and a worker type that scales from zero, the job's wait for resources asks the autoscaler for the pool
(nothing else would: the pipeline has not started) and withdraws the request once the nodes are there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
from PIL import Image

from conftest import ROOT, needs_golden
from jobs.resources import GIB, ActorPlan, actor_memory_estimate, autoscaler_bundles, plan_actors, unmet_needs
from ray_fixtures import fake_autoscaling_head, ray_head  # noqa: F401
from s3_fixtures import s3_server  # noqa: F401

JOB = ["-m", "jobs.annotate"]
SMALL = ["--min-size", "32", "--max-size", "64", "--threshold", "0.5"]


def _plan(resources, **flags) -> ActorPlan:
    base = dict(num_gpus_per_actor=None, concurrency=None, cpus_per_actor=None, torch_threads=None,
                batch_size=4, min_size=640, max_size=1400)  # fmt: skip
    return plan_actors(resources, **(base | flags))


NODE_2CPU = {"CPU": 2.0, "memory": 16 * GIB}


def test_cpu_default_is_one_single_thread_actor_per_cpu_decoding_in_the_actors():
    plan = _plan(NODE_2CPU)
    assert (plan.on_gpu, plan.pool, plan.torch_threads, plan.load_in) == (False, (2, 2), 1, "actor")
    # Half a CPU stays free for the listing tasks.
    assert plan.cpus_per_actor == pytest.approx(0.75)
    assert unmet_needs(plan, [NODE_2CPU]) == []


def test_a_shuffle_keeps_a_cpu_and_its_aggregators_free():
    """Ray Data's hash-shuffle tasks ask 1 CPU each: actors holding more than CPUs - 1 would starve them."""
    plan = _plan(NODE_2CPU, shuffles=True)
    assert plan.pool == (2, 2) and plan.cpus_per_actor == pytest.approx(0.25) and plan.reserve_cpus == pytest.approx(1.5)
    assert unmet_needs(plan, [NODE_2CPU]) == []
    squeezed = _plan(NODE_2CPU, shuffles=True, concurrency=(2, 2), cpus_per_actor=0.75)
    assert any("shuffle" in p for p in unmet_needs(squeezed, [NODE_2CPU]))


def test_cpu_pool_is_capped_by_memory():
    per_actor = actor_memory_estimate(640, 1400, 4, on_gpu=False)
    plan = _plan({"CPU": 16.0, "memory": 3.5 * per_actor})
    assert plan.pool == (3, 3) and plan.torch_threads == 5
    assert unmet_needs(plan, [{"CPU": 16.0, "memory": 3.5 * per_actor}]) == []


def test_explicit_threads_and_single_actor():
    plan = _plan({"CPU": 8.0, "memory": 64 * GIB}, concurrency=(1, 1))
    assert plan.pool == (1, 1) and plan.torch_threads == 8 and plan.cpus_per_actor == pytest.approx(7.5)
    plan = _plan({"CPU": 8.0, "memory": 64 * GIB}, torch_threads=2)
    assert plan.pool == (4, 4) and plan.torch_threads == 2


def test_gpu_default_is_one_actor_per_gpu_decoding_in_tasks():
    node = {"CPU": 16.0, "GPU": 4.0, "memory": 64 * GIB}
    plan = _plan(node)
    assert (plan.on_gpu, plan.pool, plan.gpus_per_actor, plan.cpus_per_actor, plan.load_in) == (True, (4, 4), 1.0, 1.0, "tasks")
    assert unmet_needs(plan, [node]) == []
    assert _plan(node, batch_size=None).batch_size == 16 and _plan(NODE_2CPU, batch_size=None).batch_size == 4
    half = _plan(node, num_gpus_per_actor=0.5)
    assert half.pool == (8, 8) and unmet_needs(half, [node]) == []


def test_too_many_cpu_actors_do_not_fit():
    plan = _plan(NODE_2CPU, concurrency=(4, 4))
    assert plan.cpus_per_actor == 1.0  # threads beyond the CPUs: the full ask, not shrunk into a fit
    problems = unmet_needs(plan, [NODE_2CPU])
    assert problems and "4 model actor(s)" in problems[0] and "hold 2" in problems[0]


def test_actors_are_counted_node_by_node():
    nodes = [{"CPU": 8.0, "GPU": 1.0, "memory": 32 * GIB}] * 2
    resources = {"CPU": 16.0, "GPU": 2.0, "memory": 64 * GIB}
    assert unmet_needs(_plan(resources), nodes) == []
    # Two GPUs in the cluster, but no node has two for one actor.
    problems = unmet_needs(_plan(resources, num_gpus_per_actor=2.0, concurrency=(1, 1)), nodes)
    assert problems and "hold 0" in problems[0]
    # No GPU at all: the GPU pool cannot start.
    assert unmet_needs(_plan(NODE_2CPU, num_gpus_per_actor=1.0), [NODE_2CPU])


def test_decoding_tasks_need_a_cpu_beside_the_actors():
    plan = _plan(NODE_2CPU, concurrency=(2, 2), cpus_per_actor=1.0, load_in="tasks")
    problems = unmet_needs(plan, [NODE_2CPU])
    assert any("decoding tasks" in p for p in problems)
    assert unmet_needs(_plan(NODE_2CPU, load_in="tasks"), [NODE_2CPU]) == []


def test_autoscaler_bundles_ask_for_the_smallest_pool_and_its_reserve():
    gpu = _plan({"CPU": 0.0}, num_gpus_per_actor=1.0, concurrency=(4, 6), cpus_per_actor=1.0)
    bundles = autoscaler_bundles(gpu)
    assert bundles[:4] == [{"CPU": 1.0, "GPU": 1.0}] * 4 and bundles[4:] == [{"CPU": gpu.reserve_cpus}]
    cpu = _plan(NODE_2CPU)
    bundles = autoscaler_bundles(cpu)
    assert len(bundles) == cpu.pool[0] + 1 and "GPU" not in bundles[0]
    assert bundles[0]["memory"] == cpu.memory_per_actor and bundles[0]["CPU"] == cpu.cpus_per_actor
    # Whatever the bundles ask for is what the check then finds enough of.
    nodes = [{"CPU": b["CPU"] + 0.0, "GPU": b.get("GPU", 0.0), "memory": b.get("memory", 0.0)} for b in autoscaler_bundles(gpu)]
    assert unmet_needs(gpu, nodes) == []


# --- the job on a fixed-size local cluster -----------------------------------------------------------
def _job(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *JOB, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _images(folder: Path, golden_dir: Path, n: int) -> None:
    folder.mkdir(parents=True)
    with Image.open(golden_dir / "images" / "teaser.jpg") as im:
        im = im.convert("RGB")
        for i in range(n):
            im.crop((i * 7, 0, i * 7 + 400, 300)).resize((96, 72)).save(folder / f"{i:02d}.jpg", quality=90)


@needs_golden
@pytest.mark.parametrize(
    "flags, needs",
    [
        (["--concurrency", "4,4"], "4 model actor(s) of 1 CPU"),
        (["--num-gpus-per-actor", "1"], "1 GPU"),
        (["--concurrency", "2,2", "--cpus-per-actor", "1", "--load-in", "tasks"], "decoding tasks"),
    ],
)  # fmt: skip
def test_a_pool_that_cannot_fit_fails_at_once(ray_head, golden_bundle, golden_dir, tmp_path, flags, needs):
    _images(tmp_path / "in", golden_dir, 2)
    start = time.monotonic()
    proc = _job(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--bundle", str(golden_bundle),
                 *SMALL, *flags], ray_head.env)  # fmt: skip
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "cannot hold the model actors" in proc.stderr and needs in proc.stderr, proc.stderr[-3000:]
    assert "2 CPU, 0 GPU" in proc.stderr and "--concurrency" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert took < 90, f"took {took:.0f} s"
    assert not (tmp_path / "out" / "images").exists()


@needs_golden
def test_waiting_for_resources_is_bounded(ray_head, golden_bundle, golden_dir, tmp_path):
    _images(tmp_path / "in", golden_dir, 2)
    start = time.monotonic()
    proc = _job(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--bundle", str(golden_bundle),
                 *SMALL, "--num-gpus-per-actor", "1", "--wait-for-resources", "6"], ray_head.env)  # fmt: skip
    took = time.monotonic() - start
    assert proc.returncode == 2 and "after waiting 6 s" in proc.stderr, proc.stderr[-3000:]
    assert "waiting up to 6 s" in proc.stderr and "asked the autoscaler for 1 x" in proc.stderr
    assert 6 <= took < 120


@needs_golden
def test_decoding_in_the_actors_gives_the_rows_of_decoding_in_tasks(ray_head, golden_bundle, golden_dir, tmp_path):
    """The CPU default (two actors, each loading its own sources) against load tasks feeding them."""
    _images(tmp_path / "in", golden_dir, 9)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    tables = {}
    for layout in ("actor", "tasks"):
        out = tmp_path / layout
        proc = _job(["--input", str(tmp_path / "in"), "--output", str(out), "--bundle", str(golden_bundle), *SMALL,
                     "--load-in", layout, "--run-id", layout], ray_head.env)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        images = pads.dataset(out / "images", format="parquet").to_table().to_pandas()
        faces = pads.dataset(out / "faces", format="parquet").to_table().to_pandas()
        tables[layout] = (images.sort_values("image_uri").reset_index(drop=True),
                          faces.sort_values(["image_uri", "face_index"]).reset_index(drop=True))  # fmt: skip
    (a_images, a_faces), (t_images, t_faces) = tables["actor"], tables["tasks"]
    assert len(a_images) == 10 and (a_images["status"] == "ok").sum() == 9
    assert list(a_images["status"]) == list(t_images["status"])
    assert list(a_images["image_sha256"]) == list(t_images["image_sha256"])
    assert len(a_faces) == len(t_faces) > 0
    # The layouts differ in torch threads (1 per actor, or 2), hence in float summation order only.
    for column in ("score", "box_x1", "box_y2", "rx", "tz"):
        assert np.allclose(a_faces[column], t_faces[column], rtol=1e-5, atol=1e-4), column


_WAIT_DRIVER = """
import json, sys, time
import ray
from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
from ray.experimental.internal_kv import _internal_kv_get
from jobs.resources import plan_actors, unmet_needs
from jobs.cluster import alive_nodes as _alive_nodes, wait_for_resources as _wait_for_resources

ray.init(logging_level="ERROR")
plan = plan_actors(ray.cluster_resources(), num_gpus_per_actor=1.0, concurrency=(1, 1), cpus_per_actor=1.0,
                   torch_threads=None, batch_size=None, min_size=640, max_size=1400)
before = unmet_needs(plan, _alive_nodes())
time.sleep(float(sys.argv[1]))  # nothing asked for: the autoscaler adds nothing
idle = unmet_needs(plan, _alive_nodes())
start = time.monotonic()
_wait_for_resources(plan, 120)
took = time.monotonic() - start
request = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
print("RESULT " + json.dumps({"before": before, "idle": idle, "took": took, "gpus": ray.cluster_resources().get("GPU", 0),
                  "request": json.loads(request) if request else None}))
"""


def test_waiting_asks_the_autoscaler_for_the_pool_and_withdraws_the_request(fake_autoscaling_head):
    """A GPU group that scales from zero (EC2 or KubeRay with minReplicas 0): the job's wait must ask."""
    proc = subprocess.run([sys.executable, "-c", _WAIT_DRIVER, "5"], env=fake_autoscaling_head.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Ray's driver also prints the autoscaler's events to stdout.
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    assert result["before"] and result["idle"], "the head alone cannot hold a GPU actor, and nobody asked for one"
    assert result["gpus"] >= 1 and result["took"] < 120
    assert "asked the autoscaler for 1 x" in proc.stderr, proc.stderr[-2000:]
    assert result["request"] == [], f"the request for nodes was left in place: {result['request']}"


def test_plan_resources_from_the_flags_and_the_cluster():
    """The run's plan is a pure function of the typed configuration and what Ray reports."""
    from jobs.annotate import parse_args
    from jobs.config import JobConfig
    from jobs.plan import plan_resources

    config = JobConfig.from_args(parse_args(["--input", "in", "--output", "out"]))
    plan = plan_resources(config, NODE_2CPU, min_size=32, max_size=64, shuffles=False)
    assert plan.actors == _plan(NODE_2CPU, min_size=32, max_size=64) and plan.pool == plan.actors.pool == (2, 2)
    assert plan.partitions == 2 and plan.sources_per_task == 16
    assert plan.actor_runtime_env is None  # one thread per actor: Ray's own OMP_NUM_THREADS is right
    # Few sources: no actor without work, and the sources spread over the actors.
    few = plan.for_sources(3)
    assert few.pool == (2, 2) and few.sources_per_task == 2
    one = plan.for_sources(1)
    assert one.pool == (1, 1) and one.sources_per_task == 1
    assert plan.for_sources(None) == plan
    # Two threads per actor on a CPU reservation of less than two: torch's count goes to OpenMP.
    threaded = plan_resources(JobConfig.from_args(parse_args(["--input", "in", "--output", "out", "--torch-threads", "2",
                                                              "--concurrency", "2,2"])),
                              {"CPU": 4.0, "memory": 16 * GIB}, min_size=32, max_size=64, shuffles=True)  # fmt: skip
    assert threaded.actor_runtime_env == {"env_vars": {"OMP_NUM_THREADS": "2"}} and threaded.partitions == 4
    # GPU actors decode in tasks: the number of sources does not shrink the pool.
    gpu = plan_resources(JobConfig.from_args(parse_args(["--input", "in", "--output", "out", "--num-gpus-per-actor", "1",
                                                         "--concurrency", "4,4"])),
                         {"CPU": 16.0, "GPU": 4.0}, min_size=640, max_size=1400, shuffles=False)  # fmt: skip
    assert gpu.for_sources(1).pool == (4, 4)


def test_job_config_has_every_flag_of_the_parser():
    from jobs.annotate import parse_args
    from jobs.config import JobConfig

    args = parse_args(["--input", "in", "--output", "out"])
    config = JobConfig.from_args(args)
    assert config.arguments() == vars(args)
    args.no_such_flag = 1
    with pytest.raises(TypeError, match="no_such_flag"):
        JobConfig.from_args(args)
