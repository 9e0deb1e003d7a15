"""A self-contained HTML report of an annotation run's output, and samples of its faces drawn.

The job's tables (``OUTPUT/faces``, ``OUTPUT/images``: Hive-partitioned Parquet, see ``docs/schema.md``)
are opened as pyarrow datasets and queried with DuckDB, which scans them lazily: every figure is an
aggregate computed in SQL (histogram bins, counts), so the report of a large output reads only the
columns it needs and never holds the faces in memory. Plots are drawn with Matplotlib's Agg canvas and
embedded as base64 PNG (also written beside the page, ``<name>_files/*.png``); aligned crops are
embedded as JPEG, and a few images are rendered with their stored poses (:mod:`img2pose_core.render`).
The page has no script and no external reference.

By default the report shows the *current state* of every image: the row of its latest run (run ids
sort by time), as ``docs/schema.md`` says; with ``run_id`` only that run's rows.

The modules: :mod:`.queries` (the tables and each section's numbers), :mod:`.plots` (the figures),
:mod:`.page` (each section's HTML and the page), :mod:`.samples` (crops and drawn images),
:mod:`.storage` (reading the URIs the rows hold) and :mod:`.build` (``build_report``).
"""

from __future__ import annotations

from ..output import storage_options
from .build import ReportResult, build_report
from .page import SECTIONS, plural, runs_phrase
from .queries import OutputTables, ReportError
from .samples import RenderedSample, render_sample
from .storage import read_uri_bytes, split_shard_uri

__all__ = [
    "SECTIONS",
    "OutputTables",
    "RenderedSample",
    "ReportError",
    "ReportResult",
    "build_report",
    "plural",
    "read_uri_bytes",
    "render_sample",
    "runs_phrase",
    "split_shard_uri",
    "storage_options",
]
