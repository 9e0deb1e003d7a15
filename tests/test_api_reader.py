"""The Python API reads as the job reads (issue 26, point 3): ``Predictor.predict`` on paths and URLs goes
through the job's bounded reader (:mod:`img2pose_core.storage.reads`), so a named pipe, a device, a
socket, a server that trickles or one that claims a huge body each get the job's status, within the
predictor's ``read_timeout``, instead of a hang or a read until memory runs out.

Real parts only: a FIFO, ``/dev/zero``, a UNIX socket, HTTP servers on 127.0.0.1, the golden bundle.
Every read under test is either refused without reading or cut by a 2-3 s budget; the tests only ask
that it ended with the right status well under a generous ceiling.
"""

from __future__ import annotations

import io
import os
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from hostile_hosts import ImageServer
from network_guard import off_machine  # noqa: F401 - autouse: no test here leaves the machine
from img2pose_core.predictor import ImageFaces, Predictor
from img2pose_core.storage import StorageConfig
from img2pose_core.storage.reads import ReadFailure, ReadLimits, read_source

CEILING_S = 60.0  # far above any budget here: only a read without a bound comes near it


@pytest.fixture(scope="module")
def predictor(golden_bundle) -> Predictor:
    return Predictor(str(golden_bundle), device="cpu", min_size=32, max_size=64, read_timeout=2.0)


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _predict_within(predictor: Predictor, path) -> tuple[ImageFaces, float]:
    """One input through ``predict`` in a thread; fails (never hangs) if no result by the ceiling."""
    got: list[ImageFaces] = []
    started = time.monotonic()
    worker = threading.Thread(target=lambda: got.extend(predictor.predict([path])), daemon=True)
    worker.start()
    worker.join(CEILING_S)
    assert not worker.is_alive(), f"predict({path!r}) still reading after {CEILING_S:g} s"
    assert len(got) == 1
    return got[0], time.monotonic() - started


class Trickle:
    """A route that sends its answer one byte a second (``headers`` trickled too, or only the body), and
    says when its handler ended (the client hung up, or ``seconds`` passed)."""

    def __init__(self, *, headers: bool, seconds: float = 120.0) -> None:
        self.headers, self.seconds, self.ended = headers, seconds, threading.Event()

    def __call__(self, h) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        end = time.monotonic() + self.seconds
        try:
            if not self.headers:
                h.wfile.write(head)
            while time.monotonic() < end:
                h.wfile.write(head[:1] if self.headers else b"\xff")
                head = head[1:] or b"\xff"
                time.sleep(1.0)
        except OSError:
            pass  # the reader hung up: what a bounded reader does
        finally:
            self.ended.set()


def test_special_files_are_not_a_file_without_being_read(predictor, tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock.jpg"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock_path))
    listener.listen(1)
    try:
        for path, kind in ((fifo, "named pipe"), ("/dev/zero", "device"), (sock_path, "socket"), (tmp_path, "folder")):
            result, took = _predict_within(predictor, path)
            assert result.status == "not_a_file" and kind in result.skipped and str(path) in result.skipped, result.skipped
            assert len(result) == 0 and result.image_sha256 is None
    finally:
        listener.close()


def test_a_file_above_max_bytes_is_too_large_before_its_bytes(golden_bundle, tmp_path):
    sparse = tmp_path / "huge.jpg"
    with open(sparse, "wb") as f:
        f.truncate(3 << 30)  # 3 GiB that take no disk: read whole, they would take 3 GiB of memory
    small = Predictor(str(golden_bundle), device="cpu", min_size=32, max_size=64, max_bytes=1 << 20)
    result, _ = _predict_within(small, sparse)
    assert result.status == "too_large" and "above the limit of 1048576" in result.skipped
    # The default is the job's cap (8 bytes a pixel of max_pixels, at least 64 MiB): also refused.
    result, _ = _predict_within(Predictor(str(golden_bundle), device="cpu", min_size=32, max_size=64), sparse)
    assert result.status == "too_large"


def test_a_trickling_server_is_cut_at_the_read_timeout(predictor):
    body_trickle, header_trickle = Trickle(headers=False), Trickle(headers=True)
    with ImageServer() as server:
        server.routes.update({"/body.jpg": body_trickle, "/head.jpg": header_trickle, "/ok.jpg": server.body(_jpeg())})
        for path, trickle in (("/body.jpg", body_trickle), ("/head.jpg", header_trickle)):
            result, took = _predict_within(predictor, server.url + path)
            assert result.status == "unreadable" and "timed out" in result.skipped, result.skipped
            assert server.url + path in result.skipped
            # The reader hung up (its sockets shut at the deadline): no thread left reading for minutes.
            assert trickle.ended.wait(CEILING_S), f"{path}: the connection was left open"
        ok, _ = _predict_within(predictor, server.url + "/ok.jpg")
        assert ok.status == "ok" and ok.image_sha256 is not None  # the same predictor still reads a good server


def test_the_reader_itself_ends_a_trickle_at_its_deadline():
    """Without the caller's thread that gives a read up: the reader's own deadline ends it, headers or body."""
    for headers in (False, True):
        trickle = Trickle(headers=headers)
        with ImageServer() as server:
            server.routes["/t.jpg"] = trickle
            started = time.monotonic()
            with pytest.raises(ReadFailure) as failure:
                read_source(server.url + "/t.jpg", StorageConfig(read_attempts=3), ReadLimits(timeout_s=3))
            assert time.monotonic() - started < CEILING_S
            assert failure.value.status == "unreadable" and "timed out" in failure.value.message, failure.value.message
            assert trickle.ended.wait(CEILING_S)


def test_a_huge_declared_body_is_too_large_before_the_body(predictor):
    sent = []

    def claim(h) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(10 << 30))
        h.end_headers()
        try:
            for _ in range(30):  # then hold the connection, a second at a time, until the reader hangs up
                h.wfile.write(b"\0" * 1024)
                sent.append(1024)
                time.sleep(1.0)
        except OSError:
            pass

    with ImageServer() as server:
        server.routes["/huge.jpg"] = claim
        result, _ = _predict_within(predictor, server.url + "/huge.jpg")
    assert result.status == "too_large" and "declares 10737418240 bytes" in result.skipped, result.skipped


def test_the_predictor_refuses_metadata_addresses_as_the_job_does(predictor):
    with ImageServer() as server:
        server.routes["/hop.jpg"] = server.redirect("http://0251.0376.0251.0376/latest/meta-data/")
        for url in ("http://0xA9FEA9FE/latest/", server.url + "/hop.jpg"):
            result, _ = _predict_within(predictor, url)
            assert result.status == "not_allowed" and "169.254.0.0/16" in result.skipped, result.skipped


def test_bad_reader_arguments_are_refused(golden_bundle):
    for kwargs in ({"max_bytes": 0}, {"read_timeout": 0}, {"read_timeout": -1.0}):
        with pytest.raises(ValueError, match="max_bytes"):
            Predictor(str(golden_bundle), device="cpu", min_size=32, max_size=64, **kwargs)
