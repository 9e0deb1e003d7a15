"""A fixture that keeps a test on this machine: every TCP connection to an address that is not loopback
is refused and recorded, and the test fails if one was attempted (a regression that would reach for
169.254.169.254 fails here instead of sending a packet).

Import with ``from network_guard import off_machine  # noqa: F401``: autouse in the importing module.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def off_machine(monkeypatch) -> Iterator[list]:
    """Refuse, and record, every TCP connection to an address that is not loopback."""
    attempts: list = []
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            ip = ipaddress.ip_address(str(address[0]).split("%")[0])
            mapped = getattr(ip, "ipv4_mapped", None)
            if not (ip.is_loopback or (mapped is not None and mapped.is_loopback)):
                attempts.append(address)
                raise OSError(errno.ENETUNREACH, f"test guard: {address[0]} is off this machine")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield attempts
    assert not attempts, f"a connection off this machine was attempted: {attempts}"
