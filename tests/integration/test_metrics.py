"""The Prometheus endpoint (issue #9, fastmail.metrics): the real server with metrics.listen set, driven by real
clients (smtplib, imaplib) and an outbound delivery to a scripted receiver, scraped with curl and parsed with
prometheus_client's own parser.  Every assertion is on the difference between two scrapes, by exact amounts;
a worker SIGKILLed and restarted by the master keeps its counts in the totals and drops its open connections."""

from __future__ import annotations

import imaplib
import os
import poplib
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import PASSWORDS, Server, fastmail_cmd, free_port, make_server, poll
from .dnsserver import LocalDNS
from .test_delivery import config as delivery_config
from .test_delivery import message
from .wire import Client, insecure_tls_context

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ALICE = "alice@example.org"


def scrape(srv: Server, path: str = "/metrics") -> tuple[int, str]:
    res = subprocess.run(["curl", "-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}",
                          f"http://127.0.0.1:{srv.metrics_port}{path}"],  # type: ignore[attr-defined]
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    body, _, code = res.stdout.rpartition("\n")
    return int(code), body


def samples(srv: Server) -> Samples:
    code, body = scrape(srv)
    assert code == 200
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def value(snap: Samples, name: str, **labels: str) -> float:
    """One series; a series absent from the scrape counts as 0 (a histogram's label seen for the first time)."""
    return snap.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, dns: LocalDNS, mx_port: int) -> Iterator[Server]:
    metrics_port = free_port()
    # retry_base 600 s: a deferred recipient is tried once during the module, so every count is exact
    extra = delivery_config(dns, mx_port, retry_base=600.0, retry_max=600.0).replace(
        'trusted_networks = ["127.0.0.1/32"]\n', "auth_plaintext_without_tls = true\n")
    s = make_server(tmp_path_factory.mktemp("metrics"), workers=2,
                    extra=extra + f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
    s.metrics_port = metrics_port  # type: ignore[attr-defined]
    s.start()
    yield s
    s.stop()
    s.kill_tree()


def test_only_get_metrics_is_served(srv):
    assert scrape(srv)[0] == 200
    for path in ("/", "/metricsx", "/favicon.ico"):
        assert scrape(srv, path)[0] == 404, path
    res = subprocess.run(["curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                          f"http://127.0.0.1:{srv.metrics_port}/metrics"], capture_output=True, text=True, timeout=30)
    assert res.stdout == "404"
    code, body = scrape(srv, "/metrics?name[]=x")  # a query string is the same page
    assert code == 200 and "fastmail_connections_total" in body


def test_smtp_counts_sessions_messages_and_rejections_by_reason(srv):
    before = samples(srv)
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
        s.ehlo("client.test")
        for i in range(3):
            assert not s.sendmail("someone@other.test", [ALICE], f"Subject: m{i}\r\n\r\nhello\r\n".encode())
        # one recipient refused, one accepted: one message accepted, one rejection (user_unknown)
        assert set(s.sendmail("someone@other.test", [ALICE, "nobody@example.org"], b"Subject: m4\r\n\r\nx\r\n")) \
            == {"nobody@example.org"}
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("someone@other.test", ["victim@elsewhere.test"], b"Subject: relay\r\n\r\nx\r\n")
        with pytest.raises(smtplib.SMTPSenderRefused):  # SIZE= above smtp.max_message_size: 552 at MAIL
            s.sendmail("someone@other.test", [ALICE], b"Subject: big\r\n\r\n" + b"x" * 1_100_000 + b"\r\n")
    after = samples(srv)
    assert delta(before, after, "fastmail_connections_total", service="smtp") == 1
    assert delta(before, after, "fastmail_sessions_total", service="smtp") == 1
    assert delta(before, after, "fastmail_messages_accepted_total", service="smtp") == 4
    assert delta(before, after, "fastmail_messages_rejected_total", service="smtp", reason="user_unknown") == 1
    assert delta(before, after, "fastmail_messages_rejected_total", service="smtp", reason="relay_denied") == 1
    assert delta(before, after, "fastmail_messages_rejected_total", service="smtp", reason="too_big") == 1
    assert delta(before, after, "fastmail_messages_rejected_total", service="smtp", reason="protocol") == 0
    assert value(after, "fastmail_connections_open", service="smtp") == 0
    # four group commits at least one message each, and no more messages than were accepted
    batches = delta(before, after, "fastmail_commit_batch_messages_count")
    assert 1 <= batches <= 4
    assert delta(before, after, "fastmail_commit_batch_messages_sum") == 4
    assert delta(before, after, "fastmail_commit_seconds_count") == batches
    assert delta(before, after, "fastmail_commit_seconds_sum") > 0
    assert delta(before, after, "fastmail_commit_seconds_bucket", le="+Inf") == batches


def test_imap_commands_auth_and_open_connections(srv):
    before = samples(srv)
    bad = imaplib.IMAP4("127.0.0.1", srv.ports["imap"], timeout=30)
    with pytest.raises(imaplib.IMAP4.error):
        bad.login(ALICE, "wrong password")
    bad.logout()
    m = imaplib.IMAP4("127.0.0.1", srv.ports["imap"], timeout=30)
    try:
        m.login(ALICE, PASSWORDS[ALICE])
        assert m.select("INBOX")[0] == "OK"
        assert m.fetch("1:*", "(FLAGS)")[0] == "OK"
        assert m.noop()[0] == "OK"
        assert m.noop()[0] == "OK"
        during = samples(srv)
        assert value(during, "fastmail_connections_open", service="imap") == 1
    finally:
        m.logout()
    assert poll(lambda: value(samples(srv), "fastmail_connections_open", service="imap") == 0, timeout=10)
    after = samples(srv)
    assert delta(before, after, "fastmail_connections_total", service="imap") == 2
    assert delta(before, after, "fastmail_sessions_total", service="imap") == 2
    assert delta(before, after, "fastmail_auth_total", service="imap", result="success") == 1
    assert delta(before, after, "fastmail_auth_total", service="imap", result="failure") == 1
    h = "fastmail_imap_command_seconds_count"
    assert delta(before, after, h, command="LOGIN") == 2
    assert delta(before, after, h, command="SELECT") == 1
    assert delta(before, after, h, command="FETCH") == 1
    assert delta(before, after, h, command="NOOP") == 2
    # the failed LOGIN waits for the auth failure delay (1 s) before its NO: the histogram saw it
    assert delta(before, after, "fastmail_imap_command_seconds_sum", command="LOGIN") >= 1.0
    assert delta(before, after, "fastmail_imap_command_seconds_bucket", command="NOOP", le="+Inf") == 2


def test_submission_auth_delivery_attempts_and_queue_by_state(srv, dns, receivers):
    dns.set("metrics.test", ("MX", (10, "mx.metrics.test.")))
    dns.set("mx.metrics.test", ("A", "127.0.0.31"))
    replies = {"ok@metrics.test": "250 2.1.5 ok", "gone@metrics.test": "550 5.1.1 no such user",
               "later@metrics.test": "451 4.3.2 try again later"}
    rx = receivers("127.0.0.31", rcpt=lambda address, _: replies[address])
    before = samples(srv)
    with smtplib.SMTP("127.0.0.1", srv.ports["submission"], timeout=30) as s:
        s.ehlo("client.test")
        s.user, s.password = ALICE, "not the password"
        with pytest.raises(smtplib.SMTPAuthenticationError):  # one AUTH PLAIN (login() would try LOGIN next)
            s.auth("PLAIN", s.auth_plain)
        s.login(ALICE, PASSWORDS[ALICE])
        assert not s.sendmail(ALICE, list(replies), message("metrics", "ok@metrics.test"))
    expected = {"delivered": 1, "bounced": 1, "deferred": 1}

    def attempts(snap: Samples) -> dict[str, float]:
        return {r: delta(before, snap, "fastmail_delivery_attempts_total", result=r) for r in expected}

    assert poll(lambda: attempts(samples(srv)) == expected, timeout=30), attempts(samples(srv))
    assert rx.wait(1, timeout=10)
    after = samples(srv)
    assert attempts(after) == expected
    assert delta(before, after, "fastmail_auth_total", service="submission", result="failure") == 1
    assert delta(before, after, "fastmail_auth_total", service="submission", result="success") == 1
    assert delta(before, after, "fastmail_messages_accepted_total", service="submission") == 1
    # the entry waits for its deferred recipient (the failed one is bounced: its DSN went to alice's INBOX)
    assert value(after, "fastmail_queue_entries", state="deferred") == 1
    assert value(after, "fastmail_queue_entries", state="queued") == 0
    assert value(after, "fastmail_queue_entries", state="held") == 0
    qid = srv.cli("queue", "list").stdout.decode().split("\t", 1)[0]
    srv.cli("queue", "hold", qid)
    held = samples(srv)
    assert value(held, "fastmail_queue_entries", state="held") == 1
    assert value(held, "fastmail_queue_entries", state="deferred") == 0
    srv.cli("queue", "delete", qid)
    assert value(samples(srv), "fastmail_queue_entries", state="held") == 0


def _worker_of(srv: Server, client_port: int) -> int:
    """The pid of the worker that accepted the SMTP connection from `client_port` (its session id is the pid in
    hex: `sid=<pid>.<n>`)."""
    found: list[int] = []

    def look() -> bool:
        m = re.search(rf"event=connect sid=([0-9a-f]+)\.\w+ listener=smtp peer=127\.0\.0\.1 port={client_port} ",
                      srv.log.read_text())
        if m:
            found.append(int(m.group(1), 16))
        return bool(found)

    assert poll(look, timeout=10)
    return found[0]


def test_a_worker_killed_and_restarted_keeps_its_counts_and_drops_its_connections(srv):
    before = samples(srv)
    for i in range(2):
        with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
            assert not s.sendmail("someone@other.test", [ALICE], f"Subject: k{i}\r\n\r\nx\r\n".encode())
    held = Client(srv.ports["smtp"])  # a session left open in one worker, then its worker dies
    pid = _worker_of(srv, held.sock.getsockname()[1])
    mid = samples(srv)
    assert delta(before, mid, "fastmail_messages_accepted_total", service="smtp") == 2
    assert delta(before, mid, "fastmail_connections_total", service="smtp") == 3
    assert value(mid, "fastmail_connections_open", service="smtp") == 1
    readies = srv.log.read_text().count("event=worker_ready kind=worker ")
    os.kill(pid, signal.SIGKILL)
    assert poll(lambda: re.search(rf"event=worker_exit kind=worker index=\d pid={pid} .*signal=SIGKILL", srv.log.read_text())
                and srv.log.read_text().count("event=worker_ready kind=worker ") > readies, timeout=20)
    after = samples(srv)
    # the dead worker's counters stay in the totals; its open connection is gone with it
    assert delta(before, after, "fastmail_messages_accepted_total", service="smtp") == 2
    assert delta(before, after, "fastmail_connections_total", service="smtp") == 3
    assert value(after, "fastmail_connections_open", service="smtp") == 0
    for i in range(2):  # whichever worker (the new one or the other) takes them, the totals go on
        with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
            assert not s.sendmail("someone@other.test", [ALICE], f"Subject: after{i}\r\n\r\nx\r\n".encode())
    last = samples(srv)
    assert delta(before, last, "fastmail_messages_accepted_total", service="smtp") == 4
    assert delta(before, last, "fastmail_connections_total", service="smtp") == 5
    assert value(last, "fastmail_connections_open", service="smtp") == 0


def test_submissions_over_tls_is_its_own_service(srv):
    before = samples(srv)
    with smtplib.SMTP_SSL("127.0.0.1", srv.ports["submissions"], timeout=30, context=insecure_tls_context()) as s:
        s.login(ALICE, PASSWORDS[ALICE])
        assert not s.sendmail(ALICE, [ALICE], b"Subject: tls\r\n\r\nx\r\n")
    after = samples(srv)
    assert delta(before, after, "fastmail_connections_total", service="submissions") == 1
    assert delta(before, after, "fastmail_messages_accepted_total", service="submissions") == 1
    assert delta(before, after, "fastmail_auth_total", service="submissions", result="success") == 1
    assert delta(before, after, "fastmail_messages_accepted_total", service="submission") == 0


def test_a_reload_replaces_the_metrics_process_and_keeps_the_totals(srv):
    before = samples(srv)
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
        assert not s.sendmail("someone@other.test", [ALICE], b"Subject: before reload\r\n\r\nx\r\n")
    done = srv.log.read_text().count("event=reload_done")
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGHUP)
    assert poll(lambda: srv.log.read_text().count("event=reload_done") > done, timeout=60)
    # every worker and the metrics process were replaced; what the old workers counted stays counted
    after = samples(srv)
    assert delta(before, after, "fastmail_messages_accepted_total", service="smtp") == 1
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
        assert not s.sendmail("someone@other.test", [ALICE], b"Subject: after reload\r\n\r\nx\r\n")
    assert delta(before, samples(srv), "fastmail_messages_accepted_total", service="smtp") == 2


def test_a_metrics_port_in_use_stops_the_start_with_the_reason(tmp_path):
    with socket.socket() as taken:  # bound without SO_REUSEPORT: nobody can share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        s = make_server(tmp_path, workers=1, extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
        res = subprocess.run(fastmail_cmd("serve", "-c", str(s.config)), capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    out = res.stdout + res.stderr
    assert f"cannot bind listener 'metrics' to 127.0.0.1:{port}" in out, out[-2000:]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges (CI runs as root)")
def test_counts_with_workers_and_the_metrics_process_as_another_user():
    base = Path(tempfile.mkdtemp(prefix="fastmail-metrics-priv-"))
    base.chmod(0o755)  # the unprivileged processes must reach their data folder
    try:
        port = free_port()
        s = make_server(base, workers=2, extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
        s.metrics_port = port  # type: ignore[attr-defined]
        s.config.write_text(s.config.read_text().replace("[server]\n", '[server]\nuser = "nobody"\n', 1))
        s.start()
        try:
            nobody = pwd.getpwnam("nobody").pw_uid
            kids = s.worker_pids()
            assert kids and all(int(Path(f"/proc/{p}/status").read_text().split("\nUid:")[1].split()[0]) == nobody
                                for p in kids)
            before = samples(s)
            with smtplib.SMTP("127.0.0.1", s.ports["smtp"], timeout=30) as c:
                assert not c.sendmail("someone@other.test", [ALICE], b"Subject: as nobody\r\n\r\nx\r\n")
            held = Client(s.ports["smtp"])
            pid = _worker_of(s, held.sock.getsockname()[1])
            assert value(samples(s), "fastmail_connections_open", service="smtp") == 1
            os.kill(pid, signal.SIGKILL)
            assert poll(lambda: value(samples(s), "fastmail_connections_open", service="smtp") == 0, timeout=20)
            after = samples(s)
            assert delta(before, after, "fastmail_messages_accepted_total", service="smtp") == 1
            assert delta(before, after, "fastmail_connections_total", service="smtp") == 2
        finally:
            s.stop()
            s.kill_tree()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_pop3_and_lmtp_are_their_own_services(srv):
    before = samples(srv)
    p = poplib.POP3("127.0.0.1", srv.ports["pop3"], timeout=30)
    try:
        p.user(ALICE)
        with pytest.raises(poplib.error_proto):
            p.pass_("wrong password")
    finally:
        p.quit()
    p = poplib.POP3("127.0.0.1", srv.ports["pop3"], timeout=30)
    try:
        p.user(ALICE)
        p.pass_(PASSWORDS[ALICE])
        p.stat()  # the maildrop is open (poplib.error_proto otherwise)
    finally:
        p.quit()
    with smtplib.LMTP("127.0.0.1", srv.ports["lmtp"], timeout=30) as lm:
        assert not lm.sendmail("x@remote.test", [ALICE], b"Subject: over lmtp\r\n\r\nx\r\n")
    with smtplib.LMTP(str(srv.lmtp_sock), timeout=30) as lm:  # the unix socket is the same service
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            lm.sendmail("x@remote.test", ["nobody@example.org"], b"Subject: nobody\r\n\r\nx\r\n")
    after = samples(srv)
    assert delta(before, after, "fastmail_connections_total", service="pop3") == 2
    assert delta(before, after, "fastmail_sessions_total", service="pop3") == 2
    assert delta(before, after, "fastmail_auth_total", service="pop3", result="failure") == 1
    assert delta(before, after, "fastmail_auth_total", service="pop3", result="success") == 1
    assert delta(before, after, "fastmail_connections_total", service="lmtp") == 2
    assert delta(before, after, "fastmail_messages_accepted_total", service="lmtp") == 1
    assert delta(before, after, "fastmail_messages_rejected_total", service="lmtp", reason="user_unknown") == 1
    assert delta(before, after, "fastmail_messages_accepted_total", service="smtp") == 0
