"""The POP3 benchmark's client (bench/pop3/client.py) against a scripted loopback server: multi-line replies
dot-unstuffed and cut at CRLF "." CRLF however the bytes are chunked (byte by byte too), empty bodies,
-ERR replies, pipelined RETRs answered in order, QUIT waiting for the close."""

from __future__ import annotations

import asyncio

import pytest

from bench.pop3.client import Client, Pop3Error, retr_all

MESSAGES = [
    b"",
    b".\r\n",
    b"..x\r\nabc\r\n.\r\n.y\r\n",
    b"Subject: a\r\n\r\nhello\r\n.\r\nworld\r\n",
    b"x" * 9_000 + b"\r\n.dot\r\n\r\n.\r\n",
    b"ends without dot line\r\n",
]


def stuffed(m: bytes) -> bytes:
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in m.split(b"\r\n")[:-1]) + b".\r\n"


async def serve(chunk: int, port_box: list[int], ready: asyncio.Event) -> asyncio.Server:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"+OK ready\r\n")
        for _ in range(1000):  # bounded: a session here is a handful of commands
            line = await r.readline()
            if not line:
                break
            cmd = line.strip().split()
            if cmd[0] == b"RETR":
                n = int(cmd[1])
                data = (b"+OK %d octets\r\n" % len(MESSAGES[n - 1]) + stuffed(MESSAGES[n - 1])
                        if 1 <= n <= len(MESSAGES) else b"-ERR no such message\r\n")
            elif cmd[0] == b"UIDL":
                data = b"+OK\r\n" + b"".join(b"%d u%d\r\n" % (i + 1, i) for i in range(len(MESSAGES))) + b".\r\n"
            elif cmd[0] == b"STAT":
                data = b"+OK %d %d\r\n" % (len(MESSAGES), sum(map(len, MESSAGES)))
            elif cmd[0] == b"PASS" and cmd[1] != b"secret":
                data = b"-ERR [AUTH] no\r\n"
            elif cmd[0] == b"QUIT":
                w.write(b"+OK bye\r\n")
                await w.drain()
                w.close()
                return
            else:
                data = b"+OK\r\n"
            for k in range(0, len(data), chunk):
                w.write(data[k:k + chunk])
                await w.drain()
        w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port_box.append(srv.sockets[0].getsockname()[1])
    ready.set()
    return srv


@pytest.mark.parametrize("chunk", [1, 3, 5, 4096, 1 << 20])
@pytest.mark.parametrize("pipeline", [0, 1, 4, 100])
def test_retr_all_unstuffs_and_frames(chunk: int, pipeline: int) -> None:
    async def main() -> None:
        port: list[int] = []
        srv = await serve(chunk, port, asyncio.Event())
        async with srv:
            c = await Client.connect("127.0.0.1", port[0])
            await c.login("u", "secret")
            assert await c.stat() == (len(MESSAGES), sum(map(len, MESSAGES)))
            assert await c.uidl() == [b"u%d" % i for i in range(len(MESSAGES))]
            res = await retr_all(c, len(MESSAGES), pipeline=pipeline, check=MESSAGES, timeout=30)
            assert res["wrong"] == []
            assert res["sizes"] == [len(m) for m in MESSAGES]
            assert res["bytes"] == sum(map(len, MESSAGES))
            q = await c.quit()
            assert q is not None and q.ok

    asyncio.run(asyncio.wait_for(main(), 60))


def test_errors_are_replies_not_bodies() -> None:
    async def main() -> None:
        port: list[int] = []
        srv = await serve(7, port, asyncio.Event())
        async with srv:
            c = await Client.connect("127.0.0.1", port[0])
            await c.command("USER u")
            with pytest.raises(Pop3Error, match=r"PASS \.\.\.: -ERR \[AUTH\]"):
                await c.command("PASS wrong")
            await c.login("u", "secret")
            r = await c.command("RETR 99", multi=True, check=False)
            assert not r.ok and r.body is None
            assert await c.retr(2) == b".\r\n"  # the session goes on, framed correctly after the -ERR
            with pytest.raises(Pop3Error, match=r"RETR 7: -ERR"):
                await retr_all(c, len(MESSAGES) + 93, timeout=30)
            await c.quit()

    asyncio.run(asyncio.wait_for(main(), 60))
