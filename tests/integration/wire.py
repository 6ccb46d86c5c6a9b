"""What the integration tests share on the wire: a raw SMTP/LMTP client that reads whole replies, the
registry of its sockets (closed after every test by conftest's autouse fixture), an unverified TLS context
for the server's self-signed certificate, and the module-scoped server the session tests run against."""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import Server, make_server

HOST = "127.0.0.1"
TIMEOUT = 15.0

OPEN: list[socket.socket] = []  # every raw client socket, closed after each test even when it failed


def close_open_sockets() -> None:
    while OPEN:
        OPEN.pop().close()


def insecure_tls_context() -> ssl.SSLContext:
    """A client context that accepts the server's certificate without checking it (tests only)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def module_server(
    tmp_path_factory: pytest.TempPathFactory, name: str, setup: Callable[[Server], object] | None = None,
    workers: int = 2,
) -> Iterator[Server]:
    """The body of a module-scoped fixture (`yield from module_server(...)`): a server in its own temp
    folder, SETUP run on it (accounts, aliases) before it starts, stopped after the module's last test."""
    s = make_server(tmp_path_factory.mktemp(name), workers=workers)
    if setup is not None:
        setup(s)
    s.start()
    yield s
    s.stop()
    s.kill_tree()


@dataclass
class Reply:
    code: int
    lines: list[str]

    @property
    def status(self) -> str:
        """'250 2.1.5' (code and enhanced code of the last line), or '354' when there is no enhanced code."""
        parts = self.lines[-1][4:].split(" ", 1)
        if re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", parts[0]):
            return f"{self.code} {parts[0]}"
        return str(self.code)

    @property
    def last(self) -> str:
        return self.lines[-1]

    @property
    def text(self) -> str:
        return "\n".join(line[4:] for line in self.lines)


class Client:
    """A raw SMTP/LMTP client over TCP (PORT on HOST) or a unix socket (PATH) that reads complete replies;
    every read is bounded by the socket timeout. With GREET it reads the 220 greeting first."""

    def __init__(self, port: int | None = None, *, path: str | Path | None = None, greet: bool = True,
                 timeout: float = TIMEOUT, host: str = HOST) -> None:
        if path is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(str(path))
        else:
            assert port is not None
            self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        OPEN.append(self.sock)
        self.greeting: Reply | None = None
        if greet:
            self.greeting = self.reply()
            assert self.greeting.code == 220, self.greeting

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_once(self, data: bytes) -> None:
        """One send() call: the whole buffer goes to the kernel at once (one segment on loopback)."""
        assert self.sock.send(data) == len(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            assert len(self.buf) < 1 << 20, "no line end in 1 MiB of reply"
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise EOFError(f"connection closed; unparsed: {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self) -> Reply:
        lines: list[str] = []
        for _ in range(1000):
            line = self._line()
            assert re.match(rb"\d{3}[ -]", line), line
            assert not lines or line[:3] == lines[0][:3].encode(), (lines, line)
            lines.append(line.decode("utf-8"))
            if line[3:4] == b" ":
                return Reply(int(line[:3]), lines)
        raise AssertionError("reply with more than 1000 lines")

    def replies(self, n: int) -> list[Reply]:
        return [self.reply() for _ in range(n)]

    def cmd(self, line: str | bytes) -> Reply:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def ehlo(self) -> None:
        assert self.cmd("EHLO client.test").code == 250

    def until_eof(self, limit: int = 100_000, *, leftover_ok: bool = False) -> list[Reply]:
        """Every reply until the server closes; unless LEFTOVER_OK, nothing may follow the last one."""
        out = []
        for _ in range(limit):
            try:
                out.append(self.reply())
            except EOFError:
                assert leftover_ok or self.buf == b"", self.buf
                return out
        raise AssertionError("no EOF")

    def close(self) -> None:
        self.sock.close()
