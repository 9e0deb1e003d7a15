"""Which network addresses the readers may fetch from, decided on the address, never on the spelling.

A URL's host is read the way the HTTP client and the system resolver will read it: an IPv4 address in
any ``inet_aton`` form (``2852039166``, ``0xA9FEA9FE``, ``0251.0376.0251.0376``, ``169.254.43518``),
an IPv6 literal with an IPv4 address inside (mapped ``::ffff:a.b.c.d``, compatible ``::a.b.c.d``, NAT64
``64:ff9b::/96``, 6to4, Teredo), a name in any case, with a trailing dot, or in Unicode (IDNA). Refused
always (:data:`ALWAYS_BLOCKED`, :data:`METADATA_NAMES`): the link-local ranges ``169.254.0.0/16`` and
``fe80::/10`` and the other addresses and names of cloud metadata services, which hand out the node's
credentials. Refused on request (``AddressPolicy(block_private=True)``, or the environment variable
``IMG2POSE_BLOCK_PRIVATE_ADDRESSES=1``): loopback, private and shared ranges (:data:`PRIVATE`). They
are allowed by default because images are often kept on internal stores (MinIO, a web server in the
same network); the metadata ranges are what gives credentials away.

A name is resolved and every address it resolves to is checked (:meth:`AddressPolicy.addresses`):
before a request, and again when the HTTP reader opens its connection, which then connects to exactly
the addresses just checked (:mod:`img2pose_core.storage.http_reads`), so a name that answers a safe
address first and a metadata address next (DNS rebinding) is caught. Pure: no I/O beyond the resolver.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from typing import Callable, Sequence
from urllib.parse import urlsplit

__all__ = [
    "ALWAYS_BLOCKED", "ENV_BLOCK_PRIVATE", "METADATA_NAMES", "PRIVATE", "AddressNotAllowed", "AddressPolicy",
    "host_of", "parse_host", "url_refusal",
]  # fmt: skip

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]  # (host, port) -> IP address texts, as getaddrinfo gives

ENV_BLOCK_PRIVATE = "IMG2POSE_BLOCK_PRIVATE_ADDRESSES"

# Names of cloud metadata services (compared after IDNA, lower case, without a trailing dot).
METADATA_NAMES = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal",
     "metadata.azure.com", "metadata.tencentyun.com"}
)  # fmt: skip
_LINK_LOCAL = "link-local, where cloud metadata services hand out the node's credentials"
# Never fetched, whatever the switch: (range, why).
ALWAYS_BLOCKED: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = (
    (ipaddress.ip_network("169.254.0.0/16"), _LINK_LOCAL),
    (ipaddress.ip_network("fe80::/10"), _LINK_LOCAL),
    (ipaddress.ip_network("fd00:ec2::254/128"), "the AWS metadata service over IPv6"),
    (ipaddress.ip_network("fd20:ce::254/128"), "the Google Cloud metadata service over IPv6"),
    (ipaddress.ip_network("100.100.100.200/32"), "the Alibaba Cloud metadata service"),
    (ipaddress.ip_network("168.63.129.16/32"), "the Azure host (WireServer), a metadata service"),
)
# Fetched unless block_private: this machine and the private networks.
PRIVATE: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.ip_network(net), why)
    for net, why in (
        ("0.0.0.0/8", "this host"), ("127.0.0.0/8", "loopback"), ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"), ("192.168.0.0/16", "private"), ("100.64.0.0/10", "shared (carrier-grade NAT)"),
        ("::/128", "this host"), ("::1/128", "loopback"), ("fc00::/7", "private (unique local)"),
    )
)  # fmt: skip
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_COMPATIBLE = ipaddress.ip_network("::/96")


class AddressNotAllowed(ValueError):
    """A host or an address the policy refuses; the message names the host, the address and the rule.

    A ``ValueError``, not an ``OSError``: urllib3 and requests let it through unwrapped and unretried.
    """


_PART = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """``text`` as ``inet_aton`` (so ``getaddrinfo``) reads an IPv4 address, or None: one to four parts,
    each decimal, ``0x`` hex or ``0`` octal; the last part fills the remaining bytes (``a``, ``a.b``,
    ``a.b.c``)."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_PART.fullmatch(p) for p in parts):
        return None
    values = [int(p[2:], 16) if p[:2].lower() == "0x" else int(p, 8) if p.startswith("0") else int(p) for p in parts]
    *head, last = values
    if any(v > 255 for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = last
    for i, v in enumerate(head):
        number |= v << (24 - 8 * i)
    return ipaddress.IPv4Address(number)


def parse_host(host: str) -> IPAddress | str:
    """The address ``host`` names (any IPv4 spelling, an IPv6 literal with or without brackets), else
    the name as the resolver gets it: IDNA-encoded, lower case, without a trailing dot."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            return text.lower()
    try:
        # IDNA first: full-width digits and dots (U+FF10..., U+3002) become ASCII, as the client maps them.
        text = text.encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        pass
    text = text.lower().rstrip(".")
    return _inet_aton(text) or text


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches or carries: mapped, compatible, NAT64, 6to4, Teredo."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or (address in _COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    return address.teredo[1] if address.teredo is not None else None


def _system_resolver(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


@dataclass(frozen=True)
class AddressPolicy:
    """What may be fetched: never the metadata ranges and names; loopback and private ranges unless
    ``block_private``. ``resolver(host, port)`` gives the addresses of a name (default: the system's
    ``getaddrinfo``; tests pass their own, so that no test asks real DNS)."""

    block_private: bool = False
    resolver: Resolver | None = None

    @classmethod
    def from_env(cls) -> "AddressPolicy":
        """The default policy: private ranges blocked when ``$IMG2POSE_BLOCK_PRIVATE_ADDRESSES`` is 1/true/yes."""
        return cls(block_private=os.environ.get(ENV_BLOCK_PRIVATE, "").strip().lower() in ("1", "true", "yes", "on"))

    def address_refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` must not be fetched (``"<address>, in <range> (<rule>)..."``), or None."""
        inner = _embedded_v4(address) if isinstance(address, ipaddress.IPv6Address) else None
        candidates = [address] + ([inner] if inner is not None else [])
        for candidate in candidates:
            shown = f"{address} (which carries {candidate})" if candidate is not address else str(address)
            for network, why in ALWAYS_BLOCKED:
                if candidate.version == network.version and candidate in network:
                    return f"{shown}, in {network} ({why}): never read"
            for network, why in PRIVATE if self.block_private else ():
                if candidate.version == network.version and candidate in network:
                    switch = f"block_private, ${ENV_BLOCK_PRIVATE}"
                    return f"{shown}, in {network} ({why}), and private addresses are blocked ({switch})"
        return None

    def host_refusal(self, host: str) -> str | None:
        """Why ``host`` must not be fetched, judged on the host alone (no name is resolved), or None."""
        parsed = parse_host(host)
        if isinstance(parsed, str):
            if parsed in METADATA_NAMES:
                return f"host {host} is a cloud metadata service name (it hands out the node's credentials): never read"
            return None
        why = self.address_refusal(parsed)
        if why is None:
            return None
        return f"host {why}" if why.split(",")[0].split(" ")[0] == host.strip("[]").lower() else f"host {host} is {why}"

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for ``host``, every one checked: an address as it is, a name
        resolved. Raises :class:`AddressNotAllowed` if the host or any address it resolves to is refused
        (any: the client may pick any of them), and the resolver's ``socket.gaierror`` if it fails."""
        why = self.host_refusal(host)
        if why:
            raise AddressNotAllowed(why)
        parsed = parse_host(host)
        if not isinstance(parsed, str):
            return [str(parsed)]
        found = list((self.resolver or _system_resolver)(host.strip("[]"), port))
        if not found:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (no address)")
        for text in found:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                raise AddressNotAllowed(f"host {host} resolves to {text!r}, not an address") from None
            why = self.address_refusal(address)
            if why:
                raise AddressNotAllowed(f"host {host} resolves to {why}")
        return found


def host_of(url: str) -> tuple[str, int]:
    """The host (brackets removed) and port of an http(s) ``url``; ValueError for a malformed one."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host:
        raise ValueError("no host")
    return host, parts.port or (443 if parts.scheme.lower() == "https" else 80)


def url_refusal(url: str, policy: AddressPolicy | None = None) -> str | None:
    """Why an http(s) ``url`` must not be fetched, judged on its text (no name is resolved), or None."""
    try:
        host, _ = host_of(url)
    except ValueError:
        return "not a valid URL"
    return (policy or AddressPolicy.from_env()).host_refusal(host)
