"""The DNS questions the inbound checks ask (SPF, RFC 7208 §4.4, §5, §7.3), on aiodns.

`SPFResolver` is the protocol the checks use; `Resolver` implements it over `aiodns.DNSResolver`.  Every
method answers with the records of the asked type (in the order the server gave them), `[]` for NODATA
(the name exists but has no such records), or raises:

- `NXDomain`: the name does not exist (RCODE 3);
- `BadName` (an `NXDomain`): no question can carry the name — a label over 63 octets, an empty label, over
  253 characters, or an octet c-ares refuses in a question (anything but letters, digits and "-_./*");
  refused here before c-ares sees it, since c-ares would cut a name at a NUL and read "\\" as an escape;
- `DNSTempError`: no usable answer (SERVFAIL, REFUSED, timeout, a malformed reply, a network error).

RFC 7208 §4.6.4 calls NODATA and NXDOMAIN "void lookups"; the checks count them, this module does not.
A CNAME chain is followed by the server and the resolver library; the records of the wanted type are picked
from the answer.

Answers are kept for their TTL (the smallest of the answer's records, at most `MAX_TTL`), as a caching
resolver keeps them, and a question asked while the same question is on its way waits for that answer
instead of asking again: every message of a sender asks for the same SPF, DKIM key and `_dmarc` records,
and each question to the resolver costs ~70 µs of CPU here (c-ares, the datagram each way, aiodns's
futures) against ~1 µs for a kept answer.  A TTL of 0 keeps nothing (RFC 1035 §3.2.1: use it only for
the transaction in progress), though questions in flight are still shared.  Failures and negative answers
(NXDOMAIN, NODATA) are not kept: their TTL comes from the SOA record of the authority section, which c-ares
does not hand over.
"""

from __future__ import annotations

import asyncio
import re
from time import monotonic as _now
from typing import Any, Protocol

import aiodns
import pycares

from fastmail.dnsloop import LoopDNSResolver


class NXDomain(Exception):
    """The name does not exist."""


class BadName(NXDomain):
    """The name cannot be asked about."""


class DNSTempError(Exception):
    """The question got no usable answer; asking again later may work."""


class SPFResolver(Protocol):
    async def txt(self, name: str) -> list[bytes]:
        """Each TXT record's character-strings joined without separator (RFC 7208 §3.3)."""
        ...

    async def a(self, name: str) -> list[str]: ...

    async def aaaa(self, name: str) -> list[str]: ...

    async def mx(self, name: str) -> list[tuple[int, str]]:
        """(preference, exchange) pairs; the exchange lower-case without the trailing dot ("" for RFC 7505
        null MX)."""
        ...

    async def ptr(self, name: str) -> list[str]:
        """Target names without the trailing dot."""
        ...


_QTYPES = {"TXT": pycares.QUERY_TYPE_TXT, "A": pycares.QUERY_TYPE_A, "AAAA": pycares.QUERY_TYPE_AAAA,
           "MX": pycares.QUERY_TYPE_MX, "PTR": pycares.QUERY_TYPE_PTR}
_NODATA = {pycares.errno.ARES_ENODATA}
_NXDOMAIN = {pycares.errno.ARES_ENOTFOUND}
_HOSTNAME = re.compile(r"[A-Za-z0-9_/*-]{1,63}(?:\.[A-Za-z0-9_/*-]{1,63})*\.?")  # c-ares's ares_is_hostnamech()


MAX_TTL = 3600  # the longest an answer is kept, whatever its TTL (seconds)
MAX_KEPT = 4096  # answers kept at most; the oldest goes first


def check_name(name: str) -> None:
    """Raises BadName for a name no question can carry."""
    if len(name.rstrip(".")) > 253 or not _HOSTNAME.fullmatch(name):
        raise BadName(name)


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class Resolver:
    """`nameserver`: "ADDRESS[:PORT]" ("[v6]:PORT" for IPv6), or "" for the system's resolv.conf; or pass an
    `aiodns.DNSResolver` of your own as `resolver` (then `close()` leaves it open)."""

    def __init__(self, nameserver: str = "", *, timeout: float = 5.0, tries: int = 2,
                 resolver: aiodns.DNSResolver | None = None) -> None:
        self._own: LoopDNSResolver | None = None  # the resolver made here, closed by close()
        if resolver is None:
            resolver = self._own = LoopDNSResolver(
                nameservers=[nameserver] if nameserver else None, timeout=timeout, tries=tries)
        self._resolver = resolver
        self.queries = 0  # questions sent to the resolver (not those answered from the kept answers)
        self._kept: dict[tuple[str, str], tuple[float, list[Any]]] = {}  # (type, name) -> (expiry, records)
        self._asking: dict[tuple[str, str], asyncio.Future[list[Any]]] = {}

    def close(self) -> None:
        if self._own is not None:
            self._own.close_now()

    def is_kept(self, qtype: str, name: str) -> bool:
        """True when a question of `qtype` about `name` would be answered from the kept answers now."""
        kept = self._kept.get((qtype, name.lower()))
        return kept is not None and kept[0] > _now()

    def kept_entry(self, qtype: str, name: str) -> tuple[float, list[Any]] | None:
        """The kept answer to a question, (expiry, records), while it is kept; None otherwise.  A new answer
        is a new entry: a caller holding an entry can tell by identity that the answer is still the same."""
        kept = self._kept.get((qtype, name.lower()))
        return kept if kept is not None and kept[0] > _now() else None

    async def _query(self, name: str, qtype: str) -> list[Any]:
        key = (qtype, name.lower())
        kept = self._kept.get(key)
        if kept is not None:
            if kept[0] > _now():
                return kept[1]
            del self._kept[key]
        asking = self._asking.get(key)
        if asking is None:
            check_name(name)
            asking = self._ask_now(name, qtype, key)
        # shielded: a caller that gives up (its own deadline) does not cancel the answer others wait for
        return await asyncio.shield(asking)

    def _ask_now(self, name: str, qtype: str, key: tuple[str, str]) -> asyncio.Future[list[Any]]:
        asking = self._asking[key] = asyncio.ensure_future(self._ask(name, qtype, key))
        asking.add_done_callback(_retrieved)  # a failure nobody waits for any more is not logged as lost
        return asking

    def start(self, qtype: str, name: str) -> asyncio.Future[list[Any]] | None:
        """The question on its way, asked now unless it already is: its future answer (the records as the
        method of `qtype` gives them; NXDomain, DNSTempError).  None when the answer is kept, or no question
        can carry the name (the lookup itself will say so).  For Lookups."""
        key = (qtype, name.lower())
        kept = self._kept.get(key)
        if kept is not None and kept[0] > _now():
            return None
        asking = self._asking.get(key)
        if asking is None:
            try:
                check_name(name)
            except BadName:
                return None
            asking = self._ask_now(name, qtype, key)
        return asking

    async def _ask(self, name: str, qtype: str, key: tuple[str, str]) -> list[Any]:
        try:
            records = await self._send(name, qtype)
        finally:
            del self._asking[key]
        return records

    async def _send(self, name: str, qtype: str) -> list[Any]:
        self.queries += 1
        try:
            result = await self._resolver.query_dns(name, qtype)
        except aiodns.error.DNSError as e:
            code = e.args[0] if e.args else None
            if code in _NODATA:
                return []
            if code in _NXDOMAIN:
                raise NXDomain(name) from None
            if code == pycares.errno.ARES_EBADNAME:
                raise BadName(name) from None
            reason = e.args[1] if len(e.args) > 1 else str(e)
            raise DNSTempError(f"{qtype} {name}: {reason}") from None
        wanted = _QTYPES[qtype]
        found = [r for r in result.answer if r.type == wanted]
        records = _CONVERT[qtype]([r.data for r in found])  # kept as the methods give them (not to be changed)
        # the smallest TTL of the whole answer: a CNAME on the way counts too; NODATA is not kept
        ttl = min((r.ttl for r in result.answer), default=0) if found else 0
        if ttl > 0:
            if len(self._kept) >= MAX_KEPT:
                del self._kept[next(iter(self._kept))]
            self._kept[(qtype, name.lower())] = (_now() + min(ttl, MAX_TTL), records)
        return records

    async def txt(self, name: str) -> list[bytes]:
        return await self._query(name, "TXT")

    async def a(self, name: str) -> list[str]:
        return await self._query(name, "A")

    async def aaaa(self, name: str) -> list[str]:
        return await self._query(name, "AAAA")

    async def mx(self, name: str) -> list[tuple[int, str]]:
        return await self._query(name, "MX")

    async def ptr(self, name: str) -> list[str]:
        return await self._query(name, "PTR")


# pycares's record data as the methods give it (SPFResolver)
_CONVERT: dict[str, Any] = {
    "TXT": lambda ds: [d.data if isinstance(d.data, bytes) else str(d.data).encode() for d in ds],
    "A": lambda ds: [d.addr for d in ds],
    "AAAA": lambda ds: [d.addr for d in ds],
    "MX": lambda ds: [(d.priority, d.exchange.rstrip(".").lower()) for d in ds],
    "PTR": lambda ds: [d.dname.rstrip(".") for d in ds],
}


class Lookups:
    """One message's view of a resolver (`Resolver`, or any with its methods and `start`): questions
    started early (`start`) go out at once, side by side, and the message's own lookups read their answers
    later — even with a TTL of 0, which keeps nothing for the next message (RFC 1035 §3.2.1: such an answer
    is for the transaction in progress).  What the inbound checks ask of SPF's record and DMARC's while
    DKIM waits for its key, without a task of their own.  Anything not started is asked as usual."""

    __slots__ = ("_resolver", "_started")

    def __init__(self, resolver: Any) -> None:
        self._resolver = resolver
        self._started: dict[tuple[str, str], asyncio.Future[list[Any]]] = {}

    def start(self, qtype: str, name: str) -> None:
        fut = self._resolver.start(qtype, name)
        if fut is not None:
            self._started[(qtype, name.lower().rstrip("."))] = fut

    def is_kept(self, qtype: str, name: str) -> bool:
        return bool(self._resolver.is_kept(qtype, name))

    def kept_entry(self, qtype: str, name: str) -> Any:
        return self._resolver.kept_entry(qtype, name)

    async def _answer(self, qtype: str, name: str, method: Any) -> Any:
        fut = self._started.get((qtype, name.lower().rstrip(".")))
        if fut is None:
            return await method(name)
        return await asyncio.shield(fut)  # shared: giving up here does not cancel it for others

    async def txt(self, name: str) -> list[bytes]:
        return await self._answer("TXT", name, self._resolver.txt)  # type: ignore[no-any-return]

    async def a(self, name: str) -> list[str]:
        return await self._answer("A", name, self._resolver.a)  # type: ignore[no-any-return]

    async def aaaa(self, name: str) -> list[str]:
        return await self._answer("AAAA", name, self._resolver.aaaa)  # type: ignore[no-any-return]

    async def mx(self, name: str) -> list[tuple[int, str]]:
        return await self._answer("MX", name, self._resolver.mx)  # type: ignore[no-any-return]

    async def ptr(self, name: str) -> list[str]:
        return await self._answer("PTR", name, self._resolver.ptr)  # type: ignore[no-any-return]
