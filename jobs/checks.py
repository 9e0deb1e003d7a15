"""The checks before any work: the output (not inside an input, writable, of the current layout), the
run id (new), the bundle (its model loads), and what the job reads of the output for ``--skip-existing``
and ``--keep-columns``. Each failure is a :class:`~jobs.errors.JobError` saying what to fix."""

from __future__ import annotations

import uuid

import pyarrow as pa

from img2pose_core.output import LEGACY_PARTITION
from img2pose_core.storage import StorageConfig, with_retries
from img2pose_core.uris import join_uri, redact_text, redact_uri

from .errors import JobError
from .inputs import InputSpec, glob_base, is_inside, uri_of

__all__ = ["check_local_places", "check_output", "check_new_run_id", "check_bundle_loads", "check_layout", "plain_done_files", "kept_schema"]


def check_local_places() -> None:
    """This machine's own writable places, before any work: the temp folder (the run's log, downloads) and
    the cache (bundles fetched or shipped to actors). A place that cannot be written fails now, naming it
    and how to move it, instead of minutes into the run inside a Ray worker."""
    import os
    import tempfile
    from pathlib import Path

    from img2pose_core.bundle.cache import default_cache_dir

    places = [
        ("the temp folder", Path(tempfile.gettempdir()), "set TMPDIR to a writable folder"),
        ("the cache", default_cache_dir(), "set IMG2POSE_CACHE to a writable folder"),
    ]
    for what, folder, fix in places:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle, probe = tempfile.mkstemp(prefix=".img2pose-write-probe-", dir=folder)
            try:
                os.write(handle, b"probe")
            finally:
                os.close(handle)
                os.unlink(probe)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise JobError(f"{what} {folder} cannot be written ({reason}): {fix}") from exc


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
