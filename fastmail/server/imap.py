"""The asyncio protocol that drives fastmail.proto.imap over a real transport (port 143 with STARTTLS, 993 with
implicit TLS), and the worker's change watcher that wakes IDLE sessions.

Thin on purpose: it moves bytes and answers the state machine's requests (TLS upgrade, password check, store
writes off the loop, APPEND through the group committer, flushes).  Back-pressure: reading is paused while a
request is outstanding or while the client does not read our responses, and a large FETCH waits (Flush) until
the transport's buffer drains.  Timeouts: autologout after imap.idle_timeout without a command (RFC 9051
§5.4), imap.command_timeout for a command whose bytes stopped coming half-way.

Cross-worker changes (fastmail.store.changes): one task per worker reads the change log every
imap.change_poll_interval seconds in one short read transaction and wakes only the IDLE sessions whose
selected mailbox changed; sessions not in IDLE catch up at their next command (the view's sync).
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from fastmail import log
from fastmail.proto import imap as P
from fastmail.proto import imap_responses as S
from fastmail.server.session import Session
from fastmail.store import changes

if TYPE_CHECKING:
    from fastmail.server.worker import Services

_log = logging.getLogger("fastmail.imap")


class IMAPProtocol(Session):
    sid_tag = "i"

    def __init__(self, services: Services, listener: str, implicit_tls: bool = False) -> None:
        super().__init__(services, listener, implicit_tls)
        self.conn: P.IMAPConnection | None = None
        self._drained: asyncio.Future[None] | None = None
        self.user_id: int | None = None  # counted in services.imap_per_user

    def start(self) -> None:
        cfg = self.services.config
        services, ip = self.services, self.peer
        services.imap_per_ip[ip] = services.imap_per_ip.get(ip, 0) + 1
        services.imap_sessions.add(self)
        if self.refusal(None, 0) is not None:  # server.max_connections
            self.refuse(S.BYE_BUSY.line(), "connections")
            return
        limit = cfg.imap_max_connections_per_ip
        if limit and services.imap_per_ip[ip] > limit and not services.is_proxy(ip):
            log.event("refused", sid=self.sid, listener=self.listener, peer=ip, reason="connections_per_ip")
            assert self.transport is not None
            self.transport.write(S.BYE_TOO_MANY_CONNECTIONS.line())
            self.transport.close()
            return
        self.conn = P.IMAPConnection(
            services.mailboxes, services.imap_limits, peer=ip, tls=self.implicit_tls,
            tls_available=services.tls_context is not None and not self.implicit_tls,
            plaintext_loopback=cfg.imap_plaintext_auth_loopback,
            plaintext_anywhere=services.is_proxy(ip),  # the proxy checked TLS with the client (docs/scaling.md)
            learn=partial(services.learner.submit, sid=self.sid) if services.learner else None,
            on_command=services.metrics.imap_command_done,
        )
        self.metrics.sessions.inc()
        log.event("connect", sid=self.sid, listener=self.listener, peer=ip, tls=int(self.implicit_tls))
        self._pump()

    def finish(self, exc: Exception | None) -> None:
        services = self.services
        services.imap_sessions.discard(self)
        _decrement(services.imap_per_ip, self.peer)
        if self.user_id is not None:
            _decrement(services.imap_per_user, self.user_id)
        self.drained()
        conn = self.conn
        log.event("disconnect", sid=self.sid, user=conn.user if conn else None,
                  secs=f"{time.monotonic() - self.started:.3f}")

    def drained(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # -- driving the state machine ----------------------------------------------------------------------

    def _pump(self) -> None:
        conn, transport = self.conn, self.transport
        wrote = False
        for _ in range(10_000):
            if conn is None or transport is None or transport.is_closing():
                return
            request = conn.next_request()
            out = conn.take_output_parts()
            wrote = wrote or bool(out)
            if len(out) == 1:
                transport.write(out[0])
            elif out:
                transport.writelines(out)  # fetched messages go out without being joined (copied)
            if request is None:
                break
            if isinstance(request, P.Close):
                self._close()
                return
            if isinstance(request, P.Flush) and not self._write_paused:
                conn.resolve(None)
                continue
            asyncio.get_running_loop().create_task(self._serve(request))
            break
        self._set_reading()
        self._arm_timer(wrote)

    def _arm_timer(self, fresh: bool = True) -> None:
        conn = self.conn
        if conn is None or conn.closed or conn.waiting:
            self.deadline = None
            return
        cfg = self.services.config
        partial = conn.buffered and not conn.idling
        self._arm(cfg.imap_command_timeout if partial else cfg.imap_idle_timeout, fresh)

    @property
    def idle(self) -> bool:
        return self.conn is None or not self.conn.busy

    def changed(self) -> None:
        """The change watcher saw the selected mailbox change."""
        if self.conn is not None and self.conn.idling:
            self.conn.changed()
            self._pump()

    # -- requests ---------------------------------------------------------------------------------------

    async def _serve(self, request: P.Request) -> None:
        conn = self.conn
        assert conn is not None
        loop = asyncio.get_running_loop()
        services = self.services
        try:
            if isinstance(request, P.StartTLS):
                if not await self._starttls():
                    return
                conn.resolve(None)
            elif isinstance(request, P.Authenticate):
                conn.resolve(await self._authenticate(request))
            elif isinstance(request, P.Call):
                try:
                    result = await loop.run_in_executor(services.imap_pool, _call, request)
                except Exception as e:
                    conn.fail(e)
                else:
                    conn.resolve(result)
            elif isinstance(request, P.Commit):
                try:
                    outcome = await services.committer.commit(request.item)
                except Exception as e:
                    log.event("store_failed", level=logging.ERROR, sid=self.sid, error=repr(e))
                    conn.fail(e)
                else:
                    log.event("append", sid=self.sid, qid=request.item.qid.hex(), size=len(request.item.raw))
                    conn.resolve(outcome)
            elif isinstance(request, P.CommitAll):
                # all or none, on the thread that writes this process's segment file (the group commit's)
                try:
                    result = await loop.run_in_executor(services.committer._executor, services.mailboxes.append_all,
                                                        request.items)
                except Exception as e:
                    conn.fail(e)
                else:
                    log.event("append", sid=self.sid, qid=",".join(i.qid.hex() for i in request.items),
                              size=sum(len(i.raw) for i in request.items))
                    conn.resolve(result)
            elif isinstance(request, P.Flush):
                if self._write_paused:
                    self._drained = loop.create_future()
                    # the client has imap.command_timeout to read on; else on_timeout aborts it (fastmail.server.session)
                    self.deadline = time.monotonic() + services.config.imap_command_timeout
                    await self._drained
                    self._drained = None
                conn.resolve(None)
        except Exception:
            _log.exception("request %s failed", type(request).__name__)
            self._close()
            return
        self._pump()

    async def _authenticate(self, request: P.Authenticate) -> tuple[bool, int | None] | S.Status:
        services = self.services
        if services.imap_throttle.blocked(self.peer):
            log.event("auth", sid=self.sid, user=request.username, mech=request.mechanism, ok=0, throttled=1,
                      proto="imap")
            self.metrics.auth["throttled"].inc()
            return S.LOGIN_THROTTLED
        ok, user_id = await services.authenticate(request.username, request.password, self.peer)
        log.event("auth", sid=self.sid, user=request.username, mech=request.mechanism, ok=int(ok), proto="imap")
        self.metrics.auth["success" if ok and user_id is not None else "failure"].inc()
        if not ok or user_id is None:
            services.imap_throttle.failed(self.peer)
            await asyncio.sleep(services.auth_failure_delay)
            return False, None
        limit = services.config.imap_max_sessions_per_user
        if limit and services.imap_per_user.get(user_id, 0) >= limit:
            return S.TOO_MANY_SESSIONS
        services.imap_per_user[user_id] = services.imap_per_user.get(user_id, 0) + 1
        self.user_id = user_id
        return True, user_id

    async def _starttls(self) -> bool:
        return await self._upgrade_tls()


def _decrement(counts: dict[Any, int], key: Any) -> None:
    n = counts.get(key, 0) - 1
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)


def _call(request: P.Call) -> Any:
    return request.fn(*request.args)


async def watch_changes(services: Services) -> None:
    """The worker's change poll (fastmail.store.changes): wake the IDLE sessions whose mailbox changed."""
    store = services.store
    interval = services.config.imap_change_poll_interval
    with store.read() as txn:
        since = changes.current(txn, store.db)
    while True:
        await asyncio.sleep(interval)
        try:
            with store.read() as txn:
                since, changed = changes.poll(txn, store.db, since)
        except Exception:
            _log.exception("change poll failed")
            continue
        if changed is not None and not changed:
            continue
        for session in list(services.imap_sessions):
            conn = session.conn
            if conn is None or not conn.idling:
                continue
            if changed is None or conn.selected_mailbox in changed:
                session.changed()
