"""``build_report``: the run's tables queried section by section, and the page written beside its plots."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..storage import write_atomic
from . import page
from . import queries
from .samples import read_crops, render_sample

__all__ = ["ReportResult", "build_report"]

_PLOT_NAMES = ("status", "faces_per_image", "angles", "yaw_pitch", "scores", "face_sizes")
_OWN_FILE = re.compile(r"^(?:%s|render_\d+)\.png$" % "|".join(_PLOT_NAMES))


@dataclass
class ReportResult:
    """What :func:`build_report` wrote: the page, its files, its headline figures and what it skipped."""

    html_path: Path
    files_dir: Path
    files: list[Path] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


@dataclass
class _Options:
    crops: int
    renders: int
    seed: str
    render_max_side: int
    render_labels: int
    top_errors: int


def _files_dir(out_html: Path) -> Path:
    """``<stem>_files/`` beside the page, emptied of the files an earlier report wrote (and only those)."""
    files_dir = out_html.with_name(f"{out_html.stem}_files")
    files_dir.mkdir(parents=True, exist_ok=True)
    for stale in files_dir.iterdir():
        if stale.is_file() and _OWN_FILE.match(stale.name):
            stale.unlink()
    return files_dir


def _sections(tables: queries.OutputTables, result: ReportResult, opts: _Options) -> dict[str, str]:
    """The body of every section, in page order (the plots and renders are written as they come)."""
    files = page.PageFiles(result.files_dir, result.files)
    summary = queries.summary(tables)
    # runs: the runs of the output (of the scope); runs_with_rows: those whose rows are the latest state.
    result.figures.update(images=summary.images, ok=summary.ok, faces=summary.faces, runs=len(summary.output_runs),
                          run_ids=summary.output_runs, runs_with_rows=summary.runs, crops=summary.crops)  # fmt: skip
    sections = {"summary": page.summary_section(summary, page.scope_html(tables.run_id))}
    result.figures["manifests"] = len(tables.runs)
    sections["runs"] = page.runs_section(queries.runs_overview(tables.runs))
    sections["status"] = page.status_section(queries.status_counts(tables, opts.top_errors), files)
    sections["faces-per-image"] = page.faces_per_image_section(queries.faces_per_image(tables), files)
    sections["angles"] = page.angles_section(queries.angle_stats(tables), files)
    sections["yaw-pitch"] = page.yaw_pitch_section(queries.yaw_pitch_cells(tables), files)
    sections["scores"] = page.scores_section(queries.scores(tables), files)
    sections["face-sizes"] = page.face_sizes_section(queries.face_sizes(tables), files)

    crop_rows = queries.crop_sample(tables, opts.crops, opts.seed) if opts.crops > 0 else []
    crops, missing = read_crops(crop_rows, tables.s3_endpoint_url)
    sections["crops"] = page.crops_section(crops, missing, summary.crops)
    result.skipped.extend(missing)
    result.figures["crops_shown"] = len(crops)

    samples = render_sample(
        tables, opts.renders, seed=opts.seed, max_side=opts.render_max_side,
        min_side=opts.render_max_side * 3 // 4, max_labels=opts.render_labels,
    ) if opts.renders > 0 else []  # fmt: skip
    sections["renders"], drawn, skipped = page.renders_section(samples, files, opts.render_labels)
    result.skipped.extend(skipped)
    result.figures["renders_shown"] = drawn
    return sections


def build_report(
    output: str,
    out_html: str | Path,
    *,
    run_id: str | None = None,
    s3_endpoint_url: str | None = None,
    catalog: str | None = None,
    namespace: str = "img2pose",
    crops: int = 24,
    renders: int = 6,
    seed: str = "0",
    render_max_side: int = 640,
    render_labels: int = 8,
    top_errors: int = 10,
) -> ReportResult:
    """Write the report of ``output`` to ``out_html`` and its plots to ``<stem>_files/``."""
    started = time.perf_counter()
    tables = queries.OutputTables.open(output, run_id=run_id, s3_endpoint_url=s3_endpoint_url, catalog=catalog,
                                       namespace=namespace)  # fmt: skip
    out_html = Path(out_html)
    result = ReportResult(html_path=out_html, files_dir=_files_dir(out_html))
    opts = _Options(crops=crops, renders=renders, seed=seed, render_max_side=render_max_side,
                    render_labels=render_labels, top_errors=top_errors)  # fmt: skip
    sections = _sections(tables, result, opts)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    seconds = time.perf_counter() - started
    text = page.document(output, page.scope_html(tables.run_id), sections, generated, seconds)
    # Written aside and renamed, so that a reader never sees half a page.
    write_atomic(out_html, text.encode("utf-8"), fsync=False)
    return result
