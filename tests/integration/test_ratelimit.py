"""Rate limits end to end (ratelimit.*): connections per client address (421 4.7.0 instead of the greeting),
messages per client address and per authenticated user (451 4.7.1 at MAIL), counted by both workers
together.  No wall-clock assertions: the window's end is waited for by retrying within a bounded time."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Iterator

import pytest

from .conftest import PASSWORDS, Server, make_server

pytestmark = pytest.mark.integration


def start(tmp_path, **limits: float) -> Server:
    lines = "".join(f"{k} = {v}\n" for k, v in limits.items())
    srv = make_server(tmp_path, workers=2, extra=f"auth_plaintext_without_tls = true\n\n[ratelimit]\n{lines}")
    srv.start()
    return srv


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start(tmp_path_factory.mktemp("ratelimit"), connections_per_ip=4, connection_window=600.0,
                messages_per_ip=2, messages_per_user=2, message_window=600.0)
    yield srv
    srv.stop()
    srv.kill_tree()


def greeting(srv: Server, source: str, listener: str = "smtp") -> bytes:
    with socket.create_connection(("127.0.0.1", srv.ports[listener]), timeout=10, source_address=(source, 0)) as s:
        data = b""
        while not data.endswith(b"\r\n"):
            more = s.recv(512)
            if not more:
                break
            data += more
        if data.startswith(b"220"):
            s.sendall(b"QUIT\r\n")
        return data


def test_connections_per_ip(server: Server) -> None:
    # eight connections spread by the kernel over both workers: four get in, whichever worker took them
    replies = [greeting(server, "127.0.1.1", "smtp" if i % 2 else "submission") for i in range(8)]
    assert [r[:3] for r in replies] == [b"220"] * 4 + [b"421"] * 4, replies
    assert replies[-1].startswith(b"421 4.7.0 ")
    assert greeting(server, "127.0.1.2").startswith(b"220")  # another address
    assert greeting(server, "127.0.1.2").startswith(b"220")
    # LMTP is not limited
    assert all(greeting(server, "127.0.1.1", "lmtp").startswith(b"220") for _ in range(3))


def send(srv: Server, source: str, sender: str, login: str | None = None) -> tuple[int, bytes]:
    """One message; MAIL's reply when it is refused, DATA's otherwise."""
    listener = "submission" if login else "smtp"
    with smtplib.SMTP("127.0.0.1", srv.ports[listener], timeout=30, source_address=(source, 0)) as c:
        c.ehlo("mail.sender.test")
        if login:
            c.login(login, PASSWORDS[login])
        code, reply = c.mail(sender)
        if code != 250:
            return code, reply
        assert c.rcpt("alice@example.org")[0] == 250
        return c.data(f"From: <{sender}>\r\nSubject: rate\r\n\r\nhi\r\n".encode())


def test_messages_per_ip(server: Server) -> None:
    assert [send(server, "127.0.2.1", "bob@sender.test")[0] for _ in range(2)] == [250, 250]
    code, reply = send(server, "127.0.2.1", "other@sender.test")
    assert (code, reply[:5]) == (451, b"4.7.1"), reply
    assert send(server, "127.0.2.2", "bob@sender.test")[0] == 250  # another address


def test_messages_per_user(server: Server) -> None:
    assert [send(server, "127.0.3.1", "carol@example.org", login="carol@example.org")[0] for _ in range(2)] == [250] * 2
    # the limit follows the user, not the address
    code, reply = send(server, "127.0.3.2", "carol@example.org", login="carol@example.org")
    assert (code, reply[:5]) == (451, b"4.7.1"), reply
    assert send(server, "127.0.3.1", "bob@example.org", login="bob@example.org")[0] == 250


def test_the_window_passes(tmp_path) -> None:
    srv = start(tmp_path, connections_per_ip=2, connection_window=1.0)
    try:
        assert [greeting(srv, "127.0.4.1")[:3] for _ in range(3)] == [b"220", b"220", b"421"]
        deadline = time.monotonic() + 15
        while not greeting(srv, "127.0.4.1").startswith(b"220"):
            assert time.monotonic() < deadline, "the connection limit never lifted"
            time.sleep(0.2)
    finally:
        srv.stop()
        srv.kill_tree()
