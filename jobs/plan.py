"""The run's resource plan, decided on the driver before any work (pure: the caller passes what Ray
reports): the model actor pool (:func:`jobs.resources.plan_actors`), how many sources each task takes,
the shuffle's partitions, and the actors' environment."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config import JobConfig
from .resources import ActorPlan, plan_actors

__all__ = ["ResourcePlan", "plan_resources"]


@dataclass(frozen=True)
class ResourcePlan:
    """What the run asks of the cluster."""

    actors: ActorPlan
    pool: tuple[int, int]  # (min, max) model actors
    sources_per_task: int
    partitions: int  # of the hash shuffles (de-duplication, --skip-existing)

    @property
    def actor_runtime_env(self) -> dict[str, Any] | None:
        """The model actors' runtime environment: OMP_NUM_THREADS at torch's thread count.

        Ray starts a worker with OMP_NUM_THREADS set to its CPU request; the OpenMP runtime reads it when
        it loads, before torch.set_num_threads, and the model ran 10 % slower than with the variable at
        torch's thread count (measured in an actor on the development machine). Only where it differs
        from Ray's: a runtime_env costs a fresh worker process (about 2 s here).
        """
        threads = self.actors.torch_threads
        if threads and threads != max(int(self.actors.cpus_per_actor), 1):
            return {"env_vars": {"OMP_NUM_THREADS": str(threads)}}
        return None

    def for_sources(self, known_sources: int | None) -> "ResourcePlan":
        """The plan once the number of sources is known (None: not known): where actors decode their own
        sources and there are few, spread them over the actors and start no actor that would get none."""
        if self.actors.load_in != "actor" or known_sources is None:
            return self
        pool_max = max(1, min(self.pool[1], known_sources))
        per_task = max(1, min(self.sources_per_task, -(-known_sources // pool_max)))
        return dataclasses.replace(self, pool=(min(self.pool[0], pool_max), pool_max), sources_per_task=per_task)


def plan_resources(
    config: JobConfig, resources: dict[str, float], *, min_size: int, max_size: int, shuffles: bool
) -> ResourcePlan:
    """The plan for a cluster with ``resources`` (``ray.cluster_resources()``) and the job's flags; the
    model's effective sizes decide the actors' memory; ``shuffles``: the pipeline has a hash shuffle."""
    actors = plan_actors(
        resources, num_gpus_per_actor=config.num_gpus_per_actor, concurrency=config.concurrency,
        cpus_per_actor=config.cpus_per_actor, torch_threads=config.torch_threads, batch_size=config.batch_size,
        min_size=min_size, max_size=max_size, load_in=config.load_in, shuffles=shuffles,
    )  # fmt: skip
    partitions = config.shuffle_partitions or max(2, int(resources.get("CPU", 1)))
    return ResourcePlan(actors, actors.pool, config.sources_per_task, partitions)
