"""IMAP status responses as named constants: kind (OK / NO / BAD / BYE), response code, text (RFC 9051 §7.1).

Each condition maps to exactly one response.  Texts never reveal configuration or which check failed.
Response codes with arguments (APPENDUID, COPYUID, MODIFIED, CAPABILITY ...) are added where they are sent,
with `Status.code_with(args)`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Status:
    kind: str  # "OK", "NO", "BAD", "BYE" or "PREAUTH"
    code: str | None  # response code without brackets ("TRYCREATE", "UIDNEXT 4"), or None
    text: str

    def line(self, tag: bytes = b"*") -> bytes:
        code = f"[{self.code}] " if self.code else ""
        return tag + f" {self.kind} {code}{self.text}\r\n".encode()

    def with_code(self, code: str | None) -> Status:
        return replace(self, code=code)

    def with_text(self, text: str) -> Status:
        return replace(self, text=text)

    @property
    def ok(self) -> bool:
        return self.kind == "OK"


# -- completion ------------------------------------------------------------------------------------------
OK = Status("OK", None, "Completed")
LOGGED_IN = Status("OK", None, "Logged in")
BEGIN_TLS = Status("OK", None, "Begin TLS negotiation now")
LOGOUT_OK = Status("OK", None, "Logout completed")
IDLE_DONE = Status("OK", None, "Idle completed")
SELECTED_RW = Status("OK", "READ-WRITE", "Select completed")
SELECTED_RO = Status("OK", "READ-ONLY", "Examine completed")
NOTHING_MOVED = Status("OK", None, "No messages")
SOME_EXPUNGED = Status("NO", "EXPUNGEISSUED", "Some messages were expunged by another session")
MODIFIED = Status("OK", "MODIFIED", "Conditional store completed")

# -- untagged --------------------------------------------------------------------------------------------
GREETING = Status("OK", None, "fastmail IMAP ready")
BYE_LOGOUT = Status("BYE", None, "Logging out")
BYE_TIMEOUT = Status("BYE", None, "Autologout; idle for too long")
BYE_SHUTDOWN = Status("BYE", "UNAVAILABLE", "Server shutting down")
BYE_TOO_MANY_ERRORS = Status("BYE", None, "Too many invalid commands")
BYE_TOO_MANY_CONNECTIONS = Status("BYE", "UNAVAILABLE", "Too many connections from your address")
BYE_BUSY = Status("BYE", "UNAVAILABLE", "Too many connections, try again later")  # server.max_connections
BYE_MAILBOX_GONE = Status("BYE", None, "Selected mailbox was deleted")

# -- refusals (NO) ---------------------------------------------------------------------------------------
AUTH_FAILED = Status("NO", "AUTHENTICATIONFAILED", "Authentication failed")
LOGIN_THROTTLED = Status("NO", "UNAVAILABLE", "Too many failed logins; try again later")
TOO_MANY_SESSIONS = Status("NO", "LIMIT", "Too many sessions for this user")
PRIVACY_REQUIRED = Status("NO", "PRIVACYREQUIRED", "Plaintext authentication disallowed without TLS")
NONEXISTENT = Status("NO", "NONEXISTENT", "No such mailbox")
ALREADYEXISTS = Status("NO", "ALREADYEXISTS", "Mailbox already exists")
TRYCREATE = Status("NO", "TRYCREATE", "No such mailbox")
CANNOT = Status("NO", "CANNOT", "Operation not permitted")
INUSE = Status("NO", "INUSE", "Mailbox has children")
OVERQUOTA = Status("NO", "OVERQUOTA", "Quota exceeded")
READ_ONLY = Status("NO", "READ-ONLY", "Mailbox is read-only")
TOOBIG = Status("NO", "TOOBIG", "Message too big")
BADCHARSET = Status("NO", "BADCHARSET (UTF-8 US-ASCII)", "Unsupported charset")
UNKNOWN_CTE = Status("NO", "UNKNOWN-CTE", "Unknown content-transfer-encoding")
SERVER_BUG = Status("NO", "SERVERBUG", "Internal error; try again")
UNAVAILABLE = Status("NO", "UNAVAILABLE", "Temporary failure; try again")
NO_TLS = Status("NO", None, "TLS not available")
ALREADY_TLS = Status("BAD", None, "TLS already active")
NO_QUOTA_ROOT = Status("NO", "NONEXISTENT", "No such quota root")

# -- protocol errors (BAD) -------------------------------------------------------------------------------
UNKNOWN_COMMAND = Status("BAD", None, "Unknown command")
WRONG_STATE = Status("BAD", None, "Command not valid in this state")
NO_MAILBOX = Status("BAD", None, "No mailbox selected")
SYNTAX = Status("BAD", None, "Invalid arguments")
LINE_TOO_LONG = Status("BAD", "TOOBIG", "Command line too long")
LITERAL_TOO_BIG = Status("BAD", "TOOBIG", "Literal too big")
BAD_SEQUENCE = Status("BAD", None, "Invalid message sequence number")
AUTH_CANCELLED = Status("BAD", None, "Authentication cancelled")
BAD_MECHANISM = Status("NO", None, "Unsupported authentication mechanism")
LOGIN_DISABLED = Status("NO", "PRIVACYREQUIRED", "LOGIN disabled without TLS; use STARTTLS")
