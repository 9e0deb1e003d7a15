"""Writing the pipeline's rows as they come: files bounded by rows, and flushed by time.

Ray Data's ``write_datasink`` gathers ``min_rows_per_write`` rows before a write task starts, so a run
smaller than one file writes nothing until its end, and a run killed before then loses everything.
Here the driver takes the pipeline's output as references to blocks (``iter_internal_ref_bundles``:
the rows stay in the object store, never pass through the driver), groups them, and hands each group to
a write task of :class:`~jobs.sink.AnnotationSink` when it holds ``rows_per_file`` rows *or* when its
oldest rows have waited ``flush_interval_s`` seconds, whichever comes first. A run killed at any moment
therefore keeps every row that left the model more than about one interval (plus one write) before.

Each write is idempotent (its file names derive from its image URIs, :func:`jobs.sink.part_name`), so a
write task retried by Ray after a lost worker overwrites its own files. Memory stays bounded: at most
``max_pending`` blocks wait in the driver's queue (the pipeline is held back beyond it) and at most
``max_in_flight`` writes run at once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FlushPolicy", "write_streaming"]

_END = object()


@dataclass(frozen=True)
class FlushPolicy:
    """When a group of rows becomes a file: ``rows_per_file`` rows at most per file, and no row waits
    longer than ``interval_s`` seconds (0: by size only)."""

    rows_per_file: int
    interval_s: float = 60.0

    def due(self, rows: int, oldest_s: float | None, now: float) -> bool:
        """Whether a group of ``rows`` rows whose first arrived at ``oldest_s`` must be written now."""
        if rows <= 0:
            return False
        if rows >= self.rows_per_file:
            return True
        return self.interval_s > 0 and oldest_s is not None and now - oldest_s >= self.interval_s


@dataclass
class _Group:
    refs: list = field(default_factory=list)
    rows: int = 0
    since: float | None = None

    def add(self, refs: list, rows: int, now: float) -> None:
        self.refs.extend(refs)
        self.rows += rows
        if self.since is None:
            self.since = now


def _bundle_rows(bundle) -> int:
    rows = bundle.num_rows()
    return int(rows) if rows is not None else len(bundle.block_refs)


def _write_task(sink, *blocks):
    """Ray task body: one file pair from the blocks (each argument is a block, resolved by Ray)."""
    return sink.write(list(blocks), None)


def _pull(bundles: Iterator, out: queue.Queue, stop: threading.Event) -> None:
    """Feed the pipeline's bundles into ``out`` (blocking when it is full, which holds the pipeline back)."""
    try:
        for bundle in bundles:
            while not stop.is_set():
                try:
                    out.put(bundle, timeout=0.5)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        out.put(_END)
    except BaseException as exc:  # noqa: BLE001 - handed to the driver's loop, which raises it
        out.put(exc)


def write_streaming(
    ds,
    sink,
    policy: FlushPolicy,
    *,
    ray_remote_args: dict[str, Any] | None = None,
    max_in_flight: int = 4,
    max_pending: int = 256,
    on_written: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run ``ds`` and write its rows with ``sink`` (an :class:`~jobs.sink.AnnotationSink`) as ``policy``
    says; returns every write task's result, in completion order. The first failed write (after Ray's
    retries of a lost worker) or pipeline error is raised; writes already done stay written."""
    import ray

    # Named as Ray Data names its write tasks (the process title ray::WriteFacesAndImages, the dashboard).
    remote = ray.remote(_write_task).options(**{"num_cpus": 0.25, "max_retries": 3, "name": "WriteFacesAndImages",
                                                **(ray_remote_args or {})})  # fmt: skip
    sink_ref = ray.put(sink)
    bundles: queue.Queue = queue.Queue(maxsize=max_pending)
    stop = threading.Event()
    source, executor = _bundles_and_executor(ds)
    puller = threading.Thread(target=_pull, args=(source, bundles, stop), name="img2pose-writer-pull", daemon=True)
    results: list[dict] = []
    in_flight: list = []

    def collect(block: bool) -> None:
        """Take the results of finished writes (waiting for one when ``block``); a failure raises."""
        nonlocal in_flight
        if not in_flight:
            return
        done, in_flight = ray.wait(in_flight, num_returns=1 if block else len(in_flight), timeout=None if block else 0)
        for ref in done:
            result = ray.get(ref)
            results.append(result)
            if on_written is not None:
                on_written(result)

    def flush(group: _Group) -> _Group:
        if group.refs:
            while len(in_flight) >= max_in_flight:
                collect(block=True)
            in_flight.append(remote.remote(sink_ref, *group.refs))
        return _Group()

    puller.start()
    group = _Group()
    try:
        while True:
            now = time.monotonic()
            wait = 0.5
            if group.since is not None and policy.interval_s > 0:
                wait = max(0.05, min(wait, group.since + policy.interval_s - now))
            try:
                item = bundles.get(timeout=wait)
            except queue.Empty:
                item = None
            now = time.monotonic()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            if item is not None:
                rows = _bundle_rows(item)
                if group.rows and group.rows + rows > policy.rows_per_file:
                    group = flush(group)  # the bound on rows per file holds
                group.add(list(item.block_refs), rows, now)
            if policy.due(group.rows, group.since, now):
                group = flush(group)
            collect(block=False)
        flush(group)
        while in_flight:
            collect(block=True)
    except BaseException:
        _settle(in_flight, results, on_written)
        if executor is not None:
            # A failed run stops its pipeline now: left running, Ray Data's threads would reconnect to Ray
            # after the driver shut it down, and print as the process exits.
            try:
                executor.shutdown(force=True)
            except Exception:  # noqa: BLE001 - the run's own failure is what is raised
                pass
        raise
    finally:
        stop.set()
    return results


def _bundles_and_executor(ds) -> tuple[Iterator, Any]:
    """The pipeline's output as block references, and its executor where Ray Data exposes it (to stop a
    failed run's pipeline); ``iter_internal_ref_bundles`` alone where it does not."""
    execute = getattr(ds, "_execute_to_iterator", None)
    if execute is not None:
        try:
            bundles, _stats, executor = execute(capture_executor=False)
            return bundles, executor
        except TypeError:  # another Ray version's signature
            pass
    return ds.iter_internal_ref_bundles(), None


def _settle(in_flight: list, results: list[dict], on_written: Callable[[dict], None] | None, timeout_s: float = 10.0) -> None:
    """After a failure: the writes still running are waited for a little (they are idempotent and may well
    succeed), so that the failure record counts what they wrote; failed ones are passed over."""
    import ray

    try:
        done, _ = ray.wait(in_flight, num_returns=len(in_flight), timeout=timeout_s) if in_flight else ([], [])
        for ref in done:
            try:
                result = ray.get(ref, timeout=5)
            except Exception:  # noqa: BLE001 - this write failed too; the run's cause is the first failure
                continue
            results.append(result)
            if on_written is not None:
                on_written(result)
    except BaseException:  # noqa: BLE001 - never mask the failure being raised
        pass
