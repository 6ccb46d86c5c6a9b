"""Other IMAP clients against the real server: IMAPClient (a library many sync tools build on: its own
parser, IDLE, CONDSTORE, MOVE, SPECIAL-USE) and curl's IMAP support (list, fetch, search over STARTTLS)."""

from __future__ import annotations

import shutil
import smtplib
import subprocess

import imapclient
import pytest

from .conftest import Server
from .wire import HOST, TIMEOUT, insecure_tls_context, module_server

PASSWORD = "clients-secret"
USERS = [f"c{i}@example.org" for i in range(1, 6)]


def _setup(s: Server) -> None:
    for u in USERS:
        s.cli("user", "add", u, "--password-stdin", input=PASSWORD.encode() + b"\n")


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    yield from module_server(tmp_path_factory, "imapclients", _setup)


_free = list(USERS)


@pytest.fixture
def user() -> str:
    return _free.pop(0)


def deliver(srv: Server, to: str, subject: str, body: str = "hello\r\n") -> None:
    raw = (f"From: Sender <x@remote.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{subject.replace(' ', '.')}@remote.test>\r\n\r\n{body}").encode()
    with smtplib.SMTP(HOST, srv.ports["smtp"], timeout=TIMEOUT) as s:
        s.sendmail("x@remote.test", [to], raw)


def client(srv: Server, user: str, tls: bool = True) -> imapclient.IMAPClient:
    c = imapclient.IMAPClient(HOST, port=srv.ports["imaps" if tls else "imap"], ssl=tls,
                              ssl_context=insecure_tls_context() if tls else None, timeout=TIMEOUT)
    c.login(user, PASSWORD)
    return c


def test_imapclient_session(srv, user):
    deliver(srv, user, "first")
    deliver(srv, user, "second", "the body\r\n")
    c = client(srv, user)
    assert {b"IDLE", b"MOVE", b"UIDPLUS", b"CONDSTORE", b"SPECIAL-USE"} <= set(c.capabilities())
    folders = {name: flags for flags, _delim, name in c.list_folders()}
    assert set(folders) >= {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}
    assert c.find_special_folder(imapclient.imapclient.SENT) == "Sent"
    assert c.enable("CONDSTORE") == [b"CONDSTORE"]  # before SELECT (RFC 5161 §3.1)
    info = c.select_folder("INBOX")
    assert info[b"EXISTS"] == 2 and info[b"UIDNEXT"] == 3 and b"HIGHESTMODSEQ" in info
    found = c.search(["SUBJECT", "second"])
    assert found == [2]
    data = c.fetch([1, 2], ["ENVELOPE", "FLAGS", "RFC822.SIZE", "BODY.PEEK[TEXT]"])
    assert data[1][b"ENVELOPE"].subject == b"first" and data[2][b"BODY[TEXT]"] == b"the body\r\n"
    assert data[1][b"FLAGS"] == ()
    c.add_flags([1], [imapclient.SEEN, b"$Label"])
    assert c.get_flags([1])[1] == (b"\\Seen", b"$Label")
    c.create_folder("Archive/2024")
    c.move([2], "Archive/2024")
    assert c.search("ALL") == [1]
    assert c.folder_status("Archive/2024", ["MESSAGES", "UIDNEXT"]) == {b"MESSAGES": 1, b"UIDNEXT": 2}
    changed = c.fetch([1], ["FLAGS"], modifiers=["CHANGEDSINCE 1"])
    assert b"MODSEQ" in changed[1]
    c.delete_messages([1])
    c.expunge()
    assert c.search("ALL") == []
    c.logout()


def test_imapclient_idle_hears_a_delivery(srv, user):
    c = client(srv, user, tls=False)
    c.select_folder("INBOX")
    c.idle()
    deliver(srv, user, "during idle")
    responses: list = []
    for _ in range(20):  # each wait is bounded; a few rounds cover a slow machine
        responses = c.idle_check(timeout=1)
        if responses:
            break
    assert (1, b"EXISTS") in responses
    c.idle_done()
    c.logout()


def test_curl_lists_fetches_and_searches(srv, user):
    curl = shutil.which("curl")
    assert curl, "curl is a test dependency (make system-deps)"
    deliver(srv, user, "for curl", "curl body\r\n")
    base = f"imap://{HOST}:{srv.ports['imap']}"
    common = [curl, "-s", "-S", "--max-time", "30", "-u", f"{user}:{PASSWORD}", "--ssl-reqd", "-k"]

    out = subprocess.run(common + [f"{base}/"], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert b'"INBOX"' in out.stdout and b"\\Sent" in out.stdout

    out = subprocess.run(common + [f"{base}/INBOX;UID=1"], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith(b"Subject: for curl\r\nMessage-ID: <for.curl@remote.test>\r\n\r\ncurl body\r\n")

    out = subprocess.run(common + [f"{base}/INBOX?SUBJECT%20curl"], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == b"* SEARCH 1"
