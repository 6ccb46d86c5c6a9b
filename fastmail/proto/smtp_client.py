"""The outbound SMTP client, sans-IO (RFC 5321; 1870 SIZE, 2920 PIPELINING, 3030 CHUNKING, 3207 STARTTLS,
3461 DSN, 4954 AUTH, 6152 8BITMIME, 6531 SMTPUTF8, 2034/3463 enhanced status codes).

Bytes in with `receive(data)`, commands out with `take_output()`; every input method returns the events it
caused, for the driver (fastmail.delivery.outbound) to act on:

    StartTLS()          STARTTLS was accepted: upgrade the transport, then call tls_done()
    Ready(extensions)   the session can take a message: call send(message)
    Done(results)       a message's transaction is over: one Reply per recipient (the final word on it:
                        the RCPT refusal, or the reply to DATA / to the end of data); with transactions
                        pipelined, one Done per message, in the order they were sent
    Failed(reply)       the session cannot go on (refused greeting, EHLO/HELO refused, TLS required but
                        not offered, 421, a malformed reply): close the connection

With PIPELINING, the next message may be sent as soon as the current one's data is on its way (its
transaction waits only for the reply to the end of data): `can_send_next` says when.  Its MAIL, RCPTs and
DATA then follow the data in the same write, as RFC 2920 §3.1 allows ("the actual transfer of message
content is explicitly allowed to be the first command in a group"): one write and one read per message
instead of two of each.  Not after BDAT (RFC 3030): a refused last chunk wants an RSET before the next MAIL.

The machine never touches a socket or a clock: `timeout` says how long the driver may wait for the reply it
now expects (RFC 5321 §4.5.3.2).  All transitions live in this file.
"""

from __future__ import annotations

import base64
from collections import deque
from dataclasses import dataclass
from enum import Enum, auto

from fastmail._core import data as core_data
from fastmail._core import lines as core_lines
from fastmail._core import smtp as core_smtp

MAX_REPLY_LINE = 4096  # RFC 5321 §4.5.3.1.5 says 512; real servers send longer lines (we stay tolerant)
MAX_REPLY_LINES = 256

# RFC 5321 §4.5.3.2: how long to wait for each reply (seconds).
TIMEOUT_GREETING = 300.0  # §4.5.3.2.1 initial 220
TIMEOUT_MAIL = 300.0  # §4.5.3.2.2
TIMEOUT_RCPT = 300.0  # §4.5.3.2.3
TIMEOUT_DATA = 120.0  # §4.5.3.2.4 DATA initiation
TIMEOUT_BLOCK = 180.0  # §4.5.3.2.5 each data block sent (the driver's write side)
TIMEOUT_DATA_END = 600.0  # §4.5.3.2.6 DATA termination
TIMEOUT_OTHER = 300.0  # EHLO, STARTTLS, RSET, QUIT (no figure in the RFC; the command timeout)


@dataclass(frozen=True)
class Reply:
    code: int
    enhanced: str = ""  # "5.1.1" or "" (RFC 3463)
    text: str = ""  # the lines' texts joined with a space, enhanced codes removed
    local: bool = False  # made up by this client (no server said it)

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def status(self) -> str:
        """The RFC 3463 status this reply stands for: its enhanced code, or one derived from the class."""
        return self.enhanced or f"{self.code // 100}.0.0"

    def __str__(self) -> str:
        return " ".join(p for p in (str(self.code), self.enhanced, self.text) if p)


def local_reply(code: int, enhanced: str, text: str) -> Reply:
    return Reply(code, enhanced, text, local=True)


@dataclass
class Recipient:
    address: str
    notify: str | None = None  # RFC 3461 NOTIFY value as received ("SUCCESS,FAILURE", "NEVER", ...)
    orcpt: str | None = None  # RFC 3461 ORCPT as received, still xtext: "rfc822;user+2Bx@example.org"


@dataclass
class Message:
    sender: str  # "" is the null reverse-path
    rcpts: list[Recipient]
    body: bytes  # the message as stored (CRLF lines), not yet dot-stuffed
    ret: str | None = None  # RFC 3461 RET: FULL or HDRS
    envid: str | None = None  # RFC 3461 ENVID as received, still xtext
    eight_bit: bool = False  # BODY=8BITMIME was given on reception
    smtputf8: bool = False  # the message needs SMTPUTF8 (RFC 6531)


@dataclass(frozen=True)
class StartTLS:
    pass


@dataclass(frozen=True)
class Ready:
    extensions: dict[str, str]


@dataclass(frozen=True)
class Done:
    results: list[Reply]


@dataclass(frozen=True)
class Failed:
    reply: Reply


Event = StartTLS | Ready | Done | Failed


class Phase(Enum):
    GREETING = auto()
    EHLO = auto()
    HELO = auto()
    STARTTLS = auto()
    TLS = auto()  # the driver is upgrading the transport
    AUTH = auto()  # AUTH sent (smarthost credentials)
    READY = auto()
    TRANSACTION = auto()
    QUIT = auto()
    CLOSED = auto()


class Client:
    """One outbound SMTP session.  `hostname` is what we say in EHLO; `tls` whether to use STARTTLS when
    offered (and `tls_available` whether the driver can); `require_tls` turns a missing STARTTLS into a
    temporary failure (per-domain policy)."""

    def __init__(self, hostname: str, tls: bool = True, require_tls: bool = False,
                 auth: tuple[str, str] | None = None, chunking: bool = True, lmtp: bool = False) -> None:
        self.hostname = hostname
        # LMTP (RFC 2033) to a mailbox node of the cluster (docs/scaling.md): LHLO, and after the data one
        # reply per accepted recipient (§4.2); DATA, not BDAT, so that those replies come after one end mark
        self.lmtp = lmtp
        self.chunking = chunking and not lmtp  # BDAT when the server offers CHUNKING (RFC 3030)
        self.want_tls = tls
        self.auth = auth  # (user, password) for a smarthost: AUTH PLAIN or LOGIN, only over TLS (RFC 4954 §4)
        self.authenticated = False
        self._auth_step = ""
        self.require_tls = require_tls or auth is not None
        self.phase = Phase.GREETING
        self.extensions: dict[str, str] = {}
        self.tls_active = False
        self.greeting = ""
        self._reader = core_lines.LineReader(MAX_REPLY_LINE)
        self._lines: list[tuple[int, bytes]] = []
        self._out: list[bytes] = []
        # the open transactions, oldest first (two at most: one waiting for its end-of-data reply, the next)
        self._txns: deque[_Transaction] = deque()
        # replies awaited: ("MAIL"|"RCPT"|"DATA"|"END"|"BDAT"|"IGNORE"|"RSET", recipient index, transaction)
        self._expect: deque[tuple[str, int, _Transaction]] = deque()
        self._queue: deque[tuple[str, int, bytes]] = deque()  # commands not yet sent (no PIPELINING)

    # -- driver API --------------------------------------------------------------------------------------

    def take_output(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    @property
    def timeout(self) -> float:
        """Seconds to wait for the reply now expected."""
        if self.phase is Phase.GREETING:
            return TIMEOUT_GREETING
        if self.phase is Phase.TRANSACTION and self._expect:
            return {"MAIL": TIMEOUT_MAIL, "RCPT": TIMEOUT_RCPT, "DATA": TIMEOUT_DATA,
                    "END": TIMEOUT_DATA_END, "LMTP": TIMEOUT_DATA_END, "BDAT": TIMEOUT_DATA_END}.get(self._expect[0][0], TIMEOUT_OTHER)
        return TIMEOUT_OTHER

    def receive(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        if self.phase is Phase.CLOSED:
            return events
        self._reader.feed(data)
        while self.phase is not Phase.CLOSED:
            try:
                line = self._reader.readline()
            except core_lines.LineTooLong:
                events += self._fail(local_reply(421, "4.5.0", "reply line too long"))
                break
            if line is None:
                break
            try:
                code, last, text = core_smtp.parse_reply_line(line)
            except core_smtp.ReplySyntaxError:
                events += self._fail(local_reply(421, "4.5.0", f"malformed reply {line[:80]!r}"))
                break
            if self._lines and code != self._lines[0][0]:
                events += self._fail(local_reply(421, "4.5.0", "reply code changed within a reply"))
                break
            self._lines.append((code, text))
            if len(self._lines) > MAX_REPLY_LINES:
                events += self._fail(local_reply(421, "4.5.0", "reply too long"))
                break
            if last:
                lines, self._lines = self._lines, []
                events += self._on_reply(_make_reply(lines), [t for _, t in lines])
        return events

    def tls_done(self) -> list[Event]:
        """The transport is now TLS: say EHLO again (RFC 3207 §4.2: forget what was learnt before)."""
        assert self.phase is Phase.TLS
        self.tls_active = True
        self.extensions = {}
        self._command(b"EHLO " + self.hostname.encode("idna") + b"\r\n")
        self.phase = Phase.EHLO
        return []

    @property
    def can_send_next(self) -> bool:
        """Whether another message may be sent now while a transaction is open: the server pipelines and
        every reply still awaited is an end-of-data one (RFC 2920 §3.1)."""
        return (self.phase is Phase.TRANSACTION and len(self._txns) == 1 and "PIPELINING" in self.extensions
                and not self._queue and all(kind in ("END", "LMTP") for kind, _, _ in self._expect))

    def send(self, msg: Message) -> list[Event]:
        """Start the transaction of `msg` (when Ready, or when `can_send_next`)."""
        assert (self.phase is Phase.READY or self.can_send_next) and msg.rcpts
        ext = self.extensions
        n = len(msg.rcpts)
        # RFC 6531 §3.4: a message that needs SMTPUTF8 cannot go to a server without it.
        if msg.smtputf8 and "SMTPUTF8" not in ext:
            reply = local_reply(553, "5.6.7", "the message needs SMTPUTF8, which the receiving server does not offer")
            return [Done([reply] * n)]
        limit = ext.get("SIZE", "")
        if limit.isdigit() and int(limit) and len(msg.body) > int(limit):  # RFC 1870 §6
            reply = local_reply(552, "5.3.4", f"message size exceeds the receiving server's limit of {limit}")
            return [Done([reply] * n)]
        if msg.eight_bit and "8BITMIME" not in ext and not msg.body.isascii():
            # RFC 6152 §3: 8-bit data to a server without 8BITMIME: convert it or return it; we return it
            reply = local_reply(554, "5.6.3", "the message has 8-bit data, and the receiving server does not "
                                              "offer 8BITMIME")
            return [Done([reply] * n)]
        txn = _Transaction(msg, n)
        body = msg.body if msg.body.endswith(b"\r\n") or not msg.body else msg.body + b"\r\n"
        self.phase = Phase.TRANSACTION
        self._txns.append(txn)
        cmds: list[tuple[str, int, bytes]] = [("MAIL", 0, self._mail_from(msg))]
        cmds += [("RCPT", i, self._rcpt_to(r)) for i, r in enumerate(msg.rcpts)]
        if self.chunking and "CHUNKING" in ext:
            # RFC 3030 §2: the message in one BDAT ... LAST chunk: no dot-stuffing, no end mark to scan for
            cmds.append(("BDAT", 0, b"BDAT %d LAST\r\n" % len(body) + body))
        else:
            txn.body = core_data.dot_stuff(body) + core_data.END_MARK
            cmds.append(("DATA", 0, b"DATA\r\n"))
        if "PIPELINING" in ext:  # RFC 2920 §3.1 / RFC 3030 §4.2: MAIL, RCPTs and DATA (or BDAT) in one go
            for kind, i, line in cmds:
                self._expect.append((kind, i, txn))
                self._out.append(line)
        else:
            self._queue.extend(cmds)
            self._send_next()
        return []

    def quit(self) -> None:
        if self.phase in (Phase.READY, Phase.GREETING, Phase.EHLO, Phase.HELO):
            self._command(b"QUIT\r\n")
            self.phase = Phase.QUIT
        elif self.phase is not Phase.QUIT:
            self.phase = Phase.CLOSED

    def connection_lost(self) -> list[Event]:
        """The transport closed: whatever was in progress failed temporarily."""
        if self.phase in (Phase.CLOSED, Phase.QUIT):
            self.phase = Phase.CLOSED
            return []
        return self._fail(local_reply(421, "4.4.2", "connection lost"), send_quit=False)

    # -- internals ---------------------------------------------------------------------------------------

    def _command(self, line: bytes) -> None:
        self._out.append(line)

    def _mail_from(self, msg: Message) -> bytes:
        ext = self.extensions
        parts = [b"MAIL FROM:<" + msg.sender.encode("utf-8") + b">"]
        if "SIZE" in ext:
            parts.append(b"SIZE=%d" % len(msg.body))
        if msg.eight_bit and "8BITMIME" in ext:
            parts.append(b"BODY=8BITMIME")
        if msg.smtputf8:
            parts.append(b"SMTPUTF8")
        if "DSN" in ext:  # RFC 3461 §4.3, §4.4: passed on only to a server that offers DSN
            if msg.ret:
                parts.append(b"RET=" + msg.ret.encode("ascii"))
            if msg.envid:
                parts.append(b"ENVID=" + msg.envid.encode("utf-8"))
        return b" ".join(parts) + b"\r\n"

    def _rcpt_to(self, rcpt: Recipient) -> bytes:
        parts = [b"RCPT TO:<" + rcpt.address.encode("utf-8") + b">"]
        if "DSN" in self.extensions:
            if rcpt.notify:
                parts.append(b"NOTIFY=" + rcpt.notify.encode("ascii"))
            if rcpt.orcpt:  # RFC 3461 §4.2: addr-type ";" xtext, passed on as it came
                parts.append(b"ORCPT=" + rcpt.orcpt.encode("utf-8"))
        return b" ".join(parts) + b"\r\n"

    def _send_next(self) -> None:
        """Without PIPELINING: send the next command, skipping what the replies so far made pointless."""
        txn = self._txns[0]
        while self._queue and not self._expect:
            kind, i, line = self._queue.popleft()
            if kind in ("RCPT", "DATA", "BDAT") and txn.mail_reply is not None and not txn.mail_reply.ok:
                continue
            if kind in ("DATA", "BDAT") and not any(r is not None and r.ok for r in txn.rcpt_replies):
                continue
            self._expect.append((kind, i, txn))
            self._out.append(line)
        if not self._queue and not self._expect and self.phase is Phase.TRANSACTION:
            self._end_without_data(txn)

    def _end_without_data(self, txn: _Transaction) -> None:
        """MAIL or every RCPT refused: the transaction ends here; RSET before the next one."""
        self._expect.append(("RSET", 0, txn))
        self._out.append(b"RSET\r\n")

    def _fail(self, reply: Reply, send_quit: bool = True) -> list[Event]:
        events: list[Event] = []
        if self.phase is Phase.TRANSACTION:
            for txn in self._txns:  # each open transaction ends, in order
                events.append(Done([r if r is not None else reply for r in txn.final_results(reply)]))
        if send_quit and self.phase not in (Phase.CLOSED, Phase.TLS):
            self._command(b"QUIT\r\n")
        self.phase = Phase.CLOSED
        self._expect.clear()
        self._queue.clear()
        self._txns.clear()
        events.append(Failed(reply))
        return events

    def abort(self, reply: Reply) -> list[Event]:
        """The driver gives up on the session (a timeout): what is open ends with `reply`."""
        if self.phase in (Phase.CLOSED, Phase.QUIT):
            self.phase = Phase.CLOSED
            return []
        return self._fail(reply, send_quit=False)

    def _ready(self) -> list[Event]:
        if self.require_tls and not self.tls_active:
            return self._fail(local_reply(450, "4.7.4", "TLS is required for this destination but the server "
                                                        "does not offer STARTTLS"))
        if self.auth is not None and not self.authenticated:
            mechanisms = self.extensions.get("AUTH", "").upper().split()
            user, password = self.auth
            if "PLAIN" in mechanisms:  # RFC 4616, with the initial response (RFC 4954 §4)
                token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
                self._command(b"AUTH PLAIN " + token + b"\r\n")
                self._auth_step = "done"
            elif "LOGIN" in mechanisms:
                self._command(b"AUTH LOGIN\r\n")
                self._auth_step = "user"
            else:
                return self._fail(local_reply(454, "4.7.0", "the relay host offers no AUTH PLAIN or LOGIN"))
            self.phase = Phase.AUTH
            return []
        self.phase = Phase.READY
        return [Ready(dict(self.extensions))]

    def _on_reply(self, reply: Reply, texts: list[bytes]) -> list[Event]:
        if reply.code == 421 and self.phase not in (Phase.QUIT,):
            return self._fail(reply)  # RFC 5321 §3.8: the server is closing the channel
        handler = getattr(self, f"_on_{self.phase.name.lower()}")
        result: list[Event] = handler(reply, texts)
        return result

    def _on_greeting(self, reply: Reply, texts: list[bytes]) -> list[Event]:
        if reply.code != 220:
            return self._fail(reply)
        self.greeting = reply.text
        if self.lmtp:  # a node of our own cluster, chosen by name: it may share our host name
            self._command(b"LHLO " + self.hostname.encode("idna") + b"\r\n")
            self.phase = Phase.EHLO
            return []
        if reply.text.split(" ", 1)[0].lower() == self.hostname.lower():
            # RFC 5321 §5.1 / §6.3: the MX is this very host (a wrong MX record or a relay loop)
            return self._fail(local_reply(554, "5.4.6", f"mail for this destination loops back to myself ({self.hostname})"))
        self._command(b"EHLO " + self.hostname.encode("idna") + b"\r\n")
        self.phase = Phase.EHLO
        return []

    def _on_ehlo(self, reply: Reply, texts: list[bytes]) -> list[Event]:
        if reply.code == 250:
            self.extensions = _extensions(texts[1:])
            if self.want_tls and not self.tls_active and "STARTTLS" in self.extensions:
                self._command(b"STARTTLS\r\n")
                self.phase = Phase.STARTTLS
                return []
            return self._ready()
        if reply.code in (500, 501, 502, 504, 550) and not self.tls_active and not self.lmtp:
            # RFC 5321 §3.2: a server that does not know EHLO gets HELO
            self._command(b"HELO " + self.hostname.encode("idna") + b"\r\n")
            self.phase = Phase.HELO
            return []
        return self._fail(reply)

    def _on_helo(self, reply: Reply, texts: list[bytes]) -> list[Event]:
        if reply.code != 250:
            return self._fail(reply)
        self.extensions = {}
        return self._ready()

    def _on_starttls(self, reply: Reply, texts: list[bytes]) -> list[Event]:
        if reply.code == 220:
            self.phase = Phase.TLS
            return [StartTLS()]
        if self.require_tls:
            return self._fail(reply)
        return self._ready()  # opportunistic: go on in plain text

    def _on_tls(self, reply: Reply, texts: list[bytes]) -> list[Event]:
        # RFC 3207 §4.2 / the STARTTLS injection attacks: nothing may come before the handshake.
        return self._fail(local_reply(421, "4.5.0", "reply pipelined after STARTTLS"), send_quit=False)

    def _on_auth(self, reply: Reply, texts: list[bytes]) -> list[Event]:
        assert self.auth is not None
        if reply.code == 334 and self._auth_step in ("user", "password"):
            value = self.auth[0] if self._auth_step == "user" else self.auth[1]
            self._command(base64.b64encode(value.encode()) + b"\r\n")
            self._auth_step = "password" if self._auth_step == "user" else "done"
            return []
        if reply.code == 235:
            self.authenticated = True
            return self._ready()
        if reply.code == 334:
            self._command(b"*\r\n")  # RFC 4954 §4: cancel an exchange we do not follow
        return self._fail(reply)

    def _on_ready(self, reply: Reply, texts: list[bytes]) -> list[Event]:
        return self._fail(local_reply(421, "4.5.0", f"unexpected reply {reply}"))

    def _on_quit(self, reply: Reply, texts: list[bytes]) -> list[Event]:
        self.phase = Phase.CLOSED
        return []

    def _on_closed(self, reply: Reply, texts: list[bytes]) -> list[Event]:
        return []

    def _on_transaction(self, reply: Reply, texts: list[bytes]) -> list[Event]:
        if not self._expect:
            return self._fail(local_reply(421, "4.5.0", f"unexpected reply {reply}"))
        kind, i, txn = self._expect.popleft()
        if kind == "MAIL":
            txn.mail_reply = reply
        elif kind == "RCPT":
            txn.rcpt_replies[i] = reply
        elif kind == "DATA":
            accepted = [k for k, r in enumerate(txn.rcpt_replies) if r is not None and r.ok]
            mail_ok = txn.mail_reply is not None and txn.mail_reply.ok
            if reply.code == 354:
                if mail_ok and accepted and self.lmtp:  # RFC 2033 §4.2: a reply per accepted recipient
                    self._expect.extend(("LMTP", k, txn) for k in accepted)
                    self._out.append(txn.body)
                elif mail_ok and accepted:
                    self._expect.append(("END", 0, txn))
                    self._out.append(txn.body)
                else:  # RFC 2920 §3.1: DATA accepted with no recipient: send an empty message, ignore it
                    self._expect.append(("IGNORE", 0, txn))
                    self._out.append(core_data.END_MARK)
                txn.body = b""
                return []
            for k in accepted:
                txn.results[k] = reply
            self._end_without_data(txn)
            return []
        elif kind in ("END", "BDAT"):
            mail_ok = txn.mail_reply is not None and txn.mail_reply.ok
            for k, r in enumerate(txn.rcpt_replies):
                if mail_ok and r is not None and r.ok:
                    txn.results[k] = reply
            if reply.ok or kind == "END":
                return self._finish(txn)
            self._end_without_data(txn)  # a refused (or pointless, pipelined) BDAT: RSET before the next one
            return []
        elif kind == "LMTP":
            txn.results[i] = reply
            if any(k == "LMTP" and t is txn for k, _, t in self._expect):
                return []
            return self._finish(txn)
        elif kind == "IGNORE":
            self._end_without_data(txn)
            return []
        elif kind == "RSET":
            return self._finish(txn)
        if not self._expect:
            self._send_next()
        return []

    def _finish(self, txn: _Transaction) -> list[Event]:
        """`txn` (the oldest open transaction) is over; the session is Ready when no other is open."""
        results = txn.final_results(local_reply(451, "4.4.2", "no reply for this recipient"))
        done = Done([r for r in results if r is not None])
        self._txns.popleft()
        if self._txns:
            return [done]  # the next one, pipelined, goes on
        self._expect.clear()
        self._queue.clear()
        self.phase = Phase.READY
        return [done, Ready(dict(self.extensions))]


class _Transaction:
    """One message's transaction: the replies so far, and the data to send after a 354."""

    __slots__ = ("msg", "mail_reply", "rcpt_replies", "results", "body")

    def __init__(self, msg: Message, n: int) -> None:
        self.msg = msg
        self.mail_reply: Reply | None = None
        self.rcpt_replies: list[Reply | None] = [None] * n
        self.results: list[Reply | None] = [None] * n
        self.body = b""

    def final_results(self, fallback: Reply) -> list[Reply | None]:
        """Per recipient: its result if known, else the MAIL refusal, the RCPT refusal, or `fallback`."""
        out: list[Reply | None] = []
        mail = self.mail_reply
        for i, res in enumerate(self.results):
            rcpt = self.rcpt_replies[i]
            if res is not None:
                out.append(res)
            elif mail is not None and not mail.ok:
                out.append(mail)
            elif rcpt is not None and not rcpt.ok:
                out.append(rcpt)
            else:
                out.append(fallback)
        return out


def _make_reply(lines: list[tuple[int, bytes]]) -> Reply:
    code = lines[0][0]
    enhanced = ""
    texts = []
    for _, text in lines:
        enh, rest = core_smtp.split_enhanced(text, code)
        if enh:
            enhanced = enh  # RFC 2034 §4: every line carries it; keep the last
        texts.append(rest.decode("utf-8", "replace").strip())
    return Reply(code, enhanced, " ".join(t for t in texts if t))


def _extensions(lines: list[bytes]) -> dict[str, str]:
    """EHLO keywords (upper-cased) and their parameters (RFC 5321 §4.1.1.1 ehlo-line)."""
    out: dict[str, str] = {}
    for line in lines:
        keyword, _, params = line.decode("ascii", "replace").strip().partition(" ")
        if keyword:
            out[keyword.upper()] = params.strip()
    return out


__all__ = [
    "Client", "Done", "Event", "Failed", "Message", "Phase", "Ready", "Recipient", "Reply", "StartTLS",
    "local_reply",
]
