"""Which storage errors are worth another try, and retrying them with jittered exponential backoff."""

from __future__ import annotations

import errno
import random
import socket
import time
from typing import Callable, TypeVar

__all__ = ["exception_chain", "is_transient", "with_retries"]

T = TypeVar("T")

# Messages of errors worth retrying, from botocore/s3fs/aiohttp/pyarrow (lower case).
_TRANSIENT_MARKERS = (
    "slowdown",
    "slow down",
    "throttl",
    "503",
    "500 internal",
    "internalerror",
    "service unavailable",
    "serviceunavailable",
    "requesttimeout",
    "timed out",
    "timeout",
    "connection reset",
    "connection aborted",
    "connectionerror",
    "httpclienterror",
    "server disconnected",
    "broken pipe",
    "temporarily unavailable",
    "try again",
    "incompleteread",
    "response ended prematurely",
    "responsestreamingerror",
    # s3fs keeps only the server's message: SlowDown says this, a 500 answer to HEAD (no body) the reason.
    "reduce your request rate",
    "internal server error",
    "too many requests",
    "bad gateway",
    "gateway timeout",
)
# s3fs turns S3 error codes into OSError errnos (s3fs/errors.py): SlowDown, ServiceUnavailable, 503 and
# OperationAborted -> EBUSY; InternalError and 500 -> EREMOTEIO. The errno is the reliable signal.
_TRANSIENT_ERRNOS = frozenset(
    {errno.EBUSY, getattr(errno, "EREMOTEIO", errno.EIO), errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET,
     errno.ECONNABORTED, errno.EPIPE}
)  # fmt: skip


# Errors that no retry mends: a name that does not resolve, a host that refuses connections.
_PERMANENT_MARKERS = (
    "name or service not known",
    "nodename nor servname",
    "no address associated",
    "name resolution",
    "failed to resolve",
    "getaddrinfo failed",
    "dnserror",
    "connection refused",
    "connectionrefused",
    "certificate verify failed",
    "sslerror",
    "wrong version number",
)


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or during, innermost last."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 8:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` looks like throttling or a passing network/store fault (worth a retry).

    Retried: throttling, server errors (5xx, 429), resets, cut transfers, timeouts. Not retried: a
    name that does not resolve, a refused connection, a missing object, a refused permission.
    """
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    chain = exception_chain(exc)
    if any(isinstance(e, socket.gaierror) or isinstance(e, ConnectionRefusedError) for e in chain):
        return False
    described = " ".join(f"{' '.join(c.__name__ for c in type(e).__mro__)} {e}" for e in chain).lower()
    if any(marker in described for marker in _PERMANENT_MARKERS):
        return False
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    if isinstance(status, int) and 400 <= status < 600:
        return status == 429 or status in (500, 502, 503, 504)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    # s3fs turns some answers into bare OSErrors by errno: a 503 SlowDown on PUT into
    # OSError(EBUSY, "Please reduce your request rate.") and a 500 on HEAD into OSError(EREMOTEIO,
    # "Internal Server Error"); no text marker below matches them.
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    # Class names along the MRO: botocore's ConnectionClosedError ("Connection was closed before we
    # received a valid response", a reset or half a body on a listing) is an HTTPClientError by class only.
    names = " ".join(cls.__name__ for cls in type(exc).__mro__)
    text = f"{names} {exc}".lower()
    return any(marker in text for marker in _TRANSIENT_MARKERS)


def with_retries(
    fn: Callable[[], T],
    *,
    attempts: int = 8,
    base_delay: float = 0.2,
    max_delay: float = 20.0,
    deadline: float | None = None,
    retryable: Callable[[BaseException], bool] = is_transient,
    jitter: bool = True,
    on_retry: Callable[[BaseException, int, float], None] | None = None,
) -> T:
    """Call ``fn`` up to ``attempts`` times, retrying the failures ``retryable`` accepts.

    The wait after failure ``n`` (from 1) is ``base_delay * 2**(n-1)``, at most ``max_delay``, times a
    random factor in [0.5, 1.5) with ``jitter`` (so that many workers throttled together do not retry
    together). ``deadline`` (a ``time.monotonic()`` value): no attempt starts, and no wait lasts, past
    it. ``on_retry(exc, n, delay)`` is called before each wait. The last failure is raised as it is.
    """
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified by retryable
            if attempt == attempts or not retryable(exc):
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1))
            if jitter:
                delay *= 0.5 + random.random()
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise
            if on_retry is not None:
                on_retry(exc, attempt, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")

