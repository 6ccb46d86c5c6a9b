"""A raw IMAP client for the integration tests: sends exact bytes, reads whole responses (literals included),
every read bounded by the socket timeout.  imaplib covers the usual paths; this one covers what imaplib
cannot say (IDLE on Python 3.11, SASL-IR, bad input, literals refused before they are sent)."""

from __future__ import annotations

import re
import socket
import ssl

from .wire import HOST, OPEN, TIMEOUT, insecure_tls_context

_LITERAL = re.compile(rb"~?\{(\d+)\}$")


class RawIMAP:
    def __init__(self, port: int, *, tls: bool = False, timeout: float = TIMEOUT, source: str | None = None) -> None:
        """`source`: the client's own address (another 127.0.0.0/8 address: a different client to the server)."""
        sock = socket.create_connection((HOST, port), timeout=timeout,
                                        source_address=(source, 0) if source else None)
        if tls:
            sock = insecure_tls_context().wrap_socket(sock)
        self.sock: socket.socket | ssl.SSLSocket = sock
        OPEN.append(sock)
        self.buf = b""
        self.greeting = self.response()

    def starttls(self) -> None:
        """Wrap the connection in TLS (after the server's OK to STARTTLS)."""
        assert not self.buf, self.buf
        self.sock = insecure_tls_context().wrap_socket(self.sock)
        OPEN.append(self.sock)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed; unparsed: {self.buf!r}")
        self.buf += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            assert len(self.buf) < 1 << 24, "no line end in 16 MiB"
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def response(self) -> bytes:
        """One response line with its literals inline (b"* 1 FETCH (BODY[] {3}\\r\\nabc)")."""
        out = self._line()
        for _ in range(10_000):
            m = _LITERAL.search(out)
            if m is None:
                return out
            n = int(m.group(1))
            while len(self.buf) < n:
                self._fill()
            out += b"\r\n" + self.buf[:n]
            self.buf = self.buf[n:]
            out += self._line()
        raise AssertionError("too many literals")

    def cmd(self, tag: str, text: bytes | str) -> tuple[list[bytes], bytes]:
        """Send "tag text", return (untagged responses, the tagged completion)."""
        data = text.encode() if isinstance(text, str) else text
        self.send(tag.encode() + b" " + data + b"\r\n")
        return self.until(tag)

    def until(self, tag: str) -> tuple[list[bytes], bytes]:
        untagged: list[bytes] = []
        prefix = tag.encode() + b" "
        for _ in range(100_000):
            line = self.response()
            if line.startswith(prefix):
                return untagged, line
            untagged.append(line)
        raise AssertionError("no tagged response")

    def close(self) -> None:
        self.sock.close()
