"""Scripted SMTP receivers for the delivery tests: asyncio servers on 127.0.0.x, in a thread of the test.

A `Receiver` speaks just enough SMTP to be a remote mail exchanger whose every answer the test chooses:
`rcpt(address, attempt)` and `data(attempt)` return the reply lines (attempt counts the connections'
transactions, from 1); `ehlo` lists the extensions offered.  What it received is kept per transaction in
`messages` (sender line, recipient lines, body as sent on the wire, before dot-unstuffing) and
`transcript` (every command line), with `ahead` (how many bytes had already arrived behind each command
line when it was read: what a client pipelined with it) and `ahead_of_end` (the same, for each end-of-data
line: a next transaction pipelined behind the data, RFC 2920 §3.1).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Received:
    mail: str
    rcpts: list[str]
    data: bytes  # unstuffed, ending CRLF (without the final ".")
    accepted: list[str] = field(default_factory=list)


class Loop:
    """One asyncio loop in a daemon thread, shared by the receivers of a test module."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self._cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @staticmethod
    async def _cancel_all() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.2)  # closing TLS transports need a few loop iterations to let go of their sockets


def ok(*_: Any) -> str:
    return "250 2.0.0 ok"


class Receiver:
    def __init__(
        self,
        loop: Loop,
        host: str,
        port: int,
        *,
        ehlo: tuple[str, ...] = ("PIPELINING", "SIZE 10485760", "8BITMIME", "DSN", "SMTPUTF8", "ENHANCEDSTATUSCODES"),
        rcpt: Callable[[str, int], str] = ok,
        data: Callable[[int], str] = ok,
        greeting: str = "220 receiver.test ESMTP",
        on_data: Callable[[], None] | None = None,
        tls: ssl.SSLContext | None = None,
        auth: tuple[str, str] | None = None,
        greeting_delay: float = 0.0,
    ) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.ehlo = ehlo
        self.rcpt = rcpt
        self.data = data
        self.greeting = greeting
        self.greeting_delay = greeting_delay  # seconds before the greeting
        self.on_data = on_data  # called (in the receiver's thread) when DATA content starts
        self.tls = tls  # a working STARTTLS (else STARTTLS, when listed in ehlo, is a broken one)
        self.auth = auth  # AUTH PLAIN with these credentials, offered once TLS is on
        self.logins: list[str] = []  # "user" per successful AUTH, "!user" per failed one
        self.stall_data = False  # read the data, then never answer it (the kill -9 test)
        self.messages: list[Received] = []
        self.transcript: list[str] = []
        self.ahead: list[int] = []
        self.ahead_of_end: list[int] = []
        self.transactions = 0
        self.connections = 0
        self.lock = threading.Lock()
        self.server: asyncio.AbstractServer | None = None

    def start(self) -> Receiver:
        self.server = self.loop.run(asyncio.start_server(self._session, self.host, self.port))
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def wait(self, count: int, timeout: float = 30.0) -> list[Received]:
        """Wait (bounded) until `count` messages were received."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        raise AssertionError(f"{self.host}: {len(self.messages)} messages, wanted {count}; transcript: {self.transcript}")

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self.lock:
            self.connections += 1
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.greeting_delay:
            await asyncio.sleep(self.greeting_delay)
        writer.write(self.greeting.encode() + b"\r\n")
        mail = ""
        rcpts: list[str] = []
        accepted: list[str] = []
        tls_on = False
        while True:
            line = await reader.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            with self.lock:
                self.transcript.append(text)
                self.ahead.append(_waiting(reader))
            verb = text[:4].upper()
            if verb == "EHLO":
                lines = ["receiver.test", *self.ehlo]
                if self.tls is not None and not tls_on:
                    lines.append("STARTTLS")
                if self.auth is not None and tls_on:
                    lines.append("AUTH PLAIN LOGIN")
                writer.write("".join(f"250{'-' if i < len(lines) - 1 else ' '}{x}\r\n"
                                     for i, x in enumerate(lines)).encode())
            elif verb == "HELO":
                writer.write(b"250 receiver.test\r\n")
            elif verb == "MAIL":
                mail, rcpts, accepted = text, [], []
                writer.write(b"250 2.1.0 ok\r\n")
            elif verb == "RCPT":
                with self.lock:
                    attempt = self.transactions + 1
                address = text[text.index("<") + 1:text.index(">")]
                reply = self.rcpt(address, attempt)
                rcpts.append(text)
                if reply.startswith("2"):
                    accepted.append(address)
                writer.write(reply.encode() + b"\r\n")
            elif verb == "DATA":
                if not accepted:
                    writer.write(b"554 5.5.1 no valid recipients\r\n")
                    continue
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                if self.on_data is not None:
                    self.on_data()
                body = bytearray()
                while True:
                    chunk = await reader.readline()
                    if not chunk:
                        return
                    if chunk == b".\r\n":
                        with self.lock:
                            self.ahead_of_end.append(_waiting(reader))
                        break
                    body += chunk[1:] if chunk.startswith(b".") else chunk
                if self.stall_data:
                    await asyncio.sleep(3600)
                with self.lock:
                    self.transactions += 1
                    attempt = self.transactions
                reply = self.data(attempt)
                if reply.startswith("2"):
                    with self.lock:
                        self.messages.append(Received(mail, rcpts, bytes(body), accepted))
                writer.write(reply.encode() + b"\r\n")
            elif text.upper() == "STARTTLS" and self.tls is not None:
                writer.write(b"220 2.0.0 ready\r\n")
                await writer.drain()
                await writer.start_tls(self.tls)
                tls_on = True
                continue
            elif verb == "AUTH" and self.auth is not None and text.upper().startswith("AUTH PLAIN "):
                _, user, password = base64.b64decode(text[11:]).decode().split("\0")
                good = tls_on and (user, password) == self.auth
                with self.lock:
                    self.logins.append(user if good else f"!{user}")
                writer.write(b"235 2.7.0 ok\r\n" if good else b"535 5.7.8 bad credentials\r\n")
            elif text.upper() == "STARTTLS":
                # a broken TLS server: says go ahead, then answers the handshake with garbage
                writer.write(b"220 2.0.0 ready\r\n")
                await writer.drain()
                await reader.read(1)
                writer.write(b"this is not TLS\r\n" * 20)
                await writer.drain()
                return
            elif verb == "BDAT":  # RFC 3030: one chunk, LAST, is all this receiver takes
                size = int(text.split()[1])
                body = await reader.readexactly(size)
                if not accepted:
                    writer.write(b"554 5.5.1 no valid recipients\r\n")
                else:
                    with self.lock:
                        self.transactions += 1
                        attempt = self.transactions
                    reply = self.data(attempt)
                    if reply.startswith("2"):
                        with self.lock:
                            self.messages.append(Received(mail, rcpts, bytes(body), accepted))
                    writer.write(reply.encode() + b"\r\n")
            elif verb == "RSET":
                mail, rcpts, accepted = "", [], []
                writer.write(b"250 2.0.0 ok\r\n")
            elif verb == "QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"502 5.5.2 not implemented\r\n")
            await writer.drain()


def _waiting(reader: asyncio.StreamReader) -> int:
    """Bytes the reader has received but not handed out yet."""
    return len(reader._buffer)  # type: ignore[attr-defined]


class PolicyServer:
    """An HTTPS server for MTA-STS policies: GET /.well-known/mta-sts.txt answers `policies[Host]` (404 when
    absent); `fetches` counts the requests."""

    def __init__(self, loop: Loop, host: str, port: int, tls: ssl.SSLContext) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.tls = tls
        self.policies: dict[str, str] = {}
        self.fetches: list[str] = []
        self.server: asyncio.AbstractServer | None = None

    def start(self) -> PolicyServer:
        self.server = self.loop.run(asyncio.start_server(self._serve, self.host, self.port, ssl=self.tls))
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            host = next((v.strip() for k, _, v in (line.partition(":") for line in lines[1:]) if k.lower() == "host"), "")
            self.fetches.append(host)
            body = self.policies.get(host)
            if lines[0].split()[1] != "/.well-known/mta-sts.txt" or body is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            else:
                data = body.encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                             b"Connection: close\r\n\r\n%s" % (len(data), data))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
