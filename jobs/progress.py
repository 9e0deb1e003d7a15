"""Progress of a run counted in images, for people watching a terminal and for logs.

The model actors add what each batch held (ok, failed, counted-not-written, faces) to one counter
actor; a thread of the driver reads it every interval and shows it: in a terminal, one line redrawn
in place (a bar where the number of images is known, images/s, ETA); in logs (``ray job submit``,
KubeRay, CI), one short line per interval. Progress is informative only: a lost counter or a failed
update never touches the run's results, which come from the written tables.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from img2pose_core.output import NOT_WRITTEN

__all__ = ["Counts", "batch_counts", "format_progress", "ProgressCounter", "ProgressDisplay"]


@dataclass
class Counts:
    """Images past the model so far: ``ok``, ``failed`` (any other status with a table row),
    ``counted`` (entries that get no row: skipped, duplicates, markers ...), and ``faces``."""

    ok: int = 0
    failed: int = 0
    counted: int = 0
    faces: int = 0

    @property
    def images(self) -> int:
        return self.ok + self.failed

    def add(self, other: dict[str, int]) -> None:
        for key in ("ok", "failed", "counted", "faces"):
            setattr(self, key, getattr(self, key) + int(other.get(key, 0)))


def batch_counts(statuses: list[str], faces: int) -> dict[str, int]:
    """What one model batch adds to the counts, from its rows' statuses and its number of faces."""
    ok = sum(1 for s in statuses if s == "ok")
    counted = sum(1 for s in statuses if s in NOT_WRITTEN)
    return {"ok": ok, "failed": len(statuses) - ok - counted, "counted": counted, "faces": int(faces)}


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
    if total and rate > 0 and done < total:
        parts.append(f"ETA {_duration((total - done) / rate)}")
    line = " | ".join(parts)
    if bar_width > 0 and total:
        filled = int(bar_width * min(done, total) / total)
        line = "[" + "#" * filled + "." * (bar_width - filled) + "] " + line
    return line


class ProgressCounter:
    """The run's counts, in one Ray actor (created with ``num_cpus=0``) that every model actor adds to."""

    def __init__(self) -> None:
        self.counts = Counts()

    def add(self, counts: dict[str, int]) -> None:
        self.counts.add(counts)

    def snapshot(self) -> dict[str, int]:
        c = self.counts
        return {"ok": c.ok, "failed": c.failed, "counted": c.counted, "faces": c.faces}


@dataclass
class ProgressDisplay:
    """The driver's side: reads the counter every ``interval_s`` and writes a line to ``stream``.

    ``read`` returns the current counts (or None when they cannot be read now). In a terminal
    (``interactive``) the line is redrawn in place; otherwise a new line is written each interval,
    and only when the counts changed.
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

    def start(self) -> "ProgressDisplay":
        self._started = time.perf_counter()
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
        counts = Counts(**{k: int(v) for k, v in snapshot.items() if k in ("ok", "failed", "counted", "faces")})
        line = format_progress(counts, time.perf_counter() - self._started, self.total,
                               bar_width=24 if self.interactive else 0)  # fmt: skip
        if self.interactive:
            self.stream.write("\r\x1b[2K" + self.prefix + line + ("\n" if final else ""))
        elif counts != self._last or (final and not self.lines_written):
            self.stream.write(self.prefix + line + "\n")
            self.lines_written += 1
        self._last = counts
        self.stream.flush()

    def stop(self, show_final: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if show_final:
            self.show(final=True)


def ray_counter_reader(counter: Any, timeout_s: float = 5.0) -> Callable[[], dict[str, int] | None]:
    """A ``read`` for :class:`ProgressDisplay` from a Ray actor handle of :class:`ProgressCounter`."""
    import ray

    def read() -> dict[str, int] | None:
        try:
            return ray.get(counter.snapshot.remote(), timeout=timeout_s)
        except Exception:  # noqa: BLE001 - a busy or lost counter: skip this interval
            return None

    return read
