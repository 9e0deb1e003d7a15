"""The report's SQL side: the run's tables opened in DuckDB, and the numbers of each section.

Every figure is an aggregate computed by DuckDB (histogram bins, counts, quantiles), so a large output
is scanned lazily, column by column, and its faces are never held in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "ANGLES",
    "ANGLE_STEP",
    "FACES_CAP",
    "HEAT_LIMIT",
    "HEAT_STEP",
    "SCORE_BINS",
    "SIZES_PER_OCTAVE",
    "AngleStats",
    "OutputTables",
    "ReportError",
    "RunRow",
    "RunsOverview",
    "Scores",
    "Sizes",
    "StatusCounts",
    "Summary",
    "angle_stats",
    "crop_sample",
    "face_sizes",
    "faces_per_image",
    "runs_overview",
    "sample_rows",
    "scores",
    "status_counts",
    "summary",
    "yaw_pitch_cells",
]

# Binning of the figures: the plots and the notes under them read the same constants.
FACES_CAP = 20  # images with more faces share the last bar
ANGLES = ("yaw", "pitch", "roll")
ANGLE_STEP = 5.0  # degrees per histogram bin
HEAT_STEP, HEAT_LIMIT = 10.0, 90.0  # degrees per yaw × pitch cell; angles beyond ±limit go to the edges
SCORE_BINS = 50
SIZES_PER_OCTAVE = 4


class ReportError(Exception):
    """An output that cannot be reported on (missing tables, unknown run); the message says why."""


@dataclass
class OutputTables:
    """A run output opened for queries (:func:`img2pose_core.output.open_tables`, either form), with two
    more views: ``sel_images`` (one row per image: its latest state, or its row of ``run_id``) and
    ``sel_faces`` (the faces of those rows). ``run_ids`` are the runs of the scope, oldest first: every
    run of the output (:func:`_runs_by_start`), or ``run_id`` alone."""

    output: str
    run_id: str | None
    con: Any  # duckdb.DuckDBPyConnection
    runs: list[dict]
    s3_endpoint_url: str | None = None
    run_ids: list[str] = field(default_factory=list)

    @classmethod
    def open(
        cls, output: str, *, run_id: str | None = None, s3_endpoint_url: str | None = None,
        catalog: str | None = None, namespace: str = "img2pose",
    ) -> "OutputTables":  # fmt: skip
        """Open ``output`` (plain Parquet, or the Iceberg tables of ``catalog``), scoped to ``run_id`` if given."""
        from dataclasses import asdict

        from ..output import OutputError, open_tables, read_run_manifests

        output = str(output).rstrip("/") or "/"
        try:
            con = open_tables(output, catalog=catalog, namespace=namespace, s3_endpoint_url=s3_endpoint_url)
        except OutputError as exc:
            raise ReportError(str(exc)) from exc
        except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise ReportError(f"{output}: cannot read the tables ({exc})") from exc
        _select_rows(con, output, run_id)
        manifests = read_run_manifests(output, s3_endpoint_url=s3_endpoint_url) if not catalog else [
            m for m in _iceberg_manifests(catalog, namespace, s3_endpoint_url)
        ]  # fmt: skip
        runs = [asdict(m) for m in manifests if run_id is None or m.run_id == run_id]
        for doc in runs:  # the report's figures read these names
            doc["duration_s"] = doc.get("pipeline_s")
        run_ids = [run_id] if run_id is not None else _runs_by_start(con, manifests)
        return cls(output=output, run_id=run_id, con=con, runs=runs, s3_endpoint_url=s3_endpoint_url, run_ids=run_ids)

    def rows(self, sql: str, params: list | None = None) -> list[tuple]:
        """All rows of ``sql``."""
        return self.con.execute(sql, params or []).fetchall()

    def one(self, sql: str, params: list | None = None) -> tuple | None:
        """The first row of ``sql``, or None."""
        rows = self.rows(sql, params)  # fetched to the end: DuckDB wants a result finished before the next
        return rows[0] if rows else None

    def aggregate(self, sql: str, params: list | None = None) -> tuple:
        """The row of an aggregate query without ``group by`` (it has exactly one, even over no rows)."""
        return self.rows(sql, params)[0]


def _select_rows(con: Any, output: str, run_id: str | None) -> None:
    """Create the ``sel_images`` and ``sel_faces`` views: the latest state, or the rows of ``run_id``."""
    if run_id is None:
        con.execute("create temp view sel_images as select * from latest_images")
        con.execute("create temp view sel_faces as select * from latest_faces")
        return
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


def _utc(value: Any) -> datetime | None:
    """A run's start as an aware datetime: a manifest's ISO ``started_at`` or a row's ``processed_at``."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _runs_by_start(con: Any, manifests: list) -> list[str]:
    """Every run of the output, oldest first: those with a manifest under ``runs/`` (one that wrote no row,
    e.g. everything skipped, has one) and those with rows in the images table (one that stopped before
    its manifest has rows). A run starts at its manifest's ``started_at``, else at its first row."""
    rows = con.execute("select run_id, min(processed_at) from images group by run_id").fetchall()
    starts = {r: _utc(first) for r, first in rows}
    for m in manifests:
        starts[m.run_id] = _utc(m.started_at) or starts.get(m.run_id)
    never = datetime.min.replace(tzinfo=timezone.utc)
    return sorted(starts, key=lambda r: (starts[r] or never, r))


def _iceberg_manifests(catalog: str, namespace: str, s3_endpoint_url: str | None) -> list:
    from ..iceberg import open_catalog, open_tables, runs_rows
    from ..output import RunManifest

    tables = open_tables(open_catalog(catalog, None, s3_endpoint_url), namespace, create=False)
    return [RunManifest.from_dict(d) for d in runs_rows(tables)]


# --- Summary and runs -------------------------------------------------------------------------------
@dataclass
class Summary:
    """Counts over the selected rows."""

    images: int
    ok: int
    faces_in_images: int  # the sum of num_faces, to compare with the faces table
    with_faces: int
    runs: int  # the runs whose rows these are (the latest state of an image is its last run's row)
    output_runs: list[str]  # the runs of the scope, oldest first (OutputTables.run_ids)
    first: Any  # earliest processed_at, or None
    last: Any
    faces: int
    crops: int
    models: list[str]


def summary(tables: OutputTables) -> Summary:
    """The summary section's counts."""
    n_images, n_ok, n_faces_img, n_with, n_runs, first, last = tables.aggregate(
        "select count(*), count(*) filter (where status = 'ok'), coalesce(sum(num_faces), 0), "
        "count(*) filter (where num_faces > 0), count(distinct run_id), min(processed_at), max(processed_at) from sel_images"
    )
    n_faces, n_crops, models = tables.aggregate(
        "select count(*), count(crop_uri), list(distinct model_sha256) from sel_faces"
    )
    models = sorted(set(models or []) | {m for (m,) in tables.rows("select distinct model_sha256 from sel_images")})
    return Summary(images=n_images, ok=n_ok, faces_in_images=n_faces_img, with_faces=n_with, runs=n_runs,
                   output_runs=list(tables.run_ids), first=first, last=last, faces=n_faces, crops=n_crops, models=models)  # fmt: skip


@dataclass
class RunRow:
    """One run manifest, its fields as found (None where a number is absent or not a number)."""

    run_id: Any
    status: Any
    started_at: Any
    duration_s: int | float | None
    images: int | None
    faces: int | None
    skipped: int | None
    images_per_s: Any
    by_status: str
    bundle_name: Any
    bundle_sha256: str | None  # the first 12 hex digits; None without a bundle entry
    settings: str
    error: Any


@dataclass
class RunsOverview:
    """The run manifests of the scope, and the images and seconds of those that give both."""

    rows: list[RunRow]
    images: float
    seconds: float


def _dict(doc: dict, key: str) -> dict:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _run_row(doc: dict) -> RunRow:
    counts, bundle, model = (_dict(doc, k) for k in ("counts", "bundle", "model"))
    by_status = _dict(counts, "by_status")
    duration = doc.get("duration_s")
    settings = ", ".join(f"{k} {model[k]}" for k in ("device", "min_size", "max_size", "threshold", "precision")
                         if k in model)  # fmt: skip
    return RunRow(
        run_id=doc.get("run_id"), status=doc.get("status"), started_at=doc.get("started_at"),
        duration_s=duration if isinstance(duration, (int, float)) else None,
        images=counts.get("images") if isinstance(counts.get("images"), int) else None,
        faces=counts.get("faces") if isinstance(counts.get("faces"), int) else None,
        skipped=counts.get("skipped") if isinstance(counts.get("skipped"), int) else None,
        images_per_s=doc.get("images_per_s", "–"), by_status=", ".join(f"{k} {v}" for k, v in by_status.items()),
        bundle_name=bundle.get("name") or "", bundle_sha256=str(bundle.get("model_sha256", ""))[:12] if bundle else None,
        settings=settings, error=doc.get("error"),
    )  # fmt: skip


def runs_overview(runs: list[dict]) -> RunsOverview:
    """The runs section's rows, from the manifests (``OutputTables.runs``)."""
    total_images = total_s = 0.0
    for doc in runs:
        counts, duration = _dict(doc, "counts"), doc.get("duration_s")
        if isinstance(duration, (int, float)) and isinstance(counts.get("images"), (int, float)):
            total_images += counts["images"]
            total_s += duration
    return RunsOverview(rows=[_run_row(doc) for doc in runs], images=total_images, seconds=total_s)


# --- Status and distributions -----------------------------------------------------------------------
@dataclass
class StatusCounts:
    """(status, images) by count, and the most frequent (status, error, images) of failed images."""

    statuses: list[tuple]
    errors: list[tuple]


def status_counts(tables: OutputTables, top_errors: int) -> StatusCounts:
    """Images by status, and the ``top_errors`` most frequent errors."""
    statuses = tables.rows("select status, count(*) n from sel_images group by status order by n desc, status")
    errors = tables.rows(
        "select status, error, count(*) n from sel_images where status != 'ok' group by all "
        "order by n desc, status, error limit ?",
        [top_errors],
    )
    return StatusCounts(statuses=statuses, errors=errors)


def faces_per_image(tables: OutputTables) -> list[tuple]:
    """(faces, images) over the ok images, ``FACES_CAP`` and more counted together."""
    return tables.rows(
        "select least(num_faces, ?) k, count(*) from sel_images where status = 'ok' group by k order by k", [FACES_CAP]
    )


@dataclass
class AngleStats:
    """(bin, faces) of each angle (bins of ``ANGLE_STEP``), and mean, std of yaw, pitch, roll in turn."""

    histograms: dict[str, list[tuple]]
    mean_std: tuple


def angle_stats(tables: OutputTables) -> AngleStats:
    """Histograms, means and standard deviations of yaw, pitch and roll."""
    hists = {
        name: tables.rows(f"select floor({name} / ?)::bigint b, count(*) from sel_faces group by b order by b", [ANGLE_STEP])
        for name in ANGLES
    }
    stats = tables.aggregate(
        "select avg(yaw), stddev_samp(yaw), avg(pitch), stddev_samp(pitch), avg(roll), stddev_samp(roll) from sel_faces"
    )
    return AngleStats(histograms=hists, mean_std=stats)


def yaw_pitch_cells(tables: OutputTables) -> list[tuple]:
    """(yaw bin, pitch bin, faces) of the cells of ``HEAT_STEP`` degrees within ±``HEAT_LIMIT``."""
    nbins = int(round(2 * HEAT_LIMIT / HEAT_STEP))
    return tables.rows(
        "select least(greatest(floor((yaw + ?) / ?), 0), ?)::int yb, least(greatest(floor((pitch + ?) / ?), 0), ?)::int pb, "
        "count(*) from sel_faces group by all",
        [HEAT_LIMIT, HEAT_STEP, nbins - 1, HEAT_LIMIT, HEAT_STEP, nbins - 1],
    )


@dataclass
class Scores:
    """(bin, faces) of the scores in ``SCORE_BINS`` bins over [0, 1], and (min, median, max)."""

    bins: list[tuple]
    quantiles: tuple | None


def scores(tables: OutputTables) -> Scores:
    """The score histogram and its quantiles."""
    rows = tables.rows(
        "select least(greatest(floor(score * ?), 0), ?)::int b, count(*) from sel_faces group by b order by b",
        [SCORE_BINS, SCORE_BINS - 1],
    )
    quant = tables.one("select min(score), quantile_cont(score, 0.5), max(score) from sel_faces")
    return Scores(bins=rows, quantiles=quant)


@dataclass
class Sizes:
    """(bin, faces) of box width and height (``SIZES_PER_OCTAVE`` bins per doubling), and their
    5 %, median and 95 % quantiles (a row of two lists, or None)."""

    histograms: dict[str, list[tuple]]
    quantiles: tuple | None


def face_sizes(tables: OutputTables) -> Sizes:
    """Histograms and quantiles of the face boxes' width and height."""
    hists = {
        name: tables.rows(
            f"select floor(log2(greatest({expr}, 1.0)) * ?)::bigint b, count(*) from sel_faces group by b order by b",
            [SIZES_PER_OCTAVE],
        )
        for name, expr in (("width", "box_x2 - box_x1"), ("height", "box_y2 - box_y1"))
    }
    quant = tables.one(
        "select quantile_cont(box_x2 - box_x1, [0.05, 0.5, 0.95]), quantile_cont(box_y2 - box_y1, [0.05, 0.5, 0.95]) "
        "from sel_faces"
    )
    return Sizes(histograms=hists, quantiles=quant)


# --- Samples ----------------------------------------------------------------------------------------
def crop_sample(tables: OutputTables, count: int, seed: str) -> list[tuple]:
    """(crop_uri, score, yaw, pitch, roll) of ``count`` crops, a repeatable sample varied by ``seed``."""
    return tables.rows(
        "select crop_uri, score, yaw, pitch, roll from sel_faces where crop_uri is not null "
        "order by md5(crop_uri || ?), crop_uri limit ?",
        [str(seed), int(count)],
    )


def sample_rows(tables: OutputTables, count: int, seed: str) -> tuple["pa.Table", "pa.Table"] | None:
    """``count`` ok images with faces (a repeatable sample varied by ``seed``) and their faces in order,
    as Arrow tables; None when no image has a face."""
    picked = tables.con.sql(
        "select image_uri, run_id, image_sha256, width, height, network_width, network_height from sel_images "
        "where status = 'ok' and num_faces > 0 order by md5(image_uri || ?), image_uri limit ?",
        params=[str(seed), int(count)],
    ).to_arrow_table()
    if picked.num_rows == 0:
        return None
    tables.con.register("_picked", picked)
    faces = tables.con.sql(
        "select f.image_uri, f.score, f.box_x1, f.box_y1, f.box_x2, f.box_y2, f.rx, f.ry, f.rz, f.tx, f.ty, f.tz, "
        "f.yaw, f.pitch, f.roll, f.landmarks_5, f.align_matrix from sel_faces f join _picked p "
        "on f.image_uri = p.image_uri and f.run_id = p.run_id order by f.image_uri, f.face_index"
    ).to_arrow_table()
    tables.con.unregister("_picked")
    return picked, faces
