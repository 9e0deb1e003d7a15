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
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import tarfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .output import filesystem, storage_options

__all__ = [
    "SECTIONS",
    "OutputTables",
    "RenderedSample",
    "ReportError",
    "ReportResult",
    "build_report",
    "read_uri_bytes",
    "render_sample",
    "split_shard_uri",
    "storage_options",
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

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_PLOT_NAMES = ("status", "faces_per_image", "angles", "yaw_pitch", "scores", "face_sizes")
_OWN_FILE = re.compile(r"^(?:%s|render_\d+)\.png$" % "|".join(_PLOT_NAMES))


class ReportError(Exception):
    """An output that cannot be reported on (missing tables, unknown run); the message says why."""


# --- Storage ----------------------------------------------------------------------------------------
def _fs(uri: str, s3_endpoint_url: str | None = None):
    return filesystem(uri, s3_endpoint_url)


def split_shard_uri(uri: str) -> tuple[str, str | None]:
    """``SHARD.tar#member`` → (shard URI, member); any other URI → (uri, None)."""
    marker = uri.lower().rfind(".tar#")
    if marker < 0:
        return uri, None
    return uri[: marker + 4], uri[marker + 5 :]


def read_uri_bytes(uri: str, s3_endpoint_url: str | None = None) -> bytes:
    """The bytes of ``image_uri`` as the job wrote it: a local path, an fsspec URL, or a tar shard member."""
    shard, member = split_shard_uri(uri)
    fs, path = _fs(shard, s3_endpoint_url)
    if member is None:
        return fs.cat_file(path)
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        try:
            info = tar.getmember(member)
        except KeyError:
            raise FileNotFoundError(f"no member {member!r} in {shard}") from None
        extracted = tar.extractfile(info) if info.isfile() else None
        if extracted is None:
            raise FileNotFoundError(f"{member!r} in {shard} is not a file")
        return extracted.read()


# --- The tables -------------------------------------------------------------------------------------
@dataclass
class OutputTables:
    """A run output opened for queries (:func:`img2pose_core.output.open_tables`, either form), with two
    more views: ``sel_images`` (one row per image: its latest state, or its row of ``run_id``) and
    ``sel_faces`` (the faces of those rows)."""

    output: str
    run_id: str | None
    con: Any  # duckdb.DuckDBPyConnection
    runs: list[dict]
    s3_endpoint_url: str | None = None

    @classmethod
    def open(
        cls, output: str, *, run_id: str | None = None, s3_endpoint_url: str | None = None,
        catalog: str | None = None, namespace: str = "img2pose",
    ) -> "OutputTables":  # fmt: skip
        from dataclasses import asdict

        from .output import OutputError, open_tables, read_run_manifests

        output = str(output).rstrip("/") or "/"
        try:
            con = open_tables(output, catalog=catalog, namespace=namespace, s3_endpoint_url=s3_endpoint_url)
        except OutputError as exc:
            raise ReportError(str(exc)) from exc
        except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise ReportError(f"{output}: cannot read the tables ({exc})") from exc
        if run_id is not None:
            known = [r for (r,) in con.execute("select distinct run_id from images order by 1").fetchall()]
            if run_id not in known:
                shown = ", ".join(known[-10:]) or "none"
                raise ReportError(f"{output}: no run {run_id!r} in the images table (runs: {shown})")
            literal = "'" + run_id.replace("'", "''") + "'"  # a view cannot take parameters; a known run id
            con.execute(f"create temp view sel_images as select * from images where run_id = {literal}")
            con.execute(
                "create temp view sel_faces as select f.* from faces f semi join sel_images i "
                "on f.image_uri = i.image_uri and f.run_id = i.run_id"
            )
        else:
            con.execute("create temp view sel_images as select * from latest_images")
            con.execute("create temp view sel_faces as select * from latest_faces")
        manifests = read_run_manifests(output, s3_endpoint_url=s3_endpoint_url) if not catalog else [
            m for m in _iceberg_manifests(catalog, namespace, s3_endpoint_url)
        ]  # fmt: skip
        runs = [asdict(m) for m in manifests if run_id is None or m.run_id == run_id]
        for doc in runs:  # the report's figures read these names
            doc["duration_s"] = doc.get("pipeline_s")
        return cls(output=output, run_id=run_id, con=con, runs=runs, s3_endpoint_url=s3_endpoint_url)

    def rows(self, sql: str, params: list | None = None) -> list[tuple]:
        return self.con.execute(sql, params or []).fetchall()

    def one(self, sql: str, params: list | None = None):
        rows = self.rows(sql, params)  # fetched to the end: DuckDB wants a result finished before the next
        return rows[0] if rows else None


def _iceberg_manifests(catalog: str, namespace: str, s3_endpoint_url: str | None):
    from .iceberg import open_catalog, open_tables, runs_rows
    from .output import RunManifest

    tables = open_tables(open_catalog(catalog, None, s3_endpoint_url), namespace, create=False)
    return [RunManifest.from_dict(d) for d in runs_rows(tables)]


# --- Rendered samples -------------------------------------------------------------------------------
@dataclass
class RenderedSample:
    """One image of a sample: drawn (``image``) or skipped (``message`` says why)."""

    uri: str
    run_id: str
    key: str  # file name stem: the image's sha256, 16 hex digits
    faces: int
    image: Any = None  # PIL.Image.Image
    message: str | None = None


def render_sample(
    tables: OutputTables,
    count: int,
    *,
    seed: str = "0",
    points_68=None,
    mesh: bool = False,
    axis_length: float | None = None,
    max_side: int | None = None,
    min_side: int | None = None,
    max_labels: int | None = None,
) -> Iterator[RenderedSample]:
    """Draw ``count`` images that have faces (a repeatable pseudo-random sample, varied by ``seed``)
    from the stored rows: box, 5 landmarks (68 with ``points_68``), pose axes, score and angles."""
    from .imageio import ImageDecodeError, decode_image
    from .render import DEFAULT_AXIS_LENGTH, faces_from_columns, render_faces

    picked = tables.con.sql(
        "select image_uri, run_id, image_sha256, width, height, network_width, network_height from sel_images "
        "where status = 'ok' and num_faces > 0 order by md5(image_uri || ?), image_uri limit ?",
        params=[str(seed), int(count)],
    ).to_arrow_table()
    if picked.num_rows == 0:
        return
    tables.con.register("_picked", picked)
    faces = tables.con.sql(
        "select f.image_uri, f.score, f.box_x1, f.box_y1, f.box_x2, f.box_y2, f.rx, f.ry, f.rz, f.tx, f.ty, f.tz, "
        "f.yaw, f.pitch, f.roll, f.landmarks_5, f.align_matrix from sel_faces f join _picked p "
        "on f.image_uri = p.image_uri and f.run_id = p.run_id order by f.image_uri, f.face_index"
    ).to_arrow_table()
    tables.con.unregister("_picked")
    cols = {name: faces.column(name) for name in faces.column_names}
    uris = np.asarray(cols["image_uri"].to_pylist(), dtype=object)

    def block(names: list[str]) -> np.ndarray:
        return np.stack([cols[n].to_numpy() for n in names], axis=1) if len(uris) else np.zeros((0, len(names)))

    scores = cols["score"].to_numpy()
    boxes = block(["box_x1", "box_y1", "box_x2", "box_y2"])
    poses = block(["rx", "ry", "rz", "tx", "ty", "tz"])
    angles = block(["yaw", "pitch", "roll"])
    lms5 = cols["landmarks_5"].combine_chunks().flatten().to_numpy().reshape(-1, 5, 2)
    mats = cols["align_matrix"].combine_chunks().flatten().to_numpy().reshape(-1, 2, 3)
    used: set[str] = set()
    for row in picked.to_pylist():
        uri, sha = row["image_uri"], row["image_sha256"] or ""
        sel = np.flatnonzero(uris == uri)
        key = sha[:16] if _HEX64.match(sha) else f"image-{len(used):06d}"
        while key in used:
            key = f"{key}-{len(used)}"
        used.add(key)
        base = RenderedSample(uri=uri, run_id=row["run_id"], key=key, faces=int(sel.size))
        try:
            data = read_uri_bytes(uri, tables.s3_endpoint_url)
            decoded = decode_image(data)
        except (OSError, ValueError, tarfile.TarError) as exc:
            base.message = f"cannot read the image: {exc}"
            yield base
            continue
        except ImageDecodeError as exc:
            base.message = f"cannot decode the image ({exc.status}): {exc.message}"
            yield base
            continue
        if (decoded.width, decoded.height) != (row["width"], row["height"]):
            base.message = (f"the image is now {decoded.width}x{decoded.height}, the run saw "
                            f"{row['width']}x{row['height']}: changed since the run")  # fmt: skip
            yield base
            continue
        net = (row["network_width"], row["network_height"])
        image_faces = faces_from_columns(
            row["width"], row["height"], net, scores=scores[sel], boxes=boxes[sel], poses=poses[sel],
            yaw_pitch_roll=angles[sel], landmarks_5=lms5[sel], align_matrices=mats[sel],
        )  # fmt: skip
        base.image = render_faces(
            decoded.pixels, image_faces, points_68=points_68, mesh=mesh,
            axis_length=axis_length or DEFAULT_AXIS_LENGTH, max_side=max_side, min_side=min_side, max_labels=max_labels,
        )  # fmt: skip
        yield base


# --- Plots ------------------------------------------------------------------------------------------
def _figure(width: float = 7.0, height: float = 3.2, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_status(rows: list[tuple]) -> bytes:
    fig, (ax,) = _figure(7.0, max(1.6, 0.45 * len(rows) + 0.9))
    if rows:
        names = [r[0] for r in rows][::-1]
        counts = [r[1] for r in rows][::-1]
        colours = ["#3a7d44" if n == "ok" else "#c0392b" for n in names]
        bars = ax.barh(names, counts, color=colours)
        ax.bar_label(bars, padding=3)
        ax.set_xlabel("images")
        ax.margins(x=0.12)
    else:
        _empty(ax, "no images")
    return _png(fig)


def _plot_faces_per_image(rows: list[tuple], cap: int) -> bytes:
    fig, (ax,) = _figure()
    if rows:
        ks = [r[0] for r in rows]
        ax.bar(ks, [r[1] for r in rows], color="#2e6fa7", width=0.8)
        ticks = sorted(set(ks))
        ax.set_xticks(ticks, [f"{k}+" if k == cap else str(k) for k in ticks])
        ax.set_xlabel("faces in the image")
        ax.set_ylabel("images")
    else:
        _empty(ax, "no image was run through the model")
    return _png(fig)


def _stairs(ax, edges, counts, colour: str) -> None:
    ax.stairs(counts, edges, fill=True, color=colour, alpha=0.85)


def _plot_angles(hists: dict[str, list[tuple]], step: float) -> bytes:
    fig, axes = _figure(10.0, 3.0, ncols=3)
    for ax, (name, colour) in zip(axes, (("yaw", "#c0392b"), ("pitch", "#3a7d44"), ("roll", "#2e6fa7"))):
        rows = hists[name]
        if not rows:
            _empty(ax, f"no faces: no {name}")
            continue
        lo, hi = int(min(r[0] for r in rows)), int(max(r[0] for r in rows))
        counts = np.zeros(hi - lo + 1)
        for b, c in rows:
            counts[int(b) - lo] = c
        _stairs(ax, (np.arange(lo, hi + 2)) * step, counts, colour)
        ax.set_xlabel(f"{name} (degrees)")
        ax.set_ylabel("faces")
    return _png(fig)


def _plot_yaw_pitch(rows: list[tuple], step: float, limit: float) -> bytes:
    from matplotlib.colors import LogNorm

    fig, (ax,) = _figure(6.0, 4.6)
    if not rows:
        _empty(ax, "no faces")
        return _png(fig)
    n = int(round(2 * limit / step))
    grid = np.zeros((n, n))
    for yb, pb, c in rows:
        grid[int(pb), int(yb)] += c
    masked = np.ma.masked_equal(grid, 0)
    image = ax.imshow(masked, origin="lower", extent=(-limit, limit, -limit, limit), cmap="viridis",
                      norm=LogNorm(vmin=1, vmax=max(1.0, grid.max())), aspect="equal", interpolation="nearest")  # fmt: skip
    fig.colorbar(image, ax=ax, label="faces")
    ax.set_xlabel("yaw (degrees)")
    ax.set_ylabel("pitch (degrees)")
    ax.axhline(0, color="0.7", lw=0.6)
    ax.axvline(0, color="0.7", lw=0.6)
    return _png(fig)


def _plot_scores(rows: list[tuple], bins: int) -> bytes:
    fig, (ax,) = _figure()
    if rows:
        counts = np.zeros(bins)
        for b, c in rows:
            counts[int(b)] = c
        first = int(min(r[0] for r in rows))
        _stairs(ax, np.arange(first, bins + 1) / bins, counts[first:], "#8e44ad")
        ax.set_xlabel("score")
        ax.set_ylabel("faces")
    else:
        _empty(ax, "no faces")
    return _png(fig)


def _plot_sizes(hists: dict[str, list[tuple]], per_octave: int) -> bytes:
    fig, axes = _figure(10.0, 3.0, ncols=2)
    for ax, (name, colour) in zip(axes, (("width", "#d35400"), ("height", "#16a085"))):
        rows = hists[name]
        if not rows:
            _empty(ax, "no faces")
            continue
        lo, hi = int(min(r[0] for r in rows)), int(max(r[0] for r in rows))
        counts = np.zeros(hi - lo + 1)
        for b, c in rows:
            counts[int(b) - lo] = c
        _stairs(ax, 2.0 ** (np.arange(lo, hi + 2) / per_octave), counts, colour)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"box {name} (pixels of the original image)")
        ax.set_ylabel("faces")
    return _png(fig)


# --- The report -------------------------------------------------------------------------------------
@dataclass
class ReportResult:
    html_path: Path
    files_dir: Path
    files: list[Path] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


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
    tables = OutputTables.open(output, run_id=run_id, s3_endpoint_url=s3_endpoint_url, catalog=catalog, namespace=namespace)
    out_html = Path(out_html)
    files_dir = out_html.with_name(f"{out_html.stem}_files")
    files_dir.mkdir(parents=True, exist_ok=True)
    for stale in files_dir.iterdir():
        if stale.is_file() and _OWN_FILE.match(stale.name):
            stale.unlink()
    result = ReportResult(html_path=out_html, files_dir=files_dir)
    sections: dict[str, str] = {}

    def plot(name: str, data: bytes, alt: str) -> str:
        path = files_dir / f"{name}.png"
        path.write_bytes(data)
        result.files.append(path)
        return _img("image/png", data, alt, "plot")

    q = tables
    # Summary ---------------------------------------------------------------------------------------
    n_images, n_ok, n_faces_img, n_with, n_runs, first, last = q.one(
        "select count(*), count(*) filter (where status = 'ok'), coalesce(sum(num_faces), 0), "
        "count(*) filter (where num_faces > 0), count(distinct run_id), min(processed_at), max(processed_at) from sel_images"
    )
    n_faces, n_crops, models = q.one(
        "select count(*), count(crop_uri), list(distinct model_sha256) from sel_faces"
    )
    models = sorted(set(models or []) | {m for (m,) in q.rows("select distinct model_sha256 from sel_images")})
    result.figures.update(images=n_images, ok=n_ok, faces=n_faces, runs=n_runs, crops=n_crops)
    scope = f"run <code>{_esc(run_id)}</code>" if run_id else "latest state of every image over all runs"
    summary_rows = [
        ["images", _num(n_images)],
        ["… run through the model (ok)", _num(n_ok)],
        ["… failed (other statuses)", _num(n_images - n_ok)],
        ["… with at least one face", _num(n_with)],
        ["faces", _num(n_faces)],
        ["faces per ok image (mean)", _num(n_faces / n_ok, 2) if n_ok else "–"],
        ["aligned crops", _num(n_crops)],
        ["runs holding these rows", _num(n_runs)],
        ["rows written", f"{_esc(first)} … {_esc(last)}" if first else "–"],
        ["model (weights sha256)", "<br />".join(f"<code>{_esc(m)}</code>" for m in models) or "–"],
    ]
    if n_faces != n_faces_img:
        summary_rows.append(["note", _esc(f"num_faces sums to {n_faces_img} but the faces table has {n_faces} rows")])
    sections["summary"] = f"<p>Scope: {scope}.</p>" + _table(["", "value"], [[_esc(a), b] for a, b in summary_rows])

    # Runs (manifests) ------------------------------------------------------------------------------
    run_rows = []
    total_images = total_s = 0.0
    for doc in tables.runs:
        counts = doc.get("counts") if isinstance(doc.get("counts"), dict) else {}
        by_status = counts.get("by_status") if isinstance(counts.get("by_status"), dict) else {}
        bundle = doc.get("bundle") if isinstance(doc.get("bundle"), dict) else {}
        model = doc.get("model") if isinstance(doc.get("model"), dict) else {}
        duration = doc.get("duration_s")
        if isinstance(duration, (int, float)) and isinstance(counts.get("images"), (int, float)):
            total_images += counts["images"]
            total_s += duration
        settings = ", ".join(f"{k} {model[k]}" for k in ("device", "min_size", "max_size", "threshold", "precision")
                             if k in model)  # fmt: skip
        run_rows.append([
            f"<code>{_esc(doc.get('run_id'))}</code>", _esc(doc.get("status")), _esc(doc.get("started_at")),
            _num(duration, 1) if isinstance(duration, (int, float)) else "–",
            _num(counts.get("images")) if isinstance(counts.get("images"), int) else "–",
            _num(counts.get("faces")) if isinstance(counts.get("faces"), int) else "–",
            _num(counts.get("skipped")) if isinstance(counts.get("skipped"), int) else "–",
            _esc(doc.get("images_per_s", "–")),
            _esc(", ".join(f"{k} {v}" for k, v in by_status.items())),
            _esc(bundle.get("name") or "") + (f" <code>{_esc(str(bundle.get('model_sha256', ''))[:12])}</code>" if bundle else ""),
            _esc(settings) + (f"<br /><span class=\"note\">{_esc(doc.get('error'))}</span>" if doc.get("error") else ""),
        ])  # fmt: skip
    result.figures["manifests"] = len(tables.runs)
    if run_rows:
        overall = f"{total_images / total_s:.3f}" if total_s > 0 else "–"
        sections["runs"] = (
            f"<p>{len(run_rows)} run manifest(s) under <code>runs/</code>; together {_num(total_images)} images in "
            f"{_num(total_s, 1)} s of run time ({overall} images/s).</p>"
            + _table(["run", "status", "started", "duration (s)", "images", "faces", "skipped", "images/s",
                      "by status", "bundle", "model"], run_rows)  # fmt: skip
        )
    else:
        sections["runs"] = '<p class="note">No run manifest (runs/*.json) found for this scope.</p>'

    # Status and errors -----------------------------------------------------------------------------
    status_rows = q.rows("select status, count(*) n from sel_images group by status order by n desc, status")
    errors = q.rows(
        "select status, error, count(*) n from sel_images where status != 'ok' group by all "
        "order by n desc, status, error limit ?",
        [top_errors],
    )
    body = plot("status", _plot_status(status_rows), "images by status")
    body += _table(["status", "images"], [[_esc(s), _num(n)] for s, n in status_rows])
    if errors:
        body += "<h3>Top errors</h3>" + _table(
            ["status", "error", "images"],
            [[_esc(s), _esc((e or "")[:400]), _num(n)] for s, e, n in errors],
        )
    else:
        body += '<p class="note">No errors.</p>'
    sections["status"] = body

    # Faces per image -------------------------------------------------------------------------------
    cap = 20
    fpi = q.rows(
        "select least(num_faces, ?) k, count(*) from sel_images where status = 'ok' group by k order by k", [cap]
    )
    sections["faces-per-image"] = plot("faces_per_image", _plot_faces_per_image(fpi, cap), "faces per image")

    # Angles ----------------------------------------------------------------------------------------
    step = 5.0
    angle_hists = {
        name: q.rows(f"select floor({name} / ?)::bigint b, count(*) from sel_faces group by b order by b", [step])
        for name in ("yaw", "pitch", "roll")
    }
    stats = q.one(
        "select avg(yaw), stddev_samp(yaw), avg(pitch), stddev_samp(pitch), avg(roll), stddev_samp(roll) from sel_faces"
    )
    body = plot("angles", _plot_angles(angle_hists, step), "histograms of yaw, pitch and roll")
    body += _table(
        ["", "mean (°)", "std (°)"],
        [[n, _num(stats[2 * i], 1), _num(stats[2 * i + 1], 1)] for i, n in enumerate(("yaw", "pitch", "roll"))],
    )
    body += ('<p class="note">Degrees, the authors\' convention (docs/poses.md): yaw turns left/right, pitch '
             "nods, roll tilts; bins of 5°.</p>")  # fmt: skip
    sections["angles"] = body

    hstep, limit = 10.0, 90.0
    nbins = int(round(2 * limit / hstep))
    heat = q.rows(
        "select least(greatest(floor((yaw + ?) / ?), 0), ?)::int yb, least(greatest(floor((pitch + ?) / ?), 0), ?)::int pb, "
        "count(*) from sel_faces group by all",
        [limit, hstep, nbins - 1, limit, hstep, nbins - 1],
    )
    sections["yaw-pitch"] = plot("yaw_pitch", _plot_yaw_pitch(heat, hstep, limit), "yaw by pitch heat map") + (
        f'<p class="note">Faces per {hstep:.0f}°×{hstep:.0f}° cell (log colour scale); angles beyond ±{limit:.0f}° '
        "are counted in the edge cells.</p>"
    )

    # Scores ----------------------------------------------------------------------------------------
    sbins = 50
    score_rows = q.rows(
        "select least(greatest(floor(score * ?), 0), ?)::int b, count(*) from sel_faces group by b order by b",
        [sbins, sbins - 1],
    )
    quant = q.one("select min(score), quantile_cont(score, 0.5), max(score) from sel_faces")
    sections["scores"] = plot("scores", _plot_scores(score_rows, sbins), "score distribution") + (
        f'<p class="note">min {_num(quant[0], 3)}, median {_num(quant[1], 3)}, max {_num(quant[2], 3)}.</p>'
        if quant and quant[0] is not None else ""
    )  # fmt: skip

    # Face sizes ------------------------------------------------------------------------------------
    per_octave = 4
    size_hists = {
        name: q.rows(
            f"select floor(log2(greatest({expr}, 1.0)) * ?)::bigint b, count(*) from sel_faces group by b order by b",
            [per_octave],
        )
        for name, expr in (("width", "box_x2 - box_x1"), ("height", "box_y2 - box_y1"))
    }
    sq = q.one(
        "select quantile_cont(box_x2 - box_x1, [0.05, 0.5, 0.95]), quantile_cont(box_y2 - box_y1, [0.05, 0.5, 0.95]) "
        "from sel_faces"
    )
    body = plot("face_sizes", _plot_sizes(size_hists, per_octave), "face box width and height")
    if sq and sq[0]:
        body += _table(
            ["", "5 %", "median", "95 %"],
            [[n, *(_num(v, 1) for v in vals)] for n, vals in (("width (px)", sq[0]), ("height (px)", sq[1]))],
        )
    sections["face-sizes"] = body

    # Crops -----------------------------------------------------------------------------------------
    crop_rows = q.rows(
        "select crop_uri, score, yaw, pitch, roll from sel_faces where crop_uri is not null "
        "order by md5(crop_uri || ?), crop_uri limit ?",
        [str(seed), int(crops)],
    ) if crops > 0 else []  # fmt: skip
    figures, missing = [], []
    for uri, score, yaw, pitch, roll in crop_rows:
        try:
            data = read_uri_bytes(uri, s3_endpoint_url)
            mime, data = _as_web_image(data)
        except Exception as exc:  # noqa: BLE001 - any unreadable crop is listed, not fatal
            missing.append(f"{uri}: {exc}")
            continue
        caption = f"{score:.2f} · y {yaw:+.0f} p {pitch:+.0f} r {roll:+.0f}"
        figures.append(f"<figure>{_img(mime, data, f'aligned crop, {caption}')}<figcaption>{_esc(caption)}</figcaption></figure>")
    if figures:
        body = f"<p>{len(figures)} of {_num(n_crops)} crops (a repeatable sample; score · yaw pitch roll in degrees).</p>"
        body += f'<div class="grid crops">{"".join(figures)}</div>'
    elif n_crops == 0:
        body = '<p class="note">No aligned crops in these rows (run the job with <code>--crops 112</code> or 224).</p>'
    else:
        body = '<p class="note">No crop could be read.</p>'
    if missing:
        body += "<p class=\"note\">Unreadable crops:</p><ul>" + "".join(f"<li>{_esc(m)}</li>" for m in missing[:10]) + "</ul>"
        result.skipped.extend(missing)
    result.figures["crops_shown"] = len(figures)
    sections["crops"] = body

    # Rendered samples ------------------------------------------------------------------------------
    figures, skipped = [], []
    if renders > 0:
        samples = render_sample(tables, renders, seed=seed, max_side=render_max_side,
                                min_side=render_max_side * 3 // 4, max_labels=render_labels)  # fmt: skip
        for i, item in enumerate(samples):
            if item.image is None:
                skipped.append(f"{item.uri}: {item.message}")
                continue
            buf = io.BytesIO()
            item.image.save(buf, format="PNG", optimize=True)
            path = files_dir / f"render_{i}.png"
            path.write_bytes(buf.getvalue())
            result.files.append(path)
            caption = f"{item.uri} — {item.faces} face(s), run {item.run_id}"
            figures.append(f"<figure>{_img('image/png', buf.getvalue(), f'rendered faces of image {i}')}"
                           f"<figcaption>{_esc(caption)}</figcaption></figure>")  # fmt: skip
    if figures:
        body = ("<p>Images with faces, drawn from the stored rows: box, the 5 landmarks, the pose axes (x red, y green, "
                "z blue: the reference head's axes, projected in the network's camera) and, for the "
                f"{render_labels} best-scoring faces of each image, score and yaw/pitch/roll.</p>"
                f'<div class="grid renders">{"".join(figures)}</div>')  # fmt: skip
    else:
        body = '<p class="note">No image with faces could be drawn.</p>'
    if skipped:
        body += "<p class=\"note\">Skipped:</p><ul>" + "".join(f"<li>{_esc(s)}</li>" for s in skipped) + "</ul>"
        result.skipped.extend(skipped)
    result.figures["renders_shown"] = len(figures)
    sections["renders"] = body

    # Page ------------------------------------------------------------------------------------------
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    nav = "".join(f'<a href="#{sid}">{_esc(title)}</a>' for sid, title in SECTIONS)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8" />',
        '<meta name="viewport" content="width=device-width, initial-scale=1" />',
        f"<title>img2pose report: {_esc(output)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>img2pose report</h1><p class=\"sub\"><code>{_esc(output)}</code> · {scope} · generated {generated} "
        f"in {time.perf_counter() - started:.1f} s</p>",
        f"<nav>{nav}</nav>",
    ]
    for sid, title in SECTIONS:
        parts.append(f'<section id="{sid}"><h2>{_esc(title)}</h2>{sections[sid]}</section>')
    parts.append("</body></html>\n")
    out_html.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_html.with_name(f".{out_html.name}.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, out_html)
    return result


def _as_web_image(data: bytes) -> tuple[str, bytes]:
    """(mime, bytes) of an image to embed: JPEG as is, anything else re-encoded as JPEG."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    with Image.open(io.BytesIO(data)) as im:
        if im.format == "JPEG":
            return "image/jpeg", data
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=90)
        return "image/jpeg", buf.getvalue()
