"""Real hosts on 127.0.0.1 that misbehave the ways the internet does, for reading tests.

- :class:`ImageServer`: an HTTP server with programmable routes (files, status codes, redirects, flaky
  answers that fail N times first, a body that never ends), counting hits per path;
- :class:`SilentHost`: accepts TCP connections and never answers a byte;
- :func:`refused_url`: a port where nothing listens (the connection is refused);
- :data:`UNRESOLVABLE_HOST`: a name under ``.invalid``, which never resolves (RFC 6761).
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections import defaultdict
from typing import Callable

UNRESOLVABLE_HOST = "img2pose-no-such-host.invalid"


def refused_url(path: str = "/x.jpg") -> str:
    """An http URL on 127.0.0.1 whose port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


class SilentHost:
    """Accepts connections, reads nothing, answers nothing; ``url(path)`` points at it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)

    def url(self, path: str = "/x.jpg") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> "SilentHost":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True
        self.sock.close()
        for conn in self.connections:
            conn.close()


Route = Callable[[http.server.BaseHTTPRequestHandler], None]


class ImageServer:
    """A threaded HTTP server on 127.0.0.1; ``routes[path] = handler`` (see the helpers below)."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: dict[str, int] = defaultdict(int)
        self.headers: dict[str, list[dict]] = defaultdict(list)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                server.hits[path] += 1
                server.headers[path].append(dict(self.headers))
                route = server.routes.get(path)
                if route is None:
                    self.send_error(404)
                    return
                route(self)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "ImageServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def body(data: bytes, status: int = 200) -> Route:
        def handle(h) -> None:
            h.send_response(status)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)

        return handle

    @staticmethod
    def status(code: int, headers: dict | None = None) -> Route:
        def handle(h) -> None:
            h.send_response(code)
            for key, value in (headers or {}).items():
                h.send_header(key, value)
            h.send_header("Content-Length", "0")
            h.end_headers()

        return handle

    @staticmethod
    def redirect(location: str) -> Route:
        return ImageServer.status(302, {"Location": location})

    @staticmethod
    def flaky(data: bytes, failures: int, code: int = 503) -> Route:
        """Answers ``code`` ``failures`` times, then ``data``."""
        left = [failures]

        def handle(h) -> None:
            if left[0] > 0:
                left[0] -= 1
                ImageServer.status(code)(h)
            else:
                ImageServer.body(data)(h)

        return handle

    @staticmethod
    def endless(chunk: bytes = b"\0" * 65536, seconds: float = 60.0) -> Route:
        """A body without Content-Length that keeps coming (a memory bomb), for ``seconds`` at most."""

        def handle(h) -> None:
            h.send_response(200)
            h.end_headers()
            end = time.monotonic() + seconds
            try:
                while time.monotonic() < end:
                    h.wfile.write(chunk)
            except OSError:
                pass

        return handle
