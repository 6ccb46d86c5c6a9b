"""A virus scan by clamd over its INSTREAM command (clamd(8), "INSTREAM").

The exchange, on a fresh connection to "unix:/PATH" or "HOST:PORT" (the `clamav.address` setting):

    -> zINSTREAM\\0                          the "z" form: replies end in NUL instead of a newline
    -> <4-byte big-endian length><data> ...  chunks of CHUNK_SIZE bytes
    -> \\0\\0\\0\\0                            a zero-length chunk ends the stream
    <- stream: OK\\0                         clean
    <- stream: <signature> FOUND\\0          infected
    <- <reason> ERROR\\0                     no verdict, e.g. "INSTREAM size limit exceeded. ERROR"

clamd stops reading and answers "INSTREAM size limit exceeded. ERROR" as soon as the stream passes its
StreamMaxLength (clamd.conf(5): default 100M; Debian's clamd.conf sets 25M) and closes the connection; the
reply is read while the chunks are still being sent, so that answer is what the caller sees (as
TooBig, a FilterUnavailable), not the broken pipe of the chunks clamd never reads.  A caller that knows the limit can
pass it as `max_length` and skip the round trip for a message over it.

Raw non-blocking sockets with the loop's sock_* calls rather than asyncio streams: a StreamWriter whose
write fails (clamd closed early) closes its transport and drops a reply not yet read, which is the reply
that matters here.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
from dataclasses import dataclass
from typing import Any

from fastmail.config import split_hostport

from .filters import FilterUnavailable, deadline, describe

CHUNK_SIZE = 64 * 1024
MAX_REPLY = 4096  # a verdict is one short line; more than this is not clamd
_END = b"\0\0\0\0"  # the zero-length chunk
_FOUND = re.compile(r"stream: (.+) FOUND")


class TooBig(FilterUnavailable):
    """The message is over clamd's StreamMaxLength (known in advance, or clamd said so): it cannot be scanned,
    now or on a retry."""


@dataclass(frozen=True)
class ScanResult:
    infected: bool
    signature: str | None = None  # the signature's name when infected, e.g. "Win.Test.EICAR_HDB-1"


async def scan(address: str, message: bytes, *, timeout: float, chunk_size: int = CHUNK_SIZE,
               max_length: int | None = None) -> ScanResult:
    """Scan `message` with the clamd at `address` ("unix:/PATH" or "HOST:PORT", "[V6]:PORT").

    Raises FilterUnavailable when clamd cannot be reached, gives no verdict within `timeout` seconds
    (connect, stream and reply together), answers ERROR (its reason is in the exception) or something
    that is not a verdict, and when `message` is longer than `max_length` (clamd's StreamMaxLength, if
    known; nothing is sent then).  ValueError for an `address` of neither form.
    """
    target = parse_address(address)
    what = f"clamd at {address}"
    if max_length is not None and len(message) > max_length:
        raise TooBig(f"{what}: message of {len(message)} bytes is over its StreamMaxLength of "
                                f"{max_length}; not scanned")
    async with deadline(timeout, what):
        sock = await _connect(target, what)
        try:
            reply = await _instream(sock, message, chunk_size, what)
        finally:
            sock.close()
    return parse_reply(reply, what)


def parse_address(address: str) -> str | tuple[str, int]:
    """"unix:/PATH" -> "/PATH"; "HOST:PORT" or "[V6]:PORT" -> (host, port).  ValueError otherwise."""
    if address.startswith("unix:"):
        path = address[5:]
        if not path:
            raise ValueError(f"clamd address {address!r}: empty socket path")
        return path
    try:
        host, port = split_hostport(address, 0)
    except ValueError:
        port = 0
    if not port:
        raise ValueError(f"clamd address {address!r}: neither unix:/PATH nor HOST:PORT")
    return host, port


def parse_reply(reply: bytes, what: str = "clamd") -> ScanResult:
    """The verdict in a reply to zINSTREAM (without or with its NUL); FilterUnavailable for ERROR and for
    anything that is not a verdict."""
    text = reply.rstrip(b"\0").decode("utf-8", "replace").strip()
    if text == "stream: OK":
        return ScanResult(infected=False)
    found = _FOUND.fullmatch(text)
    if found:
        return ScanResult(infected=True, signature=found.group(1))
    if text.endswith(" ERROR"):
        reason = text[:-len(" ERROR")].strip()
        if "size limit exceeded" in reason:  # "INSTREAM size limit exceeded." (StreamMaxLength)
            raise TooBig(f"{what}: {reason}")
        raise FilterUnavailable(f"{what}: {reason}")
    raise FilterUnavailable(f"{what}: not a verdict: {text[:200]!r}")


async def _connect(target: str | tuple[str, int], what: str) -> socket.socket:
    loop = asyncio.get_running_loop()
    candidates: list[tuple[int, Any]]
    if isinstance(target, str):
        candidates = [(socket.AF_UNIX, target)]
    else:
        try:
            infos = await loop.getaddrinfo(target[0], target[1], type=socket.SOCK_STREAM)
        except OSError as e:
            raise FilterUnavailable(f"{what}: {describe(e)}") from None
        candidates = [(family, sockaddr) for family, _, _, _, sockaddr in infos]
    error: OSError | None = None
    for family, sockaddr in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, sockaddr)
            return sock
        except OSError as e:
            error = e
        except BaseException:
            sock.close()
            raise
        sock.close()
    raise FilterUnavailable(f"{what}: {describe(error) if error else 'no address'}")


async def _instream(sock: socket.socket, message: bytes, chunk_size: int, what: str) -> bytes:
    """Stream `message` and return clamd's reply, read all along (clamd may answer before the end)."""
    loop = asyncio.get_running_loop()
    reply = asyncio.ensure_future(_read_reply(sock))
    send_error: OSError | None = None
    try:
        try:
            if 0 < len(message) <= chunk_size:  # one chunk (most mail): the whole stream in one write
                await loop.sock_sendall(sock, b"".join((b"zINSTREAM\0", struct.pack(">I", len(message)), message, _END)))
            else:
                await loop.sock_sendall(sock, b"zINSTREAM\0")
                view = memoryview(message)
                for start in range(0, len(view), chunk_size):
                    if reply.done():
                        break  # clamd answered early: it reads no more
                    chunk = view[start:start + chunk_size]
                    await loop.sock_sendall(sock, struct.pack(">I", len(chunk)) + chunk)
                else:
                    await loop.sock_sendall(sock, _END)
        except OSError as e:
            send_error = e  # clamd closed its end (a broken pipe): its reply, if any, says why
        try:
            data = await reply
        except OSError as e:
            raise FilterUnavailable(f"{what}: {describe(e)}") from None
        if not data:
            cause = f" ({describe(send_error)})" if send_error else ""
            raise FilterUnavailable(f"{what}: connection closed without a verdict{cause}")
        return data
    finally:
        if not reply.done():
            reply.cancel()
            await asyncio.wait([reply])  # its socket callbacks are gone before the socket is closed
        elif not reply.cancelled():
            reply.exception()  # retrieved: what it raised was reported above or is moot


async def _read_reply(sock: socket.socket) -> bytes:
    """Bytes up to and including the NUL that ends a z-command's reply, or up to EOF."""
    loop = asyncio.get_running_loop()
    data = b""
    while b"\0" not in data and len(data) <= MAX_REPLY:
        more = await loop.sock_recv(sock, MAX_REPLY)
        if not more:
            break
        data += more
    return data
