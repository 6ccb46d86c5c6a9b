"""The SMTP/LMTP/submission state machine with no sockets: bytes in, replies and requests out."""

from __future__ import annotations

import base64
import re

import pytest

from fastmail.proto import smtp as P


class FakePolicy:
    def __init__(self):
        self.users = {"alice@example.org": 1, "bob@example.org": 2, "postmaster@example.org": 3}
        self.full: set[int] = set()

    def resolve(self, local, domain):
        local = local.split("+", 1)[0]
        uid = self.users.get(f"{local}@{domain}".lower())
        return ([uid], []) if uid else None

    def is_local_domain(self, domain):
        return domain == "example.org"

    def over_quota(self, user_id, size):
        return user_id in self.full

    def sender_owned(self, user_id, local, domain):
        return self.users.get(f"{local}@{domain}") == user_id


def make(mode=P.Mode.SMTP, tls=False, tls_available=True, auth_without_tls=False, **limits):
    policy = FakePolicy()
    conn = P.SMTPConnection(
        P.Session(peer="192.0.2.1", mode=mode, tls=tls), policy, "mx.example.org",
        P.Limits(**limits) if limits else P.Limits(), tls_available=tls_available, auth_without_tls=auth_without_tls,
    )
    greeting = conn.take_output()
    assert greeting.startswith(b"220 mx.example.org")
    return conn


def codes(out: bytes) -> list[str]:
    """The final line of each reply, as 'CODE ENHANCED'."""
    return [" ".join(line.split(" ")[:2]) for line in out.decode().split("\r\n") if re.match(r"^\d{3} ", line)]


def send(conn, data: bytes) -> bytes:
    conn.receive(data)
    return conn.take_output()


def deliver(conn, qid="q1", over_quota=frozenset()):
    req = conn.next_request()
    assert isinstance(req, P.Deliver), req
    conn.deliver_done(qid, over_quota)
    return req.envelope


def test_full_pipelined_transaction_in_one_packet():
    c = make()
    out = send(c, b"EHLO client.test\r\nMAIL FROM:<s@remote.test> SIZE=100\r\nRCPT TO:<alice@example.org>\r\n"
                  b"RCPT TO:<bob+tag@example.org>\r\nDATA\r\nSubject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n")
    assert codes(out) == ["250 HELP", "250 2.1.0", "250 2.1.5", "250 2.1.5", "354 End"]
    assert c.waiting
    env = deliver(c)
    assert env.sender == "s@remote.test" and [r.users for r in env.rcpts] == [[1], [2]]
    assert env.content == b"Subject: x\r\n\r\nhello\r\n"
    c.receive(b"")
    assert codes(c.take_output()) == ["250 2.0.0", "221 2.0.0"]
    assert c.closed and isinstance(c.next_request(), P.Close)


def test_ehlo_advertises_extensions():
    c = make()
    out = send(c, b"EHLO x\r\n").decode()
    for ext in ("PIPELINING", "SIZE 52428800", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "STARTTLS", "CHUNKING", "DSN"):
        assert f"250-{ext}\r\n" in out or f"250 {ext}\r\n" in out
    assert "AUTH" not in out  # not on port 25


def test_commands_before_helo_and_sequence_errors():
    c = make()
    assert codes(send(c, b"MAIL FROM:<a@b.test>\r\n")) == ["503 5.5.1"]
    send(c, b"HELO x\r\n")
    assert codes(send(c, b"RCPT TO:<alice@example.org>\r\n")) == ["503 5.5.1"]
    assert codes(send(c, b"DATA\r\n")) == ["503 5.5.1"]
    send(c, b"MAIL FROM:<>\r\n")
    assert codes(send(c, b"MAIL FROM:<>\r\n")) == ["503 5.5.1"]
    assert codes(send(c, b"RCPT TO:<nobody@example.org>\r\n")) == ["550 5.1.1"]
    assert codes(send(c, b"DATA\r\n")) == ["554 5.5.1"]  # every RCPT failed (RFC 2920)


def test_misc_commands():
    c = make()
    assert codes(send(c, b"NOOP\r\nHELP\r\nVRFY alice\r\nEXPN list\r\nRSET\r\nFOO bar\r\n")) == [
        "250 2.0.0", "214 2.0.0", "252 2.5.0", "502 5.5.1", "250 2.0.0", "500 5.5.2"]


def test_relay_denied_and_address_tricks():
    c = make()
    send(c, b"EHLO x\r\nMAIL FROM:<s@remote.test>\r\n")
    for rcpt, want in [
        (b"<victim@remote.test>", "554 5.7.1"),
        (b"<victim%remote.test@example.org>", "550 5.1.1"),
        (b"<remote.test!victim@example.org>", "550 5.1.1"),
        (b'<"victim@remote.test"@example.org>', "550 5.1.1"),
        (b"<@example.org:victim@remote.test>", "554 5.7.1"),
        (b"<victim@[192.0.2.9]>", "554 5.7.1"),
        (b"<VICTIM@REMOTE.TEST>", "554 5.7.1"),
        (b"<victim@remote.test.>", "501 5.1.3"),
        (b"<alice@example.org.>", "501 5.1.3"),
        (b"<ALICE@EXAMPLE.ORG>", "250 2.1.5"),
    ]:
        assert codes(send(c, b"RCPT TO:" + rcpt + b"\r\n")) == [want], rcpt


def test_postmaster_without_domain():
    c = make()
    send(c, b"EHLO x\r\nMAIL FROM:<>\r\n")
    assert codes(send(c, b"RCPT TO:<Postmaster>\r\n")) == ["250 2.1.5"]


def test_trusted_client_may_relay():
    c = make()
    c.session.trusted = True
    send(c, b"EHLO x\r\nMAIL FROM:<s@example.org>\r\n")
    assert codes(send(c, b"RCPT TO:<x@remote.test>\r\n")) == ["250 2.1.5"]
    assert c.envelope.rcpts[0].external == ["x@remote.test"]


def test_limits_line_recipients_size_errors():
    c = make(max_line_length=512, max_recipients=100, max_message_size=100, max_errors=5)
    assert codes(send(c, b"NOOP " + b"x" * 600 + b"\r\nNOOP\r\n")) == ["500 5.5.2", "250 2.0.0"]
    send(c, b"EHLO x\r\n")
    assert codes(send(c, b"MAIL FROM:<s@remote.test> SIZE=1000\r\n")) == ["552 5.3.4"]
    send(c, b"MAIL FROM:<s@remote.test>\r\n")
    out = send(c, b"".join(b"RCPT TO:<alice@example.org>\r\n" for _ in range(101)))
    assert codes(out)[-1] == "452 4.5.3" and codes(out).count("250 2.1.5") == 100
    out = send(c, b"DATA\r\n" + b"x" * 200 + b"\r\n.\r\nNOOP\r\n")
    assert codes(out) == ["354 End", "552 5.3.4", "250 2.0.0"]
    assert c.next_request() is None  # nothing to deliver


def test_too_many_errors_closes():
    c = make(max_errors=3)
    out = send(c, b"BAD\r\nBAD\r\nBAD\r\nNOOP\r\n")
    assert codes(out) == ["500 5.5.2", "500 5.5.2", "500 5.5.2", "421 4.7.0"]
    assert c.closed


def test_bad_params():
    c = make()
    send(c, b"EHLO x\r\n")
    assert codes(send(c, b"MAIL FROM:<a@b.test> FOO=1\r\n")) == ["555 5.5.4"]
    assert codes(send(c, b"MAIL FROM:<a@b.test> BODY=BINARYMIME\r\n")) == ["555 5.5.4"]
    assert codes(send(c, b"MAIL FROM:a@b.test\r\n"))[0].startswith("501")
    assert codes(send(c, b"MAIL FROM:<a@b.test> RET=FULL ENVID=abc+2Bd BODY=8BITMIME\r\n")) == ["250 2.1.0"]
    assert codes(send(c, b"RCPT TO:<alice@example.org> NOTIFY=NEVER,SUCCESS\r\n")) == ["555 5.5.4"]
    assert codes(send(c, b"RCPT TO:<alice@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@example.org\r\n")) == ["250 2.1.5"]
    assert c.envelope.rcpts[0].params["NOTIFY"] == "SUCCESS,FAILURE"
    assert c.envelope.mail_params["RET"] == "FULL"


def test_smtputf8_required_for_utf8_address():
    c = make()
    send(c, b"EHLO x\r\n")
    assert codes(send(c, "MAIL FROM:<jos\u00e9@remote.test>\r\n".encode()))[0].startswith("553")
    assert codes(send(c, "MAIL FROM:<jos\u00e9@remote.test> SMTPUTF8\r\n".encode())) == ["250 2.1.0"]
    assert c.envelope.smtputf8


def test_smuggling_bare_lf_dot_does_not_end_data():
    c = make()
    out = send(c, b"EHLO x\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n"
                  b"Subject: a\r\n\r\nbody\n.\nMAIL FROM:<evil@remote.test>\r\nx\n.\r\nmore\r\n.\r\n")
    assert codes(out)[-1] == "354 End"
    env = deliver(c)
    assert b"MAIL FROM:<evil@remote.test>" in env.content and env.bare_lf
    assert env.content.endswith(b"more\r\n")
    assert b"\n.\r\n" not in env.content.replace(b"\r\n.\r\n", b"")  # normalized to CRLF


def test_bare_lf_reject_policy():
    c = make(normalize_bare_lf=False)
    out = send(c, b"EHLO x\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\na\nb\r\n.\r\n")
    assert codes(out)[-1] == "554 5.6.0"
    assert c.next_request() is None


def test_bdat_chunks_and_last():
    c = make()
    out = send(c, b"EHLO x\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.org>\r\n"
                  b"BDAT 10\r\nSubject: xBDAT 6 LAST\r\n\r\n\r\nhi")
    assert codes(out) == ["250 HELP", "250 2.1.0", "250 2.1.5", "250 2.0.0"]
    env = deliver(c)
    assert env.content == b"Subject: x\r\n\r\nhi"
    assert codes(send(c, b"DATA\r\n")) == ["250 2.0.0", "503 5.5.1"]


def test_bdat_split_across_packets_and_no_data_after_bdat():
    c = make()
    send(c, b"EHLO x\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.org>\r\n")
    assert send(c, b"BDAT 10\r\n01234") == b""
    assert codes(send(c, b"56789")) == ["250 2.0.0"]
    assert codes(send(c, b"DATA\r\n")) == ["503 5.5.1"]
    send(c, b"BDAT 0 LAST\r\n")
    assert deliver(c).content == b"0123456789"


def test_bdat_without_transaction_is_read_and_refused():
    c = make()
    out = send(c, b"EHLO x\r\nBDAT 5 LAST\r\nhelloNOOP\r\n")
    assert codes(out) == ["250 HELP", "503 5.5.1", "250 2.0.0"]


def test_bdat_bad_size_closes():
    c = make()
    out = send(c, b"EHLO x\r\nBDAT x\r\n")
    assert codes(out)[-1] == "501 5.5.4" and c.closed


def test_starttls_discards_pipelined_plaintext():
    c = make()
    out = send(c, b"EHLO x\r\nSTARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
    assert codes(out) == ["250 HELP", "220 2.0.0"]
    assert isinstance(c.next_request(), P.StartTLS)
    c.tls_started()
    assert c.take_output() == b""
    assert codes(send(c, b"MAIL FROM:<a@b.test>\r\n")) == ["503 5.5.1"]  # HELO needed again; injection gone
    out = send(c, b"EHLO x\r\n").decode()
    assert "STARTTLS" not in out


def _auth_plain(user: str, pw: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{pw}".encode())


def test_submission_requires_tls_then_auth():
    c = make(P.Mode.SUBMISSION)
    out = send(c, b"EHLO x\r\n").decode()
    assert "AUTH" not in out
    assert codes(send(c, b"AUTH PLAIN " + _auth_plain("alice@example.org", "pw") + b"\r\n")) == ["530 5.7.0"]
    assert codes(send(c, b"MAIL FROM:<alice@example.org>\r\n")) == ["530 5.7.0"]


def test_submission_auth_plain_and_sender_check():
    c = make(P.Mode.SUBMISSION, tls=True)
    assert "AUTH PLAIN LOGIN" in send(c, b"EHLO x\r\n").decode()
    assert codes(send(c, b"MAIL FROM:<alice@example.org>\r\n")) == ["530 5.7.0"]
    send(c, b"AUTH PLAIN " + _auth_plain("alice@example.org", "pw") + b"\r\n")
    req = c.next_request()
    assert isinstance(req, P.Authenticate) and (req.username, req.password) == ("alice@example.org", "pw")
    c.auth_done("alice@example.org", 1)
    assert codes(c.take_output()) == ["235 2.7.0"]
    assert codes(send(c, b"AUTH PLAIN xx\r\n")) == ["503 5.5.1"]
    assert codes(send(c, b"MAIL FROM:<bob@example.org>\r\n")) == ["553 5.7.1"]
    assert codes(send(c, b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<x@remote.test>\r\n")) == ["250 2.1.0", "250 2.1.5"]


def test_auth_login_dialogue_and_failure():
    c = make(P.Mode.SUBMISSION, tls=True)
    send(c, b"EHLO x\r\n")
    assert send(c, b"AUTH LOGIN\r\n") == b"334 VXNlcm5hbWU6\r\n"
    assert send(c, base64.b64encode(b"alice@example.org") + b"\r\n") == b"334 UGFzc3dvcmQ6\r\n"
    send(c, base64.b64encode(b"wrong") + b"\r\n")
    req = c.next_request()
    assert isinstance(req, P.Authenticate) and req.password == "wrong"
    c.auth_done(None)
    assert codes(c.take_output()) == ["535 5.7.8"]
    assert send(c, b"AUTH PLAIN\r\n") == b"334 \r\n"
    assert codes(send(c, b"*\r\n")) == ["501 5.0.0"]
    send(c, b"AUTH PLAIN\r\n")
    assert codes(send(c, b"!!!notbase64\r\n")) == ["501 5.5.2"]
    assert codes(send(c, b"AUTH CRAM-MD5\r\n")) == ["504 5.5.4"]


def test_lmtp_per_recipient_replies():
    c = make(P.Mode.LMTP, tls_available=False)
    assert codes(send(c, b"EHLO x\r\n")) == ["500 5.5.1"]
    out = send(c, b"LHLO x\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<nobody@example.org>\r\n"
                  b"RCPT TO:<bob@example.org>\r\nRCPT TO:<x@remote.test>\r\nDATA\r\nhi\r\n.\r\n")
    assert codes(out) == ["250 HELP", "250 2.1.0", "250 2.1.5", "550 5.1.1", "250 2.1.5", "554 5.7.1", "354 End"]
    env = deliver(c, over_quota={2})
    assert len(env.rcpts) == 2
    assert codes(c.take_output()) == ["250 2.1.5", "552 5.2.2"]


def test_quota_at_rcpt_and_store_failure():
    c = make()
    c.policy.full.add(1)
    send(c, b"EHLO x\r\nMAIL FROM:<s@remote.test> SIZE=10\r\n")
    assert codes(send(c, b"RCPT TO:<alice@example.org>\r\n")) == ["452 4.2.2"]
    send(c, b"RCPT TO:<bob@example.org>\r\nDATA\r\nx\r\n.\r\n")
    req = c.next_request()
    assert isinstance(req, P.Deliver)
    c.deliver_done("q", failed=True)
    assert codes(c.take_output())[-1] == "451 4.3.0"


def test_timeout_and_shutdown_replies():
    c = make()
    c.timed_out()
    assert codes(c.take_output()) == ["421 4.4.2"] and c.closed
    c = make()
    c.shutdown()
    assert codes(c.take_output()) == ["421 4.3.2"] and c.closed


@pytest.mark.parametrize("garbage", [b"\x00\xff\xfe\r\n", b"\x80abc\r\n", b"\r\n", b"   \r\n", b"MAIL\r\n", b"HELO\r\n"])
def test_garbage_gets_an_error_not_a_crash(garbage):
    c = make()
    out = send(c, garbage)
    assert codes(out) and codes(out)[0][0] == "5"
    assert codes(send(c, b"NOOP\r\n")) == ["250 2.0.0"]


def test_received_header():
    s = P.Session(peer="192.0.2.1", mode=P.Mode.SUBMISSION, helo="client.test", esmtp=True, tls=True, user="a@b")
    env = P.Envelope("a@b", rcpts=[P.Recipient("x@y.test", {}, [], ["x@y.test"])])
    h = P.received_header(s, env, "abc123", "mx.example.org", now=0).decode()
    assert h.startswith("Received: from client.test ([192.0.2.1])\r\n\tby mx.example.org (fastmail) with ESMTPSA id abc123")
    assert "for <x@y.test>;" in h and h.endswith("1970 00:00:00 -0000\r\n")


@pytest.mark.parametrize("line", [b"MAIL FROM:<s@remote.test> SIZE", b"MAIL FROM:<s@remote.test> BODY",
                                  b"MAIL FROM:<s@remote.test> RET", b"MAIL FROM:<s@remote.test> ENVID",
                                  b"MAIL FROM:<s@remote.test> AUTH", b"MAIL FROM:<s@remote.test> SMTPUTF8=yes"])
def test_mail_parameter_without_its_value_is_a_syntax_error(line):
    """RFC 1870/6152/3461/4954: SIZE=, BODY=, RET=, ENVID=, AUTH= need a value; SMTPUTF8 takes none."""
    c = make()
    send(c, b"EHLO x\r\n")
    assert codes(send(c, line + b"\r\n")) == ["501 5.5.4"]
    assert c.envelope is None
    assert codes(send(c, b"MAIL FROM:<s@remote.test> SMTPUTF8\r\n")) == ["250 2.1.0"]


@pytest.mark.parametrize("size", ["\u00b2", "\u0663", "\uff11"])
def test_size_of_non_ascii_digits_is_a_syntax_error(size):
    """Found by tests/fuzz: with SMTPUTF8 a SIZE value may be UTF-8; "²" passed str.isdigit() and int() raised."""
    c = make()
    send(c, b"EHLO x\r\n")
    assert codes(send(c, b"MAIL FROM:<s@remote.test> SMTPUTF8 SIZE=" + size.encode() + b"\r\n")) == ["501 5.5.4"]
    assert c.envelope is None


@pytest.mark.parametrize("param", [b"NOTIFY", b"ORCPT"])
def test_rcpt_parameter_without_its_value_is_a_syntax_error(param):
    c = make()
    send(c, b"EHLO x\r\nMAIL FROM:<s@remote.test>\r\n")
    assert codes(send(c, b"RCPT TO:<alice@example.org> " + param + b"\r\n")) == ["501 5.5.4"]
    assert c.envelope is not None and c.envelope.rcpts == []


def test_received_for_clause_requotes_a_quoted_local_part():
    """RFC 5321 §4.4: the "for" clause is a Path; the parser unquoted '"alice+a b;c"', so it is quoted again."""
    c = make()
    send(c, b'EHLO x\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<"alice+a b;\\"c"@example.org>\r\nDATA\r\nx\r\n.\r\n')
    env = deliver(c)
    assert env.rcpts[0].address == 'alice+a b;"c@example.org'
    h = P.received_header(c.session, env, "q1", "mx.example.org", now=0).decode()
    assert '\tfor <"alice+a b;\\"c"@example.org>;\r\n' in h
    env.rcpts[0].address = "bob.x+y@example.org"
    assert "\tfor <bob.x+y@example.org>;" in P.received_header(c.session, env, "q1", "mx.example.org").decode()


def test_dsn_values_are_checked_and_params_need_ehlo():
    c = make()
    send(c, b"HELO x\r\n")
    assert codes(send(c, b"MAIL FROM:<a@b.test> SIZE=10\r\n")) == ["555 5.5.4"]  # no extensions after HELO
    send(c, b"EHLO x\r\n")
    assert codes(send(c, b"MAIL FROM:<a@b.test> ENVID=bad=x\r\n")) == ["501 5.5.4"]
    assert codes(send(c, b"MAIL FROM:<a@b.test> ENVID=ok+2Bx\r\n")) == ["250 2.1.0"]
    for orcpt in (b"alice@example.org", b";alice@example.org", b"rfc822;", b"rfc 822;a@b", b"rfc822;a=b"):
        assert codes(send(c, b"RCPT TO:<alice@example.org> ORCPT=" + orcpt + b"\r\n")) == ["501 5.5.4"], orcpt
    assert codes(send(c, b"RCPT TO:<alice@example.org> ORCPT=rfc822;alice+2B1@example.org\r\n")) == ["250 2.1.5"]


def test_size_beyond_the_room_left_is_452_at_mail_and_no_client_error():
    """RFC 1870 §6.1: a declared SIZE the store has no room for now: 452 4.3.1 at MAIL (temporary, ours);
    within max_message_size but beyond the room, and not counted towards max_errors."""
    asked: list[int] = []

    def room_for(size: int) -> bool:
        asked.append(size)
        return size <= 1000

    conn = P.SMTPConnection(P.Session(peer="192.0.2.1", mode=P.Mode.SMTP), FakePolicy(), "mx.example.org",
                            P.Limits(max_errors=2), room_for=room_for)
    conn.take_output()
    assert codes(send(conn, b"EHLO c\r\n")) == ["250 HELP"]
    for _ in range(3):  # more than max_errors: still not closed
        assert send(conn, b"MAIL FROM:<a@remote.test> SIZE=1001\r\n") == b"452 4.3.1 Insufficient system storage\r\n"
    assert conn.errors == 0 and not conn.closed
    assert codes(send(conn, b"MAIL FROM:<a@remote.test> SIZE=1000\r\n")) == ["250 2.1.0"]
    assert codes(send(conn, b"RSET\r\nMAIL FROM:<a@remote.test>\r\n")) == ["250 2.0.0", "250 2.1.0"]  # undeclared
    assert codes(send(conn, b"RSET\r\nMAIL FROM:<a@remote.test> SIZE=999999999\r\n")) == ["250 2.0.0", "552 5.3.4"]
    assert asked == [1001, 1001, 1001, 1000]  # asked only for a declared size within the limit
