"""Block and record every outbound network attempt of the current process (a test helper).

`no_outbound(monkeypatch)` patches socket.socket.connect / connect_ex / sendto,
socket.create_connection and socket.getaddrinfo. Loopback addresses, Unix sockets and names that
resolve locally (localhost, numeric loopback addresses) pass; anything else is recorded and refused
with OSError (ENETUNREACH), as an offline machine would. The returned list holds one
"call: address" string per attempt; a test asserts it is empty.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

import pytest

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", ""}


def _is_local_host(host) -> bool:
    if host is None:
        return True  # getaddrinfo(None, port): the local wildcard / loopback
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]").split("%")[0]
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name that needs a resolver (DNS): outbound
    return ip.is_loopback or ip.is_unspecified


def _is_local_address(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    if isinstance(address, tuple) and address:
        return _is_local_host(address[0])
    return True


def no_outbound(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse and record outbound connections for the rest of the test (see module docstring)."""
    attempts: list[str] = []

    def refuse(what: str, where) -> None:
        attempts.append(f"{what}: {where!r}")
        raise OSError(errno.ENETUNREACH, f"outbound network blocked by the test ({what} {where!r})")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_sendto, real_gai = socket.socket.sendto, socket.getaddrinfo

    def connect(self, address):
        if self.family != socket.AF_UNIX and not _is_local_address(address):
            refuse("connect", address)
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family != socket.AF_UNIX and not _is_local_address(address):
            refuse("connect_ex", address)
        return real_connect_ex(self, address)

    def sendto(self, data, *args):
        address = args[-1]
        if self.family != socket.AF_UNIX and not _is_local_address(address):
            refuse("sendto", address)
        return real_sendto(self, data, *args)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local_host(host):
            refuse("getaddrinfo", host)
        return real_gai(host, *args, **kwargs)

    def create_connection(address, *args, **kwargs):
        if not _is_local_address(address):
            refuse("create_connection", address)
        return real_create(address, *args, **kwargs)

    real_create = socket.create_connection
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket.socket, "sendto", sendto)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    return attempts
