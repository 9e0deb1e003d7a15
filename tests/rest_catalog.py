"""A real Iceberg REST catalog on 127.0.0.1 for tests: the REST protocol that pyiceberg's ``RestCatalog``
speaks (config, namespaces, create/load/commit table), served over HTTP by a thread, with pyiceberg's
SQL catalog (a SQLite file) keeping the tables behind it. It checks a bearer token on every request, as
a production catalog checks its clients' credentials.

Only what the job and its readers use is implemented; anything else answers 404.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
from typing import Any


class RestCatalogServer:
    """``with RestCatalogServer(warehouse, token, **io_props) as server: server.uri`` (``rest+http://...``)."""

    def __init__(self, warehouse: str, token: str, sqlite_path: str, **io_props: str) -> None:
        from pyiceberg.catalog.sql import SqlCatalog

        self.catalog = SqlCatalog("backing", uri=f"sqlite:///{sqlite_path}", warehouse=warehouse, **io_props)
        self.token = token
        self.requests: list[tuple[str, str]] = []
        self.refused = 0
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _reply(self, code: int, body: Any = None) -> None:
                data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _error(self, code: int, kind: str, message: str) -> None:
                self._reply(code, {"error": {"message": message, "type": kind, "code": code}})

            def _handle(self) -> None:
                path = self.path.split("?", 1)[0]
                server.requests.append((self.command, path))
                if self.headers.get("Authorization") != f"Bearer {server.token}":
                    server.refused += 1
                    self._error(401, "NotAuthorizedException", "a bearer token is required")
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with server._lock:  # one change at a time, as a database-backed catalog serialises them
                    server.route(self, self.command, path, body)

            do_GET = do_POST = do_HEAD = do_DELETE = _handle  # noqa: N815 - http.server's naming

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.uri = f"rest+http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "RestCatalogServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def _table_response(table) -> dict:
        return {"metadata-location": table.metadata_location, "metadata": json.loads(table.metadata.model_dump_json()),
                "config": {}}  # fmt: skip

    def route(self, h, method: str, path: str, body: bytes) -> None:
        from pyiceberg.catalog.rest import CreateTableRequest
        from pyiceberg.exceptions import (
            CommitFailedException,
            NamespaceAlreadyExistsError,
            NoSuchNamespaceError,
            NoSuchTableError,
            TableAlreadyExistsError,
        )
        from pyiceberg.table import CommitTableRequest

        c = self.catalog
        if path == "/v1/config":
            return h._reply(200, {"defaults": {}, "overrides": {}})
        if path == "/v1/namespaces" and method == "POST":
            doc = json.loads(body)
            try:
                c.create_namespace(tuple(doc["namespace"]), doc.get("properties") or {})
            except NamespaceAlreadyExistsError as exc:
                return h._error(409, "AlreadyExistsException", str(exc))
            return h._reply(200, {"namespace": doc["namespace"], "properties": doc.get("properties") or {}})
        m = re.fullmatch(r"/v1/namespaces/([^/]+)", path)
        if m:
            ns = m.group(1)
            if not c.namespace_exists(ns):
                return h._error(404, "NoSuchNamespaceException", f"no namespace {ns}")
            return h._reply(204) if method == "HEAD" else h._reply(200, {"namespace": [ns], "properties": {}})
        m = re.fullmatch(r"/v1/namespaces/([^/]+)/tables", path)
        if m and method == "POST":
            doc = json.loads(body)
            for optional in ("location", "partition-spec", "write-order"):  # left out by the client when None
                doc.setdefault(optional, None)
            req = CreateTableRequest.model_validate(doc)
            try:
                options = {"partition_spec": req.partition_spec, "sort_order": req.write_order}
                table = c.create_table(
                    (m.group(1), req.name), schema=req.table_schema, location=req.location, properties=req.properties,
                    **{k: v for k, v in options.items() if v is not None},
                )  # fmt: skip
            except TableAlreadyExistsError as exc:
                return h._error(409, "AlreadyExistsException", str(exc))
            except NoSuchNamespaceError as exc:
                return h._error(404, "NoSuchNamespaceException", str(exc))
            return h._reply(200, self._table_response(table))
        m = re.fullmatch(r"/v1/namespaces/([^/]+)/tables/([^/]+)", path)
        if m:
            identifier = (m.group(1), m.group(2))
            try:
                table = c.load_table(identifier)
            except (NoSuchTableError, NoSuchNamespaceError) as exc:
                return h._error(404, "NoSuchTableException", str(exc))
            if method == "HEAD":
                return h._reply(204)
            if method == "GET":
                return h._reply(200, self._table_response(table))
            if method == "POST":
                req = CommitTableRequest.model_validate_json(body)
                try:
                    response = c.commit_table(table, req.requirements, req.updates)
                except CommitFailedException as exc:
                    return h._error(409, "CommitFailedException", str(exc))
                return h._reply(200, {"metadata-location": response.metadata_location,
                                      "metadata": json.loads(response.metadata.model_dump_json())})  # fmt: skip
        return h._error(404, "NotFoundException", f"{method} {path} is not served here")
