"""Issue #7, the authentication checks on the SMTP listener, end to end: the real server, a real DNS server on
127.0.0.1 (dnslib) holding SPF, DKIM, DMARC, PTR and DNSBL records, smtplib as the sending MTA, imaplib to
read what was stored.

- aligned SPF + DKIM: accepted into INBOX with one Authentication-Results field (spf, dkim, dmarc, arc,
  iprev), and a forged A-R field claiming our authserv-id is removed while another one is kept;
- DMARC p=reject and failing checks: 550 5.7.1, nothing stored; p=quarantine: delivered to Junk;
- a client on the DNSBL (127.0.0.2, RFC 5782's always-listed test address): 554 5.7.1;
- a DNS failure with `checks.fail_open = false`: 451 4.7.0; with the default (fail open): accepted, temperror
  recorded;
- authenticated submission is not checked (no A-R field of ours).
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import re
import smtplib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fastmail.hygiene import dkim

from .conftest import PASSWORDS, Server, make_server
from .dnsserver import LocalDNS

AUTHSERV = "mx.example.org"  # the test server's hostname, our default authserv-id


def _txt_value(record: str) -> list[str]:
    """The character-strings of a zone-file TXT line as dkim.keygen prints it."""
    return re.findall(r'"([^"]*)"', record)


@pytest.fixture(scope="module")
def keys() -> dict[str, bytes]:
    pem, record = dkim.keygen("sender.test", "sel", "ed25519")
    return {"pem": pem, "record": record}  # type: ignore[dict-item]


@pytest.fixture(scope="module")
def dns(keys) -> Iterator[LocalDNS]:
    d = LocalDNS().start()
    d.set("sender.test", ("TXT", "v=spf1 ip4:127.0.0.0/8 -all"), ("MX", (10, "mail.sender.test.")))
    d.set("_dmarc.sender.test", ("TXT", "v=DMARC1; p=reject"))
    d.set("sel._domainkey.sender.test", ("TXT", _txt_value(str(keys["record"]))))
    d.set("mail.sender.test", ("A", "127.0.0.1"))
    d.set("1.0.0.127.in-addr.arpa", ("PTR", "mail.sender.test."))
    d.set("forged.test", ("TXT", "v=spf1 ip4:192.0.2.1 -all"))
    d.set("_dmarc.forged.test", ("TXT", "v=DMARC1; p=reject"))
    d.set("quar.test", ("TXT", "v=spf1 ip4:192.0.2.1 -all"))
    d.set("_dmarc.quar.test", ("TXT", "v=DMARC1; p=quarantine"))
    d.set("2.0.0.127.bl.test", ("A", "127.0.0.2"), ("TXT", "listed for testing"))
    d.servfail.add("broken.test")
    d.servfail.add("_dmarc.broken.test")
    yield d
    d.stop()


def _server(tmp_path, dns: LocalDNS, **checks: object) -> Iterator[Server]:
    settings = {"enabled": True, "resolver": dns.address, "dns_timeout": 2.0, "timeout": 8.0,
                "dnsbl": ["bl.test"], **checks}
    lines = "\n".join(f"{k} = {_toml(v)}" for k, v in settings.items())
    srv = make_server(tmp_path, workers=1, extra=f"auth_plaintext_without_tls = true\n\n[checks]\n{lines}\n")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        srv.kill_tree()


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v)


@pytest.fixture
def server(tmp_path, dns) -> Iterator[Server]:
    yield from _server(tmp_path, dns)


def message(sender: str, subject: str, extra: str = "") -> bytes:
    return (f"From: Sender <{sender}>\r\nTo: alice@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@test>\r\nDate: Tue, 01 Dec 2026 08:00:00 +0000\r\n{extra}"
            f"\r\nHello Alice,\r\nthis is {subject}.\r\n").encode()


def signed(raw: bytes, pem: bytes) -> bytes:
    return dkim.sign(raw, domain="sender.test", selector="sel", private_key_pem=pem, algorithm="ed25519") + raw


def send(srv: Server, sender: str, raw: bytes, source: str = "127.0.0.1") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30, source_address=(source, 0)) as c:
        c.ehlo("mail.sender.test")
        code, _ = c.mail(sender)
        assert code == 250
        code, _ = c.rcpt("alice@example.org")
        assert code == 250
        return c.data(raw)


def mailbox(srv: Server, folder: str = "INBOX", raw: bool = False) -> list[Any]:
    with imaplib.IMAP4("127.0.0.1", srv.ports["imap"], timeout=30) as m:
        m.login("alice@example.org", PASSWORDS["alice@example.org"])
        typ, count = m.select(folder, readonly=True)
        assert typ == "OK", folder
        if not int(count[0] or 0):
            return []
        typ, data = m.fetch("1:*", "(BODY.PEEK[])")
        assert typ == "OK"
        found = [part[1] for part in data if isinstance(part, tuple)]
        return found if raw else [email.message_from_bytes(m, policy=email.policy.compat32) for m in found]


def logged(srv: Server, *parts: str) -> bool:
    """A log line with every part appears (workers flush their log lines on a timer)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(all(p in line for p in parts) for line in srv.log.read_text().splitlines()):
            return True
        time.sleep(0.05)
    return False


def authres(msg: email.message.Message) -> list[str]:
    return [" ".join(str(v).split()) for v in msg.get_all("Authentication-Results") or []]


def test_aligned_mail_is_accepted_with_one_authentication_results_field(server, keys):
    forged_ar = f"Authentication-Results: {AUTHSERV}; dkim=pass header.d=paypal.test\r\n" \
                "Authentication-Results: other.example; spf=pass smtp.mailfrom=sender.test\r\n"
    raw = signed(message("bob@sender.test", "aligned one", forged_ar), keys["pem"])
    code, reply = send(server, "bob@sender.test", raw)
    assert code == 250, reply
    [msg] = mailbox(server)
    ours = [a for a in authres(msg) if a.startswith(AUTHSERV)]
    assert len(ours) == 1, authres(msg)  # the forged one with our authserv-id is gone
    assert "other.example; spf=pass smtp.mailfrom=sender.test" in authres(msg)  # someone else's is kept
    ar = ours[0]
    assert "spf=pass smtp.mailfrom=sender.test" in ar
    assert "dkim=pass header.d=sender.test header.s=sel" in ar
    assert "dmarc=pass (p=reject) header.from=sender.test" in ar
    assert "arc=none" in ar
    assert "iprev=pass policy.iprev=127.0.0.1 (mail.sender.test)" in ar
    assert "paypal.test" not in str(msg)
    # the stored message still verifies: our edits (a removed field) are outside what was signed
    assert msg["Subject"] == "aligned one"


def test_dmarc_reject_refuses_and_stores_nothing(server):
    code, reply = send(server, "ceo@forged.test", message("ceo@forged.test", "wire the money"))
    assert (code, reply[:5]) == (550, b"5.7.1"), reply
    assert b"DMARC" in reply and b"forged" not in reply  # what kind of policy, never the details
    assert mailbox(server) == [] and mailbox(server, "Junk") == []
    assert logged(server, "event=refused", "dmarc=fail", 'reply="550 5.7.1"')


def test_dmarc_quarantine_goes_to_junk(server):
    code, reply = send(server, "news@quar.test", message("news@quar.test", "cheap pills"))
    assert code == 250, reply
    assert mailbox(server) == []
    [msg] = mailbox(server, "Junk")
    assert msg["Subject"] == "cheap pills"
    assert any("dmarc=fail (p=quarantine) header.from=quar.test" in a for a in authres(msg))


def test_a_client_on_the_dnsbl_is_refused(server, keys):
    raw = signed(message("bob@sender.test", "from a listed host"), keys["pem"])
    code, reply = send(server, "bob@sender.test", raw, source="127.0.0.2")
    assert (code, reply[:5]) == (554, b"5.7.1"), reply
    assert b"bl.test" not in reply
    assert mailbox(server) == []


def test_dns_failure_fails_open_by_default(server):
    code, reply = send(server, "x@broken.test", message("x@broken.test", "during an outage"))
    assert code == 250, reply
    [msg] = mailbox(server)
    ar = [a for a in authres(msg) if a.startswith(AUTHSERV)][0]
    assert "spf=temperror" in ar and "dmarc=temperror" in ar


def test_dns_failure_with_fail_closed_is_a_temporary_refusal(tmp_path, dns):
    for srv in _server(tmp_path, dns, fail_open=False):
        code, reply = send(srv, "x@broken.test", message("x@broken.test", "during an outage"))
        assert (code, reply[:5]) == (451, b"4.7.0"), reply
        assert mailbox(srv) == []


def test_authenticated_submission_is_not_checked(server):
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as c:
        c.login("bob@example.org", PASSWORDS["bob@example.org"])
        c.sendmail("bob@example.org", ["alice@example.org"], message("bob@example.org", "internal"))
    [msg] = mailbox(server)
    assert not [a for a in authres(msg) if a.startswith(AUTHSERV)]


def test_submission_is_dkim_signed_with_every_key_of_the_from_domain(server):
    """`fastmail dkim keygen` keys (ed25519 and RSA) sign an authenticated sender's mail; both signatures
    verify (dkimpy) against the records keygen printed."""
    import dkim as dkimpy

    records: dict[bytes, bytes] = {}
    for algorithm, selector in (("ed25519", "ed1"), ("rsa", "rsa1")):
        out = server.cli("dkim", "keygen", "example.org", "--algorithm", algorithm, "--selector", selector)
        line = next(x for x in out.stdout.decode().splitlines() if " IN TXT " in x)
        name = line.split()[0]
        records[name.rstrip(".").encode()] = "".join(_txt_value(line)).encode()
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as c:
        c.login("bob@example.org", PASSWORDS["bob@example.org"])
        c.sendmail("bob@example.org", ["alice@example.org"], message("bob@example.org", "signed"))
    [raw] = mailbox(server, raw=True)
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    sigs = [" ".join(str(v).split()) for v in msg.get_all("DKIM-Signature") or []]
    assert sorted(re.search(r"\bs=(\w+)", v).group(1) for v in sigs) == ["ed1", "rsa1"]  # type: ignore[union-attr]

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name.rstrip(b"."))

    for i in range(len(sigs)):
        assert dkimpy.DKIM(raw).verify(idx=i, dnsfunc=dnsfunc), i
