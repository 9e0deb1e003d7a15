"""A fault-injecting HTTP proxy in front of an S3 endpoint (moto's server), for reliability tests.

Clients are pointed at :attr:`FaultProxy.url` (the job with ``--s3-endpoint-url``) and every request
is forwarded to the real endpoint, except that, drawn at random with a fixed seed, a share of them:

- gets ``503 SlowDown`` or ``500 InternalError`` with S3's XML error body (``error_share``, drawn
  evenly from ``error_statuses``);
- has its connection reset (TCP RST, no response at all; ``reset_share``);
- gets the upstream status and headers but only half of the body, then a reset (``truncate_share``);
- is delayed by a random latency (``latency_share``, ``latency_s``; independent of the above).

``forced`` makes sure given requests get a given fault: pairs ``(regex, fault)``, each applied once,
to the first request whose ``"METHOD /path?query"`` matches the regex (fault: ``"503 SlowDown"``,
``"500 InternalError"``, ``"reset"`` or ``"truncated"``).

``refuse_writes_after=N`` forwards the first N writes (PUT/POST) and answers every later one with
``refuse_status`` (403 AccessDenied by default): an output store that starts refusing writes mid-run.
Which writes count and which are refused can be chosen by object, with regexes on ``"METHOD /path?query"``:
``refuse_counting`` (the writes counted towards N; default every write) and ``refuse_writes_to`` (the writes
refused once N have gone through; default every write). E.g. N=2, counting ``^PUT /b/out/images/``,
refusing ``^(PUT|POST) /b/out/(faces|images)/``: exactly two images files are committed, then every data
write is refused, however many lease renewals or log uploads (``runs/``) a slow machine made meanwhile.
Everything injected is counted in :attr:`FaultProxy.counts`. All of it is plain ``http.server`` and
``http.client`` on 127.0.0.1; :meth:`FaultProxy.configure` changes the plan while it runs.
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

__all__ = ["FaultPlan", "FaultProxy"]

_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "content-length",
}  # fmt: skip
_WRITES = ("PUT", "POST")
_ERRORS = {
    503: ("SlowDown", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    403: ("AccessDenied", "Access Denied"),
}


@dataclass(frozen=True)
class FaultPlan:
    """What to inject; shares are probabilities per request (they add up: error, then reset, then truncate)."""

    error_share: float = 0.0
    error_statuses: tuple[int, ...] = (503, 500)
    reset_share: float = 0.0
    truncate_share: float = 0.0
    latency_share: float = 0.0
    latency_s: tuple[float, float] = (0.01, 0.1)
    refuse_writes_after: int | None = None
    refuse_status: int = 403
    refuse_counting: str | None = None
    refuse_writes_to: str | None = None
    forced: tuple[tuple[str, str], ...] = ()


def _error_body(status: int, path: str) -> bytes:
    code, message = _ERRORS[status]
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message><Resource>{path}</Resource>"
        f"<RequestId>FAULT{random.getrandbits(32):08X}</RequestId></Error>"
    ).encode()


class FaultProxy:
    """A threaded HTTP proxy to ``upstream`` that injects the faults of a :class:`FaultPlan`."""

    def __init__(self, upstream: str, *, seed: int = 0, **plan) -> None:
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port or 80
        self.plan = FaultPlan(**plan)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._writes_forwarded = 0
        self._forced_done: set[int] = set()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

            def log_message(self, format, *args):  # noqa: A002 - quiet
                pass

            def do_GET(self):
                proxy._handle(self)

            do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    # -- control ----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def configure(self, **changes) -> None:
        """Change the plan while running, e.g. ``configure(refuse_writes_after=None)`` to heal it."""
        with self._lock:
            self.plan = replace(self.plan, **changes)
            if "refuse_writes_after" in changes:
                self._writes_forwarded = 0

    @property
    def counts(self) -> dict:
        """What happened so far: ``requests``, per method, ``forwarded`` and one key per fault injected."""
        with self._lock:
            return dict(self._counts)

    def injected(self) -> int:
        c = self.counts
        return sum(c.get(k, 0) for k in ("503 SlowDown", "500 InternalError", "reset", "truncated", "refused write"))

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one request ------------------------------------------------------------------------------
    def _decide(self, method: str, path: str) -> tuple[str | None, float]:
        with self._lock:
            plan, rng = self.plan, self._rng
            self._counts["requests"] += 1
            self._counts[method] += 1
            delay = rng.uniform(*plan.latency_s) if rng.random() < plan.latency_share else 0.0
            if delay:
                self._counts["delayed"] += 1
            request = f"{method} {path}"
            counted = method in _WRITES and (plan.refuse_counting is None or re.search(plan.refuse_counting, request))
            refusable = method in _WRITES and (plan.refuse_writes_to is None or re.search(plan.refuse_writes_to, request))
            if refusable and plan.refuse_writes_after is not None:
                if self._writes_forwarded >= plan.refuse_writes_after:
                    self._counts["refused write"] += 1
                    return "refuse", delay
            r = rng.random()
            fault = None
            for i, (pattern, forced) in enumerate(plan.forced):
                if i not in self._forced_done and re.search(pattern, f"{method} {path}"):
                    self._forced_done.add(i)
                    self._counts["forced"] += 1
                    fault, r = forced, 1.0  # 1.0: no random fault on top
                    break
            if r < plan.error_share:
                status = plan.error_statuses[int(rng.random() * len(plan.error_statuses))]
                fault = f"{status} {_ERRORS[status][0]}"
            elif r < plan.error_share + plan.reset_share:
                fault = "reset"
            elif r < plan.error_share + plan.reset_share + plan.truncate_share:
                fault = "truncated"
            if fault:
                self._counts[fault] += 1
            if fault in (None, "truncated"):
                self._counts["forwarded"] += 1
                if counted:
                    self._writes_forwarded += 1
            return fault, delay

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = _read_body(h)
        fault, delay = self._decide(h.command, h.path)
        if delay:
            time.sleep(delay)
        if fault == "reset":
            _reset(h)
            return
        if fault == "refuse":
            _send(h, self.plan.refuse_status, [("Content-Type", "application/xml")], _error_body(self.plan.refuse_status, h.path))
            return
        if fault in ("503 SlowDown", "500 InternalError"):
            status = int(fault[:3])
            _send(h, status, [("Content-Type", "application/xml")], _error_body(status, h.path))
            return
        try:
            status, headers, payload = self._forward(h, body)
        except OSError:
            _reset(h)  # upstream gone: look like a dead store
            return
        if fault == "truncated" and h.command != "HEAD" and len(payload) > 1:
            h.send_response(status)
            for k, v in headers:
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload[: len(payload) // 2])
            h.wfile.flush()
            _reset(h)
            return
        _send(h, status, headers, payload)

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body or h.command in _WRITES:
                headers["Content-Length"] = str(len(body))
            conn.request(h.command, h.path, body=body if body else None, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            if h.command == "HEAD" and resp.getheader("Content-Length") is not None:
                out.append(("Content-Length", resp.getheader("Content-Length")))
            return resp.status, out, payload
        finally:
            conn.close()


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(h.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(h.rfile.read(size))
            h.rfile.readline()
    length = int(h.headers.get("Content-Length") or 0)
    return h.rfile.read(length) if length else b""


def _send(h: BaseHTTPRequestHandler, status: int, headers: list, payload: bytes) -> None:
    h.send_response(status)
    has_length = False
    for k, v in headers:
        h.send_header(k, v)
        has_length |= k.lower() == "content-length"
    if h.command != "HEAD":
        h.send_header("Content-Length", str(len(payload)))
    elif not has_length:
        h.send_header("Content-Length", "0")
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(payload)
    h.wfile.flush()


def _reset(h: BaseHTTPRequestHandler) -> None:
    """Drop the connection with a TCP reset: no status line, no body."""
    h.close_connection = True
    try:
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
    except OSError:
        pass


# Re-exported for tests that want to build a plan by name.
PLAN_FIELDS = tuple(f.name for f in fields(FaultPlan))
