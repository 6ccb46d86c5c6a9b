"""The IMAP session state machine, sans-IO (RFC 9051 IMAP4rev2 and RFC 3501 IMAP4rev1, with IDLE, UIDPLUS,
MOVE, LITERAL+, SASL-IR, SPECIAL-USE, LIST-EXTENDED, LIST-STATUS, NAMESPACE, ENABLE, ID, UNSELECT,
CHILDREN, ESEARCH, SEARCHRES, CONDSTORE/QRESYNC, BINARY, STATUS=SIZE, APPENDLIMIT, UTF8=ACCEPT, MULTIAPPEND).

Bytes in with `receive(data)`, response bytes out with `take_output()`, and requests for the driver (the
asyncio protocol in fastmail.server.imap) from `next_request()`: StartTLS, Authenticate, Call (a store
write, run off the loop), Commit (APPEND through the group committer), CommitAll (MULTIAPPEND, all or
none), Flush (back-pressure), Close -- see fastmail.proto.imap_requests; the driver answers with
resolve(result) or fail(exc).

Each command is one handler method (`cmd_<name>`); a handler that needs the driver is a generator that
yields a request and receives its result, so a command reads top to bottom.  While a request is
outstanding, input is buffered and not interpreted.  Reads of the store (LMDB, microseconds) are made
directly.  All state transitions live in this file: NOT_AUTHENTICATED -> AUTHENTICATED <-> SELECTED ->
LOGOUT (RFC 9051 §3).  Commands on mailbox names, which change no state, are in imap_mailbox.py; FETCH
rendering in imap_fetch.py, SEARCH in imap_search.py, the selected mailbox's view in imap_view.py.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import ipaddress
import re
import time
from array import array
from collections.abc import Callable, Generator
from dataclasses import dataclass
from enum import Enum, auto
from functools import partial
from typing import Any

from fastmail._core import fetch as core_fetch
from fastmail._core import imap as core
from fastmail.hygiene.learn import verdict as learn_verdict
from fastmail.proto import imap_responses as S
from fastmail.proto.imap_fetch import (
    BATCH,
    Batch,
    Fetcher,
    flag_list,
    needs_body,
    needs_meta,
    parse_date_time,
    parse_items,
    sets_seen,
)
from fastmail.proto.imap_mailbox import MailboxCommands
from fastmail.proto.imap_requests import (
    Authenticate,
    Call,
    Close,
    Commit,
    CommitAll,
    Flush,
    Request,
    StartTLS,
)
from fastmail.proto.imap_responses import Status
from fastmail.proto.imap_search import BadCharset, Parser, compress, esearch, parse_return, run_search
from fastmail.proto.imap_view import View, absent, pick
from fastmail.store import mailboxes as M
from fastmail.store.mailboxes import MailboxError, Mailboxes, Message
from fastmail.store.store import Incoming, StoreError, new_qid, storage_full


class State(Enum):
    NOT_AUTHENTICATED = auto()
    AUTHENTICATED = auto()
    SELECTED = auto()
    LOGOUT = auto()


@dataclass(frozen=True)
class Limits:
    max_line: int = 64 * 1024  # command line bytes, literals excluded
    max_message: int = 50 * 1024 * 1024  # APPEND literal (advertised as APPENDLIMIT)
    max_literal_preauth: int = 8 * 1024  # any literal before login
    max_bad: int = 20  # BAD responses before the session is closed
    flush_bytes: int = 256 * 1024  # FETCH output buffered before a Flush request
    # FETCH output rendered by the core (a batch of 256 messages) handed to the transport once it is this
    # large, so that the client reads and parses one batch while the next renders
    stream_bytes: int = 16 * 1024


class _ReadLine:
    """Internal: the handler waits for a bare client line (AUTHENTICATE response, IDLE's DONE)."""


_READ_LINE = _ReadLine()
_IDLE_WAIT = _ReadLine()

SYSTEM_FLAGS = {f.lower(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")}
_ATOM_FLAG = re.compile(r"[!#$&'+\-.0-9:<>=?@A-Z^_`a-z|~\x80-\U0010ffff]+\Z")
SYNTAX = core.IMAPSyntaxError

Handler = Callable[[Any, core.Command], Any]


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


class IMAPConnection(MailboxCommands):
    def __init__(self, boxes: Mailboxes, limits: Limits, *, peer: str = "127.0.0.1", tls: bool = False,
                 tls_available: bool = False, plaintext_loopback: bool = True,
                 plaintext_anywhere: bool = False,
                 learn: Callable[[bool, list[bytes]], None] | None = None,
                 on_command: Callable[[str, float], None] | None = None) -> None:
        self.boxes = boxes
        self._on_command = on_command  # (name, seconds) of each command completed but IDLE (fastmail.metrics)
        self._cmd_started = 0.0
        self._learn = learn  # (spam, blob ids): a transfer into / out of Junk (fastmail.hygiene.learn)
        self.limits = limits
        self.peer = peer
        self.tls = tls
        self.tls_available = tls_available
        self._plain_ok = plaintext_anywhere or (plaintext_loopback and _is_loopback(peer))
        self.state = State.NOT_AUTHENTICATED
        self.user: str | None = None
        self.user_id: int | None = None
        self.view: View | None = None
        self.rev2 = False
        self.utf8 = False
        self.condstore = False
        self.qresync = False
        self.saved: list[int] | None = None  # SEARCHRES "$" (UIDs)
        self.bad_count = 0
        self.closed = False
        self.idling = False
        self._reader = core.CommandReader(limits.max_line, limits.max_literal_preauth)
        self._out: list[bytes] = []
        self._outlen = 0
        self._gen: Generator[Any, Any, Any] | None = None
        self._cmd: core.Command | None = None
        self._request: Any = None
        self._handed = False
        self._write(S.GREETING.with_code("CAPABILITY " + self.capabilities()).line())

    # -- the driver's side ---------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        self._reader.feed(data)

    def take_output(self) -> bytes:
        out = b"".join(self._out)
        self._out = []
        self._outlen = 0
        return out

    def take_output_parts(self) -> list[bytes]:
        """The output as the buffers it was made of (for writelines: a fetched message is not copied)."""
        out, self._out = self._out, []
        self._outlen = 0
        return out

    @property
    def waiting(self) -> bool:
        """A request is outstanding with the driver: do not read more input."""
        return self._handed and self._request is not None

    def next_request(self) -> Request | None:
        """Interpret buffered input until a request for the driver comes up (returned once) or more
        input is needed (None)."""
        while not self.closed:
            req = self._request
            if req is not None:
                if req is _READ_LINE or req is _IDLE_WAIT:
                    try:
                        line = self._reader.next_line()
                    except core.CommandTooLong:
                        self._request = None
                        self._resume(None, SYNTAX("Line too long"))
                        continue
                    if line is None:
                        return None
                    self._request = None
                    if req is _IDLE_WAIT:
                        self.idling = False
                    self._resume(line)
                    continue
                if self._handed:
                    return None
                self._handed = True
                if isinstance(req, Close):
                    self.closed = True
                return req  # type: ignore[no-any-return]
            if not self._next_command():
                return None
        return None

    def resolve(self, result: Any) -> None:
        """The outstanding request is done: resume its command with the result."""
        self._request = None
        self._handed = False
        self._resume(result)

    def fail(self, exc: BaseException) -> None:
        self._request = None
        self._handed = False
        self._resume(None, exc)

    def changed(self) -> None:
        """The selected mailbox may have changed (the worker's change poll): an IDLE session is told now
        (RFC 9051 §6.3.13); any other session at its next command."""
        if self.idling and self.view is not None:
            self._sync(True)

    def timed_out(self) -> None:
        self._write(S.BYE_TIMEOUT.line())
        self._close()

    def shutdown(self) -> None:
        self._write(S.BYE_SHUTDOWN.line())
        self._close()

    @property
    def buffered(self) -> int:
        """Input bytes received and not yet interpreted (a command under way)."""
        return int(self._reader.buffered)

    @property
    def busy(self) -> bool:
        """A command is in progress (not counting IDLE)."""
        return self._gen is not None and not self.idling

    @property
    def selected_mailbox(self) -> int | None:
        return self.view.id if self.view is not None else None

    # -- plumbing ------------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        self._outlen += len(data)

    def _close(self) -> None:
        """End the session: the next request handed out is Close (after the output so far)."""
        self.state = State.LOGOUT
        self._gen = None
        self.idling = False
        self._request = Close()
        self._handed = False

    def _next_command(self) -> bool:
        """Read and start the next command; False when more input is needed."""
        try:
            ev = self._reader.next()
        except core.LiteralTooBig as e:
            status = S.TOOBIG if e.sync and self.state is not State.NOT_AUTHENTICATED else S.LITERAL_TOO_BIG
            self._bad(e.tag, status)
            return True
        except core.CommandTooLong as e:
            self._bad(e.tag, S.LINE_TOO_LONG)
            return True
        except core.IMAPSyntaxError as e:
            self._bad(e.tag, S.SYNTAX.with_text(e.text))
            return True
        if ev is None:
            return False
        if type(ev) is core.NeedContinuation:
            self._write(b"+ Ready for literal data\r\n")
            return True
        assert type(ev) is core.Command
        self._start(ev)
        return True

    def _bad(self, tag: bytes | None, status: Status) -> None:
        if status.kind == "BAD":
            self.bad_count += 1
        self._write(status.line(tag or b"*"))
        if self.bad_count >= self.limits.max_bad:
            self._write(S.BYE_TOO_MANY_ERRORS.line())
            self._close()

    def _start(self, cmd: core.Command) -> None:
        entry = _COMMANDS.get(cmd.name)
        if entry is None:
            self._bad(cmd.tag, S.UNKNOWN_COMMAND)
            return
        handler, states = entry
        if self.state not in states:
            self._bad(cmd.tag, S.NO_MAILBOX if self.state is State.AUTHENTICATED and State.SELECTED in states
                      else S.WRONG_STATE)
            return
        self._cmd = cmd
        if self._on_command is not None:
            self._cmd_started = time.perf_counter()
        if self.view is not None and cmd.name.startswith("UID "):
            # UID commands may carry EXPUNGE (RFC 9051 §7.5.1): announce pending ones first, so that the
            # command works on the same view the client now has.
            self._sync(True)
        try:
            result = handler(self, cmd)
        except Exception as e:
            self._finish_error(e)
            return
        if inspect.isgenerator(result):
            self._gen = result
            self._resume(None)
        else:
            self._finish(result)

    def _resume(self, value: Any, exc: BaseException | None = None) -> None:
        gen = self._gen
        if gen is None:
            return
        try:
            req = gen.throw(exc) if exc is not None else gen.send(value)
        except StopIteration as stop:
            self._gen = None
            self._finish(stop.value)
            return
        except Exception as e:
            self._gen = None
            self._finish_error(e)
            return
        self._request = req
        self._handed = False

    def _finish_error(self, e: Exception) -> None:
        if isinstance(e, MailboxError):
            status = _MAILBOX_ERRORS.get(e.code, S.CANNOT)
        elif isinstance(e, core.IMAPSyntaxError):
            status = S.SYNTAX.with_text(e.text)
        elif isinstance(e, BadCharset):
            status = S.BADCHARSET
        elif storage_full(e):
            # RFC 5530 §3: OVERQUOTA is the user's quota; a full disk is a subsystem down for a while
            status = S.UNAVAILABLE.with_text("Insufficient system storage; try again later")
        else:
            import logging

            logging.getLogger("fastmail.imap").exception("command %s failed", self._cmd.name if self._cmd else "?")
            status = S.SERVER_BUG
        self._gen = None
        self._finish(status)

    def _finish(self, status: Status | None) -> None:
        """Send the tagged completion, preceded by the mailbox updates the command may carry."""
        cmd = self._cmd
        self._cmd = None
        if cmd is None or self._request is not None and isinstance(self._request, Close):
            return
        if status is None:
            status = S.OK
        if self.view is not None and self.state is State.SELECTED and status.kind != "BAD":
            self._sync(cmd.name not in ("FETCH", "STORE", "SEARCH"))
        if status.kind == "BAD":
            self._bad(cmd.tag, status)
        else:
            self._write(status.line(cmd.tag))
        if self._on_command is not None and cmd.name != "IDLE":
            self._on_command(cmd.name, time.perf_counter() - self._cmd_started)

    def _sync(self, allow_expunge: bool) -> None:
        view = self.view
        assert view is not None
        for line in view.sync(allow_expunge, self.condstore, self.qresync):
            self._write(line)
        if view.deleted and allow_expunge and not view.gone:
            pass  # all messages announced gone; the mailbox stays selected and empty

    # -- names and strings ---------------------------------------------------------------------------

    def capabilities(self) -> str:
        caps = ["IMAP4rev1", "IMAP4rev2", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE", "UNSELECT"]
        if self.state is State.NOT_AUTHENTICATED:
            if self.tls_available and not self.tls:
                caps.append("STARTTLS")
            if self.tls or self._plain_ok:
                caps += ["AUTH=PLAIN", "AUTH=LOGIN"]
            else:
                caps.append("LOGINDISABLED")
        else:
            caps += ["UIDPLUS", "MULTIAPPEND", "MOVE", "CHILDREN", "SPECIAL-USE", "LIST-EXTENDED", "LIST-STATUS", "ESEARCH",
                     "SEARCHRES", "CONDSTORE", "QRESYNC", "BINARY", "STATUS=SIZE",
                     f"APPENDLIMIT={self.limits.max_message}", "UTF8=ACCEPT", "QUOTA", "QUOTA=RES-STORAGE"]
        return " ".join(caps)

    def _uids(self, token: Any, uid: bool) -> list[int]:
        """UIDs of the selected mailbox a sequence set (or "$") names."""
        view = self.view
        assert view is not None
        if type(token) is not str:
            raise SYNTAX("Invalid sequence set")
        ranges = core.parse_sequence_set(token)
        if ranges == core.SEARCHRES:
            saved = self.saved or []
            return [u for u in saved if view.has(u)]
        assert isinstance(ranges, list)
        return view.resolve(ranges, uid)

    # -- any state (RFC 9051 §6.1) -------------------------------------------------------------------

    def cmd_capability(self, cmd: core.Command) -> Status:
        self._write(b"* CAPABILITY " + self.capabilities().encode() + b"\r\n")
        return S.OK

    def cmd_noop(self, cmd: core.Command) -> Status:
        return S.OK

    def cmd_logout(self, cmd: core.Command) -> Status:
        self._write(S.BYE_LOGOUT.line())
        self._write(S.LOGOUT_OK.line(cmd.tag))
        self._cmd = None
        self._close()
        return S.OK

    def cmd_id(self, cmd: core.Command) -> Status:
        # RFC 2971: the client's parameters are accepted and ignored
        if len(cmd.args) != 1 or not (type(cmd.args[0]) is list or core.nstring(cmd.args[0]) is None):
            raise SYNTAX("ID takes a list or NIL")
        self._write(b'* ID ("name" "fastmail")\r\n')
        return S.OK

    # -- not authenticated (§6.2) --------------------------------------------------------------------

    def cmd_starttls(self, cmd: core.Command) -> Generator[Any, Any, Status]:
        if self.tls:
            return S.ALREADY_TLS
        if not self.tls_available:
            return S.NO_TLS
        self._write(S.BEGIN_TLS.line(cmd.tag))
        self._cmd = None
        self._reader.take_buffer()  # plaintext sent after STARTTLS is dropped (RFC 9051 §11.1)
        yield StartTLS()
        self.tls = True
        return None  # type: ignore[return-value]

    def _login(self, mechanism: str, username: str, password: str) -> Generator[Any, Any, Status]:
        result = yield Authenticate(mechanism, username, password)
        if isinstance(result, Status):
            return result  # refused by the driver's policy (throttled, too many sessions)
        ok, user_id = result
        if not ok:
            return S.AUTH_FAILED
        self.user = username.lower()
        self.user_id = user_id
        self.state = State.AUTHENTICATED
        # After login the literal limit is the message size limit (APPEND): a new reader takes over the
        # unread input.
        rest = self._reader.take_buffer()
        self._reader = core.CommandReader(self.limits.max_line, self.limits.max_message)
        self._reader.feed(rest)
        return S.LOGGED_IN.with_code("CAPABILITY " + self.capabilities())

    def cmd_login(self, cmd: core.Command) -> Generator[Any, Any, Status]:
        if len(cmd.args) != 2:
            raise SYNTAX("LOGIN takes a user name and a password")
        user = core.astring(cmd.args[0]).decode("utf-8", "replace")
        password = core.astring(cmd.args[1]).decode("utf-8", "replace")
        if not (self.tls or self._plain_ok):
            return S.LOGIN_DISABLED
        return (yield from self._login("LOGIN", user, password))

    def cmd_authenticate(self, cmd: core.Command) -> Generator[Any, Any, Status]:
        """AUTHENTICATE PLAIN (RFC 4616) or LOGIN (draft-murchison-sasl-login: "Username:" then
        "Password:"), each with an optional initial response (SASL-IR, RFC 4959); "*" cancels (RFC 9051
        §6.2.2)."""
        if not cmd.args or len(cmd.args) > 2 or type(cmd.args[0]) is not str:
            raise SYNTAX("AUTHENTICATE takes a mechanism and an optional initial response")
        mechanism = cmd.args[0].upper()
        if mechanism not in ("PLAIN", "LOGIN"):
            return S.BAD_MECHANISM
        if not (self.tls or self._plain_ok):
            return S.PRIVACY_REQUIRED
        initial: bytes | None = None
        if len(cmd.args) == 2:  # SASL-IR (RFC 4959): "=" is an empty initial response
            arg = cmd.args[1]
            if type(arg) is not str:
                raise SYNTAX("Invalid initial response")
            initial = b"" if arg == "=" else arg.encode()
        if mechanism == "LOGIN":
            username = yield from self._sasl_step(b"Username:", initial)
            if isinstance(username, Status):
                return username
            password = yield from self._sasl_step(b"Password:", None)
            if isinstance(password, Status):
                return password
            return (yield from self._login("LOGIN", username.decode("utf-8", "replace"),
                                           password.decode("utf-8", "replace")))
        first = yield from self._sasl_step(b"", initial)
        if isinstance(first, Status):
            return first
        parts = first.split(b"\0")
        if len(parts) != 3:
            return S.AUTH_FAILED
        authzid, authcid, password_s = (p.decode("utf-8", "replace") for p in parts)
        if authzid and authzid.lower() != authcid.lower():
            return S.AUTH_FAILED  # no proxy authorization
        return (yield from self._login("PLAIN", authcid, password_s))

    def _sasl_step(self, challenge: bytes, response: bytes | None) -> Generator[Any, Any, bytes | Status]:
        """One SASL round: send the challenge (base64) and read the client's line, unless `response` was
        given already (an initial response); the decoded response, or the status that ends the exchange."""
        if response is None:
            self._write(b"+ " + base64.b64encode(challenge) + b"\r\n")
            line = yield _READ_LINE
            if line is None or line.strip() == b"*":
                return S.AUTH_CANCELLED
            response = line.strip()
        try:
            return base64.b64decode(response, validate=True)
        except (binascii.Error, ValueError):
            return S.SYNTAX.with_text("Invalid base64")

    # -- authenticated (§6.3) ------------------------------------------------------------------------

    def cmd_enable(self, cmd: core.Command) -> Status:
        if not cmd.args:
            raise SYNTAX("ENABLE takes capability names")
        enabled = []
        for arg in cmd.args:
            if type(arg) is not str:
                raise SYNTAX("Invalid capability name")
            cap = arg.upper()
            if cap == "IMAP4REV2" and not self.rev2:
                self.rev2 = self.utf8 = True
                enabled.append("IMAP4rev2")
            elif cap == "UTF8=ACCEPT" and not self.utf8:
                self.utf8 = True
                enabled.append("UTF8=ACCEPT")
            elif cap == "CONDSTORE" and not self.condstore:
                self.condstore = True
                enabled.append("CONDSTORE")
            elif cap == "QRESYNC" and not self.qresync:
                self.qresync = self.condstore = True
                enabled.append("QRESYNC")
        self._write(b"* ENABLED" + b"".join(b" " + e.encode() for e in enabled) + b"\r\n")
        return S.OK

    def cmd_select(self, cmd: core.Command) -> Status:
        """SELECT / EXAMINE (RFC 9051 §6.3.2, §6.3.3; RFC 7162 CONDSTORE and QRESYNC parameters)."""
        readonly = cmd.name == "EXAMINE"
        if not cmd.args or len(cmd.args) > 2:
            raise SYNTAX("SELECT takes a mailbox and optional parameters")
        name = self._name_in(cmd.args[0])
        qresync_args: list[Any] | None = None
        if len(cmd.args) == 2:
            params = cmd.args[1]
            if type(params) is not list:
                raise SYNTAX("Invalid SELECT parameters")
            i = 0
            while i < len(params):
                p = params[i]
                if type(p) is str and p.upper() == "CONDSTORE":
                    self.condstore = True
                    i += 1
                elif type(p) is str and p.upper() == "QRESYNC" and i + 1 < len(params) \
                        and type(params[i + 1]) is list:
                    if not self.qresync:
                        return S.SYNTAX.with_text("QRESYNC is not enabled")
                    qresync_args = params[i + 1]
                    i += 2
                else:
                    raise SYNTAX("Unknown SELECT parameter")
        if self.view is not None:
            self.view = None
            self.state = State.AUTHENTICATED
            self._write(b"* OK [CLOSED] Previous mailbox closed\r\n")  # RFC 7162 §3.2.11, RFC 9051
        assert self.user_id is not None
        rec = self.boxes.get(self.user_id, name)
        messages: list[Message] = []
        if qresync_args is None:  # the UIDs and what FLAGS and UNSEEN need, no record decoded
            summary = self.boxes.select_summary(rec["id"]) if rec is not None else None
            if summary is None:
                return S.NONEXISTENT
            rec, uids, keywords, first_unseen = summary
            view = View(self.boxes, rec, uids, readonly)
            view.flags.extend(k for k in keywords if k not in view.flags)
        else:  # QRESYNC compares every message's mod-sequence
            snap = self.boxes.snapshot(rec["id"]) if rec is not None else None
            if snap is None:
                return S.NONEXISTENT
            rec, messages = snap
            view = View(self.boxes, rec, [m.uid for m in messages], readonly)
            for m in messages:
                for f in m.flags:
                    if f not in view.flags:
                        view.flags.append(f)
            first_unseen = next((i for i, m in enumerate(messages, 1) if M.SEEN not in m.flags), 0)
        w = self._write
        self._flags_responses(view)
        w(b"* %d EXISTS\r\n" % len(view.uids))
        if not self.rev2:
            w(b"* 0 RECENT\r\n")
            if first_unseen:
                w(b"* OK [UNSEEN %d] First unseen\r\n" % first_unseen)
        w(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % rec["uidvalidity"])
        w(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % rec["uidnext"])
        w(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % rec["modseq"])
        if self.rev2:
            w(b"* LIST () \"/\" " + self._name_out(rec["name"]) + b"\r\n")
        self.view = view
        self.state = State.SELECTED
        if qresync_args is not None:
            self._qresync(view, qresync_args, messages)
        return S.SELECTED_RO if readonly else S.SELECTED_RW

    def _flags_responses(self, view: View) -> None:
        """FLAGS and PERMANENTFLAGS: at SELECT, and again when a new keyword comes into use (RFC 9051
        §7.3.5)."""
        self._write(b"* FLAGS " + flag_list(view.flags) + b"\r\n")
        perm = flag_list(view.flags + ["\\*"]) if not view.readonly else b"()"
        self._write(b"* OK [PERMANENTFLAGS " + perm + b"] Flags permitted\r\n")

    def _qresync(self, view: View, args: list[Any], messages: list[Message]) -> None:
        """SELECT ... (QRESYNC (uidvalidity modseq [known-uids])) (RFC 7162 §3.2.5): what was expunged and
        what changed since the client's mod-sequence."""
        if len(args) < 2:
            raise SYNTAX("QRESYNC needs UIDVALIDITY and MODSEQ")
        validity = core.number(args[0], nz=True)
        modseq = core.number(args[1])
        if validity != view.uidvalidity:
            return
        given: list[tuple[int, int]] | None = None
        if len(args) >= 3 and type(args[2]) is str:
            ranges = core.parse_sequence_set(args[2])
            if isinstance(ranges, list):
                given = ranges
        gone = self.boxes.expunged_since(view.id, modseq)
        if gone is None:
            # Expunges after the client's mod-sequence are forgotten (below the mailbox's expunge floor):
            # every UID of its known range, or 1:UIDNEXT-1, that does not exist now (RFC 7162 §3.2.5.2).
            text = absent(given or [(1, 0)], view.uids, view.uidnext - 1)
        else:
            if given is not None:
                gone = pick(gone, given, view.uidnext)
            text = compress(gone)
        if text:
            self._write(b"* VANISHED (EARLIER) " + text.encode() + b"\r\n")
        for m in messages:
            if m.modseq > modseq:
                self._write(view.fetch_flags(m, True, True))

    def cmd_append(self, cmd: core.Command) -> Generator[Any, Any, Status]:
        """APPEND mailbox 1*([(flags)] [date-time] literal) (RFC 9051 §6.3.12; UTF8 (literal8) of RFC 6855;
        several messages: MULTIAPPEND, RFC 3502).  OK [APPENDUID] only once the messages are durable
        (ARCHITECTURE §3): one message through the group commit, several in one segment write and one
        LMDB transaction, so that either all of them are appended or none (RFC 3502 §3)."""
        args = list(cmd.args)
        if len(args) < 2:
            raise SYNTAX("APPEND takes a mailbox and a message")
        name = self._name_in(args.pop(0))
        messages: list[tuple[list[str], int | None, bytes]] = []
        while args:
            flags: list[str] = []
            date: int | None = None
            if type(args[0]) is list:
                flags = _flags(args.pop(0))
            if args and type(args[0]) is bytes:
                date = parse_date_time(args.pop(0))
                if date is None:
                    raise SYNTAX("Invalid date-time")
            if len(args) >= 2 and type(args[0]) is str and args[0].upper() == "UTF8" and type(args[1]) is list \
                    and len(args[1]) == 1:
                args[0:2] = args[1]
            if not args or type(args[0]) is not core.Literal:
                raise SYNTAX("APPEND takes message literals")
            messages.append((flags, date, args.pop(0).data))
        for _, _, data in messages:
            if not data:
                return S.CANNOT.with_text("Empty message")
            if len(data) > self.limits.max_message:
                return S.TOOBIG
        assert self.user_id is not None
        rec = self.boxes.get(self.user_id, name)
        if rec is None:
            return S.TRYCREATE
        items = [Incoming(qid=new_qid(), raw=data, sender="", local=[self.user_id], mailbox_id=rec["id"],
                          flags=flags, internaldate=date) for flags, date, data in messages]
        if len(items) > 1:
            validity, uids = yield CommitAll(items)  # MailboxError [TRYCREATE] / [OVERQUOTA]: nothing stored
            return S.OK.with_code(f"APPENDUID {validity} {compress(uids)}")
        outcome = yield Commit(items[0])
        if outcome.no_mailbox:
            return S.TRYCREATE
        if outcome.over_quota or self.user_id not in outcome.uids:
            return S.OVERQUOTA
        return S.OK.with_code(f"APPENDUID {outcome.uidvalidity} {outcome.uids[self.user_id]}")

    def cmd_idle(self, cmd: core.Command) -> Generator[Any, Any, Status]:
        """IDLE (RFC 2177, RFC 9051 §6.3.13): updates flow as the worker's change poll reports them."""
        self._write(b"+ idling\r\n")
        if self.view is not None:
            self._sync(True)
        self.idling = True
        line = yield _IDLE_WAIT
        self.idling = False
        if line is None or line.strip().upper() != b"DONE":
            return S.SYNTAX.with_text("Expected DONE")
        return S.IDLE_DONE

    # -- selected (§6.4) -----------------------------------------------------------------------------

    def cmd_check(self, cmd: core.Command) -> Status:
        return S.OK

    def cmd_close(self, cmd: core.Command) -> Generator[Any, Any, Status]:
        view = self.view
        assert view is not None
        if cmd.name == "CLOSE" and not view.readonly:
            yield Call(self.boxes.expunge, (view.id, None))  # silently: no EXPUNGE responses (§6.4.1)
        self.view = None
        self.state = State.AUTHENTICATED
        return S.OK

    def cmd_expunge(self, cmd: core.Command) -> Generator[Any, Any, Status]:
        view = self.view
        assert view is not None
        uids: list[int] | None = None
        if cmd.name == "UID EXPUNGE":
            if len(cmd.args) != 1:
                raise SYNTAX("UID EXPUNGE takes a UID set")
            uids = self._uids(cmd.args[0], True)
        elif cmd.args:
            raise SYNTAX("EXPUNGE takes no arguments")
        if view.readonly:
            return S.READ_ONLY
        if uids == []:
            return S.OK
        yield Call(self.boxes.expunge, (view.id, uids))
        return S.OK

    def cmd_search(self, cmd: core.Command) -> Generator[Any, Any, Status]:
        view = self.view
        assert view is not None
        uid = cmd.name == "UID SEARCH"
        opts, args = parse_return(list(cmd.args))
        parser = Parser(args, lambda tok, as_uid: set(self._uids(tok, as_uid)))
        pred = parser.parse()
        if parser.modseq:
            self.condstore = True
        matched: list[tuple[int, int, int]] = yield Call(run_search, (
            view.id, array("I", view.uids), pred, self.boxes, parser.needs_meta, parser.needs_body,
            parser.envelope_tests))
        numbers = [u if uid else seq for seq, u, _ in matched]
        modseq = max((ms for _, _, ms in matched), default=0) if parser.modseq else None
        if opts is not None and "SAVE" in opts:
            self.saved = [u for _, u, _ in matched]
            opts = opts - {"SAVE"}
            if not opts:
                return S.OK
        if opts is not None or self.rev2:
            self._write(esearch(cmd.tag, uid, opts or {"ALL"}, numbers, modseq))
        else:
            line = b"* SEARCH" + b"".join(b" %d" % n for n in numbers)
            if modseq is not None and numbers:
                line += b" (MODSEQ %d)" % modseq
            self._write(line + b"\r\n")
        return S.OK

    def cmd_fetch(self, cmd: core.Command) -> Generator[Any, Any, Status]:
        view = self.view
        assert view is not None
        uid = cmd.name == "UID FETCH"
        if len(cmd.args) not in (2, 3):
            raise SYNTAX("FETCH takes a sequence set and items")
        items = parse_items(cmd.args[1])
        changedsince: int | None = None
        vanished = False
        if len(cmd.args) == 3:
            mods = cmd.args[2]
            if type(mods) is not list:
                raise SYNTAX("Invalid FETCH modifiers")
            i = 0
            while i < len(mods):
                mod = str(mods[i]).upper() if type(mods[i]) is str else ""
                if mod == "CHANGEDSINCE" and i + 1 < len(mods):
                    changedsince = core.number(mods[i + 1])
                    self.condstore = True
                    i += 2
                elif mod == "VANISHED" and uid and self.qresync:
                    vanished = True
                    i += 1
                else:
                    raise SYNTAX("Unknown FETCH modifier")
            if vanished and changedsince is None:
                raise SYNTAX("VANISHED needs CHANGEDSINCE")
        if "MODSEQ" in items:
            self.condstore = True
        uids = self._uids(cmd.args[0], uid)
        if vanished and changedsince is not None:
            wanted = set(uids) if uids else set()
            ranges = core.parse_sequence_set(cmd.args[0])
            gone = self.boxes.expunged_since(view.id, changedsince)
            if gone is None:  # forgotten: every UID of the set not in the mailbox (RFC 7162 §3.2.6, §3.2.5.2)
                text = absent(ranges if isinstance(ranges, list) else [(1, 0)], view.uids, view.uidnext - 1)
            else:
                if isinstance(ranges, list):
                    gone = [u for u in gone if any(lo <= u <= (hi or u) for lo, hi in ranges) and u not in wanted]
                text = compress(gone)
            if text:
                self._write(b"* VANISHED (EARLIER) " + text.encode() + b"\r\n")
        seen_set: set[int] = set()
        if sets_seen(items) and not view.readonly:
            live = [u for u in uids if u not in view.gone]
            if live:  # store_flags changes only those not seen yet
                changed, _ = yield Call(self.boxes.store_flags, (view.id, live, "+", [M.SEEN]))
                view.update(changed)
                seen_set = {m.uid for m in changed if changedsince is None or m.modseq > changedsince}
        loader = Batch(self.boxes, needs_meta(items), needs_body(items))
        fetcher = Fetcher(items, loader.body, loader.meta, uid, changedsince is not None)
        # The common item lists straight from the encoded records (fastmail._core.fetch); a batch it
        # cannot render (an older record or no stored wire form) goes the general way below.
        order = None if seen_set else core_fetch.item_order(fetcher.items)
        wires = order is not None and any(c in core_fetch.WIRE_ITEMS for c in order)
        since = -1 if changedsince is None else changedsince
        whole, whole_uid = _whole_message_only(fetcher.items)
        issued = False
        for start in range(0, len(uids), BATCH):
            want = uids[start: start + BATCH]
            if order is not None:
                render = partial(core_fetch.render_batch, want=want, view=view.uids, order=order, changedsince=since)
                done = self.boxes.render_records(view.id, want, wires, render, buffers=True)
                if done is not None:
                    data, found = done
                    if found < len(want):
                        issued = True
                    if data:
                        self._write(data)
                    if self._outlen >= self.limits.stream_bytes:
                        yield Flush()
                    continue
            chunk = view.messages(want)  # current flags; the expunged are missing
            if len(chunk) < len(want):
                issued = True
            if changedsince is not None:
                chunk = [m for m in chunk if m.modseq > changedsince]
            loader.load(chunk)
            if whole is not None and not seen_set:
                # the whole message (a client downloading mail): its bytes as stored, framed, no copy
                body, write, seq = loader.body, self._write, view.seq
                for m in chunk:
                    try:
                        raw = body(m.blob)
                    except StoreError:
                        issued = True
                        continue
                    write(whole % ((seq(m.uid), m.uid, len(raw)) if whole_uid else (seq(m.uid), len(raw))))
                    write(raw)
                    write(b")\r\n")
                    if self._outlen >= self.limits.flush_bytes:
                        yield Flush()
                continue
            for m in chunk:
                try:
                    parts = fetcher.render_parts(view.seq(m.uid), m, m.uid in seen_set)
                except StoreError:
                    issued = True  # expunged by another session and its bytes released
                    continue
                for part in parts:
                    self._write(part)
                if self._outlen >= self.limits.flush_bytes:
                    yield Flush()
        if issued:
            return S.SOME_EXPUNGED
        return S.OK

    def cmd_store(self, cmd: core.Command) -> Generator[Any, Any, Status]:
        view = self.view
        assert view is not None
        uid = cmd.name == "UID STORE"
        args = list(cmd.args)
        if len(args) < 3:
            raise SYNTAX("STORE takes a sequence set, an item and flags")
        seqset = args.pop(0)
        unchangedsince: int | None = None
        if type(args[0]) is list:
            mods = args.pop(0)
            if len(mods) != 2 or str(mods[0]).upper() != "UNCHANGEDSINCE":
                raise SYNTAX("Unknown STORE modifier")
            unchangedsince = core.number(mods[1])
            self.condstore = True
        if len(args) < 2 or type(args[0]) is not str:
            raise SYNTAX("STORE takes an item and flags")
        item = args.pop(0).upper()
        silent = item.endswith(".SILENT")
        base = item[:-7] if silent else item
        if base not in ("FLAGS", "+FLAGS", "-FLAGS"):
            raise SYNTAX("Invalid STORE item")
        flags = _flags(args[0] if len(args) == 1 and type(args[0]) is list else args)
        uids = self._uids(seqset, uid)
        if view.readonly:
            return S.READ_ONLY
        live = [u for u in uids if u not in view.gone]
        new_keywords = [f for f in flags if f not in view.flags]
        if new_keywords and base != "-FLAGS":
            view.flags.extend(new_keywords)
            self._flags_responses(view)
        changed, refused = yield Call(self.boxes.store_flags, (view.id, live, base[0] if base[0] in "+-" else "",
                                                                flags, unchangedsince))
        view.update(changed)
        if not silent or unchangedsince is not None:
            done = {m.uid for m in changed}
            gone = set(refused)
            show = [u for u in live if u not in gone and (not silent or u in done)]
            self._flags_fetches(view, show, uid)
        if refused:
            nums = refused if uid else [view.seq(u) for u in refused]
            return S.MODIFIED.with_code("MODIFIED " + compress(nums))
        if len(live) < len(uids):
            return S.SOME_EXPUNGED
        return S.OK

    def _flags_fetches(self, view: View, uids: list[int], uid: bool) -> None:
        """The untagged "* n FETCH ([UID u ]FLAGS (...)[ MODSEQ (m)])" of the current records of `uids`
        (ascending): rendered by the core from the encoded records, a batch at a time; a batch it
        cannot render goes through View.fetch_flags (the same bytes)."""
        order = bytes(([core_fetch.UID] if uid else []) + [core_fetch.FLAGS]
                      + ([core_fetch.MODSEQ] if self.condstore else []))
        for start in range(0, len(uids), BATCH):
            want = uids[start: start + BATCH]
            render = partial(core_fetch.render_batch, want=want, view=view.uids, order=order, changedsince=-1)
            done = self.boxes.render_records(view.id, want, False, render)
            if done is not None:
                if done[0]:
                    self._write(done[0])
                continue
            for m in view.messages(want):
                self._write(view.fetch_flags(m, uid, self.condstore))

    def cmd_copy(self, cmd: core.Command) -> Generator[Any, Any, Status]:
        view = self.view
        assert view is not None
        uid = cmd.name.startswith("UID ")
        move = cmd.name.endswith("MOVE")
        if len(cmd.args) != 2:
            raise SYNTAX("COPY takes a sequence set and a mailbox")
        uids = self._uids(cmd.args[0], uid)
        assert self.user_id is not None
        dest = self.boxes.get(self.user_id, self._name_in(cmd.args[1]))
        if dest is None:
            return S.TRYCREATE
        if move and view.readonly:
            return S.READ_ONLY
        live = [u for u in uids if u not in view.gone]
        if not live:
            return S.NOTHING_MOVED if not uids else S.SOME_EXPUNGED
        validity, pairs = yield Call(self.boxes.copy, (view.id, dest["id"], live, move))
        if not pairs:
            return S.SOME_EXPUNGED
        if self._learn is not None:
            self._report(view, dest, [b for _, b in pairs])
        code = f"COPYUID {validity} {compress([a for a, _ in pairs])} {compress([b for _, b in pairs])}"
        if move:
            self._write(b"* OK [" + code.encode() + b"] Moved\r\n")  # RFC 6851 §4.3
            return S.OK
        return S.OK.with_code(code)

    def _report(self, view: View, dest: dict[str, Any], uids: list[int]) -> None:
        """Messages copied or moved into Junk (their new `uids` there) are reported as spam, out of Junk
        (not into Trash) as ham."""
        assert self._learn is not None
        source = self.boxes.by_id(view.id)
        spam = learn_verdict(source.get("special") if source else None, dest.get("special"))
        if spam is not None:
            found = self.boxes.records(dest["id"], uids)
            self._learn(spam, [found[u].blob for u in uids if u in found])


# -- helpers ----------------------------------------------------------------------------------------------

def _whole_message_only(items: list[Any]) -> tuple[bytes | None, bool]:
    """For FETCH of BODY[] / BODY.PEEK[] alone (after UID): the response's head as a %-format for
    (seq[, uid], size), and whether it has the UID; (None, False) for any other item list."""
    if len(items) == 2 and items[0] == "UID":
        att, uid = items[1], True
    elif len(items) == 1:
        att, uid = items[0], False
    else:
        return None, False
    if type(att) is not core.FetchAtt or att.name not in ("BODY", "BODY.PEEK") or att.section or \
            att.partial is not None:
        return None, False
    return (b"* %d FETCH (UID %d BODY[] {%d}\r\n" if uid else b"* %d FETCH (BODY[] {%d}\r\n"), uid


def _flags(tokens: list[Any]) -> list[str]:
    """Flags of STORE / APPEND: system flags in canonical case, keywords as atoms; \\Recent and unknown
    system flags are refused (RFC 9051 §2.3.2)."""
    out: list[str] = []
    for tok in tokens:
        if type(tok) is not str:
            raise SYNTAX("Invalid flag")
        if tok.startswith("\\"):
            canon = SYSTEM_FLAGS.get(tok.lower())
            if canon is None:
                raise SYNTAX("Invalid system flag")
            flag = canon
        elif _ATOM_FLAG.match(tok):
            flag = tok
        else:
            raise SYNTAX("Invalid keyword")
        if flag not in out:
            out.append(flag)
    return out


_MAILBOX_ERRORS = {
    M.NONEXISTENT: S.NONEXISTENT,
    M.ALREADYEXISTS: S.ALREADYEXISTS,
    M.CANNOT: S.CANNOT,
    M.TRYCREATE: S.TRYCREATE,
    M.OVERQUOTA: S.OVERQUOTA,
    M.INUSE: S.INUSE,
}

_ANY = frozenset(State)
_NOT_AUTH = frozenset({State.NOT_AUTHENTICATED})
_AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
_SEL = frozenset({State.SELECTED})

C = IMAPConnection
_COMMANDS: dict[str, tuple[Handler, frozenset[State]]] = {
    "CAPABILITY": (C.cmd_capability, _ANY),
    "NOOP": (C.cmd_noop, _ANY),
    "LOGOUT": (C.cmd_logout, _ANY),
    "ID": (C.cmd_id, _ANY),
    "STARTTLS": (C.cmd_starttls, _NOT_AUTH),
    "LOGIN": (C.cmd_login, _NOT_AUTH),
    "AUTHENTICATE": (C.cmd_authenticate, _NOT_AUTH),
    "ENABLE": (C.cmd_enable, _AUTH),
    "SELECT": (C.cmd_select, _AUTH),
    "EXAMINE": (C.cmd_select, _AUTH),
    "CREATE": (C.cmd_create, _AUTH),
    "DELETE": (C.cmd_delete, _AUTH),
    "RENAME": (C.cmd_rename, _AUTH),
    "SUBSCRIBE": (C.cmd_subscribe, _AUTH),
    "UNSUBSCRIBE": (C.cmd_subscribe, _AUTH),
    "LIST": (C.cmd_list, _AUTH),
    "LSUB": (C.cmd_list, _AUTH),
    "NAMESPACE": (C.cmd_namespace, _AUTH),
    "STATUS": (C.cmd_status, _AUTH),
    "APPEND": (C.cmd_append, _AUTH),
    "GETQUOTAROOT": (C.cmd_getquotaroot, _AUTH),
    "GETQUOTA": (C.cmd_getquota, _AUTH),
    "SETQUOTA": (C.cmd_setquota, _AUTH),
    "IDLE": (C.cmd_idle, _AUTH),
    "CHECK": (C.cmd_check, _SEL),
    "CLOSE": (C.cmd_close, _SEL),
    "UNSELECT": (C.cmd_close, _SEL),
    "EXPUNGE": (C.cmd_expunge, _SEL),
    "UID EXPUNGE": (C.cmd_expunge, _SEL),
    "SEARCH": (C.cmd_search, _SEL),
    "UID SEARCH": (C.cmd_search, _SEL),
    "FETCH": (C.cmd_fetch, _SEL),
    "UID FETCH": (C.cmd_fetch, _SEL),
    "STORE": (C.cmd_store, _SEL),
    "UID STORE": (C.cmd_store, _SEL),
    "COPY": (C.cmd_copy, _SEL),
    "UID COPY": (C.cmd_copy, _SEL),
    "MOVE": (C.cmd_copy, _SEL),
    "UID MOVE": (C.cmd_copy, _SEL),
}
