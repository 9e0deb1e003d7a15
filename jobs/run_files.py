"""What a run keeps beside its manifest under ``OUTPUT/runs/``: its lease and its console log.

**Lease** (``runs/<run_id>.lease``, JSON). Two runs on one output at once are safe (each writes its own
files; :mod:`jobs.sink`, docs/schema.md), but with ``--skip-existing`` both annotate the same images and
pay twice: the nightly CronJob starting while last night's run still goes, or a manual run beside it.
``concurrencyPolicy`` does not see a RayJob made by hand or by ``kubectl create job --from=cronjob``,
so the job itself checks: before any work it refuses to start while another run holds a fresh lease on
the output (``--allow-concurrent-runs`` starts anyway). A run renews its lease every
:data:`HEARTBEAT_S` and removes it when it ends; a killed run's lease goes stale after
:data:`STALE_S`, so a retry on a fresh cluster (minutes later) is never refused by its dead
predecessor. Two runs that start within the same moment both write their lease, read the others
back, and the later one (by start time, then run id) withdraws: exactly one goes on. A lease that
cannot be read, or whose heartbeat lies further in the future than clocks drift, is ignored (and
said): a planted file must not block every run.

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

from img2pose_core.uris import redact_text

from .storage import StorageConfig, join_uri

__all__ = ["HEARTBEAT_S", "STALE_S", "LOG_UPLOAD_S", "Lease", "RunLease", "read_leases", "RunLog"]

HEARTBEAT_S = 30.0
# Ten missed heartbeats: a store that is slow for a while does not let a second run in, and a retry
# of a killed run (a new cluster takes minutes to come up) finds its predecessor's lease stale.
STALE_S = 300.0
LOG_UPLOAD_S = 300.0


@dataclass(frozen=True)
class Lease:
    """One run's claim on an output."""

    run_id: str
    started_at: float  # seconds since the epoch
    heartbeat_at: float
    host: str

    def to_json(self) -> bytes:
        return json.dumps({"run_id": self.run_id, "started_at": self.started_at, "heartbeat_at": self.heartbeat_at,
                           "host": self.host}).encode()  # fmt: skip

    def describe(self, now: float) -> str:
        started = datetime.fromtimestamp(self.started_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"run {self.run_id} (on {self.host}, started {started}, last heartbeat {now - self.heartbeat_at:.0f} s ago)"


def read_leases(output: str, storage: StorageConfig, log: Callable[[str], None] | None = None) -> list[Lease]:
    """Every readable lease under ``OUTPUT/runs/``; unreadable ones are skipped (and said)."""
    fs, root = storage.fs(join_uri(output, "runs"))
    try:
        paths = sorted(p for p in fs.glob(f"{root.rstrip('/')}/*.lease"))
    except FileNotFoundError:
        return []
    leases = []
    for path in paths:
        try:
            doc = json.loads(fs.cat_file(path))
            leases.append(Lease(str(doc["run_id"]), float(doc["started_at"]), float(doc["heartbeat_at"]),
                                str(doc.get("host", "?"))))  # fmt: skip
        except FileNotFoundError:
            continue  # its run ended meanwhile
        except (ValueError, KeyError, TypeError, OSError) as exc:
            if log:
                log(f"ignoring {path.rsplit('/', 1)[-1]}: not a lease this job wrote ({type(exc).__name__})")
    return leases


def _fresh(lease: Lease, now: float, log: Callable[[str], None] | None) -> bool:
    if lease.heartbeat_at > now + STALE_S:
        if log:
            log(f"ignoring the lease of run {lease.run_id}: its heartbeat lies {lease.heartbeat_at - now:.0f} s in the future")
        return False
    return now - lease.heartbeat_at < STALE_S


class LeaseError(RuntimeError):
    """Another run holds the output."""


class RunLease:
    """A run's lease on its output: :meth:`acquire` before any work, :meth:`release` when it ends."""

    def __init__(self, output: str, run_id: str, storage: StorageConfig, log: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.output, self.run_id, self.storage, self.log, self.clock = output, run_id, storage, log, clock
        self.uri = join_uri(output, "runs", f"{run_id}.lease")
        self.lease = Lease(run_id, clock(), clock(), socket.gethostname())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _others(self) -> list[Lease]:
        now = self.clock()
        return [le for le in read_leases(self.output, self.storage, self.log)
                if le.run_id != self.run_id and _fresh(le, now, self.log)]  # fmt: skip

    def acquire(self, allow_concurrent: bool = False) -> None:
        """Claim the output; raise LeaseError naming the run that holds it (unless ``allow_concurrent``)."""
        others = self.look(allow_concurrent)
        self.write()
        if allow_concurrent:
            if others and self.log:
                self.log(f"--allow-concurrent-runs: {others[0].describe(self.clock())} also writes to this output")
        else:
            self.confirm()
        self._thread = threading.Thread(target=self._heartbeat, name="img2pose-lease", daemon=True)
        self._thread.start()

    def look(self, allow_concurrent: bool = False) -> list[Lease]:
        """The other live leases; LeaseError where there is one and ``allow_concurrent`` is off."""
        others = self._others()
        if others and not allow_concurrent:
            raise LeaseError(self._refusal(others))
        return others

    def write(self) -> None:
        self.storage.write_bytes(self.uri, self.lease.to_json())

    def confirm(self) -> None:
        """After writing: two runs may both have passed :meth:`look` at the same moment, and the earlier
        start (then the smaller run id) keeps the output; the other withdraws its lease and raises."""
        earlier = [le for le in self._others() if (le.started_at, le.run_id) < (self.lease.started_at, self.run_id)]
        if earlier:
            self.storage.delete(self.uri)
            raise LeaseError(self._refusal(earlier))

    def _refusal(self, others: list[Lease]) -> str:
        now = self.clock()
        return (f"another run is writing to this output: {others[0].describe(now)}. Two runs at once would both "
                f"annotate the same images. Wait for it to end (its lease, runs/{others[0].run_id}.lease, is renewed "
                f"every {HEARTBEAT_S:g} s and goes stale {STALE_S:g} s after its last renewal), or pass "
                "--allow-concurrent-runs to run beside it (safe: each run writes its own files)")  # fmt: skip

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.lease = Lease(self.run_id, self.lease.started_at, self.clock(), self.lease.host)
                self.storage.write_bytes(self.uri, self.lease.to_json())
            except Exception:  # noqa: BLE001 - a missed heartbeat only lets a second run in sooner
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_S)
        try:
            self.storage.delete(self.uri)
        except Exception:  # noqa: BLE001 - left behind, it goes stale
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

    def close(self) -> bool:
        """Upload one last time and remove the local file."""
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
