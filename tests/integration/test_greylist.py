"""Greylisting (RFC 6647) end to end: the real server with `greylist.delay = 1`, smtplib as the sending MTA.
No wall-clock assertions: a retry is tried again until it passes, within a bounded time.

Each test sends from its own 127.0.N.0/24 (the client network of the triplet), so that one test's
auto-whitelisting does not let another's mail through.
"""

from __future__ import annotations

import re
import smtplib
import time
from collections.abc import Iterator

import pytest

from .conftest import PASSWORDS, Server, make_server

pytestmark = pytest.mark.integration

GREYLIST = """
[greylist]
enabled = true
delay = 1.0
expire = 600.0
auto_whitelist = 2
whitelist = ["127.0.9.0/24"]
whitelist_domains = ["friend.test"]
"""


def start(tmp_path, workers: int = 2, extra: str = GREYLIST) -> Server:
    srv = make_server(tmp_path, workers=workers, extra="auth_plaintext_without_tls = true\n" + extra)
    srv.start()
    return srv


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start(tmp_path_factory.mktemp("greylist"))
    yield srv
    srv.stop()
    srv.kill_tree()


def attempt(srv: Server, source: str, sender: str, rcpts: list[str], subject: str = "hello") -> dict[str, tuple[int, bytes]]:
    """One SMTP transaction from `source`: each RCPT's reply, and DATA's under "DATA" when one passed."""
    replies: dict[str, tuple[int, bytes]] = {}
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30, source_address=(source, 0)) as c:
        c.ehlo("mail.sender.test")
        code, reply = c.mail(sender)
        assert code == 250, reply
        for rcpt in rcpts:
            replies[rcpt] = c.rcpt(rcpt)
        if any(code == 250 for code, _ in replies.values()):
            raw = f"From: <{sender or 'mailer-daemon@sender.test'}>\r\nSubject: {subject}\r\n\r\nhi\r\n".encode()
            replies["DATA"] = c.data(raw)
        else:
            c.rset()
    return replies


def retry_until_accepted(srv: Server, source: str, sender: str, rcpt: str, within: float = 20.0) -> int:
    """Retry (as an MTA would, only faster) until the RCPT passes; the number of greylisted tries."""
    tries = 0
    deadline = time.monotonic() + within
    while True:
        r = attempt(srv, source, sender, [rcpt])
        if r[rcpt][0] == 250:
            assert r["DATA"][0] == 250, r
            return tries
        assert (r[rcpt][0], r[rcpt][1][:5]) == (451, b"4.7.1"), r
        tries += 1
        assert time.monotonic() < deadline, "the retry never passed"
        time.sleep(0.2)


def test_first_attempt_is_greylisted_with_a_retry_hint_then_passes(server: Server) -> None:
    r = attempt(server, "127.0.1.1", "bob@sender.test", ["alice@example.org"])
    code, text = r["alice@example.org"]
    assert (code, text[:5]) == (451, b"4.7.1"), r
    assert re.search(rb"try again in \d+ seconds", text), text
    assert "DATA" not in r
    retry_until_accepted(server, "127.0.1.1", "bob@sender.test", "alice@example.org")
    # a new recipient is a new triplet; an unknown one is refused as such, not greylisted
    r = attempt(server, "127.0.1.1", "bob@sender.test", ["bob@example.org", "nobody@example.org"])
    assert r["bob@example.org"][0] == 451 and r["nobody@example.org"][0] == 550, r
    # the triplet now passes at once, from any address of the /24, with a VERP-style sender
    assert attempt(server, "127.0.1.77", "bob+x@sender.test", ["alice@example.org"])["alice@example.org"][0] == 250


def test_a_retry_before_the_delay_is_greylisted_again(tmp_path) -> None:
    slow = GREYLIST.replace("delay = 1.0", "delay = 600.0").replace("expire = 600.0", "expire = 3600.0")
    srv = start(tmp_path, workers=1, extra=slow)
    try:
        first = attempt(srv, "127.0.2.1", "bob@sender.test", ["alice@example.org"])["alice@example.org"]
        again = attempt(srv, "127.0.2.1", "bob@sender.test", ["alice@example.org"])["alice@example.org"]
        assert first[0] == again[0] == 451
        waits = [int(re.search(rb"in (\d+) seconds", t).group(1)) for _, t in (first, again)]  # type: ignore[union-attr]
        assert waits[0] == 600 and 0 < waits[1] <= 600
    finally:
        srv.stop()
        srv.kill_tree()


def test_whitelisted_network_and_sender_domain_pass_at_once(server: Server) -> None:
    assert attempt(server, "127.0.9.5", "x@anywhere.test", ["alice@example.org"])["DATA"][0] == 250
    assert attempt(server, "127.0.3.5", "news@mail.friend.test", ["alice@example.org"])["DATA"][0] == 250
    assert attempt(server, "127.0.3.5", "news@unfriend.test", ["alice@example.org"])["alice@example.org"][0] == 451


def test_submission_is_not_greylisted(server: Server) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30, source_address=("127.0.4.1", 0)) as c:
        c.login("bob@example.org", PASSWORDS["bob@example.org"])
        assert c.mail("bob@example.org")[0] == 250
        assert c.rcpt("alice@example.org")[0] == 250


def test_auto_whitelist_after_two_passes(server: Server) -> None:
    source = "127.0.5.1"
    for sender in ("one@sender.test", "two@sender.test"):
        retry_until_accepted(server, source, sender, "alice@example.org")
    # the network has passed twice: a new triplet from it is no longer greylisted
    r = attempt(server, "127.0.5.9", "three@elsewhere.test", ["carol@example.org"])
    assert r["carol@example.org"][0] == 250 and r["DATA"][0] == 250, r
    # another network is
    assert attempt(server, "127.0.6.1", "three@elsewhere.test", ["carol@example.org"])["carol@example.org"][0] == 451


def _pid(sid: str) -> str:
    return sid.split(".", 1)[0]


def test_state_is_shared_by_the_workers(server: Server) -> None:
    """Twelve triplets greylisted in twelve connections, each retried in new connections: none is greylisted
    twice after the delay, and the kernel spreads the connections over both workers, so some retries pass
    on the worker that did not greylist them (the chance that all 24+ connections reach one is 2^-23)."""
    rcpt = "alice@example.org"
    senders = [f"s{i}@shared.test" for i in range(12)]
    for sender in senders:
        assert attempt(server, "127.0.7.1", sender, [rcpt])[rcpt][0] == 451
    time.sleep(1.0)  # greylist.delay: no assertion on time, the retry loop below bounds it
    for sender in senders:
        retry_until_accepted(server, "127.0.7.1", sender, rcpt)
    deadline = time.monotonic() + 10
    while True:  # workers flush their log lines on a timer
        log = server.log.read_text()
        greylisted = {m.group(2): _pid(m.group(1)) for m in
                      re.finditer(r"event=greylisted sid=(\S+) peer=127\.0\.7\.1 sender=(\S+)", log)}
        accepted = {m.group(2): _pid(m.group(1)) for m in
                    re.finditer(r"event=accepted sid=(\S+) qid=\S+ sender=(s\d+@shared\.test)", log)}
        if len(accepted) == len(senders) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert set(accepted) == set(senders), log[-3000:]
    assert len(set(greylisted.values()) | set(accepted.values())) == 2
    assert any(greylisted[s] != accepted[s] for s in senders)


def test_greylist_state_survives_a_restart(tmp_path) -> None:
    srv = start(tmp_path, workers=1)
    try:
        assert attempt(srv, "127.0.8.1", "bob@sender.test", ["alice@example.org"])["alice@example.org"][0] == 451
        srv.stop()
        time.sleep(1.0)  # greylist.delay
        srv.start()
        # the triplet was remembered: the first retry after the delay passes
        assert retry_until_accepted(srv, "127.0.8.1", "bob@sender.test", "alice@example.org") == 0
    finally:
        srv.stop()
        srv.kill_tree()


def test_a_client_on_a_dnswl_is_not_greylisted(tmp_path) -> None:
    from .dnsserver import LocalDNS

    dns = LocalDNS().start()
    dns.set("1.10.0.127.wl.test", ("A", "127.0.0.2"))  # RFC 5782 §2.1: 127.0.10.1 listed in wl.test
    extra = GREYLIST + f'\n[checks]\nresolver = "{dns.address}"\ndnswl = ["wl.test"]\ndns_timeout = 2.0\n'
    srv = start(tmp_path, workers=1, extra=extra)
    try:
        for source, expected in (("127.0.10.1", 250), ("127.0.11.1", 451)):
            with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30, source_address=(source, 0)) as c:
                c.ehlo("mail.sender.test")
                deadline = time.monotonic() + 5  # the lookup runs while the client talks: let it land
                while not any(q[0] == f"{source.split('.')[3]}.{source.split('.')[2]}.0.127.wl.test"
                              for q in dns.asked) and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(0.1)
                assert c.mail("bob@sender.test")[0] == 250
                assert c.rcpt("alice@example.org")[0] == expected, source
    finally:
        srv.stop()
        srv.kill_tree()
        dns.stop()
