"""The POP3 state machine without a network: every command, states, pipelining, SASL, limits."""

from __future__ import annotations

import base64

import pytest

from fastmail.proto import pop3 as P

RAW1 = b"Subject: one\r\nFrom: a@example.org\r\n\r\nline 1\r\n.dot line\r\nline 3\r\n"
RAW2 = b"Subject: two\r\n\r\nbody\r\n"


def new(tls: bool = False, plaintext_ok: bool = True, tls_available: bool = True) -> P.POP3Connection:
    conn = P.POP3Connection(P.Session("127.0.0.1", tls=tls, plaintext_ok=plaintext_ok, tls_available=tls_available),
                            "mx.test", P.Limits(max_errors=5, max_auth_failures=2))
    assert conn.take_output().startswith(b"+OK mx.test POP3")
    return conn


def logged_in() -> P.POP3Connection:
    conn = new()
    conn.receive(b"USER u@example.org\r\nPASS secret word\r\n")
    req = conn.next_request()
    assert req == P.Login("u@example.org", "secret word", "USER")
    conn.login_done(P.Maildrop(7, [P.Entry(1, len(RAW1)), P.Entry(5, len(RAW2))]), "u@example.org")
    out = conn.take_output()
    assert out.endswith(f"+OK Logged in, 2 messages ({len(RAW1) + len(RAW2)} octets)\r\n".encode())
    return conn


def answer_fetch(conn: P.POP3Connection, store: dict[int, bytes]) -> P.Fetch:
    req = conn.next_request()
    assert isinstance(req, P.Fetch)
    conn.fetched(store.get(req.uid))
    return req


def test_capa_before_and_after_tls() -> None:
    conn = new(plaintext_ok=False)
    conn.receive(b"CAPA\r\n")
    out = conn.take_output()
    assert b"STLS\r\n" in out and b"USER\r\n" not in out and b"SASL" not in out and out.endswith(b"\r\n.\r\n")
    assert b"RESP-CODES\r\n" in out and b"PIPELINING\r\n" in out and b"UIDL\r\n" in out and b"TOP\r\n" in out
    conn.receive(b"USER x\r\n")
    assert conn.take_output().startswith(b"-ERR [AUTH]")
    conn.receive(b"STLS\r\nUSER smuggled\r\n")
    assert conn.take_output() == b"+OK Begin TLS negotiation\r\n"
    assert isinstance(conn.next_request(), P.StartTLS)
    conn.tls_started()
    assert conn.take_output() == b""  # the pipelined USER was dropped with the plaintext buffer
    conn.receive(b"CAPA\r\n")
    out = conn.take_output()
    assert b"USER\r\n" in out and b"SASL PLAIN LOGIN\r\n" in out and b"STLS" not in out
    conn.receive(b"STLS\r\n")
    assert conn.take_output() == b"-ERR Already using TLS\r\n"


def test_stat_list_uidl_retr_top() -> None:
    conn = logged_in()
    store = {1: RAW1, 5: RAW2}
    conn.receive(b"STAT\r\nLIST\r\nLIST 2\r\nUIDL\r\nUIDL 1\r\n")
    out = conn.take_output().decode()
    assert f"+OK 2 {len(RAW1) + len(RAW2)}\r\n" in out
    assert f"1 {len(RAW1)}\r\n2 {len(RAW2)}\r\n.\r\n" in out
    assert f"+OK 2 {len(RAW2)}\r\n" in out
    assert "1 7.1\r\n2 7.5\r\n.\r\n" in out and "+OK 1 7.1\r\n" in out
    conn.receive(b"RETR 1\r\n")
    answer_fetch(conn, store)
    out = conn.take_output()
    assert out == f"+OK {len(RAW1)} octets\r\n".encode() + RAW1.replace(b"\n.dot", b"\n..dot") + b".\r\n"
    conn.receive(b"TOP 1 1\r\n")
    answer_fetch(conn, store)
    assert conn.take_output() == b"+OK Top of message follows\r\nSubject: one\r\nFrom: a@example.org\r\n\r\nline 1\r\n.\r\n"
    conn.receive(b"TOP 2 0\r\n")
    answer_fetch(conn, store)
    assert conn.take_output() == b"+OK Top of message follows\r\nSubject: two\r\n\r\n.\r\n"


def test_pipelined_commands_answered_in_order() -> None:
    conn = logged_in()
    store = {1: RAW1, 5: RAW2}
    conn.receive(b"RETR 1\r\nRETR 2\r\nNOOP\r\n")
    answer_fetch(conn, store)
    req = answer_fetch(conn, store)
    assert req.number == 2
    out = conn.take_output()
    assert out.index(b"Subject: one") < out.index(b"Subject: two") < out.index(b"+OK\r\n", len(out) - 10)


def test_dele_rset_quit_update() -> None:
    conn = logged_in()
    conn.receive(b"DELE 1\r\nDELE 1\r\nSTAT\r\nLIST 1\r\nRETR 1\r\nRSET\r\nSTAT\r\nDELE 2\r\nQUIT\r\n")
    out = conn.take_output().decode()
    assert "+OK Message 1 deleted" in out and "-ERR Message 1 is deleted" in out
    assert f"+OK 1 {len(RAW2)}\r\n" in out  # STAT after DELE
    assert "+OK Maildrop has 2 messages" in out  # RSET
    req = conn.next_request()
    assert req == P.Update([5])
    conn.update_done(True, 1)
    assert conn.take_output().startswith(b"+OK mx.test POP3 fastmail signing off (1 messages deleted)")
    assert isinstance(conn.next_request(), P.Close) and conn.closed


def test_quit_without_deletions_and_dropped_session_remove_nothing() -> None:
    conn = logged_in()
    conn.receive(b"QUIT\r\n")
    assert isinstance(conn.next_request(), P.Close)
    conn = logged_in()
    conn.receive(b"DELE 1\r\n")
    conn.timed_out()
    assert conn.take_output().endswith(b"-ERR Autologout; idle for too long\r\n")
    assert isinstance(conn.next_request(), P.Close)  # no Update: nothing removed


@pytest.mark.parametrize("line, reply", [
    (b"RETR 0", b"-ERR No such message 0"),
    (b"RETR 3", b"-ERR No such message 3"),
    (b"RETR x", b"-ERR Invalid message number"),
    (b"RETR -1", b"-ERR Invalid message number"),
    (b"RETR 99999999999999999999", b"-ERR Invalid message number"),
    (b"TOP 1", b"-ERR Usage: TOP message lines"),
    (b"TOP 1 x", b"-ERR Usage: TOP message lines"),
    (b"LIST 9", b"-ERR No such message 9"),
    (b"XYZZY", b"-ERR Unknown command"),
    (b"USER a", b"-ERR Command not valid in this state"),
    (b"\xff\xfe", b"-ERR Command is not UTF-8"),
    (b"A" * 2000, b"-ERR Line too long"),
])
def test_bad_input_in_transaction(line: bytes, reply: bytes) -> None:
    conn = logged_in()
    conn.receive(line + b"\r\nNOOP\r\n")
    out = conn.take_output()
    assert out.startswith(reply) and out.endswith(b"+OK\r\n")  # the session carries on


def test_commands_need_login() -> None:
    conn = new()
    conn.receive(b"STAT\r\nRETR 1\r\nPASS x\r\nNOOP\r\n")
    out = conn.take_output().decode()
    assert out.count("-ERR") == 4 and "USER first" in out


def test_too_many_errors_close() -> None:
    conn = new()
    conn.receive(b"BAD\r\n" * 10)
    out = conn.take_output()
    assert out.count(b"-ERR") == 6 and b"Too many errors" in out and conn.closed


def test_failed_logins_then_close_and_codes() -> None:
    conn = new()
    conn.receive(b"USER u\r\nPASS wrong\r\n")
    assert isinstance(conn.next_request(), P.Login)
    conn.login_done(P.LoginFailed.AUTH)
    assert conn.take_output().endswith(b"-ERR [AUTH] Authentication failed\r\n") and not conn.closed
    conn.receive(b"USER u\r\nPASS other\r\n")
    conn.next_request()
    conn.login_done(P.LoginFailed.AUTH)
    assert conn.closed  # max_auth_failures = 2
    conn = new()
    conn.receive(b"USER u\r\nPASS p\r\n")
    conn.next_request()
    conn.login_done(P.LoginFailed.IN_USE)
    assert conn.take_output().endswith(b"-ERR [IN-USE] Maildrop is in use by another POP3 session\r\n")
    assert not conn.closed
    conn.receive(b"USER u\r\nPASS p\r\n")
    conn.next_request()
    conn.login_done(P.LoginFailed.THROTTLED)
    assert b"[SYS/TEMP]" in conn.take_output() and conn.closed


def b64(s: str) -> bytes:
    return base64.b64encode(s.encode())


def test_auth_plain_with_and_without_initial_response() -> None:
    conn = new()
    conn.receive(b"AUTH PLAIN " + b64("\0u@example.org\0pw") + b"\r\n")
    assert conn.next_request() == P.Login("u@example.org", "pw", "PLAIN", "")
    conn = new()
    conn.receive(b"AUTH PLAIN\r\n")
    assert conn.take_output().endswith(b"+ \r\n")
    conn.receive(b64("admin\0u@example.org\0pw") + b"\r\n")
    assert conn.next_request() == P.Login("u@example.org", "pw", "PLAIN", "admin")
    conn = new()
    conn.receive(b"AUTH PLAIN\r\n*\r\nAUTH PLAIN !!!\r\nAUTH CRAM-MD5\r\nAUTH\r\n")
    out = conn.take_output().decode()
    assert "-ERR Authentication canceled" in out and "-ERR Invalid PLAIN response" in out
    assert "-ERR Unsupported authentication mechanism" in out and "PLAIN\r\nLOGIN\r\n.\r\n" in out


def test_auth_login() -> None:
    conn = new()
    conn.receive(b"AUTH LOGIN\r\n")
    assert conn.take_output().endswith(b"+ VXNlcm5hbWU6\r\n")
    conn.receive(b64("u@example.org") + b"\r\n")
    assert conn.take_output() == b"+ UGFzc3dvcmQ6\r\n"
    conn.receive(b64("pw") + b"\r\n")
    assert conn.next_request() == P.Login("u@example.org", "pw", "LOGIN")


def test_auth_refused_without_tls_unless_allowed() -> None:
    conn = new(plaintext_ok=False)
    conn.receive(b"AUTH PLAIN " + b64("\0u\0p") + b"\r\nPASS x\r\n")
    out = conn.take_output().decode()
    assert out.count("-ERR [AUTH] Plaintext authentication is disallowed") == 2 and conn.next_request() is None


def test_apop_refused() -> None:
    conn = new()
    conn.receive(b"APOP u 0123456789abcdef0123456789abcdef\r\n")
    assert conn.take_output().startswith(b"-ERR APOP is not supported")


def test_message_removed_meanwhile() -> None:
    conn = logged_in()
    conn.receive(b"RETR 2\r\n")
    answer_fetch(conn, {})
    assert conn.take_output().startswith(b"-ERR [SYS/PERM] Message 2 was removed")


def test_top_of_edge_cases() -> None:
    assert P.top_of(b"H: v\r\n\r\na\r\nb\r\n", 5) == b"H: v\r\n\r\na\r\nb\r\n"
    assert P.top_of(b"H: v\r\n", 3) == b"H: v\r\n"  # no body at all
    assert P.top_of(b"H: v\r\n\r\na\r\nb", 2) == b"H: v\r\n\r\na\r\nb"
    assert P.multiline(b"+OK\r\n", b".x\r\nno end") == b"+OK\r\n..x\r\nno end\r\n.\r\n"


def test_login_throttle_window() -> None:
    from fastmail.server.session import LoginThrottle

    t = LoginThrottle(limit=2, window=3600)
    assert not t.blocked("10.0.0.1")
    t.failed("10.0.0.1")
    assert not t.blocked("10.0.0.1")
    t.failed("10.0.0.1")
    assert t.blocked("10.0.0.1") and not t.blocked("10.0.0.2")
    t = LoginThrottle(limit=1, window=0.0)  # every failure is already outside a zero window
    t.failed("10.0.0.1")
    assert not t.blocked("10.0.0.1")
    assert not LoginThrottle(limit=0).blocked("10.0.0.1")
