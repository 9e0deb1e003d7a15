"""URIs as the system stores and prints them: credentials and signatures redacted, local paths normalised.

Users hand the job URLs that carry secrets: ``https://user:password@host/x.jpg``, presigned
``...?X-Amz-Signature=...&X-Amz-Security-Token=...``, ``s3://KEY:SECRET@bucket/key``. A secret must never
reach a table, a manifest, a log line or an error message. :func:`redact_uri` replaces each secret
by ``REDACTED`` and keeps the rest of the URI byte for byte, so the row still says which object it is:

- signing parameters (``X-Amz-Signature``, ``X-Amz-Credential``, ``X-Amz-Security-Token``,
  ``X-Goog-Signature``, ``sig`` ...) become ``REDACTED``: they change every time a URL is signed and
  never select content, so the redacted URI of an object is the same on every night's run;
- other secrets (user info, ``token``, ``key``, ``password`` ... parameters) become
  ``REDACTED-<8 hex>``, a digest of the secret, because such a value may select content (two URLs
  differing only in their ``token`` may be two images) and rows must stay distinct. The digest is short
  on purpose: it tells rows apart, it does not help guess a strong secret.

The one place that says what a URI's scheme is and whether it is local (:func:`scheme_of`,
:func:`is_local_uri`), and joins URIs (:func:`join_uri`). Pure string work, no I/O: the jobs, the
bundle code, the report and :mod:`img2pose_core.storage` all use it.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from urllib.parse import unquote, urlsplit

__all__ = ["REDACTED", "redact_uri", "redact_text", "normalise_local", "is_url", "is_local_uri", "scheme_of", "join_uri",
           "chain_links", "is_chained_url"]  # fmt: skip

REDACTED = "REDACTED"

# Parameters that authenticate a request without selecting content (compared lower-cased).
_SIGNING_PARAMS = frozenset(
    {
        "x-amz-signature", "x-amz-credential", "x-amz-security-token", "x-amz-date", "x-amz-expires",
        "x-goog-signature", "x-goog-credential", "x-goog-date", "x-goog-expires",
        "signature", "sig", "awsaccesskeyid", "googleaccessid",
    }
)  # fmt: skip
# Parameters whose value is a secret that may also select content.
_SECRET_PARAMS = frozenset(
    {
        "token", "access_token", "id_token", "refresh_token", "auth", "authorization", "api_key", "apikey",
        "api-key", "key", "password", "passwd", "pwd", "secret", "client_secret", "session", "sessionid", "jwt",
        "code", "x-api-key", "access_key", "secret_key", "credential", "credentials",
    }
)  # fmt: skip

# An IPv6 literal host, ``scheme://[...]`` (after user info, if any): its ``::`` is no fsspec chain.
_BRACKETED_HOST = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://(?:[^/?#\[\]]*@)?)\[[^\]/?#]*\]")
# A chain link: ``::`` followed by a URL (``::s3://b/z.zip``).
_LINK_TO_URL = re.compile(r"::[A-Za-z][A-Za-z0-9+.\-]*://")
# A chain that starts with a bare protocol (``simplecache::s3://...``): fsspec's own test for one.
_PROTOCOL_FIRST = re.compile(r"^[a-z][a-z0-9+.\-]*::")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>()\[\]{}]+")


def scheme_of(uri: str) -> str:
    """The URI's scheme in lower case, ``""`` for a plain path."""
    head, sep, _ = uri.partition("://")
    return head.lower() if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", head) else ""


def is_url(uri: str) -> bool:
    """Whether ``uri`` has a scheme (``s3://``, ``https://`` ...), not a plain local path."""
    return bool(scheme_of(uri))


def is_local_uri(uri: str) -> bool:
    """Whether ``uri`` names this machine's files, as fsspec reads it: a plain path or a ``file://`` URL.

    One-letter schemes are Windows drive letters; a chained fsspec URL (``simplecache::s3://...``) is remote.
    """
    first, chained, _ = uri.partition("::")
    if chained and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]+", first):
        return False
    scheme = scheme_of(uri)
    return len(scheme) <= 1 or scheme == "file"


def _split_outside_brackets(uri: str) -> list[str]:
    """``uri`` split at each ``::`` that is not inside an IPv6 literal's brackets."""
    parts, start, depth, i = [], 0, 0, 0
    while i < len(uri):
        ch = uri[i]
        depth += ch == "["
        depth -= ch == "]" and depth > 0
        if depth == 0 and uri.startswith("::", i):
            parts.append(uri[start:i])
            start = i = i + 2
            continue
        i += 1
    return parts + [uri[start:]]


def is_chained_url(uri: str) -> bool:
    """Whether ``uri`` is a chained fsspec URL (``simplecache::s3://b/k``, ``zip://a.jpg::s3://b/z.zip``).

    The ``::`` of an IPv6 literal (``http://[::1]:8080/x.jpg``) is never a link. fsspec splits a URL it
    reads at every other ``::``, so in an object-store URL any ``::`` is a chain; http(s) URLs and local
    paths are not read by fsspec here, so in them ``::`` is a chain only when a URL follows it or a bare
    protocol comes first, which is how a chain is written.
    """
    rest = _BRACKETED_HOST.sub(r"\1", uri, count=1)
    if "::" not in rest:
        return False
    if scheme_of(uri) not in ("", "http", "https"):
        return True
    return bool(_LINK_TO_URL.search(rest) or _PROTOCOL_FIRST.match(rest))


def chain_links(uri: str) -> list[str]:
    """The links of a chained fsspec URL, outermost first; ``[uri]`` for one that is not chained."""
    return _split_outside_brackets(uri) if is_chained_url(uri) else [uri]


def join_uri(base: str, *parts: str) -> str:
    """``base`` with ``parts`` appended by ``/`` (works for local paths and URLs alike)."""
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])


def _digest(secret: str) -> str:
    return f"{REDACTED}-{hashlib.sha256(secret.encode('utf-8')).hexdigest()[:8]}"


def _redact_query(query: str) -> str:
    parts = []
    for item in query.split("&"):
        name, eq, value = item.partition("=")
        key = unquote(name).strip().lower()
        if eq and value and key in _SIGNING_PARAMS:
            item = f"{name}={REDACTED}"
        elif eq and value and key in _SECRET_PARAMS:
            item = f"{name}={_digest(value)}"
        parts.append(item)
    return "&".join(parts)


def _redact_one(uri: str) -> str:
    if not is_url(uri):
        return uri
    scheme, rest = uri.split("://", 1)
    # Split by hand rather than re-serialise: the stored URI must stay byte for byte what was given.
    authority_end = len(rest)
    for ch in "/?#":
        pos = rest.find(ch)
        if pos != -1:
            authority_end = min(authority_end, pos)
    authority, tail = rest[:authority_end], rest[authority_end:]
    if "@" in authority:
        userinfo, host = authority.rsplit("@", 1)
        authority = f"{_digest(userinfo)}@{host}"
    path, qmark, query = tail.partition("?")
    if qmark:
        query, hashmark, fragment = query.partition("#")
        tail = f"{path}?{_redact_query(query)}{hashmark}{fragment}"
    return f"{scheme}://{authority}{tail}"


def redact_uri(uri: str) -> str:
    """``uri`` with its credentials and signatures redacted (see the module docstring); plain paths unchanged.

    Chained fsspec URLs (``a::b``) are redacted link by link; an IPv6 literal's ``::`` is no link.
    """
    return "::".join(_redact_one(link) for link in chain_links(uri))


def redact_text(text: str, uris: tuple[str, ...] | list[str] = ()) -> str:
    """``text`` (an error message, a log line) with every URL in it redacted.

    ``uris`` are the originals the text may quote in other spellings (an error may show a URL
    unquoted); each is replaced by its redacted form first.
    """
    for uri in uris:
        if uri and uri in text:
            text = text.replace(uri, redact_uri(uri))
    return _URL_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)


def normalise_local(path: str) -> str:
    """An absolute, normalised local path for ``path`` or ``file://path`` (no symlink resolution)."""
    if path.lower().startswith("file://"):
        path = unquote(urlsplit(path).path)
    return posixpath.normpath(posixpath.abspath(path))
