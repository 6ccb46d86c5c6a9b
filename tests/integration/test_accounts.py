"""Accounts over the wire: quotas (452 4.2.2 at RCPT when the size is known, 552 5.2.2 otherwise), catch-all,
aliases with external targets, plus-addressing."""

from __future__ import annotations

import smtplib

import orjson
import pytest

from .wire import module_server


def _accounts(s):
    s.cli("user", "add", "small@example.org", "--password", "pw", "--quota", "2000")
    s.cli("alias", "add", "fwd@example.org", "carol@example.org", "friend@remote.test")


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    yield from module_server(tmp_path_factory, "accounts", setup=_accounts, workers=1)


def _inbox(srv, user):
    return srv.messages(user)


def test_quota_known_at_rcpt(srv):
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
        s.ehlo()
        assert s.mail("x@remote.test", ["SIZE=5000"])[0] == 250
        assert s.rcpt("small@example.org") == (452, b"4.2.2 Mailbox full")
        assert s.rcpt("bob@example.org")[0] == 250


def test_quota_at_end_of_data_and_mixed_recipients(srv):
    big = b"Subject: big\r\n\r\n" + b"x" * 3000 + b"\r\n"
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
        s.ehlo()
        s.esmtp_features.pop("size", None)  # undeclared size: only the end of data can tell
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("x@remote.test", ["small@example.org"], big)
        assert (e.value.smtp_code, e.value.smtp_error) == (552, b"5.2.2 Mailbox full")
        # one recipient over quota, one not: 250 (bob has it) and a failed entry awaiting its bounce
        assert s.sendmail("x@remote.test", ["small@example.org", "bob@example.org"], big) == {}
    assert [m.endswith(big) for m in _inbox(srv, "bob@example.org")][-1]
    assert _inbox(srv, "small@example.org") == []
    failed = [e for e in orjson.loads(srv.cli("queue", "list", "--json").stdout)
              if any(r["state"] == "failed" for r in e["rcpts"])]
    assert failed and failed[-1]["rcpts"][0]["to"] == "small@example.org"
    assert failed[-1]["rcpts"][0]["reply"].startswith("552 5.2.2")


def test_quota_per_recipient_in_lmtp(srv):
    big = b"Subject: big lmtp\r\n\r\n" + b"y" * 3000 + b"\r\n"
    with smtplib.LMTP("127.0.0.1", srv.ports["lmtp"], timeout=30) as s:
        s.ehlo_or_helo_if_needed()
        assert s.mail("x@remote.test")[0] == 250
        assert s.rcpt("bob@example.org")[0] == 250
        assert s.rcpt("small@example.org")[0] == 250
        s.putcmd("data")
        assert s.getreply()[0] == 354
        s.send(big + b".\r\n")
        assert s.getreply()[0] == 250  # bob
        assert s.getreply() == (552, b"5.2.2 <small@example.org> Mailbox full")


def test_catch_all_plus_and_external_alias(srv):
    srv.cli("alias", "add", "@example.org", "carol@example.org")
    try:
        with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
            s.sendmail("x@remote.test", ["whoever@example.org"], b"Subject: catch-all\r\n\r\n.\r\n")
            s.sendmail("x@remote.test", ["alice+lists@example.org"], b"Subject: plus\r\n\r\n.\r\n")
            s.sendmail("x@remote.test", ["fwd@example.org"], b"Subject: forwarded\r\n\r\n.\r\n")
    finally:
        srv.cli("alias", "del", "@example.org")
    carol = [m.split(b"Subject: ")[1].split(b"\r\n")[0] for m in _inbox(srv, "carol@example.org")]
    assert carol[-2:] == [b"catch-all", b"forwarded"]
    assert _inbox(srv, "alice@example.org")[-1].endswith(b"Subject: plus\r\n\r\n.\r\n")
    queued = orjson.loads(srv.cli("queue", "list", "--json").stdout)
    fwd = [e for e in queued if any(r["to"] == "friend@remote.test" for r in e["rcpts"])]
    assert len(fwd) == 1 and fwd[0]["rcpts"][0]["rcpt"] == "fwd@example.org"
    # without the catch-all, unknown users are refused again
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
        s.ehlo()
        s.mail("x@remote.test")
        assert s.rcpt("whoever@example.org")[0] == 550
