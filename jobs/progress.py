"""Progress of a run counted in images, for people watching a terminal and for logs.

The model actors add what each batch held (ok, failed, counted-not-written, faces) to one counter
actor; a thread of the driver reads it every interval and shows it: in a terminal, one line redrawn
in place (a bar where the number of images is known, images/s, ETA); in logs (``ray job submit``,
KubeRay, CI), one short line per interval. Progress is informative only: a lost counter or a failed
update never touches the run's results, which come from the written tables.

The counter actor also records the counts as Ray metrics (:class:`RunMetrics`), which every node's
metrics agent exports for Prometheus (docs/operations.md, "Monitoring"): images by status, entries
counted but not written by reason, faces, and a heartbeat that says the run is alive. They are
recorded where the counts are already added up, in one process per run, so a run is one series per
status however many model actors it has. Metrics are best-effort like the rest of progress.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from img2pose_core.output import NOT_WRITTEN, STATUSES

if TYPE_CHECKING:
    from ray.util.metrics import Counter, Gauge, Metric

__all__ = [
    "Counts",
    "batch_counts",
    "status_counts",
    "format_progress",
    "ProgressCounter",
    "ProgressDisplay",
    "RunMetrics",
    "METRICS",
    "PROGRESS_ACTOR_PREFIX",
]

KEYS = ("ok", "failed", "counted", "faces", "skipped")

# The run's counter actor is named PROGRESS_ACTOR_PREFIX + run id (jobs/run.py).
PROGRESS_ACTOR_PREFIX = "img2pose-progress-"


@dataclass
class Counts:
    """Images past the model so far: ``ok``, ``failed`` (any other status with a table row),
    ``skipped`` (done by an earlier run), ``counted`` (other entries that get no row: duplicates,
    markers, sidecars ...), and ``faces``."""

    ok: int = 0
    failed: int = 0
    counted: int = 0
    faces: int = 0
    skipped: int = 0  # inputs done by an earlier run (--skip-existing): neither images nor failures

    @property
    def images(self) -> int:
        return self.ok + self.failed

    def add(self, other: dict[str, int]) -> None:
        for key in KEYS:
            setattr(self, key, getattr(self, key) + int(other.get(key, 0)))


def batch_counts(statuses: list[str], faces: int) -> dict[str, int]:
    """What one model batch adds to the counts, from its rows' statuses and its number of faces."""
    ok = sum(1 for s in statuses if s == "ok")
    skipped = sum(1 for s in statuses if s == "skipped")
    counted = sum(1 for s in statuses if s in NOT_WRITTEN) - skipped
    return {"ok": ok, "failed": len(statuses) - ok - counted - skipped, "counted": counted, "faces": int(faces),
            "skipped": skipped}  # fmt: skip


def status_counts(statuses: list[str]) -> dict[str, int]:
    """How many rows of one model batch have each status (for the metrics by status)."""
    out: dict[str, int] = {}
    for s in statuses:
        out[str(s)] = out.get(str(s), 0) + 1
    return out


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_progress(counts: Counts, elapsed_s: float, total: int | None, bar_width: int = 0) -> str:
    """One line: images done (of the total where known), ok / failed, faces, images/s and the ETA;
    ``bar_width`` > 0 adds a bar (terminal form)."""
    done = counts.images
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    if total:
        head = f"{done}/{total} images ({100 * min(done, total) / total:.0f}%)"
    else:
        head = f"{done} images"
    parts = [head, f"ok {counts.ok}", f"failed {counts.failed}", f"faces {counts.faces}", f"{rate:.2f} images/s"]
    if counts.counted:
        parts.insert(3, f"not images {counts.counted}")
    if counts.skipped:
        parts.insert(3, f"skipped {counts.skipped} (done before)")
    if total and rate > 0 and done < total:
        parts.append(f"ETA {_duration((total - done) / rate)}")
    line = " | ".join(parts)
    if bar_width > 0 and total:
        filled = int(bar_width * min(done, total) / total)
        line = "[" + "#" * filled + "." * (bar_width - filled) + "] " + line
    return line


@dataclass(frozen=True)
class MetricSpec:
    """One of the run's Ray metrics: ``name`` as given to ``ray.util.metrics``; ``exported`` as
    Prometheus sees it (Ray prefixes ``ray_``; a counter gets ``_total``, OpenTelemetry's convention
    for counters, which Ray 2.60 follows: checked by tests/test_monitoring.py on a real node)."""

    name: str
    kind: str  # "counter" or "gauge"
    tag_keys: tuple[str, ...]
    description: str

    @property
    def exported(self) -> str:
        return "ray_" + self.name + ("_total" if self.kind == "counter" else "")


# The job's own metrics. Tag values are bounded: ``status`` is one of img2pose_core.output.STATUSES,
# ``reason`` one of NOT_WRITTEN, anything else is recorded as "other"; ``run_id`` is one value per run.
METRICS = {
    "images": MetricSpec(
        "img2pose_images", "counter", ("run_id", "status"),
        "Images past the model, by status: ok, or why the image has no faces rows (docs/schema.md)",
    ),
    "not_written": MetricSpec(
        "img2pose_not_written", "counter", ("run_id", "reason"),
        "Entries counted in the run manifest instead of the tables (skipped, duplicate, marker, sidecar, empty_url)",
    ),
    "faces": MetricSpec("img2pose_faces", "counter", ("run_id",), "Faces found (rows of the faces table)"),
    "run_active": MetricSpec(
        "img2pose_run_active", "gauge", ("run_id",),
        "1 while the run's progress counter is alive (re-sent every few seconds; gone within about 20 s of the run's end)",
    ),
}  # fmt: skip
OTHER = "other"


def _bounded(value: str, known) -> str:
    return value if value in known else OTHER


class RunMetrics:
    """The run's counts as Ray metrics (``ray.util.metrics``), recorded in the process that adds them up.

    Ray keeps a counter's series on the node's metrics endpoint after its process ends, but drops a
    gauge that is not set again within two export intervals: ``run_active`` is therefore set again
    every ``heartbeat_s`` seconds by a thread, and disappears soon after the run (its counter actor)
    ends, whereas the counters stay. Nothing here raises: a metric that cannot be recorded is skipped.
    """

    def __init__(self, run_id: str, heartbeat_s: float = 5.0) -> None:
        from ray.util.metrics import Counter, Gauge

        self.tags = {"run_id": str(run_id)}
        self.heartbeat_s = heartbeat_s
        self.counters: dict[str, Counter] = {}
        self.gauges: dict[str, Gauge] = {}
        for key, m in METRICS.items():
            if m.kind == "gauge":
                self.gauges[key] = Gauge(m.name, description=m.description, tag_keys=m.tag_keys)
            else:
                self.counters[key] = Counter(m.name, description=m.description, tag_keys=m.tag_keys)
        self.metrics: dict[str, Metric] = {**self.counters, **self.gauges}  # all of them, by METRICS key
        self._stop = threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._loop, name="img2pose-metrics-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self, value: float = 1.0) -> None:
        try:
            self.gauges["run_active"].set(value, tags=self.tags)
        except Exception:  # noqa: BLE001 - metrics are informative only
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self._beat()

    def _inc(self, key: str, value: int, **tags: str) -> None:
        if value > 0:  # Ray's Counter.inc refuses 0
            try:
                self.counters[key].inc(value, tags={**self.tags, **tags})
            except Exception:  # noqa: BLE001 - metrics are informative only
                pass

    def record(self, counts: dict[str, int], by_status: dict[str, int] | None = None) -> None:
        """Add one batch: ``counts`` as :func:`batch_counts` makes them, ``by_status`` as
        :func:`status_counts` does (without it, the images are recorded as ok / other)."""
        if by_status is None:
            by_status = {"ok": int(counts.get("ok", 0)), OTHER: int(counts.get("failed", 0))}
        for status, n in by_status.items():
            if status in NOT_WRITTEN:
                self._inc("not_written", int(n), reason=status)
            else:
                self._inc("images", int(n), status=_bounded(status, STATUSES))
        self._inc("faces", int(counts.get("faces", 0)))

    def close(self) -> None:
        """Stop the heartbeat (the run is over): ``run_active`` then ages out of the endpoint."""
        self._stop.set()
        self._thread.join(timeout=2 * self.heartbeat_s + 1)
        self._beat(0.0)


def _run_id_of_this_actor() -> str | None:
    """The run id from the counter actor's name (``PROGRESS_ACTOR_PREFIX`` + run id); None outside an actor."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        name = ray.get_runtime_context().get_actor_name()
    except Exception:  # noqa: BLE001
        return None
    if not name:
        return None
    return name[len(PROGRESS_ACTOR_PREFIX):] if name.startswith(PROGRESS_ACTOR_PREFIX) else name


class ProgressCounter:
    """The run's counts, in one Ray actor (created with ``num_cpus=0``) that every model actor adds to.

    In a Ray actor it also records them as Ray metrics (:class:`RunMetrics`), tagged with ``run_id``
    (given, or taken from the actor's name); ``metrics=False``, or no run id, records none.
    """

    def __init__(self, run_id: str | None = None, metrics: bool = True, heartbeat_s: float = 5.0) -> None:
        self.counts = Counts()
        self.metrics: RunMetrics | None = None
        if metrics:
            run_id = run_id or _run_id_of_this_actor()
            if run_id:
                try:
                    self.metrics = RunMetrics(run_id, heartbeat_s=heartbeat_s)
                except Exception:  # noqa: BLE001 - a run without metrics still runs
                    self.metrics = None

    def add(self, counts: dict[str, int], by_status: dict[str, int] | None = None) -> None:
        self.counts.add(counts)
        if self.metrics is not None:
            self.metrics.record(counts, by_status)

    def snapshot(self) -> dict[str, int]:
        c = self.counts
        return {key: getattr(c, key) for key in KEYS}


@dataclass
class ProgressDisplay:
    """The driver's side: reads the counter every ``interval_s`` and writes a line to ``stream``.

    ``read`` returns the current counts (or None when they cannot be read now). In a terminal
    (``interactive``) the line is redrawn in place; otherwise a new line is written each interval,
    and only when the counts changed. The terminal form is a tqdm bar.
    """

    read: Callable[[], dict[str, int] | None]
    total: int | None = None
    interval_s: float = 30.0
    stream: IO[str] = field(default_factory=lambda: sys.stderr)
    interactive: bool = False
    prefix: str = "[annotate] "
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _started: float = field(default=0.0, init=False)
    _last: Counts | None = field(default=None, init=False)
    lines_written: int = field(default=0, init=False)
    _bar: Any = field(default=None, init=False)

    def start(self) -> "ProgressDisplay":
        self._started = time.perf_counter()
        if self.interactive:
            from tqdm import tqdm

            # A live bar: images done of the total, images/s and the ETA, ok / failed / faces after it.
            self._bar = tqdm(total=self.total or None, unit="images", desc=self.prefix.strip(), file=self.stream,
                             dynamic_ncols=True, mininterval=0, smoothing=0.1, leave=True)  # fmt: skip
        self._thread = threading.Thread(target=self._loop, name="img2pose-progress", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.show()

    def show(self, final: bool = False) -> None:
        """Write the current line (the last one, ended by a newline, when ``final``)."""
        try:
            snapshot = self.read()
        except Exception:  # noqa: BLE001 - progress is informative only
            snapshot = None
        if snapshot is None:
            return
        counts = Counts(**{k: int(v) for k, v in snapshot.items() if k in KEYS})
        if self._bar is not None:
            self._show_bar(counts, final)
            return
        line = format_progress(counts, time.perf_counter() - self._started, self.total,
                               bar_width=24 if self.interactive else 0)  # fmt: skip
        if self.interactive:
            self.stream.write("\r\x1b[2K" + self.prefix + line + ("\n" if final else ""))
        elif counts != self._last or (final and not self.lines_written):
            self.stream.write(self.prefix + line + "\n")
            self.lines_written += 1
        self._last = counts
        self.stream.flush()

    def _show_bar(self, counts: Counts, final: bool) -> None:
        bar = self._bar
        extra = (f", skipped {counts.skipped} (done before)" if counts.skipped else "") + (
            f", not images {counts.counted}" if counts.counted else "")
        bar.set_postfix_str(f"ok {counts.ok}, failed {counts.failed}, faces {counts.faces}{extra}", refresh=False)
        if counts.images > bar.n:
            bar.update(counts.images - bar.n)  # redraws
        else:
            bar.refresh()
        self._last = counts
        if final:
            bar.close()
            self._bar = None

    def stop(self, show_final: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if show_final:
            self.show(final=True)
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def ray_counter_reader(counter: Any, timeout_s: float = 5.0) -> Callable[[], dict[str, int] | None]:
    """A ``read`` for :class:`ProgressDisplay` from a Ray actor handle of :class:`ProgressCounter`."""
    import ray

    def read() -> dict[str, int] | None:
        try:
            return ray.get(counter.snapshot.remote(), timeout=timeout_s)
        except Exception:  # noqa: BLE001 - a busy or lost counter: skip this interval
            return None

    return read
