"""Which addresses a TCP listener takes: ":PORT" is every address of both families (one dual-stack socket,
IPv4 only on a host without IPv6), "[::]:PORT" IPv6 only, so that it goes with "0.0.0.0:PORT"."""

from __future__ import annotations

import errno
import socket

import pytest

from fastmail.master import listeners
from fastmail.master.listeners import ListenerSpec, bind_socket_sets, close_sockets

needs_ipv6 = pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 in this Python")


def _bind(address: tuple[str, int], workers: int = 2) -> list[socket.socket]:
    sets, new = bind_socket_sets([ListenerSpec("smtp", address)], workers)
    return [s["smtp"] for s in sets]


def _accepts(sock: socket.socket, host: str) -> bool:
    port = sock.getsockname()[1]
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


@needs_ipv6
def test_empty_host_is_one_dual_stack_socket_per_worker():
    socks = _bind(("", 0))
    try:
        assert len({s.getsockname()[1] for s in socks}) == 1
        for s in socks:
            assert s.family == socket.AF_INET6 and s.getsockname()[0] == "::"
            assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert _accepts(socks[0], "127.0.0.1") and _accepts(socks[0], "::1")
    finally:
        close_sockets(socks)


@needs_ipv6
def test_any_ipv6_stays_ipv6_only_and_goes_with_any_ipv4():
    v6 = _bind(("::", 0))
    try:
        port = v6[0].getsockname()[1]
        assert v6[0].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert _accepts(v6[0], "::1") and not _accepts(v6[0], "127.0.0.1")
        v4 = _bind(("0.0.0.0", port))  # the production example's pair on one port: no collision
        try:
            assert _accepts(v4[0], "127.0.0.1")
        finally:
            close_sockets(v4)
    finally:
        close_sockets(v6)


@pytest.mark.parametrize("failure", ["socket", "bind"])
def test_empty_host_without_ipv6_falls_back_to_ipv4(monkeypatch, failure):
    real = socket.socket

    class NoIPv6(real):  # type: ignore[misc, valid-type]
        def __init__(self, family: int = socket.AF_INET, *args: object, **kwargs: object) -> None:
            if family == socket.AF_INET6 and failure == "socket":
                raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
            super().__init__(family, *args, **kwargs)  # type: ignore[arg-type]

        def bind(self, address: object) -> None:
            if self.family == socket.AF_INET6:
                raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
            super().bind(address)  # type: ignore[arg-type]

    monkeypatch.setattr(listeners.socket, "socket", NoIPv6)
    socks = _bind(("", 0))
    try:
        assert all(s.family == socket.AF_INET and s.getsockname()[0] == "0.0.0.0" for s in socks)
        assert _accepts(socks[0], "127.0.0.1")
    finally:
        close_sockets(socks)
