"""LMTP (RFC 2033) over TCP and over the unix socket: one reply per accepted recipient after DATA (and
BDAT LAST), LHLO only, local recipients only."""

from __future__ import annotations

import json
import re
import smtplib
import uuid
from collections.abc import Iterator

import pytest

from .conftest import Server
from .wire import TIMEOUT, Client, Reply, module_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from module_server(tmp_path_factory, "lmtp")


def lmtp(srv: Server, transport: str) -> Client:
    """A raw LMTP client over TCP or the unix socket, past the greeting."""
    c = Client(srv.ports["lmtp"]) if transport == "tcp" else Client(path=srv.lmtp_sock)
    assert c.greeting is not None and c.greeting.lines == ["220 mx.example.org LMTP fastmail"], c.greeting
    return c


def status(r: Reply) -> str:
    return " ".join(r.last.split(" ")[:2])


def inbox(srv: Server, user: str) -> list[dict]:
    return json.loads(srv.cli("message", "list", user, "INBOX", "--json").stdout)


def stored(srv: Server, user: str, qid: str) -> list[bytes]:
    """The copies of message QID in USER's INBOX."""
    return [srv.cli("message", "show", user, "INBOX", str(m["uid"])).stdout
            for m in inbox(srv, user) if m["blob"] == qid]


TRANSPORTS = ["tcp", "unix"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_one_reply_per_recipient_after_data(srv, transport):
    tok = uuid.uuid4().hex
    c = lmtp(srv, transport)
    lhlo = c.cmd("LHLO client.test")
    assert lhlo.last == "250 HELP"
    assert status(c.cmd("MAIL FROM:<sender@remote.test>")) == "250 2.1.0"
    assert status(c.cmd("RCPT TO:<alice@example.org>")) == "250 2.1.5"
    assert status(c.cmd("RCPT TO:<nobody@example.org>")) == "550 5.1.1"
    assert status(c.cmd("RCPT TO:<bob@example.org>")) == "250 2.1.5"
    assert c.cmd("DATA").last.startswith("354 ")
    c.send(f"Subject: {tok}\r\n\r\nlmtp over {transport}\r\n.\r\n".encode())
    first, second = c.reply(), c.reply()
    assert len(first.lines) == len(second.lines) == 1
    m1 = re.fullmatch(r"250 2\.1\.5 <alice@example\.org> delivered as ([0-9a-f]{24})", first.last)
    m2 = re.fullmatch(r"250 2\.1\.5 <bob@example\.org> delivered as ([0-9a-f]{24})", second.last)
    assert m1 and m2 and m1.group(1) == m2.group(1), (first, second)
    # Exactly two: the next thing the server says is the answer to QUIT.
    c.send(b"QUIT\r\n")
    assert [status(x) for x in c.until_eof()] == ["221 2.0.0"]
    c.close()
    qid = m1.group(1)
    for user in ("alice@example.org", "bob@example.org"):
        [raw] = stored(srv, user, qid)
        assert raw.startswith(b"Received: from client.test (")
        assert f"with LMTP id {qid}".encode() in raw
        assert raw.endswith(f"Subject: {tok}\r\n\r\nlmtp over {transport}\r\n".encode())
    assert stored(srv, "carol@example.org", qid) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_smtplib_lmtp(srv, transport):
    """smtplib.LMTP: data() returns the first recipient's reply only; the others follow, one each."""
    tok = uuid.uuid4().hex
    if transport == "tcp":
        s = smtplib.LMTP("127.0.0.1", srv.ports["lmtp"], local_hostname="client.test", timeout=TIMEOUT)
    else:
        s = smtplib.LMTP(str(srv.lmtp_sock), local_hostname="client.test", timeout=TIMEOUT)
    with s:
        code, _ = s.ehlo()  # sends LHLO
        assert code == 250 and s.has_extn("pipelining") and s.has_extn("enhancedstatuscodes")
        assert not s.has_extn("starttls") and not s.has_extn("auth")
        assert s.mail("sender@remote.test")[0] == 250
        assert s.rcpt("bob@example.org") == (250, b"2.1.5 Recipient OK")
        assert s.rcpt("ghost@example.org") == (550, b"5.1.1 User unknown")
        assert s.rcpt("team@example.org") == (250, b"2.1.5 Recipient OK")  # alias: alice and bob
        code, text = s.data(f"Subject: {tok}\r\n\r\nvia smtplib\r\n".encode())
        assert code == 250 and text.startswith(b"2.1.5 <bob@example.org> delivered as "), text
        code2, text2 = s.getreply()
        assert code2 == 250 and text2.startswith(b"2.1.5 <team@example.org> delivered as "), text2
        qid = text.decode().rsplit(" ", 1)[1]
        assert text2.decode().rsplit(" ", 1)[1] == qid
        assert s.quit()[0] == 221
    assert len(stored(srv, "alice@example.org", qid)) == 1
    assert len(stored(srv, "bob@example.org", qid)) == 1  # bob directly and through team@: one copy


def test_bdat_last_gets_one_reply_per_recipient(srv):
    tok = uuid.uuid4().hex
    c = lmtp(srv, "unix")
    body = f"Subject: {tok}\r\n\r\nchunked\r\n".encode()
    c.send(
        b"LHLO client.test\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<carol@example.org>\r\n"
        + f"BDAT 5\r\n{body[:5].decode()}BDAT {len(body) - 5} LAST\r\n".encode() + body[5:] + b"QUIT\r\n"
    )
    replies = c.until_eof()
    assert [status(r) for r in replies] == ["250 HELP", "250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.0.0",
                                            "250 2.1.5", "250 2.1.5", "221 2.0.0"]
    assert "<alice@example.org> delivered" in replies[5].last and "<carol@example.org> delivered" in replies[6].last
    c.close()
    qid = replies[5].last.rsplit(" ", 1)[1]
    [raw] = stored(srv, "carol@example.org", qid)
    assert raw.endswith(body)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_ehlo_and_helo_are_refused(srv, transport):
    c = lmtp(srv, transport)
    assert c.cmd("EHLO client.test").last == "500 5.5.1 This is LMTP: use LHLO"
    assert c.cmd("HELO client.test").last == "500 5.5.1 This is LMTP: use LHLO"
    assert status(c.cmd("MAIL FROM:<s@remote.test>")) == "503 5.5.1"  # still no LHLO
    assert c.cmd("LHLO client.test").last == "250 HELP"
    assert status(c.cmd("MAIL FROM:<s@remote.test>")) == "250 2.1.0"
    assert status(c.cmd("QUIT")) == "221 2.0.0"
    c.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_non_local_recipient_refused(srv, transport):
    c = lmtp(srv, transport)
    assert c.cmd("LHLO client.test").last == "250 HELP"
    assert status(c.cmd("MAIL FROM:<alice@example.org>")) == "250 2.1.0"
    assert c.cmd("RCPT TO:<far@remote.test>").last == "554 5.7.1 Relay access denied"
    assert status(c.cmd("RCPT TO:<@example.org:far@remote.test>")) == "554 5.7.1"
    assert status(c.cmd("RCPT TO:<far@[127.0.0.1]>")) == "554 5.7.1"
    assert status(c.cmd("DATA")) == "554 5.5.1"  # no valid recipient
    assert status(c.cmd("QUIT")) == "221 2.0.0"
    c.close()
    assert json.loads(srv.cli("queue", "list", "--json").stdout) == []  # LMTP never queues
