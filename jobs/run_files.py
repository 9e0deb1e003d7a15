"""What a run keeps beside its manifest under ``OUTPUT/runs/``: its lease and its console log.

**Lease** (``runs/<run_id>.lease``, JSON). Two runs on one output at once are safe (each writes its own
files; :mod:`jobs.sink`, docs/schema.md), but with ``--skip-existing`` both annotate the same images and
pay twice: the nightly CronJob starting while last night's run still goes, or a manual run beside it.
``concurrencyPolicy`` does not see a RayJob made by hand or by ``kubectl create job --from=cronjob``,
so the job itself checks: before any work it refuses to start while another run's lease on the output
is live (``--allow-concurrent-runs`` starts anyway). A run renews its lease every :data:`HEARTBEAT_S`
and removes it when it ends.

A lease is live when its heartbeat moves: a new run watches the others' leases for
:data:`WATCH_S` (more than two heartbeats) and only one that is renewed meanwhile holds the output.
So a run killed outright (its lease left behind) blocks its retry for :data:`WATCH_S` at most, on any
machine and whatever the clocks say; a lease whose run is known dead (same host, process gone) or
unrenewed for :data:`STALE_S` is passed over at once; a planted file or one that is not a lease
blocks nothing (each is named in the log). Two runs that start within the same moment both write
their lease, read the others back, and the later start (then the smaller run id) withdraws.

**Console log** (``runs/<run_id>.log``). KubeRay deletes the cluster after a run and an earlier
attempt's submitter on retry, so the driver's log would be lost with them: the job copies its console
(from Ray's start on; see :mod:`jobs.console`) into a local file and uploads it, secrets redacted,
every :data:`LOG_UPLOAD_S` and when the run ends, however it ends.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from img2pose_core.storage import StorageConfig
from img2pose_core.uris import join_uri, redact_text


__all__ = ["HEARTBEAT_S", "WATCH_S", "STALE_S", "LOG_UPLOAD_S", "Lease", "LeaseError", "RunLease", "read_leases", "RunLog"]

HEARTBEAT_S = 10.0
WATCH_S = 25.0  # two and a half heartbeats: a live run renews its lease at least twice meanwhile
STALE_S = 120.0
LOG_UPLOAD_S = 300.0


@dataclass(frozen=True)
class Lease:
    """One run's claim on an output."""

    run_id: str
    started_at: float  # seconds since the epoch
    heartbeat_at: float
    host: str
    pid: int = 0

    def to_json(self) -> bytes:
        return json.dumps({"run_id": self.run_id, "started_at": self.started_at, "heartbeat_at": self.heartbeat_at,
                           "host": self.host, "pid": self.pid}).encode()  # fmt: skip

    def describe(self) -> str:
        started = datetime.fromtimestamp(self.started_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"run {self.run_id} (on {self.host}, started {started})"


def read_leases(output: str, storage: StorageConfig, log: Callable[[str], None] | None = None) -> list[Lease]:
    """Every readable lease under ``OUTPUT/runs/``; unreadable ones are skipped (and said)."""
    fs, root = storage.fs(join_uri(output, "runs"))
    try:
        paths = sorted(fs.glob(f"{root.rstrip('/')}/*.lease"))
    except FileNotFoundError:
        return []
    leases = []
    for path in paths:
        try:
            doc = json.loads(fs.cat_file(path))
            leases.append(Lease(str(doc["run_id"]), float(doc["started_at"]), float(doc["heartbeat_at"]),
                                str(doc.get("host", "?")), int(doc.get("pid", 0))))  # fmt: skip
        except FileNotFoundError:
            continue  # its run ended meanwhile
        except (ValueError, KeyError, TypeError, OSError) as exc:
            if log:
                log(f"ignoring {path.rsplit('/', 1)[-1]}: not a lease this job wrote ({type(exc).__name__})")
    return leases


def _process_gone(lease: Lease) -> bool:
    """The lease was written on this host by a process that no longer exists."""
    if lease.host != socket.gethostname() or lease.pid <= 0:
        return False
    try:
        os.kill(lease.pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class LeaseError(RuntimeError):
    """Another run holds the output."""


class RunLease:
    """A run's lease on its output: :meth:`acquire` before any work, :meth:`release` when it ends."""

    def __init__(self, output: str, run_id: str, storage: StorageConfig, log: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.output, self.run_id, self.storage, self.log, self.clock = output, run_id, storage, log, clock
        self.uri = join_uri(output, "runs", f"{run_id}.lease")
        self.lease = Lease(run_id, clock(), clock(), socket.gethostname(), os.getpid())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._passed_over: dict[str, float] = {}  # run id -> the heartbeat it still had when judged dead

    def _say(self, message: str) -> None:
        if self.log:
            self.log(message)

    def _others(self) -> list[Lease]:
        return [le for le in read_leases(self.output, self.storage, self.log) if le.run_id != self.run_id]

    def live_others(self) -> list[Lease]:
        """The other runs' leases that are renewed while this run watches them (at most :data:`WATCH_S`)."""
        now = self.clock()
        candidates = {}
        for le in self._others():
            if _process_gone(le):
                self._say(f"passing over the lease of run {le.run_id}: its process ({le.host}, pid {le.pid}) is gone")
                self._passed_over[le.run_id] = le.heartbeat_at
            elif now - le.heartbeat_at > STALE_S:
                self._say(f"passing over the lease of run {le.run_id}: not renewed for {now - le.heartbeat_at:.0f} s")
                self._passed_over[le.run_id] = le.heartbeat_at
            else:
                candidates[le.run_id] = le
        if not candidates:
            return []
        self._say(f"run(s) {', '.join(sorted(candidates))} hold a lease on this output: watching for up to "
                  f"{WATCH_S:g} s whether it is renewed")  # fmt: skip
        deadline = time.monotonic() + WATCH_S
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
            current = {le.run_id: le for le in self._others()}
            live = [le for rid, le in current.items() if rid in candidates and le.heartbeat_at != candidates[rid].heartbeat_at]
            if live:
                return live
            candidates = {rid: le for rid, le in candidates.items() if rid in current}  # ended meanwhile: gone
            if not candidates:
                return []
        self._say(f"passing over the lease(s) of {', '.join(sorted(candidates))}: not renewed in {WATCH_S:g} s")
        self._passed_over.update({rid: le.heartbeat_at for rid, le in candidates.items()})
        return []

    def acquire(self, allow_concurrent: bool = False) -> None:
        """Claim the output; raise LeaseError naming the run that holds it (unless ``allow_concurrent``)."""
        if allow_concurrent:
            self.write()
            self._say("--allow-concurrent-runs: other runs' leases are not checked")
        else:
            live = self.live_others()
            if live:
                raise LeaseError(self._refusal(live))
            self.write()
            self.confirm()
        self._thread = threading.Thread(target=self._heartbeat, name="img2pose-lease", daemon=True)
        self._thread.start()

    def write(self) -> None:
        self.lease = Lease(self.run_id, self.lease.started_at, self.clock(), self.lease.host, self.lease.pid)
        self.storage.write_bytes(self.uri, self.lease.to_json())

    def confirm(self) -> None:
        """After writing: two runs may both have found no live lease at the same moment. The earlier start
        (then the smaller run id) keeps the output; the other withdraws its lease and raises. Leases
        passed over as dead (and not renewed since) do not count."""
        earlier = [le for le in self._others()
                   if (le.started_at, le.run_id) < (self.lease.started_at, self.run_id)
                   and self._passed_over.get(le.run_id) != le.heartbeat_at]  # fmt: skip
        if earlier:
            self.storage.delete(self.uri)
            raise LeaseError(self._refusal(earlier))

    def _refusal(self, others: list[Lease]) -> str:
        return (f"another run is writing to this output: {others[0].describe()}, whose lease "
                f"(runs/{others[0].run_id}.lease) is renewed. Two runs at once would both annotate the same images. "
                f"Run again once it has ended, or pass --allow-concurrent-runs to run beside it (safe: each run "
                "writes its own files)")  # fmt: skip

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.write()
            except Exception:  # noqa: BLE001 - a missed heartbeat only lets a second run in sooner
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_S)
        try:
            self.storage.delete(self.uri)
        except Exception:  # noqa: BLE001 - left behind, it is passed over (its heartbeat no longer moves)
            pass


class RunLog:
    """The driver's console as a local file, uploaded to ``OUTPUT/runs/<run_id>.log``."""

    def __init__(self) -> None:
        handle, self.path = tempfile.mkstemp(prefix="img2pose-run-", suffix=".log")
        os.close(handle)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.target: tuple[StorageConfig, str, list[str]] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def upload_to(self, storage: StorageConfig, uri: str, secrets: list[str]) -> None:
        """Where the log goes (once the run has an output and an id), and what to redact from it."""
        self.target = (storage, uri, [s for s in secrets if s])
        self._thread = threading.Thread(target=self._periodic, name="img2pose-run-log", daemon=True)
        self._thread.start()

    def write(self, text: str) -> None:
        """Add a line the console shows outside the copied span (e.g. the final error)."""
        try:
            os.write(self.fd, text.encode("utf-8", "replace"))
        except OSError:
            pass

    def _periodic(self) -> None:
        while not self._stop.wait(LOG_UPLOAD_S):
            self.upload()

    def upload(self) -> bool:
        """Upload the log as it is now; False when there is nowhere to upload it, or the store failed."""
        if self.target is None:
            return False
        storage, uri, secrets = self.target
        with self._lock:
            try:
                with open(self.path, "rb") as f:
                    data = f.read()
                text = redact_text(data.decode("utf-8", "replace"), secrets)
                storage.write_bytes(uri, text.encode("utf-8"))
                return True
            except Exception:  # noqa: BLE001 - a lost log never fails a run
                return False

    def discard(self) -> None:
        """The run was refused before any work: no log is left in the output (one uploaded meanwhile is
        removed), and the local file goes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        target, self.target = self.target, None
        if target is not None:
            storage, uri, _ = target
            try:
                if storage.exists(uri):
                    storage.delete(uri)
            except Exception:  # noqa: BLE001 - a log left behind is harmless
                pass

    def close(self) -> bool:
        """Upload one last time (unless discarded) and remove the local file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        done = self.upload()
        try:
            os.close(self.fd)
        except OSError:
            pass
        try:
            os.unlink(self.path)
        except OSError:
            pass
        return done
