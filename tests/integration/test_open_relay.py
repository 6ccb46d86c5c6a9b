"""The open-relay suite (ARCHITECTURE §5 "never an open relay"): the classic relay-test address forms — the
percent hack, bang paths, quoted local parts holding an "@", source routes, IP literals, upper case,
trailing dots, empty and missing domains, postmaster@ another domain — sent through the SMTP port without
AUTH, the submission port before AUTH (plain and after STARTTLS) and LMTP, with smtplib (every command
sent as written, through `docmd`) and swaks.

Each is refused with its proper reply — 554 5.7.1 relay denied, 501 5.1.3 bad address syntax, 550 5.1.1
unknown user, 530 5.7.0 on submission — or, where the form names a local mailbox (upper case of a local
address, the percent hack or a bang path at a domain with a catch-all), delivered to that local mailbox
only.  Nothing is ever queued for another host: the outbound queue stays empty and no receiver sees a
connection, although the delivery process runs and the local DNS server points the MX of the remote
domains (and the IP literals) at receivers that record every connection; a control at the end shows that
an authenticated message to the same remote domain does reach them.
"""

from __future__ import annotations

import shutil
import smtplib
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from .conftest import PASSWORDS, Server, free_port, make_server, poll
from .dnsserver import LocalDNS
from .receivers import Loop, Receiver
from .wire import HOST, TIMEOUT, insecure_tls_context

pytestmark = pytest.mark.integration

RELAY_DENIED = (554, "5.7.1")
BAD_SYNTAX = (501, "5.1.3")
UNKNOWN = (550, "5.1.1")
LOCAL = (250, "2.1.5")

# (recipient as sent between the angle brackets, the reply) — refused or, for LOCAL, a local mailbox
FORMS: list[tuple[str, tuple[int, str]]] = [
    ("user@remote.test", RELAY_DENIED),
    ("USER@REMOTE.TEST", RELAY_DENIED),
    ("postmaster@remote.test", RELAY_DENIED),
    ("user%remote.test@example.org", UNKNOWN),  # percent hack
    ("user%remote.test%other.test@example.org", UNKNOWN),
    ('"user@remote.test"@example.org', UNKNOWN),  # quoted local part holding an "@"
    ('"user%remote.test"@example.org', UNKNOWN),
    ("remote.test!user@example.org", UNKNOWN),  # bang path
    ("remote.test!user", BAD_SYNTAX),
    ("user@remote.test@example.org", BAD_SYNTAX),
    ("user@example.org@remote.test", BAD_SYNTAX),
    ("@example.org:user@remote.test", RELAY_DENIED),  # source route: ignored (RFC 5321 §4.1.1.3)
    ("@mx.example.org,@example.org:user@remote.test", RELAY_DENIED),
    ("@remote.test:alice@example.org", LOCAL),  # a source route through elsewhere to a local mailbox
    ("user@[127.0.0.1]", RELAY_DENIED),  # IP literals, our own address included
    ("user@[IPv6:::1]", RELAY_DENIED),
    ("user@[192.0.2.1]", RELAY_DENIED),
    ("alice@[127.0.0.1]", RELAY_DENIED),
    ("user@127.0.0.1", BAD_SYNTAX),  # an address literal needs its brackets
    ("user@remote.test.", BAD_SYNTAX),  # trailing dots
    ("alice@example.org.", BAD_SYNTAX),
    ("ALICE@EXAMPLE.ORG.", BAD_SYNTAX),
    ("user@sub.example.org", RELAY_DENIED),  # a subdomain of ours is not ours
    ("user@example.org.remote.test", RELAY_DENIED),
    ("user@localhost", RELAY_DENIED),
    ("user@", BAD_SYNTAX),  # empty and missing domains
    ("user", BAD_SYNTAX),
    ("@example.org", BAD_SYNTAX),
    ("ALICE@EXAMPLE.ORG", LOCAL),  # upper case of a local address: that mailbox
    ("Alice@Example.Org", LOCAL),
    ("Postmaster", LOCAL),  # RFC 5321 §4.5.1: without a domain, ours
    ("user%remote.test@catchall.test", LOCAL),  # the catch-all's mailbox, never remote.test
    ("remote.test!user@catchall.test", LOCAL),
    ('"user@remote.test"@catchall.test', LOCAL),
]
# the local mailbox each LOCAL form reaches
LOCAL_MAILBOX = {"@remote.test:alice@example.org": "alice@example.org", "ALICE@EXAMPLE.ORG": "alice@example.org",
                 "Alice@Example.Org": "alice@example.org", "Postmaster": "alice@example.org"}
CATCH_ALL = "carol@example.org"  # the catch-all of catchall.test
SENDERS = ["someone@remote.test", "alice@example.org", ""]  # a remote, a forged local and the null sender


@pytest.fixture(scope="module")
def dns() -> Iterator[LocalDNS]:
    d = LocalDNS().start()
    # every remote domain of FORMS (and the names a source route or subdomain trick could try) has its MX
    # on a receiver that records any connection
    for name in ("remote.test", "other.test", "sub.example.org", "example.org.remote.test", "localhost"):
        d.set(name, ("MX", (10, "mx.remote.test.")))
    d.set("mx.remote.test", ("A", "127.0.0.31"))
    yield d
    d.stop()


@pytest.fixture(scope="module")
def receivers(dns: LocalDNS) -> Iterator[tuple[int, list[Receiver]]]:
    """Receivers on the MX of the remote domains and on the IP literals' addresses (127.0.0.1, ::1), all on
    the port the server delivers to."""
    loop = Loop()
    port = free_port()
    made = [Receiver(loop, host, port).start() for host in ("127.0.0.31", "127.0.0.1", "::1")]
    yield port, made
    for r in made:
        loop.run(_stop(r))
    loop.close()


async def _stop(r: Receiver) -> None:
    r.stop()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, dns: LocalDNS,
        receivers: tuple[int, list[Receiver]]) -> Iterator[Server]:
    port, _ = receivers
    s = make_server(tmp_path_factory.mktemp("open-relay"), workers=2, extra=(
        f'\n[delivery]\nresolver = "{dns.address}"\nport = {port}\nretry_base = 0.3\nretry_max = 1.0\n'
        "connect_timeout = 5.0\n"))
    s.cli("domain", "add", "catchall.test")
    s.cli("alias", "add", "@catchall.test", CATCH_ALL)
    s.start()
    yield s
    s.stop()
    s.kill_tree()


def queue(srv: Server) -> list[dict[str, Any]]:
    return orjson.loads(srv.cli("queue", "list", "--json").stdout)


CONTROL = "control@remote.test"
CONTROL_SENT: list[bool] = []  # set by the control test: then its connections are expected


def nothing_relayed(srv: Server, receivers: tuple[int, list[Receiver]]) -> None:
    """The outbound queue holds nothing but the control's message, and no receiver was connected to (but
    for the control's message)."""
    assert [e for e in queue(srv) if any(r["to"] != CONTROL for r in e["rcpts"])] == []
    for r in receivers[1]:
        with r.lock:
            if not CONTROL_SENT:
                assert r.connections == 0, (r.host, r.transcript)
            assert all(f"<{CONTROL}>" in line for line in r.transcript if line.upper().startswith("RCPT")), (
                r.host, r.transcript)


def status(reply: tuple[int, bytes]) -> tuple[int, str]:
    code, text = reply
    return code, text.decode().split(" ", 1)[0]


def try_form(client: smtplib.SMTP, sender: str, rcpt: str) -> tuple[int, str]:
    """MAIL (accepted) then RCPT TO:<rcpt> exactly as written; the RCPT reply."""
    assert status(client.docmd(f"MAIL FROM:<{sender}>")) == (250, "2.1.0")
    reply = status(client.docmd(f"RCPT TO:<{rcpt}>"))
    assert status(client.docmd("RSET")) == (250, "2.0.0")
    return reply


def connect(srv: Server, listener: str) -> smtplib.SMTP:
    if listener == "lmtp":
        c: smtplib.SMTP = smtplib.LMTP(HOST, srv.ports["lmtp"], timeout=TIMEOUT)
    else:
        c = smtplib.SMTP(HOST, srv.ports[listener], timeout=TIMEOUT)
    c.ehlo_or_helo_if_needed()
    return c


@pytest.mark.parametrize("listener", ["smtp", "lmtp"])
def test_every_relay_form_is_refused_or_local(srv, receivers, listener):
    for sender in SENDERS:
        for offset in range(0, len(FORMS), 8):  # a fresh session now and then: refusals count as errors
            with connect(srv, listener) as client:
                for rcpt, expected in FORMS[offset:offset + 8]:
                    assert try_form(client, sender, rcpt) == expected, (listener, sender, rcpt)
    nothing_relayed(srv, receivers)


def test_local_forms_deliver_to_the_local_mailbox_only(srv, receivers):
    token = uuid.uuid4().hex
    local = [rcpt for rcpt, expected in FORMS if expected == LOCAL]
    for listener in ("smtp", "lmtp"):
        for rcpt in local:
            body = f"Subject: {token} {listener} {rcpt}\r\n\r\nrelay test\r\n".encode()
            with connect(srv, listener) as client:
                assert status(client.docmd("MAIL FROM:<someone@remote.test>")) == (250, "2.1.0")
                assert status(client.docmd(f"RCPT TO:<{rcpt}>")) == LOCAL
                assert client.docmd("DATA")[0] == 354
                client.send(body + b".\r\n")
                assert client.getreply()[0] == 250
    stored = {mailbox: srv.messages(mailbox) for mailbox in (CATCH_ALL, "alice@example.org", "bob@example.org")}
    for rcpt in local:
        mailbox = LOCAL_MAILBOX.get(rcpt, CATCH_ALL)
        for listener in ("smtp", "lmtp"):
            subject = f"Subject: {token} {listener} {rcpt}\r\n".encode()
            found = {name: sum(subject in m for m in messages) for name, messages in stored.items()}
            assert found == {name: int(name == mailbox) for name in stored}, (rcpt, found)
    nothing_relayed(srv, receivers)


@pytest.mark.parametrize("tls", [False, True])
def test_submission_before_auth_takes_no_transaction(srv, receivers, tls):
    """Port 587 without AUTH: MAIL is refused (530 5.7.0: STARTTLS first, then AUTH), so no RCPT of any form
    is even looked at (503 5.5.1)."""
    with smtplib.SMTP(HOST, srv.ports["submission"], timeout=TIMEOUT) as client:
        if tls:
            client.starttls(context=insecure_tls_context())
        client.ehlo()
        for rcpt, _ in FORMS[:4]:  # two refusals each: within smtp.max_errors
            assert status(client.docmd("MAIL FROM:<alice@example.org>")) == (530, "5.7.0")
            assert status(client.docmd(f"RCPT TO:<{rcpt}>")) == (503, "5.5.1")
    with smtplib.SMTP(HOST, srv.ports["submission"], timeout=TIMEOUT) as client:
        if tls:
            client.starttls(context=insecure_tls_context())
        client.ehlo()
        # a MAIL parameter claiming an identity (RFC 4954 §5 AUTH=) is no authentication
        assert status(client.docmd("MAIL FROM:<alice@example.org> AUTH=alice@example.org")) == (530, "5.7.0")
    nothing_relayed(srv, receivers)


def test_smtp_port_ignores_an_auth_parameter_and_auth_itself(srv, receivers):
    with connect(srv, "smtp") as client:
        assert status(client.docmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAGFsaWNlLXNlY3JldA==")) == (500, "5.5.2")
        assert status(client.docmd("MAIL FROM:<alice@example.org> AUTH=alice@example.org")) == (250, "2.1.0")
        assert status(client.docmd("RCPT TO:<user@remote.test>")) == RELAY_DENIED
    nothing_relayed(srv, receivers)


SWAKS_FORMS = ["user%remote.test@example.org", "@example.org:user@remote.test", "remote.test!user@example.org",
               '"user@remote.test"@example.org', "user@[127.0.0.1]", "USER@REMOTE.TEST"]


@pytest.mark.parametrize("listener", ["smtp", "lmtp"])
def test_swaks_relay_forms(srv, receivers, listener):
    if shutil.which("swaks") is None:
        pytest.fail("swaks is not installed: run the tests with `make test`, which installs it")
    for rcpt in SWAKS_FORMS:
        expected = dict(FORMS)[rcpt]
        cmd = ["swaks", "--server", HOST, "--port", str(srv.ports[listener]), "--helo", "client.test",
               "--from", "someone@remote.test", "--to", rcpt, "--timeout", "20"]
        if listener == "lmtp":
            cmd += ["--protocol", "LMTP"]
        res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        rcpt_line = [x for x in res.stdout.splitlines() if x.startswith(" -> RCPT TO:")]
        assert rcpt_line == [f" -> RCPT TO:<{rcpt}>"], res.stdout  # swaks sent the form as it is
        assert f"<** {expected[0]} {expected[1]} " in res.stdout, res.stdout
        assert res.returncode != 0
    nothing_relayed(srv, receivers)


def test_control_an_authenticated_message_does_reach_the_remote_receiver(srv, receivers):
    """The suite's assertions mean something: the same remote domain, authenticated, is delivered to the
    receiver that the refused forms never reached."""
    mx = receivers[1][0]
    before = len(mx.messages)
    with smtplib.SMTP(HOST, srv.ports["submission"], timeout=TIMEOUT) as client:
        client.starttls(context=insecure_tls_context())
        client.login("alice@example.org", PASSWORDS["alice@example.org"])
        CONTROL_SENT.append(True)
        client.sendmail("alice@example.org", [CONTROL], b"Subject: control\r\n\r\ncontrol\r\n")
    mx.wait(before + 1)
    assert poll(lambda: queue(srv) == [], 30)
    nothing_relayed(srv, receivers)

