"""The address policy (issue 26, point 2): cloud metadata services are refused by address, whatever the
spelling of the host, whatever a name resolves to, at every redirect hop and again when connecting
(DNS rebinding); IPv6 literals are URLs, not chained fsspec URLs.

No test sends a packet off this machine: names resolve through a resolver the test hands the policy
(never real DNS), servers listen on loopback only, and every test runs under a guard that refuses
(and reports) any connection to an address that is not loopback, so a regression that would connect
to 169.254.169.254 fails the test instead of reaching the network.
"""

from __future__ import annotations

import http.server
import ipaddress
import socket
import threading
from collections.abc import Iterator

import pytest

from hostile_hosts import ImageServer
from network_guard import off_machine  # noqa: F401 - autouse: no test here leaves the machine
from img2pose_core.storage import StorageConfig
from img2pose_core.storage.netpolicy import ENV_BLOCK_PRIVATE, AddressPolicy, parse_host, url_refusal
from img2pose_core.storage.reads import ReadFailure, ReadLimits, read_source
from img2pose_core.uris import chain_links, is_chained_url, redact_uri
from jobs.inputs import ManifestPolicy, resolve_manifest_entry

BODY = b"\xff\xd8\xff" + b"picture bytes" * 10


class Resolver:
    """Answers of a made-up DNS: ``answers[name]`` is a list of answers, one per lookup (the last repeats)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers, self.calls = answers, []

    def __call__(self, host: str, port: int) -> list[str]:
        name = host.rstrip(".").lower()
        self.calls.append(name)
        if name not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        seen = self.calls.count(name)
        return self.answers[name][min(seen, len(self.answers[name])) - 1]


def _read(url: str, policy: AddressPolicy, **storage) -> bytes:
    return read_source(url, StorageConfig(read_attempts=2, **storage), ReadLimits(timeout_s=20, addresses=policy))


def _refusal(url: str, policy: AddressPolicy) -> ReadFailure:
    with pytest.raises(ReadFailure) as failure:
        _read(url, policy)
    return failure.value


# --- every spelling of the metadata service ---------------------------------------------------------
LINK_LOCAL = "169.254.0.0/16"
SPELLINGS = [
    ("http://169.254.169.254/latest/", LINK_LOCAL),
    ("http://2852039166/", LINK_LOCAL),  # one 32-bit number
    ("http://0xA9FEA9FE/", LINK_LOCAL),  # hex
    ("http://0251.0376.0251.0376/", LINK_LOCAL),  # octal parts
    ("http://169.254.43518/", LINK_LOCAL),  # a.b.c: the last part fills two bytes
    ("http://0xa9.0376.43518/", LINK_LOCAL),  # mixed bases
    ("http://169.254.169.254./", LINK_LOCAL),  # trailing dot
    ("http://\uff11\uff16\uff19\uff0e\uff12\uff15\uff14\uff0e\uff11\uff16\uff19\uff0e\uff12\uff15\uff14/", LINK_LOCAL),
    ("http://[::ffff:169.254.169.254]/", LINK_LOCAL),  # IPv4-mapped IPv6
    ("http://[::ffff:a9fe:a9fe]/", LINK_LOCAL),
    ("http://[::169.254.169.254]/", LINK_LOCAL),  # IPv4-compatible IPv6
    ("http://[64:ff9b::169.254.169.254]/", LINK_LOCAL),  # NAT64
    ("http://[2002:a9fe:a9fe::1]/", LINK_LOCAL),  # 6to4
    ("http://[fe80::1]/", "fe80::/10"),
    ("http://[fe80::a9fe:a9fe%25eth0]/", "fe80::/10"),
    ("http://[fd00:ec2::254]/latest/", "fd00:ec2::254"),
    ("http://100.100.100.200/latest/", "Alibaba"),
    ("http://metadata.google.internal./computeMetadata/v1/", "metadata service name"),
    ("http://METADATA.Google.Internal/x", "metadata service name"),
    ("http://metadata/x", "metadata service name"),
    ("http://instance-data./latest/", "metadata service name"),
    ("https://metadata.azure.com/x", "metadata service name"),
]  # fmt: skip


@pytest.mark.parametrize("url, rule", SPELLINGS)
def test_every_spelling_of_a_metadata_address_is_refused_everywhere(url, rule):
    # Numeric spellings never reach the resolver; a name that is a metadata name is refused before it.
    resolver = Resolver({})
    policy = AddressPolicy(resolver=resolver)
    why = url_refusal(url, policy)
    assert why is not None and rule in why and "never read" in why, why
    row = resolve_manifest_entry(url, "s3://b/lists/m.parquet", ManifestPolicy())
    assert row["status"] == "not_allowed" and rule in row["error"], row
    failure = _refusal(url, policy)
    assert failure.status == "not_allowed" and rule in failure.message, failure.message
    assert resolver.calls == []
    # Given as --input: refused before the input check contacts it (nothing is connected to: the guard).
    from img2pose_core.storage import StorageConfig
    from jobs.inputs import InputError, validate_inputs

    with pytest.raises(InputError, match=r"not allowed: .*never read"):
        validate_inputs([url.split("?")[0].rstrip("/") + "/shard.tar"], StorageConfig(), "url")


@pytest.mark.parametrize(
    "text", ["2852039166", "0xA9FEA9FE", "0251.0376.0251.0376", "169.254.43518", "0x7f.1", "127.1", "0", "0x", "00",
             "10.0x10.0300", "255.255.255.255", "08.1.1.1", "1.2.3.4.5", "256.1.1.1", "4294967296", "1.0x1000000",
             "0x1g", "1..2", "-1", "1e3", "1.2.3.4 ", "abc"],
)  # fmt: skip
def test_numeric_hosts_are_read_as_the_system_reads_them(text):
    """The parser agrees with the C library's inet_aton (what getaddrinfo uses for numeric hosts)."""
    try:
        system = ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        system = None
    ours = parse_host(text)
    if system is None:
        assert isinstance(ours, str), (text, ours)
    elif text == "1.2.3.4 ":
        assert ours == ipaddress.IPv4Address("1.2.3.4")  # the spaces go before the resolver would see them
    else:
        assert ours == system, (text, ours, system)


def test_a_name_resolving_to_a_metadata_address_is_refused_before_connecting():
    resolver = Resolver({
        "evil.test": [["169.254.169.254"]],
        "mixed.test": [["127.0.0.1", "169.254.170.2"]],  # any bad answer: the client may pick any
        "mapped.test": [["::ffff:169.254.169.254"]],
    })  # fmt: skip
    policy = AddressPolicy(resolver=resolver)
    for name, shown in (("evil.test", "169.254.169.254"), ("mixed.test", "169.254.170.2"), ("mapped.test", "169.254.169.254")):
        failure = _refusal(f"http://{name}:8080/x.jpg", policy)
        assert failure.status == "not_allowed", failure.message
        assert f"host {name} resolves to" in failure.message and shown in failure.message and LINK_LOCAL in failure.message
    # Judged on the text alone (a manifest cell), the names pass: only their addresses say otherwise.
    assert url_refusal("http://evil.test/x.jpg", policy) is None


def test_a_redirect_to_a_metadata_spelling_is_refused_without_connecting(off_machine):
    with ImageServer() as server:
        server.routes.update({
            "/hex.jpg": server.redirect("http://0xA9FEA9FE/latest/meta-data/iam/"),
            "/mapped.jpg": server.redirect("http://[::ffff:169.254.169.254]/latest/"),
            "/named.jpg": server.redirect("http://evil.test/latest/"),
        })  # fmt: skip
        policy = AddressPolicy(resolver=Resolver({"evil.test": [["169.254.169.254"]]}))
        for path in ("/hex.jpg", "/mapped.jpg", "/named.jpg"):
            failure = _refusal(server.url + path, policy)
            assert failure.status == "not_allowed" and LINK_LOCAL in failure.message, (path, failure.message)
            assert server.hits[path] == 1
    assert off_machine == []


def test_dns_rebinding_is_caught_when_connecting(off_machine):
    """The name answers loopback to the check before the request, the metadata address to the
    connection's own lookup: the connection refuses, and nothing reaches the server."""
    with ImageServer() as server:
        server.routes["/x.jpg"] = server.body(BODY)
        port = server.url.rsplit(":", 1)[1]
        rebinding = Resolver({"rebind.test": [["127.0.0.1"], ["169.254.169.254"]]})
        failure = _refusal(f"http://rebind.test:{port}/x.jpg", AddressPolicy(resolver=rebinding))
        assert failure.status == "not_allowed" and "rebind.test resolves to 169.254.169.254" in failure.message
        assert rebinding.calls == ["rebind.test", "rebind.test"] and server.hits["/x.jpg"] == 0
        # The control: a name that keeps its answer is read, through the pinned address, with its own Host.
        steady = Resolver({"images.test": [["127.0.0.1"]]})
        assert _read(f"http://images.test:{port}/x.jpg", AddressPolicy(resolver=steady)) == BODY
        assert server.hits["/x.jpg"] == 1 and server.headers["/x.jpg"][0]["Host"] == f"images.test:{port}"
    assert off_machine == []


def test_the_private_switch(monkeypatch):
    with ImageServer() as server:
        server.routes["/x.jpg"] = server.body(BODY)
        assert _read(server.url + "/x.jpg", AddressPolicy()) == BODY  # off by default: internal stores are common
        failure = _refusal(server.url + "/x.jpg", AddressPolicy(block_private=True))
        assert failure.status == "not_allowed" and "127.0.0.0/8" in failure.message and ENV_BLOCK_PRIVATE in failure.message
        named = AddressPolicy(block_private=True, resolver=Resolver({"intranet.test": [["10.1.2.3"]]}))
        assert "10.0.0.0/8" in _refusal("http://intranet.test/x.jpg", named).message
        monkeypatch.setenv(ENV_BLOCK_PRIVATE, "1")
        assert ReadLimits().addresses.block_private
        with pytest.raises(ReadFailure) as failure_env:
            read_source(server.url + "/x.jpg", StorageConfig(read_attempts=1), ReadLimits(timeout_s=10))
        assert failure_env.value.status == "not_allowed"
        assert server.hits["/x.jpg"] == 1


# --- IPv6 literals are URLs ------------------------------------------------------------------------
class _V6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


@pytest.fixture()
def v6_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, *args) -> None:
            pass

    try:
        httpd = _V6Server(("::1", 0), Handler)
    except OSError as exc:
        pytest.skip(f"this machine has no IPv6 loopback ({exc})")
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://[::1]:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_ipv6_literals_are_read(v6_server, off_machine):
    url = f"{v6_server}/x.jpg"
    assert _read(url, AddressPolicy(resolver=Resolver({}))) == BODY
    row = resolve_manifest_entry(url, "s3://b/lists/m.parquet", ManifestPolicy())
    assert (row["status"], row["source_uri"], row["kind"]) == ("", url, "file")


def test_an_ipv4_mapped_literal_reaches_an_ipv4_server():
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6 sockets")
    with ImageServer() as server:
        server.routes["/x.jpg"] = server.body(BODY)
        url = f"http://[::ffff:127.0.0.1]:{server.url.rsplit(':', 1)[1]}/x.jpg"
        try:
            got = _read(url, AddressPolicy(resolver=Resolver({})))
        except ReadFailure as failure:
            if "Address family not supported" in failure.message or "Cannot assign" in failure.message:
                pytest.skip(f"no dual-stack IPv6 here: {failure.message}")
            raise
        assert got == BODY


@pytest.mark.parametrize(
    "uri, chained",
    [
        ("http://[::ffff:127.0.0.1]:8080/x.jpg", False), ("http://u:pw@[::1]:8080/x.jpg", False),
        ("https://[2001:db8::1]/a::b.jpg", False), ("/data/a::b.jpg", False),
        ("simplecache::s3://b/k.jpg", True), ("zip://a.jpg::s3://b/z.zip", True), ("s3://b/x::/etc/passwd", True),
        ("s3://b/a::b.jpg", True), ("http://h/a.jpg::s3://b/k", True), ("simplecache::http://[::1]/x.jpg", True),
    ],
)  # fmt: skip
def test_chains_are_fsspec_syntax_not_any_double_colon(uri, chained):
    assert is_chained_url(uri) is chained
    row = resolve_manifest_entry(uri, "s3://b/lists/m.parquet", ManifestPolicy(allow_local_files=True))
    assert (row["status"] == "not_allowed" and "chained" in row["error"]) is chained, row


def test_redaction_sees_through_ipv6_literals():
    """Before, the ``::`` of the literal split the URL as a chain and the query was never redacted."""
    shown = redact_uri("http://alice:hunter2@[::1]:8080/x.jpg?token=s3cr3t&id=7")
    assert "hunter2" not in shown and "s3cr3t" not in shown and shown.endswith("[::1]:8080/x.jpg?token=" + shown.split("token=")[1])
    assert "id=7" in shown
    assert chain_links("simplecache::http://u:pw@[::1]/x.jpg") == ["simplecache", "http://u:pw@[::1]/x.jpg"]
    assert "pw@" not in redact_uri("simplecache::http://u:pw@[::1]/x.jpg")
