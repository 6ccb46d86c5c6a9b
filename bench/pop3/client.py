"""A minimal asyncio POP3 client for the load driver (RFC 1939): greeting, USER/PASS, STAT, UIDL, RETR,
QUIT.  Fast enough for hundreds of MB/s of RETR on one core: a multi-line response is gathered into one
buffer and its end (CRLF "." CRLF) searched only in the bytes that just arrived; dot-unstuffing is one
`bytes.replace` over the whole message (none at all when no line starts with a dot).

It is a benchmark tool, not a general client: replies are matched to commands in order, so several
commands may be in flight (RFC 2449 PIPELINING) when the caller sends them with `send()` and collects the
replies with `reply()`; no SASL, no STLS, no TOP/LIST/DELE.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from typing import Any

TERMINATOR = b"\r\n.\r\n"


class Pop3Error(Exception):
    """An -ERR, an unexpected reply, or a connection that closed under a command."""


@dataclass
class Reply:
    """One reply: the status line (without CRLF) and, for a multi-line reply, its body dot-unstuffed: the
    lines with their CRLFs, without the terminating "." line."""

    line: bytes
    body: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.line.startswith(b"+OK")

    def text(self) -> str:
        return self.line.decode("utf-8", "replace")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        # replies expected, in order: (multi-line if +OK, its future)
        self.waiting: collections.deque[tuple[bool, asyncio.Future[Reply]]] = collections.deque()
        self.status: bytes | None = None  # the status line of the multi-line reply being gathered
        self.body = bytearray()  # starts with the status line's CRLF, so an empty body ends at position 0
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.bytes_in = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass

    def connection_lost(self, exc: Exception | None) -> None:
        err = Pop3Error(f"connection closed{': ' + str(exc) if exc else ''}")
        while self.waiting:
            _, fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(err)
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.status is not None:
            self._gather(data)
        else:
            self.buf += data
        self._frame()

    def _gather(self, data: bytes | bytearray) -> None:
        """Add to the multi-line body; finish the reply when the terminator is in."""
        body = self.body
        start = max(len(body) - 4, 0)  # the terminator may straddle the previous chunk's end
        body += data
        end = body.find(TERMINATOR, start)
        if end < 0:
            return
        rest = body[end + 5:]
        with memoryview(body) as mv:  # body[0:2] is the status line's CRLF; one copy unless stuffed
            if body.find(b"\r\n..", 0, end + 2) >= 0:
                raw = bytes(mv[:end + 2]).replace(b"\r\n..", b"\r\n.")[2:]  # RFC 1939 3: byte-stuffing
            else:
                raw = bytes(mv[2:end + 2])
        status, self.status, self.body = self.status, None, bytearray()
        assert status is not None
        self._deliver(Reply(status, raw))
        self.buf[:0] = rest

    def _frame(self) -> None:
        while self.status is None and self.waiting:
            eol = self.buf.find(b"\r\n")
            if eol < 0:
                return
            line = bytes(self.buf[:eol])
            multi = self.waiting[0][0] and line.startswith(b"+OK")
            if not multi:
                del self.buf[:eol + 2]
                self._deliver(Reply(line))
                continue
            self.status = line
            rest = self.buf[eol:]  # from the status line's CRLF
            self.buf = bytearray()
            self.body = bytearray()
            self._gather(rest)

    def _deliver(self, reply: Reply) -> None:
        _, fut = self.waiting.popleft()
        if not fut.done():
            fut.set_result(reply)


class Client:
    """One POP3 connection."""

    def __init__(self, proto: _Protocol) -> None:
        self.p = proto
        self.greeting = b""

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float = 60.0) -> Client:
        loop = asyncio.get_running_loop()
        _, proto = await asyncio.wait_for(loop.create_connection(_Protocol, host, port), timeout)
        c = cls(proto)
        fut: asyncio.Future[Reply] = loop.create_future()
        proto.waiting.append((False, fut))
        proto._frame()
        c.greeting = (await asyncio.wait_for(fut, timeout)).line
        if not c.greeting.startswith(b"+OK"):
            c.close()
            raise Pop3Error(f"greeting: {c.greeting[:200]!r}")
        return c

    def send(self, cmd: str | bytes, multi: bool = False) -> asyncio.Future[Reply]:
        """Write one command; the future gets its reply (replies come in command order)."""
        p = self.p
        if p.transport is None or p.closed.done():
            raise Pop3Error("connection closed")
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        p.waiting.append((multi, fut))
        p.transport.write((cmd.encode() if isinstance(cmd, str) else cmd) + b"\r\n")
        return fut

    async def command(self, cmd: str | bytes, multi: bool = False, timeout: float = 600.0,
                      check: bool = True) -> Reply:
        try:
            r = await asyncio.wait_for(self.send(cmd, multi), timeout)
        except TimeoutError as e:
            raise Pop3Error(f"{str(cmd)[:40]}: no reply within {timeout:g} s") from e
        if check and not r.ok:
            what = cmd if isinstance(cmd, str) else cmd.decode()
            shown = "PASS ..." if what.upper().startswith("PASS") else what[:40]
            raise Pop3Error(f"{shown}: {r.text()[:200]}")
        return r

    async def login(self, user: str, password: str) -> None:
        await self.command(f"USER {user}")
        await self.command(f"PASS {password}")

    async def stat(self) -> tuple[int, int]:
        """(messages, octets)."""
        r = await self.command("STAT")
        parts = r.line.split()
        try:
            return int(parts[1]), int(parts[2])
        except (IndexError, ValueError) as e:
            raise Pop3Error(f"STAT: {r.text()[:100]}") from e

    async def uidl(self) -> list[bytes]:
        """The unique-id of message 1, 2, ... (in message-number order, which is checked)."""
        r = await self.command("UIDL", multi=True)
        out = []
        assert r.body is not None
        for k, line in enumerate(r.body.split(b"\r\n")[:-1], 1):
            num, _, uid = line.partition(b" ")
            if int(num) != k:
                raise Pop3Error(f"UIDL: line {k} is for message {num!r}")
            out.append(uid)
        return out

    async def retr(self, n: int) -> bytes:
        r = await self.command(b"RETR %d" % n, multi=True)
        assert r.body is not None
        return r.body

    async def quit(self, timeout: float = 30.0) -> Reply | None:
        """QUIT, then wait until the server closes the connection (its maildrop is released by then)."""
        reply = None
        try:
            reply = await self.command("QUIT", timeout=timeout, check=False)
            await asyncio.wait_for(asyncio.shield(self.p.closed), timeout)
        except (Pop3Error, TimeoutError):
            pass
        self.close()
        return reply

    def close(self) -> None:
        if self.p.transport is not None:
            self.p.transport.close()


async def retr_all(c: Client, count: int, pipeline: int = 0, check: list[bytes] | None = None,
                   timeout: float = 600.0) -> dict[str, Any]:
    """RETR 1..count on a logged-in session: one after the other (pipeline 0, as fetchmail and most clients
    do), or with up to `pipeline` commands in flight.  Counts the message bytes; with `check`, compares each
    message with check[i] (the generated bytes).  Returns bytes, seconds, and the first mismatches."""
    total = 0
    wrong: list[int] = []
    sizes: list[int] = []
    t0 = time.perf_counter()
    deadline = t0 + timeout

    def take(i: int, r: Reply) -> None:
        nonlocal total
        if not r.ok or r.body is None:
            raise Pop3Error(f"RETR {i + 1}: {r.text()[:200]}")
        total += len(r.body)
        sizes.append(len(r.body))
        if check is not None and r.body != check[i]:
            wrong.append(i)

    if pipeline <= 0:
        for i in range(count):
            left = deadline - time.perf_counter()
            if left <= 0:
                raise Pop3Error(f"RETR: not done within {timeout:g} s")
            take(i, await c.command(b"RETR %d" % (i + 1), multi=True, timeout=left, check=False))
    else:
        inflight: collections.deque[tuple[int, asyncio.Future[Reply]]] = collections.deque()
        nxt = 0
        while nxt < count or inflight:
            while nxt < count and len(inflight) < pipeline:
                inflight.append((nxt, c.send(b"RETR %d" % (nxt + 1), multi=True)))
                nxt += 1
            i, fut = inflight.popleft()
            left = deadline - time.perf_counter()
            if left <= 0:
                raise Pop3Error(f"RETR: not done within {timeout:g} s")
            take(i, await asyncio.wait_for(fut, left))
    return {"bytes": total, "seconds": time.perf_counter() - t0, "sizes": sizes, "wrong": wrong}
