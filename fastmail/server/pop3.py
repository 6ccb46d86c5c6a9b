"""The asyncio protocol that drives fastmail.proto.pop3 over a real transport (POP3 with STLS, POP3S).

Thin, like fastmail.server.smtp: it moves bytes and answers the state machine's requests — the TLS
upgrade, the login (argon2 off the loop, then the maildrop lock and listing), message reads, and the
UPDATE-state removal (a synced write transaction, off the loop).  The maildrop lock is released when the
connection ends, however it ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from fastmail import log
from fastmail.proto import pop3 as P
from fastmail.server.session import Session, is_loopback
from fastmail.store import maildrop

if TYPE_CHECKING:
    from fastmail.server.worker import Services

# Instead of the greeting (RFC 2449 §8.1.2 SYS/TEMP: try again later)
BUSY = P.err("[SYS/TEMP] Too many connections, try again later")  # server.max_connections
TOO_MANY_CONNECTIONS = P.err("[SYS/TEMP] Too many connections from your address, try again later")

class POP3Protocol(Session):
    sid_tag = "p"

    def __init__(self, services: Services, listener: str, implicit_tls: bool = False) -> None:
        super().__init__(services, listener, implicit_tls)
        self.conn: P.POP3Connection | None = None
        self.user_id: int | None = None
        self.mailbox_id = 0
        self.lock: maildrop.MaildropLock | None = None
        self.retrieved = 0
        self._next_fetch: P.Fetch | None = None  # a RETR/TOP waiting for the client to read the last one

    def start(self) -> None:
        cfg = self.services.config
        counted = None if self.services.is_proxy(self.peer) else self.services.pop3_per_ip  # a proxy: many clients
        why = self.refusal(counted, int(cfg.pop3_max_connections_per_ip))
        if why is not None:
            self.refuse(BUSY if why == "connections" else TOO_MANY_CONNECTIONS, why)
            return
        session = P.Session(
            peer=self.peer,
            tls=self.implicit_tls,
            plaintext_ok=is_loopback(self.peer) and cfg.pop3_plaintext_auth_loopback or self.services.is_proxy(self.peer),
            tls_available=self.services.tls_context is not None and not self.implicit_tls,
        )
        self.conn = P.POP3Connection(session, self.services.hostname, P.Limits(max_errors=cfg.pop3_max_errors,
                                                                            login_delay=cfg.pop3_login_delay))
        log.event("connect", sid=self.sid, listener=self.listener, peer=self.peer, tls=int(self.implicit_tls))
        self.metrics.sessions.inc()
        self._pump()

    def finish(self, exc: Exception | None) -> None:
        if self.lock is not None:
            self.lock.release()  # a dropped session removes nothing (no UPDATE state) and frees the maildrop
        log.event("disconnect", sid=self.sid, retrieved=self.retrieved, secs=f"{time.monotonic() - self.started:.3f}")

    # -- driving the state machine ------------------------------------------------------------------------

    def _pump(self) -> None:
        conn, transport = self.conn, self.transport
        if conn is None or transport is None or transport.is_closing():
            return
        wrote = False
        while True:
            out = conn.take_output_parts()
            wrote = wrote or bool(out)
            if len(out) == 1:
                transport.write(out[0])
            elif out:
                transport.writelines(out)  # a retrieved message goes out without being joined (copied)
            request = conn.next_request()
            if request is None:
                break
            if isinstance(request, P.Close):
                self._close()
                return
            if isinstance(request, P.Fetch):
                if self._write_paused:  # the client has not read the last message: this one waits (drained())
                    self._next_fetch = request
                    break
                self._fetch(request)  # a read from the page cache: answered at once, in order
                continue
            asyncio.get_running_loop().create_task(self._serve(request))
            break
        self._set_reading()
        if conn.closed or (conn.waiting and self._next_fetch is None):
            self.deadline = None
        else:  # a RETR waiting for the client to read runs it too: on_timeout aborts a client that never does
            self._arm(self.services.config.pop3_idle_timeout, wrote)

    def drained(self) -> None:
        request, self._next_fetch = self._next_fetch, None
        if request is not None and self.conn is not None and not self.conn.closed:
            self._fetch(request)
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
            self._close()
            return
        self._pump()

    async def _starttls(self) -> None:
        if await self._upgrade_tls():
            assert self.conn is not None
            self.conn.tls_started()

    async def _login(self, req: P.Login) -> None:
        conn = self.conn
        assert conn is not None
        services = self.services
        throttle = services.pop3_throttle
        if throttle.blocked(self.peer):
            log.event("auth", sid=self.sid, user=req.username, mech=req.mechanism, ok=0, throttled=1)
            self.metrics.auth["throttled"].inc()
            conn.login_done(P.LoginFailed.THROTTLED)
            return
        ok, user_id = await services.authenticate(req.username, req.password, self.peer)
        if ok and req.authzid and req.authzid.lower() != req.username.lower():
            ok = False  # no proxy authorization
        log.event("auth", sid=self.sid, user=req.username, mech=req.mechanism, ok=int(ok), proto="pop3")
        self.metrics.auth["success" if ok and user_id is not None else "failure"].inc()
        if not ok or user_id is None:
            throttle.failed(self.peer)
            await asyncio.sleep(services.auth_failure_delay)
            conn.login_done(P.LoginFailed.AUTH)
            return
        lock = maildrop.MaildropLock(services.config.data_dir, user_id)
        if not lock.acquire():
            conn.login_done(P.LoginFailed.IN_USE)
            return
        delay = services.config.pop3_login_delay
        if delay and lock.previous_login is not None and time.time() - lock.previous_login < delay:
            lock.release()
            log.event("pop3_login_delay", sid=self.sid, user=req.username)
            conn.login_done(P.LoginFailed.DELAY)
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
        lock.mark_login()
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
