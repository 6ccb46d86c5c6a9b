"""What the SMTP, IMAP and POP3 protocol classes share: the transport plumbing around a sans-IO machine.

A subclass sets `self.conn` (the protocol's state machine, with `.waiting`, `.closed`, `.timed_out()` and
`.shutdown()`) in `start()`, drives it in `_pump()`, and releases what it holds in `finish()`.  This base
keeps the rest the same for all three:

- the client's address (`peer`, IPv4-mapped IPv6 unwrapped; a unix socket is local) and port (`port`, None
  on a unix socket), and the session id `sid` that ties a connection's log lines together;
- membership in the worker's `sessions` (graceful stop) and in the timeout sweep (fastmail.server.deadlines:
  a subclass sets `deadline`, the sweep calls `on_timeout()`);
- back-pressure: reading is paused while the machine waits for a request to be answered or while the
  client does not read what we write (`pause_writing`), and resumed when both are over;
- the TLS upgrade (STARTTLS / STLS) on the same protocol object;
- the connection caps (`refusal()`): server.max_connections per worker, all listeners together, and each
  protocol's cap on the connections one client address holds at once in this worker.

Deadlines and slow clients (slowloris): `_arm(seconds, fresh)` sets the deadline when the client's turn
starts (`fresh`: a reply went out) and otherwise moves it only when PROGRESS bytes came since it was set, so
a client that sends one byte every few seconds is timed out like a silent one, while a DATA block, a BDAT
chunk or an APPEND literal that keeps coming moves it on (RFC 5321 §4.5.3.2.6 times each block).  A client
that stops reading our replies is timed out too, and then aborted: its unread replies go with it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import resource
import ssl
import time
from typing import TYPE_CHECKING, Any

from fastmail import log
from fastmail.server import deadlines

if TYPE_CHECKING:
    from fastmail.server.worker import Services

_session_ids = itertools.count(1)


LOGIN_FAILURE_WINDOW = 600.0  # seconds over which failed logins from one address are counted
PROGRESS = 64 * 1024  # bytes received that count as progress and move a running deadline on
FEED = 16 * 1024  # bytes of a read interpreted at once (_feed)
FD_RESERVE = 256  # descriptors a worker keeps for the store, segments, logs and threads (server.max_connections)


def connection_cap(configured: int) -> int:
    """The connections one worker may hold: server.max_connections, and never more than its file-descriptor
    limit (the soft RLIMIT_NOFILE, raised to the hard limit by the master) less FD_RESERVE, so accept() does
    not meet EMFILE: a connection over the cap is accepted, told so and closed."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    by_fds = 1 << 30 if soft == resource.RLIM_INFINITY else max(16, soft - FD_RESERVE)
    return min(configured, by_fds) if configured > 0 else by_fds


class LoginThrottle:
    """Failed logins per client address in this worker (IMAP and POP3 each keep one); past the limit,
    logins are refused without a password check until the window has passed."""

    def __init__(self, limit: int, window: float = LOGIN_FAILURE_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, collections.deque[float]] = {}

    def _recent(self, ip: str, now: float) -> collections.deque[float] | None:
        q = self._failures.get(ip)
        if q is not None:
            while q and q[0] <= now - self.window:
                q.popleft()
            if not q:
                del self._failures[ip]
                return None
        return q

    def blocked(self, ip: str) -> bool:
        q = self._recent(ip, time.monotonic())
        return self.limit > 0 and q is not None and len(q) >= self.limit

    def failed(self, ip: str) -> None:
        now = time.monotonic()
        q = self._recent(ip, now)
        if q is None:
            if len(self._failures) > 100_000:  # bounded memory under a spray from many addresses
                self._failures.clear()
            q = self._failures[ip] = collections.deque()
        q.append(now)


def peer_endpoint(transport: asyncio.BaseTransport) -> tuple[str, int | None]:
    """The client's (IP, port); a unix socket is local, with no port."""
    peer = transport.get_extra_info("peername")
    if not isinstance(peer, tuple):
        return "127.0.0.1", None
    ip = str(peer[0])
    return (ip[7:] if ip.startswith("::ffff:") else ip), peer[1]


def peer_address(transport: asyncio.BaseTransport) -> str:
    return peer_endpoint(transport)[0]


def is_loopback(ip: str) -> bool:
    return ip == "::1" or ip.startswith("127.")


class Session(asyncio.Protocol):
    sid_tag = ""  # one letter after the pid in session ids: "" SMTP, "i" IMAP, "p" POP3

    def __init__(self, services: Services, listener: str, implicit_tls: bool = False) -> None:
        self.services = services
        self.listener = listener
        self.implicit_tls = implicit_tls
        self.transport: asyncio.Transport | None = None
        self.conn: Any = None
        self.deadline: float | None = None  # time.monotonic(); swept by fastmail.server.deadlines
        self.peer = ""
        self.port: int | None = None
        self._write_paused = False
        self._reading_paused = False
        self._received = 0  # bytes received on this connection
        self._armed_at = 0  # self._received when the deadline was last set
        self._unfed: list[bytes] = []  # received, not interpreted until the client reads our replies (_feed)
        self.per_ip: dict[str, int] | None = None  # the per-address count this connection is in, until it ends
        self.started = time.monotonic()
        self.sid = f"{os.getpid():x}.{self.sid_tag}{next(_session_ids):x}"  # follows one connection in the log
        self.metrics = services.metrics.service(listener)  # fastmail.metrics: this listener's counters

    # -- for subclasses ---------------------------------------------------------------------------------

    def start(self) -> None:
        """The connection is up and registered: build `self.conn`, log, and pump the greeting."""
        raise NotImplementedError

    def finish(self, exc: Exception | None) -> None:
        """The connection is gone and unregistered: release what the session holds, log."""

    def _pump(self) -> None:
        raise NotImplementedError

    def drained(self) -> None:
        """The client read what was waiting in our send buffer."""

    # -- asyncio callbacks ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer, self.port = peer_endpoint(transport)
        self.metrics.connections.inc()
        self.metrics.open.inc()
        self.services.sessions.add(self)
        deadlines.sessions.watch(self)
        self.start()

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        if self._unfed:  # an earlier read waits for the client to read our replies: keep the order
            self._unfed.append(data)
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Interpret DATA, FEED bytes at a time while the client reads what we answer.  Once it does not (our
        send buffer passed its high-water mark: pause_writing), the rest waits uninterpreted until the buffer
        drains: a client that pipelines commands without reading makes us hold the replies to FEED bytes of
        its commands beyond the high-water mark, not to a whole read (up to 256 KiB of CAPA: 6 MiB of replies)."""
        pos, n = 0, len(data)
        while pos < n:
            conn, transport = self.conn, self.transport
            if conn is None or transport is None or transport.is_closing():
                return
            if self._write_paused:
                self._unfed.append(data[pos:] if pos else data)
                return
            end = n if n - pos <= FEED else pos + FEED
            conn.receive(data if end - pos == n else data[pos:end])
            self._pump()
            pos = end

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.metrics.open.dec()
        self.deadline = None
        deadlines.sessions.forget(self)
        self.services.sessions.discard(self)
        if self.per_ip is not None:
            n = self.per_ip.get(self.peer, 0) - 1
            if n > 0:
                self.per_ip[self.peer] = n
            else:
                self.per_ip.pop(self.peer, None)
            self.per_ip = None
        self.finish(exc)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._set_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self.drained()
        unfed, self._unfed = self._unfed, []
        for i, chunk in enumerate(unfed):
            self._feed(chunk)
            if self._unfed:  # paused again: the rest waits behind what _feed kept
                self._unfed.extend(unfed[i + 1:])
                break
        self._set_reading()

    # -- shared behaviour -------------------------------------------------------------------------------

    def _set_reading(self) -> None:
        transport, conn = self.transport, self.conn
        if transport is None or conn is None or transport.is_closing():
            return
        want_pause = self._write_paused or conn.waiting or bool(self._unfed)
        if want_pause and not self._reading_paused:
            transport.pause_reading()
            self._reading_paused = True
        elif not want_pause and self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False

    def refusal(self, per_ip: dict[str, int] | None, limit: int) -> str | None:
        """Whether this new connection is one too many: "connections" when the worker holds
        server.max_connections already, "connections_per_ip" when the client's address holds LIMIT connections
        counted in PER_IP (0: no limit; None: not counted).  A connection let in stays counted until it ends."""
        if len(self.services.sessions) > self.services.max_connections:
            return "connections"
        if per_ip is None:
            return None
        n = per_ip.get(self.peer, 0)
        if limit and n >= limit:
            return "connections_per_ip"
        per_ip[self.peer] = n + 1
        self.per_ip = per_ip
        return None

    def refuse(self, reply: bytes, reason: str) -> None:
        """Instead of the greeting: REPLY, then close."""
        log.event("connect_refused", sid=self.sid, listener=self.listener, peer=self.peer, port=self.port,
                  reply=reply[:9].decode("ascii", "replace").strip(), reason=reason)
        assert self.transport is not None
        self.transport.write(reply)
        self.transport.close()

    def _arm(self, seconds: float, fresh: bool) -> None:
        """The deadline SECONDS from now when the client's turn starts (FRESH: a reply went out), when none
        runs, or when PROGRESS bytes came since it was set; otherwise it stays (or comes closer, when SECONDS
        is shorter than what is left): a trickle of bytes does not keep a connection open."""
        now = time.monotonic()
        if fresh or self.deadline is None or self._received - self._armed_at >= PROGRESS:
            self.deadline = now + seconds
            self._armed_at = self._received
        elif now + seconds < self.deadline:
            self.deadline = now + seconds

    def on_timeout(self) -> None:
        conn = self.conn
        if conn is not None and not conn.waiting and not conn.closed:
            log.event("timeout", sid=self.sid)
            conn.timed_out()
            self._pump()
        transport = self.transport
        if transport is not None and self._write_paused:
            transport.abort()  # it does not read what we write: close() would wait for that forever

    def shutdown(self) -> None:
        """Server stopping: say so and close, unless a request is in flight (its answer goes out first)."""
        conn = self.conn
        if conn is not None and not conn.waiting:
            conn.shutdown()
            self._pump()

    def _close(self) -> None:
        self.deadline = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    async def _upgrade_tls(self) -> bool:
        """STARTTLS / STLS: the same protocol object continues over TLS.  False (and closed) on failure."""
        assert self.transport is not None
        ctx = self.services.tls_context
        assert ctx is not None
        loop = asyncio.get_running_loop()
        self._reading_paused = False  # start_tls takes over reading
        try:
            new = await loop.start_tls(self.transport, self, ctx, server_side=True, ssl_handshake_timeout=30)
        except (TimeoutError, ssl.SSLError, OSError, ConnectionError) as e:
            log.event("tls_failed", sid=self.sid, error=type(e).__name__)
            self._close()
            return False
        if new is None:
            self._close()
            return False
        self.transport = new  # type: ignore[assignment]
        log.event("starttls", sid=self.sid, version=new.get_extra_info("ssl_object").version())
        return True
