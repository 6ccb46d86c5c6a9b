"""Hostile and broken clients against the real server: over-long lines, too many recipients, oversize
messages, unknown commands, malformed addresses, relay tricks, disconnects in DATA, binary garbage, error
floods, command floods and SMTP smuggling.  After every test another client is still served, and at the
end every message those clients sent is stored, once, intact."""

from __future__ import annotations

import json
import random
import smtplib
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from .conftest import Server
from .wire import HOST, Client, close_open_sockets, insecure_tls_context, module_server

pytestmark = pytest.mark.integration

TIMEOUT = 20.0
MAX_SIZE = 1048576  # smtp.max_message_size in the fixture's config
CAROL = "carol@example.org"
PROBE_USER = "bob@example.org"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from module_server(tmp_path_factory, "bad",
                             setup=lambda s: s.cli("alias", "add", "jörg@example.org", CAROL))


PROBES: list[bytes] = []  # messages the after-test probes sent to PROBE_USER, checked by the last test


@pytest.fixture(autouse=True)
def still_serving(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    close_open_sockets()  # before the probe: the raw clients are gone when the next one comes
    if "srv" not in request.fixturenames:
        return
    srv = request.getfixturevalue("srv")
    body = f"Subject: probe {uuid.uuid4().hex}\r\n\r\nafter {request.node.name}\r\n".encode()
    with smtplib.SMTP(HOST, srv.ports["smtp"], local_hostname="probe.test", timeout=TIMEOUT) as s:
        s.ehlo()
        assert s.mail("probe@remote.test")[0] == 250
        assert s.rcpt(PROBE_USER)[0] == 250
        code, text = s.data(body)
        assert code == 250, text
    PROBES.append(body)


# -- helpers -------------------------------------------------------------------------------------------------


def raw(port: int, greet: bool = True) -> Client:
    return Client(port, greet=greet, timeout=TIMEOUT)


def smtp_client(srv: Server) -> Client:
    c = raw(srv.ports["smtp"])
    c.ehlo()
    return c


def listing(srv: Server, user: str) -> list[dict]:
    return json.loads(srv.cli("message", "list", user, "INBOX", "--json").stdout)


def uids(srv: Server, user: str) -> set[int]:
    return {m["uid"] for m in listing(srv, user)}


def new_messages(srv: Server, user: str, before: set[int]) -> list[bytes]:
    return [srv.cli("message", "show", user, "INBOX", str(m["uid"])).stdout
            for m in listing(srv, user) if m["uid"] not in before]


def body_of(raw: bytes) -> bytes:
    """The message without the Received: header the server prepends."""
    assert raw.startswith(b"Received: ")
    pos = 0
    for _ in range(20):
        pos = raw.index(b"\r\n", pos) + 2
        if raw[pos : pos + 1] not in (b" ", b"\t"):
            return raw[pos:]
    raise AssertionError("Received: does not end")


def transaction(c: Client, rcpt: str = CAROL, tag: str = "") -> bytes:
    """A normal message on an open session; returns the bytes that should be stored."""
    body = f"Subject: normal {tag or uuid.uuid4().hex}\r\n\r\nstill works\r\n".encode()
    assert c.cmd("MAIL FROM:<s@remote.test>").status == "250 2.1.0"
    assert c.cmd(f"RCPT TO:<{rcpt}>").status == "250 2.1.5"
    assert c.cmd("DATA").code == 354
    c.send(body + b".\r\n")
    r = c.reply()
    assert r.status == "250 2.0.0" and "queued as" in r.last, r
    return body


def queue(srv: Server) -> list[dict]:
    return json.loads(srv.cli("queue", "list", "--json").stdout)


def log_count(srv: Server, needle: str) -> int:
    return srv.log.read_text(errors="replace").count(needle)


def wait_log_count(srv: Server, needle: str, at_least: int, limit: float = 10.0) -> None:
    """Bounded wait for the server to log an event that sends no reply (a disconnect)."""
    deadline = time.monotonic() + limit
    while log_count(srv, needle) < at_least:
        assert time.monotonic() < deadline, f"{needle!r} not logged {at_least} times"
        time.sleep(0.02)


# -- over-long lines ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [10 * 1024, 1024 * 1024])
def test_overlong_command_line(srv, size):
    before = uids(srv, CAROL)
    c = smtp_client(srv)
    r = c.cmd(b"NOOP " + b"x" * size)
    assert r.last == "500 5.5.2 Line too long"
    assert c.cmd("NOOP").status == "250 2.0.0"  # the rest of the long line was dropped, not interpreted
    # inside a transaction too: the transaction survives
    assert c.cmd("MAIL FROM:<s@remote.test>").status == "250 2.1.0"
    assert c.cmd(b"RCPT TO:<" + b"a" * size + b"@example.org>").status == "500 5.5.2"
    assert c.cmd(f"RCPT TO:<{CAROL}>").status == "250 2.1.5"
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: long\r\n\r\nafter a long line\r\n.\r\n")
    assert c.reply().status == "250 2.0.0"
    assert c.cmd("QUIT").status == "221 2.0.0"
    c.close()
    [raw] = new_messages(srv, CAROL, before)
    assert body_of(raw) == b"Subject: long\r\n\r\nafter a long line\r\n"


def test_line_length_limit_is_exact(srv):
    c = smtp_client(srv)
    assert c.cmd(b"NOOP " + b"x" * (4096 - 5)).status == "250 2.0.0"  # smtp.max_line_length, CRLF excluded
    assert c.cmd(b"NOOP " + b"x" * (4096 - 4)).status == "500 5.5.2"
    assert c.cmd("NOOP").status == "250 2.0.0"
    c.close()


# -- limits ---------------------------------------------------------------------------------------------------


def test_too_many_recipients(srv):
    before = uids(srv, "alice@example.org")
    c = smtp_client(srv)
    assert c.cmd("MAIL FROM:<s@remote.test>").status == "250 2.1.0"
    c.send(b"".join(f"RCPT TO:<alice+{i}@example.org>\r\n".encode() for i in range(115)))
    rs = c.replies(115)
    assert [r.status for r in rs[:100]] == ["250 2.1.5"] * 100
    assert [r.last for r in rs[100:]] == ["452 4.5.3 Too many recipients"] * 15  # not errors: no 421
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: hundred\r\n\r\nto a hundred\r\n.\r\n")
    assert c.reply().status == "250 2.0.0"
    assert c.cmd("QUIT").status == "221 2.0.0"
    c.close()
    [raw] = new_messages(srv, "alice@example.org", before)  # a hundred addresses of alice: one copy
    assert body_of(raw) == b"Subject: hundred\r\n\r\nto a hundred\r\n"


def test_oversize_declared_with_size(srv):
    c = smtp_client(srv)
    assert c.cmd(f"MAIL FROM:<s@remote.test> SIZE={MAX_SIZE + 1}").last == (
        "552 5.3.4 Message size exceeds fixed maximum message size")
    assert c.cmd(f"RCPT TO:<{CAROL}>").status == "503 5.5.1"  # no transaction was opened
    assert c.cmd("MAIL FROM:<s@remote.test> SIZE=99999999999999999999").status == "552 5.3.4"
    assert c.cmd(f"MAIL FROM:<s@remote.test> SIZE={MAX_SIZE}").status == "250 2.1.0"  # the limit itself is fine
    c.close()


def test_oversize_undeclared_data(srv):
    before = uids(srv, CAROL)
    c = smtp_client(srv)
    assert c.cmd("MAIL FROM:<s@remote.test>").status == "250 2.1.0"
    assert c.cmd(f"RCPT TO:<{CAROL}>").status == "250 2.1.5"
    assert c.cmd("DATA").code == 354
    line = b"y" * 998 + b"\r\n"
    c.send(b"Subject: too big\r\n\r\n" + line * (MAX_SIZE // len(line) + 2) + b".\r\n")
    assert c.reply().last == "552 5.3.4 Message size exceeds fixed maximum message size"
    assert c.cmd("NOOP").status == "250 2.0.0"
    body = transaction(c)  # the same session goes on
    c.close()
    [raw] = new_messages(srv, CAROL, before)  # only the normal one
    assert body_of(raw) == body


def sized(n: int, tag: bytes) -> bytes:
    """A message of exactly N bytes, in CRLF lines."""
    head = b"Subject: " + tag + b"\r\n\r\n"
    line = b"s" * 998 + b"\r\n"
    k, r = divmod(n - len(head), len(line))
    if r < 2:  # the last line needs room for its CRLF
        k, r = k - 1, r + len(line)
    return head + line * k + b"t" * (r - 2) + b"\r\n"


@pytest.mark.parametrize("command", ["DATA", "BDAT"])
def test_size_limit_is_exact(srv, command):
    before = uids(srv, CAROL)
    c = smtp_client(srv)
    at_limit, over = sized(MAX_SIZE, b"at the limit"), sized(MAX_SIZE + 1, b"one over")
    assert len(at_limit) == MAX_SIZE and len(over) == MAX_SIZE + 1
    statuses = []
    for body in (over, at_limit):
        assert c.cmd("MAIL FROM:<s@remote.test>").status == "250 2.1.0"
        assert c.cmd(f"RCPT TO:<{CAROL}>").status == "250 2.1.5"
        if command == "DATA":
            assert c.cmd("DATA").code == 354
            c.send(body + b".\r\n")  # no line starts with "."
        else:
            c.send(f"BDAT {len(body)} LAST\r\n".encode() + body)
        statuses.append(c.reply().status)
    assert statuses == ["552 5.3.4", "250 2.0.0"]
    c.close()
    [raw] = new_messages(srv, CAROL, before)
    assert body_of(raw) == at_limit


def test_oversize_bdat(srv):
    before = uids(srv, CAROL)
    c = smtp_client(srv)
    assert c.cmd("MAIL FROM:<s@remote.test>").status == "250 2.1.0"
    assert c.cmd(f"RCPT TO:<{CAROL}>").status == "250 2.1.5"
    chunk = b"z" * 600_000
    c.send(b"BDAT 600000\r\n" + chunk)
    assert c.reply().status == "250 2.0.0"
    c.send(b"BDAT 600000 LAST\r\n" + chunk)
    assert c.reply().status == "552 5.3.4"
    body = transaction(c)
    c.close()
    [raw] = new_messages(srv, CAROL, before)
    assert body_of(raw) == body


# -- unknown commands, bad syntax, bad sequence ------------------------------------------------------------


def test_unknown_commands(srv):
    c = smtp_client(srv)
    for line in ["XYZZY", "FOO bar baz", "ETRN example.org", "TURN", "MAIL-FROM:<a@b.c>", "12345", "", " NOOP"]:
        assert c.cmd(line).last == "500 5.5.2 Command unrecognized", line
    assert c.cmd("EXPN team@example.org").status == "502 5.5.1"
    assert c.cmd("noop").status == "250 2.0.0"  # verbs are case-insensitive
    transaction(c)
    c.close()


MALFORMED = [
    ("MAIL FROM:alice@example.org", "501 5.5.4"),
    ("MAIL FROM:<alice@example.org", "501 5.5.4"),
    ("MAIL FROM: <alice@example.org> SIZE", "501 5.5.4"),
    ("MAIL FROM:<s@remote.test> SIZE=abc", "501 5.5.4"),
    ("MAIL FROM:<s@remote.test> SIZE=", "501 5.5.4"),
    ("MAIL FROM:<s@remote.test> BODY", "501 5.5.4"),
    ("MAIL FROM:<s@remote.test> BODY=BINARYMIME", "555 5.5.4"),
    ("MAIL FROM:<s@remote.test> X-FOO=1", "555 5.5.4"),
    ("MAIL FROM:<s@remote.test> SMTPUTF8=yes", "501 5.5.4"),
    ("MAIL FROM:<a@@example.org>", "501 5.1.3"),
    ("MAIL FROM:<@example.org>", "501 5.1.3"),
    ("MAIL FROM:<a b@example.org>", "501 5.1.3"),
    ("MAIL FROM:<.a@example.org>", "501 5.1.3"),
    ("MAIL FROM:<a..b@example.org>", "501 5.1.3"),
    ("MAIL FROM:<a@exa_mple.org>", "501 5.1.3"),
    ("MAIL FROM:<a@-example.org>", "501 5.1.3"),
    ("MAIL FROM:<a@example..org>", "501 5.1.3"),
    ("MAIL FROM:<a@1.2.3.4>", "501 5.1.3"),
    ("MAIL FROM:<a@[300.1.1.1]>", "501 5.1.3"),
    ("MAIL FROM:<a@[01.1.1.1]>", "501 5.1.3"),
    ("MAIL FROM:<a@[IPv6:fe80::1%eth0]>", "501 5.1.3"),
    (f"MAIL FROM:<{'a' * 65}@example.org>", "501 5.1.3"),
    ("MAIL FROM:<a@example.org\x00>", "501 5.1.3"),
    ("MAIL FROM:<müller@example.org>", "553 5.6.7"),
    ("RCPT TO:<>", "501 5.1.3"),
    ("RCPT TO:carol@example.org", "501 5.5.4"),
    ("RCPT TO:<carol>", "501 5.1.3"),
    ("RCPT TO:<carol@example.org> FOO=BAR", "555 5.5.4"),
    ("RCPT TO:<carol@example.org> NOTIFY=SOMETIMES", "555 5.5.4"),
    ("RCPT TO:<carol@example.org> NOTIFY", "501 5.5.4"),
    ("RCPT TO:<jörg@example.org>", "553 5.6.7"),
    ('RCPT TO:<"unterminated@example.org>', "501 5.5.4"),
    ('RCPT TO:<""@example.org>', "501 5.1.3"),
]


@pytest.mark.parametrize("line, want", MALFORMED, ids=[str(i) for i in range(len(MALFORMED))])
def test_malformed_addresses_and_parameters(srv, line, want):
    c = smtp_client(srv)
    if line.startswith("RCPT"):
        assert c.cmd("MAIL FROM:<s@remote.test>").status == "250 2.1.0"
    r = c.cmd(line.encode())
    assert r.status == want, (line, r)
    if line.startswith("MAIL"):
        assert c.cmd("RCPT TO:<carol@example.org>").status == "503 5.5.1"  # MAIL was not accepted
        assert c.cmd("MAIL FROM:<s@remote.test>").status == "250 2.1.0"
    assert c.cmd(f"RCPT TO:<{CAROL}>").status == "250 2.1.5"  # the transaction goes on
    assert c.cmd("RSET").status == "250 2.0.0"
    c.close()


def test_bad_sequences(srv):
    c = raw(srv.ports["smtp"])
    assert c.cmd("MAIL FROM:<s@remote.test>").last == "503 5.5.1 Send EHLO/HELO first"
    assert c.cmd("DATA").status == "503 5.5.1"
    c.ehlo()
    assert c.cmd("DATA").last == "503 5.5.1 Need MAIL command first"
    assert c.cmd(f"RCPT TO:<{CAROL}>").last == "503 5.5.1 Need MAIL command first"
    assert c.cmd("MAIL FROM:<s@remote.test>").status == "250 2.1.0"
    assert c.cmd("DATA").last == "503 5.5.1 Need RCPT command first"
    assert c.cmd("RCPT TO:<nobody@example.org>").status == "550 5.1.1"
    assert c.cmd("DATA").last == "554 5.5.1 No valid recipients"
    assert c.cmd("DATA extra").status == "501 5.5.4"
    assert c.cmd("AUTH PLAIN AHUAcA==").status == "500 5.5.2"  # no AUTH on port 25
    assert c.cmd("RSET").status == "250 2.0.0"
    transaction(c)  # 9 errors so far: one more would close the session
    c.close()


# -- relay attempts -------------------------------------------------------------------------------------------

RELAY_TRICKS = [
    ("<victim@remote.test>", "554 5.7.1"),
    ("<victim%remote.test@example.org>", "550 5.1.1"),
    ('<"victim@remote.test"@example.org>', "550 5.1.1"),
    ("<@example.org:victim@remote.test>", "554 5.7.1"),
    ("<@example.org,@mx.example.org:victim@remote.test>", "554 5.7.1"),
    ("<remote.test!victim@example.org>", "550 5.1.1"),
    ("<victim@[127.0.0.1]>", "554 5.7.1"),
    ("<victim@[IPv6:::1]>", "554 5.7.1"),
    ("<VICTIM@REMOTE.TEST>", "554 5.7.1"),
    ("<@EXAMPLE.ORG:VICTIM@REMOTE.TEST>", "554 5.7.1"),
    ("<victim@remote.test.>", "501 5.1.3"),
    ("<alice@example.org.>", "501 5.1.3"),
    ("<victim@remote.test@example.org>", "501 5.1.3"),
    ("<victim@example.org.remote.test>", "554 5.7.1"),
    ("<victim@localhost>", "554 5.7.1"),
    ("<victim@mx.example.org>", "554 5.7.1"),
]


@pytest.mark.parametrize("mode", ["smtp", "lmtp"])
@pytest.mark.parametrize("rcpt, want", RELAY_TRICKS, ids=[t for t, _ in RELAY_TRICKS])
def test_relay_tricks_refused(srv, mode, rcpt, want):
    c = raw(srv.ports[mode])
    assert c.cmd("LHLO client.test" if mode == "lmtp" else "EHLO client.test").code == 250
    assert c.cmd("MAIL FROM:<s@remote.test>").status == "250 2.1.0"
    assert c.cmd(f"RCPT TO:{rcpt}").status == want
    assert c.cmd("DATA").status == "554 5.5.1"  # nothing was accepted
    assert c.cmd("QUIT").status == "221 2.0.0"
    c.close()


def test_relay_tricks_queued_nothing(srv):
    # A pipelined batch of every trick, then a local recipient: only the local one is accepted.
    c = smtp_client(srv)
    before = uids(srv, CAROL)
    tricks = [t for t, want in RELAY_TRICKS if want == "554 5.7.1"][:8]  # 8 errors: under smtp.max_errors
    c.send(b"MAIL FROM:<s@remote.test>\r\n" + b"".join(f"RCPT TO:{t}\r\n".encode() for t in tricks)
           + f"RCPT TO:<{CAROL}>\r\nDATA\r\n".encode())
    rs = c.replies(len(tricks) + 3)
    assert [r.status for r in rs] == ["250 2.1.0"] + ["554 5.7.1"] * len(tricks) + ["250 2.1.5", "354"]
    c.send(b"Subject: tricks\r\n\r\nonly local\r\n.\r\n")
    assert c.reply().status == "250 2.0.0"
    c.close()
    assert len(new_messages(srv, CAROL, before)) == 1
    assert queue(srv) == []  # no unauthenticated client ever got anything queued for a remote host


# -- disconnects ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["close-in-data", "reset-in-data", "close-in-bdat", "close-before-dot"])
def test_client_disconnects_mid_message(srv, how):
    before = uids(srv, CAROL)
    seen = log_count(srv, "disconnect_in_data")
    c = smtp_client(srv)
    assert c.cmd("MAIL FROM:<s@remote.test>").status == "250 2.1.0"
    assert c.cmd(f"RCPT TO:<{CAROL}>").status == "250 2.1.5"
    partial = b"Subject: cut\r\n\r\n" + b"half of a message\r\n" * 1000
    if how == "close-in-bdat":
        c.send(b"BDAT 100000 LAST\r\n" + partial)
    else:
        assert c.cmd("DATA").code == 354
        # "close-before-dot": everything but the final "." -- CRLF "." without its CRLF does not end DATA
        c.send(partial + (b"." if how == "close-before-dot" else b""))
    if how == "reset-in-data":
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
    c.close()
    wait_log_count(srv, "disconnect_in_data", seen + 1)  # the server saw the cut (no reply to wait for)
    c2 = smtp_client(srv)
    body = transaction(c2)
    assert c2.cmd("QUIT").status == "221 2.0.0"
    c2.close()
    [raw] = new_messages(srv, CAROL, before)  # the cut message is not stored, the next one is
    assert body_of(raw) == body


@pytest.mark.parametrize("quit", [True, False], ids=["quit", "no-quit"])
def test_client_half_closes_after_a_pipelined_message(srv, quit):
    """Like `printf ... | nc`: the client's FIN right after its last command; every reply still arrives."""
    before = uids(srv, CAROL)
    c = smtp_client(srv)
    body = f"Subject: half close {uuid.uuid4().hex}\r\n\r\nx\r\n".encode()
    c.send(f"MAIL FROM:<s@remote.test>\r\nRCPT TO:<{CAROL}>\r\nDATA\r\n".encode() + body + b".\r\n"
           + (b"QUIT\r\n" if quit else b""))
    c.sock.shutdown(socket.SHUT_WR)
    rs = c.until_eof()
    assert [r.status for r in rs] == ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"] + (["221 2.0.0"] if quit else [])
    c.close()
    [raw] = new_messages(srv, CAROL, before)
    assert body_of(raw) == body


# -- garbage ----------------------------------------------------------------------------------------------------


def garbage(rng: random.Random, n: int) -> bytes:
    data = bytes(rng.getrandbits(8) for _ in range(n)).replace(b"\n", b"").replace(b"\r", b"")
    return data[: n // 2] + b"\x00" + data[n // 2 :]


def test_binary_garbage_line(srv):
    rng = random.Random(1)
    c = raw(srv.ports["smtp"])
    assert c.cmd(garbage(rng, 1000)).last == "500 5.5.2 Command unrecognized"  # before EHLO
    c.ehlo()
    for n in (1, 10, 3000):
        assert c.cmd(garbage(rng, n)).status == "500 5.5.2"
    assert c.cmd(b"NOOP\x00").status == "500 5.5.2"
    assert c.cmd(b"\xff\xfe\x00MAIL FROM:<s@remote.test>").status == "500 5.5.2"
    assert c.cmd(b"MAIL FROM:<s@remote.test>\x00").status == "501 5.5.4"
    body = transaction(c)
    assert c.cmd("QUIT").status == "221 2.0.0"
    c.close()
    assert body.startswith(b"Subject: normal ")


def test_garbage_blob_with_line_ends(srv):
    """Random binary with CRs and LFs: every reply is a 5xx, then 421 after too many, never a crash."""
    rng = random.Random(2)
    c = smtp_client(srv)
    blob = bytes(rng.getrandbits(8) for _ in range(64 * 1024))
    blob = blob.replace(b"\n", b"").replace(b"\r", b"")
    lines = [blob[i : i + 500] for i in range(0, 20 * 500, 500)]  # 20 binary lines
    c.send(b"\r\n".join(lines) + b"\r\n")
    rs = c.until_eof()
    assert [r.status for r in rs] == ["500 5.5.2"] * 10 + ["421 4.7.0"]
    c.close()


def test_garbage_on_the_implicit_tls_port(srv):
    rng = random.Random(3)
    c = raw(srv.ports["submissions"], greet=False)
    c.send(b"\x00garbage" + bytes(rng.getrandbits(8) for _ in range(4096)))  # not a TLS record type
    assert c.until_eof(leftover_ok=True) == []  # the TLS handshake fails: closed without a word
    c.close()
    with smtplib.SMTP_SSL(HOST, srv.ports["submissions"], context=insecure_tls_context(), timeout=TIMEOUT) as s:
        assert s.ehlo()[0] == 250 and s.has_extn("auth")


# -- floods ---------------------------------------------------------------------------------------------------


def test_too_many_errors_closes_with_421(srv):
    c = smtp_client(srv)
    for i in range(9):
        assert c.cmd(f"BOGUS{i}").status == "500 5.5.2"
    c.send(b"BOGUS\r\nNOOP\r\n")
    rs = c.until_eof()
    assert [r.last for r in rs] == ["500 5.5.2 Command unrecognized", "421 4.7.0 Too many errors, closing connection"]
    c.close()


def test_refused_recipients_count_as_errors(srv):
    c = smtp_client(srv)
    assert c.cmd("MAIL FROM:<s@remote.test>").status == "250 2.1.0"
    c.send(b"".join(f"RCPT TO:<nobody{i}@example.org>\r\n".encode() for i in range(12)))
    rs = c.until_eof()  # a dictionary attack ends after smtp.max_errors tries
    assert [r.status for r in rs] == ["550 5.1.1"] * 10 + ["421 4.7.0"]
    c.close()


def test_command_flood_all_answered(srv):
    n = 5000
    c = smtp_client(srv)
    burst = b"NOOP\r\n" * n + b"QUIT\r\n"
    sender = threading.Thread(target=c.send, args=(burst,))
    sender.start()
    rs = c.until_eof(limit=n + 10)
    sender.join(TIMEOUT)
    assert not sender.is_alive()
    assert len(rs) == n + 1
    assert all(r.last == "250 2.0.0 OK" for r in rs[:n])
    assert rs[n].status == "221 2.0.0"
    c.close()


def test_pipelined_transactions_flood(srv):
    """200 pipelined transactions in one burst: every one answered and stored, in order."""
    n = 200
    before = uids(srv, "alice@example.org")
    c = smtp_client(srv)
    tx = b"".join(
        b"MAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n"
        + f"Subject: flood {i}\r\n\r\nmessage {i}\r\n.\r\n".encode()
        for i in range(n)
    )
    sender = threading.Thread(target=c.send, args=(tx + b"QUIT\r\n",))
    sender.start()
    rs = c.until_eof(limit=4 * n + 10)
    sender.join(TIMEOUT)
    assert [r.status for r in rs] == ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"] * n + ["221 2.0.0"]
    c.close()
    after = listing(srv, "alice@example.org")
    assert len([m for m in after if m["uid"] not in before]) == n


# -- SMTP smuggling -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sep", [b"\n.\r\n", b"\n.\n", b"\r\n.\n", b"\r.\r\n", b"\r.\n", b"\n..\r\n"],
                         ids=["LF.CRLF", "LF.LF", "CRLF.LF", "CR.CRLF", "CR.LF", "LF..CRLF"])
def test_smtp_smuggling_is_one_message(srv, sep):
    tok = uuid.uuid4().hex
    before = uids(srv, CAROL)
    c = smtp_client(srv)
    assert c.cmd("MAIL FROM:<s@remote.test>").status == "250 2.1.0"
    assert c.cmd(f"RCPT TO:<{CAROL}>").status == "250 2.1.5"
    assert c.cmd("DATA").code == 354
    payload = (
        f"Subject: {tok}\r\n\r\nbefore".encode() + sep
        + b"MAIL FROM:<evil@remote.test>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\n"
        + b"Subject: smuggled\r\n\r\nevil\r\n.\r\n"
    )
    c.send(payload + b"QUIT\r\n")
    rs = c.until_eof()
    assert [r.status for r in rs] == ["250 2.0.0", "221 2.0.0"]  # one message, the smuggled commands are content
    c.close()
    [raw] = new_messages(srv, CAROL, before)
    assert tok.encode() in raw
    assert b"MAIL FROM:<evil@remote.test>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\nSubject: smuggled\r\n" in raw
    assert body_of(raw).endswith(b"\r\nevil\r\n")


# -- the clients served after each test --------------------------------------------------------------------


# One process reads a whole INBOX (a `fastmail message show` per message is ~0.3 s of CPU each).
_DUMP = """
import json, sys
from fastmail.store.store import Store
st = Store(sys.argv[1], readonly=True)
try:
    mid = st.mailbox_id(st.get_user(sys.argv[2])["id"], "INBOX")
    out = [{"uid": m["uid"], "size": m["size"], "raw": st.read_message(mid, m["uid"]).hex()}
           for m in st.list_messages(mid)]
finally:
    st.close()
print(json.dumps(out))
"""


def test_zz_every_probe_message_stored_once_and_intact(srv):
    if not PROBES:  # run alone: send one so that there is something to check
        with smtplib.SMTP(HOST, srv.ports["smtp"], timeout=TIMEOUT) as s:
            body = b"Subject: probe alone\r\n\r\nalone\r\n"
            assert s.sendmail("probe@remote.test", [PROBE_USER], body) == {}
            PROBES.append(body)
    res = subprocess.run([sys.executable, "-c", _DUMP, str(srv.data), PROBE_USER], capture_output=True,
                         timeout=60, check=True)
    messages = json.loads(res.stdout)
    assert len(messages) == len(PROBES) == len(listing(srv, PROBE_USER))
    raws = [bytes.fromhex(m["raw"]) for m in messages]
    assert sorted(body_of(r) for r in raws) == sorted(PROBES)
    assert all(m["size"] == len(r) for m, r in zip(messages, raws, strict=True))
    # the CLI agrees with the direct read on the last one
    assert srv.cli("message", "show", PROBE_USER, "INBOX", str(messages[-1]["uid"])).stdout == raws[-1]
