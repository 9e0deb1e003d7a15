"""The model actor pool: how many actors, what each asks for, and whether the cluster can hold them.

Decided on the driver before any work, from the resources Ray reports (no I/O here: the caller passes
them). A pool that the cluster cannot hold would wait forever (Ray Data's "may hang forever"), so
:func:`unmet_needs` says what is missing and :mod:`jobs.run` fails at once with it, or waits a
bounded time (``--wait-for-resources``) where an autoscaler may add nodes.

CPU layout. On CPU the default is one single-threaded actor per CPU, and each actor reads and
decodes its own sources (``load_in == "actor"``): no pixels travel through the object store, and
separate processes use the cores better than one process's intra-op threads (two 1-thread
predictors ran 3.31 images/s together on the 2-core development machine, one 2-thread predictor
2.72; docs/performance.md). The actors' CPU reservation is shrunk so that half a CPU stays free for
the listing and de-duplication tasks, which otherwise could never be scheduled; where the pipeline
holds a hash shuffle (duplicate inputs, ``--skip-existing``), a whole CPU for its tasks plus a quarter
of the cluster's for its aggregators. The pool is capped by memory (:func:`actor_memory_estimate` per
actor).

GPU layout. One actor per GPU (``--num-gpus-per-actor`` may share one), 1 CPU each, and decoding in
CPU tasks of its own (``load_in == "tasks"``), which need one CPU beside the actors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ActorPlan", "actor_memory_estimate", "plan_actors", "unmet_needs", "describe_cluster", "autoscaler_bundles"]

GIB = 1 << 30
# Measured on CPU: the predictor with its weights loaded holds about 1 GiB; a batch adds about 333 bytes
# per network-input pixel (4 frames of 1280x720 at 640/1400 peaked at 1.97 GiB). 400 leaves a margin.
_BASE_BYTES = 1 * GIB
_BYTES_PER_PIXEL = 400
# CPUs left free for the small stages (listing prefixes, de-duplication at 0.25 CPU each) and, where
# decoding runs in tasks of its own, for one load task (1 CPU). A hash shuffle (duplicate inputs,
# --skip-existing) needs 1 CPU per shuffle task (fixed in Ray Data 2.60) and holds up to a quarter of
# the cluster's CPUs in its aggregator actors while it runs.
_RESERVE_LISTING = 0.5
_RESERVE_LOAD_TASKS = 1.0
_RESERVE_SHUFFLE_TASK = 1.0
_SHUFFLE_AGGREGATOR_SHARE = 0.25


@dataclass(frozen=True)
class ActorPlan:
    """What the model stage asks of the cluster."""

    on_gpu: bool
    pool: tuple[int, int]  # (min, max) actors
    gpus_per_actor: float
    cpus_per_actor: float  # Ray's logical reservation
    torch_threads: int | None  # CPU actors only
    load_in: str  # "actor": each actor reads and decodes its sources; "tasks": CPU tasks do, before it
    memory_per_actor: int  # bytes, an estimate (CPU actors; checked against the nodes' memory)
    reserve_cpus: float  # CPUs the cluster must keep beside the actors for the other stages
    batch_size: int  # images per model call
    shuffles: bool = False  # the pipeline has a hash shuffle (de-duplication or --skip-existing)

    def describe(self) -> str:
        lo, hi = self.pool
        actors = f"{lo}" if lo == hi else f"{lo}..{hi}"
        each = f"{self.gpus_per_actor:g} GPU, {self.cpus_per_actor:g} CPU" if self.on_gpu else (
            f"{self.cpus_per_actor:g} CPU, {self.torch_threads} thread(s)")  # fmt: skip
        where = "in the actors" if self.load_in == "actor" else "in CPU tasks"
        return f"{actors} {'GPU' if self.on_gpu else 'CPU'} actor(s) of {each}; decoding {where}"


def actor_memory_estimate(min_size: int, max_size: int, batch_size: int, on_gpu: bool) -> int:
    """Bytes of host memory a model actor may hold: weights plus one batch at the largest network input."""
    if on_gpu:  # activations live on the GPU; the host keeps the weights and a batch of frames
        return _BASE_BYTES + batch_size * min_size * max_size * 4
    return _BASE_BYTES + batch_size * min_size * max_size * _BYTES_PER_PIXEL


def plan_actors(
    resources: dict[str, float],
    *,
    num_gpus_per_actor: float | None,
    concurrency: tuple[int, int] | None,
    cpus_per_actor: float | None,
    torch_threads: int | None,
    batch_size: int | None,
    min_size: int,
    max_size: int,
    load_in: str = "auto",
    shuffles: bool = False,
) -> ActorPlan:
    """The pool for a cluster with ``resources`` (``ray.cluster_resources()``) and the job's flags;
    ``batch_size`` None: 16 on GPU, 4 on CPU; ``shuffles``: the pipeline holds a hash shuffle, whose
    tasks need CPUs beside the actors."""
    cpus = float(resources.get("CPU", 0.0))
    gpus = float(resources.get("GPU", 0.0))
    memory = float(resources.get("memory", 0.0))
    gpa = num_gpus_per_actor if num_gpus_per_actor is not None else (1.0 if gpus >= 1 else 0.0)
    on_gpu = gpa > 0
    batch_size = batch_size or (16 if on_gpu else 4)
    where = load_in if load_in != "auto" else ("tasks" if on_gpu else "actor")
    reserve = _RESERVE_LOAD_TASKS if where == "tasks" else _RESERVE_LISTING
    if shuffles:
        reserve = max(reserve, _RESERVE_SHUFFLE_TASK + _SHUFFLE_AGGREGATOR_SHARE * cpus)
    per_actor_memory = actor_memory_estimate(min_size, max_size, batch_size, on_gpu)
    if on_gpu:
        pool = concurrency or ((max(1, int(gpus / gpa)),) * 2 if gpus else (1, 1))
        return ActorPlan(True, pool, gpa, cpus_per_actor if cpus_per_actor is not None else 1.0, None, where,
                         per_actor_memory, reserve, batch_size, shuffles)  # fmt: skip
    if concurrency:
        pool = concurrency
    else:
        by_memory = int(memory // per_actor_memory) if memory else 1
        by_cpu = max(1, int(cpus // (torch_threads or 1)))
        n = max(1, min(by_cpu, by_memory))
        pool = (n, n)
    threads = torch_threads or max(1, int(cpus // max(pool[1], 1)))
    if cpus_per_actor is None:
        cpus_per_actor = float(threads)
        if cpus and pool[1] * threads <= cpus:
            # The actors' threads fit the CPUs: shrink their logical reservation so that the other stages
            # keep room to run. A pool whose threads exceed the CPUs keeps its full ask, and fails the check.
            room = max(cpus - reserve, 0.0) / pool[1]
            cpus_per_actor = max(0.05, min(cpus_per_actor, math.floor(room * 100) / 100))
    return ActorPlan(False, pool, 0.0, cpus_per_actor, threads, where, per_actor_memory, reserve, batch_size, shuffles)


def unmet_needs(plan: ActorPlan, nodes: list[dict[str, float]]) -> list[str]:
    """What the alive ``nodes`` (each its resources: CPU, GPU, memory) lack to hold the smallest pool.

    An actor needs its CPUs, GPUs and memory on one node, so actors are counted node by node; the
    cluster must also keep :attr:`ActorPlan.reserve_cpus` beside them. Empty when the pool fits.
    """
    need = plan.pool[0]
    cpus = sum(float(n.get("CPU", 0.0)) for n in nodes)
    gpus = sum(float(n.get("GPU", 0.0)) for n in nodes)
    fit = 0
    for node in nodes:
        limits = [float(node.get("CPU", 0.0)) / plan.cpus_per_actor if plan.cpus_per_actor > 0 else math.inf]
        if plan.gpus_per_actor > 0:
            limits.append(float(node.get("GPU", 0.0)) / plan.gpus_per_actor)
        if not plan.on_gpu and node.get("memory"):
            limits.append(float(node["memory"]) / plan.memory_per_actor)
        fit += int(math.floor(min(limits) + 1e-9))
    problems = []
    if fit < need:
        each = (f"{plan.gpus_per_actor:g} GPU + {plan.cpus_per_actor:g} CPU" if plan.on_gpu else
                f"{plan.cpus_per_actor:g} CPU + about {plan.memory_per_actor / GIB:.1f} GiB of memory")  # fmt: skip
        problems.append(f"{need} model actor(s) of {each} each, one node holding each actor; the nodes hold {fit}")
    left = cpus - need * plan.cpus_per_actor
    if left + 1e-9 < plan.reserve_cpus:
        why = ("the shuffle that removes duplicates and done inputs" if plan.shuffles
               else "the decoding tasks" if plan.load_in == "tasks" else "the listing tasks")  # fmt: skip
        problems.append(f"{plan.reserve_cpus:g} CPU free beside the actors for {why}; {max(left, 0):g} left")
    if plan.on_gpu and gpus < need * plan.gpus_per_actor and not problems:
        problems.append(f"{need * plan.gpus_per_actor:g} GPUs; the cluster has {gpus:g}")
    return problems


def describe_cluster(nodes: list[dict[str, float]]) -> str:
    """``2 node(s): 10 CPU, 1 GPU, 31.2 GiB memory`` of the alive nodes."""
    cpus = sum(float(n.get("CPU", 0.0)) for n in nodes)
    gpus = sum(float(n.get("GPU", 0.0)) for n in nodes)
    memory = sum(float(n.get("memory", 0.0)) for n in nodes)
    return f"{len(nodes)} node(s): {cpus:g} CPU, {gpus:g} GPU, {memory / GIB:.1f} GiB memory"


def autoscaler_bundles(plan: ActorPlan) -> list[dict[str, float]]:
    """What to ask an autoscaler for so that the smallest pool fits (``ray.autoscaler.sdk.request_resources``):
    one bundle per actor (its CPUs, GPUs and, on CPU, memory: one node must hold each) and one for the CPUs
    the other stages need beside the actors.

    The job only checks the cluster before it starts its pipeline, so nothing is pending while it waits:
    an autoscaler that scales GPU nodes from zero sees no demand unless it is asked.
    """
    actor: dict[str, float] = {"CPU": plan.cpus_per_actor}
    if plan.gpus_per_actor > 0:
        actor["GPU"] = plan.gpus_per_actor
    if not plan.on_gpu:
        actor["memory"] = float(plan.memory_per_actor)
    bundles = [dict(actor) for _ in range(plan.pool[0])]
    if plan.reserve_cpus > 0:
        bundles.append({"CPU": float(plan.reserve_cpus)})
    return bundles
