"""http(s) reads: ``requests`` with every address checked when connecting, redirects by hand, a byte cap,
and a total time per read that no server can stretch.

Where the address check sits, and why there: ``requests`` resolves names inside urllib3, at connect
time, so checking a URL's name beforehand proves nothing about the address then used (the name may
answer differently a second later: DNS rebinding). The connection classes of this module's sessions
resolve the name themselves, check every address with the
:class:`~img2pose_core.storage.netpolicy.AddressPolicy`, and connect to exactly those addresses (the
name is kept for the ``Host`` header, TLS SNI and certificate checks, which urllib3 does above the
socket). A hook on ``socket.create_connection`` would be global to the process; a custom resolver in
the pool manager is not an API urllib3 offers. Proxies from the environment are honoured: then the
checked address is the proxy's, and the proxy resolves the URL's name (each hop's name is still checked
here first).

A server that trickles (one byte a second keeps every socket timeout from firing) is cut at the
read's deadline: the body is read with ``read1`` (at most one ``recv`` per call, the deadline checked
between calls), and a timer shuts the read's sockets down at the deadline, which ends a ``recv`` that
waits inside the status line, the headers or a compressed body.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from .netpolicy import AddressNotAllowed, AddressPolicy, host_of, url_refusal
from .reads import ReadFailure, ReadLimits
from .retry import exception_chain, with_retries
from ..uris import scheme_of

if TYPE_CHECKING:
    from .filesystems import StorageConfig

__all__ = ["read_http", "describe_http_error"]

MAX_REDIRECTS = 5
_CHUNK = 1 << 16  # one read1 call; also bounds what one call can inflate a compressed body to
_current = threading.local()  # the _Watch of the read running in this thread


class _Watch:
    """The sockets of one read, shut down when its deadline passes (a blocked ``recv`` then returns)."""

    def __init__(self, deadline: float) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._done = False
        self.expired = False  # the deadline passed and the sockets were shut: a short body is a cut one
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def add(self, sock: socket.socket | None) -> None:
        with self._lock:
            if sock is not None and not self._done:
                self._sockets.append(sock)

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = self.expired = True
            for sock in self._sockets:
                try:
                    # The plain socket's method, also for a TLS socket: it acts on the descriptor only.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed, or a socket that TLS took over (its descriptor moved on)

    def close(self) -> None:
        with self._lock:
            self._done = True  # after this, the sockets may serve the session's next read: never touch them
            self._sockets.clear()
        self._timer.cancel()


def _watch(sock: socket.socket | None) -> None:
    watch = getattr(_current, "watch", None)
    if watch is not None:
        watch.add(sock)


def _guarded_connection(base: type, policy: AddressPolicy) -> type:
    """``base`` (urllib3's HTTP or HTTPS connection) connecting only to addresses ``policy`` allows."""
    from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
    from urllib3.util.connection import create_connection

    class Guarded(base):
        def _new_conn(self) -> socket.socket:
            host = self._dns_host
            try:
                addresses = policy.addresses(host, self.port)  # AddressNotAllowed passes through urllib3
            except socket.gaierror as exc:
                raise NameResolutionError(self.host, self, exc) from exc
            last: OSError | None = None
            for address in addresses:
                try:
                    sock = create_connection((address, self.port), self.timeout, source_address=self.source_address,
                                             socket_options=self.socket_options)  # fmt: skip
                except OSError as exc:  # socket.timeout too: try the next address, as urllib3 does
                    last = exc
                    continue
                _watch(sock)
                return sock
            if isinstance(last, socket.timeout):
                raise ConnectTimeoutError(self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})")
            raise NewConnectionError(self, f"Failed to establish a new connection: {last}")

        def connect(self) -> None:
            super().connect()
            _watch(self.sock)  # for https, the TLS socket

        def request(self, *args: Any, **kwargs: Any) -> None:
            _watch(self.sock)  # a kept-alive connection of an earlier read (None when not yet connected)
            super().request(*args, **kwargs)

    Guarded.__name__ = f"Guarded{base.__name__}"
    return Guarded


_POOLS: dict[AddressPolicy, dict[str, type]] = {}
_POOLS_LOCK = threading.Lock()


def _pool_classes(policy: AddressPolicy) -> dict[str, type]:
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    with _POOLS_LOCK:
        if policy not in _POOLS:
            http_conn, https_conn = _guarded_connection(HTTPConnection, policy), _guarded_connection(HTTPSConnection, policy)
            _POOLS[policy] = {
                "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
                "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
            }
        return _POOLS[policy]


def _new_session(policy: AddressPolicy) -> Any:
    import requests
    from http.cookiejar import DefaultCookiePolicy
    from requests.adapters import HTTPAdapter

    classes = _pool_classes(policy)

    class GuardedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = classes

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **kwargs)
            manager.pool_classes_by_scheme = classes
            return manager

    session = requests.Session()
    session.mount("http://", GuardedAdapter())
    session.mount("https://", GuardedAdapter())
    # Each read stands alone, as a plain GET would: no cookie of one URL is sent with another.
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    return session


# Idle sessions by policy: a session serves one read at a time, and keeps its connections open for
# the next read of the same host (manifests of URLs mostly name a few hosts).
_SESSIONS: dict[AddressPolicy, queue.SimpleQueue] = {}


def _take_session(policy: AddressPolicy) -> Any:
    with _POOLS_LOCK:
        idle = _SESSIONS.setdefault(policy, queue.SimpleQueue())
    try:
        return idle.get_nowait()
    except queue.Empty:
        return _new_session(policy)


def describe_http_error(exc: BaseException) -> str:
    """A short cause for a failed HTTP read (requests' own messages repeat the whole URL and pool)."""
    text = " ".join(str(e) for e in exception_chain(exc)).lower()
    if "name or service not known" in text or "failed to resolve" in text or "nodename nor servname" in text:
        return "the host name does not resolve"
    if "connection refused" in text:
        return "the host refused the connection"
    if "connecttimeout" in text or "connect timeout" in text:
        return "no connection within the connect timeout"
    if "readtimeout" in text or "read timed out" in text:
        return "the server sent nothing within the idle timeout"
    if "ssl" in text:
        return f"TLS failed ({type(exc).__name__})"
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _status_failure(code: int) -> Exception:
    if code in (404, 410):
        return ReadFailure("unreadable", f"HTTP {code}: not found")
    error = OSError(f"HTTP {code}")
    error.status = code  # type: ignore[attr-defined]  # a plain OSError (its name is in messages) with what is_transient reads
    return error


def _body(resp: Any, max_bytes: int | None, deadline: float, watch: _Watch) -> bytes:
    declared = resp.headers.get("content-length")
    if max_bytes is not None and declared and declared.isdigit() and int(declared) > max_bytes:
        raise ReadFailure("too_large", f"the server declares {declared} bytes, above the limit of {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() >= deadline:
            raise TimeoutError("the read timeout passed during the transfer")
        chunk = resp.raw.read1(_CHUNK, decode_content=True)  # one recv at most: a trickle meets the deadline
        if not chunk:
            if watch.expired:  # the end came from the timer, not from the server
                raise TimeoutError("the read timeout passed during the transfer")
            return b"".join(chunks)
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise ReadFailure("too_large", f"the body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)


def _get(url: str, session: Any, storage: StorageConfig, limits: ReadLimits, deadline: float, headers: dict | None,
         watch: _Watch) -> bytes:
    import requests

    policy = limits.addresses
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        why = url_refusal(current, policy)
        if why:
            raise ReadFailure("not_allowed", why)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the read timeout passed")
        timeout = (min(storage.connect_timeout_s, remaining), min(storage.idle_timeout_s, remaining))
        try:
            policy.addresses(*host_of(current))  # the resolved addresses, before any connection
            with session.get(current, stream=True, timeout=timeout, allow_redirects=False, headers=headers) as resp:
                if resp.is_redirect:
                    current = requests.compat.urljoin(current, resp.headers.get("location", ""))
                    if scheme_of(current) not in ("http", "https"):
                        raise ReadFailure("not_allowed", f"redirected to a {scheme_of(current) or 'local'} location")
                    continue
                if resp.status_code >= 400:
                    raise _status_failure(resp.status_code)
                return _body(resp, limits.max_bytes, deadline, watch)
        except AddressNotAllowed as exc:
            raise ReadFailure("not_allowed", str(exc)) from None
    raise ReadFailure("unreadable", f"more than {MAX_REDIRECTS} redirects")


def read_http(url: str, storage: StorageConfig, limits: ReadLimits, deadline: float, headers: dict | None = None) -> bytes:
    """The body at ``url`` (see the module docstring); :class:`ReadFailure` for a refusal, a cap or a 404,
    the last error of the retried request otherwise (its caller words it)."""
    policy = limits.addresses
    session = _take_session(policy)
    watch = _Watch(deadline)
    _current.watch = watch
    try:
        return with_retries(lambda: _get(url, session, storage, limits, deadline, headers, watch),
                            attempts=storage.read_attempts, deadline=deadline, retryable=_retryable)  # fmt: skip
    finally:
        _current.watch = None
        watch.close()
        _SESSIONS[policy].put(session)


def _retryable(exc: BaseException) -> bool:
    from .retry import is_transient

    # A refusal, a cap or a missing page is final whatever its message says ("503" in a host name).
    return not isinstance(exc, ReadFailure) and is_transient(exc)
