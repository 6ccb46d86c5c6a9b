"""The SMTP, submission and LMTP state machine, sans-IO (RFC 5321, 6409, 2033; 1870, 2920, 3030, 3207, 3461,
4954, 6152, 6531, 2034).

Bytes in with `receive(data)`, reply bytes out with `take_output()`, and requests for the driver (the asyncio
protocol in fastmail.server.smtp) from `next_request()`:

    StartTLS()               upgrade the transport, then call tls_started()
    Authenticate(...)        verify the credentials, then call auth_done(user or None)
    Deliver(envelope)        store the message durably, then call deliver_done(...)
    Close()                  flush the output and close

While a request is outstanding, further input is buffered and not interpreted (pipelining stays correct:
replies go out in command order).  Recipient and sender policy are asked synchronously through `Policy`.
All transitions live in this file.

For the log, the machine tells the driver of each refused command (`refused_hook`, a `Refusal`: the command
verb, the reply, the transaction, the address), counts the commands and refusals of the session and says why
it closed (`end`, `end_reply`).  A transaction gets its queue id when MAIL is accepted (`new_qid`), so every
line about a message carries the same id, from its first refused RCPT to its acceptance.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from enum import Enum, auto
from typing import Any, Protocol

from fastmail._core import data as core_data
from fastmail._core import lines as core_lines
from fastmail._core import smtp as core_smtp
from fastmail.proto import replies as R
from fastmail.proto.replies import Reply


class Mode(Enum):
    SMTP = "smtp"  # MTA ingress, port 25
    SUBMISSION = "submission"  # RFC 6409, AUTH required
    LMTP = "lmtp"  # RFC 2033


class State(Enum):
    GREET = auto()  # greeting sent, waiting for EHLO/HELO/LHLO
    READY = auto()  # no transaction
    MAIL = auto()  # MAIL accepted
    RCPT = auto()  # at least one RCPT accepted (or tried)
    DATA = auto()  # receiving DATA content
    BDAT = auto()  # receiving a BDAT chunk
    AUTH = auto()  # AUTH dialogue waiting for a client line
    WAIT = auto()  # a request to the driver is outstanding
    CLOSED = auto()


@dataclass(frozen=True)
class Limits:
    max_line_length: int = 4096
    max_recipients: int = 100
    max_message_size: int = 50 * 1024 * 1024
    max_errors: int = 10
    normalize_bare_lf: bool = True  # False: reject messages with bare LF (554 5.6.0)


@dataclass
class Recipient:
    address: str  # local@domain as given (domain lower-cased)
    params: dict[str, str | None]
    users: list[int]  # local users reached
    external: list[str]  # remote addresses reached (queue)


@dataclass
class Envelope:
    sender: str | None  # None: the null reverse-path <>
    mail_params: dict[str, str | None] = field(default_factory=dict)
    rcpts: list[Recipient] = field(default_factory=list)
    content: bytes = b""
    smtputf8: bool = False
    chunks: list[bytes] = field(default_factory=list)
    chunk_size: int = 0
    rcpt_tried: bool = False  # a RCPT was given, accepted or not (DATA then says 554, RFC 2920 §3.1)
    bdat: bool = False  # BDAT used in this transaction: DATA is then out of sequence
    too_big: bool = False
    bare_lf: bool = False
    qid: str = ""  # the queue id (hex), given when MAIL is accepted; "" without a new_qid factory


@dataclass
class Session:
    peer: str  # client IP
    mode: Mode
    helo: str = ""
    esmtp: bool = False
    tls: bool = False
    user: str | None = None  # authenticated address
    user_id: int | None = None
    trusted: bool = False  # client in trusted networks: may relay


class Policy(Protocol):
    """The driver's answers to policy questions; synchronous (LMDB reads are microseconds)."""

    def resolve(self, local: str, domain: str) -> tuple[list[int], list[str]] | None:
        """Local users and external addresses for a local-domain address; None if unknown."""

    def is_local_domain(self, domain: str) -> bool: ...

    def over_quota(self, user_id: int, size: int) -> bool: ...

    def sender_owned(self, user_id: int, local: str, domain: str) -> bool: ...


# -- requests to the driver ------------------------------------------------------------------------------


@dataclass
class StartTLS:
    pass


@dataclass
class Authenticate:
    mechanism: str
    username: str
    password: str
    authzid: str = ""


@dataclass
class Deliver:
    envelope: Envelope


@dataclass
class XClient:
    """XCLIENT from a trusted proxy (docs/scaling.md): the session continues as this client, then the
    driver calls xclient_done().  `login` None: not given; "": [UNAVAILABLE] (no user)."""

    addr: str | None
    helo: str | None
    login: str | None


@dataclass
class Close:
    pass


Request = StartTLS | Authenticate | Deliver | XClient | Close


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused command, for the driver's log line.  Never AUTH data or message content: for MAIL and RCPT
    the address (as parsed) or, when it was not parsed (a syntax error, or refused before parsing), the
    argument as sent (`arg`, at most 512 bytes, to be escaped by whoever prints it); nothing of any other
    command's argument."""

    verb: str  # the command ("" for a line too long to read)
    reply: Reply
    envelope: Envelope | None  # the transaction at the time (its qid and sender)
    address: str | None = None  # MAIL: the sender ("<>" for the null path); RCPT: the recipient
    arg: str | None = None


RefusedHook = Callable[[Refusal], None]

# The driver's policy checks of a transaction (greylisting, rate limits: fastmail.hygiene), synchronous like
# Policy; a Reply refuses the command (not counted as a client error), None lets it go on.
MailHook = Callable[[Session, str | None], Reply | None]  # (session, sender or None for <>) at MAIL
RcptHook = Callable[[Session, Envelope, str], Reply | None]  # (session, envelope, recipient) at RCPT, last

_MAIL_PARAMS = {"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH"}
_RCPT_PARAMS = {"NOTIFY", "ORCPT"}
_NO_VALUE = {"SMTPUTF8"}  # every other parameter must have "=value" (RFC 1870, 6152, 3461, 4954)


class SMTPConnection:
    """One client connection.  `tls_available`: the server can offer STARTTLS on this listener."""

    def __init__(
        self,
        session: Session,
        policy: Policy,
        hostname: str,
        limits: Limits = Limits(),
        tls_available: bool = False,
        auth_without_tls: bool = False,
        sender_login_match: bool = True,
        mail_hook: MailHook | None = None,
        rcpt_hook: RcptHook | None = None,
        refused_hook: RefusedHook | None = None,
        new_qid: Callable[[], str] | None = None,
        room_for: Callable[[int], bool] | None = None,
        xclient: bool = False,
    ) -> None:
        self.session = session
        self.xclient = xclient and session.mode is not Mode.LMTP  # the client is a configured proxy
        self.mail_hook = mail_hook
        self.room_for = room_for  # room_for(size): the store has room now for a message of this declared size
        self.rcpt_hook = rcpt_hook
        self.refused_hook = refused_hook
        self.new_qid = new_qid
        self.policy = policy
        self.hostname = hostname
        self.limits = limits
        self.tls_available = tls_available
        self.auth_without_tls = auth_without_tls
        self.sender_login_match = sender_login_match
        self.lmtp = session.mode is Mode.LMTP
        self.state = State.GREET
        self.envelope: Envelope | None = None
        self.errors = 0  # failed commands that count towards max_errors
        self.commands = 0  # command lines read (not AUTH continuation lines)
        self.refusals = 0  # negative replies to commands, counted or not
        self.end: str | None = None  # why it closed: quit, timeout, shutdown, too_many_errors, bad_bdat
        self.end_reply: Reply | None = None  # the 421 it closed with, if any
        self._verb = ""  # the command being answered, and for MAIL/RCPT its argument and parsed address
        self._args = b""
        self._address: str | None = None
        self._lines = core_lines.LineReader(limits.max_line_length)
        self._data: Any = None  # core DataDecoder during DATA
        self._bdat_left = 0
        self._bdat_last = False
        self._out: list[bytes] = []
        self._requests: list[Request] = []
        self._auth_step: tuple[str, str] | None = None  # (mechanism, username so far)
        self._resume_state = State.READY
        greeting = f"{hostname} {'LMTP' if self.lmtp else 'ESMTP'} fastmail"
        self._reply(Reply(220, "", greeting))

    # -- driver API -----------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Feed bytes from the client.  Interprets as much as it can before a request must be answered."""
        if self.state is State.CLOSED:
            return
        self._lines.feed(data)
        self._process()

    def take_output(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_request(self) -> Request | None:
        return self._requests.pop(0) if self._requests else None

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def waiting(self) -> bool:
        return self.state is State.WAIT

    @property
    def in_data(self) -> bool:
        return self.state in (State.DATA, State.BDAT)

    @property
    def last_command(self) -> str:
        """The verb of the last command line read ("" before the first), for "lost connection after RCPT"."""
        return self._verb

    def tls_started(self) -> None:
        """The transport is now TLS: the session starts over (RFC 3207 §4.2)."""
        self.session.tls = True
        self.session.helo = ""
        self.session.esmtp = False
        self.envelope = None
        self.state = State.GREET
        self._process()

    def auth_done(self, user: str | None, user_id: int | None = None, temporary: bool = False) -> None:
        if user is not None:
            self.session.user, self.session.user_id = user, user_id
            self._reply(R.AUTH_OK)
        else:
            self._error(R.AUTH_TEMP if temporary else R.AUTH_FAILED)
        self._resume(State.READY)

    def xclient_done(self, user: str | None, user_id: int | None, peer: str, trusted: bool,
                     refused: Reply | None = None) -> None:
        """The XClient request finished: the session starts over as the proxied client (a new greeting,
        EHLO again), authenticated as `user` when a LOGIN was given; or `refused` and nothing changed."""
        if refused is not None:
            self._error(refused)
            self._resume(State.READY)
            return
        s = self.session
        s.peer, s.user, s.user_id, s.trusted = peer, user, user_id, trusted
        s.helo, s.esmtp = "", False
        self.envelope = None
        self._reply(Reply(220, "", f"{self.hostname} ESMTP fastmail"))
        self._resume(State.GREET)

    def deliver_done(self, qid: str, over_quota: set[int] | frozenset[int] = frozenset(), failed: bool = False,
                     refused: Reply | None = None) -> None:
        """The Deliver request finished: answer the client (one reply, or one per recipient in LMTP).
        `refused`: a check refused the message (nothing stored); that reply for it."""
        env = self.envelope
        assert env is not None
        delivered = refused is None and not failed and any(
            r.external or any(u not in over_quota for u in r.users) for r in env.rcpts)
        if not delivered:
            self.refusals += 1  # the message, once (the driver logged why)
        if refused is not None:
            for _ in env.rcpts if self.lmtp else (None,):
                self._reply(refused)
        elif self.lmtp:
            for rcpt in env.rcpts:
                if failed:
                    self._reply(R.LOCAL_ERROR)
                elif rcpt.users and all(u in over_quota for u in rcpt.users):
                    self._reply(R.MAILBOX_FULL.with_text(f"<{rcpt.address}> Mailbox full"))
                else:
                    self._reply(Reply(250, "2.1.5", f"<{rcpt.address}> delivered as {qid}"))
        elif failed:
            self._reply(R.LOCAL_ERROR)
        else:
            self._reply(Reply(250, "2.0.0", f"Ok: queued as {qid}") if delivered else R.MAILBOX_FULL)
        self.envelope = None
        self._resume(State.READY)

    def shutdown(self) -> None:
        """The server is stopping: say so and close (RFC 5321 §3.8)."""
        if self.state is not State.CLOSED:
            self._reply(R.SHUTTING_DOWN)
            self._close("shutdown", R.SHUTTING_DOWN)

    def timed_out(self) -> None:
        if self.state is not State.CLOSED:
            self._reply(R.TIMEOUT)
            self._close("timeout", R.TIMEOUT)

    # -- internals ------------------------------------------------------------------------------------

    def _reply(self, reply: Reply) -> None:
        self._out.append(reply.encode())

    def _error(self, reply: Reply) -> None:
        """A failed command: reply, count it, and close after too many (a flood or a confused client)."""
        self._refuse(reply)
        self.errors += 1
        if self.errors >= self.limits.max_errors and self.state is not State.CLOSED:
            self._reply(R.TOO_MANY_ERRORS)
            self._close("too_many_errors", R.TOO_MANY_ERRORS)

    def _refuse(self, reply: Reply, notify: bool = True) -> None:
        """A negative reply to the command being answered, told to the driver's refused_hook unless the driver
        gave the reply itself (its MAIL/RCPT hooks log their own refusals)."""
        self._reply(reply)
        self.refusals += 1
        hook = self.refused_hook
        if notify and hook is not None:
            verb, address, arg = self._verb, None, None
            if verb == "MAIL" or verb == "RCPT":
                address = self._address
                if address is None:
                    arg = self._args[:512].decode("utf-8", "replace")
            hook(Refusal(verb, reply, self.envelope, address, arg))

    def _close(self, reason: str = "", reply: Reply | None = None) -> None:
        self.state = State.CLOSED
        if self.end is None:  # the first reason holds (a bad BDAT may also be the error too many)
            self.end, self.end_reply = reason or None, reply
        self._requests.append(Close())

    def _request(self, request: Request, resume: State) -> None:
        self._resume_state = resume
        self.state = State.WAIT
        self._requests.append(request)

    def _resume(self, state: State) -> None:
        if self.state is State.CLOSED:
            return
        self.state = state
        self._process()

    def _process(self) -> None:
        while True:
            state = self.state
            if state is State.WAIT or state is State.CLOSED:
                return
            if state is State.DATA:
                if not self._feed_data():
                    return
                continue
            if state is State.BDAT:
                if not self._feed_bdat():
                    return
                continue
            try:
                line = self._lines.readline()
            except core_lines.LineTooLong:
                self._verb, self._args, self._address = "", b"", None
                self._error(R.LINE_TOO_LONG)
                continue
            if line is None:
                return
            if state is State.AUTH:
                self._auth_line(line)
            else:
                self._command(line)

    def _command(self, line: bytes) -> None:
        verb, args = core_smtp.parse_command(line)
        self.commands += 1
        self._verb, self._args, self._address = verb, args, None
        handler = _HANDLERS.get(verb)
        if handler is None:
            self._error(R.UNRECOGNIZED)
            return
        handler(self, args)

    def _need_helo(self) -> bool:
        if self.state is State.GREET:
            self._error(R.NO_HELO)
            return True
        return False

    # -- one method per command -----------------------------------------------------------------------

    def cmd_ehlo(self, args: bytes, esmtp: bool = True) -> None:
        if self.lmtp:
            self._error(R.LMTP_NO_HELO)
            return
        self._hello(args, esmtp)

    def cmd_helo(self, args: bytes) -> None:
        self.cmd_ehlo(args, esmtp=False)

    def cmd_lhlo(self, args: bytes) -> None:
        if not self.lmtp:
            self._error(R.UNRECOGNIZED)
            return
        self._hello(args, True)

    def _hello(self, args: bytes, esmtp: bool) -> None:
        name = args.strip().split(b" ", 1)[0] if args.strip() else b""
        if not name:
            self._error(R.SYNTAX_PARAMS)
            return
        self.session.helo = name.decode("utf-8", "replace")
        self.session.esmtp = esmtp
        self.envelope = None
        self.state = State.READY
        if not esmtp:
            self._reply(Reply(250, "", self.hostname))
            return
        lines = [self.hostname, "PIPELINING", f"SIZE {self.limits.max_message_size}", "8BITMIME", "SMTPUTF8",
                 "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"]
        if self.tls_available and not self.session.tls:
            lines.append("STARTTLS")
        if self._auth_offered():
            lines.append("AUTH PLAIN LOGIN")
        if self.xclient:
            lines.append("XCLIENT " + " ".join(_XCLIENT_ATTRS))
        lines.append("HELP")
        self._reply(Reply(250, "", "\n".join(lines)))

    def _auth_offered(self) -> bool:
        return self.session.mode is Mode.SUBMISSION and (self.session.tls or self.auth_without_tls)

    def cmd_starttls(self, args: bytes) -> None:
        if self._need_helo():
            return
        if args:
            self._error(R.SYNTAX_PARAMS)
        elif not self.tls_available or self.session.tls:
            self._error(R.TLS_UNAVAILABLE if not self.session.tls else R.BAD_SEQUENCE)
        else:
            # RFC 3207 §4 / RFC 2920 §3.1: anything pipelined after STARTTLS is discarded, never interpreted
            # after the upgrade (command injection, CVE-2011-0411).
            self._lines.take_buffer()
            self._reply(R.STARTTLS_GO)
            self._request(StartTLS(), State.GREET)

    def cmd_auth(self, args: bytes) -> None:
        if self._need_helo():
            return
        if self.session.mode is not Mode.SUBMISSION:
            self._error(R.UNRECOGNIZED)
            return
        if not self.session.tls and not self.auth_without_tls:
            self._error(R.NEED_TLS)
            return
        if self.session.user is not None:
            self._error(R.ALREADY_AUTH)
            return
        if self.envelope is not None:
            self._error(R.BAD_SEQUENCE)
            return
        parts = args.split()
        if not parts or len(parts) > 2:
            self._error(R.SYNTAX_PARAMS)
            return
        mech = parts[0].upper().decode("ascii", "replace")
        initial = parts[1] if len(parts) == 2 else None
        if mech not in ("PLAIN", "LOGIN"):
            self._error(R.AUTH_MECH)
            return
        self._auth_step = (mech, "")
        if initial is None:
            self.state = State.AUTH
            self._reply(Reply(334, "", "" if mech == "PLAIN" else "VXNlcm5hbWU6"))  # "Username:"
        else:
            self._auth_line(initial)

    def _auth_line(self, line: bytes) -> None:
        assert self._auth_step is not None
        mech, username = self._auth_step
        if line == b"*":
            self._auth_step = None
            self.state = State.READY
            self._error(R.AUTH_CANCELLED)
            return
        try:
            decoded = base64.b64decode(line, validate=True) if line != b"=" else b""
        except (binascii.Error, ValueError):
            self._auth_step = None
            self.state = State.READY
            self._error(R.AUTH_BAD_B64)
            return
        if mech == "PLAIN":
            fields = decoded.split(b"\0")
            self._auth_step = None
            if len(fields) != 3:
                self.state = State.READY
                self._error(R.AUTH_FAILED)
                return
            authzid, user, password = (f.decode("utf-8", "replace") for f in fields)
            self._request(Authenticate("PLAIN", user, password, authzid), State.READY)
        elif not username:
            self._auth_step = (mech, decoded.decode("utf-8", "replace") or "\0")
            self.state = State.AUTH
            self._reply(Reply(334, "", "UGFzc3dvcmQ6"))  # "Password:"
        else:
            self._auth_step = None
            self._request(Authenticate("LOGIN", username, decoded.decode("utf-8", "replace")), State.READY)

    def cmd_mail(self, args: bytes) -> None:
        if self._need_helo():
            return
        if self.envelope is not None:
            self._error(R.NESTED_MAIL)
            return
        if self.session.mode is Mode.SUBMISSION and self.session.user is None:
            self._error(R.NEED_AUTH if (self.session.tls or self.auth_without_tls) else R.NEED_TLS)
            return
        try:
            address, params = core_smtp.parse_mail_from(args)
        except core_smtp.SMTPSyntaxError as e:
            self._error(Reply(e.code, e.enhanced, e.text))
            return
        self._address = "<>" if address is None else _join(address)
        if not _keys_ok(params, _MAIL_PARAMS) or (params and not self.session.esmtp):
            self._error(R.BAD_PARAM)  # parameters are extensions: none after HELO (RFC 5321 §4.1.1.11)
            return
        if not _values_ok(params) or not _xtext_ok(params.get("ENVID")):
            self._error(R.SYNTAX_PARAMS)
            return
        size = params.get("SIZE")
        if size is not None:
            if not (size.isascii() and size.isdigit()):  # RFC 1870 §3: 1*DIGIT; "²" is a str digit int() refuses
                self._error(R.SYNTAX_PARAMS)
                return
            if int(size) > self.limits.max_message_size:
                self._error(R.TOO_BIG)
                return
            if self.room_for is not None and not self.room_for(int(size)):
                # RFC 1870 §6.1: more than the server can take now (the data's free disk space): 452 at MAIL,
                # a temporary condition of ours, not counted as a client error
                self._refuse(R.INSUFFICIENT_STORAGE)
                return
        body = (params.get("BODY") or "7BIT").upper()
        if body not in ("7BIT", "8BITMIME"):
            self._error(R.BAD_PARAM)
            return
        ret = params.get("RET")
        if ret is not None and ret.upper() not in ("FULL", "HDRS"):
            self._error(R.SYNTAX_PARAMS)
            return
        if (
            self.session.mode is Mode.SUBMISSION
            and self.sender_login_match
            and self.session.user_id is not None
            and (address is None or not self.policy.sender_owned(self.session.user_id, *address))
        ):
            self._error(R.SENDER_NOT_OWNED)
            return
        sender = None if address is None else _join(address)
        if self.mail_hook is not None:
            refused = self.mail_hook(self.session, sender)
            if refused is not None:
                self._refuse(refused, notify=False)
                return
        self.envelope = Envelope(sender, params, smtputf8="SMTPUTF8" in params,
                                 qid=self.new_qid() if self.new_qid is not None else "")
        self.state = State.MAIL
        self._reply(R.SENDER_OK)

    def cmd_rcpt(self, args: bytes) -> None:
        if self._need_helo():
            return
        env = self.envelope
        if env is None:
            self._error(R.NEED_MAIL)
            return
        env.rcpt_tried = True
        if len(env.rcpts) >= self.limits.max_recipients:
            self._refuse(R.TOO_MANY_RCPTS)  # RFC 5321 §4.5.3.1.10: 452, and not a client error
            return
        try:
            address, params = core_smtp.parse_rcpt_to(args, env.smtputf8)
        except core_smtp.SMTPSyntaxError as e:
            self._error(Reply(e.code, e.enhanced, e.text))
            return
        self._address = _join(address)
        if not _keys_ok(params, _RCPT_PARAMS) or not _notify_ok(params.get("NOTIFY")) or (params and not self.session.esmtp):
            self._error(R.BAD_PARAM)
            return
        if not _values_ok(params) or not _orcpt_ok(params.get("ORCPT")):
            self._error(R.SYNTAX_PARAMS)
            return
        local, domain = address
        if not domain:  # <Postmaster> (RFC 5321 §4.5.1)
            resolved = self._postmaster()
        elif self.policy.is_local_domain(domain):
            resolved = self.policy.resolve(local, domain)
        elif self.lmtp or not (self.session.user is not None or self.session.trusted):
            self._error(R.RELAY_DENIED)
            return
        else:
            resolved = ([], [_join(address)])
        if resolved is None:
            self._error(R.USER_UNKNOWN)
            return
        users, external = resolved
        size = env.mail_params.get("SIZE")
        declared = int(size) if size else 0
        if users and all(self.policy.over_quota(u, declared) for u in users) and not external:
            self._refuse(R.MAILBOX_FULL_TEMP)
            return
        rcpt = _join(address) if domain else "postmaster"
        if self.rcpt_hook is not None:
            refused = self.rcpt_hook(self.session, env, rcpt)
            if refused is not None:
                self._refuse(refused, notify=False)
                return
        env.rcpts.append(Recipient(rcpt, params, users, external))
        self.state = State.RCPT
        self._reply(R.RCPT_OK)

    def _postmaster(self) -> tuple[list[int], list[str]] | None:
        domain = self.hostname.lower()
        while domain:
            if self.policy.is_local_domain(domain):
                return self.policy.resolve("postmaster", domain)
            domain = domain.partition(".")[2]
        return None

    def cmd_data(self, args: bytes) -> None:
        if self._need_helo():
            return
        env = self.envelope
        if args:
            self._error(R.SYNTAX_PARAMS)
        elif env is None:
            self._error(R.NEED_MAIL)
        elif env.bdat:
            self._error(R.BAD_SEQUENCE)  # RFC 3030 §2: no DATA after BDAT in one transaction
        elif not env.rcpts:
            self._error(R.NO_VALID_RCPTS if env.rcpt_tried else R.NEED_RCPT)
        else:
            self._reply(R.DATA_START)
            self._data = core_data.DataDecoder(self.limits.max_message_size, self.limits.normalize_bare_lf)
            self.state = State.DATA
            rest = self._lines.take_buffer()
            if rest:
                self._feed_data(rest)

    def _feed_data(self, data: bytes | None = None) -> bool:
        """Move content into the DATA decoder; True when DATA ended and processing continues."""
        if data is None:
            data = self._lines.take_buffer()
            if not data:
                return False
        decoder = self._data
        used = decoder.feed(data)
        if not decoder.done:
            return False
        if used < len(data):
            self._lines.feed(data[used:])
        self._data = None
        env = self.envelope
        assert env is not None
        if decoder.too_big:
            self.state = State.READY
            self._error(R.TOO_BIG)
            self.envelope = None
        elif (decoder.bare_lf or decoder.bare_cr) and not self.limits.normalize_bare_lf:
            self.state = State.READY
            self._error(R.BARE_LF)
            self.envelope = None
        else:
            env.content = decoder.getvalue()
            env.bare_lf = decoder.bare_lf
            self._request(Deliver(env), State.READY)
        return True

    def cmd_bdat(self, args: bytes) -> None:
        parts = args.split()
        if not 1 <= len(parts) <= 2 or not parts[0].isdigit() or (len(parts) == 2 and parts[1].upper() != b"LAST"):
            # The chunk length is unknown, so the stream cannot be resynchronised (RFC 3030 §2).
            self._error(R.SYNTAX_PARAMS)
            self._close("bad_bdat")
            return
        self._bdat_left = int(parts[0])
        self._bdat_last = len(parts) == 2
        env = self.envelope
        if env is not None:
            env.bdat = True
        # Without a transaction the chunk is still read, then refused (RFC 3030 §3).
        self.state = State.BDAT
        self._feed_bdat()

    def _feed_bdat(self) -> bool:
        """Consume chunk bytes; True when the chunk is complete and processing continues."""
        rest = self._lines.take_buffer()
        if self._bdat_left:
            if not rest:
                return False
            chunk, rest = rest[: self._bdat_left], rest[self._bdat_left :]
            self._bdat_left -= len(chunk)
            env = self.envelope
            if env is not None and not env.too_big:
                env.chunk_size += len(chunk)
                if env.chunk_size > self.limits.max_message_size:
                    env.too_big = True
                    env.chunks.clear()
                else:
                    env.chunks.append(chunk)
        if rest:
            self._lines.feed(rest)
        if self._bdat_left:
            return False
        env = self.envelope
        if env is None or not env.rcpts:
            self.state = State.READY if self.session.helo else State.GREET
            self._error(R.NEED_RCPT if env is None else R.NO_VALID_RCPTS)
            return True
        if not self._bdat_last:
            self.state = State.RCPT
            if not env.too_big:
                self._reply(R.CHUNK_OK.with_text(f"{env.chunk_size} octets received"))
            else:
                self._reply(R.CHUNK_OK.with_text("chunk discarded"))
            return True
        if env.too_big:
            self.state = State.READY
            self._error(R.TOO_BIG)
            self.envelope = None
            return True
        content, bare = core_data.crlf_normalize(b"".join(env.chunks))
        if bare and not self.limits.normalize_bare_lf:
            self.state = State.READY
            self._error(R.BARE_LF)
            self.envelope = None
            return True
        env.content = content
        env.bare_lf = bare
        env.chunks = []
        self._request(Deliver(env), State.READY)
        return True

    def cmd_xclient(self, args: bytes) -> None:
        """Postfix's XCLIENT (XCLIENT_README), as nginx's mail proxy sends it after authenticating the client
        itself: `XCLIENT ADDR=192.0.2.1 LOGIN=user NAME=[UNAVAILABLE]`.  Only for configured proxies."""
        if not self.xclient:
            self._error(R.XCLIENT_DENIED)
            return
        if self._need_helo():
            return
        if self.envelope is not None:
            self._error(R.BAD_SEQUENCE)
            return
        attrs: dict[str, str] = {}
        for item in args.split():
            name, sep, raw = item.partition(b"=")
            key = name.decode("ascii", "replace").upper()
            if not sep or key not in _XCLIENT_ATTRS or not raw.isascii():
                self._error(R.SYNTAX_PARAMS)
                return
            try:  # xtext (RFC 3461 §4); nginx sends the values as they are
                value = core_smtp.xtext_decode(raw.decode("ascii"))
            except core_smtp.SMTPSyntaxError:
                value = raw.decode("ascii")
            if not value.isprintable():
                self._error(R.SYNTAX_PARAMS)
                return
            attrs[key] = value
        if not attrs:
            self._error(R.SYNTAX_PARAMS)
            return
        addr = attrs.get("ADDR")
        if addr is not None:
            if addr.upper() in ("[UNAVAILABLE]", "[TEMPUNAVAIL]"):
                addr = None
            else:
                addr = addr[5:] if addr.upper().startswith("IPV6:") else addr
                if not _is_ip(addr):
                    self._error(R.SYNTAX_PARAMS)
                    return
        login = attrs.get("LOGIN")
        if login is not None and login.upper() in ("[UNAVAILABLE]", "[TEMPUNAVAIL]"):
            login = ""
        helo = attrs.get("HELO")
        self._request(XClient(addr, helo if helo and not helo.startswith("[") else None, login), State.READY)

    def cmd_rset(self, args: bytes) -> None:
        self.envelope = None
        if self.state is not State.GREET:
            self.state = State.READY
        self._reply(R.OK)

    def cmd_noop(self, args: bytes) -> None:
        self._reply(R.OK)

    def cmd_quit(self, args: bytes) -> None:
        self._reply(R.BYE.with_text(f"{self.hostname} closing connection"))
        self._close("quit")

    def cmd_vrfy(self, args: bytes) -> None:
        if not args:
            self._error(R.SYNTAX_PARAMS)
        else:
            self._reply(R.VRFY)  # RFC 5321 §3.5.3: never confirm or deny an address

    def cmd_expn(self, args: bytes) -> None:
        self._error(R.NOT_IMPLEMENTED)

    def cmd_help(self, args: bytes) -> None:
        self._reply(R.HELP)


_HANDLERS = {
    "EHLO": SMTPConnection.cmd_ehlo,
    "HELO": SMTPConnection.cmd_helo,
    "LHLO": SMTPConnection.cmd_lhlo,
    "STARTTLS": SMTPConnection.cmd_starttls,
    "AUTH": SMTPConnection.cmd_auth,
    "MAIL": SMTPConnection.cmd_mail,
    "RCPT": SMTPConnection.cmd_rcpt,
    "DATA": SMTPConnection.cmd_data,
    "BDAT": SMTPConnection.cmd_bdat,
    "RSET": SMTPConnection.cmd_rset,
    "NOOP": SMTPConnection.cmd_noop,
    "QUIT": SMTPConnection.cmd_quit,
    "VRFY": SMTPConnection.cmd_vrfy,
    "EXPN": SMTPConnection.cmd_expn,
    "HELP": SMTPConnection.cmd_help,
    "XCLIENT": SMTPConnection.cmd_xclient,
}

_XCLIENT_ATTRS = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN", "DESTADDR", "DESTPORT")


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _join(address: tuple[str, str]) -> str:
    local, domain = address
    return f"{local}@{domain}" if domain else local


def _keys_ok(params: dict[str, str | None], allowed: set[str]) -> bool:
    return all(k in allowed for k in params)


def _values_ok(params: dict[str, str | None]) -> bool:
    """A value exactly where the parameter takes one: "SIZE" or "NOTIFY" alone is a syntax error."""
    return all((v is None) == (k in _NO_VALUE) for k, v in params.items())


def _xtext_ok(value: str | None) -> bool:
    if value is None:
        return True
    try:
        core_smtp.xtext_decode(value)
    except core_smtp.SMTPSyntaxError:
        return False
    return True


def _orcpt_ok(value: str | None) -> bool:
    """RFC 3461 §4.2: ORCPT=addr-type ";" xtext, addr-type an atom (e.g. rfc822, utf-8)."""
    if value is None:
        return True
    kind, sep, addr = value.partition(";")
    return bool(sep and kind and addr) and kind.replace("-", "").isalnum() and kind.isascii() and _xtext_ok(addr)


def _notify_ok(value: str | None) -> bool:
    """RFC 3461 §4.1: NEVER alone, or a list of SUCCESS, FAILURE, DELAY."""
    if value is None:
        return True
    items = value.upper().split(",")
    if items == ["NEVER"]:
        return True
    return all(i in ("SUCCESS", "FAILURE", "DELAY") for i in items) and len(set(items)) == len(items)


# RFC 5321 §4.1.2 Dot-string of atext (RFC 6531 §3.3: UTF-8 allowed): a local part that needs no quotes.
_DOT_STRING = re.compile(r'[^\x00-\x20\x7f"(),.:;<>@\[\\\]]+(?:\.[^\x00-\x20\x7f"(),.:;<>@\[\\\]]+)*')


def _as_path(address: str) -> str:
    """An address as the client wrote it in the Path: the parser unquoted the local part, quote it again."""
    local, at, domain = address.rpartition("@")
    if not at or _DOT_STRING.fullmatch(local):
        return address
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"@' + domain


MAX_HOPS = 50  # Received: fields a message may carry (Postfix's hopcount_limit): more is a mail loop


def hops(content: bytes) -> int:
    """The Received: fields in the header of `content` (RFC 5321 §6.3: a loop shows as a growing count;
    e.g. two cluster nodes whose account copies each place a user on the other)."""
    end = content.find(b"\r\n\r\n")
    head = (content if end < 0 else content[:end + 2]).lower()
    return head.count(b"\nreceived:") + head.startswith(b"received:")


_trace_dates: dict[int, str] = {}


def _trace_date(now: float) -> str:
    """RFC 5322 date of the trace header, formatted once per second (it showed in the profile)."""
    sec = int(now)
    date = _trace_dates.get(sec)
    if date is None:
        _trace_dates.clear()
        date = _trace_dates[sec] = formatdate(sec, localtime=False)
    return date


def received_header(session: Session, envelope: Envelope, qid: str, hostname: str, now: float | None = None) -> bytes:
    """The trace header prepended to every accepted message (RFC 5321 §4.4, protocol names RFC 3848)."""
    if session.mode is Mode.LMTP:
        proto = "LMTP"
    else:
        proto = "ESMTP" if session.esmtp else "SMTP"
    if session.tls:
        proto += "S"
    if session.user is not None:
        proto += "A"
    if envelope.smtputf8:
        proto = "UTF8" + proto.replace("ESMTP", "SMTP").replace("LMTP", "LMTP")
    helo = "".join(c for c in session.helo if c.isprintable() and c not in "()\\")[:255] or "unknown"
    peer = session.peer
    literal = f"[IPv6:{peer}]" if ":" in peer else f"[{peer}]"
    for_clause = f"\r\n\tfor <{_as_path(envelope.rcpts[0].address)}>" if len(envelope.rcpts) == 1 else ""
    date = _trace_date(now if now is not None else time.time())
    text = f"Received: from {helo} ({literal})\r\n\tby {hostname} (fastmail) with {proto} id {qid}{for_clause};\r\n\t{date}\r\n"
    return text.encode("utf-8")
