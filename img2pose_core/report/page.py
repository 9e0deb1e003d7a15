"""The report's page: one function per section (the numbers of :mod:`.queries` as HTML, with the plots
of :mod:`.plots` embedded), and the page around them.

Every picture is embedded as a ``data:`` URI; the page has no script and no external reference.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from . import plots
from .queries import (
    ANGLE_STEP, ANGLES, FACES_CAP, HEAT_LIMIT, HEAT_STEP, SCORE_BINS, SIZES_PER_OCTAVE,
    AngleStats, RunRow, RunsOverview, Scores, Sizes, StatusCounts, Summary,
)  # fmt: skip
from .samples import Crop, RenderedSample

__all__ = [
    "SECTIONS",
    "PageFiles",
    "angles_section",
    "crops_section",
    "face_sizes_section",
    "faces_per_image_section",
    "document",
    "plural",
    "renders_section",
    "runs_phrase",
    "runs_section",
    "scope_html",
    "scores_section",
    "status_section",
    "summary_section",
    "yaw_pitch_section",
]

# (id, heading) of every section of the page, in order.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Summary"),
    ("runs", "Runs"),
    ("status", "Images by status"),
    ("faces-per-image", "Faces per image"),
    ("angles", "Yaw, pitch and roll"),
    ("yaw-pitch", "Yaw × pitch"),
    ("scores", "Scores"),
    ("face-sizes", "Face sizes"),
    ("crops", "Aligned crops"),
    ("renders", "Rendered samples"),
)

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:0 1.2em 3em;color:#222}
h1{font-size:1.5em;margin:1em 0 .2em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.sub{color:#666;margin:0 0 1em}nav a{margin-right:.9em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td{font-variant-numeric:tabular-nums}
img.plot{max-width:100%;height:auto}.note{color:#666}
.grid{display:flex;flex-wrap:wrap;gap:.6em}.grid figure{margin:0;font-size:.78em;color:#444}
.crops figure{width:120px}.crops img{width:112px;height:112px;image-rendering:auto}
.renders figure{max-width:520px}.renders img{max-width:100%;height:auto;border:1px solid #ddd}
code{font-size:.9em}
"""


# --- Building blocks --------------------------------------------------------------------------------
def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not np.isfinite(value):
        return "–"
    if digits:
        return f"{float(value):,.{digits}f}"
    return f"{int(value):,}"


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; ``rows`` cells must already be escaped."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    klass = f' class="{cls}"' if cls else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _img(mime: str, data: bytes, alt: str, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f'<img{klass} src="{_data_uri(mime, data)}" alt="{_esc(alt)}" />'


def _figure(image: str, caption: str) -> str:
    return f"<figure>{image}<figcaption>{_esc(caption)}</figcaption></figure>"


def _note_list(title: str, items: Iterable[str]) -> str:
    return f'<p class="note">{title}</p><ul>' + "".join(f"<li>{_esc(m)}</li>" for m in items) + "</ul>"


@dataclass
class PageFiles:
    """The folder beside the page (``<stem>_files/``) and the PNG files written into it, in order."""

    folder: Path
    written: list[Path] = field(default_factory=list)

    def write(self, name: str, data: bytes) -> Path:
        """Write ``data`` as ``folder/name`` and record it."""
        path = self.folder / name
        path.write_bytes(data)
        self.written.append(path)
        return path

    def plot(self, name: str, data: bytes, alt: str) -> str:
        """Write the plot ``name``.png and return its embedded ``<img>``."""
        self.write(f"{name}.png", data)
        return _img("image/png", data, alt, "plot")


# --- Sections ---------------------------------------------------------------------------------------
def scope_html(run_id: str | None) -> str:
    """What the rows are: one run's, or the latest state of every image."""
    return f"run <code>{_esc(run_id)}</code>" if run_id else "latest state of every image over all runs"


def plural(count: int, noun: str) -> str:
    """``1 run``, ``3 runs``, ``1,200 images``."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def runs_phrase(run_ids: list[str]) -> str:
    """The runs of a report's scope, oldest first, in words: ``3 runs (latest: R)``, ``1 run (R)``."""
    if not run_ids:
        return "no run"
    return plural(len(run_ids), "run") + (f" (latest: {run_ids[-1]})" if len(run_ids) > 1 else f" ({run_ids[0]})")


def summary_section(s: Summary, scope: str) -> str:
    """Counts of images, faces, crops and runs, and the models that wrote the rows."""
    rows = [
        ["images", _num(s.images)],
        ["… run through the model (ok)", _num(s.ok)],
        ["… failed (other statuses)", _num(s.images - s.ok)],
        ["… with at least one face", _num(s.with_faces)],
        ["faces", _num(s.faces)],
        ["faces per ok image (mean)", _num(s.faces / s.ok, 2) if s.ok else "–"],
        ["aligned crops", _num(s.crops)],
        ["runs", _esc(runs_phrase(s.output_runs))],
        ["… holding these rows", _num(s.runs)],
        ["rows written", f"{_esc(s.first)} … {_esc(s.last)}" if s.first else "–"],
        ["model (weights sha256)", "<br />".join(f"<code>{_esc(m)}</code>" for m in s.models) or "–"],
    ]
    if s.faces != s.faces_in_images:
        rows.append(["note", _esc(f"num_faces sums to {s.faces_in_images} but the faces table has {s.faces} rows")])
    return f"<p>Scope: {scope}.</p>" + _table(["", "value"], [[_esc(a), b] for a, b in rows])


def _run_cells(r: RunRow) -> list[str]:
    bundle = f" <code>{_esc(r.bundle_sha256)}</code>" if r.bundle_sha256 is not None else ""
    error = f"<br /><span class=\"note\">{_esc(r.error)}</span>" if r.error else ""
    return [
        f"<code>{_esc(r.run_id)}</code>", _esc(r.status), _esc(r.started_at), _num(r.duration_s, 1),
        _num(r.images), _num(r.faces), _num(r.skipped), _esc(r.images_per_s), _esc(r.by_status),
        _esc(r.bundle_name) + bundle, _esc(r.settings) + error,
    ]  # fmt: skip


def runs_section(o: RunsOverview) -> str:
    """A table of the run manifests, and the throughput of them all."""
    if not o.rows:
        return '<p class="note">No run manifest (runs/*.json) found for this scope.</p>'
    overall = f"{o.images / o.seconds:.3f}" if o.seconds > 0 else "–"
    return (
        f"<p>{plural(len(o.rows), 'run manifest')} under <code>runs/</code>; together {_num(o.images)} images in "
        f"{_num(o.seconds, 1)} s of run time ({overall} images/s).</p>"
        + _table(["run", "status", "started", "duration (s)", "images", "faces", "skipped", "images/s",
                  "by status", "bundle", "model"], [_run_cells(r) for r in o.rows])  # fmt: skip
    )


def status_section(c: StatusCounts, files: PageFiles) -> str:
    """Images by status (plot and table) and the most frequent errors."""
    body = files.plot("status", plots.plot_status(c.statuses), "images by status")
    body += _table(["status", "images"], [[_esc(s), _num(n)] for s, n in c.statuses])
    if c.errors:
        body += "<h3>Top errors</h3>" + _table(
            ["status", "error", "images"],
            [[_esc(s), _esc((e or "")[:400]), _num(n)] for s, e, n in c.errors],
        )
    else:
        body += '<p class="note">No errors.</p>'
    return body


def faces_per_image_section(rows: list[tuple], files: PageFiles) -> str:
    """The plot of faces per ok image."""
    return files.plot("faces_per_image", plots.plot_faces_per_image(rows, FACES_CAP), "faces per image")


def angles_section(a: AngleStats, files: PageFiles) -> str:
    """Histograms of yaw, pitch and roll, and their means and standard deviations."""
    stats = a.mean_std
    body = files.plot("angles", plots.plot_angles(a.histograms, ANGLE_STEP), "histograms of yaw, pitch and roll")
    body += _table(
        ["", "mean (°)", "std (°)"],
        [[n, _num(stats[2 * i], 1), _num(stats[2 * i + 1], 1)] for i, n in enumerate(ANGLES)],
    )
    body += ('<p class="note">Degrees, the authors\' convention (docs/poses.md): yaw turns left/right, pitch '
             "nods, roll tilts; bins of 5°.</p>")  # fmt: skip
    return body


def yaw_pitch_section(cells: list[tuple], files: PageFiles) -> str:
    """The yaw × pitch heat map."""
    heat = plots.plot_yaw_pitch(cells, HEAT_STEP, HEAT_LIMIT)
    return files.plot("yaw_pitch", heat, "yaw by pitch heat map") + (
        f'<p class="note">Faces per {HEAT_STEP:.0f}°×{HEAT_STEP:.0f}° cell (log colour scale); angles beyond '
        f"±{HEAT_LIMIT:.0f}° are counted in the edge cells.</p>"
    )


def scores_section(s: Scores, files: PageFiles) -> str:
    """The score histogram, with min, median and max."""
    quant = s.quantiles
    return files.plot("scores", plots.plot_scores(s.bins, SCORE_BINS), "score distribution") + (
        f'<p class="note">min {_num(quant[0], 3)}, median {_num(quant[1], 3)}, max {_num(quant[2], 3)}.</p>'
        if quant and quant[0] is not None else ""
    )  # fmt: skip


def face_sizes_section(s: Sizes, files: PageFiles) -> str:
    """Histograms of box width and height, and their 5 %, median and 95 % quantiles."""
    body = files.plot("face_sizes", plots.plot_sizes(s.histograms, SIZES_PER_OCTAVE), "face box width and height")
    sq = s.quantiles
    if sq and sq[0]:
        body += _table(
            ["", "5 %", "median", "95 %"],
            [[n, *(_num(v, 1) for v in vals)] for n, vals in (("width (px)", sq[0]), ("height (px)", sq[1]))],
        )
    return body


def crops_section(crops: list[Crop], missing: list[str], total: int) -> str:
    """A grid of the sampled crops (``total`` in the rows), and those that could not be read."""
    if crops:
        figures = "".join(_figure(_img(c.mime, c.data, f"aligned crop, {c.caption}"), c.caption) for c in crops)
        body = f"<p>{len(crops)} of {_num(total)} crops (a repeatable sample; score · yaw pitch roll in degrees).</p>"
        body += f'<div class="grid crops">{figures}</div>'
    elif total == 0:
        body = '<p class="note">No aligned crops in these rows (run the job with <code>--crops 112</code> or 224).</p>'
    else:
        body = '<p class="note">No crop could be read.</p>'
    if missing:
        body += _note_list("Unreadable crops:", missing[:10])
    return body


def renders_section(samples: Iterable[RenderedSample], files: PageFiles, labels: int) -> tuple[str, int, list[str]]:
    """A grid of the drawn samples, each also written as ``render_<i>.png``: (HTML, images drawn, skipped)."""
    figures, skipped = [], []
    for i, item in enumerate(samples):
        if item.image is None:
            skipped.append(f"{item.uri}: {item.message}")
            continue
        buf = io.BytesIO()
        item.image.save(buf, format="PNG", optimize=True)
        files.write(f"render_{i}.png", buf.getvalue())
        caption = f"{item.uri} — {plural(item.faces, 'face')}, run {item.run_id}"
        figures.append(_figure(_img("image/png", buf.getvalue(), f"rendered faces of image {i}"), caption))
    if figures:
        body = ("<p>Images with faces, drawn from the stored rows: box, the 5 landmarks, the pose axes (x red, y green, "
                "z blue: the reference head's axes, projected in the network's camera) and, for the "
                f"{labels} best-scoring faces of each image, score and yaw/pitch/roll.</p>"
                f'<div class="grid renders">{"".join(figures)}</div>')  # fmt: skip
    else:
        body = '<p class="note">No image with faces could be drawn.</p>'
    if skipped:
        body += _note_list("Skipped:", skipped)
    return body, len(figures), skipped


# --- The page ---------------------------------------------------------------------------------------
def document(output: str, scope: str, sections: dict[str, str], generated: str, seconds: float) -> str:
    """The whole document: header, navigation and every section of ``SECTIONS`` in order."""
    nav = "".join(f'<a href="#{sid}">{_esc(title)}</a>' for sid, title in SECTIONS)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8" />',
        '<meta name="viewport" content="width=device-width, initial-scale=1" />',
        f"<title>img2pose report: {_esc(output)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>img2pose report</h1><p class=\"sub\"><code>{_esc(output)}</code> · {scope} · generated {generated} "
        f"in {seconds:.1f} s</p>",
        f"<nav>{nav}</nav>",
    ]
    for sid, title in SECTIONS:
        parts.append(f'<section id="{sid}"><h2>{_esc(title)}</h2>{sections[sid]}</section>')
    parts.append("</body></html>\n")
    return "\n".join(parts)
