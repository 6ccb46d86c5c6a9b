"""A real DNS server on 127.0.0.1 for the delivery tests (dnslib, UDP and TCP, in a thread of the test).

`zone` maps a lower-case name to its records: ("MX", (preference, "host.")), ("A", "127.0.0.2"),
("AAAA", "::1"), ("CNAME", "target."), ("TXT", "v=STSv1; id=1"), ("PTR", "host."); a TXT value may also be a
list of strings (bytes or str: one record of several character-strings), and ("SPF", value) is the same as a
TXT record but of the obsolete type SPF (99).  A name listed in `servfail` answers SERVFAIL, a name absent from
the zone NXDOMAIN, a present name without records of the asked type NOERROR with no answer (NODATA); a name
listed in `timeout` answers only the types it has records of and leaves every other question unanswered (the
client times out).  Every question asked is appended to `asked`.  The zone may be changed while the server runs.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RCODE, RR, TXT, A
from dnslib.dns import DNSError
from dnslib.server import BaseResolver, DNSLogger, DNSServer

_RDATA = {"MX": lambda v: MX(v[1], v[0]), "A": A, "AAAA": AAAA, "CNAME": CNAME, "TXT": TXT, "PTR": PTR, "SPF": TXT}


class _Resolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, owner: LocalDNS) -> None:
        self.owner = owner

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        # the labels as sent (str() of a DNSLabel would escape spaces and other unprintable bytes)
        qname = ".".join(label.decode("latin-1") for label in request.q.qname.label).lower()
        qtype = QTYPE[request.q.qtype]
        with self.owner.lock:
            self.owner.asked.append((qname, qtype))
            if qname in self.owner.servfail:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            if qname in self.owner.timeout and not any(t == qtype for t, _ in self.owner.zone.get(qname, ())):
                raise DNSError(f"no answer for {qname}/{qtype}")  # dnslib's handler then sends nothing
            name = qname
            for _ in range(8):  # follow CNAMEs inside the zone, like a recursive server would
                records = self.owner.zone.get(name)
                if records is None:
                    if name == qname:
                        reply.header.rcode = RCODE.NXDOMAIN
                    return reply
                cname = [v for t, v in records if t == "CNAME"]
                if cname and qtype != "CNAME":
                    reply.add_answer(RR(name + ".", QTYPE.CNAME, rdata=CNAME(cname[0]), ttl=self.owner.ttl))
                    name = cname[0].lower().rstrip(".")
                    continue
                for t, v in records:
                    if t == qtype:
                        reply.add_answer(RR(name + ".", getattr(QTYPE, t), rdata=_RDATA[t](v), ttl=self.owner.ttl))
                return reply
        return reply


class LocalDNS:
    def __init__(self, ttl: int = 0) -> None:
        self.zone: dict[str, list[tuple[str, Any]]] = {}
        self.servfail: set[str] = set()
        self.timeout: set[str] = set()
        self.asked: list[tuple[str, str]] = []
        self.ttl = ttl
        self.lock = threading.Lock()
        self.port = _free_udp_tcp_port()
        logger = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
        self.servers = [DNSServer(_Resolver(self), port=self.port, address="127.0.0.1", logger=logger, tcp=tcp)
                        for tcp in (False, True)]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, name: str, *records: tuple[str, Any]) -> None:
        with self.lock:
            self.zone[name.lower()] = list(records)

    def start(self) -> LocalDNS:
        for s in self.servers:
            s.start_thread()
        return self

    def stop(self) -> None:
        for s in self.servers:
            s.stop()
            s.server.server_close()


def _free_udp_tcp_port() -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def run_with_resolver(dns: LocalDNS, fn: Callable[[Any], Awaitable[Any]]) -> Any:
    """asyncio.run(fn(resolver)) with a fastmail.delivery.dns.Resolver asking `dns` (2 s, one try)."""
    from fastmail.delivery.dns import Resolver

    async def main() -> Any:
        r = Resolver(dns.address, timeout=2.0, tries=1)
        try:
            return await fn(r)
        finally:
            r.close()

    return asyncio.run(main())
