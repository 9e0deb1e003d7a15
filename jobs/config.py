"""The job's configuration: made once from the command line (``jobs.annotate.parse_args``), typed, and
passed to every part of the run instead of the parser's namespace."""

from __future__ import annotations

import argparse
import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

__all__ = ["JobConfig", "new_run_id"]


def new_run_id() -> str:
    """A run id: the UTC time of the start and a random suffix (``20261201T020004Z-1a2b3c``)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class JobConfig:
    """Every flag of ``jobs/annotate.py``, by its parser name (docs: ``annotate.py --help``)."""

    # inputs and output
    input: list[str]
    output: str
    url_column: str = "url"
    allow_local_files: bool = False
    read_timeout: float = 180.0
    max_shard_bytes: int = 1 << 30  # a shard is read whole into one task's memory (--max-shard-bytes)
    s3_endpoint_url: str | None = None
    skip_existing: bool = False
    run_id: str | None = None
    allow_concurrent_runs: bool = False
    crops: int | None = None
    align: str = "pose"
    rows_per_file: int = 5000
    flush_interval: float = 60.0
    keep_columns: list[str] = field(default_factory=list)
    # Iceberg tables
    catalog: str | None = None
    namespace: str = "img2pose"
    # model (None: the bundle's value)
    bundle: str | None = None
    min_size: int | None = None
    max_size: int | None = None
    threshold: float | None = None
    max_faces: int | None = None
    precision: str = "fp32"
    fast_decode: bool = False
    gpu_decode: bool = False
    compile: str = "off"
    max_pixels: int = 100_000_000
    # console
    progress_interval: float = 30.0
    verbose: bool = False
    # resources
    batch_size: int | None = None
    num_gpus_per_actor: float | None = None
    concurrency: tuple[int, int] | None = None
    cpus_per_actor: float | None = None
    torch_threads: int | None = None
    load_in: str = "auto"
    wait_for_resources: float = 0.0
    sources_per_task: int = 16
    shuffle_partitions: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "JobConfig":
        """The configuration of parsed flags; a flag the parser has and this class lacks is an error, so
        the two cannot drift."""
        values = vars(args)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise TypeError(f"JobConfig lacks the parser's flags {unknown}")
        return cls(**{name: values[name] for name in names if name in values})

    def arguments(self) -> dict[str, Any]:
        """The flags as a plain dict (for the run manifest)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
