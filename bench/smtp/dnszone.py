"""The benchmark's DNS server in a process of its own: `python -m bench.smtp.dnszone ZONE.json TTL STATS.json`.

The zone is answered by the test suite's LocalDNS (tests/integration/dnsserver.py: its records, NXDOMAIN,
NODATA and CNAME rules) holding ZONE.json (`{name: [[type, value], ...]}`, LocalDNS.set's records) with TTL
seconds on every answer; a process of its own so that its CPU is its own (bench/smtp/services.py samples it
apart from the server's and the driver's).

UDP goes through a front of its own: LocalDNS's dnslib server starts a thread per query and parses and
builds every message, ~300 µs of CPU per query here — with the 7 or so questions of one message's checks,
more CPU than fastmail spends on the whole message, where a local caching resolver (unbound) answers in
microseconds.  The front (an asyncio datagram protocol, on uvloop when installed) asks LocalDNS's resolver
once per distinct question (the same bytes: name as written, type, class, header flags) and keeps the wire
reply; repeats get that reply with their own ID (the zone does not change during a run).  TCP is
LocalDNS's own server on the same port.  Every question still travels to this process and back: nothing
is cached on the asking side unless TTL > 0 (c-ares caches answers for their TTL).

It prints its "127.0.0.1:PORT" on stdout once it answers; on SIGUSR1 it writes the questions asked since
it started, by type, to STATS.json (`{"seq": n, "asked": {"TXT": ...}}`, n the number of SIGUSR1 seen,
written to a temporary name and renamed); SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from dnslib import QTYPE, DNSRecord
from dnslib.dns import DNSError

from tests.integration.dnsserver import LocalDNS


def question_key(data: bytes) -> bytes | None:
    """The header flags and the question of a DNS query (RFC 1035 §4.1.1-2), the part its reply depends on;
    None when it is not one plain question."""
    if len(data) < 17 or data[4:6] != b"\0\1":  # QDCOUNT 1
        return None
    i = 12
    try:
        while data[i]:
            if data[i] & 0xC0:  # no compression in a question
                return None
            i += data[i] + 1
    except IndexError:
        return None
    end = i + 5  # the root label, QTYPE, QCLASS
    return data[2:4] + data[12:end] if end <= len(data) else None


class FrontUDP(asyncio.DatagramProtocol):
    """UDP answers from a cache of LocalDNS's replies; counts questions by type."""

    def __init__(self, resolver: Any) -> None:
        self.resolver = resolver
        self.cache: dict[bytes, bytes] = {}
        self.asked: collections.Counter[int] = collections.Counter()  # by QTYPE
        self.resolved: collections.Counter[str] = collections.Counter()  # went to LocalDNS's resolver
        self.transport: Any = None  # asyncio's DatagramTransport, or uvloop's (not a subclass of it)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        key = question_key(data)
        reply = self.cache.get(key) if key is not None else None
        if reply is None:
            reply = self._resolve(data)
            if reply is None:
                return  # LocalDNS leaves it unanswered (a `timeout` name), or it was not DNS
            if key is not None:
                self.cache[key] = reply
        if key is not None:
            self.asked[int.from_bytes(key[-4:-2], "big")] += 1
        self.transport.sendto(data[:2] + reply[2:], addr)

    def _resolve(self, data: bytes) -> bytes | None:
        try:
            request = DNSRecord.parse(data)
            self.resolved[QTYPE[request.q.qtype]] += 1
            packed: bytes = self.resolver.resolve(request, None).pack()
            return packed
        except (DNSError, ValueError, IndexError, KeyError):
            return None


def main(argv: list[str]) -> int:
    zone_file, ttl, stats = Path(argv[0]), int(argv[1]), Path(argv[2])
    dns = LocalDNS(ttl=ttl)
    for name, records in json.loads(zone_file.read_text()).items():
        dns.set(name, *((kind, value) for kind, value in records))
    udp, tcp = dns.servers  # LocalDNS makes them in this order, bound to its port
    udp.server.server_close()  # the front takes the UDP port
    tcp.start_thread()
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # bursts of 50 sessions' questions
    sock.bind(("127.0.0.1", dns.port))
    front = FrontUDP(udp.server.resolver)
    transport, _ = loop.run_until_complete(loop.create_datagram_endpoint(lambda: front, sock=sock))
    done = asyncio.Event()
    seq = 0

    def write_stats() -> None:
        nonlocal seq
        seq += 1
        with dns.lock:  # LocalDNS lists every question its resolver saw: those of TCP, and the front's misses
            over_tcp = collections.Counter(qtype for _, qtype in dns.asked)
        over_tcp.subtract(front.resolved)
        asked = collections.Counter({QTYPE[k]: v for k, v in front.asked.items()})
        asked.update({k: v for k, v in over_tcp.items() if v > 0})
        tmp = stats.with_suffix(".tmp")
        tmp.write_text(json.dumps({"seq": seq, "asked": dict(asked), "distinct_questions": len(front.cache)}))
        os.replace(tmp, stats)

    loop.add_signal_handler(signal.SIGUSR1, write_stats)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    print(dns.address, flush=True)
    loop.run_until_complete(done.wait())
    transport.close()
    tcp.stop()
    tcp.server.server_close()
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
