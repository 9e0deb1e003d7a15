"""Running the annotation job: checks before any work, the Ray Data pipeline, summary and manifest."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from datetime import datetime, timezone
from importlib import metadata

import numpy as np
import pyarrow as pa

from img2pose_core.uris import normalise_local, redact_text, redact_uri, scheme_of

from .inputs import (
    InputError,
    InputSpec,
    ManifestPolicy,
    expand_groups,
    with_choice,
    glob_base,
    is_inside,
    list_prefix,
    needs_dedupe,
    resolve_manifest_entries,
    split_prefix,
    validate_inputs,
)
from .schema import SCHEMA_VERSION
from .storage import StorageConfig, join_uri, with_retries

__all__ = ["JobError", "run_job", "check_output", "read_done_digests"]


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


def check_new_run_id(output: str, run_id: str, storage: StorageConfig) -> None:
    """A run id names one run: refuse one that this output already holds, whatever became of that run."""
    found = [
        name for name in (f"runs/{run_id}.json", f"runs/{run_id}.failed.json", f"images/run_id={run_id}", f"faces/run_id={run_id}")
        if storage.exists(join_uri(output, name))
    ]  # fmt: skip
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


def read_done_digests(output: str, storage: StorageConfig, log=None) -> np.ndarray:
    """Sorted digests of every image URI with an ``ok`` row in OUTPUT/images (any run).

    Only files named as the job names them are read; others under ``images/`` (a user's own file, a
    temporary file of another tool) are reported by name and left alone, and a file of the job's name
    that cannot be read as an images table stops the run with its name.
    """
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from .sink import is_part_file
    from .stages import uri_digest

    fs, root = storage.fs(output)
    images_root = f"{root.rstrip('/')}/images"
    if not with_retries(lambda: fs.exists(images_root), attempts=storage.read_attempts):
        return np.zeros(0, dtype="S16")
    files = sorted(with_retries(lambda: fs.find(images_root), attempts=storage.read_attempts))
    ours = [f for f in files if is_part_file(f[len(images_root) :].lstrip("/"))]
    foreign = [f[len(images_root) :].lstrip("/") for f in files if f not in set(ours)]
    if foreign and log:
        log(f"--skip-existing: {len(foreign)} file(s) under images/ are not the job's and are ignored: "
            f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}")  # fmt: skip
    if not ours:
        return np.zeros(0, dtype="S16")
    try:
        dataset = ds.dataset(ours, filesystem=fs, format="parquet")
        table = dataset.to_table(columns=["image_uri"], filter=ds.field("status") == "ok")
    except Exception:  # noqa: BLE001 - find the file at fault, by name
        parts = []
        for path in ours:
            try:
                with fs.open(path, "rb") as f:
                    part = pq.read_table(f, columns=["image_uri", "status"])
            except Exception as exc:  # noqa: BLE001
                raise JobError(f"--skip-existing: {path} is not a readable images table ({type(exc).__name__}: {exc}); "
                               "move it out of the output or delete it") from exc  # fmt: skip
            parts.append(part.filter(ds.field("status") == "ok").select(["image_uri"]))
        table = pa.concat_tables(parts)
    digests = np.array([uri_digest(u) for u in table["image_uri"].to_pylist()], dtype="S16")
    return np.unique(digests)


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("img2pose-ray", "torch", "torchvision", "ray", "pyarrow", "numpy", "pillow", "fsspec", "s3fs"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _sources_dataset(
    specs: list[InputSpec], storage: StorageConfig, url_column: str, policy: ManifestPolicy, partitions: int
):
    """One Ray dataset of source rows for all inputs; prefixes listed in parallel tasks.

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
            datasets.append(_manifest_dataset(spec, storage, url_column, policy))
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
    if not needs_dedupe(specs):
        return ds
    from ray.data.aggregate import Count, Min
    from ray.data.context import DataContext, ShuffleStrategy

    DataContext.get_current().shuffle_strategy = ShuffleStrategy.HASH_SHUFFLE
    # One partition per CPU of the cluster: Ray's default of 200 costs seconds on a small run, and a
    # partition holds only URIs (about 100 bytes each).
    choices = ds.map_batches(with_choice, batch_format="pyarrow", num_cpus=0.25)
    grouped = choices.groupby("source_uri", num_partitions=partitions).aggregate(Count(), Min("choice"))
    return grouped.map_batches(expand_groups, batch_format="pyarrow", num_cpus=0.25)


def _manifest_dataset(spec: InputSpec, storage: StorageConfig, url_column: str, policy: ManifestPolicy):
    import pyarrow.csv as pacsv
    import ray.data

    fs, path = storage.fs(spec.uri)
    if spec.uri.lower().endswith(".parquet"):
        ds = ray.data.read_parquet(path, filesystem=fs, columns=[url_column])
    else:
        # Every column as text: a column of numbers or dates must not change how URLs are read.
        ds = ray.data.read_csv(path, filesystem=fs, convert_options=pacsv.ConvertOptions(column_types={url_column: pa.string()}))
    manifest_uri = spec.uri

    def to_sources(batch: dict) -> dict:
        return resolve_manifest_entries(batch[url_column], manifest_uri, policy)

    return ds.map_batches(to_sources, batch_format="numpy", batch_size=4096)


def run_job(args: argparse.Namespace) -> int:
    """Validate everything, then run the pipeline; returns the process exit code."""
    from img2pose_core.bundle import BundleError, resolve_bundle

    from .annotate import new_run_id

    started_wall = datetime.now(timezone.utc)
    storage = StorageConfig.from_args(args.s3_endpoint_url)
    output = args.output.rstrip("/") if args.output not in ("/",) else args.output
    if scheme_of(output) in ("", "file"):
        output = normalise_local(output)
    checks = storage.for_checks()
    try:
        specs = validate_inputs(args.input, checks, args.url_column)
    except InputError as exc:
        raise JobError(str(exc)) from exc
    check_output(output, specs, checks)
    run_id = args.run_id or new_run_id()
    check_new_run_id(output, run_id, checks)
    secrets = [args.bundle or "", os.environ.get("IMG2POSE_BUNDLE", "")]
    try:
        bundle = resolve_bundle(args.bundle, storage_options=storage.options_for(args.bundle) if args.bundle else None)
    except BundleError as exc:
        raise JobError(redact_text(str(exc), secrets)) from exc
    except (ValueError, OSError) as exc:  # a malformed or unreachable bundle URL
        raise JobError(f"--bundle {redact_uri(args.bundle or '')}: cannot be opened "
                       f"({redact_text(f'{type(exc).__name__}: {exc}', secrets)})") from exc  # fmt: skip
    bundle_shown = redact_uri(str(bundle.uri))
    check_bundle_loads(bundle, bundle_shown)

    import ray

    from .sink import AnnotationSink, remove_orphans
    from .stages import CropStage, LoadSettings, ModelStage

    ray.init(ignore_reinit_error=True, logging_level="WARNING", log_to_driver=True)
    resources = ray.cluster_resources()
    gpus_in_cluster = float(resources.get("GPU", 0))
    gpus_per_actor = args.num_gpus_per_actor
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus_in_cluster >= 1 else 0.0
    if gpus_per_actor > 0 and gpus_in_cluster == 0:
        _log("warning: --num-gpus-per-actor > 0 but the cluster has no GPU now; actors wait for GPU nodes to join")
    on_gpu = gpus_per_actor > 0
    if args.concurrency:
        pool_min, pool_max = args.concurrency
    elif on_gpu:
        pool_min = pool_max = max(1, int(gpus_in_cluster / gpus_per_actor)) if gpus_in_cluster else 1
    else:
        pool_min = pool_max = 1
    batch_size = args.batch_size or (16 if on_gpu else 4)
    torch_threads = None
    if not on_gpu:
        cpus = int(resources.get("CPU", os.cpu_count() or 1))
        torch_threads = args.torch_threads or max(1, cpus // max(pool_max, 1))

    removed = remove_orphans(output, storage, log=_log)
    done = read_done_digests(output, storage, log=_log) if args.skip_existing else None
    if done is not None:
        _log(f"--skip-existing: {len(done)} images already have an ok row")

    settings = bundle.settings
    predictor_kwargs = {
        "device": "cuda" if on_gpu else "cpu",
        "precision": args.precision,
        "min_size": args.min_size or settings.min_size,
        "max_size": args.max_size or settings.max_size,
        "threshold": args.threshold,
        "max_faces": args.max_faces,
        "crop_size": args.crops or 112,
        "align_mode": args.align,
        "batch_size": batch_size,
        "compile": bool(args.compile and on_gpu),
    }
    bundle_files = None
    bundle_uri = str(bundle.uri)
    if scheme_of(bundle_uri) in ("", "file"):
        # A local bundle may not exist on other nodes: ship its files through the object store, as
        # one object the driver holds for the whole run (so restarted actors can still fetch it),
        # not inside every actor's constructor arguments. Only the files bundle.json names travel.
        names = [entry["path"] for entry in bundle.manifest["files"].values()] + ["bundle.json"]
        bundle_files = ray.put({name: (bundle.root / name).read_bytes() for name in names})

    _log(
        f"run {run_id}: {len(specs)} input(s) -> {redact_uri(output)}; model {bundle.model_sha256[:12]} "
        f"({'GPU x%g' % gpus_per_actor if on_gpu else 'CPU'}, actors {pool_min}..{pool_max}, batch {batch_size}, "
        f"min/max size {predictor_kwargs['min_size']}/{predictor_kwargs['max_size']}, threshold {args.threshold})"
    )
    load = LoadSettings(
        storage=storage, max_pixels=args.max_pixels, keep_bytes=bool(args.crops),
        reduce_for=(predictor_kwargs["min_size"], predictor_kwargs["max_size"]) if args.fast_decode else None,
        read_timeout_s=args.read_timeout, output_root=output,
    )  # fmt: skip
    done_ref = ray.put(done) if done is not None else None
    policy = ManifestPolicy(allow_local_files=args.allow_local_files)
    ds = _sources_dataset(specs, storage, args.url_column, policy, partitions=max(1, int(resources.get("CPU", 1))))
    ds = ds.map_batches(
        _load_udf, fn_kwargs={"settings": load, "done": done_ref}, batch_size=args.sources_per_task,
        batch_format="numpy", num_cpus=1,
    )  # fmt: skip
    ds = ds.map_batches(
        ModelStage,
        fn_constructor_kwargs={
            "bundle_uri": bundle_uri, "bundle_files": bundle_files, "bundle_digest": bundle.digest,
            "predictor_kwargs": predictor_kwargs, "torch_threads": torch_threads,
            "storage_options": storage.options_for(bundle_uri), "shown_uri": bundle_shown,
        },
        compute=ray.data.ActorPoolStrategy(min_size=pool_min, max_size=pool_max, max_tasks_in_flight_per_actor=2),
        batch_size=batch_size, batch_format="numpy", num_gpus=gpus_per_actor or None, num_cpus=args.cpus_per_actor,
    )  # fmt: skip
    if args.crops:
        ds = ds.map_batches(CropStage(output, storage, args.crops), batch_format="pyarrow", num_cpus=1, batch_size=64)
    sink = AnnotationSink(output, storage, run_id, bundle.model_sha256, rows_per_file=args.rows_per_file)
    t0 = time.perf_counter()
    try:
        ds.write_datasink(sink)
    except Exception as exc:  # noqa: BLE001 - any failure of the distributed run ends here
        cause = redact_text(_root_cause(exc), [*args.input, output, *secrets])
        failed = {"run_id": run_id, "status": "failed", "started_at": started_wall.isoformat(),
                  "ended_at": datetime.now(timezone.utc).isoformat(), "error": cause}  # fmt: skip
        try:
            storage.write_bytes(join_uri(output, "runs", f"{run_id}.failed.json"), json.dumps(failed, indent=2).encode())
        except Exception:  # noqa: BLE001 - the store itself may be what failed
            pass
        again = "again with --skip-existing and a new --run-id" if args.run_id else "again with --skip-existing"
        raise JobError(
            f"run {run_id} failed: {cause}. What was written is consistent; run the same command {again} "
            "to complete it.",
            exit_code=1,
        ) from exc
    elapsed = time.perf_counter() - t0
    totals = sink.totals
    statuses = totals["statuses"]
    images = sum(statuses.values())
    manifest = {
        "run_id": run_id,
        "status": "succeeded",
        "schema_version": SCHEMA_VERSION,
        "started_at": started_wall.isoformat(),
        "ended_at": datetime.now(timezone.utc).isoformat(),
        "duration_s": round(elapsed, 3),
        "arguments": _redacted_arguments(vars(args)),
        "inputs": [{"uri": redact_uri(s.uri), "kind": s.kind} for s in specs],
        "output": redact_uri(output),
        "bundle": {"uri": bundle_shown, "name": bundle.name, "digest": bundle.digest,
                   "model_sha256": bundle.model_sha256, "license": bundle.license},
        "model": {k: v for k, v in predictor_kwargs.items()},
        "resources": {"gpus_per_actor": gpus_per_actor, "actors": [pool_min, pool_max], "torch_threads": torch_threads},
        "versions": _versions(),
        "counts": {
            "images": images, "by_status": statuses, "faces": totals["faces"], "skipped": totals["skipped"],
            "not_written": totals["ignored"], "files": totals["files"], "orphans_removed": removed,
        },
        "images_per_s": round(images / elapsed, 3) if elapsed > 0 else None,
    }  # fmt: skip
    storage.write_bytes(join_uri(output, "runs", f"{run_id}.json"), json.dumps(manifest, indent=2, default=str).encode())
    _print_summary(manifest)
    return 0


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


def _load_udf(batch, settings, done):
    """Ray task body of the load stage (``done`` may arrive as an object reference)."""
    import ray

    from .stages import load_images

    digests = ray.get(done) if isinstance(done, ray.ObjectRef) else done
    yield from load_images(batch, settings, digests)


def _print_summary(manifest: dict) -> None:
    c = manifest["counts"]
    by_status = ", ".join(f"{k} {v}" for k, v in sorted(c["by_status"].items(), key=lambda kv: (kv[0] != "ok", kv[0])))
    lines = [
        f"run {manifest['run_id']} done in {manifest['duration_s']:.1f} s",
        f"  images   {c['images']} ({by_status or 'none'})" + (f", skipped {c['skipped']} already done" if c["skipped"] else ""),
        f"  faces    {c['faces']}",
    ]
    if c.get("not_written"):
        counted = ", ".join(f"{reason} {entry['count']}" for reason, entry in sorted(c["not_written"].items()))
        lines.append(f"  counted  {counted} (not images: no table rows; see runs/{manifest['run_id']}.json)")
    lines += [
        f"  speed    {manifest['images_per_s']} images/s",
        f"  output   {manifest['output']} (faces/, images/ under run_id={manifest['run_id']}; runs/{manifest['run_id']}.json)",
    ]  # fmt: skip
    print("\n".join(lines), flush=True)
