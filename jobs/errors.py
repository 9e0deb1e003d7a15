"""The job layer's one error: a reason to stop, with what to fix."""

from __future__ import annotations

__all__ = ["JobError", "root_cause"]


class JobError(RuntimeError):
    """A reason to stop, with what to fix. Exit code 2 before any work starts, 1 for a failed run."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def root_cause(exc: BaseException) -> str:
    """The innermost error of a Ray failure chain, in one line."""
    while True:
        nxt = getattr(exc, "cause", None) or exc.__cause__
        if nxt is None or nxt is exc:
            break
        exc = nxt
    # The first line: Ray 2.60 appends its retry hints below the error's own message.
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:2000]
