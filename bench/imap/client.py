"""A minimal asyncio IMAP client for the load driver: tagged commands, literals both ways, untagged responses
collected until the tagged one.  Fast enough for hundreds of MB/s of FETCH BODY[] on one core: it frames
responses (lines and {n} literals) without parsing them, and a literal that arrives in the same chunk as
what follows is neither copied nor joined unless the caller wants its bytes.

It is a benchmark tool, not a general client: one command in flight per connection (or LITERAL+ appends
pipelined by the caller), responses kept as framed lines with the literals cut out (see Response).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class ImapError(Exception):
    """A NO/BAD, an unexpected reply, or a connection that closed under a command."""


@dataclass
class Response:
    """What one command got: the tagged status and text; the untagged responses as lines with each literal
    replaced by `{n}` (its size still there, its bytes not); the literal bytes in all; and, when asked for
    (digest=True), a sha256 per literal in arrival order."""

    status: str = ""
    text: str = ""
    untagged: list[bytes] = field(default_factory=list)
    literal_bytes: int = 0
    digests: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, kind: bytes) -> int:
        """Untagged responses of this kind: b"FETCH" counts `* n FETCH`, b"EXISTS" `* n EXISTS`."""
        return sum(1 for u in self.untagged if u.split(b" ", 3)[2:3] == [kind])

    def search_hits(self) -> list[int]:
        out: list[int] = []
        for u in self.untagged:
            if u.startswith(b"* SEARCH"):
                out += [int(x) for x in u[8:].split() if x.isdigit()]
        return out

    def fetch_items(self, item: bytes) -> list[bytes]:
        """The value of a simple FETCH item (number or quoted string) from each FETCH response, in order."""
        rx = re.compile(re.escape(item) + rb' ("[^"]*"|\d+)')
        out = []
        for u in self.untagged:
            if b" FETCH " in u:
                m = rx.search(u)
                if m:
                    out.append(m.group(1).strip(b'"'))
        return out


_LITERAL = re.compile(rb"\{(\d+)\}$")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.parts: list[bytes] = []  # the current untagged response's pieces so far (literals cut out)
        self.literal_left = 0
        self.literal_hash: Any = None
        self.want_digests = False
        self.current: Response | None = None
        self.tag = b""
        self.done: asyncio.Future[Response] | None = None
        self.cont: asyncio.Future[bytes] | None = None
        self.greeting: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.on_untagged: Callable[[bytes], None] | None = None  # responses outside commands (IDLE)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        err = ImapError(f"connection closed{': ' + str(exc) if exc else ''}")
        for fut in (self.done, self.cont, self.greeting):
            if fut is not None and not fut.done():
                fut.set_exception(err)

    def data_received(self, data: bytes) -> None:
        view = memoryview(data)
        start = 0
        if self.literal_left and not self.buf:  # inside a literal: take it straight from the chunk
            n = min(self.literal_left, len(data))
            self._literal_piece(view[:n])
            start = n
        if start < len(data):
            self.buf += view[start:]
        self._frame()

    def _literal_piece(self, piece: memoryview | bytes) -> None:
        self.literal_left -= len(piece)
        if self.current is not None:
            self.current.literal_bytes += len(piece)
        if self.literal_hash is not None:
            self.literal_hash.update(piece)
            if not self.literal_left and self.current is not None:
                self.current.digests.append(self.literal_hash.hexdigest())
                self.literal_hash = None

    def _frame(self) -> None:
        buf = self.buf
        pos = 0
        slow_until = -1  # line by line up to here: the bulk test failed on these lines
        while pos < len(buf):
            if self.literal_left:
                n = min(self.literal_left, len(buf) - pos)
                self._literal_piece(memoryview(buf)[pos:pos + n])
                pos += n
                continue
            if pos >= slow_until and not self.parts and self.current is not None:
                # the bulk of a FETCH or SEARCH answer: every complete line an untagged response ("* "), none
                # ending in a literal's {n} — taken with two scans and one split instead of a pass of this
                # loop per line (which cost the client as much CPU per message as a server spends)
                last = buf.rfind(b"\r\n", pos)
                if last < 0:
                    break
                chunk = bytes(buf[pos:last])
                if chunk.startswith(b"* ") and b"}\r\n" not in chunk and not chunk.endswith(b"}") \
                        and chunk.count(b"\r\n") == chunk.count(b"\r\n* "):
                    self.current.untagged += chunk.split(b"\r\n")
                    pos = last + 2
                    continue
                slow_until = last
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            line = bytes(buf[pos:eol])
            pos = eol + 2
            m = _LITERAL.search(line) if line.endswith(b"}") else None
            if m:
                self.parts.append(line)
                self.literal_left = int(m.group(1))
                if self.want_digests:
                    self.literal_hash = hashlib.sha256()
                if not self.literal_left and self.want_digests and self.current is not None:
                    self.current.digests.append(self.literal_hash.hexdigest())
                    self.literal_hash = None
                continue
            if self.parts:
                self.parts.append(line)
                line = b"".join(self.parts)
                self.parts = []
            self._response(line)
        del buf[:pos]

    def _response(self, line: bytes) -> None:
        if line.startswith(b"* "):
            if not self.greeting.done():
                self.greeting.set_result(line)
            elif self.current is not None:
                self.current.untagged.append(line)
            elif self.on_untagged is not None:
                self.on_untagged(line)
        elif line.startswith(b"+"):
            if self.cont is not None and not self.cont.done():
                self.cont.set_result(line)
        elif self.tag and line.startswith(self.tag + b" "):
            status, _, text = line[len(self.tag) + 1:].partition(b" ")
            resp = self.current or Response()
            resp.status, resp.text = status.decode(), text.decode("utf-8", "replace")
            self.current, self.tag = None, b""
            if self.done is not None and not self.done.done():
                self.done.set_result(resp)


class Client:
    """One IMAP connection."""

    def __init__(self, proto: _Protocol) -> None:
        self.p = proto
        self.n = 0
        self.capabilities: set[str] = set()
        self.greeting = b""

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float = 60.0) -> Client:
        loop = asyncio.get_running_loop()
        _, proto = await asyncio.wait_for(loop.create_connection(_Protocol, host, port), timeout)
        c = cls(proto)
        c.greeting = await asyncio.wait_for(proto.greeting, timeout)
        if not c.greeting.startswith(b"* OK"):
            c.close()
            raise ImapError(f"greeting: {c.greeting[:200]!r}")
        c._caps_from(c.greeting)
        return c

    def _caps_from(self, line: bytes) -> None:
        m = re.search(rb"CAPABILITY ([^\]\r\n]*)", line)
        if m:
            self.capabilities = {c.decode().upper() for c in m.group(1).split()}

    def _tag(self) -> bytes:
        self.n += 1
        return b"A%d" % self.n

    async def command(self, cmd: bytes | str, timeout: float = 600.0, digests: bool = False,
                      check: bool = True) -> Response:
        """Send `cmd` (no literals in it) and collect until its tagged reply; NO/BAD raise unless check=False."""
        return await self.command_parts([cmd.encode() if isinstance(cmd, str) else cmd], timeout, digests, check)

    async def command_parts(self, parts: list[bytes], timeout: float = 600.0, digests: bool = False,
                            check: bool = True) -> Response:
        """A command whose parts after the first each follow a synchronizing literal: parts[0] ends with
        `{n}` and parts[1] is its n bytes (and so on); the last part ends the command (CRLF added).  With
        LITERAL+ (`{n+}`) the caller puts everything in one part."""
        p = self.p
        if p.closed:
            raise ImapError("connection closed")
        assert p.transport is not None
        tag = self._tag()
        p.tag, p.current, p.want_digests = tag, Response(), digests
        loop = asyncio.get_running_loop()
        p.done = loop.create_future()
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                first = tag + b" " + parts[0]
                for k, part in enumerate(parts[1:]):
                    p.cont = loop.create_future()
                    p.transport.write((first if k == 0 else b"") + b"\r\n")
                    await p.cont
                    p.transport.write(part)
                p.transport.write((first if len(parts) == 1 else b"") + b"\r\n")
                resp = await p.done
        except TimeoutError as e:
            raise ImapError(f"{parts[0][:60]!r}: no reply within {timeout:g} s") from e
        resp.seconds = time.perf_counter() - t0
        if check and resp.status != "OK":
            raise ImapError(f"{parts[0][:60]!r}: {resp.status} {resp.text[:200]}")
        return resp

    async def login(self, user: str, password: str) -> Response:
        r = await self.command(f'LOGIN "{user}" "{password}"')
        self._caps_from(r.text.encode())
        if not any(c.startswith("IMAP4") for c in self.capabilities):
            self._caps_from(b"".join((await self.command("CAPABILITY")).untagged))
        return r

    async def select(self, mailbox: str = "INBOX") -> int:
        """SELECT; returns EXISTS."""
        r = await self.command(f'SELECT "{mailbox}"')
        for u in r.untagged:
            if u.endswith(b" EXISTS"):
                return int(u.split()[1])
        raise ImapError(f"SELECT {mailbox}: no EXISTS")

    async def append(self, mailbox: str, message: bytes, date: str | None = None, flags: str = "",
                     timeout: float = 120.0) -> Response:
        """APPEND, with a LITERAL+ literal when the server has it (one round trip), else a synchronizing one."""
        head = f'APPEND "{mailbox}"' + (f" ({flags})" if flags else "") + (f' "{date}"' if date else "")
        if "LITERAL+" in self.capabilities:
            return await self.command_parts([head.encode() + b" {%d+}\r\n" % len(message) + message], timeout)
        return await self.command_parts([head.encode() + b" {%d}" % len(message), message], timeout)

    async def idle(self, timeout: float = 60.0) -> None:
        """Start IDLE and wait for its continuation; untagged responses meanwhile go to on_untagged."""
        p = self.p
        assert p.transport is not None
        tag = self._tag()
        loop = asyncio.get_running_loop()
        p.tag, p.current, p.want_digests = tag, None, False
        p.done, p.cont = loop.create_future(), loop.create_future()
        p.transport.write(tag + b" IDLE\r\n")
        await asyncio.wait_for(p.cont, timeout)

    async def done(self, timeout: float = 60.0) -> None:
        p = self.p
        assert p.transport is not None and p.done is not None
        p.current = Response()
        p.transport.write(b"DONE\r\n")
        resp = await asyncio.wait_for(p.done, timeout)
        if resp.status != "OK":
            raise ImapError(f"IDLE: {resp.status} {resp.text[:200]}")

    async def logout(self, timeout: float = 30.0) -> None:
        try:
            await self.command("LOGOUT", timeout=timeout, check=False)
        except ImapError:
            pass
        self.close()

    def close(self) -> None:
        if self.p.transport is not None:
            self.p.transport.close()


def imap_date(ts: int) -> str:
    """RFC 3501 date-time (APPEND, INTERNALDATE) in UTC."""
    t = time.gmtime(ts)
    months = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
    return f"{t.tm_mday:02d}-{months[t.tm_mon - 1]}-{t.tm_year} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"


def parse_imap_date(s: bytes | str) -> int:
    """INTERNALDATE "dd-Mon-yyyy hh:mm:ss +zzzz" -> Unix time."""
    import calendar
    s = s.decode() if isinstance(s, bytes) else s
    day, mon, rest = s.strip().split("-", 2)
    year, hms, zone = rest.split()
    months = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
    h, m, sec = (int(x) for x in hms.split(":"))
    ts = calendar.timegm((int(year), months.index(mon) + 1, int(day), h, m, sec))
    off = (int(zone[1:3]) * 60 + int(zone[3:5])) * 60
    return ts - off if zone[0] == "+" else ts + off
