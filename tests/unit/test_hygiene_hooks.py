"""The MAIL and RCPT hooks of fastmail.proto.smtp that greylisting and rate limits use, with no sockets: a
refusal is the hook's reply, leaves no envelope / no recipient, and is not a client error; the RCPT hook
sees only recipients that are otherwise valid, and pipelined commands keep their order."""

from __future__ import annotations

from fastmail.hygiene import greylist, ratelimit
from fastmail.proto import smtp as P
from fastmail.proto.replies import Reply
from tests.unit.test_proto_smtp import FakePolicy, codes, send


def make(mail_hook=None, rcpt_hook=None, max_errors: int = 3) -> P.SMTPConnection:
    conn = P.SMTPConnection(P.Session(peer="192.0.2.1", mode=P.Mode.SMTP), FakePolicy(), "mx.example.org",
                            P.Limits(max_errors=max_errors), mail_hook=mail_hook, rcpt_hook=rcpt_hook)
    conn.take_output()
    send(conn, b"EHLO client.example\r\n")
    return conn


def test_mail_hook_refuses_without_an_envelope() -> None:
    calls: list[tuple[str, str | None]] = []

    def hook(session: P.Session, sender: str | None) -> Reply | None:
        calls.append((session.peer, sender))
        return ratelimit.TOO_MANY_MESSAGES if sender == "spam@x.test" else None

    conn = make(mail_hook=hook)
    out = send(conn, b"MAIL FROM:<spam@x.test>\r\nRCPT TO:<alice@example.org>\r\nMAIL FROM:<>\r\n"
                     b"RCPT TO:<alice@example.org>\r\n")
    assert codes(out) == ["451 4.7.1", "503 5.5.1", "250 2.1.0", "250 2.1.5"]
    assert calls == [("192.0.2.1", "spam@x.test"), ("192.0.2.1", None)]


def test_rcpt_hook_sees_valid_recipients_only_and_is_not_an_error() -> None:
    seen: list[str] = []

    def hook(session: P.Session, env: P.Envelope, rcpt: str) -> Reply | None:
        seen.append(rcpt)
        return greylist.greylisted(299.2) if rcpt == "alice@example.org" else None

    conn = make(rcpt_hook=hook, max_errors=3)
    out = send(conn, b"MAIL FROM:<bob@sender.test>\r\n" + b"RCPT TO:<alice@example.org>\r\n" * 5
               + b"RCPT TO:<nobody@example.org>\r\nRCPT TO:<someone@elsewhere.test>\r\n"
               + b"RCPT TO:<bob@example.org>\r\nDATA\r\n")
    assert codes(out) == ["250 2.1.0"] + ["451 4.7.1"] * 5 + ["550 5.1.1", "554 5.7.1", "250 2.1.5", "354 End"]
    assert b"451 4.7.1 Greylisted: please try again in 300 seconds\r\n" in out
    assert seen == ["alice@example.org"] * 5 + ["bob@example.org"]
    assert not conn.closed  # five greylisted recipients are not five client errors
    assert [r.address for r in conn.envelope.rcpts] == ["bob@example.org"]  # type: ignore[union-attr]


def test_all_recipients_greylisted_then_data() -> None:
    conn = make(rcpt_hook=lambda s, e, r: greylist.greylisted(10))
    out = send(conn, b"MAIL FROM:<bob@sender.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
    assert codes(out) == ["250 2.1.0", "451 4.7.1", "554 5.5.1"]  # RFC 2920 §3.1: no valid recipients
