"""Keep lines that need no action out of the job's console, at the file-descriptor level.

Ray 2.60's core worker writes one ERROR line to the driver's stderr on every run that uses an actor
pool (``core_worker.cc ... has constructor arguments in the object store and max_restarts > 0``,
ray-project/ray#57733): it concerns Ray Data's own actors, and nothing in the job can prevent it.
It is written by C++ straight to file descriptor 2, below Python's logging, so the only place to
drop it is the descriptor: :class:`StderrFilter` puts a pipe in front of it and forwards everything
else unchanged, partial lines included (a terminal's progress bar redraws a line without ending it).

The same pipe, on file descriptors 1 and 2, also copies the driver's console into the run's log
file (``copy_to``), which the job uploads to ``OUTPUT/runs/<run_id>.log``: what ``ray job logs``
shows, kept beside the run's manifest after the cluster and its submitter are gone.

If the forwarding thread fails, the descriptor is given back to the real stream at once, so a
filter can never hold output back or block a writer for long. ``--verbose`` drops nothing.
"""

from __future__ import annotations

import os
import re
import threading
from types import TracebackType

__all__ = ["NO_ACTION_LINES", "ConsoleFilter", "drop_lines", "log"]

# Whole lines that need no action. Each names the Ray issue that makes it appear.
NO_ACTION_LINES = (
    # ray-project/ray#57733: Ray Data's actor pool, every run.
    re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store "
               rb"and max_restarts > 0"),  # fmt: skip
)


def log(message: str) -> None:
    """One line of the job's own on the console (stderr), marked as the job's."""
    import sys

    print(f"[annotate] {message}", file=sys.stderr, flush=True)


def drop_lines(data: bytes, patterns=NO_ACTION_LINES) -> tuple[bytes, bytes]:
    """Split ``data`` into (what to forward now, an unfinished last line to keep for later).

    Complete lines matching a pattern are dropped. An unfinished last line is kept only while it could
    still become such a line (it starts like a C++ log line, ``[``); anything else goes out at once.
    """
    if not patterns:
        return data, b""
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when data ends with a newline
    out = [line + b"\n" for line in lines if not any(p.search(line) for p in patterns)]
    if tail.startswith(b"[") and b"\r" not in tail and len(tail) < 4096:
        return b"".join(out), tail
    return b"".join(out) + tail, b""


class ConsoleFilter:
    """A context manager: while active, file descriptor ``fd`` is a pipe whose contents are forwarded
    to the real stream without the lines matching ``patterns``, and copied to the file descriptor
    ``copy_to`` when one is given (an append-mode file shared by both streams)."""

    def __init__(self, fd: int = 2, patterns=NO_ACTION_LINES, copy_to: int | None = None) -> None:
        self.fd = fd
        self.patterns = patterns
        self.copy_to = copy_to
        self._saved: int | None = None
        self._read: int | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "ConsoleFilter":
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = os.dup(self.fd)
        self._read, write = os.pipe()
        os.dup2(write, self.fd)
        os.close(write)
        self._thread = threading.Thread(target=self._forward, name=f"img2pose-console-{self.fd}", daemon=True)
        self._thread.start()
        return self

    def _forward(self) -> None:
        pending = b""
        try:
            while True:
                # Each descriptor looked up just before its use: __exit__ closes them and sets them to None
                # (also when its join timed out and this thread still runs).
                if (source := self._read) is None:
                    break
                chunk = os.read(source, 65536)
                if not chunk:  # every writer closed: the filter is being removed
                    break
                now, pending = drop_lines(pending + chunk, self.patterns)
                if now:
                    if (console := self._saved) is None:
                        break
                    os.write(console, now)
                    if self.copy_to is not None:
                        try:
                            os.write(self.copy_to, now)
                        except OSError:  # a full disk loses the copy, never the console
                            self.copy_to = None
        except Exception:  # noqa: BLE001 - never hold output back: give stderr back as it was
            self._restore()
        finally:
            if pending:
                for fd in (self._saved, self.copy_to):
                    if fd is not None:
                        try:
                            os.write(fd, pending)
                        except OSError:
                            pass

    def _restore(self) -> None:
        if self._saved is not None:
            try:
                os.dup2(self._saved, self.fd)
            except OSError:
                pass

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        self._restore()  # the pipe's last writer is closed: the thread drains it and ends
        if self._thread is not None:
            # Long enough for a loaded machine to drain the pipe, so that what the job prints next (its
            # last line, the cause of a failure) comes after everything before it, never in the middle.
            self._thread.join(timeout=30)
        for fd in (self._read, self._saved):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._read = self._saved = None
