"""The Ray Data pipeline of a run, as Ray's batch-inference examples read: sources → (decode in CPU
tasks) → the model in an actor pool → (aligned crops). The caller writes it with the run's sink."""

from __future__ import annotations

import dataclasses
from typing import Any

from img2pose_core.storage import StorageConfig

from .plan import ResourcePlan
from .stages import CropStage, LoadSettings, ModelStage, SourcesModelStage, load_images

__all__ = ["build_pipeline"]


def _load_udf(batch, settings):
    """Ray task body of the load stage."""
    yield from load_images(batch, settings)


def build_pipeline(
    sources, plan: ResourcePlan, load: LoadSettings, model_kwargs: dict[str, Any], *, crops: int | None,
    output: str, storage: StorageConfig,
):  # fmt: skip
    """The dataset of model rows (one per image, its faces inside) from the dataset of ``sources``."""
    import ray.data

    actors = plan.actors
    pool_min, pool_max = plan.pool
    actor_options = {
        "compute": ray.data.ActorPoolStrategy(min_size=pool_min, max_size=pool_max, max_tasks_in_flight_per_actor=2),
        "batch_format": "numpy", "num_gpus": actors.gpus_per_actor or None, "num_cpus": actors.cpus_per_actor,
        "runtime_env": plan.actor_runtime_env,
    }  # fmt: skip
    if actors.load_in == "actor":
        load = dataclasses.replace(load, rows_per_batch=actors.batch_size)
        ds = sources.map_batches(SourcesModelStage, fn_constructor_kwargs={"load": load, **model_kwargs},
                                 batch_size=plan.sources_per_task, **actor_options)  # fmt: skip
    else:
        ds = sources.map_batches(_load_udf, fn_kwargs={"settings": load}, batch_size=plan.sources_per_task,
                                 batch_format="numpy", num_cpus=1)  # fmt: skip
        ds = ds.map_batches(ModelStage, fn_constructor_kwargs=model_kwargs, batch_size=actors.batch_size, **actor_options)
    if crops:
        # Beside CPU actors only the reserve is free (ActorPlan.reserve_cpus): a stage asking 1 CPU would
        # wait for the actors to finish, and its input would pile up meanwhile.
        small = actors.load_in == "actor"
        ds = ds.map_batches(CropStage(output, storage, crops), batch_format="pyarrow",
                            num_cpus=0.25 if small else 1, batch_size=64)  # fmt: skip
    return ds
