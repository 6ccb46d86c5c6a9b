"""fastmail.dnsloop: with a nameserver on loopback, c-ares keeps its UDP socket between questions (one source
port for all of them) and still asks with EDNS; the rule that decides it reads the nameserver forms."""

from __future__ import annotations

import asyncio
import socket
import threading

import aiodns
import pycares
import pytest

from fastmail.dnsloop import LoopDNSResolver, all_loopback


class Recorder:
    """A UDP "server" answering every question NXDOMAIN; records each question's source port and ARCOUNT."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.seen: list[tuple[int, int]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            arcount = int.from_bytes(data[10:12], "big")
            self.seen.append((peer[1], arcount))
            end = 12
            while data[end]:
                end += data[end] + 1
            question = data[12:end + 5]
            # ID, QR RD RA + NXDOMAIN, one question, no records
            reply = data[:2] + b"\x81\x83" + b"\x00\x01\x00\x00\x00\x00\x00\x00" + question
            self.sock.sendto(reply, peer)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def recorder():
    r = Recorder()
    yield r
    r.stop()


def ask(nameserver: str, n: int, **kwargs) -> None:
    async def main() -> None:
        r = LoopDNSResolver(nameservers=[nameserver], timeout=2.0, tries=1, **kwargs)
        try:
            for i in range(n):
                with pytest.raises(aiodns.error.DNSError):  # NXDOMAIN
                    await r.query_dns(f"q{i}.test", "TXT")
                await asyncio.sleep(0.01)  # nothing in flight: c-ares's default closes its socket here
        finally:
            r.cancel()

    asyncio.run(main())


def test_a_loopback_nameserver_keeps_one_socket_with_edns(recorder) -> None:
    ask(recorder.address, 5)
    assert len(recorder.seen) == 5
    assert len({port for port, _ in recorder.seen}) == 1
    assert all(arcount == 1 for _, arcount in recorder.seen)  # the OPT record: EDNS, as c-ares's default


def test_c_ares_default_opens_a_socket_per_idle_question(recorder) -> None:
    """What the flags change: with c-ares's own flags each question after an idle moment gets a new socket
    (and port) — also what every nameserver off loopback keeps."""
    ask(recorder.address, 5, flags=pycares.ARES_FLAG_EDNS)
    assert len({port for port, _ in recorder.seen}) > 1


@pytest.mark.parametrize("servers, expected", [
    (["127.0.0.1"], True), (["127.0.0.53:5353"], True), (["::1"], True), (["[::1]:53"], True),
    (["127.0.0.1", "::1"], True), (["127.0.0.1", "192.0.2.1"], False), (["192.0.2.1:53"], False),
    (["[2001:db8::1]:53"], False), (["2001:db8::1"], False), (["localhost"], False), ([], False), (None, False),
    (["[::1"], False),
])
def test_all_loopback(servers, expected) -> None:
    assert all_loopback(servers) is expected


def _udp_sockets() -> int:
    import os

    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n


def test_close_now_lets_go_of_the_kept_socket(recorder) -> None:
    async def main() -> tuple[int, int, int]:
        before = _udp_sockets()
        r = LoopDNSResolver(nameservers=[recorder.address], timeout=2.0, tries=1)
        with pytest.raises(aiodns.error.DNSError):
            await r.query_dns("q.test", "TXT")
        await asyncio.sleep(0.01)
        held = _udp_sockets()
        r.close_now()
        await asyncio.sleep(0.01)
        return before, held, _udp_sockets()

    before, held, after = asyncio.run(main())
    assert held == before + 1  # STAYOPEN: the socket outlives its question
    assert after == before
