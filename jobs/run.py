"""Running the annotation job: checks before any work, the Ray Data pipeline, the commit, summary and manifest.

The output takes one of two forms (:mod:`img2pose_core.output`): plain Parquet under ``--output``
(the default), or Apache Iceberg tables in ``--catalog`` (:mod:`img2pose_core.iceberg`), where the
driver commits the whole run once its files are written. The parts: :mod:`jobs.config` (the flags,
typed), :mod:`jobs.checks` (before any work), :mod:`jobs.cluster` (Ray, and waiting for the pool),
:mod:`jobs.plan` (the resources, pure), :mod:`jobs.inputs` (the sources), :mod:`jobs.pipeline` (the
stages), :mod:`jobs.sink` (the tables), :mod:`jobs.commit` (Iceberg), :mod:`jobs.summary` (the end).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from img2pose_core.output import RunManifest
from img2pose_core.storage import StorageConfig
from img2pose_core.uris import join_uri, normalise_local, redact_text, redact_uri, scheme_of

from .checks import (
    check_bundle_loads, check_layout, check_local_places, check_new_run_id, check_output, kept_schema, plain_done_files,
)  # fmt: skip
from .config import JobConfig, new_run_id
from .console import log
from .errors import JobError, root_cause
from .inputs import InputError, InputSpec, ManifestPolicy, needs_dedupe, validate_inputs

if TYPE_CHECKING:
    from img2pose_core.iceberg import IcebergTables

__all__ = ["JobError", "run_job", "check_output", "plain_done_files", "kept_schema"]


def run_job(args: argparse.Namespace) -> int:
    """Validate everything, then run the pipeline and commit; returns the process exit code.

    Once the run has its id and its output, it holds a lease on the output (refusing to start beside
    another run) and copies its console to ``runs/<run_id>.log`` (:mod:`jobs.run_files`), whatever the
    end: success, a JobError, or any other exception.
    """
    from .run_files import RunLog

    config = JobConfig.from_args(args)
    check_local_places()  # before the run's log takes its temp file
    run_log = RunLog()
    try:
        with contextlib.ExitStack() as console:
            return _run(config, console, run_log)
    except JobError as exc:
        run_log.write(f"annotate.py: error: {exc}\n")
        if exc.exit_code == 2:  # refused before any work: nothing of it stays in the output
            run_log.discard()
        raise
    except BaseException as exc:
        run_log.write(f"annotate.py: {type(exc).__name__}: {exc}\n")
        raise
    finally:
        run_log.close()


@dataclass
class _Run:
    """What the checks settle before any work."""

    config: JobConfig
    storage: StorageConfig
    output: str
    specs: list[InputSpec]
    tables: IcebergTables | None  # the Iceberg tables, or None for plain Parquet
    run_id: str
    secrets: list[str]
    started: datetime
    wall_start: float
    interactive: bool = False  # stderr is a terminal: a live bar instead of a line per interval
    written: list = field(default_factory=list)  # the write tasks' results so far (counts of a failed run)

    @property
    def form(self) -> str:
        return "iceberg" if self.tables is not None else "parquet"

    def redact(self, text: str) -> str:
        return redact_text(text, [*self.config.input, self.output, *self.secrets])


def _prepare(config: JobConfig, console: contextlib.ExitStack, run_log) -> _Run:
    """Every check that needs no cluster; then the run holds its lease and its log has a place."""
    from .commit import open_iceberg
    from .run_files import LeaseError, RunLease

    wall_start, started = time.perf_counter(), datetime.now(timezone.utc)
    storage = StorageConfig.from_args(config.s3_endpoint_url)
    output = config.output.rstrip("/") if config.output not in ("/",) else config.output
    if scheme_of(output) in ("", "file"):
        output = normalise_local(output)
    checks = storage.for_checks()
    try:
        specs = validate_inputs(config.input, checks, config.url_column, keep_columns=config.keep_columns)
    except InputError as exc:
        raise JobError(str(exc)) from exc
    check_output(output, specs, checks)
    tables = open_iceberg(config.catalog, config.namespace, output, storage) if config.catalog else None
    if tables is None:
        check_layout(output, checks)
    run_id = config.run_id or new_run_id()
    check_new_run_id(output, run_id, checks, tables)
    secrets = [config.bundle or "", os.environ.get("IMG2POSE_BUNDLE", ""), config.catalog or ""]
    lease = RunLease(output, run_id, storage, log=log)
    try:
        lease.acquire(allow_concurrent=config.allow_concurrent_runs)
    except LeaseError as exc:
        raise JobError(str(exc)) from exc
    console.callback(lease.release)
    run_log.upload_to(storage, join_uri(output, "runs", f"{run_id}.log"), [*config.input, output, *secrets])
    return _Run(config, storage, output, specs, tables, run_id, secrets, started, wall_start)


def _open_bundle(run: _Run):
    """The bundle, resolved and its model loaded once in the driver (a bundle that cannot load fails here)."""
    from img2pose_core.bundle import BundleError, resolve_bundle

    uri = run.config.bundle
    try:
        bundle = resolve_bundle(uri, storage_options=run.storage.options_for(uri) if uri else None)
    except BundleError as exc:
        raise JobError(redact_text(str(exc), run.secrets)) from exc
    except (ValueError, OSError) as exc:  # a malformed or unreachable bundle URL
        raise JobError(f"--bundle {redact_uri(uri or '')}: cannot be opened "
                       f"({redact_text(f'{type(exc).__name__}: {exc}', run.secrets)})") from exc  # fmt: skip
    check_bundle_loads(bundle, redact_uri(str(bundle.uri)))
    return bundle


def _start_console(config: JobConfig, console: contextlib.ExitStack, run_log) -> None:
    """Start or join Ray; then copy the console into the run's log and (unless --verbose) strip the lines
    that need no action. After Ray has started, so that no child process inherits the pipes."""
    from .cluster import start_ray
    from .console import NO_ACTION_LINES, ConsoleFilter
    from .errors import stop_on_signals

    start_ray(config.verbose)
    stop_on_signals()
    console.enter_context(ConsoleFilter(1, patterns=(), copy_to=run_log.fd))
    console.enter_context(ConsoleFilter(2, patterns=() if config.verbose else NO_ACTION_LINES, copy_to=run_log.fd))


def _prepare_output(run: _Run, partitions: int):
    """The run's table folders, after removing what dead runs left; and the done set (``--skip-existing``).

    Returns (folders, orphans removed, dead runs removed, done files or None)."""
    from .sink import TableFolders, remove_orphans

    removed, dead_runs = 0, []
    if run.tables is None:
        removed = remove_orphans(run.output, run.storage, log=log)
        folders = TableFolders.plain(run.output, run.run_id)
    else:
        from img2pose_core.iceberg import remove_dead_runs

        dead_runs = remove_dead_runs(run.tables, log=log)
        folders = TableFolders(run.tables.data_folder("faces", run.run_id), run.tables.data_folder("images", run.run_id))
    done_files: list[str] | None = None
    if run.config.skip_existing:
        if run.tables is None:
            done_files = plain_done_files(run.output, run.storage, log=log)
        else:
            from img2pose_core.iceberg import done_files as iceberg_done_files

            done_files = iceberg_done_files(run.tables)
        log(f"--skip-existing: {len(done_files)} images file(s) hold the done set; joined with the inputs in "
            f"{partitions} partitions")  # fmt: skip
    return folders, removed, dead_runs, done_files


def _predictor_kwargs(config: JobConfig, effective: dict, on_gpu: bool, batch_size: int) -> dict:
    """The model actors' predictor settings: the effective model flags and the run's device and crops."""
    return {
        "device": "cuda" if on_gpu else "cpu",
        "precision": config.precision,
        "min_size": effective["min_size"],
        "max_size": effective["max_size"],
        "threshold": effective["threshold"],
        "max_faces": effective["max_faces"],
        "crop_size": config.crops or 112,
        "align_mode": config.align,
        "batch_size": batch_size,
        "compile": config.compile if on_gpu else "off",
    }


def _run(config: JobConfig, console: contextlib.ExitStack, run_log) -> int:
    import ray

    from img2pose_core.bundle import bundle_files, bundle_ref
    from img2pose_core.flags import resolve_model_flags

    from .cluster import wait_for_resources
    from .done import attach_done
    from .inputs import sources_dataset
    from .pipeline import build_pipeline
    from .plan import plan_resources
    from .progress import PROGRESS_ACTOR_PREFIX, ProgressCounter, ProgressDisplay, ray_counter_reader
    from .sink import AnnotationSink
    from .stages import BundleFiles, LoadSettings
    from .writer import FlushPolicy, write_streaming

    run = _prepare(config, console, run_log)
    bundle = _open_bundle(run)
    bundle_shown = redact_uri(str(bundle.uri))
    kept = kept_schema(run.specs, run.storage.for_checks(), config.keep_columns)
    # Asked before the console filter puts a pipe in front of stderr (it forwards to the same terminal).
    run.interactive = sys.stderr.isatty()
    _start_console(config, console, run_log)

    effective = resolve_model_flags(config, bundle.settings)  # each model flag where given, else the bundle's
    plan = plan_resources(config, ray.cluster_resources(), min_size=effective["min_size"],
                          max_size=effective["max_size"], shuffles=config.skip_existing or needs_dedupe(run.specs))  # fmt: skip
    wait_for_resources(plan.actors, config.wait_for_resources)
    folders, removed, dead_runs, done_files = _prepare_output(run, plan.partitions)
    predictor_kwargs = _predictor_kwargs(config, effective, plan.actors.on_gpu, plan.actors.batch_size)

    # A local bundle may not exist on other nodes: its reference then names a holder of its files, one
    # actor of this run that keeps them while the driver lives (restarted model actors fetch them again)
    # and that model actors look up by name. It lives on the driver's node, so that losing any other node
    # (a spot reclaim) never takes it away from the actors that replace the lost ones.
    bundle_for_actors = bundle_ref(bundle, holder=f"img2pose-bundle-{run.run_id}")
    if bundle_for_actors.holder is not None:
        # Kept in a variable for the whole run: an actor without a live handle is destroyed.
        bundle_holder = ray.remote(BundleFiles).options(  # noqa: F841
            name=bundle_for_actors.holder, num_cpus=0, scheduling_strategy=_on_the_drivers_node(),
        ).remote(bundle_files(bundle))  # fmt: skip

    form = f"Iceberg {run.tables.namespace}" if run.tables is not None else "Parquet"
    log(f"run {run.run_id}: {len(run.specs)} input(s) -> {redact_uri(run.output)} ({form}); model "
        f"{bundle.model_sha256[:12]} ({plan.actors.describe()}, batch {plan.actors.batch_size}, min/max size "
        f"{effective['min_size']}/{effective['max_size']}, threshold {effective['threshold']})")  # fmt: skip
    if config.threshold is None and effective["threshold"] == 0.0:
        # Bundles made before the threshold was part of the rule store 0.0: every detection is kept.
        log("the bundle's threshold is 0.0, so every detection becomes a face row; pass --threshold 0.8 "
            "(or recreate the bundle with `img2pose bundle create --threshold 0.8`) for confident faces only")
    load = LoadSettings(
        storage=run.storage, max_pixels=config.max_pixels, keep_bytes=bool(config.crops),
        reduce_for=(effective["min_size"], effective["max_size"]) if config.fast_decode else None,
        read_timeout_s=config.read_timeout, output_root=run.output, device_decode=config.gpu_decode,
        max_shard_bytes=config.max_shard_bytes,
    )  # fmt: skip
    policy = ManifestPolicy(allow_local_files=config.allow_local_files)
    try:
        sources, known_sources, expected_images = sources_dataset(
            run.specs, run.storage, config.url_column, policy, plan.partitions, config.keep_columns)  # fmt: skip
    except OSError as exc:  # an input removed or made unreadable since it was checked
        raise JobError(f"an input could not be listed: {redact_text(f'{type(exc).__name__}: {exc}', run.secrets)}; "
                       "nothing was written") from exc  # fmt: skip
    plan = plan.for_sources(known_sources)
    if done_files is not None:
        done_fs = run.storage.fs(done_files[0])[0] if done_files else None
        sources = attach_done(sources, [run.storage.fs(f)[1] for f in done_files], done_fs, plan.partitions)

    progress_name = f"{PROGRESS_ACTOR_PREFIX}{run.run_id}"
    counter = ray.remote(ProgressCounter).options(name=progress_name, num_cpus=0,
                                                  scheduling_strategy=_on_the_drivers_node()).remote()  # fmt: skip
    model_kwargs = {
        "progress": progress_name, "bundle": bundle_for_actors, "predictor_kwargs": predictor_kwargs,
        "torch_threads": plan.actors.torch_threads, "storage_options": run.storage.options_for(str(bundle.uri)),
        "shown_uri": bundle_shown, "keep_bytes": bool(config.crops),
    }  # fmt: skip
    ds = build_pipeline(sources, plan, load, model_kwargs, crops=config.crops, output=run.output, storage=run.storage)
    sink = AnnotationSink(folders, run.storage, run.run_id, bundle.model_sha256, rows_per_file=config.rows_per_file,
                          kept=kept)  # fmt: skip
    display = ProgressDisplay(ray_counter_reader(counter), total=expected_images,
                              interval_s=0.5 if run.interactive else config.progress_interval,
                              interactive=run.interactive)  # fmt: skip
    flush = FlushPolicy(rows_per_file=config.rows_per_file, interval_s=config.flush_interval)
    t0 = time.perf_counter()
    display.start()
    try:
        sink.finish(write_streaming(ds, sink, flush, on_written=run.written.append))
    except BaseException as exc:  # any failure of the distributed run (or an interrupt) ends here
        display.stop()
        _fail(run, exc, time.perf_counter() - t0)
    elapsed = time.perf_counter() - t0
    display.stop()
    manifest = _succeeded(run, sink.totals, elapsed, bundle, predictor_kwargs, plan,
                          {"orphans_removed": removed, "dead_runs_removed": dead_runs})  # fmt: skip
    return _finish(run, manifest, sink.totals)


def _on_the_drivers_node():
    """Ray's scheduling strategy for the run's own helper actors: the driver's node, which the run cannot
    outlive anyway (any other node may be lost mid-run)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


def _fail(run: _Run, exc: BaseException, elapsed: float) -> None:
    """The run failed part-way (or was interrupted): record it with its arguments and what was written,
    remove this run's own half-written files, and raise a JobError whose message names the cause."""
    from .errors import failure_cause, stopped_by, worker_deaths
    from .sink import merge_write_results, remove_orphans
    from .summary import redacted_arguments

    stopped = stopped_by(exc)
    if stopped is not None:
        cause = f"stopped by {stopped}"
    else:
        cause = run.redact(failure_cause(exc, worker_deaths()))
    written = merge_write_results(list(run.written))
    statuses = written["statuses"]
    failed = RunManifest(
        run_id=run.run_id, status="failed", started_at=run.started.isoformat(),
        ended_at=datetime.now(timezone.utc).isoformat(), error=cause, form=run.form,
        pipeline_s=round(elapsed, 3), wall_s=round(time.perf_counter() - run.wall_start, 3), arguments=redacted_arguments(run.config.arguments()),
        inputs=[{"uri": redact_uri(s.uri), "kind": s.kind} for s in run.specs], output=redact_uri(run.output),
        counts={"images": sum(statuses.values()), "by_status": statuses, "faces": written["faces"],
                "skipped": written["skipped"], "not_written": written["ignored"], "files": written["files"]},
    )  # fmt: skip
    try:
        if run.tables is None:  # this run's own faces files without their images file
            remove_orphans(run.output, run.storage, log=log, run_id=run.run_id)
    except Exception:  # noqa: BLE001 - the store itself may be what failed; a later run removes them
        pass
    try:
        run.storage.write_bytes(join_uri(run.output, "runs", f"{run.run_id}.failed.json"), failed.to_json())
    except Exception:  # noqa: BLE001 - the store itself may be what failed
        pass
    again = "again with --skip-existing and a new --run-id" if run.config.run_id else "again with --skip-existing"
    if run.tables is None:
        kept = (f"{sum(statuses.values())} image(s) in {written['files']} file(s) were written and are kept"
                if written["files"] else "Nothing was written yet")  # fmt: skip
    else:
        kept = "Nothing was committed to the tables"
    raise JobError(f"run {run.run_id} failed: {cause}. {kept}; run the same command {again} to complete it.",
                   exit_code=stopped.exit_code if stopped is not None else 1) from exc  # fmt: skip


def _succeeded(run: _Run, totals: dict, elapsed: float, bundle, predictor_kwargs: dict, plan, removed: dict) -> RunManifest:
    """The manifest of a run whose pipeline completed."""
    from .summary import redacted_arguments, versions

    statuses = totals["statuses"]
    images = sum(statuses.values())
    actors = plan.actors
    return RunManifest(
        run_id=run.run_id, status="succeeded", started_at=run.started.isoformat(), ended_at="", form=run.form,
        pipeline_s=round(elapsed, 3), arguments=redacted_arguments(run.config.arguments()),
        inputs=[{"uri": redact_uri(s.uri), "kind": s.kind} for s in run.specs], output=redact_uri(run.output),
        bundle={"uri": redact_uri(str(bundle.uri)), "name": bundle.name, "digest": bundle.digest,
                "model_sha256": bundle.model_sha256, "license": bundle.license},
        model=dict(predictor_kwargs),
        resources={"gpus_per_actor": actors.gpus_per_actor, "actors": list(plan.pool), "torch_threads": actors.torch_threads,
                   "cpus_per_actor": actors.cpus_per_actor, "load_in": actors.load_in,
                   "shuffle_partitions": plan.partitions},
        versions=versions(),
        counts={"images": images, "by_status": statuses, "faces": totals["faces"], "skipped": totals["skipped"],
                "not_written": totals["ignored"], "files": totals["files"], **removed},
        images_per_s=round(images / elapsed, 3) if elapsed > 0 else None,
    )  # fmt: skip


def _finish(run: _Run, manifest: RunManifest, totals: dict) -> int:
    """Commit (Iceberg), write the manifest, print the summary."""
    from .commit import commit_iceberg
    from .summary import print_summary

    if run.tables is not None:
        commit_iceberg(run.tables, manifest, totals, run.config.catalog or "")
    manifest.ended_at = datetime.now(timezone.utc).isoformat()
    manifest.wall_s = round(time.perf_counter() - run.wall_start, 3)
    run.storage.write_bytes(join_uri(run.output, "runs", f"{run.run_id}.json"), manifest.to_json())
    print_summary(manifest)
    return 0
