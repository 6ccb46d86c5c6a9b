"""Issue #7, the external filters behind the real server: `fastmail serve` with the real clamd and rspamd of
tests/integration/filters.py, smtplib as the sending MTA, imaplib to read what was stored.

- an EICAR attachment: 554 5.7.1 at the end of DATA, nothing stored;
- GTUBE: 550 5.7.1 (nothing stored) by default; with `spam.reject_action = "junk"`, delivered to Junk with
  X-Spam-* fields, each once (rspamd's own X-Spam-Status merged with ours);
- clamd down (a unix socket path that does not exist, a closed TCP port): 451 4.7.0 with `clamav.fail_open`
  false (the default), accepted and logged as temperror with it true;
- a clean message: INBOX, with one Authentication-Results field of ours and rspamd's verdict fields.
"""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import email.utils
import imaplib
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.dnsserver import LocalDNS
from tests.integration.filters import EICAR, GTUBE, Clamd, Rspamd, free_port

from .conftest import PASSWORDS, Server, make_server

pytest_plugins = ("tests.integration.filters",)
pytestmark = pytest.mark.integration

AUTHSERV = "mx.example.org"  # the test server's hostname, our default authserv-id
# ours and the ones rspamd's milter_headers module writes (not for a client on 127.0.0.0/8: skip_local)
SPAM_FIELDS = ("X-Spam-Flag", "X-Spam-Score", "X-Spam-Status", "X-Spamd-Result", "X-Spam")


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v)


def _sections(settings: dict[str, dict[str, object]]) -> str:
    return "".join(f"\n[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in table.items())
                   for name, table in settings.items() if table)


def start_server(tmp: Path, **sections: dict[str, object]) -> Server:
    srv = make_server(tmp, workers=1, extra=_sections(sections))
    srv.start()
    return srv


@pytest.fixture(scope="module")
def sender_zone(filter_dns: LocalDNS) -> LocalDNS:
    """sender.test as a well-kept sending domain for 127.0.0.1 (the tests' client): SPF, DMARC, FCrDNS."""
    filter_dns.set("sender.test", ("TXT", "v=spf1 ip4:127.0.0.0/8 -all"), ("MX", (10, "mail.sender.test.")))
    filter_dns.set("_dmarc.sender.test", ("TXT", "v=DMARC1; p=none"))
    filter_dns.set("mail.sender.test", ("A", "127.0.0.1"))
    filter_dns.set("1.0.0.127.in-addr.arpa", ("PTR", "mail.sender.test."))
    return filter_dns


@pytest.fixture(scope="module")
def filtered(tmp_path_factory: pytest.TempPathFactory, clamd_service: Clamd, rspamd_service: Rspamd,
             sender_zone: LocalDNS) -> Iterator[Server]:
    """Every check on: authentication (DNS from the test server), clamd over its unix socket, rspamd."""
    srv = start_server(
        tmp_path_factory.mktemp("filtered"),
        checks={"enabled": True, "resolver": sender_zone.address, "dns_timeout": 2.0, "timeout": 15.0},
        clamav={"address": clamd_service.unix_address, "timeout": 10.0},
        rspamd={"url": rspamd_service.url, "timeout": 10.0},
    )
    yield srv
    srv.stop()
    srv.kill_tree()


def message(subject: str, body: bytes = b"", *, extra: bytes = b"") -> bytes:
    body = body or b"Hello Alice,\r\nshall we have lunch tomorrow at noon? The usual place is fine.\r\n"
    return (f"From: Bob <bob@sender.test>\r\nTo: Alice <alice@example.org>\r\nSubject: {subject}\r\n"
            f"Date: {email.utils.formatdate(localtime=False)}\r\n"
            f"Message-ID: <{time.monotonic_ns()}@sender.test>\r\nMIME-Version: 1.0\r\n").encode() + extra + \
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body


def with_attachment(subject: str, payload: bytes) -> bytes:
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (
        f"From: Bob <bob@sender.test>\r\nTo: Alice <alice@example.org>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{time.monotonic_ns()}@sender.test>\r\n".encode()
        + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
        b"--b1\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n"
        b"--b1\r\nContent-Type: application/octet-stream; name=\"tool.com\"\r\n"
        b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"tool.com\"\r\n\r\n"
        + encoded + b"--b1--\r\n"
    )


def send(srv: Server, raw: bytes, sender: str = "bob@sender.test") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=60) as c:
        c.ehlo("mail.sender.test")
        code, reply = c.mail(sender)
        assert code == 250, reply
        code, reply = c.rcpt("alice@example.org")
        assert code == 250, reply
        return c.data(raw)


def mailbox(srv: Server, folder: str = "INBOX") -> list[email.message.Message]:
    """The messages of alice's `folder` ([] when it does not exist)."""
    with imaplib.IMAP4("127.0.0.1", srv.ports["imap"], timeout=30) as m:
        m.login("alice@example.org", PASSWORDS["alice@example.org"])
        typ, count = m.select(folder, readonly=True)
        if typ != "OK" or not int(count[0] or 0):
            return []
        typ, data = m.fetch("1:*", "(BODY.PEEK[])")
        assert typ == "OK"
        return [email.message_from_bytes(part[1], policy=email.policy.compat32)
                for part in data if isinstance(part, tuple)]


def find(srv: Server, subject: str, folder: str = "INBOX") -> list[email.message.Message]:
    return [m for m in mailbox(srv, folder) if m["Subject"] == subject]


def logged(srv: Server, *parts: str) -> bool:
    """A log line with every part appears (workers flush their log lines on a timer)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(all(p in line for p in parts) for line in srv.log.read_text().splitlines()):
            return True
        time.sleep(0.05)
    return False


def unfolded(msg: email.message.Message, name: str) -> list[str]:
    return [" ".join(str(v).split()) for v in msg.get_all(name) or []]


def raw_header_lines(msg: email.message.Message) -> list[str]:
    head = msg.as_bytes(policy=email.policy.compat32.clone(linesep="\r\n")).split(b"\r\n\r\n", 1)[0]
    return head.decode("utf-8", "replace").split("\r\n")


# -- with every filter ---------------------------------------------------------------------------------


def test_eicar_attachment_is_refused_at_data(filtered: Server) -> None:
    code, reply = send(filtered, with_attachment("the tool", EICAR))
    assert (code, reply[:5]) == (554, b"5.7.1"), reply
    assert b"EICAR" not in reply and b"clamd" not in reply  # what kind of refusal, never the details
    assert find(filtered, "the tool") == [] and find(filtered, "the tool", "Junk") == []
    assert logged(filtered, "event=refused", "virus=Fastmail.Test.EICAR", 'reply="554 5.7.1"')


def test_gtube_is_refused_by_default(filtered: Server) -> None:
    code, reply = send(filtered, message("buy now", b"Buy now!\r\n" + GTUBE + b"\r\n"))
    assert (code, reply[:5]) == (550, b"5.7.1"), reply
    assert find(filtered, "buy now") == [] and find(filtered, "buy now", "Junk") == []
    assert logged(filtered, "event=refused", "spam_action=reject", 'reply="550 5.7.1"')


def test_clean_message_goes_to_inbox_with_authentication_results(filtered: Server) -> None:
    forged = b"X-Spam-Status: No, score=-100\r\nX-Spam-Flag: NO\r\n"
    code, reply = send(filtered, message("lunch", extra=forged))
    assert code == 250, reply
    [msg] = find(filtered, "lunch")
    [ar] = [a for a in unfolded(msg, "Authentication-Results") if a.startswith(AUTHSERV)]
    assert "spf=pass smtp.mailfrom=sender.test" in ar
    assert "dmarc=pass (p=none) header.from=sender.test" in ar
    assert "iprev=pass policy.iprev=127.0.0.1" in ar
    # the filter's verdict fields, each once (the forged ones from the sender are gone)
    [status] = unfolded(msg, "X-Spam-Status")
    assert status.startswith("No, score=") and "-100" not in status
    assert unfolded(msg, "X-Spam-Flag") == ["NO"]
    assert all(len(msg.get_all(name) or []) <= 1 for name in SPAM_FIELDS)
    assert all(len(line) <= 998 for line in raw_header_lines(msg))
    assert logged(filtered, "event=checked", "virus=clean", "spam_action=no_action")


# -- the other configurations ----------------------------------------------------------------------------


def test_gtube_goes_to_junk_when_configured(tmp_path: Path, rspamd_service: Rspamd, sender_zone: LocalDNS) -> None:
    srv = start_server(tmp_path, rspamd={"url": rspamd_service.url, "timeout": 10.0},
                       spam={"reject_action": "junk"})
    try:
        code, reply = send(srv, message("buy now", b"Buy now!\r\n" + GTUBE + b"\r\n"))
        assert code == 250, reply
        assert find(srv, "buy now") == []
        [msg] = find(srv, "buy now", "Junk")
        assert unfolded(msg, "X-Spam-Flag") == ["YES"]
        [status] = unfolded(msg, "X-Spam-Status")
        assert status.startswith("Yes, score=") and "GTUBE" in status
        assert all(len(msg.get_all(name) or []) == 1 for name in ("X-Spam-Flag", "X-Spam-Score", "X-Spam-Status"))
        assert all(len(msg.get_all(name) or []) <= 1 for name in SPAM_FIELDS)
        assert all(len(line) <= 998 for line in raw_header_lines(msg))
    finally:
        srv.stop()
        srv.kill_tree()


def test_gtube_from_a_dnswl_client_goes_to_junk(tmp_path: Path, rspamd_service: Rspamd,
                                                sender_zone: LocalDNS) -> None:
    """checks.dnswl: a listed client skips the spam filter's reject (its spam goes to Junk)."""
    sender_zone.set("1.0.0.127.wl.test", ("A", "127.0.0.2"))
    srv = start_server(tmp_path, rspamd={"url": rspamd_service.url, "timeout": 10.0},
                       checks={"enabled": True, "resolver": sender_zone.address, "dns_timeout": 2.0,
                               "timeout": 15.0, "dnswl": ["wl.test"]})
    try:
        code, reply = send(srv, message("listed spam", b"Buy now!\r\n" + GTUBE + b"\r\n"))
        assert code == 250, reply
        [msg] = find(srv, "listed spam", "Junk")
        assert unfolded(msg, "X-Spam-Flag") == ["YES"]
    finally:
        srv.stop()
        srv.kill_tree()


@pytest.mark.parametrize("where", ["unix", "tcp"])
def test_clamd_down_fails_closed_by_default(tmp_path: Path, where: str) -> None:
    address = f"unix:{tmp_path}/no/clamd.sock" if where == "unix" else f"127.0.0.1:{free_port()}"
    srv = start_server(tmp_path, clamav={"address": address, "timeout": 5.0})
    try:
        code, reply = send(srv, message("while clamd is down"))
        assert (code, reply[:5]) == (451, b"4.7.0"), reply
        assert address.encode() not in reply
        assert find(srv, "while clamd is down") == []
        assert logged(srv, "event=refused", "virus=temperror", 'reply="451 4.7.0"')
    finally:
        srv.stop()
        srv.kill_tree()


def test_clamd_down_with_fail_open_accepts(tmp_path: Path) -> None:
    srv = start_server(tmp_path, clamav={"address": f"unix:{tmp_path}/no/clamd.sock", "fail_open": True,
                                         "timeout": 5.0})
    try:
        code, reply = send(srv, message("unscanned"))
        assert code == 250, reply
        assert len(find(srv, "unscanned")) == 1
        assert logged(srv, "event=checked", "virus=temperror")
    finally:
        srv.stop()
        srv.kill_tree()


# -- rspamd's fields and ours, from a client rspamd does not skip ------------------------------------------


def test_rspamd_fields_merge_with_ours(rspamd_service: Rspamd, sender_zone: LocalDNS) -> None:
    """rspamd adds X-Spam-Status and X-Spamd-Result (folded CRLF TAB) for a client outside 127.0.0.0/8 and
    asks for incoming ones to be removed: the stored message has each field once, ours winning
    X-Spam-Status, rspamd's X-Spamd-Result kept with its folds, every line within 998 octets."""
    import asyncio

    from fastmail import config
    from fastmail.hygiene.headers import edit_headers, header_fields, split_message
    from fastmail.hygiene.inbound import Inbound, Transaction

    cfg = config.load(overrides={"rspamd.url": rspamd_service.url, "rspamd.timeout": 10.0})
    inbound = Inbound(cfg, "mx.example.org")
    forged = b"X-Spam-Status: No, score=-100\r\nX-Spamd-Result: default: False [-100 / 15.00]\r\nX-Spam-Flag: NO\r\n"
    raw = message("merged", extra=forged)
    tx = Transaction(ip="192.0.2.25", helo="mail.sender.test", mail_from="bob@sender.test",
                     rcpts=["alice@example.org"], qid="merge1")
    content, verdict = asyncio.run(inbound.check(raw, tx))
    assert verdict.reply is None, verdict
    stored = verdict.headers + content
    head, _ = split_message(stored)
    names = [f.split(b":", 1)[0].decode() for f in header_fields(head)]
    for name in ("X-Spam-Flag", "X-Spam-Score", "X-Spam-Status", "X-Spamd-Result"):
        assert names.count(name) == 1, (name, head.decode())
    assert b"-100" not in stored
    status = [f for f in header_fields(head) if f.startswith(b"X-Spam-Status:")][0]
    assert b"required=6.00" in status  # ours, not rspamd's "No, score=..."
    result = [f for f in header_fields(head) if f.startswith(b"X-Spamd-Result:")][0]
    assert result.startswith(b"X-Spamd-Result: default: False [") and b"\r\n\t" in result
    lines = head.split(b"\r\n")[:-1]
    assert all(len(line) <= 998 for line in lines)
    assert all(not line[:1].isspace() or line.strip() for line in lines)  # no whitespace-only lines
    assert edit_headers(stored, {}, None) == stored


def test_a_message_over_clamds_stream_max_length_goes_on_unscanned(clamd_service: Clamd) -> None:
    """A message clamd refuses as too big (StreamMaxLength, 1 MiB in the fixture) would be refused the same
    way on every retry: it is accepted unscanned (virus=too_big) even with clamav.fail_open false; with
    clamav.max_size it is not even sent."""
    import asyncio

    from fastmail import config
    from fastmail.hygiene.inbound import Inbound, Transaction

    tx = Transaction(ip="192.0.2.25", helo="mail.sender.test", mail_from="bob@sender.test",
                     rcpts=["alice@example.org"], qid="big1")
    big = message("big", b"x" * 76 + b"\r\n") + (b"y" * 76 + b"\r\n") * (clamd_service.stream_max // 78 + 100)
    assert len(big) > clamd_service.stream_max
    for max_size in (0, 1000):
        cfg = config.load(overrides={"clamav.address": clamd_service.unix_address, "clamav.max_size": max_size})
        _, verdict = asyncio.run(Inbound(cfg, "mx.example.org").check(big, tx))
        assert verdict.reply is None and verdict.log["virus"] == "too_big", verdict
    # under the limit, the scan runs
    cfg = config.load(overrides={"clamav.address": clamd_service.unix_address})
    _, verdict = asyncio.run(Inbound(cfg, "mx.example.org").check(with_attachment("x", EICAR), tx))
    assert verdict.reply is not None and verdict.reply[0] == 554
