"""The asyncio protocol that drives fastmail.proto.pop3 over a real transport (POP3 with STLS, POP3S).

Thin, like fastmail.server.smtp: it moves bytes and answers the state machine's requests — the TLS
upgrade, the login (argon2 off the loop, then the maildrop lock and listing), message reads, and the
UPDATE-state removal (a synced write transaction, off the loop).  The maildrop lock is released when the
connection ends, however it ends.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import ssl
import time
from typing import TYPE_CHECKING

from fastmail import log
from fastmail.proto import pop3 as P
from fastmail.server import deadlines
from fastmail.store import maildrop

if TYPE_CHECKING:
    from fastmail.server.worker import Services


_session_ids = itertools.count(1)

LOGIN_FAILURE_WINDOW = 600.0  # seconds over which failed logins from one address are counted


class LoginThrottle:
    """Failed logins per client address in this worker; past the limit, logins are refused without a
    password check ([SYS/TEMP], RFC 3206) until the window has passed."""

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


class POP3Protocol(asyncio.Protocol):
    def __init__(self, services: Services, listener: str, implicit_tls: bool = False) -> None:
        self.services = services
        self.listener = listener
        self.implicit_tls = implicit_tls
        self.transport: asyncio.Transport | None = None
        self.conn: P.POP3Connection | None = None
        self.deadline: float | None = None
        self.peer = ""
        self.user_id: int | None = None
        self.mailbox_id = 0
        self.lock: maildrop.MaildropLock | None = None
        self._write_paused = False
        self._reading_paused = False
        self.started = time.monotonic()
        self.retrieved = 0
        self.sid = f"{os.getpid():x}.p{next(_session_ids):x}"

    # -- asyncio callbacks ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        cfg = self.services.config
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) else "127.0.0.1"
        if ip.startswith("::ffff:"):
            ip = ip[7:]
        self.peer = ip
        loopback = ip == "::1" or ip.startswith("127.") or not isinstance(peer, tuple)
        session = P.Session(
            peer=ip,
            tls=self.implicit_tls,
            plaintext_ok=loopback and cfg.pop3_plaintext_auth_loopback,
            tls_available=self.services.tls_context is not None and not self.implicit_tls,
        )
        self.conn = P.POP3Connection(session, self.services.hostname, P.Limits(max_errors=cfg.pop3_max_errors))
        self.services.sessions.add(self)
        deadlines.sessions.watch(self)
        log.event("connect", sid=self.sid, listener=self.listener, peer=ip, tls=int(self.implicit_tls))
        self._pump()

    def data_received(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.receive(data)
            self._pump()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadline = None
        deadlines.sessions.forget(self)
        self.services.sessions.discard(self)
        if self.lock is not None:
            self.lock.release()  # a dropped session removes nothing (no UPDATE state) and frees the maildrop
        log.event("disconnect", sid=self.sid, retrieved=self.retrieved, secs=f"{time.monotonic() - self.started:.3f}")

    def pause_writing(self) -> None:
        self._write_paused = True
        self._set_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._set_reading()

    # -- driving the state machine ------------------------------------------------------------------------

    def _pump(self) -> None:
        conn, transport = self.conn, self.transport
        if conn is None or transport is None or transport.is_closing():
            return
        while True:
            out = conn.take_output_parts()
            if len(out) == 1:
                transport.write(out[0])
            elif out:
                transport.writelines(out)  # a retrieved message goes out without being joined (copied)
            request = conn.next_request()
            if request is None:
                break
            if isinstance(request, P.Close):
                transport.close()
                return
            if isinstance(request, P.Fetch):
                self._fetch(request)  # a read from the page cache: answered at once, in order
                continue
            asyncio.get_running_loop().create_task(self._serve(request))
            break
        self._set_reading()
        if conn.closed or conn.waiting:
            self.deadline = None
        else:
            self.deadline = time.monotonic() + self.services.config.pop3_idle_timeout

    def _set_reading(self) -> None:
        transport, conn = self.transport, self.conn
        if transport is None or conn is None or transport.is_closing():
            return
        want_pause = self._write_paused or conn.waiting
        if want_pause and not self._reading_paused:
            transport.pause_reading()
            self._reading_paused = True
        elif not want_pause and self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False

    def on_timeout(self) -> None:
        if self.conn is not None and not self.conn.waiting:
            log.event("timeout", sid=self.sid)
            self.conn.timed_out()
            self._pump()

    def shutdown(self) -> None:
        if self.conn is not None and not self.conn.waiting:
            self.conn.shutdown()
            self._pump()

    @property
    def idle(self) -> bool:
        conn = self.conn
        return conn is None or (not conn.waiting and conn.state is P.State.AUTHORIZATION)

    def _fetch(self, req: P.Fetch) -> None:
        assert self.conn is not None
        try:
            raw = maildrop.read_message(self.services.store, self.mailbox_id, req.uid)
        except Exception as e:
            log.event("pop3_read_failed", level=logging.ERROR, sid=self.sid, uid=req.uid, error=repr(e))
            raw = None
        if raw is not None and req.top is None:
            self.retrieved += 1
        self.conn.fetched(raw)

    async def _serve(self, request: P.Request) -> None:
        try:
            if isinstance(request, P.StartTLS):
                await self._starttls()
            elif isinstance(request, P.Login):
                await self._login(request)
            elif isinstance(request, P.Update):
                await self._update(request)
        except Exception:
            logging.getLogger("fastmail.pop3").exception("request %s failed", type(request).__name__)
            if self.transport is not None:
                self.transport.close()
            return
        self._pump()

    async def _starttls(self) -> None:
        assert self.transport is not None and self.conn is not None
        ctx = self.services.tls_context
        assert ctx is not None
        loop = asyncio.get_running_loop()
        self._reading_paused = False
        try:
            new = await loop.start_tls(self.transport, self, ctx, server_side=True, ssl_handshake_timeout=30)
        except (TimeoutError, ssl.SSLError, OSError, ConnectionError) as e:
            log.event("tls_failed", sid=self.sid, error=type(e).__name__)
            self.transport.close()
            return
        if new is None:
            self.transport.close()
            return
        self.transport = new
        self.conn.tls_started()
        log.event("starttls", sid=self.sid)

    async def _login(self, req: P.Login) -> None:
        conn = self.conn
        assert conn is not None
        services = self.services
        throttle: LoginThrottle = services.pop3_throttle
        if throttle.blocked(self.peer):
            log.event("auth", sid=self.sid, user=req.username, mech=req.mechanism, ok=0, throttled=1)
            conn.login_done(P.LoginFailed.THROTTLED)
            return
        ok, user_id = await services.authenticate(req.username, req.password)
        if ok and req.authzid and req.authzid.lower() != req.username.lower():
            ok = False  # no proxy authorization
        log.event("auth", sid=self.sid, user=req.username, mech=req.mechanism, ok=int(ok), proto="pop3")
        if not ok or user_id is None:
            throttle.failed(self.peer)
            await asyncio.sleep(services.auth_failure_delay)
            conn.login_done(P.LoginFailed.AUTH)
            return
        lock = maildrop.MaildropLock(services.config.data_dir, user_id)
        if not lock.acquire():
            conn.login_done(P.LoginFailed.IN_USE)
            return
        try:
            found = maildrop.open_inbox(services.store, user_id)
        except Exception as e:
            lock.release()
            log.event("pop3_open_failed", level=logging.ERROR, sid=self.sid, error=repr(e))
            conn.login_done(P.LoginFailed.TEMP)
            return
        if found is None:
            lock.release()
            conn.login_done(P.LoginFailed.NO_MAILDROP)
            return
        if self.transport is None or self.transport.is_closing():
            lock.release()  # the client left during the password check
            return
        self.lock, self.user_id = lock, user_id
        self.mailbox_id, uidvalidity, messages = found
        conn.login_done(P.Maildrop(uidvalidity, [P.Entry(m.uid, m.size) for m in messages]), req.username.lower())

    async def _update(self, req: P.Update) -> None:
        conn = self.conn
        assert conn is not None
        loop = asyncio.get_running_loop()
        try:
            removed = await loop.run_in_executor(None, maildrop.remove, self.services.store, self.mailbox_id, req.uids)
        except Exception as e:
            log.event("pop3_update_failed", level=logging.ERROR, sid=self.sid, error=repr(e))
            conn.update_done(False)
            return
        log.event("pop3_update", sid=self.sid, removed=len(removed))
        conn.update_done(True, len(removed))
