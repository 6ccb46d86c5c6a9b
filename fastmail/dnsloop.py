"""aiodns with c-ares driven by the event loop: the one resolver class both the delivery process
(fastmail.delivery.dns) and the checks of incoming mail (fastmail.hygiene.dnsq) build on."""

from __future__ import annotations

import ipaddress
import weakref
from collections.abc import Sequence
from typing import Any

import aiodns
import pycares


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
    the override is never called and nothing changes.

    For delivery the same matters in bursts: in a busy process the event thread gets the GIL only at the
    interpreter's switch interval (5 ms), so 100 MX questions took 0.1-0.2 s through it, 6 ms without.

    With nameservers that are all on loopback (a local caching resolver, as a mail server should have), the
    UDP socket stays open between questions (LOOPBACK_FLAGS).  c-ares otherwise closes it whenever no
    question is waiting and opens a new one for the next: socket, connect, fcntl and the loop's watch of it
    each time, ~110 µs of CPU of a ~185 µs question here.  The new socket's random source port is what
    makes a forged answer hard to slip in from the network (RFC 5452 §9.2); no packet from outside the host
    arrives on loopback, so there it guards nothing.  Any other nameserver keeps c-ares's default."""

    def __init__(self, nameservers: Sequence[str] | None = None, **kwargs: Any) -> None:
        if "flags" not in kwargs and all_loopback(nameservers):
            kwargs["flags"] = LOOPBACK_FLAGS
        super().__init__(nameservers, **kwargs)

    def close_now(self) -> None:
        """Cancel what is asked and let go of the channel at once: its sockets (one kept open on loopback
        stays otherwise for the life of the process), their watches and its timer.  aiodns's own close() is
        a coroutine doing the same; where it has no `_cleanup` (aiodns 3), cancel() alone."""
        self.cancel()
        cleanup = getattr(self, "_cleanup", None)
        if cleanup is not None:
            cleanup()

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


# c-ares's default flags are EDNS alone (ARES_FLAG_EDNS, set only when no flags are given): keep it.
LOOPBACK_FLAGS = pycares.ARES_FLAG_STAYOPEN | pycares.ARES_FLAG_EDNS


def all_loopback(nameservers: Sequence[str] | None) -> bool:
    """Every one of `nameservers` ("ADDRESS", "ADDRESS:PORT", "[IPv6]:PORT") is a loopback address; False
    for none given (the system's resolv.conf) and for anything that is not an address."""
    if not nameservers:
        return False
    for ns in nameservers:
        host = ns
        if ns.startswith("["):
            host = ns[1:ns.find("]")] if "]" in ns else ""
        elif ns.count(":") == 1:
            host = ns.partition(":")[0]
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:
            return False
    return True
