"""POP3 as a sans-IO state machine (RFC 1939, CAPA and response codes RFC 2449, STLS RFC 2595, AUTH
RFC 5034, [SYS/*] and [AUTH] RFC 3206): bytes in, bytes and requests out, like fastmail.proto.smtp.

The driver (fastmail.server.pop3) feeds received bytes with `receive()`, writes `take_output()`, and
answers each request from `next_request()`:

    StartTLS   -> tls_started()            the transport is now TLS
    Login      -> login_done(result)       password checked, maildrop locked and listed (or why not)
    Fetch      -> fetched(raw | None)      the message bytes (None: it went away meanwhile)
    Update     -> update_done(ok)          the marked messages removed, in one transaction
    Close      -> close the transport

While a request is outstanding nothing more is read, so pipelined commands (RFC 2449 PIPELINING) wait
in the line buffer and are answered in order.

The maildrop is the user's INBOX as listed at login: message numbers, sizes and unique ids stay fixed
for the session (RFC 1939 §8); DELE only marks, and the marked messages are removed only in the UPDATE
state after QUIT.  A session that ends any other way removes nothing.
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass

from fastmail._core import data as core_data
from fastmail._core import lines as core_lines

MAX_LINE = 1024  # RFC 2449 §4 allows 255 octets for a command; SASL answers (RFC 5034 §4) may be longer


class State(enum.Enum):
    AUTHORIZATION = "authorization"
    AUTH = "auth"  # inside a SASL exchange
    TRANSACTION = "transaction"
    WAIT = "wait"  # a request is outstanding
    CLOSED = "closed"


# -- requests -------------------------------------------------------------------------------------------


@dataclass
class StartTLS:
    pass


@dataclass
class Login:
    username: str
    password: str
    mechanism: str  # USER, PLAIN, LOGIN
    authzid: str = ""


@dataclass
class Fetch:
    number: int
    uid: int
    top: int | None  # None: RETR; else TOP's line count


@dataclass
class Update:
    uids: list[int]  # to remove from the maildrop


@dataclass
class Close:
    pass


Request = StartTLS | Login | Fetch | Update | Close


# -- what the driver answers ------------------------------------------------------------------------------


@dataclass
class Entry:
    uid: int
    size: int
    deleted: bool = False


@dataclass
class Maildrop:
    uidvalidity: int
    entries: list[Entry]

    def uidl(self, entry: Entry) -> str:
        # Stable forever for the same message (RFC 1939 §7): UIDVALIDITY and UID never repeat together.
        return f"{self.uidvalidity}.{entry.uid}"


class LoginFailed(enum.Enum):
    AUTH = "[AUTH] Authentication failed"
    IN_USE = "[IN-USE] Maildrop is in use by another POP3 session"
    THROTTLED = "[SYS/TEMP] Too many failed logins, try again later"
    TEMP = "[SYS/TEMP] Maildrop cannot be opened now, try again later"
    NO_MAILDROP = "[SYS/PERM] This account has no maildrop"
    DELAY = "[LOGIN-DELAY] Minimum time between logins not reached, try again later"  # RFC 2449 §8.1.2


@dataclass
class Limits:
    max_errors: int = 20
    max_auth_failures: int = 3  # failed logins in one session before it is closed
    login_delay: int = 0  # RFC 2449 §6.5 LOGIN-DELAY seconds, advertised in CAPA; 0: none


@dataclass
class Session:
    peer: str
    tls: bool = False
    plaintext_ok: bool = False  # USER/PASS and AUTH allowed without TLS (loopback / configured)
    tls_available: bool = False
    user: str | None = None


def ok(text: str = "") -> bytes:
    return f"+OK {text}\r\n".encode() if text else b"+OK\r\n"


def err(text: str) -> bytes:
    return f"-ERR {text}\r\n".encode()


def multiline_parts(first: bytes, body: bytes) -> list[bytes | memoryview]:
    """A multi-line response (RFC 1939 §3) as buffers to write in turn: the status line, the dot-stuffed
    body, CRLF "." CRLF.  Not joined: a message is large, and joining would copy it once more."""
    end = b".\r\n" if not body or body.endswith(b"\r\n") else b"\r\n.\r\n"
    return [first, *core_data.dot_stuff_parts(body), end]


def multiline(first: bytes, body: bytes) -> bytes:
    return b"".join(multiline_parts(first, body))  # type: ignore[arg-type]  # memoryview is a buffer


def top_of(raw: bytes, lines: int) -> bytes:
    """The header, the blank line, and the first `lines` lines of the body (RFC 1939 §7 TOP)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return raw if raw.endswith(b"\r\n") or not raw else raw + b"\r\n"
    head, body = raw[: end + 4], raw[end + 4 :]
    if lines <= 0 or not body:
        return head
    pos = 0
    for _ in range(lines):
        i = body.find(b"\n", pos)
        if i < 0:
            pos = len(body)
            break
        pos = i + 1
    return head + body[:pos]


class POP3Connection:
    """One POP3 session, from greeting to close."""

    def __init__(self, session: Session, hostname: str, limits: Limits | None = None) -> None:
        self.session = session
        self.hostname = hostname
        self.limits = limits or Limits()
        self.state = State.AUTHORIZATION
        self.maildrop: Maildrop | None = None
        self.errors = 0
        self.auth_failures = 0
        self._user_arg: str | None = None  # USER given, PASS expected
        self._lines = core_lines.LineReader(MAX_LINE)
        self._out: list[bytes | memoryview] = []
        self._requests: list[Request] = []
        self._resume_state = State.AUTHORIZATION
        self._sasl: tuple[str, str] | None = None  # (mechanism, step or username so far)
        self._pending: Request | None = None
        self._out.append(ok(f"{hostname} POP3 fastmail ready"))

    # -- driver API ---------------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        self._lines.feed(data)
        self._process()

    def take_output(self) -> bytes:
        out = b"".join(self._out)  # type: ignore[arg-type]
        self._out.clear()
        return out

    def take_output_parts(self) -> list[bytes | memoryview]:
        """The output as the buffers it was made of (for writelines: no copy of a retrieved message)."""
        out, self._out = self._out, []
        return out

    def next_request(self) -> Request | None:
        return self._requests.pop(0) if self._requests else None

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def waiting(self) -> bool:
        return self.state is State.WAIT

    def tls_started(self) -> None:
        self.session.tls = True
        self._resume(State.AUTHORIZATION)

    def login_done(self, result: Maildrop | LoginFailed, user: str = "") -> None:
        if isinstance(result, Maildrop):
            self.maildrop = result
            self.session.user = user
            count, size = self._stat()
            self._out.append(ok(f"Logged in, {count} messages ({size} octets)"))
            self._resume(State.TRANSACTION)
            return
        self._out.append(err(result.value))
        if result is LoginFailed.AUTH or result is LoginFailed.THROTTLED:
            self.auth_failures += 1
            if result is LoginFailed.THROTTLED or self.auth_failures >= self.limits.max_auth_failures:
                self._close()
                return
        self._resume(State.AUTHORIZATION)

    def fetched(self, raw: bytes | None) -> None:
        req = self._pending
        assert isinstance(req, Fetch)
        self._pending = None
        if raw is None:
            self._out.append(err(f"[SYS/PERM] Message {req.number} was removed by another session"))
        elif req.top is None:
            self._out += multiline_parts(ok(f"{len(raw)} octets"), raw)
        else:
            self._out += multiline_parts(ok("Top of message follows"), top_of(raw, req.top))
        self._resume(State.TRANSACTION)

    def update_done(self, ok_: bool, removed: int = 0) -> None:
        if ok_:
            self._out.append(ok(f"{self.hostname} POP3 fastmail signing off ({removed} messages deleted)"))
        else:
            self._out.append(err("[SYS/TEMP] Some deleted messages were not removed"))
        self._close()

    def shutdown(self) -> None:
        """The server is stopping: nothing is removed (not the UPDATE state)."""
        if self.state is not State.CLOSED:
            self._out.append(err("[SYS/TEMP] Server shutting down"))
            self._close()

    def timed_out(self) -> None:
        """Autologout (RFC 1939 §3): close without entering UPDATE, so nothing is removed."""
        if self.state is not State.CLOSED:
            self._out.append(err("Autologout; idle for too long"))
            self._close()

    # -- internals ----------------------------------------------------------------------------------------

    def _close(self) -> None:
        self.state = State.CLOSED
        self._requests.append(Close())

    def _request(self, request: Request, resume: State) -> None:
        self._resume_state = resume
        self._pending = request
        self.state = State.WAIT
        self._requests.append(request)

    def _resume(self, state: State) -> None:
        if self.state is State.CLOSED:
            return
        self.state = state
        self._process()

    def _error(self, text: str) -> None:
        self._out.append(err(text))
        self.errors += 1
        if self.errors >= self.limits.max_errors and self.state is not State.CLOSED:
            self._out.append(err("Too many errors, closing connection"))
            self._close()

    def _process(self) -> None:
        while self.state is not State.WAIT and self.state is not State.CLOSED:
            try:
                line = self._lines.readline()
            except core_lines.LineTooLong:
                self._error("Line too long")
                continue
            if line is None:
                return
            if self.state is State.AUTH:
                self._sasl_line(line)
            else:
                self._command(line)

    def _command(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._error("Command is not UTF-8")
            return
        verb, _, args = text.partition(" ")
        verb = verb.upper()
        if self.state is State.AUTHORIZATION:
            handler = _AUTHORIZATION.get(verb)
        else:
            handler = _TRANSACTION.get(verb)
        if handler is None:
            known = verb in _AUTHORIZATION or verb in _TRANSACTION
            self._error("Command not valid in this state" if known else "Unknown command")
            return
        handler(self, args)

    def _stat(self) -> tuple[int, int]:
        assert self.maildrop is not None
        live = [e for e in self.maildrop.entries if not e.deleted]
        return len(live), sum(e.size for e in live)

    def _message(self, arg: str) -> tuple[int, Entry] | None:
        """The live entry numbered `arg`, or None after answering -ERR."""
        assert self.maildrop is not None
        if not arg.isascii() or not arg.isdigit() or len(arg) > 10:
            self._error("Invalid message number")
            return None
        n = int(arg)
        if not 1 <= n <= len(self.maildrop.entries):
            self._error(f"No such message {arg}")
            return None
        entry = self.maildrop.entries[n - 1]
        if entry.deleted:
            self._error(f"Message {n} is deleted")
            return None
        return n, entry

    def _plaintext_refused(self) -> bool:
        if self.session.tls or self.session.plaintext_ok:
            return False
        self._error("[AUTH] Plaintext authentication is disallowed without TLS; use STLS")
        return True

    # -- AUTHORIZATION ------------------------------------------------------------------------------------

    def cmd_capa(self, args: str) -> None:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER",
                "IMPLEMENTATION fastmail"]
        if self.limits.login_delay:
            caps.insert(5, f"LOGIN-DELAY {self.limits.login_delay}")
        if self.state is State.AUTHORIZATION:
            if self.session.tls or self.session.plaintext_ok:
                caps += ["USER", "SASL PLAIN LOGIN"]
            if self.session.tls_available and not self.session.tls:
                caps.append("STLS")
        body = "".join(f"{c}\r\n" for c in caps).encode()
        self._out.append(multiline(ok("Capability list follows"), body))

    def cmd_user(self, args: str) -> None:
        if self._plaintext_refused():
            return
        name = args.strip()
        if not name or len(name) > 320:
            self._error("USER needs a user name")
            return
        self._user_arg = name
        self._out.append(ok("Send PASS"))

    def cmd_pass(self, args: str) -> None:
        if self._plaintext_refused():
            return
        if self._user_arg is None:
            self._error("USER first")
            return
        user, self._user_arg = self._user_arg, None
        # RFC 1939 §7: the password may contain spaces; everything after "PASS " is the password.
        self._request(Login(user, args, "USER"), State.AUTHORIZATION)

    def cmd_apop(self, args: str) -> None:
        # Passwords are stored as argon2id hashes only, so the shared secret APOP needs does not exist.
        self._error("APOP is not supported; use USER/PASS or AUTH over TLS")

    def cmd_stls(self, args: str) -> None:
        if self.session.tls:
            self._error("Already using TLS")
        elif not self.session.tls_available:
            self._error("STLS is not available")
        else:
            self._out.append(ok("Begin TLS negotiation"))
            self._lines.take_buffer()  # RFC 2595 §4: nothing sent before the handshake may be kept
            self._user_arg = None
            self._request(StartTLS(), State.AUTHORIZATION)

    def cmd_auth(self, args: str) -> None:
        parts = args.split()
        if not parts:
            self._out.append(multiline(ok("Mechanisms follow"), b"PLAIN\r\nLOGIN\r\n"))
            return
        if self._plaintext_refused():
            return
        mech = parts[0].upper()
        initial = parts[1] if len(parts) > 1 else None
        if len(parts) > 2 or mech not in ("PLAIN", "LOGIN"):
            self._error("Unsupported authentication mechanism")
            return
        if mech == "PLAIN":
            if initial is None:
                self._sasl = ("PLAIN", "")
                self._out.append(b"+ \r\n")
                self.state = State.AUTH
            else:
                self._plain(initial)
        else:
            if initial is None:
                self._sasl = ("LOGIN", "")
                self._out.append(b"+ VXNlcm5hbWU6\r\n")  # "Username:"
                self.state = State.AUTH
            else:
                user = _b64(initial)
                if user is None:
                    self._error("Invalid base64")
                    return
                self._sasl = ("LOGIN", user)
                self._out.append(b"+ UGFzc3dvcmQ6\r\n")  # "Password:"
                self.state = State.AUTH

    def _sasl_line(self, line: bytes) -> None:
        assert self._sasl is not None
        mech, so_far = self._sasl
        text = line.decode("ascii", "replace").strip()
        self.state = State.AUTHORIZATION
        if text == "*":
            self._sasl = None
            self._error("Authentication canceled")
            return
        if mech == "PLAIN":
            self._sasl = None
            self._plain(text)
            return
        value = _b64(text)
        if value is None:
            self._sasl = None
            self._error("Invalid base64")
            return
        if not so_far:
            self._sasl = ("LOGIN", value)
            self._out.append(b"+ UGFzc3dvcmQ6\r\n")
            self.state = State.AUTH
            return
        self._sasl = None
        self._request(Login(so_far, value, "LOGIN"), State.AUTHORIZATION)

    def _plain(self, encoded: str) -> None:
        value = _b64(encoded)
        parts = value.split("\0") if value is not None else []
        if len(parts) != 3 or not parts[1]:
            self._error("Invalid PLAIN response")
            return
        authzid, user, password = parts
        self._request(Login(user, password, "PLAIN", authzid), State.AUTHORIZATION)

    def cmd_quit(self, args: str) -> None:
        if self.state is State.AUTHORIZATION:
            self._out.append(ok(f"{self.hostname} POP3 fastmail signing off"))
            self._close()
            return
        assert self.maildrop is not None
        uids = [e.uid for e in self.maildrop.entries if e.deleted]
        if not uids:
            self.update_done(True, 0)
            return
        self._request(Update(uids), State.TRANSACTION)  # UPDATE state (RFC 1939 §6)

    # -- TRANSACTION ---------------------------------------------------------------------------------------

    def cmd_stat(self, args: str) -> None:
        count, size = self._stat()
        self._out.append(ok(f"{count} {size}"))

    def cmd_list(self, args: str) -> None:
        assert self.maildrop is not None
        if args.strip():
            found = self._message(args.strip())
            if found is not None:
                self._out.append(ok(f"{found[0]} {found[1].size}"))
            return
        count, size = self._stat()
        body = "".join(f"{n} {e.size}\r\n" for n, e in enumerate(self.maildrop.entries, 1) if not e.deleted)
        self._out.append(multiline(ok(f"{count} messages ({size} octets)"), body.encode()))

    def cmd_uidl(self, args: str) -> None:
        drop = self.maildrop
        assert drop is not None
        if args.strip():
            found = self._message(args.strip())
            if found is not None:
                self._out.append(ok(f"{found[0]} {drop.uidl(found[1])}"))
            return
        body = "".join(f"{n} {drop.uidl(e)}\r\n" for n, e in enumerate(drop.entries, 1) if not e.deleted)
        self._out.append(multiline(ok("Unique ids follow"), body.encode()))

    def cmd_retr(self, args: str) -> None:
        found = self._message(args.strip())
        if found is not None:
            self._request(Fetch(found[0], found[1].uid, None), State.TRANSACTION)

    def cmd_top(self, args: str) -> None:
        parts = args.split()
        if len(parts) != 2 or not parts[1].isascii() or not parts[1].isdigit() or len(parts[1]) > 9:
            self._error("Usage: TOP message lines")
            return
        found = self._message(parts[0])
        if found is not None:
            self._request(Fetch(found[0], found[1].uid, int(parts[1])), State.TRANSACTION)

    def cmd_dele(self, args: str) -> None:
        found = self._message(args.strip())
        if found is not None:
            found[1].deleted = True
            self._out.append(ok(f"Message {found[0]} deleted"))

    def cmd_rset(self, args: str) -> None:
        assert self.maildrop is not None
        for e in self.maildrop.entries:
            e.deleted = False
        count, size = self._stat()
        self._out.append(ok(f"Maildrop has {count} messages ({size} octets)"))

    def cmd_noop(self, args: str) -> None:
        self._out.append(ok())


def _b64(text: str) -> str | None:
    if text == "=":  # RFC 5034 §4: an empty initial response
        return ""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        return None


_AUTHORIZATION = {
    "CAPA": POP3Connection.cmd_capa, "USER": POP3Connection.cmd_user, "PASS": POP3Connection.cmd_pass,
    "APOP": POP3Connection.cmd_apop, "STLS": POP3Connection.cmd_stls, "AUTH": POP3Connection.cmd_auth,
    "QUIT": POP3Connection.cmd_quit,
}
_TRANSACTION = {
    "CAPA": POP3Connection.cmd_capa, "STAT": POP3Connection.cmd_stat, "LIST": POP3Connection.cmd_list,
    "UIDL": POP3Connection.cmd_uidl, "RETR": POP3Connection.cmd_retr, "TOP": POP3Connection.cmd_top,
    "DELE": POP3Connection.cmd_dele, "RSET": POP3Connection.cmd_rset, "NOOP": POP3Connection.cmd_noop,
    "QUIT": POP3Connection.cmd_quit,
}

__all__ = ["Close", "Entry", "Fetch", "Limits", "Login", "LoginFailed", "Maildrop", "POP3Connection",
           "Request", "Session", "StartTLS", "State", "Update", "multiline", "multiline_parts", "top_of"]
