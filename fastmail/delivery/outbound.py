"""The asyncio side of the outbound SMTP client: one protocol class driving fastmail.proto.smtp_client.

`open_session(...)` connects to one address, reads the greeting, says EHLO, upgrades with STARTTLS when
the server offers it (opportunistic, or required by policy), and returns a `Session` ready for messages;
`Session.deliver(message)` runs one transaction and returns one reply per recipient; the same session takes
further messages to the same destination (connection reuse) until `close()`.  Every wait is bounded by
the timeout RFC 5321 §4.5.3.2 gives for the reply expected (scaled by `timeout_scale`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable

from fastmail.proto import smtp_client as C


class SessionError(Exception):
    """The session could not be opened or broke: `reply` says why (a temporary local one when no server
    reply is known)."""

    def __init__(self, reply: C.Reply, tls_failed: bool = False) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.tls_failed = tls_failed


def client_tls_context() -> ssl.SSLContext:
    """Opportunistic TLS (RFC 7435): encrypt, do not authenticate (no certificate or name check), like
    Postfix's smtp_tls_security_level = may / encrypt."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


_TIMEOUT = object()


class _Protocol(asyncio.Protocol):
    """Drives the client.  While the session opens, events queue for `next_event()`; once it is ready
    (`Session`), each message sent has a future, resolved by its Done in the order sent, and `feeder` is
    asked for the next message whenever the client can pipeline one after the data just sent."""

    def __init__(self, client: C.Client, scale: float = 1.0) -> None:
        self.client = client
        self.scale = scale  # delivery.timeout_scale
        self.loop = asyncio.get_running_loop()
        self.since = 0.0  # when the wait began or the server last sent something
        self.timer: asyncio.TimerHandle | None = None
        self.limit = 0.0  # the current wait's timeout (0: the one the client's state calls for)
        self.transport: asyncio.Transport | None = None
        self.events: deque[C.Event] = deque()
        self.waiter: asyncio.Future[object] | None = None
        self.closed = False
        # once ready
        self.ready = False
        self.pending: deque[tuple[asyncio.Future[list[C.Reply]], int]] = deque()  # per transaction sent: its
        # future and number of recipients
        self.feeder: Callable[[], object] | None = None
        self.receiving = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.since = self.loop.time()
        self.receiving = True
        try:
            self._push(self.client.receive(data))
            if self.feeder is not None and self.client.can_send_next:
                self.feeder()  # the next message's commands go out with this data (RFC 2920 §3.1)
        finally:
            self.receiving = False
        self.flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._push(self.client.connection_lost())
        lost = C.local_reply(421, "4.4.2", "connection lost")
        while self.pending:  # (the client's Done events resolved them all already)
            fut, n = self.pending.popleft()
            if not fut.done():
                fut.set_result([lost] * n)

    def _push(self, events: list[C.Event]) -> None:
        if self.ready:
            for event in events:
                if isinstance(event, C.Done) and self.pending:
                    fut, _ = self.pending.popleft()
                    if not fut.done():
                        fut.set_result(event.results)
            if not self.pending and self.timer is not None:
                self.timer.cancel()
                self.timer = None
            return
        if events:
            self.events.extend(events)
        if self.waiter is not None and not self.waiter.done() and (self.events or self.closed):
            self.waiter.set_result(None)

    def flush(self) -> None:
        out = self.client.take_output()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def send(self, msg: C.Message) -> asyncio.Future[list[C.Reply]]:
        """Start `msg`'s transaction (the session is ready, or can pipeline it); its future gets a reply
        per recipient."""
        fut: asyncio.Future[list[C.Reply]] = self.loop.create_future()
        if self.closed:
            fut.set_result([C.local_reply(421, "4.4.2", "connection lost")] * len(msg.rcpts))
            return fut
        done = self.client.send(msg)
        if done:  # decided before any command (SMTPUTF8, SIZE, 8BITMIME)
            fut.set_result(done[0].results)  # type: ignore[union-attr]
            return fut
        self.pending.append((fut, len(msg.rcpts)))
        if self.timer is None:
            self.since = self.loop.time()
            self.timer = self.loop.call_at(self.since + self._timeout(), self._expire, None)
        if not self.receiving:
            self.flush()
        return fut

    async def next_event(self, timeout: float = 0.0) -> C.Event:
        """The next event, or Failed once the server has been silent for `timeout` seconds (0: for the
        timeout of the reply the client now expects, RFC 5321 §4.5.3.2, scaled)."""
        events = self.events
        while not events:
            if self.closed:
                return C.Failed(C.local_reply(421, "4.4.2", "connection lost"))
            waiter = self.waiter = self.loop.create_future()
            self.since = self.loop.time()
            self.limit = timeout
            self.timer = self.loop.call_at(self.since + self._timeout(), self._expire, waiter)
            try:
                await waiter
            finally:
                if self.timer is not None:
                    self.timer.cancel()
                    self.timer = None
                self.waiter = None
            if waiter.result() is _TIMEOUT:
                waited = self._timeout()
                self._push(self.client.connection_lost())
                self.abort()
                return C.Failed(C.local_reply(421, "4.4.2", f"timeout after {waited:g} s waiting for the server"))
        return events.popleft()

    def _timeout(self) -> float:
        return self.limit or self.client.timeout * self.scale

    def _expire(self, waiter: asyncio.Future[object] | None) -> None:
        """The timer of a wait (`waiter`, or the pending transactions when None): fires at the deadline as
        it was when armed; replies since then (each one resetting the clock, for the next reply expected)
        push it on.  One timer per wait, re-armed only when it fires: cheaper than a timer per reply."""
        if waiter is not None and waiter.done() or waiter is None and not self.pending:
            self.timer = None
            return
        deadline = self.since + self._timeout()
        if deadline > self.loop.time():
            self.timer = self.loop.call_at(deadline, self._expire, waiter)
            return
        self.timer = None
        if waiter is not None:
            waiter.set_result(_TIMEOUT)
            return
        reply = C.local_reply(421, "4.4.2", f"timeout after {self._timeout():g} s waiting for the server")
        self._push(self.client.abort(reply))
        self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Session:
    def __init__(self, proto: _Protocol, host: str, ip: str, timeout_scale: float) -> None:
        self.proto = proto
        self.host = host
        self.ip = ip
        self.scale = timeout_scale
        self.tls_version = ""
        self.sts = ""  # the MTA-STS mode the session was opened under ("" when none)
        self.extensions: dict[str, str] = {}
        self.messages = 0

    def start(self) -> None:
        """The session is ready: from now on messages go through send()."""
        self.proto.events.clear()
        self.proto.ready = True

    @property
    def usable(self) -> bool:
        """Ready for a message (nothing open)."""
        return self.proto.client.phase is C.Phase.READY and not self.proto.closed

    @property
    def open(self) -> bool:
        """Still connected and talking (transactions may be open)."""
        return not self.proto.closed and self.proto.client.phase in (C.Phase.READY, C.Phase.TRANSACTION)

    def pipeline(self, feeder: Callable[[], object] | None) -> None:
        """`feeder()` is called whenever a next message could go out along with the data just sent; it may
        call send() (at most once)."""
        self.proto.feeder = feeder

    def send(self, msg: C.Message) -> asyncio.Future[list[C.Reply]]:
        """Start one transaction; the future gets a final reply per recipient of `msg`, in order (transactions
        end in the order they were sent)."""
        self.messages += 1
        return self.proto.send(msg)

    async def deliver(self, msg: C.Message) -> list[C.Reply]:
        """One transaction: a final reply per recipient of `msg`, in order."""
        return await self.send(msg)

    async def close(self) -> None:
        proto = self.proto
        proto.feeder = None
        if not proto.closed and proto.client.phase is C.Phase.READY:
            proto.ready = False
            proto.client.quit()
            proto.flush()
            with contextlib.suppress(Exception):
                await proto.next_event(5.0)
        if proto.transport is not None:
            proto.transport.close()


async def open_session(
    host: str,
    ip: str,
    port: int,
    *,
    hostname: str,
    tls_context: ssl.SSLContext | None,
    require_tls: bool = False,
    auth: tuple[str, str] | None = None,
    connect_timeout: float = 30.0,
    timeout_scale: float = 1.0,
    lmtp: bool = False,
) -> Session:
    """A session on `ip`:`port` (the MX `host`; with `lmtp`, a mailbox node's LMTP) ready for a message, or
    SessionError."""
    loop = asyncio.get_running_loop()
    client = C.Client(hostname, tls=tls_context is not None, require_tls=require_tls, auth=auth, lmtp=lmtp)
    try:
        transport, proto = await asyncio.wait_for(
            loop.create_connection(lambda: _Protocol(client, timeout_scale), ip, port), connect_timeout)
    except (OSError, TimeoutError) as e:
        what = "timeout" if isinstance(e, TimeoutError) else (e.strerror or repr(e))
        raise SessionError(C.local_reply(421, "4.4.1", f"connect to {host}[{ip}]:{port}: {what}")) from None
    session = Session(proto, host, ip, timeout_scale)
    try:
        while True:
            event = await proto.next_event()
            if isinstance(event, C.Ready):
                session.extensions = event.extensions
                session.start()
                return session
            if isinstance(event, C.Failed):
                raise SessionError(event.reply)
            if isinstance(event, C.StartTLS):
                assert tls_context is not None
                try:
                    new = await asyncio.wait_for(
                        loop.start_tls(proto.transport, proto, tls_context, server_hostname=host.strip("[]")),  # type: ignore[arg-type]
                        C.TIMEOUT_OTHER * timeout_scale)
                except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as e:
                    raise SessionError(C.local_reply(421, "4.7.5", f"TLS handshake with {host}[{ip}] failed: {e!r}"),
                                       tls_failed=True) from None
                if new is None:
                    raise SessionError(C.local_reply(421, "4.7.5", "TLS handshake failed"), tls_failed=True)
                proto.transport = new  # type: ignore[assignment]
                ssl_obj = new.get_extra_info("ssl_object")
                session.tls_version = ssl_obj.version() if ssl_obj is not None else "TLS"
                client.tls_done()
                proto.flush()
    except BaseException:
        proto.abort()
        raise
