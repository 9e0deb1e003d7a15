"""The job layer's one error: a reason to stop, with what to fix; and the cause of a failed run in one line."""

from __future__ import annotations

import re

__all__ = ["JobError", "RunStopped", "stopped_by", "root_cause", "failure_cause", "worker_deaths", "stop_on_signals"]


class JobError(RuntimeError):
    """A reason to stop, with what to fix. Exit code 2 before any work starts, 1 for a failed run."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RunStopped(BaseException):
    """The run was stopped by a signal (SIGTERM from Kubernetes, a scheduler or ``kill``; SIGINT from Ctrl-C).
    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT


def stopped_by(exc: BaseException) -> RunStopped | None:
    """The :class:`RunStopped` (or Ctrl-C's KeyboardInterrupt, as SIGINT) behind ``exc``, if a signal ended
    the run: Ray may wrap the exception raised in its own call (``ray.get``) before it reaches the job."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, RunStopped):
            return current
        if isinstance(current, KeyboardInterrupt):
            return RunStopped(2)
        cause = getattr(current, "cause", None)
        todo += [current.__cause__, current.__context__, cause if isinstance(cause, BaseException) else None]
    return None


def stop_on_signals() -> None:
    """From now on SIGTERM and SIGINT raise :class:`RunStopped` in the main thread, so that the run ends
    through its failure path (a failure record, what to run next) instead of dying mid-way. Installed
    after ``ray.init``, which puts its own SIGTERM handler (``sys.exit``) in place."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, _frame):
        raise RunStopped(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def _is_marker(exc: BaseException) -> bool:
    """Ray Data raises the real error ``from SystemException()``: an empty marker, never the cause."""
    return type(exc).__name__ == "SystemException" and not str(exc).strip()


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes, outermost first (Ray's ``.cause``, then ``__cause__``), markers left out."""
    out: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if not _is_marker(current):
            out.append(current)
        current = getattr(current, "cause", None) or current.__cause__
        if not isinstance(current, BaseException):
            current = None
    return out or [exc]


# A line of a Python traceback that names the error: "ImportError: cannot import name ...".
_ERROR_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception|Interrupt)): (\S.*)$")
_WRAPPERS = {"ActorDiedError", "RayActorError", "RayTaskError", "SystemException", "UserCodeException",
             "RayDataUserCodeException"}  # fmt: skip


def root_cause(exc: BaseException) -> str:
    """The innermost error of a Ray failure chain, in one line. Where Ray carries a worker's error only as
    text (an actor that failed in its constructor), the worker's own last error line is the cause."""
    inner = _chain(exc)[-1]
    text = str(inner).strip().splitlines()
    if type(inner).__module__.startswith("ray") or type(inner).__name__ in _WRAPPERS:
        found = [m for m in (_ERROR_LINE.match(line) for line in text) if m and m.group(1) not in _WRAPPERS]
        if found:
            return f"{found[-1].group(1)}: {found[-1].group(2).strip()}"[:2000]
    # The first line: Ray 2.60 appends its retry hints below the error's own message.
    return f"{type(inner).__name__}: {text[0] if text else ''}"[:2000]


_MEMORY = re.compile(r"OUT_OF_MEMORY|OutOfMemoryError|out of memory|memory monitor|running low on memory|\bOOM\b", re.I)
_NODE = re.compile(r"node (?:was terminated|died|is dead)|NodeDiedError|raylet died|LocalRayletDiedError", re.I)
_KILLED = re.compile(r"worker (?:process )?(?:has )?died|died unexpectedly|WorkerCrashedError|SIGKILL|killed", re.I)
_DISK = re.compile(r"No space left on device|ENOSPC|OutOfDiskError", re.I)


def worker_deaths() -> dict[str, int]:
    """Ray workers of this run (its Ray job) that died, by why (``memory``, ``node``, ``other``), from Ray's state API;
    empty where the API does not answer within a few seconds."""
    try:
        import ray
        from ray.util.state import list_workers

        job = ray.get_runtime_context().get_job_id()  # this run's workers only, on a shared cluster
        workers = list_workers(filters=[("is_alive", "=", False), ("job_id", "=", job)], detail=True, limit=10_000,
                               timeout=5, raise_on_missing_output=False)  # fmt: skip
    except Exception:  # noqa: BLE001 - the count is a detail of the message, never a reason to fail again
        return {}
    counts: dict[str, int] = {}
    for w in workers:
        exit_type = str(getattr(w, "exit_type", "") or "")
        detail = str(getattr(w, "exit_detail", "") or "")
        if exit_type in ("", "INTENDED_USER_EXIT", "INTENDED_SYSTEM_EXIT"):
            continue
        why = "memory" if _MEMORY.search(exit_type + " " + detail) else "node" if _NODE.search(detail) else "other"
        counts[why] = counts.get(why, 0) + 1
    return counts


def failure_cause(exc: BaseException, deaths: dict[str, int] | None = None) -> str:
    """What ended a run, in one line that says what to do where the cause is known: workers killed for
    lack of memory, a node lost, a worker killed, a full disk; else the innermost error."""
    chain = _chain(exc)
    text = " ".join(f"{type(e).__name__}: {e}" for e in chain)
    inner = root_cause(exc)
    deaths = deaths or {}
    if _DISK.search(text):
        return f"the disk is full ({inner}): free space where the output, the cache or the temp folder is"
    if _MEMORY.search(text) or deaths.get("memory"):
        n = deaths.get("memory", 0)
        who = f"{n} worker{'s' if n != 1 else ''}" if n else "workers"
        return (f"Ray killed {who} for lack of memory: lower --concurrency or --batch-size (or --sources-per-task), "
                f"or give the node more memory ({inner})")  # fmt: skip
    if _NODE.search(text) or deaths.get("node"):
        return f"a Ray node died or was removed during the run ({inner})"
    if _KILLED.search(text) and type(chain[-1]).__module__.startswith("ray"):
        return f"a Ray worker was killed during the run ({inner})"
    return inner
