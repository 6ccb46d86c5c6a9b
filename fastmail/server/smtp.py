"""The asyncio protocol that drives fastmail.proto.smtp over a real transport (SMTP, submission, LMTP).

Thin on purpose: it moves bytes, answers the state machine's requests (TLS upgrade, password check, durable
delivery), keeps the per-state timeouts and applies back-pressure (reading is paused while a request is
outstanding or while the client does not read our replies).

It also writes the session's log lines (docs/smtp.md, "Logs"): connect, each refused command (told by the state
machine's refused_hook), the accepted or refused message with its queue id, and disconnect with the counts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import TYPE_CHECKING, Any

from fastmail import log
from fastmail import metrics as M
from fastmail.hygiene import dmarc, ratelimit
from fastmail.hygiene.inbound import ClientChecks, Transaction
from fastmail.proto import replies as R
from fastmail.proto import smtp as P
from fastmail.proto.replies import Reply
from fastmail.server.session import Session
from fastmail.store.store import Incoming, new_qid, storage_full

if TYPE_CHECKING:
    from fastmail.server.worker import Services

# Refused commands logged one line each, per session; past this they are only counted (the disconnect line's
# refused=), so a client looping on a refused command cannot flood the log.
MAX_REFUSAL_LINES = 50


def _new_qid_hex() -> str:
    return new_qid().hex()


def _status(reply: Reply) -> str:
    return f"{reply.code} {reply.enhanced}" if reply.enhanced else str(reply.code)


class SMTPProtocol(Session):
    def __init__(self, services: Services, mode: P.Mode, listener: str, implicit_tls: bool = False) -> None:
        super().__init__(services, listener, implicit_tls)
        self.mode = mode
        self.conn: P.SMTPConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self.messages = 0
        self._awl_counted = False  # a greylist pass of this transaction was counted for auto-whitelisting
        self._dnswl: asyncio.Task[str | None] | None = None  # the client's DNSWL lookup (greylisting)
        self._refusal_lines = 0
        self._end: str | None = None  # why the session ended, when the driver ended it (else the machine says)
        self._greeting: asyncio.TimerHandle | None = None  # smtp.greeting_delay pending
        self._client_checks: ClientChecks | None = None  # iprev and DNSBL/DNSWL of the client, per connection

    def start(self) -> None:
        cfg = self.services.config
        session = P.Session(peer=self.peer, mode=self.mode, tls=self.implicit_tls)
        session.trusted = self.services.is_trusted(self.peer)
        # connections held at once: the worker's cap, then the client address's (not LMTP, trusted networks or
        # the mail proxies, which bring many clients from one address: docs/scaling.md)
        exempt = self.mode is P.Mode.LMTP or session.trusted or self.services.is_proxy(self.peer)
        counted = None if exempt else self.services.smtp_per_ip
        why = self.refusal(counted, int(cfg.smtp_max_connections_per_ip))
        if why is not None:
            self._end = why
            self.refuse((R.BUSY if why == "connections" else ratelimit.TOO_MANY_CONNECTIONS).encode(), why)
            return
        if self._connection_limited(session):
            return
        delay = float(cfg.smtp_greeting_delay)
        if delay > 0 and self.mode is P.Mode.SMTP and not session.trusted and not self.implicit_tls:
            # RFC 5321 §4.3.1 / §3.1: a client waits for the greeting; one that talks first is a bot that
            # does not read replies (Postfix's postscreen "pregreet" test, sendmail's greet_pause)
            self._greeting = asyncio.get_running_loop().call_later(delay, self._greet, session)
            return
        self._greet(session)

    def _greet(self, session: P.Session) -> None:
        cfg = self.services.config
        self._greeting = None
        if self.transport is None or self.transport.is_closing():
            return
        self.conn = P.SMTPConnection(
            session,
            self.services.policy,
            self.services.hostname,
            self.services.limits,
            tls_available=self.services.tls_context is not None and not self.implicit_tls and self.mode is not P.Mode.LMTP,
            auth_without_tls=cfg.smtp_auth_plaintext_without_tls,
            sender_login_match=cfg.smtp_sender_login_match,
            mail_hook=self._check_mail if self.mode is not P.Mode.LMTP else None,
            rcpt_hook=self._check_rcpt if self.mode is P.Mode.SMTP and cfg.greylist_enabled else None,
            refused_hook=self._refused,
            new_qid=_new_qid_hex,
            room_for=self.services.room_for,
            xclient=self.services.is_proxy(self.peer),
        )
        log.event("connect", sid=self.sid, listener=self.listener, peer=self.peer, port=self.port,
                  tls=int(self.implicit_tls))
        self.metrics.sessions.inc()
        inbound = self.services.inbound
        if self.mode is P.Mode.SMTP and inbound.auth and not session.trusted:
            # the checks of the client's address, asked now and shared by the session's messages
            self._client_checks = inbound.client_checks(self.peer)
        if self.mode is P.Mode.SMTP and cfg.greylist_enabled and cfg.checks_dnswl and not session.trusted:
            # looked up while the client says EHLO and MAIL; a client on a DNSWL is not greylisted
            self._dnswl = asyncio.get_running_loop().create_task(self.services.inbound.dnswl(self.peer))
        self._pump()

    # -- greylisting and rate limits (fastmail.hygiene.greylist, .ratelimit) ----------------------------

    def _connection_limited(self, session: P.Session) -> bool:
        """ratelimit.connections_per_ip on the SMTP and submission listeners: past it, 421 4.7.0 instead of
        the greeting (RFC 5321 §3.1 allows 421 there) and the connection is closed."""
        cfg = self.services.config
        limit = int(cfg.ratelimit_connections_per_ip)
        if not limit or self.mode is P.Mode.LMTP or session.trusted:
            return False
        limiter = self.services.inbound.ratelimit
        if limiter is None or limiter.hit(ratelimit.CONNECTIONS, ratelimit.ip_key(self.peer), limit,
                                          float(cfg.ratelimit_connection_window)):
            return False
        log.event("connect_refused", sid=self.sid, listener=self.listener, peer=self.peer, port=self.port,
                  reply=_status(ratelimit.TOO_MANY_CONNECTIONS), reason="ratelimit")
        self._end = "ratelimit"
        assert self.transport is not None
        self.transport.write(ratelimit.TOO_MANY_CONNECTIONS.encode())
        self.transport.close()
        return True

    def _check_mail(self, session: P.Session, sender: str | None) -> Reply | None:
        """The message limits, looked at MAIL (counted when a message is accepted: _count_message)."""
        self._awl_counted = False
        cfg = self.services.config
        if session.user is not None:
            limit, kind, key = int(cfg.ratelimit_messages_per_user), ratelimit.MESSAGES_USER, session.user
        elif session.trusted:
            return None
        else:
            limit, kind, key = int(cfg.ratelimit_messages_per_ip), ratelimit.MESSAGES_IP, ratelimit.ip_key(session.peer)
        if not limit:
            return None
        limiter = self.services.inbound.ratelimit
        if limiter is None or not limiter.over(kind, key, limit, float(cfg.ratelimit_message_window)):
            return None
        self.metrics.rejected["ratelimit"].inc()
        log.event("refused", sid=self.sid, cmd="MAIL", reply=_status(ratelimit.TOO_MANY_MESSAGES),
                  reason="ratelimit", peer=session.peer, helo=session.helo or None, user=session.user,
                  sender=sender or "<>")
        return ratelimit.TOO_MANY_MESSAGES

    def _count_message(self, session: P.Session) -> None:
        cfg = self.services.config
        if session.user is not None and cfg.ratelimit_messages_per_user:
            kind, key = ratelimit.MESSAGES_USER, session.user
        elif session.user is None and not session.trusted and cfg.ratelimit_messages_per_ip:
            kind, key = ratelimit.MESSAGES_IP, ratelimit.ip_key(session.peer)
        else:
            return
        limiter = self.services.inbound.ratelimit
        if limiter is not None:
            limiter.add(kind, key, float(cfg.ratelimit_message_window))

    def _check_rcpt(self, session: P.Session, env: P.Envelope, rcpt: str) -> Reply | None:
        """Greylisting (RFC 6647) of unauthenticated mail on the SMTP listener, once the recipient is known
        to be valid: a refused RCPT is a 451 4.7.1 with the seconds to wait."""
        if session.user is not None or session.trusted:
            return None
        grey = self.services.inbound.greylist
        if grey is None or self._on_dnswl():
            return None
        decision = grey.check(session.peer, env.sender or "", rcpt, count=not self._awl_counted)
        if decision.outcome == "pass":
            self._awl_counted = True  # one pass per transaction counts towards auto-whitelisting
        reply = decision.reply
        if reply is None:
            return None
        self.metrics.rejected["greylisted"].inc()
        log.event("greylisted", sid=self.sid, peer=session.peer, sender=env.sender or "<>", rcpt=rcpt,
                  qid=env.qid or None, reply=_status(reply), wait=f"{decision.wait:.0f}")
        return reply

    def _on_dnswl(self) -> bool:
        """The client is on a checks.dnswl zone, as far as the lookup started at connect knows by now (one not
        answered yet counts as not listed: the client is greylisted, and its retry finds the answer)."""
        task = self._dnswl
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return False
        return task.result() is not None

    def _refused(self, r: P.Refusal) -> None:
        """The state machine refused a command: one line, Postfix's "reject:" — the reply, why, the client, and
        the transaction (queue id, sender) and address it was about."""
        if r.verb in ("MAIL", "RCPT", "DATA", "BDAT"):
            self.metrics.rejected[M.reject_reason(R.reason(r.reply))].inc()
        self._refusal_lines += 1
        if self._refusal_lines > MAX_REFUSAL_LINES:
            return
        conn = self.conn
        assert conn is not None
        session, env, verb = conn.session, r.envelope, r.verb
        qid = sender = rcpts = None
        if env is not None:
            qid, sender = env.qid or None, env.sender or "<>"
            if verb == "DATA" or verb == "BDAT":
                rcpts = len(env.rcpts)
        if verb == "MAIL":
            sender = r.address
        log.event("refused", sid=self.sid, qid=qid, cmd=verb[:32] or None, reply=_status(r.reply),
                  reason=R.reason(r.reply), peer=self.peer, helo=session.helo or None, user=session.user,
                  sender=sender, rcpt=r.address if verb == "RCPT" else None, rcpts=rcpts, arg=r.arg)

    def data_received(self, data: bytes) -> None:
        if self._greeting is not None:  # bytes before the greeting (smtp.greeting_delay)
            self._refuse_before_greeting(R.PREGREET, "pregreet", data)
            return
        super().data_received(data)

    def _refuse_before_greeting(self, reply: Reply, end: str, data: bytes = b"") -> None:
        """Instead of the greeting: `reply` (RFC 5321 §3.1 allows 554 and 421 there), then close."""
        if self._greeting is not None:
            self._greeting.cancel()
            self._greeting = None
        self._end = end
        if end == "pregreet":
            log.event("refused", sid=self.sid, cmd="CONNECT", reply=_status(reply), reason=end, peer=self.peer,
                      arg=data[:64].decode("latin-1"))
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(reply.encode())
            self.transport.close()

    def shutdown(self) -> None:
        if self._greeting is not None:
            self._refuse_before_greeting(R.SHUTTING_DOWN, "shutdown")
            return
        super().shutdown()

    def finish(self, exc: Exception | None) -> None:
        if self._greeting is not None:
            self._greeting.cancel()
            self._greeting = None
        if self._dnswl is not None and not self._dnswl.done():
            self._dnswl.cancel()
        if self._client_checks is not None:
            self._client_checks.close()
        conn = self.conn
        secs = f"{time.monotonic() - self.started:.3f}"
        if conn is None:
            log.event("disconnect", sid=self.sid, messages=0, secs=secs, end=self._end or "lost")
            return
        if not conn.closed and conn.in_data:
            # Abrupt disconnect: whatever was in flight without a reply is simply not accepted.
            env = conn.envelope
            log.event("disconnect_in_data", level=logging.WARNING, sid=self.sid,
                      qid=env.qid or None if env is not None else None)
        end = conn.end or self._end
        session = conn.session
        log.event("disconnect", sid=self.sid, messages=self.messages, secs=secs, commands=conn.commands,
                  refused=conn.refusals, helo=session.helo or None, user=session.user, end=end or "lost",
                  reply=_status(conn.end_reply) if conn.end_reply is not None else None,
                  after=conn.last_command or None if end is None else None)

    # -- driving the state machine ----------------------------------------------------------------------

    def _pump(self) -> None:
        conn, transport = self.conn, self.transport
        if conn is None or transport is None or transport.is_closing():
            return
        out = conn.take_output()
        if out:
            transport.write(out)
        request = conn.next_request()
        if request is not None:
            if isinstance(request, P.Close):
                self._close()
                return
            self._task = asyncio.get_running_loop().create_task(self._serve(request))
        self._set_reading()
        self._arm_timer(bool(out))

    def _arm_timer(self, fresh: bool = True) -> None:
        conn = self.conn
        if conn is None or conn.closed or conn.waiting:
            self.deadline = None
            return
        cfg = self.services.config
        self._arm(cfg.smtp_data_timeout if conn.in_data else cfg.smtp_command_timeout, fresh)

    @property
    def idle(self) -> bool:
        conn = self.conn
        return conn is None or (conn.envelope is None and not conn.waiting and not conn.in_data)

    async def _serve(self, request: P.Request) -> None:
        conn = self.conn
        assert conn is not None
        try:
            if isinstance(request, P.StartTLS):
                await self._starttls()
            elif isinstance(request, P.Authenticate):
                await self._authenticate(request)
            elif isinstance(request, P.Deliver):
                await self._deliver(request.envelope)
            elif isinstance(request, P.XClient):
                self._xclient(request)
        except Exception:
            logging.getLogger("fastmail.smtp").exception("request %s failed", type(request).__name__)
            self._end = "error"
            self._close()
            return
        self._pump()

    async def _starttls(self) -> None:
        if await self._upgrade_tls():
            assert self.conn is not None
            self.conn.tls_started()
        else:
            self._end = "tls_failed"

    async def _authenticate(self, req: P.Authenticate) -> None:
        conn = self.conn
        assert conn is not None
        ok, user_id = await self.services.authenticate(req.username, req.password, conn.session.peer)
        if ok and req.authzid and req.authzid.lower() != req.username.lower():
            ok = False  # no proxy authorization
        log.event("auth", sid=self.sid, user=req.username, mech=req.mechanism, ok=int(ok))
        self.metrics.auth["success" if ok else "failure"].inc()
        if not ok:
            await asyncio.sleep(self.services.auth_failure_delay)
            conn.auth_done(None)
        else:
            conn.auth_done(req.username.lower(), user_id)

    def _xclient(self, req: P.XClient) -> None:
        """XCLIENT from a proxy (docs/scaling.md): the client's address and, when the proxy authenticated
        the client (nginx asked our auth_http endpoint), its login."""
        conn = self.conn
        assert conn is not None
        session = conn.session
        peer = req.addr or session.peer
        user, user_id = session.user, session.user_id
        if req.login is not None:
            try:
                record = self.services.store.get_user(req.login) if req.login else None
            except Exception:  # a malformed address: no user
                record = None
            if req.login and record is None:
                log.event("xclient", sid=self.sid, addr=peer, login=req.login, ok=0)
                conn.xclient_done(None, None, peer, False, refused=R.XCLIENT_UNKNOWN_LOGIN)
                return
            user, user_id = (str(record["address"]), int(record["id"])) if record else (None, None)
        log.event("xclient", sid=self.sid, addr=peer, login=user, ok=1)
        conn.xclient_done(user, user_id, peer, self.services.is_trusted(peer))

    async def _dkim_sign(self, content: bytes) -> bytes:
        """An authenticated sender's message, with a DKIM-Signature for each key of its From domain (RFC 6376
        §5; ed25519 and RSA side by side, RFC 8463 §6).  Off the loop: an RSA signature is milliseconds."""
        keys = self.services.dkim
        assert keys is not None
        if keys.empty():
            return content  # no keys at all (the default): no From field to parse
        domain = author_domain(content)
        if domain is None or not keys.keys_for(domain):
            return content
        sig = await asyncio.get_running_loop().run_in_executor(None, keys.sign, content, domain)
        return sig + content

    async def _deliver(self, env: P.Envelope) -> None:
        conn = self.conn
        assert conn is not None
        services = self.services
        qhex = env.qid  # given at MAIL (the state machine's new_qid)
        qid = bytes.fromhex(qhex)
        header = P.received_header(conn.session, env, qhex, services.hostname)
        content = env.content
        if P.hops(content) >= P.MAX_HOPS:  # RFC 5321 §6.3: a mail loop (docs/scaling.md)
            log.event("refused", sid=self.sid, qid=qhex, cmd="BDAT" if env.bdat else "DATA",
                      reply=_status(R.TOO_MANY_HOPS), reason="hops", peer=self.peer, sender=env.sender or "<>",
                      rcpts=len(env.rcpts))
            conn.deliver_done(qhex, refused=R.TOO_MANY_HOPS)
            return
        folder = "INBOX"
        inbound = services.inbound
        if inbound.active and self.mode is P.Mode.SMTP and conn.session.user is None:
            tx = Transaction(ip=conn.session.peer, helo=conn.session.helo, mail_from=env.sender or "",
                             rcpts=[r.address for r in env.rcpts], qid=qhex, client=self._client_checks)
            content, verdict = await inbound.check(content, tx, authenticate=not conn.session.trusted)
            if verdict.reply is not None:
                code, enhanced, text = verdict.reply
                fields: dict[str, Any] = {
                    "sid": self.sid, "qid": qhex, "cmd": "BDAT" if env.bdat else "DATA",
                    "reply": f"{code} {enhanced}", "reason": "checks", "peer": self.peer, "helo": conn.session.helo or None,
                    "sender": env.sender or "<>", "rcpts": len(env.rcpts)}
                for key, value in verdict.log.items():
                    fields.setdefault(key, value)
                log.event("refused", **fields)
                self.metrics.rejected["checks"].inc()
                conn.deliver_done(qhex, refused=Reply(code, enhanced, text))
                return
            header += verdict.headers
            folder = verdict.folder or folder
            if verdict.log:
                log.event("checked", sid=self.sid, qid=qhex, folder=folder, **verdict.log)
        if services.dkim is not None and conn.session.user is not None:
            content = await self._dkim_sign(content)
        raw = header + content
        users: list[int] = []
        remote: list[dict[str, Any]] = []
        notices: list[dict[str, Any]] = []
        for rcpt in env.rcpts:
            for u in rcpt.users:
                if u not in users:
                    users.append(u)
            notify = rcpt.params.get("NOTIFY")
            if rcpt.users and env.sender and notify and "SUCCESS" in notify.upper().split(","):
                # RFC 3461 §6.2.2.2: delivered to a local mailbox, the final MTA sends the "delivered" notice
                notices.append({"to": rcpt.address, "rcpt": rcpt.address, "notify": notify,
                                "orcpt": rcpt.params.get("ORCPT"), "users": list(rcpt.users)})
            for ext in rcpt.external:
                remote.append({"to": ext, "rcpt": rcpt.address, "notify": rcpt.params.get("NOTIFY"),
                               "orcpt": rcpt.params.get("ORCPT")})
        params = {
            "ret": env.mail_params.get("RET"), "envid": env.mail_params.get("ENVID"),
            "body": env.mail_params.get("BODY"), "smtputf8": env.smtputf8,
            "auth": conn.session.user, "client": conn.session.peer, "helo": conn.session.helo,
            "dsn": {r.address: {"notify": r.params.get("NOTIFY"), "orcpt": r.params.get("ORCPT")}
                    for r in env.rcpts if r.params},
        }
        item = Incoming(qid=qid, raw=raw, sender=env.sender or "", local=users, remote=remote, params=params,
                        notices=notices,
                        bounce_over_quota=self.mode is not P.Mode.LMTP, folder=folder,
                        folder_special="\\Junk" if folder != "INBOX" else None)
        try:
            outcome = await services.committer.commit(item)
        except Exception as e:
            log.event("store_failed", level=logging.ERROR, sid=self.sid, qid=qhex, error=repr(e))
            self.metrics.rejected["storage"].inc()
            conn.deliver_done(qhex, failed=True, refused=R.INSUFFICIENT_STORAGE if storage_full(e) else None)
            return
        self._count_message(conn.session)
        local = len(users) - len(outcome.over_quota)
        if local > 0 or remote:
            self.messages += 1
            self.metrics.accepted.inc()
            log.event("accepted", sid=self.sid, qid=qhex, sender=env.sender or "<>", rcpts=len(env.rcpts),
                      local=local, remote=len(remote), size=len(raw),
                      over_quota=len(outcome.over_quota) or None, mode=self.mode.value, user=conn.session.user)
        else:  # every recipient over quota: nothing stored, the client gets 552 5.2.2
            self.metrics.rejected["mailbox_full"].inc()
            log.event("refused", sid=self.sid, qid=qhex, cmd="BDAT" if env.bdat else "DATA",
                      reply=_status(R.MAILBOX_FULL), reason="mailbox_full", peer=self.peer,
                      helo=conn.session.helo or None, user=conn.session.user, sender=env.sender or "<>",
                      rcpts=len(env.rcpts), size=len(raw))
        conn.deliver_done(qhex, set(outcome.over_quota))


def author_domain(content: bytes) -> str | None:
    """The one domain of the From field, or None (none, broken, or several domains: nothing to sign for)."""
    try:
        domains = dmarc.author_domains(content)
    except (dmarc.AuthorDomainError, ValueError):
        return None
    return domains[0] if len(domains) == 1 else None


def parse_networks(items: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(i, strict=False) for i in items]
