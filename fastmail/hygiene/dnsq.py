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
import weakref
from typing import Any, Protocol

import aiodns
import pycares


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


class LoopDNSResolver(aiodns.DNSResolver):
    """aiodns's resolver with c-ares driven by the event loop, as aiodns 3 always did: c-ares's sockets are
    watched by the loop (aiodns's sock_state_cb path) rather than by pycares 5's event thread.

    With the event thread (aiodns 4's default), every answer is handed to the loop with
    call_soon_threadsafe — a wake-up of the loop through its self-pipe and a trip of the GIL between two
    threads for each of the 7 questions of a message's checks; driven by the loop, c-ares reads the answer
    in the loop's own iteration.  Measured on the checks' questions against a local server: ~700 µs of CPU
    per message with the thread, ~410 µs without (issue #7, bench/README.md).  What the thread is for —
    noticing that /etc/resolv.conf changed — does not concern a resolver given its nameserver.

    aiodns 4 has no switch for it: this overrides its `_make_channel`, which builds the same channel aiodns
    itself falls back to when the event thread cannot start.  Where aiodns has no such method (aiodns 3),
    the override is never called and nothing changes."""

    def _make_channel(self, **kwargs: Any) -> tuple[bool, pycares.Channel]:
        state_cb = getattr(self, "_sock_state_cb", None)
        if state_cb is None:  # not the aiodns this was written for: its own way
            return super()._make_channel(**kwargs)  # type: ignore[misc, no-any-return]
        ref = weakref.ref(self)

        def sock_state_cb(fd: int, readable: bool, writable: bool) -> None:
            this = ref()  # a weak reference, as aiodns's own: no cycle through the channel
            if this is not None:
                this._sock_state_cb(fd, readable, writable)

        return False, pycares.Channel(sock_state_cb=sock_state_cb, timeout=self._timeout, **kwargs)


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
