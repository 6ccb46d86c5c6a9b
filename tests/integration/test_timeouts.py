"""Per-state timeouts (RFC 5321 §4.5.3.2): a silent client is told 421 4.4.2 and disconnected; an
unfinished DATA stores nothing."""

from __future__ import annotations

import socket
import time

import pytest

from .conftest import make_server


@pytest.fixture
def quick_server(tmp_path):
    srv = make_server(tmp_path, workers=1, extra="command_timeout = 1.0\ndata_timeout = 1.5\n")
    srv.start()
    yield srv
    srv.stop()
    srv.kill_tree()


def _read_all(s: socket.socket, limit: float = 10.0) -> bytes:
    s.settimeout(limit)
    out = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return out
        out += chunk


def test_command_timeout(quick_server):
    with socket.create_connection(("127.0.0.1", quick_server.ports["smtp"])) as s:
        started = time.monotonic()
        out = _read_all(s)
    assert out.startswith(b"220 ") and out.endswith(b"421 4.4.2 Timeout, closing connection\r\n")
    assert time.monotonic() - started >= 0.9


def test_data_timeout_stores_nothing(quick_server):
    with socket.create_connection(("127.0.0.1", quick_server.ports["smtp"])) as s:
        s.sendall(b"EHLO x\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\nSubject: half\r\n")
        out = _read_all(s)
    assert b"354 " in out and out.endswith(b"421 4.4.2 Timeout, closing connection\r\n")
    assert quick_server.messages("alice@example.org") == []
