"""A listener given as ":PORT" takes connections on every address, IPv4 and IPv6, as README's production
example `smtp = [":25"]` means it (one dual-stack socket per worker)."""

from __future__ import annotations

import smtplib
import socket

import pytest

from .conftest import make_server


def _greeting(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=15) as s:
        return s.recv(200)


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_empty_host_listens_on_ipv4_and_ipv6(tmp_path):
    srv = make_server(tmp_path, workers=2)
    port = srv.ports["smtp"]
    srv.config.write_text(srv.config.read_text().replace(f'smtp = ["127.0.0.1:{port}"]', f'smtp = [":{port}"]'))
    srv.start()
    try:
        for host in ("127.0.0.1", "::1"):
            for _ in range(4):  # over both workers' sockets
                assert _greeting(host, port).startswith(b"220 "), host
            with smtplib.SMTP(host, port, timeout=30) as s:
                assert s.sendmail("x@remote.test", ["bob@example.org"], f"Subject: via {host}\r\n\r\nhi\r\n") == {}
        (line,) = [x for x in srv.log.read_text().splitlines() if "event=listen name=smtp " in x]
        assert f"address=[::]:{port} dual_stack=yes sockets=2" in line
    finally:
        srv.stop()
        srv.kill_tree()
    subjects = sorted(m.split(b"Subject: ")[1].split(b"\r\n")[0] for m in srv.messages("bob@example.org"))
    assert subjects == [b"via 127.0.0.1", b"via ::1"]
