"""SMTP/LMTP replies as named constants: code, RFC 3463 enhanced status code, text.

Each internal condition maps to exactly one reply.  Texts never reveal configuration or which check failed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    enhanced: str
    text: str

    def encode(self) -> bytes:
        """Wire form; a text with newlines becomes a multi-line reply (RFC 5321 §4.2.1)."""
        lines = self.text.split("\n")
        prefix = f"{self.code}-{self.enhanced} " if self.enhanced else f"{self.code}-"
        last = f"{self.code} {self.enhanced} " if self.enhanced else f"{self.code} "
        out = [prefix + line for line in lines[:-1]] + [last + lines[-1]]
        return ("\r\n".join(out) + "\r\n").encode()

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, text)

    @property
    def positive(self) -> bool:
        return self.code < 400

    @property
    def permanent(self) -> bool:
        return self.code >= 500


OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RCPT_OK = Reply(250, "2.1.5", "Recipient OK")
DATA_START = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
BYE = Reply(221, "2.0.0", "Bye")
VRFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
STARTTLS_GO = Reply(220, "2.0.0", "Ready to start TLS")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
CHUNK_OK = Reply(250, "2.0.0", "Chunk accepted")
HELP = Reply(
    214, "2.0.0",
    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH\nSee RFC 5321",
)

# 4xx: try again later
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
BUSY = Reply(421, "4.3.2", "Too many connections, try again later")  # server.max_connections, instead of 220
TIMEOUT = Reply(421, "4.4.2", "Timeout, closing connection")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
TOO_MANY_RCPTS = Reply(452, "4.5.3", "Too many recipients")
MAILBOX_FULL_TEMP = Reply(452, "4.2.2", "Mailbox full")
# The disk is full (RFC 5321 §4.2.2 452, RFC 3463 X.3.1 "Mail system full"): retried until space is back.
INSUFFICIENT_STORAGE = Reply(452, "4.3.1", "Insufficient system storage")
TLS_UNAVAILABLE = Reply(454, "4.7.0", "TLS not available")
AUTH_TEMP = Reply(454, "4.7.0", "Temporary authentication failure")

# 5xx: permanent
UNRECOGNIZED = Reply(500, "5.5.2", "Command unrecognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
SYNTAX_PARAMS = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
NO_HELO = Reply(503, "5.5.1", "Send EHLO/HELO first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command first")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT command first")
ALREADY_AUTH = Reply(503, "5.5.1", "Already authenticated")
BAD_PARAM = Reply(555, "5.5.4", "Unsupported MAIL/RCPT parameter")
NEED_TLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
NEED_AUTH = Reply(530, "5.7.0", "Authentication required")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
AUTH_BAD_B64 = Reply(501, "5.5.2", "Cannot decode response")
AUTH_MECH = Reply(504, "5.5.4", "Unrecognized authentication mechanism")
USER_UNKNOWN = Reply(550, "5.1.1", "User unknown")
PREGREET = Reply(554, "5.5.1", "Protocol error: talked before the greeting")  # smtp.greeting_delay
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many hops: mail loop")  # RFC 5321 §6.3, Received: fields counted
XCLIENT_DENIED = Reply(550, "5.7.0", "Insufficient authorization")  # XCLIENT from a client that is no proxy
XCLIENT_UNKNOWN_LOGIN = Reply(550, "5.7.8", "XCLIENT LOGIN is no user here")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address not owned by authenticated user")
TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
MAILBOX_FULL = Reply(552, "5.2.2", "Mailbox full")
NO_VALID_RCPTS = Reply(554, "5.5.1", "No valid recipients")
BARE_LF = Reply(554, "5.6.0", "Message contains bare CR or LF; use CRLF line endings")
NEED_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
LMTP_NO_HELO = Reply(500, "5.5.1", "This is LMTP: use LHLO")

# -- for the log: a short name for why a command was refused ----------------------------------------------

_NAMES = {v: k.lower() for k, v in list(globals().items()) if isinstance(v, Reply) and v.code >= 400}
# By code and enhanced code: those of one constant only (a reply with its text changed), and the replies the
# address parser builds (fastmail._core.smtp.SMTPSyntaxError).
_CODES: dict[tuple[int, str], str | None] = {}
for _reply, _name in _NAMES.items():
    _CODES[_reply.code, _reply.enhanced] = None if (_reply.code, _reply.enhanced) in _CODES else _name
_CODES.update({(501, "5.5.4"): "syntax", (501, "5.1.3"): "bad_address", (553, "5.6.7"): "need_smtputf8"})
del _reply, _name


def reason(reply: Reply) -> str:
    """``user_unknown``, ``relay_denied``, ``too_big``…: the name of the condition a negative reply stands for
    (its constant here, lower-cased), else the one its codes belong to, else the codes."""
    return _NAMES.get(reply) or _CODES.get((reply.code, reply.enhanced)) or f"{reply.code}_{reply.enhanced}"
