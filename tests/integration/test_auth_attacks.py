"""Password guessing against the real server (fastmail.hygiene.authfail, docs/hardening.md "Relay, TLS and
authentication"): SMTP AUTH, IMAP LOGIN/AUTHENTICATE and POP3 USER/PASS and AUTH.

- Growing delays: after each failure, a login from that client address or for that account waits twice as
  long before its password is checked (auth.throttle_delay, up to auth.throttle_max_delay), the right
  password as much as a wrong one; a success forgets.  Shared by the workers and the protocols.  The
  delays are read from the server's log (event=auth_check delay=), never measured with a clock.
- No user enumeration: an unknown user and a wrong password get byte-identical replies, and the password
  of an unknown user is checked (argon2id against a dummy hash) all the same — event=auth_check hashed=1.
- No password before TLS: AUTH is not offered and is refused on the submission port before STARTTLS
  (RFC 3207: 530 5.7.0), never offered on port 25; IMAP says LOGINDISABLED and NO [PRIVACYREQUIRED]
  (RFC 9051 §6.2.3, RFC 5530); POP3 -ERR (RFC 2595 §4) — and no password is even looked at.

Each test is its own client: its own source address in 127.0.0.0/8 (the server knows a client by it).
"""

from __future__ import annotations

import base64
import re
import smtplib
import socket
from collections.abc import Iterator

import pytest

from .conftest import AUTH_THROTTLE, PASSWORDS, Server, make_server, poll
from .imapwire import RawIMAP
from .wire import HOST, OPEN, TIMEOUT, insecure_tls_context

pytestmark = pytest.mark.integration

BASE, CAP = 0.1, 0.8
DELAYS = [0.0, 0.1, 0.2, 0.4, 0.8, 0.8]  # before the 1st, 2nd ... attempt, all failing
AUTH = f"[auth]\nthrottle_delay = {BASE}\nthrottle_max_delay = {CAP}\nthrottle_window = 900.0\nfailure_delay = 0.0\n"
ALICE = "alice@example.org"
# an account of its own for each test (failures of one account slow every login to it)
DAVE, ERIN, FRANK = "dave@example.org", "erin@example.org", "frank@example.org"
USERS = {"dave@example.org": "dave-secret", "erin@example.org": "erin-secret", "frank@example.org": "frank-secret"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = make_server(tmp_path_factory.mktemp("auth-attacks"), workers=2,
                    extra="\n[imap]\nplaintext_auth_loopback = false\n[pop3]\nplaintext_auth_loopback = false\n")
    s.config.write_text(s.config.read_text().replace(AUTH_THROTTLE, AUTH))
    for user, password in USERS.items():
        s.cli("user", "add", user, "--password-stdin", input=password.encode() + b"\n")
    s.start()
    yield s
    s.stop()
    s.kill_tree()


def checks(srv: Server, peer: str, count: int) -> list[dict[str, str]]:
    """The first `count` event=auth_check lines of client `peer`, in time order (waits for the workers to
    write them: every 0.2 s)."""
    def found() -> list[dict[str, str]]:
        out = []
        for line in srv.log.read_text().splitlines():
            if " event=auth_check " in line and f" peer={peer} " in line:
                out.append(dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line)))
        return sorted(out, key=lambda f: f["ts"])

    assert poll(lambda: len(found()) >= count), found()
    return found()[:count]


def delays(lines: list[dict[str, str]]) -> list[float]:
    return [float(f["delay"]) for f in lines]


# -- clients from a given source address ---------------------------------------------------------------


def smtp_auth(srv: Server, peer: str, user: str, password: str, mech: str = "PLAIN") -> tuple[int, bytes]:
    """AUTH on the submission port after STARTTLS, from `peer`; the final reply."""
    with smtplib.SMTP(HOST, srv.ports["submission"], timeout=TIMEOUT, source_address=(peer, 0)) as s:
        s.starttls(context=insecure_tls_context())
        s.ehlo()
        if mech == "PLAIN":
            return s.docmd("AUTH PLAIN", base64.b64encode(f"\0{user}\0{password}".encode()).decode())
        assert s.docmd("AUTH LOGIN")[0] == 334
        assert s.docmd(base64.b64encode(user.encode()).decode())[0] == 334
        return s.docmd(base64.b64encode(password.encode()).decode())


def imap_login(srv: Server, peer: str, user: str, password: str, sasl: bool = False) -> bytes:
    """LOGIN (or AUTHENTICATE PLAIN with an initial response) over IMAPS from `peer`; the tagged reply."""
    c = RawIMAP(srv.ports["imaps"], tls=True, source=peer)
    try:
        if sasl:
            return c.cmd("a", b"AUTHENTICATE PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()))[1]
        return c.cmd("a", f'LOGIN "{user}" "{password}"')[1]
    finally:
        c.close()


class POP3Raw:
    def __init__(self, srv: Server, peer: str) -> None:
        raw = socket.create_connection((HOST, srv.ports["pop3s"]), timeout=TIMEOUT, source_address=(peer, 0))
        self.sock = insecure_tls_context().wrap_socket(raw)
        OPEN.append(self.sock)
        self.buf = b""
        assert self.line().startswith(b"+OK")

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        out, _, self.buf = self.buf.partition(b"\r\n")
        return out

    def cmd(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()


def pop3_login(srv: Server, peer: str, user: str, password: str, sasl: bool = False) -> list[bytes]:
    """USER/PASS (or AUTH PLAIN) over POP3S from `peer`; the replies."""
    p = POP3Raw(srv, peer)
    try:
        if sasl:
            return [p.cmd("AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode())]
        return [p.cmd(f"USER {user}"), p.cmd(f"PASS {password}")]
    finally:
        p.sock.close()


# -- growing delays ------------------------------------------------------------------------------------


def test_smtp_delay_doubles_per_failure_applies_to_the_right_password_and_resets_on_success(srv):
    peer = "127.0.0.2"
    for _ in DELAYS:
        assert smtp_auth(srv, peer, DAVE, "wrong") == (535, b"5.7.8 Authentication credentials invalid")
    # the right password waits as long as a wrong one would: a client that gives up early learns nothing
    assert smtp_auth(srv, peer, DAVE, USERS[DAVE])[0] == 235
    assert smtp_auth(srv, peer, DAVE, "wrong again")[0] == 535  # forgotten by the success
    lines = checks(srv, peer, len(DELAYS) + 2)
    assert delays(lines) == [*DELAYS, CAP, 0.0]
    assert [f["ok"] for f in lines] == ["0"] * len(DELAYS) + ["1", "0"]


def test_per_account_across_addresses_and_per_address_across_accounts(srv):
    # one account, a new address for each guess: the account's failures count
    for i, _ in enumerate(DELAYS):
        assert smtp_auth(srv, f"127.0.1.{i + 1}", "bob@example.org", f"guess{i}")[0] == 535
    lines = [checks(srv, f"127.0.1.{i + 1}", 1)[0] for i in range(len(DELAYS))]
    assert delays(sorted(lines, key=lambda f: f["ts"])) == DELAYS
    # one address, a new account for each guess (known or not): the address's failures count
    accounts = ["u0@example.org", "u1@example.org", "u2@example.org", "u3@remote.test", "u4", "U0@EXAMPLE.ORG"]
    for account in accounts:
        assert smtp_auth(srv, "127.0.2.1", account, "guess")[0] == 535
    assert delays(checks(srv, "127.0.2.1", len(accounts))) == DELAYS
    # an address and an account that did nothing wrong are not slowed down
    assert smtp_auth(srv, "127.0.2.99", "carol@example.org", PASSWORDS["carol@example.org"])[0] == 235
    assert delays(checks(srv, "127.0.2.99", 1)) == [0.0]


def test_imap_and_pop3_share_the_throttle(srv):
    """The same counts behind every protocol and mechanism: IMAP failures slow POP3 and SMTP down."""
    peer = "127.0.3.1"
    assert imap_login(srv, peer, ERIN, "w1") == b"a NO [AUTHENTICATIONFAILED] Authentication failed"
    assert imap_login(srv, peer, ERIN, "w2", sasl=True) == b"a NO [AUTHENTICATIONFAILED] Authentication failed"
    assert pop3_login(srv, peer, ERIN, "w3")[-1].startswith(b"-ERR [AUTH] ")
    assert pop3_login(srv, peer, ERIN, "w4", sasl=True)[-1].startswith(b"-ERR [AUTH] ")
    assert smtp_auth(srv, peer, ERIN, "w5", mech="LOGIN")[0] == 535
    assert imap_login(srv, peer, ERIN, USERS[ERIN]).startswith(b"a OK ")
    assert pop3_login(srv, peer, ERIN, USERS[ERIN])[-1].startswith(b"+OK")
    assert delays(checks(srv, peer, 7)) == [*DELAYS[:5], CAP, 0.0]


# -- no user enumeration -------------------------------------------------------------------------------


def test_unknown_user_and_wrong_password_get_identical_replies_and_the_same_hash_work(srv):
    unknown, peer = "nobody@example.org", "127.0.4.1"
    for mech in ("PLAIN", "LOGIN"):
        assert smtp_auth(srv, peer, unknown, "pw", mech) == smtp_auth(srv, peer, FRANK, "pw", mech)
    for sasl in (False, True):
        assert imap_login(srv, peer, unknown, "pw", sasl) == imap_login(srv, peer, FRANK, "pw", sasl)
        assert pop3_login(srv, peer, unknown, "pw", sasl) == pop3_login(srv, peer, FRANK, "pw", sasl)
    # a user name that is no address at all, too
    assert smtp_auth(srv, peer, "no address", "pw") == smtp_auth(srv, peer, FRANK, "pw")
    lines = checks(srv, peer, 14)
    assert [f["known"] for f in lines] == ["0", "1"] * 7  # the server did tell them apart ...
    assert {f["hashed"] for f in lines} == {"1"}  # ... and ran argon2id for every one of them
    assert {f["ok"] for f in lines} == {"0"}


# -- no password without TLS ---------------------------------------------------------------------------


def test_no_auth_before_tls(srv):
    peer = "127.0.5.1"
    with smtplib.SMTP(HOST, srv.ports["submission"], timeout=TIMEOUT, source_address=(peer, 0)) as s:
        s.ehlo()
        assert "auth" not in s.esmtp_features and "starttls" in s.esmtp_features
        plain = base64.b64encode(f"\0{ALICE}\0{PASSWORDS[ALICE]}".encode()).decode()
        assert s.docmd("AUTH PLAIN", plain) == (530, b"5.7.0 Must issue a STARTTLS command first")
        s.starttls(context=insecure_tls_context())
        s.ehlo()
        assert s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
    with smtplib.SMTP(HOST, srv.ports["smtp"], timeout=TIMEOUT, source_address=(peer, 0)) as s:
        s.ehlo()
        assert "auth" not in s.esmtp_features  # port 25 takes no AUTH, TLS or not (submission is for users)
        assert s.docmd("AUTH PLAIN", plain)[0] == 500
        s.starttls(context=insecure_tls_context())
        s.ehlo()
        assert "auth" not in s.esmtp_features
    c = RawIMAP(srv.ports["imap"], source=peer)
    assert b"LOGINDISABLED" in c.greeting and b"AUTH=PLAIN" not in c.greeting
    assert c.cmd("a", f'LOGIN "{ALICE}" "{PASSWORDS[ALICE]}"')[1].startswith(b"a NO [PRIVACYREQUIRED] ")
    assert c.cmd("b", b"AUTHENTICATE PLAIN " + plain.encode())[1].startswith(b"b NO [PRIVACYREQUIRED] ")
    assert c.cmd("c", "STARTTLS")[1].startswith(b"c OK")
    c.starttls()
    caps = c.cmd("d", "CAPABILITY")[0][0]
    assert b"LOGINDISABLED" not in caps and b"AUTH=PLAIN" in caps
    assert c.cmd("e", f'LOGIN "{ALICE}" "{PASSWORDS[ALICE]}"')[1].startswith(b"e OK ")
    c.close()
    raw = socket.create_connection((HOST, srv.ports["pop3"]), timeout=TIMEOUT, source_address=(peer, 0))
    OPEN.append(raw)
    p = POP3Raw.__new__(POP3Raw)
    p.sock, p.buf = raw, b""
    assert p.line().startswith(b"+OK")
    capa = p.cmd("CAPA")
    lines = [capa]
    while lines[-1] != b".":
        lines.append(p.line())
    assert b"STLS" in lines and b"USER" not in lines and not any(x.startswith(b"SASL") for x in lines)
    assert p.cmd(f"USER {ALICE}").startswith(b"-ERR")
    assert p.cmd(f"PASS {PASSWORDS[ALICE]}").startswith(b"-ERR")
    assert p.cmd("AUTH PLAIN " + plain).startswith(b"-ERR")
    assert p.cmd("STLS").startswith(b"+OK")
    p.sock = insecure_tls_context().wrap_socket(raw)
    assert p.cmd(f"USER {ALICE}").startswith(b"+OK")
    assert p.cmd(f"PASS {PASSWORDS[ALICE]}").startswith(b"+OK")
    p.sock.close()
    # the passwords sent in the clear were never looked at: the only checks are the two over TLS
    assert [f["ok"] for f in checks(srv, peer, 2)] == ["1", "1"]
    assert srv.log.read_text().count(f" event=auth_check peer={peer} ") == 2

