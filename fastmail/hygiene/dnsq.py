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
from the answer.  Nothing is cached here: one SPF check asks a few questions, and the resolver the server
points at caches.
"""

from __future__ import annotations

import re
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


def check_name(name: str) -> None:
    """Raises BadName for a name no question can carry."""
    if len(name.rstrip(".")) > 253 or not _HOSTNAME.fullmatch(name):
        raise BadName(name)


class Resolver:
    """`nameserver`: "ADDRESS[:PORT]" ("[v6]:PORT" for IPv6), or "" for the system's resolv.conf; or pass an
    `aiodns.DNSResolver` of your own as `resolver` (then `close()` leaves it open)."""

    def __init__(self, nameserver: str = "", *, timeout: float = 5.0, tries: int = 2,
                 resolver: aiodns.DNSResolver | None = None) -> None:
        self._own = resolver is None
        self._resolver = resolver if resolver is not None else LoopDNSResolver(
            nameservers=[nameserver] if nameserver else None, timeout=timeout, tries=tries)
        self.queries = 0

    def close(self) -> None:
        if self._own:
            self._resolver.cancel()

    async def _query(self, name: str, qtype: str) -> list[Any]:
        check_name(name)
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
        return [r.data for r in result.answer if r.type == wanted]

    async def txt(self, name: str) -> list[bytes]:
        return [d.data if isinstance(d.data, bytes) else str(d.data).encode() for d in await self._query(name, "TXT")]

    async def a(self, name: str) -> list[str]:
        return [d.addr for d in await self._query(name, "A")]

    async def aaaa(self, name: str) -> list[str]:
        return [d.addr for d in await self._query(name, "AAAA")]

    async def mx(self, name: str) -> list[tuple[int, str]]:
        return [(d.priority, d.exchange.rstrip(".").lower()) for d in await self._query(name, "MX")]

    async def ptr(self, name: str) -> list[str]:
        return [d.dname.rstrip(".") for d in await self._query(name, "PTR")]
