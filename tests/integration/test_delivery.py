"""Outbound delivery (issue #6) against a real DNS server on 127.0.0.1 and scripted SMTP receivers on
127.0.0.x: MX routing and fallback, null MX, SERVFAIL, retries, per-recipient results, bounces (parsed with
the stdlib `email` package), SMTPUTF8, connection reuse, DSN parameters, queue control from the CLI, and
kill -9 of the delivery process in the middle of a transfer."""

from __future__ import annotations

import email
import email.policy
import os
import re
import signal
import smtplib
import ssl
import time
from collections.abc import Callable, Iterator
from email.message import Message
from typing import Any

import orjson
import pytest

from fastmail.store.store import Store
from fastmail.tlsfiles import ensure_self_signed

from .conftest import Server, free_port, make_server
from .dnsserver import LocalDNS
from .postfix import Postfix
from .receivers import Loop, PolicyServer, Receiver
from .tlsca import TestCA

pytestmark = pytest.mark.integration

SENDER = "alice@example.org"


def config(dns: LocalDNS, port: int, **delivery: Any) -> str:
    settings = {"resolver": dns.address, "port": port, "retry_base": 0.3, "retry_max": 1.0, "lifetime": 600.0,
                "connection_reuse_time": 10.0, "connect_timeout": 5.0,
                "require_tls_domains": ["secure.test"], **delivery}
    lines = "\n".join(f"{k} = {orjson.dumps(v).decode()}" for k, v in settings.items())
    return f'trusted_networks = ["127.0.0.1/32"]\n\n[delivery]\n{lines}\n'


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def sts_port() -> int:
    return free_port()


STS_DOMAINS = ("sts.test", "stsbad.test", "stsother.test")


@pytest.fixture(scope="module")
def policies(rloop: Loop, ca: TestCA, sts_port: int, dns: LocalDNS) -> Iterator[PolicyServer]:
    """MTA-STS policy hosts mta-sts.<domain> of STS_DOMAINS, all on 127.0.0.24 (one certificate from the CA)."""
    server = PolicyServer(rloop, "127.0.0.24", sts_port, ca.server_context(*(f"mta-sts.{d}" for d in STS_DOMAINS)))
    for d in STS_DOMAINS:
        dns.set(f"mta-sts.{d}", ("A", "127.0.0.24"))
    server.start()
    yield server
    rloop.run(_stop(server))


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, dns: LocalDNS, mx_port: int, ca: TestCA,
        sts_port: int) -> Iterator[Server]:
    s = make_server(tmp_path_factory.mktemp("delivery"), workers=1,
                    extra=config(dns, mx_port, tls_ca_file=str(ca.path), mta_sts_port=sts_port))
    s.start()
    yield s
    s.stop()
    s.kill_tree()


async def _stop(r: Receiver | PolicyServer) -> None:
    r.stop()


def message(subject: str, to: str, extra: str = "") -> bytes:
    return (f"From: Alice <{SENDER}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{subject.replace(' ', '-')}@example.org>\r\n"
            f"{extra}\r\nHello {to},\r\n.a line starting with a dot\r\n..and two\r\nbye\r\n").encode()


def send(srv: Server, sender: str, rcpts: list[str], msg: bytes, mail_options: tuple[str, ...] = (),
         rcpt_options: tuple[str, ...] = ()) -> None:
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
        s.ehlo("client.test")
        refused = s.sendmail(sender, rcpts, msg, mail_options=list(mail_options), rcpt_options=list(rcpt_options))
        assert not refused


def queue(srv: Server) -> list[dict[str, Any]]:
    store = Store(srv.data)
    try:
        return store.queue_list()
    finally:
        store.close()


def entries_for(srv: Server, address: str) -> list[dict[str, Any]]:
    return [e for e in queue(srv) if any(r["to"] == address for r in e["rcpts"])]


def wait_for(what: Callable[[], Any], timeout: float = 30.0, why: str = "") -> Any:
    """Poll (bounded) until `what()` is truthy; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {why or what}")


def strip_trace(raw: bytes) -> bytes:
    """The message without the Received: fields (and their continuation lines) at its top."""
    while raw.startswith(b"Received: "):
        end = raw.index(b"\r\n") + 2
        while raw[end:end + 1] in (b" ", b"\t"):
            end = raw.index(b"\r\n", end) + 2
        raw = raw[end:]
    return raw


def inbox(srv: Server, user: str) -> list[bytes]:
    store = Store(srv.data)
    try:
        uid = store.get_user(user)["id"]
        mid = store.mailbox_id(uid, "INBOX")
        return [store.read_message(mid, m["uid"]) or b"" for m in store.list_messages(mid)]
    finally:
        store.close()


def bounces_in_inbox(srv: Server, user: str, about: str) -> list[Message]:
    out = []
    for raw in inbox(srv, user):
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        if msg.get_content_type() == "multipart/report" and about.encode() in raw:
            out.append(msg)
    return out


def report(bounce: Message) -> tuple[Message, list[Message], Message]:
    """(the per-message fields, the per-recipient field blocks, the returned original part)."""
    assert bounce.get_content_type() == "multipart/report"
    assert bounce.get_param("report-type") == "delivery-status"
    text, status, original = bounce.get_payload()
    assert text.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    return blocks[0], blocks[1:], original


def log_lines(srv: Server, event: str) -> list[dict[str, str]]:
    out = []
    for line in srv.log.read_text(errors="replace").splitlines():
        if f" event={event} " in line + " ":
            out.append(dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)))
    return out


# -- routing, transfer, DSN parameters ------------------------------------------------------------------------


def test_delivers_through_mx_with_pipelining_and_dsn_parameters(srv, dns, receivers):
    dns.set("one.test", ("MX", (10, "mx.one.test.")))
    dns.set("mx.one.test", ("A", "127.0.0.2"))
    rx = receivers("127.0.0.2")
    msg = message("first delivery", "bob@one.test")
    send(srv, SENDER, ["bob@one.test"], msg, mail_options=("RET=HDRS", "ENVID=env+2Bid"),
         rcpt_options=("NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;bob+2Bx@one.test"))
    # The delivery process looks at an idle queue only every 30 s on its own: arriving within the 20 s bound
    # takes the wake-up the worker sends after its commit.
    got = rx.wait(1, timeout=20)[0]
    assert strip_trace(got.data) == msg  # dot-stuffed on the wire, unstuffed by the receiver: the same bytes
    assert got.data.startswith(b"Received: from client.test")  # our own trace field, added at acceptance
    assert got.mail.startswith(f"MAIL FROM:<{SENDER}>")
    assert f"SIZE={len(got.data)}" in got.mail and "RET=HDRS" in got.mail and "ENVID=env+2Bid" in got.mail
    assert got.rcpts == ["RCPT TO:<bob@one.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob+2Bx@one.test"]
    # MAIL, RCPT and DATA went in one write (PIPELINING): when the receiver read MAIL, the rest was there
    t = rx.transcript
    i = next(k for k, line in enumerate(t) if line.startswith("MAIL"))
    assert t[i + 1].startswith("RCPT") and t[i + 2] == "DATA"
    assert rx.ahead[i] == len(t[i + 1]) + len(t[i + 2]) + 4 and rx.ahead[i + 2] == 0
    wait_for(lambda: not entries_for(srv, "bob@one.test"), why="queue entry removed")
    lines = wait_for(lambda: [x for x in log_lines(srv, "delivery") if x.get("rcpt") == "bob@one.test"])
    assert lines[0]["mx"] == "mx.one.test" and lines[0]["ip"] == "127.0.0.2" and lines[0]["result"] == "sent"
    assert lines[0]["reply"].strip('"').startswith("250 2.0.0") and "qid" in lines[0] and "tls" in lines[0]


def test_mx_preference_and_fallback_when_the_first_refuses_connections(srv, dns, receivers):
    dns.set("two.test", ("MX", (20, "backup.two.test.")), ("MX", (10, "primary.two.test.")))
    dns.set("primary.two.test", ("A", "127.0.0.3"))  # nothing listens there: connection refused
    dns.set("backup.two.test", ("A", "127.0.0.4"))
    rx = receivers("127.0.0.4")
    msg = message("fallback", "carol@two.test")
    send(srv, SENDER, ["carol@two.test"], msg)
    assert strip_trace(rx.wait(1)[0].data) == msg
    wait_for(lambda: not entries_for(srv, "carol@two.test"), why="queue entry removed")
    failed = wait_for(lambda: [x for x in log_lines(srv, "connect_failed") if x.get("domain") == "two.test"])
    assert failed[0]["mx"] == "primary.two.test"  # tried first: the lower preference
    sent = wait_for(lambda: [x for x in log_lines(srv, "delivery") if x.get("rcpt") == "carol@two.test"])
    assert [x["mx"] for x in sent] == ["backup.two.test"]


def test_no_mx_falls_back_to_the_address_record(srv, dns, receivers):
    dns.set("nomx.test", ("AAAA", "::1"), ("A", "127.0.0.5"))  # ::1 refuses (no receiver there): then IPv4
    rx = receivers("127.0.0.5")
    msg = message("implicit mx", "dan@nomx.test")
    send(srv, SENDER, ["dan@nomx.test"], msg)
    assert strip_trace(rx.wait(1)[0].data) == msg
    sent = wait_for(lambda: [x for x in log_lines(srv, "delivery") if x.get("rcpt") == "dan@nomx.test"])
    assert sent[0]["mx"] == "nomx.test" and sent[0]["ip"] == "127.0.0.5"
    tried = wait_for(lambda: [x["ip"] for x in log_lines(srv, "connect_failed") if x.get("domain") == "nomx.test"])
    assert tried[:1] == ["::1"]  # IPv6 first, then IPv4


def test_connection_reuse_for_several_messages_to_one_destination(srv, dns, receivers):
    dns.set("reuse.test", ("MX", (10, "mx.reuse.test.")))
    dns.set("mx.reuse.test", ("A", "127.0.0.6"))
    rx = receivers("127.0.0.6")
    send(srv, SENDER, ["r0@reuse.test"], message("reuse 0", "r0@reuse.test"))
    rx.wait(1)
    # the session stays open (connection_reuse_time 10 s): the next messages take it, one after the other
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
        for n in (1, 2):
            s.sendmail(SENDER, [f"r{n}@reuse.test"], message(f"reuse {n}", f"r{n}@reuse.test"))
    got = rx.wait(3)
    assert [m.accepted[0] for m in got] == ["r0@reuse.test", "r1@reuse.test", "r2@reuse.test"]
    assert rx.connections == 1
    assert sum(1 for line in rx.transcript if line.startswith("EHLO")) == 1
    assert sum(1 for line in rx.transcript if line.startswith("MAIL")) == 3


def test_domains_with_the_same_mx_share_sessions_and_idle_ones_give_their_slot_up(tmp_path, dns, rloop, mx_port):
    """A destination is a set of MX hosts: mail for two domains served by one MX host goes over one session
    (one EHLO); with delivery.max_connections = 1, an idle session (reuse time 10 s) closes at once when
    mail for another destination needs the slot."""
    for d in ("a.pooled.test", "b.pooled.test"):
        dns.set(d, ("MX", (10, "mx.pooled.test.")))
    dns.set("mx.pooled.test", ("A", "127.0.0.29"))
    dns.set("elsewhere.test", ("MX", (10, "mx.elsewhere.test.")))
    dns.set("mx.elsewhere.test", ("A", "127.0.0.31"))
    pooled = Receiver(rloop, "127.0.0.29", mx_port).start()
    other = Receiver(rloop, "127.0.0.31", mx_port).start()
    s = make_server(tmp_path, workers=1, extra=config(dns, mx_port, max_connections=1))
    s.start()
    try:
        send(s, SENDER, ["ann@a.pooled.test"], message("pooled 1", "ann@a.pooled.test"))
        pooled.wait(1)
        send(s, SENDER, ["ben@b.pooled.test"], message("pooled 2", "ben@b.pooled.test"))
        got = pooled.wait(2)
        assert [m.accepted for m in got] == [["ann@a.pooled.test"], ["ben@b.pooled.test"]]
        assert pooled.connections == 1 and sum(1 for line in pooled.transcript if line.startswith("EHLO")) == 1
        t0 = time.monotonic()
        send(s, SENDER, ["cy@elsewhere.test"], message("elsewhere", "cy@elsewhere.test"))
        other.wait(1)
        assert time.monotonic() - t0 < 5  # not after the idle session's 10 s
        assert "QUIT" in pooled.transcript
    finally:
        s.stop()
        s.kill_tree()
        rloop.run(_stop(pooled))
        rloop.run(_stop(other))


def test_messages_to_one_destination_are_pipelined_one_behind_the_other(tmp_path, dns, rloop, mx_port):
    """With one connection per destination, four jobs (one message to four domains of one MX) go over one
    session, each next transaction pipelined behind the data of the one before (RFC 2920 §3.1); each keeps
    its own outcome: sent, refused at the end of data (bounced), refused at RCPT (deferred), sent."""
    for n in range(1, 5):
        dns.set(f"p{n}.piped.test", ("MX", (10, "mx.piped.test.")))
    dns.set("mx.piped.test", ("A", "127.0.0.33"))
    rx = Receiver(rloop, "127.0.0.33", mx_port, rcpt=lambda a, _: "450 4.2.1 later" if a.startswith("r3@") else "250 ok",
                  data=lambda n: "550 5.7.1 not this one" if n == 2 else "250 2.0.0 ok",
                  greeting_delay=1.0)  # the four jobs are all waiting when the session is ready
    rx.start()
    s = make_server(tmp_path, workers=1, extra=config(dns, mx_port, max_connections_per_domain=1))
    s.start()
    try:
        rcpts = [f"r{n}@p{n}.piped.test" for n in range(1, 5)]
        msg = message("piped", "r1@p1.piped.test")
        send(s, SENDER, rcpts, msg)
        got = rx.wait(2)
        assert sorted(m.accepted[0] for m in got) == ["r1@p1.piped.test", "r4@p4.piped.test"]
        assert all(strip_trace(m.data) == msg for m in got)
        assert rx.connections == 1 and sum(1 for line in rx.transcript if line.startswith("EHLO")) == 1
        assert sum(1 for line in rx.transcript if line.startswith("MAIL")) == 4
        # the next MAIL, RCPT and DATA came with the end of the data before: after the first and second
        # messages; the fourth went after the third's RSET (its recipient refused, no data), and is the last
        assert [n > 0 for n in rx.ahead_of_end] == [True, True, False], rx.ahead_of_end
        bounce = wait_for(lambda: bounces_in_inbox(s, SENDER, "r2@p2.piped.test"), why="bounce")[0]
        _, per_rcpt, _ = report(bounce)
        assert [b["Final-Recipient"] for b in per_rcpt] == ["rfc822; r2@p2.piped.test"]
        assert per_rcpt[0]["Diagnostic-Code"] == "smtp; 550 5.7.1 not this one"
        entry = wait_for(lambda: [e for e in entries_for(s, "r3@p3.piped.test") if e["attempts"] >= 1])[0]
        assert [r["state"] for r in entry["rcpts"]] == ["sent", "bounced", "deferred", "sent"]
        results = wait_for(lambda: len(r := {x["rcpt"]: x["result"] for x in log_lines(s, "delivery")
                                             if x.get("rcpt", "").endswith(".piped.test")}) == 4 and r)
        assert results == {"r1@p1.piped.test": "sent", "r2@p2.piped.test": "failed", "r3@p3.piped.test": "deferred",
                           "r4@p4.piped.test": "sent"}
    finally:
        s.stop()
        s.kill_tree()
        rloop.run(_stop(rx))


def test_chunking_when_offered(srv, dns, receivers):
    dns.set("bdat.test", ("MX", (10, "mx.bdat.test.")))
    dns.set("mx.bdat.test", ("A", "127.0.0.28"))
    rx = receivers("127.0.0.28", ehlo=("PIPELINING", "CHUNKING", "8BITMIME"))
    msg = message("chunked", "bea@bdat.test")
    send(srv, SENDER, ["bea@bdat.test"], msg)
    got = rx.wait(1)[0]
    assert strip_trace(got.data) == msg  # sent as it is: no dot-stuffing in a BDAT chunk
    assert any(line.startswith(f"BDAT {len(got.data)} LAST") for line in rx.transcript)
    assert "DATA" not in rx.transcript


# -- temporary failures -----------------------------------------------------------------------------------


def test_4xx_then_success_is_retried(srv, dns, receivers):
    dns.set("retry.test", ("MX", (10, "mx.retry.test.")))
    dns.set("mx.retry.test", ("A", "127.0.0.7"))
    tries: list[int] = []

    def rcpt(address: str, _: int) -> str:
        tries.append(1)
        return "451 4.3.2 try again later" if len(tries) == 1 else "250 2.1.5 ok"

    rx = receivers("127.0.0.7", rcpt=rcpt)
    msg = message("retry", "erin@retry.test")
    send(srv, SENDER, ["erin@retry.test"], msg)
    assert strip_trace(rx.wait(1)[0].data) == msg
    assert len(tries) == 2
    wait_for(lambda: not entries_for(srv, "erin@retry.test"), why="queue entry removed")
    results = wait_for(lambda: [x["result"] for x in log_lines(srv, "delivery") if x.get("rcpt") == "erin@retry.test"
                                and x["result"] == "sent"] and
                       [x["result"] for x in log_lines(srv, "delivery") if x.get("rcpt") == "erin@retry.test"])
    assert results == ["deferred", "sent"]
    assert not bounces_in_inbox(srv, SENDER, "erin@retry.test")


def test_a_server_that_stops_answering_times_out_and_is_retried(tmp_path, dns, rloop, mx_port):
    """RFC 5321 §4.5.3.2: 10 min for the reply to the end of data (here scaled by delivery.timeout_scale to
    3 s); the attempt is then deferred, never bounced."""
    dns.set("stall.test", ("MX", (10, "mx.stall.test.")))
    dns.set("mx.stall.test", ("A", "127.0.0.32"))
    rx = Receiver(rloop, "127.0.0.32", mx_port)
    rx.stall_data = True
    rx.start()
    s = make_server(tmp_path, workers=1, extra=config(dns, mx_port, timeout_scale=0.005, retry_base=600.0, retry_max=600.0))
    s.start()
    try:
        t0 = time.monotonic()
        send(s, SENDER, ["sid@stall.test"], message("stalled", "sid@stall.test"))
        entry = wait_for(lambda: [e for e in entries_for(s, "sid@stall.test") if e["attempts"] >= 1], why="attempt")[0]
        assert time.monotonic() - t0 >= 2.5
        r = entry["rcpts"][0]
        assert r["state"] == "deferred" and r["reply"] == "421 4.4.2 timeout after 3 s waiting for the server"
        assert not bounces_in_inbox(s, SENDER, "sid@stall.test")
    finally:
        s.stop()
        s.kill_tree()
        rloop.run(_stop(rx))


def test_servfail_is_retried_never_bounced(srv, dns, receivers):
    dns.servfail.add("flaky.test")
    send(srv, SENDER, ["fay@flaky.test"], message("servfail", "fay@flaky.test"))
    entry = wait_for(lambda: [e for e in entries_for(srv, "fay@flaky.test") if e["attempts"] >= 3],
                     why="three attempts")[0]
    assert entry["rcpts"][0]["state"] == "deferred" and entry["rcpts"][0]["status"] == "4.4.3"
    assert not bounces_in_inbox(srv, SENDER, "fay@flaky.test")
    # the DNS recovers: the next retry delivers
    dns.set("flaky.test", ("MX", (10, "mx.flaky.test.")))
    dns.set("mx.flaky.test", ("A", "127.0.0.8"))
    rx = receivers("127.0.0.8")
    dns.servfail.discard("flaky.test")
    rx.wait(1)
    wait_for(lambda: not entries_for(srv, "fay@flaky.test"), why="queue entry removed")


def test_require_tls_policy_defers_when_starttls_is_not_offered(srv, dns, receivers):
    dns.set("secure.test", ("MX", (10, "mx.secure.test.")))
    dns.set("mx.secure.test", ("A", "127.0.0.16"))
    rx = receivers("127.0.0.16", ehlo=("PIPELINING",))
    send(srv, SENDER, ["sue@secure.test"], message("tls required", "sue@secure.test"))
    entry = wait_for(lambda: [e for e in entries_for(srv, "sue@secure.test") if e["attempts"] >= 1], why="attempt")[0]
    assert entry["rcpts"][0]["state"] == "deferred" and entry["rcpts"][0]["status"] == "4.7.4"
    assert not any(line.startswith("MAIL") for line in rx.transcript)  # nothing went in plain text
    srv.cli("queue", "delete", entry["id"])
    assert not entries_for(srv, "sue@secure.test")  # `queue delete`: gone, without a bounce
    assert not bounces_in_inbox(srv, SENDER, "sue@secure.test")


def test_opportunistic_tls_that_fails_is_retried_in_plain_text(srv, dns, receivers):
    dns.set("badtls.test", ("MX", (10, "mx.badtls.test.")))
    dns.set("mx.badtls.test", ("A", "127.0.0.17"))
    rx = receivers("127.0.0.17", ehlo=("STARTTLS", "PIPELINING"))
    msg = message("tls broken", "tom@badtls.test")
    send(srv, SENDER, ["tom@badtls.test"], msg)
    assert strip_trace(rx.wait(1)[0].data) == msg
    assert rx.connections == 2 and rx.transcript.count("STARTTLS") == 1
    sent = wait_for(lambda: [x for x in log_lines(srv, "delivery") if x.get("rcpt") == "tom@badtls.test"])
    assert sent[0]["tls"] == "none" and sent[0]["result"] == "sent"


def test_mx_that_is_this_host_is_a_loop_and_bounces(srv, dns, receivers):
    dns.set("loopback.test", ("MX", (10, "mx.loopback.test.")))
    dns.set("mx.loopback.test", ("A", "127.0.0.18"))
    receivers("127.0.0.18", greeting="220 mx.example.org ESMTP fastmail")  # our own name
    send(srv, SENDER, ["uma@loopback.test"], message("looping", "uma@loopback.test"))
    bounce = wait_for(lambda: bounces_in_inbox(srv, SENDER, "uma@loopback.test"), why="bounce")[0]
    _, per_rcpt, _ = report(bounce)
    assert per_rcpt[0]["Status"] == "5.4.6" and "loops back to myself" in per_rcpt[0]["Diagnostic-Code"]


# -- permanent failures and bounces -------------------------------------------------------------------------


def test_5xx_for_one_of_two_recipients_bounces_only_that_one(srv, dns, receivers):
    dns.set("half.test", ("MX", (10, "mx.half.test.")))
    dns.set("mx.half.test", ("A", "127.0.0.9"))
    rx = receivers("127.0.0.9", rcpt=lambda a, _: f"550 5.1.1 <{a}>: no such user" if a.startswith("gone")
                   else "250 2.1.5 ok")
    msg = message("half bounced", "gone@half.test")
    send(srv, SENDER, ["gone@half.test", "here@half.test"], msg, rcpt_options=())
    got = rx.wait(1)
    assert len(got) == 1 and got[0].accepted == ["here@half.test"]
    bounce = wait_for(lambda: bounces_in_inbox(srv, SENDER, "gone@half.test"), why="bounce in INBOX")
    assert len(bounce) == 1
    b = bounce[0]
    assert b["To"] == f"<{SENDER}>" and "MAILER-DAEMON@mx.example.org" in b["From"]
    assert b["Auto-Submitted"] == "auto-replied"
    per_message, per_rcpt, original = report(b)
    assert per_message["Reporting-MTA"] == "dns; mx.example.org"
    assert len(per_rcpt) == 1
    r = per_rcpt[0]
    assert r["Final-Recipient"] == "rfc822; gone@half.test"
    assert r["Action"] == "failed"
    assert r["Status"] == "5.1.1"
    assert r["Remote-MTA"] == "dns; mx.half.test"
    assert r["Diagnostic-Code"] == "smtp; 550 5.1.1 <gone@half.test>: no such user"
    # RET unspecified: the full original comes back
    assert original.get_content_type() == "message/rfc822"
    returned = original.get_payload()[0]
    assert returned["Subject"] == "half bounced" and "a line starting with a dot" in returned.get_payload()
    wait_for(lambda: not entries_for(srv, "gone@half.test"), why="queue entry removed")
    # the bounce went through the normal store path: counted in the mailbox like any message
    messages = inbox(srv, SENDER)
    store = Store(srv.data)
    try:
        box = [m for m in store.list_mailboxes(store.get_user(SENDER)["id"]) if m["name"] == "INBOX"][0]
    finally:
        store.close()
    assert box["exists"] == len(messages)


def test_null_mx_bounces_at_once_to_a_remote_sender(srv, dns, receivers):
    dns.set("nullmx.test", ("MX", (0, ".")))
    dns.set("sender.test", ("MX", (10, "mx.sender.test.")))
    dns.set("mx.sender.test", ("A", "127.0.0.10"))
    back = receivers("127.0.0.10")
    send(srv, "gus@sender.test", ["hal@nullmx.test"], message("null mx", "hal@nullmx.test"),
         mail_options=("RET=HDRS", "ENVID=null+2Bmx"))
    got = back.wait(1)[0]
    assert got.mail.startswith("MAIL FROM:<>")  # a bounce has the null reverse-path
    assert got.accepted == ["gus@sender.test"]
    b = email.message_from_bytes(strip_trace(got.data), policy=email.policy.compat32)
    per_message, per_rcpt, original = report(b)
    assert per_message["Original-Envelope-Id"] == "null+mx"  # xtext decoded (RFC 3464 §2.2.1)
    assert per_rcpt[0]["Final-Recipient"] == "rfc822; hal@nullmx.test"
    assert per_rcpt[0]["Status"] == "5.1.10" and per_rcpt[0]["Action"] == "failed"
    assert "null MX" in per_rcpt[0]["Diagnostic-Code"]
    assert original.get_content_type() == "text/rfc822-headers"  # RET=HDRS
    assert "Subject: null mx" in original.get_payload() and "Hello" not in original.get_payload()
    wait_for(lambda: not entries_for(srv, "hal@nullmx.test") and not entries_for(srv, "gus@sender.test"),
             why="queue empty of both")
    no_attempt = wait_for(lambda: [x for x in log_lines(srv, "delivery") if x.get("rcpt") == "hal@nullmx.test"])
    assert no_attempt[0]["mx"] == "none"


def test_notify_success_relayed_to_a_server_without_dsn_gets_a_relayed_notice(srv, dns, receivers):
    dns.set("nodsn.test", ("MX", (10, "mx.nodsn.test.")))
    dns.set("mx.nodsn.test", ("A", "127.0.0.34"))
    rx = receivers("127.0.0.34", ehlo=("PIPELINING", "8BITMIME"))
    send(srv, SENDER, ["val@nodsn.test"], message("success notice", "val@nodsn.test"),
         rcpt_options=("NOTIFY=SUCCESS,FAILURE",))
    got = rx.wait(1)[0]
    assert got.rcpts == ["RCPT TO:<val@nodsn.test>"]  # no DSN parameters for a server without DSN
    notice = wait_for(lambda: bounces_in_inbox(srv, SENDER, "val@nodsn.test"), why="relayed notice")[0]
    assert notice["Subject"] == "Successful Mail Delivery Report"
    _, per_rcpt, _ = report(notice)
    assert per_rcpt[0]["Action"] == "relayed" and per_rcpt[0]["Status"] == "2.0.0"


def delivered_notices(srv: Server, user: str, subject: str) -> list[Message]:
    return [b for b in bounces_in_inbox(srv, user, f"Subject: {subject}")
            if b["Subject"] == "Successful Mail Delivery Report"]


def test_notify_success_delivered_locally_gets_a_delivered_notice(srv, dns):
    """RFC 3461 §6.2.2.2: the final MTA sends Action: delivered (2.0.0) for NOTIFY=SUCCESS."""
    send(srv, SENDER, ["bob@example.org"], message("delivered notice", "bob@example.org"),
         mail_options=("RET=HDRS", "ENVID=env+2B1"),
         rcpt_options=("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Bob+2Bx@example.org"))
    notice = wait_for(lambda: delivered_notices(srv, SENDER, "delivered notice"), why="delivered notice")
    assert len(notice) == 1
    n = notice[0]
    assert n["To"] == f"<{SENDER}>" and n["Auto-Submitted"] == "auto-replied"
    per_message, per_rcpt, original = report(n)
    assert per_message["Original-Envelope-Id"] == "env+1"
    assert len(per_rcpt) == 1
    r = per_rcpt[0]
    assert r["Action"] == "delivered" and r["Status"] == "2.0.0"
    assert r["Final-Recipient"] == "rfc822; bob@example.org"
    assert r["Original-Recipient"] == "rfc822;Bob+x@example.org"
    assert original.get_content_type() == "text/rfc822-headers"  # RET=HDRS
    assert "Subject: delivered notice" in original.get_payload() and "Hello" not in original.get_payload()
    assert any(b"Subject: delivered notice" in m for m in inbox(srv, "bob@example.org"))
    wait_for(lambda: not entries_for(srv, "bob@example.org"), why="the notice's queue record removed")
    # RET=FULL: the whole message comes back
    send(srv, SENDER, ["carol@example.org"], message("delivered full", "carol@example.org"),
         mail_options=("RET=FULL",), rcpt_options=("NOTIFY=SUCCESS",))
    n = wait_for(lambda: delivered_notices(srv, SENDER, "delivered full"), why="delivered notice")[0]
    _, per_rcpt, original = report(n)
    assert per_rcpt[0]["Action"] == "delivered" and "Original-Recipient" not in per_rcpt[0]
    assert original.get_content_type() == "message/rfc822"
    assert "a line starting with a dot" in original.get_payload()[0].get_payload()


def test_no_delivered_notice_without_success_and_only_for_the_recipient_that_asked(srv, dns):
    for subject, options in (("no notice failure", ("NOTIFY=FAILURE",)), ("no notice never", ("NOTIFY=NEVER",)),
                             ("no notice default", ())):
        send(srv, SENDER, ["bob@example.org"], message(subject, "bob@example.org"), rcpt_options=options)
    # two recipients, one with SUCCESS: one notice naming only that one
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
        s.ehlo("client.test")
        s.mail(SENDER)
        assert s.rcpt("bob@example.org", ["NOTIFY=SUCCESS"])[0] == 250
        assert s.rcpt("carol@example.org", ["NOTIFY=FAILURE"])[0] == 250
        assert s.data(message("two rcpts notice", "bob@example.org"))[0] == 250
    n = wait_for(lambda: delivered_notices(srv, SENDER, "two rcpts notice"), why="delivered notice")
    assert len(n) == 1
    _, per_rcpt, _ = report(n[0])
    assert [r["Final-Recipient"] for r in per_rcpt] == ["rfc822; bob@example.org"]
    # from <>: never a notice (and nothing queued for it)
    send(srv, "", ["bob@example.org"], message("no notice null sender", "bob@example.org"),
         rcpt_options=("NOTIFY=SUCCESS",))
    wait_for(lambda: not entries_for(srv, "bob@example.org"), why="queue empty")
    time.sleep(1)
    for subject in ("no notice failure", "no notice never", "no notice default", "no notice null sender"):
        assert any(f"Subject: {subject}".encode() in m for m in inbox(srv, "bob@example.org"))
        assert not delivered_notices(srv, SENDER, subject), subject
    assert len(delivered_notices(srv, SENDER, "two rcpts notice")) == 1


def test_delivered_notice_to_a_remote_sender_is_queued_from_null(srv, dns, receivers):
    dns.set("far-sender.test", ("MX", (10, "mx.far-sender.test.")))
    dns.set("mx.far-sender.test", ("A", "127.0.0.35"))
    back = receivers("127.0.0.35")
    send(srv, "ivy@far-sender.test", ["bob@example.org"], message("remote delivered", "bob@example.org"),
         mail_options=("ENVID=remote1",), rcpt_options=("NOTIFY=SUCCESS",))
    got = back.wait(1)[0]
    assert got.mail.startswith("MAIL FROM:<>")
    assert got.accepted == ["ivy@far-sender.test"]
    per_message, per_rcpt, original = report(email.message_from_bytes(strip_trace(got.data),
                                                                      policy=email.policy.compat32))
    assert per_message["Original-Envelope-Id"] == "remote1"
    assert per_rcpt[0]["Action"] == "delivered" and per_rcpt[0]["Status"] == "2.0.0"
    assert per_rcpt[0]["Final-Recipient"] == "rfc822; bob@example.org"
    assert original.get_content_type() == "text/rfc822-headers"  # RET absent: a success notice has the header
    wait_for(lambda: not entries_for(srv, "ivy@far-sender.test"), why="notice sent")


def test_delivered_notice_over_lmtp(srv, dns):
    with smtplib.LMTP("127.0.0.1", srv.ports["lmtp"], local_hostname="client.test", timeout=30) as s:
        assert s.ehlo()[0] == 250  # LHLO
        assert s.mail(SENDER)[0] == 250
        assert s.rcpt("carol@example.org", ["NOTIFY=SUCCESS", "ORCPT=rfc822;carol@example.org"])[0] == 250
        assert s.rcpt("bob@example.org", ["NOTIFY=NEVER"])[0] == 250
        assert s.data(message("lmtp delivered", "carol@example.org"))[0] == 250  # carol's reply
        assert s.getreply()[0] == 250  # bob's
    n = wait_for(lambda: delivered_notices(srv, SENDER, "lmtp delivered"), why="delivered notice over LMTP")
    assert len(n) == 1
    _, per_rcpt, _ = report(n[0])
    assert [(r["Final-Recipient"], r["Action"], r["Status"]) for r in per_rcpt] == [
        ("rfc822; carol@example.org", "delivered", "2.0.0")]
    assert per_rcpt[0]["Original-Recipient"] == "rfc822;carol@example.org"


def test_bounce_of_a_bounce_is_never_sent(srv, dns, receivers):
    """A message from <> that fails is dropped, not bounced (no loops)."""
    dns.set("loop.test", ("MX", (10, "mx.loop.test.")))
    dns.set("mx.loop.test", ("A", "127.0.0.11"))
    rx = receivers("127.0.0.11", rcpt=lambda a, _: "550 5.7.1 go away")
    send(srv, "", ["ivy@loop.test"], message("from null", "ivy@loop.test"))
    wait_for(lambda: any(x.get("rcpt") == "ivy@loop.test" for x in log_lines(srv, "delivery")), why="attempt")
    wait_for(lambda: not entries_for(srv, "ivy@loop.test"), why="entry removed")
    assert not [e for e in queue(srv) if e["sender"] == "" and any(r["to"] == "" for r in e["rcpts"])]
    assert rx.messages == []


def test_smtputf8_message_to_a_server_without_it_bounces_with_5_6_7(srv, dns, receivers):
    dns.set("ascii.test", ("MX", (10, "mx.ascii.test.")))
    dns.set("mx.ascii.test", ("A", "127.0.0.12"))
    rx = receivers("127.0.0.12", ehlo=("PIPELINING", "8BITMIME"))
    send(srv, SENDER, ["jo@ascii.test"], message("utf8 needed", "jo@ascii.test"), mail_options=("SMTPUTF8",))
    bounce = wait_for(lambda: bounces_in_inbox(srv, SENDER, "jo@ascii.test"), why="bounce")[0]
    _, per_rcpt, _ = report(bounce)
    assert per_rcpt[0]["Status"] == "5.6.7"
    assert not any(line.startswith("MAIL") for line in rx.transcript)  # never tried a transaction


# -- queue control ----------------------------------------------------------------------------------------


def test_cli_queue_list_hold_release_retry_bounce(srv, dns):
    dns.servfail.add("held.test")
    send(srv, SENDER, ["kim@held.test"], message("held", "kim@held.test"))
    entry = wait_for(lambda: [e for e in entries_for(srv, "kim@held.test") if e["attempts"] >= 1], why="deferred")[0]
    qid = entry["id"]
    listed = orjson.loads(srv.cli("queue", "list", "--json", "--domain", "held.test").stdout)
    assert [e["id"] for e in listed] == [qid] and listed[0]["state"] == "deferred"
    assert orjson.loads(srv.cli("queue", "list", "--json", "--domain", "nowhere.test").stdout) == []
    assert qid not in [e["id"] for e in orjson.loads(srv.cli("queue", "list", "--json", "--min-age", "3600").stdout)]
    assert qid in [e["id"] for e in orjson.loads(srv.cli("queue", "list", "--json", "--min-age", "0").stdout)]
    held = orjson.loads(srv.cli("queue", "hold", qid, "--json").stdout)
    assert held["held"] is True
    assert [e["id"] for e in orjson.loads(srv.cli("queue", "list", "--json", "--state", "held").stdout)] == [qid]
    attempts = queue_entry(srv, qid)["attempts"]
    time.sleep(1.5)  # several retry periods (0.3 s doubling to 1 s): a held entry is not tried
    assert queue_entry(srv, qid)["attempts"] == attempts
    srv.cli("queue", "release", qid)
    wait_for(lambda: queue_entry(srv, qid)["attempts"] > attempts, why="attempt after release")
    srv.cli("queue", "retry", qid)
    shown = orjson.loads(srv.cli("queue", "show", qid, "--json").stdout)
    assert shown["rcpts"][0]["to"] == "kim@held.test"
    assert srv.cli("queue", "show", qid, "--raw").stdout.endswith(b"bye\r\n")
    srv.cli("queue", "bounce", qid)
    bounce = wait_for(lambda: bounces_in_inbox(srv, SENDER, "kim@held.test"), why="bounce")[0]
    _, per_rcpt, _ = report(bounce)
    assert per_rcpt[0]["Status"] == "5.0.0" and "returned by the postmaster" in per_rcpt[0]["Diagnostic-Code"]
    wait_for(lambda: not entries_for(srv, "kim@held.test"), why="entry removed")
    res = srv.cli("queue", "retry", qid, check=False)
    assert res.returncode == 1 and b"no queue entry" in res.stderr


def queue_entry(srv: Server, qid: str) -> dict[str, Any]:
    store = Store(srv.data)
    try:
        entry = store.queue_get(qid)
        assert entry is not None
        return entry
    finally:
        store.close()


# -- a server of its own: lifetime, kill -9 ---------------------------------------------------------------


def test_lifetime_exceeded_bounces_with_the_last_reply(tmp_path, dns, rloop, mx_port):
    dns.set("slow.test", ("MX", (10, "mx.slow.test.")))
    dns.set("mx.slow.test", ("A", "127.0.0.13"))
    rx = Receiver(rloop, "127.0.0.13", mx_port, rcpt=lambda a, _: "452 4.2.2 mailbox full, try later").start()
    s = make_server(tmp_path, workers=1, extra=config(dns, mx_port, lifetime=1.0, retry_base=0.2, retry_max=0.4))
    s.start()
    try:
        send(s, SENDER, ["lou@slow.test"], message("too slow", "lou@slow.test"))
        bounce = wait_for(lambda: bounces_in_inbox(s, SENDER, "lou@slow.test"), why="bounce")[0]
        _, per_rcpt, _ = report(bounce)
        r = per_rcpt[0]
        assert r["Action"] == "failed" and r["Status"] == "4.4.7"
        assert r["Diagnostic-Code"].startswith("smtp; 452 4.2.2 mailbox full, try later (delivery time expired")
        assert r["Remote-MTA"] == "dns; mx.slow.test"
        # every attempt was deferred (usually several; one when the arrival, kept in whole seconds, was
        # late in its second and the first attempt came after the lifetime already)
        tries = wait_for(lambda: [x for x in log_lines(s, "delivery") if x.get("rcpt") == "lou@slow.test"])
        assert {x["result"] for x in tries} == {"deferred"}
        wait_for(lambda: not entries_for(s, "lou@slow.test"), why="entry removed")
    finally:
        s.stop()
        s.kill_tree()
        rloop.run(_stop(rx))


def _delivery_pid(s: Server) -> int:
    starts = [x for x in log_lines(s, "worker_start") if x.get("kind") == "delivery"]
    return int(starts[-1]["pid"]) if starts else 0


def test_kill_9_of_the_delivery_process_mid_transfer_loses_nothing(tmp_path, dns, rloop, mx_port):
    dns.set("crash.test", ("MX", (10, "mx.crash.test.")))
    dns.set("mx.crash.test", ("A", "127.0.0.14"))
    s = make_server(tmp_path, workers=1, extra=config(dns, mx_port))
    in_data: list[int] = []
    rx = Receiver(rloop, "127.0.0.14", mx_port, on_data=lambda: in_data.append(1))
    rx.stall_data = True  # reads the whole message, never answers the final dot
    rx.start()
    s.start()
    try:
        msg = message("crash", "max@crash.test")
        send(s, SENDER, ["max@crash.test"], msg)
        wait_for(lambda: in_data, why="transfer in progress")
        old = _delivery_pid(s)
        assert old
        os.kill(old, signal.SIGKILL)
        rx.stall_data = False
        wait_for(lambda: _delivery_pid(s) not in (0, old), why="delivery process restarted")
        got = rx.wait(1)
        assert strip_trace(got[0].data) == msg
        wait_for(lambda: not entries_for(s, "max@crash.test"), why="entry removed")
        time.sleep(0.5)
        assert len(rx.messages) == 1  # delivered exactly once (the killed transfer never got its 250)
        assert not bounces_in_inbox(s, SENDER, "max@crash.test")
    finally:
        s.stop()
        s.kill_tree()
        rloop.run(_stop(rx))


# -- a real Postfix as the remote MX ------------------------------------------------------------------------


def _unix_trace_stripped(raw: bytes) -> bytes:
    """A Maildir file without the fields Postfix adds at its top (Return-Path, X-Original-To, Delivered-To,
    Received)."""
    lines = raw.split(b"\n")
    i = 0
    while i < len(lines) and lines[i].split(b":", 1)[0] in (b"Return-Path", b"X-Original-To", b"Delivered-To",
                                                                b"Received"):
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            i += 1
    return b"\n".join(lines[i:])


def test_delivery_to_a_real_postfix_over_starttls(srv, dns, mx_port):
    dns.set("pf.test", ("MX", (10, "mx.pf.test.")))
    dns.set("mx.pf.test", ("A", "127.0.0.15"))
    pf = Postfix("127.0.0.15", mx_port, "pf.test", ["rcpt", "other"])
    try:
        pf.start()
    except BaseException:
        pf.stop()
        raise
    try:
        body = ("From: Alice <alice@example.org>\r\nTo: rcpt@pf.test, other@pf.test\r\nSubject: to postfix\r\n"
                "Date: Tue, 01 Dec 2026 05:00:00 +0000\r\nMessage-ID: <pf-1@example.org>\r\n"
                "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
                "\r\nGrüße aus fastmail\r\n.\r\n..\r\n.leading dot\r\n" + "x" * 900 + "\r\nend\r\n").encode()
        send(srv, SENDER, ["rcpt@pf.test", "other@pf.test"], body, mail_options=("BODY=8BITMIME",))
        for user in ("rcpt", "other"):
            files = wait_for(lambda u=user: pf.maildir(u), why=f"maildir of {user}: {pf.log()[-1500:]}")
            assert len(files) == 1
            stored = files[0]
            # Postfix stores in Unix form (LF): the message is ours byte for byte below the trace fields
            assert _unix_trace_stripped(stored) == body.replace(b"\r\n", b"\n")
            assert b"Received: from client.test" in stored  # our own trace field went along
            # STARTTLS was offered and used: Postfix notes the TLS version in its Received field
            assert re.search(rb"\(using TLSv1\.[23] with cipher", stored), stored[:600]
        # Postfix offers CHUNKING: the message went as one BDAT (smtpd's per-session command counts say so)
        assert wait_for(lambda: re.search(r"disconnect from .* bdat=1 ", pf.log()), why=pf.log()[-1500:])
        wait_for(lambda: not entries_for(srv, "rcpt@pf.test"), why="queue entry removed")
        lines = wait_for(lambda: [x for x in log_lines(srv, "delivery") if x.get("mx") == "mx.pf.test"][1:] and
                         [x for x in log_lines(srv, "delivery") if x.get("mx") == "mx.pf.test"])
        assert {x["rcpt"] for x in lines} == {"rcpt@pf.test", "other@pf.test"}
        assert all(x["tls"] in ("TLSv1.2", "TLSv1.3") and x["result"] == "sent" for x in lines)
    finally:
        pf.stop()


def test_two_delivery_processes_share_the_queue(tmp_path, dns, rloop, mx_port):
    dns.set("shared.test", ("MX", (10, "mx.shared.test.")))
    dns.set("mx.shared.test", ("A", "127.0.0.19"))
    rx = Receiver(rloop, "127.0.0.19", mx_port).start()
    s = make_server(tmp_path, workers=1, extra=config(dns, mx_port, processes=2))
    s.start()
    try:
        with smtplib.SMTP("127.0.0.1", s.ports["smtp"], timeout=30) as c:
            for n in range(24):
                c.sendmail(SENDER, [f"p{n}@shared.test"], message(f"shared {n}", f"p{n}@shared.test"))
        got = rx.wait(24)
        assert sorted(m.accepted[0] for m in got) == sorted(f"p{n}@shared.test" for n in range(24))
        wait_for(lambda: not entries_for(s, "p0@shared.test") and len(
            [x for x in log_lines(s, "delivery") if x.get("rcpt", "").endswith("@shared.test")]) == 24)
        by_pid = {x["pid"] for x in log_lines(s, "delivery") if x.get("rcpt", "").endswith("@shared.test")}
        starts = {x["pid"] for x in log_lines(s, "worker_start") if x.get("kind") == "delivery"}
        exits = [x for x in log_lines(s, "worker_exit") if x.get("kind") == "delivery"]
        assert len(starts) == 2 and by_pid == starts, exits  # each process delivered its share (24 random ids)
    finally:
        s.stop()
        s.kill_tree()
        rloop.run(_stop(rx))


def test_smarthost_with_auth_over_starttls(tmp_path, dns, rloop, mx_port):
    """delivery.relayhost: every message goes to the relay (no MX lookup for the recipient's domain), AUTH
    PLAIN after STARTTLS; wrong credentials defer (never bounce)."""
    ensure_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "relay.test")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    relay = Receiver(rloop, "127.0.0.20", mx_port, tls=ctx, auth=("relayuser", "s3cret")).start()
    (tmp_path / "relay.pw").write_text("s3cret\n")
    (tmp_path / "srv").mkdir()
    s = make_server(tmp_path / "srv", workers=1, extra=config(
        dns, mx_port, relayhost=f"127.0.0.20:{mx_port}", relayhost_user="relayuser",
        relayhost_password_file=str(tmp_path / "relay.pw"), connection_reuse_time=0.0))
    s.start()
    try:
        msg = message("via relay", "vic@unresolvable.test")
        send(s, SENDER, ["vic@unresolvable.test", "wes@other.test"], msg)
        got = relay.wait(1)
        assert strip_trace(got[0].data) == msg and got[0].accepted == ["vic@unresolvable.test", "wes@other.test"]
        assert relay.logins == ["relayuser"]
        assert not [q for q in dns.asked if q[0] in ("unresolvable.test", "other.test")]  # no MX lookup
        sent = wait_for(lambda: [x for x in log_lines(s, "delivery") if x.get("rcpt") == "vic@unresolvable.test"])
        assert sent[0]["tls"] in ("TLSv1.2", "TLSv1.3") and sent[0]["mx"] == "[127.0.0.20]"
        # the password file gone: the reload fails and the running config stays; a delivery process that
        # dies is respawned with the password the master read at the last good load (not from the file)
        (tmp_path / "relay.pw").unlink()
        assert s.proc is not None
        os.kill(s.proc.pid, signal.SIGHUP)
        failed = wait_for(lambda: log_lines(s, "reload_failed"))
        assert "relayhost_password_file" in failed[0]["reason"], failed
        old = {x["pid"] for x in log_lines(s, "worker_start") if x.get("kind") == "delivery"}
        for pid in old:
            os.kill(int(pid), signal.SIGKILL)
        wait_for(lambda: {x["pid"] for x in log_lines(s, "worker_start") if x.get("kind") == "delivery"} - old)
        assert s.proc.poll() is None
        send(s, SENDER, ["yul@unresolvable.test"], message("after respawn", "yul@unresolvable.test"))
        assert relay.wait(2)[1].accepted == ["yul@unresolvable.test"] and relay.logins == ["relayuser"] * 2
        # a wrong password (the next session logs in again: no reuse here): deferred with the relay's
        # answer, retried, never bounced
        relay.auth = ("relayuser", "changed")
        send(s, SENDER, ["xan@unresolvable.test"], message("bad auth", "xan@unresolvable.test"))
        entry = wait_for(lambda: [e for e in entries_for(s, "xan@unresolvable.test") if e["attempts"] >= 1])[0]
        assert entry["rcpts"][0]["state"] == "deferred" and entry["rcpts"][0]["reply"].startswith("535 5.7.8")
        assert not bounces_in_inbox(s, SENDER, "xan@unresolvable.test")
    finally:
        s.stop()
        s.kill_tree()
        rloop.run(_stop(relay))


def test_forwarding_through_an_alias_uses_srs_and_bounces_find_their_way_back(srv, dns, receivers):
    dns.set("far.test", ("MX", (10, "mx.far.test.")))
    dns.set("mx.far.test", ("A", "127.0.0.21"))
    dns.set("origin.test", ("MX", (10, "mx.origin.test.")))
    dns.set("mx.origin.test", ("A", "127.0.0.22"))
    far = receivers("127.0.0.21")
    origin = receivers("127.0.0.22")
    srv.cli("alias", "add", "fwd@example.org", "friend@far.test", "alice@example.org")
    try:
        msg = message("forwarded", "fwd@example.org")
        send(srv, "orig@origin.test", ["fwd@example.org"], msg)
        got = far.wait(1)[0]
        assert strip_trace(got.data) == msg  # the message itself is untouched
        srs_sender = re.fullmatch(r"MAIL FROM:<(SRS0=[^=]{4}=[A-Z2-7]{2}=origin\.test=orig@example\.org)>.*", got.mail)
        assert srs_sender, got.mail
        assert inbox(srv, "alice@example.org")[-1].endswith(msg)  # the local target got it as well
        # the far side bounces to the SRS address: it reaches the original sender
        with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
            s.ehlo("mx.far.test")
            assert s.mail("")[0] == 250
            assert s.rcpt(srs_sender.group(1))[0] == 250
            assert s.data(b"Subject: bounce of forwarded\r\n\r\nsorry\r\n")[0] == 250
            s.rset()
            s.mail("")
            forged = srs_sender.group(1).replace("=origin.test=", "=elsewhere.test=")
            assert s.rcpt(forged)[0] == 550  # a hash that does not match: no open relay through SRS
        back = origin.wait(1)[0]
        assert back.mail.startswith("MAIL FROM:<>") and back.accepted == ["orig@origin.test"]
        assert b"Subject: bounce of forwarded" in back.data
        # mail from a local sender is forwarded with its own address (it passes SPF as it is)
        send(srv, SENDER, ["fwd@example.org"], message("local forward", "fwd@example.org"))
        assert far.wait(2)[1].mail.startswith(f"MAIL FROM:<{SENDER}>")
    finally:
        srv.cli("alias", "del", "fwd@example.org")


# -- MTA-STS (RFC 8461) -----------------------------------------------------------------------------------


def sts_policy(mode: str, *mx: str) -> str:
    return "version: STSv1\r\nmode: " + mode + "\r\n" + "".join(f"mx: {m}\r\n" for m in mx) + "max_age: 86400\r\n"


def test_mta_sts_enforce_delivers_over_authenticated_tls(srv, dns, receivers, policies, ca):
    dns.set("sts.test", ("MX", (10, "mx1.sts.test.")))
    dns.set("mx1.sts.test", ("A", "127.0.0.25"))
    dns.set("_mta-sts.sts.test", ("TXT", "v=STSv1; id=2026120101"))
    policies.policies["mta-sts.sts.test"] = sts_policy("enforce", "*.sts.test")
    rx = receivers("127.0.0.25", tls=ca.server_context("mx1.sts.test"))
    msg = message("sts enforced", "yan@sts.test")
    send(srv, SENDER, ["yan@sts.test"], msg)
    assert strip_trace(rx.wait(1)[0].data) == msg
    sent = wait_for(lambda: [x for x in log_lines(srv, "delivery") if x.get("rcpt") == "yan@sts.test"])
    assert sent[0]["sts"] == "enforce" and sent[0]["tls"] in ("TLSv1.2", "TLSv1.3")
    assert policies.fetches.count("mta-sts.sts.test") == 1
    # the policy is cached (same id): a second message fetches nothing
    send(srv, SENDER, ["yan@sts.test"], message("sts again", "yan@sts.test"))
    rx.wait(2)
    assert policies.fetches.count("mta-sts.sts.test") == 1


def test_mta_sts_enforce_refuses_a_certificate_that_does_not_verify(srv, dns, receivers, policies, tmp_path):
    dns.set("stsbad.test", ("MX", (10, "mx.stsbad.test.")))
    dns.set("mx.stsbad.test", ("A", "127.0.0.26"))
    dns.set("_mta-sts.stsbad.test", ("TXT", "v=STSv1; id=1"))
    policies.policies["mta-sts.stsbad.test"] = sts_policy("enforce", "mx.stsbad.test")
    ensure_self_signed(tmp_path / "c.pem", tmp_path / "k.pem", "mx.stsbad.test")  # not from the CA
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    rx = receivers("127.0.0.26", tls=ctx)
    send(srv, SENDER, ["zed@stsbad.test"], message("sts bad cert", "zed@stsbad.test"))
    entry = wait_for(lambda: [e for e in entries_for(srv, "zed@stsbad.test") if e["attempts"] >= 1])[0]
    r = entry["rcpts"][0]
    assert r["state"] == "deferred" and r["status"] == "4.7.5" and "certificate verify failed" in r["reply"]
    assert rx.connections == 1 and not any(line.startswith("MAIL") for line in rx.transcript)  # no plain retry
    assert not bounces_in_inbox(srv, SENDER, "zed@stsbad.test")
    srv.cli("queue", "delete", entry["id"])


def test_mta_sts_enforce_skips_mx_hosts_outside_the_policy(srv, dns, receivers, policies, ca):
    dns.set("stsother.test", ("MX", (10, "rogue.elsewhere.test.")))
    dns.set("rogue.elsewhere.test", ("A", "127.0.0.27"))
    dns.set("_mta-sts.stsother.test", ("TXT", "v=STSv1; id=abc"))
    policies.policies["mta-sts.stsother.test"] = sts_policy("enforce", "mx.stsother.test")
    rogue = receivers("127.0.0.27", tls=ca.server_context("rogue.elsewhere.test"))
    send(srv, SENDER, ["ada@stsother.test"], message("sts rogue mx", "ada@stsother.test"))
    entry = wait_for(lambda: [e for e in entries_for(srv, "ada@stsother.test") if e["attempts"] >= 1])[0]
    assert entry["rcpts"][0]["state"] == "deferred" and entry["rcpts"][0]["status"] == "4.7.5"
    assert rogue.connections == 0
    # a policy in testing mode only reports: the message goes (opportunistic TLS)
    dns.set("_mta-sts.stsother.test", ("TXT", "v=STSv1; id=abd"))
    policies.policies["mta-sts.stsother.test"] = sts_policy("testing", "mx.stsother.test")
    rogue.wait(1)  # at the next retry
    assert wait_for(lambda: [x for x in log_lines(srv, "mta_sts_mismatch") if x.get("domain") == "stsother.test"
                             and x.get("mode") == "testing"])
