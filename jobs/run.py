"""Running the annotation job: checks before any work, the Ray Data pipeline, the commit, summary and manifest.

The output takes one of two forms (:mod:`img2pose_core.output`): plain Parquet under ``--output``
(the default), or Apache Iceberg tables in ``--catalog`` (:mod:`img2pose_core.iceberg`), where the
driver commits the whole run once its files are written.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import logging
import os
import platform
import sys
import time
import uuid
from datetime import datetime, timezone
from importlib import metadata

import pyarrow as pa

from img2pose_core.uris import normalise_local, redact_text, redact_uri, scheme_of

from .inputs import (
    InputError,
    InputSpec,
    ManifestPolicy,
    expand_groups,
    with_choice,
    glob_base,
    uri_of,
    is_inside,
    list_prefix,
    needs_dedupe,
    resolve_manifest_entries,
    split_prefix,
    validate_inputs,
)
from img2pose_core.output import LEGACY_PARTITION, RunManifest

from .resources import ActorPlan, autoscaler_bundles, describe_cluster, plan_actors, unmet_needs
from .storage import StorageConfig, join_uri, with_retries

__all__ = ["JobError", "run_job", "check_output", "plain_done_files", "kept_schema"]


class JobError(RuntimeError):
    """A reason to stop, with what to fix. Exit code 2 before any work starts, 1 for a failed run."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _log(message: str) -> None:
    print(f"[annotate] {message}", file=sys.stderr, flush=True)


def check_output(output: str, specs: list[InputSpec], storage: StorageConfig) -> None:
    """The output must not overlap an input (compared where symbolic links lead), and must be writable."""
    for spec in specs:
        base = glob_base(spec.uri) if spec.kind == "glob" else spec.uri
        if spec.kind in ("prefix", "glob") and is_inside(output, base):
            raise JobError(f"--output {redact_uri(output)} is inside --input {redact_uri(spec.uri)}: the job would read its own output")
        if spec.kind != "manifest" and is_inside(base, output):
            raise JobError(f"--input {redact_uri(spec.uri)} is inside --output {redact_uri(output)}: the job would read what it writes")
    probe = join_uri(output, "runs", f".write-probe-{uuid.uuid4().hex}")
    try:
        storage.write_bytes(probe, b"probe")
        storage.delete(probe)
    except Exception as exc:  # noqa: BLE001 - permissions, missing bucket, read-only mount ...
        cause = redact_text(f"{type(exc).__name__}: {exc}", [output])
        raise JobError(f"--output {redact_uri(output)} is not writable ({cause})") from exc


def check_new_run_id(output: str, run_id: str, storage: StorageConfig, tables=None) -> None:
    """A run id names one run: refuse one that this output (or its Iceberg tables) already holds,
    whatever became of that run."""
    found = [
        name for name in (f"runs/{run_id}.json", f"runs/{run_id}.failed.json", f"images/{run_id}", f"faces/{run_id}")
        if storage.exists(join_uri(output, name))
    ]  # fmt: skip
    if not found and tables is not None:
        from img2pose_core.iceberg import run_exists

        if run_exists(tables, run_id):
            found = [f"a commit in {tables.namespace}"]
    if found:
        raise JobError(
            f"--run-id {run_id} already exists in {redact_uri(output)} ({found[0]}): a run id names one run, and "
            "writing a second run under it could double its rows. Choose another --run-id, or leave it out "
            "(a new one is made); to complete an interrupted run, add --skip-existing with a new run id"
        )


def check_bundle_loads(bundle, shown: str) -> None:
    """Build the model once in the driver, on CPU: weights that do not load fail here, not in every actor."""
    try:
        model = bundle.build_model()
    except Exception as exc:  # noqa: BLE001 - whatever the cause, it is the bundle's
        raise JobError(f"--bundle {shown}: the model cannot be loaded from it ({type(exc).__name__}: "
                       f"{redact_text(str(exc), [str(bundle.uri)])})") from exc  # fmt: skip
    del model


def check_layout(output: str, storage: StorageConfig) -> None:
    """Refuse an output written by schema version 1 (``run_id=<id>/`` folders): mixing both layouts
    would break every reader. docs/schema.md says how to move such an output."""
    fs, root = storage.fs(output)
    for table in ("faces", "images"):
        try:
            names = with_retries(lambda: fs.ls(f"{root.rstrip('/')}/{table}", detail=False), attempts=storage.read_attempts)
        except (FileNotFoundError, NotADirectoryError):
            continue
        legacy = [n.rstrip("/").rsplit("/", 1)[-1] for n in names if LEGACY_PARTITION.fullmatch(n.rstrip("/").rsplit("/", 1)[-1])]
        if legacy:
            raise JobError(
                f"{redact_uri(output)}/{table}/ holds {legacy[0]}/ and maybe more folders of schema version 1; rename "
                f"each {table}/run_id=<id>/ to {table}/<id>/ (and the same under the other table) before a new run "
                "writes here (docs/schema.md, 'Schema versions')"
            )


def plain_done_files(output: str, storage: StorageConfig, log=None) -> list[str]:
    """The URIs of the job's part files under ``OUTPUT/images`` (the done set of the plain form).

    Files named otherwise (a user's own file, another tool's) are reported by name and left alone.
    """
    from .sink import is_part_file

    fs, root = storage.fs(output)
    images_root = f"{root.rstrip('/')}/images"
    try:
        files = sorted(with_retries(lambda: fs.find(images_root), attempts=storage.read_attempts))
    except FileNotFoundError:
        return []
    ours = [f for f in files if is_part_file(f[len(images_root) :].lstrip("/"))]
    foreign = sorted(set(files) - set(ours))
    if foreign and log:
        shown = [f[len(images_root) :].lstrip("/") for f in foreign]
        log(f"--skip-existing: {len(foreign)} file(s) under images/ are not the job's and are ignored: "
            f"{', '.join(shown[:5])}{' ...' if len(shown) > 5 else ''}")  # fmt: skip
    return [uri_of(fs, f) for f in ours]


def kept_schema(specs: list[InputSpec], storage: StorageConfig, keep: list[str]) -> pa.Schema | None:
    """The Arrow types of the ``--keep-columns`` columns, from the manifests' schemas.

    Numbers, booleans and strings keep their type; anything else, and a column whose manifests
    disagree on its type, is stored as text.
    """
    if not keep:
        return None
    import pyarrow.parquet as pq

    types: dict[str, pa.DataType] = {}
    for spec in specs:
        if spec.kind != "manifest":
            continue
        if spec.uri.lower().endswith(".parquet"):
            fs, path = storage.fs(spec.uri)
            with fs.open(path, "rb") as f:
                schema = pq.read_schema(f)
            found = {name: schema.field(name).type for name in keep}
        else:
            found = {name: pa.string() for name in keep}
        for name, typ in found.items():
            plain = pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ) or pa.types.is_string(typ)
            typ = typ if plain else pa.string()
            types[name] = typ if types.get(name, typ) == typ else pa.string()
    return pa.schema([pa.field(name, types[name], nullable=True) for name in keep])


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("img2pose-ray", "torch", "torchvision", "ray", "pyarrow", "numpy", "pillow", "fsspec", "s3fs"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _sources_dataset(
    specs: list[InputSpec], storage: StorageConfig, url_column: str, policy: ManifestPolicy, partitions: int,
    keep: list[str],
):
    """One Ray dataset of source rows for all inputs, prefixes listed in parallel tasks; the number of
    sources where the driver knows it (every input listed here: no sub-folder, no manifest), else None;
    and the number of image files among them where that is known (no tar shard), else None.

    Where inputs can name one file twice (manifests, globs beside other inputs), the rows are grouped
    by URI with a hash shuffle (exact whatever the size) and every copy after the first is counted as
    a ``duplicate``: one row per distinct input per run.
    """
    import ray.data

    datasets = []
    direct: list[dict] = []
    subprefixes: list[str] = []
    for spec in specs:
        if spec.kind == "manifest":
            datasets.append(_manifest_dataset(spec, storage, url_column, policy, keep))
            continue
        rows, subdirs = split_prefix(spec, storage)
        direct.extend(rows)
        subprefixes.extend(subdirs)
    if direct:
        datasets.append(ray.data.from_items(direct))
    if subprefixes:
        listing = ray.data.from_items([{"prefix": p} for p in subprefixes], override_num_blocks=len(subprefixes))
        datasets.append(listing.flat_map(lambda row: list(list_prefix(row["prefix"], storage)), num_cpus=0.25))
    first, *rest = datasets
    ds = first.union(*rest) if rest else first
    known = len(direct) if len(datasets) == 1 and direct else None
    # Images to expect, for the progress display: known when every source is one listed file.
    expected = (sum(1 for r in direct if r["kind"] == "file")
                if known is not None and not any(r["kind"] == "tar" for r in direct) else None)  # fmt: skip
    if not needs_dedupe(specs):
        return ds, known, expected
    from ray.data.aggregate import Count, Min
    from ray.data.context import DataContext, ShuffleStrategy

    DataContext.get_current().shuffle_strategy = ShuffleStrategy.HASH_SHUFFLE
    # One partition per CPU of the cluster: Ray's default of 200 costs seconds on a small run, and a
    # partition holds only URIs (about 100 bytes each).
    choices = ds.map_batches(with_choice, batch_format="pyarrow", num_cpus=0.25)
    grouped = choices.groupby("source_uri", num_partitions=partitions).aggregate(Count(), Min("choice"))
    return grouped.map_batches(expand_groups, batch_format="pyarrow", num_cpus=0.25), known, expected


def _manifest_dataset(spec: InputSpec, storage: StorageConfig, url_column: str, policy: ManifestPolicy, keep: list[str]):
    import pyarrow.csv as pacsv
    import ray.data

    fs, path = storage.fs(spec.uri)
    columns = [url_column] + [c for c in keep if c != url_column]
    if spec.uri.lower().endswith(".parquet"):
        ds = ray.data.read_parquet(path, filesystem=fs, columns=columns, partitioning=None)
    else:
        # Every kept column as text, the URL column too: numbers or dates must not change how a cell reads.
        convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in columns}, include_columns=columns)
        ds = ray.data.read_csv(path, filesystem=fs, convert_options=convert)
    manifest_uri = spec.uri

    def to_sources(batch: pa.Table) -> dict:
        kept = None
        if keep:
            values = {c: batch[c].to_pylist() for c in keep}
            kept = [json.dumps({c: values[c][i] for c in keep}, default=str) for i in range(batch.num_rows)]
        return resolve_manifest_entries(batch[url_column].to_pylist(), manifest_uri, policy, kept)

    return ds.map_batches(to_sources, batch_format="pyarrow", batch_size=4096)


def run_job(args: argparse.Namespace) -> int:
    """Validate everything, then run the pipeline and commit; returns the process exit code.

    Once the run has its id and its output, it holds a lease on the output (refusing to start beside
    another run) and copies its console to ``runs/<run_id>.log`` (:mod:`jobs.run_files`), whatever the
    end: success, a JobError, or any other exception.
    """
    from .run_files import RunLog

    run_log = RunLog()
    try:
        with contextlib.ExitStack() as console:
            return _run_job(args, console, run_log)
    except JobError as exc:
        run_log.write(f"annotate.py: error: {exc}\n")
        raise
    except BaseException as exc:
        run_log.write(f"annotate.py: {type(exc).__name__}: {exc}\n")
        raise
    finally:
        run_log.close()


def _run_job(args: argparse.Namespace, console: contextlib.ExitStack, run_log) -> int:
    from img2pose_core.bundle import BundleError, bundle_files, bundle_ref, resolve_bundle
    from img2pose_core.flags import resolve_model_flags

    from .annotate import new_run_id

    wall_start = time.perf_counter()
    started_wall = datetime.now(timezone.utc)
    storage = StorageConfig.from_args(args.s3_endpoint_url)
    output = args.output.rstrip("/") if args.output not in ("/",) else args.output
    if scheme_of(output) in ("", "file"):
        output = normalise_local(output)
    checks = storage.for_checks()
    try:
        specs = validate_inputs(args.input, checks, args.url_column, keep_columns=args.keep_columns)
    except InputError as exc:
        raise JobError(str(exc)) from exc
    check_output(output, specs, checks)
    tables = _open_iceberg(args, output, storage) if args.catalog else None
    if tables is None:
        check_layout(output, checks)
    run_id = args.run_id or new_run_id()
    check_new_run_id(output, run_id, checks, tables)
    secrets = [args.bundle or "", os.environ.get("IMG2POSE_BUNDLE", ""), args.catalog or ""]
    from .run_files import LeaseError, RunLease

    lease = RunLease(output, run_id, storage, log=_log)
    try:
        lease.acquire(allow_concurrent=args.allow_concurrent_runs)
    except LeaseError as exc:
        raise JobError(str(exc)) from exc
    console.callback(lease.release)
    run_log.upload_to(storage, join_uri(output, "runs", f"{run_id}.log"), [*args.input, output, *secrets])
    try:
        bundle = resolve_bundle(args.bundle, storage_options=storage.options_for(args.bundle) if args.bundle else None)
    except BundleError as exc:
        raise JobError(redact_text(str(exc), secrets)) from exc
    except (ValueError, OSError) as exc:  # a malformed or unreachable bundle URL
        raise JobError(f"--bundle {redact_uri(args.bundle or '')}: cannot be opened "
                       f"({redact_text(f'{type(exc).__name__}: {exc}', secrets)})") from exc  # fmt: skip
    bundle_shown = redact_uri(str(bundle.uri))
    check_bundle_loads(bundle, bundle_shown)
    kept = kept_schema(specs, checks, args.keep_columns)

    import ray

    from .done import attach_done
    from .sink import AnnotationSink, TableFolders, remove_orphans
    from .stages import CropStage, LoadSettings, ModelStage, SourcesModelStage

    _start_ray(args.verbose)
    # After Ray has started, so that no child process inherits the pipes: the console is copied into the
    # run's log from here on, and (unless --verbose) stripped of the lines that need no action.
    from .console import NO_ACTION_LINES, ConsoleFilter

    console.enter_context(ConsoleFilter(1, patterns=(), copy_to=run_log.fd))
    console.enter_context(ConsoleFilter(2, patterns=() if args.verbose else NO_ACTION_LINES, copy_to=run_log.fd))
    resources = ray.cluster_resources()
    settings = bundle.settings
    effective = resolve_model_flags(args, settings)  # each model flag where given, else the bundle's value
    min_size, max_size = effective["min_size"], effective["max_size"]
    plan = plan_actors(
        resources, num_gpus_per_actor=args.num_gpus_per_actor, concurrency=args.concurrency,
        cpus_per_actor=args.cpus_per_actor, torch_threads=args.torch_threads, batch_size=args.batch_size,
        min_size=min_size, max_size=max_size, load_in=args.load_in,
        shuffles=bool(args.skip_existing) or needs_dedupe(specs),
    )  # fmt: skip
    _wait_for_resources(plan, args.wait_for_resources)
    on_gpu, gpus_per_actor, (pool_min, pool_max) = plan.on_gpu, plan.gpus_per_actor, plan.pool
    torch_threads, batch_size = plan.torch_threads, plan.batch_size
    partitions = args.shuffle_partitions or max(2, int(resources.get("CPU", 1)))

    removed, dead_runs = 0, []
    if tables is None:
        removed = remove_orphans(output, storage, log=_log)
        folders = TableFolders.plain(output, run_id)
    else:
        from img2pose_core.iceberg import remove_dead_runs

        dead_runs = remove_dead_runs(tables, log=_log)
        folders = TableFolders(tables.data_folder("faces", run_id), tables.data_folder("images", run_id))
    done_files: list[str] | None = None
    if args.skip_existing:
        if tables is None:
            done_files = plain_done_files(output, storage, log=_log)
        else:
            from img2pose_core.iceberg import done_files as iceberg_done_files

            done_files = iceberg_done_files(tables)
        _log(f"--skip-existing: {len(done_files)} images file(s) hold the done set; joined with the inputs in "
             f"{partitions} partitions")  # fmt: skip

    predictor_kwargs = {
        "device": "cuda" if on_gpu else "cpu",
        "precision": args.precision,
        "min_size": min_size,
        "max_size": max_size,
        "threshold": effective["threshold"],
        "max_faces": effective["max_faces"],
        "crop_size": args.crops or 112,
        "align_mode": args.align,
        "batch_size": batch_size,
        "compile": args.compile if on_gpu else "off",
    }
    # A local bundle may not exist on other nodes: its reference then names a holder of its files, one
    # actor of this run that keeps them while the driver lives (restarted model actors fetch them
    # again) and that model actors look up by name.
    bundle_uri = str(bundle.uri)
    bundle_for_actors = bundle_ref(bundle, holder=f"img2pose-bundle-{run_id}")
    if bundle_for_actors.holder is not None:
        from .stages import BundleFiles

        # Kept in a variable for the whole run: an actor without a live handle is destroyed.
        bundle_holder = ray.remote(BundleFiles).options(name=bundle_for_actors.holder, num_cpus=0).remote(  # noqa: F841
            bundle_files(bundle))

    form = f"Iceberg {tables.namespace}" if tables is not None else "Parquet"
    _log(
        f"run {run_id}: {len(specs)} input(s) -> {redact_uri(output)} ({form}); model {bundle.model_sha256[:12]} "
        f"({plan.describe()}, batch {batch_size}, "
        f"min/max size {predictor_kwargs['min_size']}/{predictor_kwargs['max_size']}, threshold {effective['threshold']})"
    )
    if args.threshold is None and effective["threshold"] == 0.0:
        # Bundles made before the threshold was part of the rule store 0.0: every detection is kept.
        _log("the bundle's threshold is 0.0, so every detection becomes a face row; pass --threshold 0.8 "
             "(or recreate the bundle with `img2pose bundle create --threshold 0.8`) for confident faces only")
    load = LoadSettings(
        storage=storage, max_pixels=args.max_pixels, keep_bytes=bool(args.crops),
        reduce_for=(predictor_kwargs["min_size"], predictor_kwargs["max_size"]) if args.fast_decode else None,
        read_timeout_s=args.read_timeout, output_root=output, device_decode=args.gpu_decode,
    )  # fmt: skip
    policy = ManifestPolicy(allow_local_files=args.allow_local_files)
    try:
        ds, known_sources, expected_images = _sources_dataset(specs, storage, args.url_column, policy, partitions,
                                                              args.keep_columns)  # fmt: skip
    except OSError as exc:  # an input removed or made unreadable since it was checked
        raise JobError(f"an input could not be listed: {redact_text(f'{type(exc).__name__}: {exc}', secrets)}; "
                       "nothing was written") from exc  # fmt: skip
    sources_per_task = args.sources_per_task
    if plan.load_in == "actor" and known_sources is not None:
        # Few sources: spread them over the actors, and start no actor that would get none.
        pool_max = max(1, min(pool_max, known_sources))
        pool_min = min(pool_min, pool_max)
        sources_per_task = max(1, min(sources_per_task, -(-known_sources // pool_max)))
    if done_files is not None:
        done_fs = storage.fs(done_files[0])[0] if done_files else None
        ds = attach_done(ds, [storage.fs(f)[1] for f in done_files], done_fs, partitions)
    from .progress import ProgressCounter, ProgressDisplay, ray_counter_reader

    progress_name = f"img2pose-progress-{run_id}"
    counter = ray.remote(ProgressCounter).options(name=progress_name, num_cpus=0).remote()
    model_kwargs = {
        "progress": progress_name,
        "bundle": bundle_for_actors,
        "predictor_kwargs": predictor_kwargs, "torch_threads": torch_threads,
        "storage_options": storage.options_for(bundle_uri), "shown_uri": bundle_shown, "keep_bytes": bool(args.crops),
    }  # fmt: skip
    actor_options = {
        "compute": ray.data.ActorPoolStrategy(min_size=pool_min, max_size=pool_max, max_tasks_in_flight_per_actor=2),
        "batch_format": "numpy", "num_gpus": gpus_per_actor or None, "num_cpus": plan.cpus_per_actor,
        # Ray starts a worker with OMP_NUM_THREADS set to its CPU request; the OpenMP runtime reads it
        # when it loads, before torch.set_num_threads, and the model ran 10 % slower than with the
        # variable at torch's thread count (measured in an actor on the development machine). Only
        # where it differs from Ray's: a runtime_env costs a fresh worker process (about 2 s here).
        "runtime_env": ({"env_vars": {"OMP_NUM_THREADS": str(torch_threads)}}
                        if torch_threads and torch_threads != max(int(plan.cpus_per_actor), 1) else None),
    }  # fmt: skip
    if plan.load_in == "actor":
        load = dataclasses.replace(load, rows_per_batch=batch_size)
        ds = ds.map_batches(SourcesModelStage, fn_constructor_kwargs={"load": load, **model_kwargs},
                            batch_size=sources_per_task, **actor_options)  # fmt: skip
    else:
        ds = ds.map_batches(
            _load_udf, fn_kwargs={"settings": load}, batch_size=sources_per_task, batch_format="numpy", num_cpus=1,
        )  # fmt: skip
        ds = ds.map_batches(ModelStage, fn_constructor_kwargs=model_kwargs, batch_size=batch_size, **actor_options)
    if args.crops:
        # Beside CPU actors only the reserve is free (ActorPlan.reserve_cpus): a stage asking 1 CPU
        # would wait for the actors to finish, and its input would pile up meanwhile.
        small = plan.load_in == "actor"
        ds = ds.map_batches(CropStage(output, storage, args.crops), batch_format="pyarrow",
                            num_cpus=0.25 if small else 1, batch_size=64)  # fmt: skip
    sink = AnnotationSink(folders, storage, run_id, bundle.model_sha256, rows_per_file=args.rows_per_file, kept=kept)
    interactive = sys.stderr.isatty()
    display = ProgressDisplay(ray_counter_reader(counter), total=expected_images,
                              interval_s=0.5 if interactive else args.progress_interval, interactive=interactive)
    t0 = time.perf_counter()
    display.start()
    try:
        ds.write_datasink(sink, ray_remote_args={"num_cpus": 0.25})
    except Exception as exc:  # noqa: BLE001 - any failure of the distributed run ends here
        display.stop()
        cause = redact_text(_root_cause(exc), [*args.input, output, *secrets])
        failed = RunManifest(run_id=run_id, status="failed", started_at=started_wall.isoformat(),
                             ended_at=datetime.now(timezone.utc).isoformat(), error=cause,
                             form="iceberg" if tables is not None else "parquet")  # fmt: skip
        try:
            if tables is None:  # this run's own faces files without their images file
                remove_orphans(output, storage, log=_log, run_id=run_id)
        except Exception:  # noqa: BLE001 - the store itself may be what failed; a later run removes them
            pass
        try:
            storage.write_bytes(join_uri(output, "runs", f"{run_id}.failed.json"), failed.to_json())
        except Exception:  # noqa: BLE001 - the store itself may be what failed
            pass
        again = "again with --skip-existing and a new --run-id" if args.run_id else "again with --skip-existing"
        written = ("What was written is consistent" if tables is None
                   else "Nothing was committed to the tables")  # fmt: skip
        raise JobError(f"run {run_id} failed: {cause}. {written}; run the same command {again} to complete it.",
                       exit_code=1) from exc  # fmt: skip
    elapsed = time.perf_counter() - t0
    display.stop()
    totals = sink.totals
    statuses = totals["statuses"]
    images = sum(statuses.values())
    manifest = RunManifest(
        run_id=run_id, status="succeeded", started_at=started_wall.isoformat(), ended_at="",
        form="iceberg" if tables is not None else "parquet", pipeline_s=round(elapsed, 3),
        arguments=_redacted_arguments(vars(args)), inputs=[{"uri": redact_uri(s.uri), "kind": s.kind} for s in specs],
        output=redact_uri(output),
        bundle={"uri": bundle_shown, "name": bundle.name, "digest": bundle.digest, "model_sha256": bundle.model_sha256,
                "license": bundle.license},
        model=dict(predictor_kwargs),
        resources={"gpus_per_actor": gpus_per_actor, "actors": [pool_min, pool_max], "torch_threads": torch_threads,
                   "cpus_per_actor": plan.cpus_per_actor, "load_in": plan.load_in, "shuffle_partitions": partitions},
        versions=_versions(),
        counts={"images": images, "by_status": statuses, "faces": totals["faces"], "skipped": totals["skipped"],
                "not_written": totals["ignored"], "files": totals["files"], "orphans_removed": removed,
                "dead_runs_removed": dead_runs},
        images_per_s=round(images / elapsed, 3) if elapsed > 0 else None,
    )  # fmt: skip
    if tables is not None:
        _commit(tables, manifest, totals, args)
    manifest.ended_at = datetime.now(timezone.utc).isoformat()
    manifest.wall_s = round(time.perf_counter() - wall_start, 3)
    storage.write_bytes(join_uri(output, "runs", f"{run_id}.json"), manifest.to_json())
    _print_summary(manifest)
    return 0


def _check_ray_address(address: str, timeout_s: float = 10.0) -> None:
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


def _start_ray(verbose: bool) -> None:
    """Start or join Ray. Unless ``verbose``, Ray's own INFO logs and block-level progress stay out of the
    console (the job shows its own progress in images); a Ray that cannot start is a JobError."""
    import ray
    from ray.data import DataContext

    _check_ray_address(os.environ.get("RAY_ADDRESS", ""))
    if not verbose:
        # "Token authentication is enabled ... Set RAY_AUTH_MODE=disabled to opt out": the default of a
        # local cluster, which needs no action.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    try:
        ray.init(ignore_reinit_error=True, logging_level="INFO" if verbose else "WARNING", log_to_driver=True)
    except Exception as exc:  # noqa: BLE001 - e.g. "The current node timed out during startup"
        raise JobError(
            f"Ray could not start or be reached ({_root_cause(exc)}). On a loaded machine, run again; to use a "
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


def _open_iceberg(args: argparse.Namespace, output: str, storage: StorageConfig):
    """The run's Iceberg tables (created or evolved), before any work; exit 2 with the cause."""
    from img2pose_core.iceberg import CatalogError, open_catalog, open_tables

    warehouse = join_uri(output, "warehouse")
    if scheme_of(warehouse) == "":
        warehouse = "file://" + warehouse
    try:
        catalog = open_catalog(args.catalog, warehouse, storage.s3_endpoint_url)
        return open_tables(catalog, args.namespace)
    except CatalogError as exc:
        raise JobError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - every catalog fails its own way
        raise JobError(f"--catalog {redact_uri(args.catalog)}: the tables cannot be opened or created "
                       f"({type(exc).__name__}: {redact_text(str(exc), [args.catalog])})") from exc  # fmt: skip


def _commit(tables, manifest: RunManifest, totals: dict, args: argparse.Namespace) -> None:
    """Commit the run's files to the Iceberg tables: faces, images, then the run's row (atomic each)."""
    from img2pose_core.iceberg import commit_run

    ok = int(manifest.counts["by_status"].get("ok", 0))

    def row(ids: dict) -> dict:
        manifest.iceberg = {"catalog": redact_uri(args.catalog), "namespace": tables.namespace,
                            "snapshots": {"faces": ids.get("faces"), "images": ids.get("images")}}  # fmt: skip
        return {
            "run_id": manifest.run_id, "status": manifest.status,
            "started_at": datetime.fromisoformat(manifest.started_at), "ended_at": datetime.now(timezone.utc),
            "images": int(manifest.counts["images"]), "ok": ok, "faces": int(manifest.counts["faces"]),
            "model_sha256": manifest.bundle["model_sha256"], "bundle_digest": manifest.bundle["digest"],
            "manifest": manifest.to_json().decode("utf-8"),
        }  # fmt: skip

    try:
        ids = commit_run(tables, manifest.run_id, totals["faces_files"], totals["images_files"], row)
    except Exception as exc:  # noqa: BLE001 - the catalog refused: nothing of the run is half visible
        raise JobError(f"run {manifest.run_id}: its files are written but the commit failed "
                       f"({type(exc).__name__}: {redact_text(str(exc), [args.catalog])}); run the same command "
                       "again with --skip-existing and a new --run-id", exit_code=1) from exc  # fmt: skip
    manifest.iceberg["snapshots"]["runs"] = ids.get("runs")


def _alive_nodes() -> list[dict[str, float]]:
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def _wait_for_resources(plan: ActorPlan, wait_s: float) -> None:
    """Fail at once (or after ``wait_s`` seconds of polling, for an autoscaler to add nodes) when the
    cluster cannot hold the smallest model pool: Ray Data would otherwise wait forever.

    While it waits, the job asks the autoscaler for the pool (``request_resources``): nothing of the
    run is pending yet, so a worker group that scales from zero would otherwise never grow. The request
    is withdrawn as soon as the wait ends, so that the nodes can scale down again once the run is over.
    """
    nodes = _alive_nodes()
    problems = unmet_needs(plan, nodes)
    if problems and wait_s > 0:
        _log(f"waiting up to {wait_s:g} s for the cluster to hold the model actors: needs {'; '.join(problems)}")
        asked = _request_resources(autoscaler_bundles(plan))
        try:
            deadline = time.monotonic() + wait_s
            while problems and time.monotonic() < deadline:
                time.sleep(min(2.0, max(deadline - time.monotonic(), 0.0)))
                nodes = _alive_nodes()
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
        _log(f"could not ask the autoscaler for nodes ({type(exc).__name__}: {exc}); waiting without asking")
        return False
    if bundles:
        shapes = collections.Counter(json.dumps(b, sort_keys=True) for b in bundles)
        _log("asked the autoscaler for " + " + ".join(f"{n} x {shape}" for shape, n in shapes.items()))
    return True


def _redacted_arguments(arguments: dict) -> dict:
    """The command line as the manifest keeps it: every URI with its secrets redacted."""
    def clean(value):
        if isinstance(value, str):
            return redact_uri(value)
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return {key: clean(value) for key, value in arguments.items()}


def _root_cause(exc: BaseException) -> str:
    """The innermost error of a Ray failure chain, in one line."""
    while True:
        nxt = getattr(exc, "cause", None) or exc.__cause__
        if nxt is None or nxt is exc:
            break
        exc = nxt
    # The first line: Ray 2.60 appends its retry hints below the error's own message.
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:2000]


def _load_udf(batch, settings):
    """Ray task body of the load stage."""
    from .stages import load_images

    yield from load_images(batch, settings)


def _print_summary(manifest: RunManifest) -> None:
    c = manifest.counts
    by_status = ", ".join(f"{k} {v}" for k, v in sorted(c["by_status"].items(), key=lambda kv: (kv[0] != "ok", kv[0])))
    lines = [
        f"run {manifest.run_id} done: pipeline {manifest.pipeline_s:.1f} s, whole command {manifest.wall_s:.1f} s",
        f"  images   {c['images']} ({by_status or 'none'})" + (f", skipped {c['skipped']} already done" if c["skipped"] else ""),
        f"  faces    {c['faces']}",
    ]
    if c.get("not_written"):
        counted = ", ".join(f"{reason} {entry['count']}" for reason, entry in sorted(c["not_written"].items()))
        lines.append(f"  counted  {counted} (not images: no table rows; see runs/{manifest.run_id}.json)")
    lines.append(f"  speed    {manifest.images_per_s} images/s over the pipeline")
    if manifest.iceberg:
        snaps = manifest.iceberg["snapshots"]
        lines.append(f"  tables   {manifest.iceberg['namespace']}.faces/images/runs in {manifest.iceberg['catalog']} "
                     f"(snapshots {snaps.get('faces')}, {snaps.get('images')}, {snaps.get('runs')})")  # fmt: skip
    else:
        lines.append(f"  output   {manifest.output} (faces/{manifest.run_id}/, images/{manifest.run_id}/)")
    lines.append(f"  manifest {manifest.output}/runs/{manifest.run_id}.json")
    print("\n".join(lines), flush=True)
