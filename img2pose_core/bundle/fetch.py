"""HTTP downloads for bundles: streamed to a temp file, retried, with progress on stderr.

Google Drive answers a large file with a "can't scan this file for viruses" HTML page instead of the
file; :func:`download` recognises it and submits its confirm form.
"""

from __future__ import annotations

import math
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from ..storage import atomic_file, with_retries
from .files import CHUNK, FILE_MODE
from .format import BundleError

__all__ = ["DOWNLOAD_BACKOFF_S", "DOWNLOAD_RETRIES", "DOWNLOAD_TIMEOUT", "download"]

DOWNLOAD_TIMEOUT = (15.0, 120.0)  # connect, read (seconds)
DOWNLOAD_RETRIES = 4
DOWNLOAD_BACKOFF_S = 0.5


class _ConfirmPageParser(HTMLParser):
    """Collects the forms of an HTML page (action, method, named inputs) and the links with ``confirm=``."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []
        self.confirm_links: list[str] = []
        self._form: dict | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._form = {"action": a.get("action", ""), "method": a.get("method", "get").lower(), "inputs": {}}
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and a.get("name"):
            self._form["inputs"][a["name"]] = a.get("value", "")
        elif tag == "a" and "confirm=" in a.get("href", ""):
            self.confirm_links.append(a["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None


def _confirm_url(page: str, page_url: str) -> str | None:
    """The URL that Google Drive's "can't scan for viruses" page submits to, or None if it has none."""
    parser = _ConfirmPageParser()
    parser.feed(page)
    for form in parser.forms:
        if form["method"] == "get" and ("confirm" in form["inputs"] or "uuid" in form["inputs"]):
            action = urljoin(page_url, form["action"] or page_url)
            return action + ("&" if "?" in action else "?") + urlencode(form["inputs"])
    if parser.confirm_links:  # the older page: a plain link carrying the confirm token
        return urljoin(page_url, parser.confirm_links[0])
    return None


class _Progress:
    """A one-line download progress report on stderr (redrawn on a terminal, else start and end only)."""

    def __init__(self, label: str, total: int | None, enabled: bool) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.done, self.last = 0, 0.0
        if enabled and not self.tty:
            print(f"img2pose: downloading {label}{self._size(total)}", file=sys.stderr, flush=True)

    @staticmethod
    def _size(n: int | None) -> str:
        return f" ({n / 1e6:.1f} MB)" if n else ""

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty and now - self.last > 0.2:
            self.last = now
            total = f" / {self.total / 1e6:.1f}" if self.total else ""
            print(f"\rimg2pose: downloading {self.label}: {self.done / 1e6:.1f}{total} MB", end="", file=sys.stderr)

    def finish(self) -> None:
        if self.enabled:
            lead = "\r" if self.tty else ""
            print(f"{lead}img2pose: downloaded {self.label}: {self.done / 1e6:.1f} MB", file=sys.stderr, flush=True)


def download(url: str, dest: str | Path, *, progress: bool = True, expect_binary: bool = True) -> Path:
    """Stream ``url`` to ``dest`` through a temp file beside it; retries 5xx and connection errors.

    When ``expect_binary`` and the server answers with an HTML page, the page is taken for Google
    Drive's "can't scan for viruses" warning: its confirm form is submitted and the file fetched from
    there. A 4xx answer, or an HTML page without such a form, raises :class:`BundleError` naming ``url``.
    """
    import requests

    transient = (_Retry, requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
    dest = Path(dest)
    # A confirm page's target stays the target of later attempts; following one is not an attempt.
    target, confirms = url, 0

    def attempt(session: Any) -> Path:
        nonlocal target, confirms
        while True:
            with session.get(target, stream=True, timeout=DOWNLOAD_TIMEOUT) as resp:
                if resp.status_code >= 500 or resp.status_code == 429:
                    raise _Retry(f"HTTP {resp.status_code} {resp.reason}")
                if resp.status_code >= 400:
                    raise BundleError(f"{url}: HTTP {resp.status_code} {resp.reason}" + _via(target, url))
                if expect_binary and "text/html" in resp.headers.get("Content-Type", ""):
                    next_url = _confirm_url(resp.text, resp.url)
                    if next_url is None or confirms >= 2:
                        raise BundleError(_html_instead_of_file(url, target))
                    target, confirms = next_url, confirms + 1
                    continue
                _stream_to(resp, dest, url, progress)
                return dest

    def retryable(exc: BaseException) -> bool:
        # A host that does not resolve, refuses or never answers the connection will not on a retry
        # seconds later (offline, a firewall): say so at once instead of after minutes of attempts.
        return isinstance(exc, transient) and not _cannot_connect(exc)

    def report(exc: BaseException, _attempt: int, delay: float) -> None:
        if progress:
            print(f"img2pose: {url}: {exc}; retrying in {delay:.1f} s", file=sys.stderr, flush=True)

    attempts = DOWNLOAD_RETRIES + 1
    with requests.Session() as session:
        try:
            # Plain doubling without jitter or cap: one client, a handful of attempts.
            return with_retries(lambda: attempt(session), attempts=attempts, base_delay=DOWNLOAD_BACKOFF_S,
                                max_delay=math.inf, jitter=False, on_retry=report,
                                retryable=retryable)  # fmt: skip
        except transient as exc:
            if _cannot_connect(exc):
                host = urlsplit(target).netloc or target
                raise BundleError(f"{url}: cannot connect to {host} ({_connect_reason(exc)}): this machine has no "
                                  "network access to it" + _via(target, url)) from exc  # fmt: skip
            message = f"{url}: download failed after {attempts} attempts ({exc})" + _via(target, url)
            raise BundleError(message) from exc
        except requests.RequestException as exc:  # a malformed URL, too many redirects ...
            raise BundleError(f"{url}: download failed ({exc})" + _via(target, url)) from exc


def _cannot_connect(exc: BaseException) -> bool:
    """Whether ``exc`` failed to open a connection at all (name resolution, refused, connect timeout)."""
    import requests

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if not isinstance(exc, requests.ConnectionError) or isinstance(exc, requests.exceptions.ReadTimeout):
        return False
    return any(k in str(exc) for k in ("NameResolutionError", "NewConnectionError", "Failed to resolve",
                                       "Connection refused", "Failed to establish a new connection"))  # fmt: skip


def _connect_reason(exc: BaseException) -> str:
    text = str(exc)
    for key, reason in (("resolve", "the name does not resolve"), ("refused", "connection refused"),
                        ("timed out", "no answer"), ("ConnectTimeout", "no answer")):  # fmt: skip
        if key in text or key in type(exc).__name__:
            return reason
    return type(exc).__name__


class _Retry(Exception):
    """A transient server answer (5xx, 429) worth another try."""


def _via(target: str, url: str) -> str:
    return f" (via {target})" if target != url else ""


def _html_instead_of_file(url: str, target: str) -> str:
    return (
        f"{url}: the server sent an HTML page instead of the file{_via(target, url)}. Google Drive does this when "
        "the file's download quota is exceeded or it is no longer shared. Download the model zoo zip in a browser "
        "and build the bundle with `img2pose bundle create`, or point IMG2POSE_URL_ZOO_ZIP at a mirror."
    )


def _stream_to(resp: Any, dest: Path, url: str, progress: bool) -> None:
    """Write a streamed response to ``dest`` atomically; a short body is a transient error."""
    length = resp.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() and not resp.headers.get("Content-Encoding") else None
    bar = _Progress(url.split("?")[0].rsplit("/", 1)[-1] or url, total, progress)
    with atomic_file(dest, fsync=False, mode=FILE_MODE) as f:
        for chunk in resp.iter_content(CHUNK):
            f.write(chunk)
            bar.update(len(chunk))
        if total is not None and bar.done != total:
            raise _Retry(f"connection closed after {bar.done} of {total} bytes")
    bar.finish()

