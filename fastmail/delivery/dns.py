"""Routing: where mail for a domain goes (RFC 5321 §5.1, RFC 7505 null MX), with aiodns.

`Resolver.route(domain)` gives the mail exchangers in the order to try: MX records by preference, in random
order among equal preferences; with no MX record (NODATA) the domain itself is the one implicit MX (§5.1).
`Resolver.addresses(host)` gives a host's addresses, IPv6 first, then IPv4.

Failures are typed: `DNSPermanent` (NXDOMAIN, null MX: bounce) and `DNSTemporary` (SERVFAIL, timeout,
refused, a network error: retry later, never bounce).  Positive answers are cached for their TTL (the
smallest TTL of the answer's records); a CNAME chain is followed by the resolver library, and the records
of the wanted type are picked from the answer.  Questions asked again while the first is on its way wait
for its answer instead of going out again (a hundred sessions opening to one MX host ask for its address
once).  Negative answers are not cached: c-ares gives no SOA with them (RFC 2308 §5).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from functools import partial
from typing import Any

import aiodns
import pycares

from fastmail.dnsloop import LoopDNSResolver


class DNSError(Exception):
    def __init__(self, enhanced: str, text: str) -> None:
        super().__init__(f"{enhanced} {text}")
        self.enhanced = enhanced
        self.text = text


class DNSTemporary(DNSError):
    """Try again later (SERVFAIL, timeout, no answer)."""


class DNSPermanent(DNSError):
    """The domain cannot receive mail (NXDOMAIN, null MX)."""


class _NoData(Exception):
    pass


class _NXDomain(Exception):
    pass


_TYPES = {"MX": pycares.QUERY_TYPE_MX, "A": pycares.QUERY_TYPE_A, "AAAA": pycares.QUERY_TYPE_AAAA,
          "TXT": pycares.QUERY_TYPE_TXT}
MAX_CACHE = 10_000


def order(mx: tuple[tuple[int, str], ...]) -> list[str]:
    """The hosts of sorted (preference, host) pairs in the order to try them: by preference, in random
    order among equal preferences (RFC 5321 §5.1)."""
    if len(mx) == 1:
        return [mx[0][1]]
    shuffled = list(mx)
    random.shuffle(shuffled)
    shuffled.sort(key=lambda m: m[0])  # stable: the random order stays among equals
    return [h for _, h in shuffled]


class Resolver:
    """`nameserver`: "ADDRESS[:PORT]" ("[v6]:PORT" for IPv6), or "" for the system's resolv.conf."""

    def __init__(self, nameserver: str = "", timeout: float = 5.0, tries: int = 2) -> None:
        kwargs: dict[str, Any] = {"timeout": timeout, "tries": tries}
        self._resolver = LoopDNSResolver(nameservers=[nameserver] if nameserver else None, **kwargs)
        self._cache: dict[tuple[str, str], tuple[float, list[Any]]] = {}
        self._asking: dict[tuple[str, str], asyncio.Future[list[Any]]] = {}
        self.queries = 0

    def close(self) -> None:
        self._resolver.close_now()

    async def _query(self, name: str, qtype: str) -> list[Any]:
        key = (name, qtype)
        hit = self._cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        asking = self._asking.get(key)
        if asking is None:
            asking = self._asking[key] = asyncio.ensure_future(self._ask(key))
            asking.add_done_callback(partial(self._answered, key))
        # shielded: a waiter that is cancelled leaves the question to the others waiting for it
        return await asyncio.shield(asking)

    def _answered(self, key: tuple[str, str], task: asyncio.Future[list[Any]]) -> None:
        if self._asking.get(key) is task:
            del self._asking[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone

    async def _ask(self, key: tuple[str, str]) -> list[Any]:
        name, qtype = key
        now = time.monotonic()
        self.queries += 1
        try:
            result = await self._resolver.query_dns(name, qtype)
        except aiodns.error.DNSError as e:
            code = e.args[0] if e.args else None
            if code == pycares.errno.ARES_ENODATA:
                raise _NoData() from None
            if code == pycares.errno.ARES_ENOTFOUND:
                raise _NXDomain() from None
            reason = e.args[1] if len(e.args) > 1 else str(e)
            raise DNSTemporary("4.4.3", f"DNS {qtype} lookup for {name} failed: {reason}") from None
        wanted = _TYPES[qtype]
        records = [r for r in result.answer if r.type == wanted]
        if not records:
            raise _NoData()
        ttl = min(r.ttl for r in result.answer)
        if ttl > 0:
            if len(self._cache) >= MAX_CACHE:
                self._cache.clear()
            self._cache[key] = (now + ttl, records)
        return records

    async def mx(self, domain: str) -> tuple[tuple[int, str], ...]:
        """The mail exchangers of `domain` as (preference, host), sorted, each host once (at its best
        preference).  Raises DNSPermanent or DNSTemporary."""
        if domain.startswith("["):  # an address literal (RFC 5321 §4.1.3): no DNS at all
            return ((0, domain),)
        try:
            records = await self._query(domain, "MX")
        except _NoData:
            return ((0, domain),)  # RFC 5321 §5.1: no MX: the domain itself, as an implicit MX of preference 0
        except _NXDomain:
            raise DNSPermanent("5.1.2", f"domain {domain} does not exist") from None
        mxs = sorted((r.data.priority, r.data.exchange.rstrip(".").lower()) for r in records)
        real: list[tuple[int, str]] = []
        seen: set[str] = set()
        for p, h in mxs:
            if h and h not in seen:
                seen.add(h)
                real.append((p, h))
        if not real:
            # RFC 7505 §3: a single MX "." of preference 0: the domain accepts no mail.
            raise DNSPermanent("5.1.10", f"domain {domain} accepts no mail (null MX)")
        return tuple(real)

    async def route(self, domain: str) -> list[str]:
        """The hosts to try for `domain`, best first.  Raises DNSPermanent or DNSTemporary."""
        return order(await self.mx(domain))

    async def txt(self, name: str) -> list[bytes]:
        """The TXT records of `name` ([] when none or no such name).  Raises DNSTemporary."""
        try:
            records = await self._query(name, "TXT")
        except (_NoData, _NXDomain):
            return []
        return [r.data.data if isinstance(r.data.data, bytes) else str(r.data.data).encode() for r in records]

    async def addresses(self, host: str) -> list[str]:
        """IPv6 then IPv4 addresses of `host` ([] when it has none).  Raises DNSTemporary when neither
        lookup answered."""
        if host.startswith("["):
            inner = host[1:-1]
            if inner.lower().startswith("ipv6:"):
                inner = inner[5:]
            return [str(ipaddress.ip_address(inner))]
        out: list[str] = []
        errors: list[DNSTemporary] = []
        answers = await asyncio.gather(self._query(host, "AAAA"), self._query(host, "A"), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, DNSTemporary):
                errors.append(answer)
            elif isinstance(answer, BaseException):
                if not isinstance(answer, (_NoData, _NXDomain)):
                    raise answer
            else:
                out += [r.data.addr for r in answer]
        if not out and errors:
            raise errors[0]
        return out
