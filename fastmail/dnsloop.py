"""aiodns with c-ares driven by the event loop: the one resolver class both the delivery process
(fastmail.delivery.dns) and the checks of incoming mail (fastmail.hygiene.dnsq) build on."""

from __future__ import annotations

import weakref
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
    interpreter's switch interval (5 ms), so 100 MX questions took 0.1-0.2 s through it, 6 ms without."""

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
